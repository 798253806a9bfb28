"""Set-up and runs of ``benchmarks/accuracy.py``: one plans file, one split, two trainers.

:func:`prepare` makes the inputs both tools share, in a work folder:

- ``nnunet/nnUNet_raw/Dataset994_AccuracyBench``: the dataset in nnU-Net v2's raw layout
  (files symlinked; NIfTI read with reorientation to RAS, as medseg reads it). Both tools
  read this folder, and its ``labelsTr`` are the references both are scored against.
- nnU-Net's fingerprint, plans and 3d_fullres preprocessing of it
  (:func:`nnunet_oracle.run_nnunet`).
- ``plans.json``: nnU-Net's plans with ``features_per_stage`` reduced for the CPU, plus
  the keys medseg's plans carry besides nnU-Net's (``schema``, ``labels``,
  ``channel_names``). This one file is what nnU-Net's trainer loads and what
  ``medseg preprocess`` / ``medseg train`` read; it also replaces ``nnUNetPlans.json``
  in nnU-Net's preprocessed folder.
- ``splits_final.json`` in nnU-Net's preprocessed folder (nnU-Net's trainer reads it
  there), made by medseg's :func:`make_splits`; ``medseg split --from`` checks it and
  writes the same folds as medseg's ``splits.json``.
- ``medseg preprocess`` of the raw folder with the shared plans.

:func:`run_nnunet_seed` and :func:`run_medseg_seed` train one seed in a subprocess and
predict the fold's validation cases with the tool's own sliding window (step 0.5,
Gaussian, mirroring); :func:`score` scores a prediction folder with medseg's Dice.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from nnunet_model import nnunet_env, predict_command, run_checked  # noqa: E402
from nnunet_oracle import run_nnunet, to_nnunet_raw  # noqa: E402

BIN = Path(sys.executable).parent
CONFIGURATION = "3d_fullres"
DATASET_ID, DATASET_NAME = 994, "AccuracyBench"
MODEL_FOLDER = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
MAX_FEATURES = 320  # nnU-Net's cap for 3D networks
SPLIT_SEED, N_FOLDS = 12345, 5


@dataclass(frozen=True)
class Setup:
    """The shared inputs :func:`prepare` made (paths inside the work folder)."""

    raw: Path
    nnunet_root: Path
    preprocessed: Path
    plans: Path
    splits: Path
    medseg_pre: Path
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    patch: tuple[int, ...]
    batch: int
    features: tuple[int, ...]
    labels: dict[int, str]


@dataclass(frozen=True)
class Schedule:
    """What every training run does: the same for both tools and every seed."""

    fold: int
    epochs: int
    iterations: int
    val_iterations: int
    threads: int


def reduce_plans(
    plans: dict, dataset_json: dict, base_features: int, batch: int | None = None
) -> dict:
    """nnU-Net's plans with ``features_per_stage`` = ``base * 2**stage`` (at most 320) in
    every configuration, the 3d_fullres batch size set to ``batch`` (None: nnU-Net's),
    and medseg's plans keys added (``schema``, ``labels``, ``channel_names``; nnU-Net
    ignores them). The patch size stays nnU-Net's."""
    from medseg.core.records import PLANS_SCHEMA, stamp
    from medseg.inference.nnunet_model import nnunet_plans

    out = json.loads(json.dumps(plans))
    for config in out["configurations"].values():
        kwargs = config.get("architecture", {}).get("arch_kwargs")
        if kwargs is not None:
            stages = range(kwargs["n_stages"])
            kwargs["features_per_stage"] = [min(base_features * 2**i, MAX_FEATURES) for i in stages]
    if batch is not None:
        out["configurations"][CONFIGURATION]["batch_size"] = int(batch)
    return stamp(nnunet_plans(out, dataset_json), PLANS_SCHEMA)


def dataset_cases(dataset: Path) -> list[str]:
    """The training case ids of a dataset folder (MSD or nnU-Net layout), sorted."""
    from medseg.dataset.layout import load_dataset

    return sorted(c.case_id for c in load_dataset(dataset).training)


def _medseg(*args) -> None:
    """Run one ``medseg`` command; raise with its output tail if it fails."""
    run_checked([str(BIN / "medseg"), *map(str, args)])


def _write_splits(cases: list[str], preprocessed: Path, raw: Path, out: Path) -> dict:
    """nnU-Net's ``splits_final.json`` (medseg's split of ``cases``) and, from that file,
    medseg's ``splits.json`` (``medseg split --from``); returns the medseg record."""
    from medseg.planning.splits import make_splits

    folds = make_splits(cases, N_FOLDS, SPLIT_SEED)["folds"]
    nnunet_file = preprocessed / "splits_final.json"
    nnunet_file.write_text(json.dumps(folds, indent=1))
    _medseg("split", raw, "-o", out, "--from", nnunet_file)
    return json.loads(out.read_text())


def prepare(
    dataset: Path, work: Path, cases: list[str], base_features: int, fold: int,
    batch: int | None = None,
) -> Setup:  # fmt: skip
    """Make the shared inputs in ``work`` (see the module docstring) for ``cases``."""
    root = work / "nnunet"
    raw = to_nnunet_raw(dataset, root / "nnUNet_raw", DATASET_ID, DATASET_NAME, cases=cases)
    oracle = run_nnunet(raw, root, configurations=(CONFIGURATION,))
    dataset_json = json.loads((oracle.preprocessed / "dataset.json").read_text())
    plans = reduce_plans(oracle.plans, dataset_json, base_features, batch)
    text = json.dumps(plans, indent=1) + "\n"
    (work / "plans.json").write_text(text)
    (oracle.preprocessed / f"{oracle.plans['plans_name']}.json").write_text(text)
    splits = _write_splits(cases, oracle.preprocessed, raw, work / "splits.json")
    _medseg(
        "preprocess", raw, work / "plans.json", "--config", CONFIGURATION,
        "-o", work / "medseg_pre", "-j", "2",
    )  # fmt: skip
    config = plans["configurations"][CONFIGURATION]
    return Setup(
        raw=raw,
        nnunet_root=root,
        preprocessed=oracle.preprocessed,
        plans=work / "plans.json",
        splits=work / "splits.json",
        medseg_pre=work / "medseg_pre",
        train_ids=tuple(splits["folds"][fold]["train"]),
        val_ids=tuple(splits["folds"][fold]["val"]),
        patch=tuple(config["patch_size"]),
        batch=int(config["batch_size"]),
        features=tuple(config["architecture"]["arch_kwargs"]["features_per_stage"]),
        labels={int(v): n for v, n in plans["labels"]},
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and stdout of one subprocess (raises with its output
    tail). CPU seconds count the subprocess and the children it waited for; on a shared
    machine they move less with other jobs' load than wall seconds do."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    stdout = run_checked([str(c) for c in cmd], env)
    return time.perf_counter() - start, _cpu_seconds() - cpu, stdout


def _validation_inputs(setup: Setup, folder: Path) -> list[Path]:
    """``folder/CASE.nii.gz`` links to the validation images (nnU-Net names outputs after
    its inputs, so they come out as ``CASE.nii.gz``, like the references)."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for case in setup.val_ids:
        link = folder / f"{case}.nii.gz"
        if not link.is_symlink():
            link.symlink_to(setup.raw / "imagesTr" / f"{case}_0000.nii.gz")
        links.append(link)
    return links


def run_nnunet_seed(setup: Setup, schedule: Schedule, seed: int, out: Path) -> dict:
    """Train nnU-Net with ``seed`` (results in ``out``), predict the validation cases."""
    env = nnunet_env(setup.nnunet_root, schedule.threads)
    env["nnUNet_results"] = str(out / "nnUNet_results")
    driver = Path(__file__).with_name("accuracy_nnunet.py")
    s = schedule
    args = [setup.plans, setup.preprocessed / "dataset.json", s.fold, s.epochs, s.iterations]
    args += [s.val_iterations, seed, s.threads]
    train_s, train_cpu, stdout = _timed([sys.executable, driver, *args], env)
    model = Path(json.loads(stdout.strip().splitlines()[-1])["model"])
    inputs = _validation_inputs(setup, out / "inputs")
    cmd = predict_command(model, inputs, out / "predictions", folds=(s.fold,), processes=1)
    predict_s, _, _ = _timed(cmd, env)
    return {
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "predict_s": predict_s,
        "predictions": out / "predictions",
    }


def run_medseg_seed(setup: Setup, schedule: Schedule, seed: int, out: Path) -> dict:
    """``medseg train`` with ``seed`` into ``out/model``, then ``medseg validate``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(schedule.threads)}
    s = schedule
    common = [setup.medseg_pre, setup.plans, setup.splits, "--fold", s.fold, "-o", out / "model"]
    common += ["--device", "cpu", "--threads", s.threads]
    train = [BIN / "medseg", "train", *common, "--config", CONFIGURATION, "--epochs", s.epochs]
    train += ["--iterations", s.iterations, "--val-iterations", s.val_iterations]
    train += ["--seed", seed, "--workers", 0, "--no-validation"]
    train_s, train_cpu, _ = _timed(train, env)
    predict_s, _, _ = _timed([BIN / "medseg", "validate", *common, "--dataset", setup.raw], env)
    return {
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "predict_s": predict_s,
        "predictions": out / "model" / "validation",
    }


def score(predictions: Path, setup: Setup) -> dict[str, float]:
    """Mean Dice over the validation cases per foreground label (``"1"``, ``"2"``) and
    their mean (``"mean"``), from :func:`medseg.evaluation.metrics.evaluate_folder` on the
    NIfTI predictions against the raw labels (original geometry)."""
    from medseg.evaluation.metrics import evaluate_folder

    summary = evaluate_folder(
        predictions, setup.raw / "labelsTr", setup.labels, processes=2, cases=setup.val_ids
    )
    dice = {str(k): float(v["dice"]) for k, v in summary["mean"].items()}
    dice["mean"] = float(summary["foreground_mean"]["dice"])
    if not all(math.isfinite(d) for d in dice.values()):
        raise RuntimeError(f"{predictions}: non-finite Dice {dice}")
    return dice
