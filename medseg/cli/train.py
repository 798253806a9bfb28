"""``medseg train``: one configuration, one fold; resumable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medseg.cli.console import add_command, err, out
from medseg.cli.validate import add_validation_options, fold_arg, read_fold_inputs, validate

HELP = "train one planned configuration on one cross-validation fold"
EPILOG = """\
nnU-Net v2's recipe: the U-Net the plans describe (deep supervision), Dice + CE,
SGD with Nesterov momentum 0.99, learning rate 0.01 with polynomial decay,
foreground oversampling and nnU-Net's augmentation (on the GPU when training on
CUDA). A checkpoint is written atomically after every epoch: a killed run loses
at most the epoch in progress, and --resume continues it exactly. After
training, the fold's validation cases are predicted on whole volumes (sliding
window) and mapped back to their original geometry, with Dice per class.

MODEL_DIR receives checkpoint_{latest,best,final}.safetensors,
training_log.jsonl (one line per epoch), progress.png and validation/.

Examples:
  medseg train pre/3d_fullres plans.json splits.json --config 3d_fullres --fold 0 \
      -o models/3d_fullres/fold_0
  medseg train ... --device cpu --epochs 5 --iterations 20          # a short CPU run
  medseg train ... --resume                                          # continue after a crash
  medseg train ... --no-validation                                  # validate later:
  medseg validate pre/3d_fullres plans.json splits.json --fold 0 -o models/3d_fullres/fold_0
"""


def add_parser(sub) -> None:
    p = add_command(sub, "train", HELP, EPILOG, run)
    p.add_argument("preprocessed", type=Path, metavar="PREPROCESSED_DIR")
    p.add_argument("plans", type=Path, metavar="PLANS")
    p.add_argument("splits", type=Path, metavar="SPLITS")
    p.add_argument("--config", required=True, metavar="NAME", help="configuration, e.g. 3d_fullres")
    p.add_argument("--fold", required=True, type=fold_arg, metavar="K", help="fold number or 'all'")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL_DIR")
    add_validation_options(p)
    p.add_argument("--epochs", type=int, default=1000, help="default: 1000 (nnU-Net)")
    p.add_argument("--iterations", type=int, default=250, help="per epoch (default: 250)")
    p.add_argument("--val-iterations", type=int, default=50, help="per epoch (default: 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 2) - 1)),
        help="data-loading processes (default: %(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_latest")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--no-validation", action="store_true", help="skip the final fold validation")
    when.add_argument(
        "--validation-only",
        action="store_true",
        help="only the fold validation of the finished training (the same as 'medseg validate')",
    )


def run(args: argparse.Namespace) -> int:
    plans, splits = read_fold_inputs(args)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from medseg.training.loop import TrainSettings, train

    settings = TrainSettings(
        configuration=args.config,
        fold=args.fold,
        device=args.device,
        epochs=args.epochs,
        iterations=args.iterations,
        val_iterations=args.val_iterations,
        seed=args.seed,
        workers=args.workers,
        amp=not args.no_amp,
    )
    bar = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task("train", total=args.iterations, epoch=0, loss=0.0)

    def on_iteration(epoch: int, it: int, loss: float) -> None:
        bar.update(task, completed=it + 1, epoch=epoch, loss=loss)

    def on_epoch(record: dict) -> None:
        dice = ", ".join(f"{d:.3f}" for d in record["pseudo_dice"])
        out.print(
            f"epoch {record['epoch']}: train {record['train_loss']:.4f}, val "
            f"{record['val_loss']:.4f}, pseudo Dice [{dice}], EMA "
            f"{record['ema_pseudo_dice']:.4f}, {record['epoch_seconds']:.1f} s, "
            f"{record['iterations_per_second']:.2f} it/s"
            + (" (new best)" if record.get("new_best") else ""),
            highlight=False,
        )

    if not args.validation_only:
        with bar:
            train(
                plans,
                splits,
                args.preprocessed,
                args.output,
                settings,
                resume=args.resume,
                previous=args.previous,
                on_iteration=on_iteration,
                on_epoch=on_epoch,
            )
    if args.no_validation:
        return 0
    return validate(args, plans, splits)
