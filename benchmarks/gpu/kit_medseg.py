"""medseg's side of the GPU kit's Dice comparison (run by ``kit_run.py``).

    python kit_medseg.py WORK RESULT --device cuda --epochs 3 --iterations 250 \
        --val-iterations 5 --workers 4

``WORK`` holds ``plans.json``, ``splits.json`` and ``pre/`` (medseg's 3d_fullres store);
the model goes to ``WORK/model``. Trains fold 0 as ``medseg train`` does (its GPU
defaults: augmentation on the device, bf16 autocast) for ``epochs`` of ``iterations``,
then validates the fold as ``medseg validate`` does (sliding window with mirroring,
back to each case's original grid, Dice against the preprocessed labels mapped back)
and writes its figures as JSON to ``RESULT``. Data-loading workers start with spawn,
hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def dice(args: argparse.Namespace) -> dict:
    from medseg.core.records import PLANS_SCHEMA, SPLITS_SCHEMA, read_record
    from medseg.training.loop import TrainSettings, train
    from medseg.validation.fold import ValidationSettings, validate_fold

    work = args.work
    plans = read_record(work / "plans.json", PLANS_SCHEMA)
    splits = read_record(work / "splits.json", SPLITS_SCHEMA)
    settings = TrainSettings(
        "3d_fullres",
        0,
        device=args.device,
        epochs=args.epochs,
        iterations=args.iterations,
        val_iterations=args.val_iterations,
        workers=args.workers,
    )
    stamps: list[float] = []
    start = time.perf_counter()
    train(
        plans,
        splits,
        work / "pre",
        work / "model",
        settings,
        on_iteration=lambda epoch, it, loss: stamps.append(time.perf_counter()),
    )
    trained = time.perf_counter()
    checked = ValidationSettings(0, device=args.device)
    summary = validate_fold(work / "model", plans, splits, work / "pre", checked)
    validated = time.perf_counter()
    skip = args.iterations if len(stamps) > args.iterations + 1 else 1  # first epoch: warm-up
    return {
        "dice": summary["mean_dice"],
        "mean_dice": sum(summary["mean_dice"].values()) / len(summary["mean_dice"]),
        "iterations": len(stamps),
        "its": (len(stamps) - skip) / (stamps[-1] - stamps[skip - 1]) if len(stamps) > 1 else None,
        "train_seconds": trained - start,
        "validation_seconds": validated - trained,
        "validation_cases": summary["n_cases"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="folder with plans.json, splits.json, pre/")
    parser.add_argument("result", type=Path, help="JSON file to write")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=250, help="per epoch")
    parser.add_argument("--val-iterations", type=int, default=5, help="per epoch")
    parser.add_argument("--workers", type=int, default=4, help="data-loading processes")
    args = parser.parse_args()
    args.result.write_text(json.dumps(dice(args), indent=1) + "\n")


if __name__ == "__main__":
    main()
