"""medseg select on synthetic cross-validation results: seconds per phase, before and after.

Generates (deterministically, from ``--seed``; nothing is read from the repository)
the layout the workflow leaves before ``medseg select``, for two dataset shapes:

* ``brats``: 6 cases of 240x240x155 (1 mm), labels 0-3 as nested blobs (outer
  shell 2, inside it 3, innermost 1), 3 folds;
* ``la``: 20 cases of 320x320x110 (1.25 x 1.25 x 1.37 mm), labels 0-1, 5 folds;

each with two configurations, ``3d_fullres`` and ``3d_lowres``, whose cross-validation
predictions are noisy versions of the references (Dice about 0.8-0.9, with a few
stray components for postprocessing to remove): ``models/<config>/fold_<k>/`` with a
``checkpoint_final.safetensors`` placeholder and ``validation/CASE.nii.gz`` +
``CASE.npz`` (float16 probabilities, as ``medseg.training.validation`` writes them),
a dataset folder (``dataset.json``, ``labelsTr``), ``plans.json`` and ``splits.json``.
Generating is not timed, and is skipped when ``--work`` already holds the same data.

Then times ``select_model`` (what ``medseg select`` runs) with ``-j`` processes: a
cold run (fresh CV folder) and a rerun on the CV folder the cold run left (inputs
unchanged), each ``--repeat`` times (median reported), with seconds per phase:
``ensembles`` (pairwise ensembles made from the probabilities), ``candidates``
(every configuration and ensemble scored: Dice, HD95, NSD), ``postprocessing``
(connected-component postprocessing chosen) and ``other`` (the rest: linking, I/O).
Phases are timed by wrapping the functions ``medseg.evaluation.select`` calls for
them (see ``PHASES``: the names before and after issue 11 item 8).

    .venv/bin/python benchmarks/selection.py [--shapes brats la] [-j 2] [--repeat 1]
        [--work DIR] [--save FILE.json] [--compare BEFORE.json]

``--save`` writes the medians and the chosen candidate and scores to a JSON file;
``--compare`` prints them beside this run's, with the ratios, and checks that the
choice and the scores are the same. Not a test: run it by hand and quote its table.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.volume import Volume
from medseg.io.probabilities import save_probabilities
from medseg.io.volumes import write_volume

SHAPES = {
    "brats": {
        "cases": 6,
        "shape": (240, 240, 155),
        "spacing": (1.0, 1.0, 1.0),
        "labels": ["background", "necrosis", "edema", "enhancing"],
        "folds": 3,
        "radius": 32,
        "noise": 0.06,
    },
    "la": {
        "cases": 20,
        "shape": (320, 320, 110),
        "spacing": (1.25, 1.25, 1.37),
        "labels": ["background", "left atrium"],
        "folds": 5,
        "radius": 24,
        "noise": 0.12,
    },
}
CONFIGS = ("3d_fullres", "3d_lowres")
#: phase -> names in ``medseg.evaluation.select`` whose calls it times (before; after).
PHASES = {
    "ensembles": ("_ensemble", "make_ensembles"),
    "candidates": ("evaluate_folder", "score_candidates"),
    "postprocessing": ("choose_postprocessing",),
}
FORMAT_VERSION = 1  # of the generated data: bump to regenerate


# ---------------------------------------------------------------------------- data


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Zero-mean noise of about unit amplitude, smooth over ``cell`` voxels (float32)."""
    coarse = [max(2, s // cell + 2) for s in shape]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), 0.8).astype(np.float32)
    field /= field.std() + 1e-6
    return ndimage.zoom(
        field,
        [s / c for s, c in zip(shape, coarse, strict=True)],
        order=1,
        grid_mode=True,
        mode="nearest",
    )[tuple(slice(0, s) for s in shape)]


def radial_field(shape: tuple[int, ...], centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Ellipsoidal distance from ``centre`` in units of ``radius`` (1 on the surface)."""
    axes = np.ogrid[tuple(slice(0, s) for s in shape)]
    return np.sqrt(sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radius, strict=True)))


def to_labels(field: np.ndarray, n_labels: int) -> np.ndarray:
    """Nested blobs: 1 label inside ``field < 1``; with 4 labels, 2 outside, 3 within, 1 core."""
    label = np.zeros(field.shape, np.uint8)
    if n_labels == 2:
        label[field < 1.0] = 1
    else:
        label[field < 1.0], label[field < 0.65], label[field < 0.4] = 2, 3, 1
    return label


def add_strays(rng: np.random.Generator, label: np.ndarray, n_labels: int, count: int) -> None:
    """A few small spurious blobs of random labels, away from the object (in place)."""
    for _ in range(count):
        r = int(rng.integers(2, 5))
        c = [int(rng.integers(r + 1, s - r - 1)) for s in label.shape]
        box = tuple(slice(ci - r, ci + r + 1) for ci in c)
        ball = radial_field((2 * r + 1,) * 3, np.array([r, r, r]), np.array([r, r, r])) <= 1.0
        label[box][ball] = int(rng.integers(1, n_labels))


def probabilities(rng: np.random.Generator, label: np.ndarray, n_labels: int) -> np.ndarray:
    """``(K, X, Y, Z)`` float16 whose argmax is ``label``; confidence smooth, in 4 levels."""
    level = np.digitize(smooth_noise(rng, label.shape, 24), [-0.6, 0.0, 0.6])
    confidence = np.array([0.6, 0.7, 0.8, 0.95], np.float16)[level]
    rest = ((1 - confidence.astype(np.float32)) / (n_labels - 1)).astype(np.float16)
    probs = np.broadcast_to(rest, (n_labels, *label.shape)).copy()
    for k in range(n_labels):
        probs[k][label == k] = confidence[label == k]
    return probs


def make_case(seed: int, spec: dict) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Reference, and per configuration the predicted labels and probabilities."""
    rng = np.random.default_rng(seed)
    shape, n = spec["shape"], len(spec["labels"])
    r = spec["radius"] * rng.uniform(0.8, 1.2, 3) / np.asarray(spec["spacing"])
    centre = np.array([s / 2 for s in shape]) + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
    field = radial_field(shape, centre, r)
    field += 0.12 * smooth_noise(rng, shape, 12)
    ref = to_labels(field, n)
    labels, probs = [], []
    for _ in CONFIGS:
        pred = to_labels(field + spec["noise"] * smooth_noise(rng, shape, 6), n)
        add_strays(rng, pred, n, int(rng.integers(2, 6)))
        labels.append(pred)
        probs.append(probabilities(rng, pred, n))
    return ref, labels, probs


def generate(root: Path, name: str, seed: int) -> None:
    """Write the CV layout of one dataset shape under ``root`` (skipped if already there)."""
    spec = SHAPES[name]
    stamp = {"format": FORMAT_VERSION, "seed": seed, "spec": spec}
    marker = root / "generated.json"
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(stamp)):
        return
    shutil.rmtree(root, ignore_errors=True)
    affine = np.diag([*spec["spacing"], 1.0])
    cases = [f"{name}_{i:03d}" for i in range(spec["cases"])]
    k = spec["folds"]
    folds = [
        {
            "train": [c for j, c in enumerate(cases) if j % k != f],
            "val": [c for j, c in enumerate(cases) if j % k == f],
        }
        for f in range(k)
    ]
    dataset = root / "dataset"
    training = []
    for i, case in enumerate(cases):
        ref, labels, probs = make_case(seed * 1000 + i, spec)
        write_volume(Volume.label(ref, affine), dataset / "labelsTr" / f"{case}.nii.gz")
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
        for config, label, prob in zip(CONFIGS, labels, probs, strict=True):
            val = root / "models" / config / f"fold_{i % k}" / "validation"
            write_volume(Volume.label(label, affine), val / f"{case}.nii.gz")
            save_probabilities(val / f"{case}.npz", prob, affine)
    for config in CONFIGS:
        for f in range(k):
            (root / "models" / config / f"fold_{f}" / "checkpoint_final.safetensors").touch()
    meta = {
        "name": name,
        "modality": {"0": "MRI"},
        "numTraining": len(cases),
        "labels": {str(v): n for v, n in enumerate(spec["labels"])},
        "training": training,
    }
    (dataset / "dataset.json").write_text(json.dumps(meta, indent=1))
    plans = {
        "schema": "medseg.plans",
        "schema_version": 1,
        "labels": [[v, n] for v, n in enumerate(spec["labels"])],
        "configurations": {c: {"spacing": list(spec["spacing"])} for c in CONFIGS},
    }
    (root / "plans.json").write_text(json.dumps(plans, indent=1))
    splits = {"schema": "medseg.splits", "schema_version": 1, "folds": folds}
    (root / "splits.json").write_text(json.dumps(splits, indent=1))
    marker.write_text(json.dumps(stamp))


# ---------------------------------------------------------------------------- timing


#: wall seconds per phase of the ``select_model`` call in progress (see :func:`instrument`).
SECONDS = dict.fromkeys(PHASES, 0.0)


def instrument() -> None:
    """Wrap the phase functions of ``medseg.evaluation.select`` to add their time to SECONDS."""
    import medseg.evaluation.select as select

    for phase, names in PHASES.items():
        for attr in names:
            fn = getattr(select, attr, None)
            if fn is None or getattr(fn, "_timed", False):
                continue

            def timed(*args, _fn=fn, _phase=phase, **kwargs):
                start = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    SECONDS[_phase] += time.perf_counter() - start

            timed._timed = True  # type: ignore[attr-defined]
            setattr(select, attr, functools.wraps(fn)(timed))


def run_select(root: Path, cv: Path, processes: int) -> tuple:
    """One ``select_model`` call; returns (seconds by phase, the selection record)."""
    from medseg.dataset.layout import load_dataset
    from medseg.evaluation.select import select_model

    instrument()
    for key in SECONDS:
        SECONDS[key] = 0.0
    plans = json.loads((root / "plans.json").read_text())
    splits = json.loads((root / "splits.json").read_text())
    start = time.perf_counter()
    selection = select_model(
        root / "models", load_dataset(root / "dataset"), plans, splits, cv, processes=processes
    )
    total = time.perf_counter() - start
    seconds = {**SECONDS, "total": total}
    seconds["other"] = total - sum(SECONDS.values())
    return seconds, selection


def scores(selection: dict, cv: Path) -> dict:
    """What must not change: the choice, every candidate's metrics, the postprocessing."""
    from medseg.evaluation.metrics import METRICS, read_summary

    per_case = {}
    for key in selection["candidates"]:
        summary = read_summary(cv / key / "summary.json")
        per_case[key] = {
            case["case"]: {
                label: {m: row[m] for m in METRICS} for label, row in case["metrics"].items()
            }
            for case in summary["cases"]
        }
    return {
        "chosen": selection["chosen"],
        "candidates": {k: c["mean"] for k, c in selection["candidates"].items()},
        "cases": per_case,
        "postprocessing": selection["postprocessing"],
    }


def same(a: object, b: object, tol: float = 1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def measure(root: Path, processes: int, repeat: int) -> dict:
    cold, warm, selection = [], [], None
    for _ in range(repeat):
        cv = root / "cv"
        shutil.rmtree(cv, ignore_errors=True)
        seconds, selection = run_select(root, cv, processes)
        cold.append(seconds)
        warm.append(run_select(root, cv, processes)[0])

    def median(runs: list[dict]) -> dict:
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    result = json.loads(json.dumps(scores(selection, root / "cv"), default=float))
    return {"cold": median(cold), "rerun": median(warm), "scores": result}


def print_table(name: str, now: dict, before: dict | None) -> None:
    spec = SHAPES[name]
    shape = "x".join(map(str, spec["shape"]))
    print(
        f"\n{name}: {spec['cases']} cases of {shape}, {len(spec['labels'])} labels, "
        f"chosen {now['scores']['chosen']}, postprocessing "
        f"{[s['classes'] for s in now['scores']['postprocessing']['steps']]}\n"
    )
    cols = ["now (s)"] if before is None else ["before (s)", "after (s)", "ratio"]
    print("| " + " | ".join([f"{'phase':<22}", *(f"{c:>10}" for c in cols)]) + " |")
    print("| " + " | ".join(["-" * 22, *("-" * 10 for _ in cols)]) + " |")
    for run in ("cold", "rerun"):
        for phase in (*PHASES, "other", "total"):
            label = f"{run}: {phase}"
            b = None if before is None else before[run][phase]
            a = now[run][phase]
            cells = (
                [f"{a:>10.2f}"]
                if b is None
                else [f"{b:>10.2f}", f"{a:>10.2f}", f"{a / b:>10.3f}" if b > 0 else f"{'-':>10}"]
            )
            print(f"| {label:<22} | " + " | ".join(cells) + " |")
    if before is not None:
        ok = same(now["scores"], before["scores"])
        print(f"\nsame choice, scores and postprocessing as before: {'yes' if ok else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["brats", "la"])
    parser.add_argument("-j", "--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=1, help="runs each (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="data and outputs here (default: a temp dir)")
    parser.add_argument("--save", type=Path, help="write the results to this JSON file")
    parser.add_argument("--compare", type=Path, help="results saved earlier (--save) to compare")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-bench-select-"))
    before = json.loads(args.compare.read_text()) if args.compare else {}
    results = {}
    for name in args.shapes:
        start = time.perf_counter()
        generate(work / name, name, args.seed)
        print(f"{name}: data ready in {time.perf_counter() - start:.1f} s (not timed)")
        results[name] = measure(work / name, args.processes, args.repeat)
    print(
        f"\nmedseg select, {args.processes} processes, {args.repeat} run(s) each (median), "
        f"{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f}"
    )
    for name, now in results.items():
        print_table(name, now, before.get(name))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
