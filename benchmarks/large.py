"""CT-scale benchmark (issue 13): medseg vs nnU-Net on 512 x 512 x Z CT, side by side.

Hospital CT is 512 x 512 x 300..1000 slices. nnU-Net resamples K float32 class maps to
the full grid at export and can run out of memory there; medseg reconstructs slab-wise.
This script generates CT-like data (``benchmarks/ct_like.py``: int16 NIfTI, LPS-stored,
fixed seed, nothing committed) and measures both tools in one run:

1. Preprocessing: fingerprint + plan + preprocess of ``--cases`` CT cases, 512 x 512 in
   plane, voxels 0.6-0.9 mm in plane and 1.25/2/2.5/3/5 mm slices (each case covers
   ``--pre-z`` x 1.25 mm in z), so most cases fall under nnU-Net's separate-z rule.
   medseg runs ``medseg fingerprint``, ``medseg plan``, ``medseg preprocess`` and
   nnU-Net ``nnUNetv2_plan_and_preprocess -c 3d_fullres -np 2 -npfp 2``, exactly as
   ``benchmarks/preprocess.py`` runs them (its functions are reused).
2. Prediction: for each ``--classes`` K, an nnU-Net v2 results folder, then the same
   512 x 512 x Z CT (0.7 x 0.7 x 1.25 mm) predicted by ``medseg predict -m MODEL -i CT
   -o OUT --formats nifti`` (``--engine openvino`` by default; the one-time conversion
   into the engine cache runs first on a small CT, untimed) and by nnU-Net's predictor
   (``tests/nnunet_model.py predict``: ``predict_from_files``, mirroring on, 2
   preprocessing and 2 export processes, the path ``benchmarks/predict.py`` uses).

What was changed to make the network cheap on 2 CPU cores, and why. A real-sized
network (32..320 features, nnU-Net's 96 x 160 x 160 patch for this CT) costs 10-20 s
per tile forward here, and 512 x 512 x 300 at full resolution is ~200 tiles x 8
mirrorings: hours per tool. Even nnU-Net's own 3d_lowres plan (spacing 2.54 x 1.42 x
1.42 mm, 27 tiles of 96 x 160 x 160) takes over 15 min per tool: a 96 x 160 x 160
forward costs about 5 s here even at 2..32 features. So the model is made as follows,
while the CT grid stays real (prediction is reconstructed to 512 x 512 x Z, the step the
memory figures are about):

- nnU-Net's own fingerprint and planner on a generated training set (``--train-cases``
  CTs of 512 x 512 x 300 at 0.7 x 0.7 x 1.25 mm with K classes), default ExperimentPlanner
  (8 GB target), ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, but with
  ``-overwrite_target_spacing`` = 4 x the CT's voxel size (5.0 x
  2.8 x 2.8 mm; about the spacing nnU-Net itself picks for 3d_lowres with a 1 GB
  target). Its 3d_fullres then gets an 80 x 128 x 128 patch that covers the whole
  75 x 128 x 128 coarse image: 1 tile (x 8 mirrorings) per 300 slices. Upsampling at
  export is 4x per axis, as from a lowres stage.
- features scaled down to ``--base-features`` x 2^stage (default 4: 4..64 instead of
  32..320; ``_set_features`` of ``tests/nnunet_model.py``);
- ``nnUNetTrainer`` trained for ``--iterations`` iterations on fold 0 of a hand-written
  split (all training cases train, the last validates); the weights do not change the
  timing.

Peak memory is the summed RSS of each tool's process tree, sampled every 20 ms
(``benchmarks/capped_run.py``). A prediction run that goes over ``--mem-cap-gb``
(default: 90% of the memory available when it starts) is killed and reported as such,
so the benchmark never drives a shared machine into the kernel's OOM killer; a run
killed by the kernel (SIGKILL) or failing otherwise is reported too, with its log
tail, and the script goes on. medseg refuses a scan whose estimated peak exceeds
``--max-memory`` (default: 80% of RAM or what is free) before predicting: the table
shows that as "refused (memory)".

    .venv/bin/python benchmarks/large.py [--z 300[,800]] [--classes 3,20] [--cases 10]
        [--skip-preprocess] [--skip-predict] [--threads N] [--save FILE.json]
        [--work DIR] [--keep] [--smoke]

``--smoke``: 96 x 96 x 40 volumes, 3 preprocessing cases, base 2 features, 2
iterations, both tools (a minute or two; ``tests/test_benchmark_large.py`` runs it).
Not a test otherwise: run it by hand on a quiet machine and quote its table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # nnU-Net drivers shared with the tests
import ct_like  # noqa: E402  (benchmarks/)
import nnunet_model  # noqa: E402
import preprocess  # noqa: E402  (benchmarks/preprocess.py)
from capped_run import memory_cap, run_capped  # noqa: E402
from large_table import TOOLS, print_table, table_rows  # noqa: E402
from nnunet_oracle import _nnunet_env, to_nnunet_raw  # noqa: E402

BIN = preprocess.BIN
COARSE = 4.0  # target spacing = COARSE x the CT's voxel size (see the module docstring)
TRAIN_ID = 960  # nnU-Net dataset ids TRAIN_ID + K
TIMEOUT_S = 3600
STARTED = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


@dataclass(frozen=True)
class Sizes:
    """Volume sizes and model settings of a run (full or ``--smoke``)."""

    size: int = 512
    pre_z: int = 128
    train_z: int = 300
    base_features: int = 4
    iterations: int = 3


SMOKE = Sizes(size=96, pre_z=40, train_z=40, base_features=2, iterations=2)


# --------------------------------------------------------------------------------------
# Preprocessing side
# --------------------------------------------------------------------------------------


def preprocessing_cases(n: int, sizes: Sizes, seed: int) -> list[ct_like.CaseSpec]:
    """``n`` cases of varied spacing, each covering ``sizes.pre_z`` x 1.25 mm in z."""
    cases = []
    for i in range(n):
        spacing = ct_like.varied_spacing(i, seed)
        z = max(4, round(sizes.pre_z * 1.25 / spacing[2]))
        cases.append(ct_like.CaseSpec(f"ct_{i:03d}", i, z, spacing, sizes.size))
    return cases


def separate_z(spacing, target) -> bool:
    """nnU-Net's rule: resample z on its own if either spacing is anisotropic (> 3x)."""
    return max(spacing) / min(spacing) > 3 or max(target) / min(target) > 3


def bench_preprocess(work: Path, args: argparse.Namespace, sizes: Sizes) -> dict:
    cases = preprocessing_cases(args.cases, sizes, args.seed)
    dataset = ct_like.write_dataset(work / "CTPre", cases, 3, args.seed)
    log(f"generated {len(cases)} preprocessing cases")
    preprocess.warm_page_cache(dataset)
    result = {}
    for name, run in (("nnU-Net", preprocess.run_nnunet), ("medseg", preprocess.run_medseg)):
        try:
            result[name] = {**run(dataset, work, args.processes), "status": "ok"}
        except RuntimeError as e:  # a failed or killed step: reported, not fatal
            result[name] = {"wall": None, "peak": None, "disk": None, "status": str(e)[-2000:]}
        log(f"{name} preprocessed: {result[name]['status'][:200]}")
    plans = work / "nnunet" / "nnUNet_preprocessed" / "Dataset990_Bench" / "nnUNetPlans.json"
    target = None
    if plans.is_file():
        target = json.loads(plans.read_text())["configurations"]["3d_fullres"]["spacing"]
        target = [round(t, 4) for t in target[::-1]]  # nnU-Net's (z, y, x) -> (x, y, z)
    n_sep = sum(separate_z(c.spacing, target) for c in cases) if target else None
    shapes = sorted({(c.size, c.size, c.z) for c in cases}, key=lambda s: -s[2])
    result["info"] = {
        "cases": len(cases),
        "shapes": shapes,
        "spacings": [c.spacing for c in cases],
        "target_spacing_xyz": target,
        "separate_z_cases": n_sep,
    }
    return result


# --------------------------------------------------------------------------------------
# Prediction side
# --------------------------------------------------------------------------------------


def make_model(work: Path, k: int, args: argparse.Namespace, sizes: Sizes) -> Path:
    """nnU-Net's plans (coarse target spacing) and a briefly trained ``nnUNetTrainer``."""
    specs = [
        ct_like.CaseSpec(f"train_{i:03d}", 1000 + i, sizes.train_z, size=sizes.size)
        for i in range(args.train_cases)
    ]
    dataset = ct_like.write_dataset(work / f"CTTrain{k}", specs, k, args.seed)
    log(f"K={k}: generated {len(specs)} training CT(s)")
    raw = to_nnunet_raw(dataset, work / "nnUNet_raw", TRAIN_ID + k, f"CTTrain{k}", reader=None)
    env = _nnunet_env(work)  # not nnunet_env's nnUNet_n_proc_DA=0: the planner calls
    if args.threads is not None:  # torch.set_num_threads(nnUNet_n_proc_DA)
        env["OMP_NUM_THREADS"] = str(args.threads)
    ident, procs = ["-d", str(TRAIN_ID + k)], ["-np", str(args.processes)]
    target = [f"{COARSE * s:g}" for s in ct_like.SPACING_MM[::-1]]  # nnU-Net's (z, y, x)
    cmd = [BIN / "nnUNetv2_plan_and_preprocess", *ident, "-c", "3d_fullres", *procs]
    cmd += ["-npfp", str(args.processes), "-overwrite_target_spacing", *target, "--no_pbar"]
    nnunet_model.run_checked([str(c) for c in cmd], env)
    log(f"K={k}: nnU-Net planned and preprocessed {len(specs)} training CT(s)")
    pre = work / "nnUNet_preprocessed" / raw.name
    nnunet_model._set_features(pre / "nnUNetPlans.json", sizes.base_features)
    ids = [s.case_id for s in specs]
    split = [{"train": ids, "val": ids[-1:]}]  # nnU-Net's own 5-fold split needs 5 cases
    (pre / "splits_final.json").write_text(json.dumps(split))
    nnunet_model.run_driver(["train", pre, 0, sizes.iterations, args.seed], work, args.threads)
    log(f"K={k}: nnU-Net trained {sizes.iterations} iterations")
    model = work / "nnUNet_results" / raw.name / nnunet_model.MODEL_FOLDER
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"nnU-Net training wrote no {model}/fold_0/checkpoint_final.pth")
    return model


def write_ct(path: Path, z: int, size: int, seed: int) -> Path:
    """The CT every model predicts (same image for all K): 0.7 x 0.7 x 1.25 mm, LPS."""
    image, _, affine = ct_like.make_case(2000, z, 20, seed, size=size)
    return ct_like.write_image(image, affine, path)


def medseg_command(model: Path, ct: Path, out: Path, args: argparse.Namespace) -> list:
    return [
        BIN / "medseg",
        "predict",
        "-m",
        model,
        "-i",
        ct,
        "-o",
        out,
        "--formats",
        "nifti",
        "--device",
        "cpu",
        "--folds",
        "0",
        "--engine",
        args.engine,
        "--engine-cache",
        args.engine_cache,
    ]


def label_agreement(ours: Path, theirs: Path) -> float:
    a = np.asanyarray(nib.load(ours).dataobj)
    b = np.asanyarray(nib.load(theirs).dataobj)
    if a.shape != b.shape:
        raise RuntimeError(f"medseg {a.shape} vs nnU-Net {b.shape} for {ours.name}")
    return float(np.mean(a == b))


def bench_predict(work: Path, model: Path, ct: Path, args: argparse.Namespace) -> dict:
    """One CT through both tools; wall, peak RSS, status and label agreement."""
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    nnunet_env = nnunet_model.nnunet_env(model.parents[2], args.threads)
    ct.read_bytes()  # page cache warm for both
    name = nnunet_model.case_id(ct)
    cmd = nnunet_model.predict_command(
        model, [ct], work / "nnunet", mirroring=True, processes=args.processes
    )
    cap = memory_cap(args.mem_cap_gb)
    runs = {"nnU-Net": run_capped(cmd, nnunet_env, work / "nnunet.log", cap, args.timeout)}
    cmd = medseg_command(model, ct, work / "medseg", args)
    cap = memory_cap(args.mem_cap_gb)  # what is free now, after nnU-Net
    runs["medseg"] = run_capped(cmd, env, work / "medseg.log", cap, args.timeout)
    ours, theirs = work / "medseg" / f"{name}.nii.gz", work / "nnunet" / f"{name}.nii.gz"
    ok = all(r["status"] == "ok" for r in runs.values())
    runs["agreement"] = label_agreement(ours, theirs) if ok else None
    return runs


def predict_side(work: Path, args: argparse.Namespace, sizes: Sizes) -> list[dict]:
    cts = {z: write_ct(work / "ct" / f"ct_{z}.nii.gz", z, sizes.size, args.seed) for z in args.z}
    small = write_ct(work / "ct_small" / "small.nii.gz", 24, 48, args.seed)
    log(f"generated the CT(s) to predict, Z = {', '.join(map(str, cts))}")
    results = []
    for k in args.classes:
        model = make_model(work / f"model_{k}", k, args, sizes)
        if args.engine == "openvino":  # the one-time conversion into the engine cache
            run = run_capped(
                medseg_command(model, small, work / f"convert_{k}", args),
                dict(os.environ),
                work / f"convert_{k}.log",
                memory_cap(args.mem_cap_gb),
                args.timeout,
            )
            log(f"K={k}: one-time engine conversion run (small CT) {run['wall']:.1f} s")
        for z, ct in cts.items():
            runs = bench_predict(work / f"predict_{k}_{z}", model, ct, args)
            results.append({"classes": k, "z": z, "size": sizes.size, **runs})
            done = ", ".join(f"{t} {runs[t]['status']} {runs[t]['wall']:.1f} s" for t in TOOLS)
            log(f"K={k}, Z={z} predicted: {done}")
    return results


def describe(args, sizes: Sizes, pre: dict | None, started: float) -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [
        f"CT-scale benchmark, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 1e9:.0f} GB RAM, OMP_NUM_THREADS={threads}"
        f", 1-min load average {os.getloadavg()[0]:.1f} at the end, total run "
        f"{time.perf_counter() - started:.0f} s{' (smoke)' if args.smoke else ''}."
    ]
    if pre is not None:
        info = pre["info"]
        lines.append(
            f"Preprocessing: {info['cases']} cases, shapes {info['shapes']}, "
            f"{args.processes} processes; nnU-Net's 3d_fullres target spacing (x, y, z) "
            f"{info['target_spacing_xyz']}, separate-z resampling for "
            f"{info['separate_z_cases']} of {info['cases']} cases."
        )
    if not args.skip_predict:
        cap = "90% of the memory available at their start"
        cap = f"{args.mem_cap_gb:g} GB" if args.mem_cap_gb is not None else cap
        lines.append(
            f"Prediction: CT {sizes.size}x{sizes.size}xZ at 0.7x0.7x1.25 mm (LPS), nnU-Net "
            f"plans with target spacing {COARSE:g}x the CT's voxel (so 3d_fullres is 1 tile "
            f"for a 300-slice CT), features {sizes.base_features}*2^stage, {sizes.iterations} "
            f"training iterations; mirroring on; medseg --engine {args.engine}; nnU-Net "
            f"predict_from_files with {args.processes}+{args.processes} processes; "
            f"runs killed above {cap}."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--z", type=_ints, help="slices of the predicted CT(s), e.g. 300,800")
    p.add_argument("--classes", type=_ints, default=[3, 20], help="classes incl. background")
    p.add_argument("--cases", type=int, help="preprocessing cases (default 10; smoke 3)")
    p.add_argument("--pre-z", type=int, help="slices of a 1.25 mm preprocessing case")
    p.add_argument("--train-cases", type=int, default=1, help="nnU-Net training CTs per model")
    p.add_argument("--base-features", type=int, help="network width (default 4; smoke 2)")
    p.add_argument("--iterations", type=int, help="training iterations (default 3)")
    p.add_argument("--skip-preprocess", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both tools")
    p.add_argument("-j", "--processes", type=int, default=2, help="processes of both tools")
    p.add_argument("--engine", choices=("openvino", "torch"), default="openvino")
    p.add_argument("--mem-cap-gb", type=float, help="kill a prediction run above this RSS")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, help="write all figures to this JSON file")
    p.add_argument("--work", type=Path, help="work folder (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp work folder")
    p.add_argument("--smoke", action="store_true", help="tiny volumes, for the test")
    args = p.parse_args(argv)
    args.z = args.z or ([40] if args.smoke else [300])
    args.cases = args.cases or (3 if args.smoke else 10)
    return args


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.perf_counter()
    base = SMOKE if args.smoke else Sizes()
    sizes = Sizes(
        size=base.size,
        pre_z=args.pre_z or base.pre_z,
        train_z=base.train_z,
        base_features=args.base_features or base.base_features,
        iterations=args.iterations or base.iterations,
    )
    if args.threads is not None:  # preprocess.py's runners inherit this environment
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.engine_cache = work / "engine-cache"
    pre = None if args.skip_preprocess else bench_preprocess(work / "preprocess", args, sizes)
    predictions = [] if args.skip_predict else predict_side(work / "predict", args, sizes)
    rows = table_rows(pre, predictions)
    header = describe(args, sizes, pre, started)
    print_table(rows, header)
    failures = [(p["classes"], p["z"], t, p[t]) for p in predictions for t in TOOLS]
    failures += [("preprocess", "", t, pre[t]) for t in TOOLS] if pre else []
    for k, z, tool, r in failures:
        if r["status"] != "ok":
            tail = Path(r["log"]).read_text(errors="replace")[-1500:] if r.get("log") else ""
            print(f"\n{tool} ({k} {z}): {r['status']}\n{tail}")
    if args.save:
        saved = {"header": header, "sizes": asdict(sizes), "rows": rows}
        saved.update({"preprocess": pre, "predict": predictions})
        args.save.write_text(json.dumps(saved, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-large-")) if temp else args.work
    if not temp and work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty; give a new or empty folder")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif temp:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
