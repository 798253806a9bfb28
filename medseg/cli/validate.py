"""``medseg validate``: predict and score a trained fold's validation cases."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, out
from medseg.core.plans import Plans

HELP = "predict and score the validation cases of a trained fold (cross-validation)"
EPILOG = """\
The fold's validation cases (from SPLITS) are predicted on whole volumes from
their preprocessed data (sliding window, Gaussian weighting, step 0.5,
mirroring), mapped back to their original geometry and scored (Dice per class)
against the dataset's labels (--dataset), or, without it, against the
preprocessed labels mapped back. MODEL_DIR/validation/ receives CASE.nii.gz
(labels), CASE.npz (probabilities, for ensembling in 'medseg select') and
metrics.json. 'medseg train' runs this after training unless --no-validation.

Examples:
  medseg validate pre/3d_fullres plans.json splits.json --fold 0 \\
      -o models/3d_fullres/fold_0 --dataset /data/Task04_Hippocampus
  medseg validate ... --checkpoint best --no-mirroring
"""


def fold_arg(text: str):
    """A fold number, or ``all``."""
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be a number or 'all', got {text!r}") from None


def add_parser(sub) -> None:
    p = add_command(sub, "validate", HELP, EPILOG, run)
    p.add_argument("preprocessed", type=Path, metavar="PREPROCESSED_DIR")
    p.add_argument("plans", type=Path, metavar="PLANS")
    p.add_argument("splits", type=Path, metavar="SPLITS")
    p.add_argument("--fold", required=True, type=fold_arg, metavar="K", help="fold number or 'all'")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="MODEL_DIR",
        help="the fold's training folder (holds its checkpoints)",
    )
    add_validation_options(p)
    p.add_argument(
        "--checkpoint",
        choices=("final", "best"),
        default="final",
        help="which checkpoint to validate (default: final)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")


def add_validation_options(p: argparse.ArgumentParser) -> None:
    """Options shared with ``medseg train`` (which validates after training)."""
    p.add_argument(
        "--dataset",
        type=Path,
        metavar="DATASET",
        help="raw dataset, to score against the original labels",
    )
    p.add_argument(
        "--previous",
        type=Path,
        metavar="DIR",
        help="a cascade stage: the previous stage's CV segmentations ('medseg previous-stage')",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--no-mirroring", action="store_true", help="no mirroring test-time augmentation"
    )


def validate(
    args: argparse.Namespace, plans: Plans, splits: dict, checkpoint: str = "final"
) -> int:
    """Run the fold validation ``args`` describe and print its mean Dice."""
    from medseg.core.errors import CheckpointError
    from medseg.core.layout import Checkpoint, FoldDir
    from medseg.validation.fold import ValidationSettings, validate_fold

    which = Checkpoint.FINAL if checkpoint == "final" else Checkpoint.BEST
    if not FoldDir(args.output).checkpoint(which).exists():
        raise CheckpointError(
            f"{args.output}: no {which.value}.safetensors; finish the "
            "training first ('medseg train')"
        )
    settings = ValidationSettings(
        fold=args.fold, device=args.device, mirroring=not args.no_mirroring, checkpoint=which
    )
    summary = validate_fold(
        args.output,
        plans,
        splits,
        args.preprocessed,
        settings,
        dataset=args.dataset,
        previous=args.previous,
    )
    means = ", ".join(f"{k} {v:.4f}" for k, v in summary["mean_dice"].items())
    out.print(f"fold validation ({summary['n_cases']} cases): Dice {means}", highlight=False)
    return 0


def read_fold_inputs(args: argparse.Namespace) -> tuple[Plans, dict]:
    """What 'medseg train' and 'medseg validate' share before work: the output must not
    touch an input, torch's threads, the plans and the splits read and checked."""
    from medseg.core.plans import read_plans
    from medseg.core.records import SPLITS_SCHEMA, read_record
    from medseg.io.guard import refuse_overlap

    inputs = [args.preprocessed, args.plans, args.splits, args.dataset, args.previous]
    refuse_overlap(inputs, args.output)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return read_plans(args.plans), read_record(args.splits, SPLITS_SCHEMA)


def run(args: argparse.Namespace) -> int:
    plans, splits = read_fold_inputs(args)
    return validate(args, plans, splits, args.checkpoint)
