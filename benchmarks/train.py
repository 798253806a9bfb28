"""Training iterations/s: medseg's trainer vs nnU-Net v2's nnUNetTrainer, side by side.

Both train 3d_fullres fold 0 of the same dataset with the same plans (medseg's
planner reproduces nnU-Net's; the script checks patch and batch size agree),
each from its own preprocessed data, on the same device, with the same number
of data-loading workers and torch threads. Each runs in its own process; after
``--warmup`` iterations the next ``--iterations`` are timed (data loading,
augmentation, forward, backward, step: everything a training iteration costs).

    .venv/bin/python benchmarks/train.py [--device cpu|cuda] [--iterations 10] [--workers 1]

nnU-Net's trainer is imported directly (not looked up by name, which needs a
working torchvision; see ../shared/NNUNET_ORACLE.md). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from nnunet_oracle import _nnunet_env, run_nnunet, to_nnunet_raw  # noqa: E402

BIN = Path(sys.executable).parent

NNUNET_DRIVER = """
import json, sys, time, torch
if __name__ == "__main__":
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pre, n, warm, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    plans = load_json(pre + "/nnUNetPlans.json")
    plans["continue_training"] = False  # what nnUNetv2_train's entry point would set
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, load_json(pre + "/dataset.json"),
                            device=torch.device(device))
    trainer.on_train_start()
    trainer.on_epoch_start()
    for _ in range(warm):
        trainer.train_step(next(trainer.dataloader_train))
    start = time.perf_counter()
    for _ in range(n):
        trainer.train_step(next(trainer.dataloader_train))
    seconds = time.perf_counter() - start
    trainer.on_train_end()
    config = trainer.configuration_manager
    print(json.dumps({"its": n / seconds, "patch": list(config.patch_size),
                      "batch": config.batch_size}))
"""

MEDSEG_DRIVER = """
import json, sys, time
from pathlib import Path
from medseg.core.records import PLANS_SCHEMA, SPLITS_SCHEMA, read_record
from medseg.training.loop import TrainSettings, train
if __name__ == "__main__":
    work, n, warm, device, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \\
        sys.argv[4], int(sys.argv[5])
    plans = read_record(work / "plans.json", PLANS_SCHEMA)
    splits = read_record(work / "splits.json", SPLITS_SCHEMA)
    stamps = []
    settings = TrainSettings("3d_fullres", 0, device=device, epochs=1, iterations=warm + n,
                             val_iterations=1, workers=workers)
    train(plans, splits, work / "pre", work / "model", settings,
          on_iteration=lambda e, i, loss: stamps.append(time.perf_counter()))
    config = plans["configurations"]["3d_fullres"]
    print(json.dumps({"its": n / (stamps[-1] - stamps[warm - 1]),
                      "patch": config["patch_size"], "batch": config["batch_size"]}))
"""


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _run(driver: str, args: list, env: dict, work: Path) -> dict:
    """Run a driver script from a file (spawned data-loader workers re-import __main__)."""
    script = work / f"driver_{abs(hash(driver))}.py"
    script.write_text(driver)
    cmd = [sys.executable, script, *args]
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} failed:\n{result.stderr[-4000:]}")
    return _last_json(result.stdout)


def prepare_medseg(dataset: Path, work: Path) -> None:
    medseg = BIN / "medseg"
    steps = [
        [medseg, "fingerprint", dataset, "-o", work / "fp.json", "-j", "2"],
        [
            medseg,
            "plan",
            work / "fp.json",
            "-o",
            work / "plans.json",
            "--configurations",
            "3d_fullres",
        ],
        [medseg, "split", dataset, "-o", work / "splits.json", "--folds", "5"],
        [
            medseg,
            "preprocess",
            dataset,
            work / "plans.json",
            "--config",
            "3d_fullres",
            "-o",
            work / "pre",
            "-j",
            "2",
        ],
    ]
    for cmd in steps:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes, both")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-train-bench-"))
    raw = to_nnunet_raw(args.dataset, work / "nnunet" / "nnUNet_raw", 991, "TrainBench")
    oracle = run_nnunet(raw, work / "nnunet", configurations=("3d_fullres",))
    prepare_medseg(args.dataset, work / "medseg")
    env = {**_nnunet_env(work / "nnunet"), "nnUNet_n_proc_DA": str(args.workers)}
    timed = [str(args.iterations), str(args.warmup), args.device]
    theirs = _run(NNUNET_DRIVER, [oracle.preprocessed, *timed], env, work)
    ours = _run(MEDSEG_DRIVER, [work / "medseg", *timed, str(args.workers)], dict(os.environ), work)
    if (ours["patch"], ours["batch"]) != (theirs["patch"], theirs["batch"]):
        print(f"warning: plans differ: medseg {ours}, nnU-Net {theirs}")
    print(
        f"\n{args.dataset.name} 3d_fullres, patch {ours['patch']}, batch {ours['batch']}, "
        f"device {args.device}, {args.workers} worker(s), {args.iterations} timed iterations "
        f"after {args.warmup}\n"
    )
    print("| trainer | iterations/s | seconds/iteration |")
    print("| --- | --- | --- |")
    for name, r in (("medseg", ours), ("nnU-Net", theirs)):
        print(f"| {name} | {r['its']:.3f} | {1 / r['its']:.2f} |")
    print(f"\nratio medseg / nnU-Net: {ours['its'] / theirs['its']:.2f}x")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
