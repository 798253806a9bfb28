"""``medseg train``: one configuration, one fold; resumable."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from medseg.cli.console import add_command, err, out
from medseg.cli.errors import EXIT_STOPPED
from medseg.cli.validate import add_validation_options, fold_arg, read_fold_inputs, validate

HELP = "train one planned configuration on one cross-validation fold"
EPILOG = """\
nnU-Net v2's recipe: the U-Net the plans describe (deep supervision), Dice + CE,
SGD with Nesterov momentum 0.99, learning rate 0.01 with polynomial decay,
foreground oversampling and nnU-Net's augmentation (on the GPU when training on
CUDA). A checkpoint is written atomically after every epoch: a killed run loses
at most the epoch in progress, and --resume continues it exactly. SIGTERM or
SIGUSR1 (a cluster's time limit or preemption; SLURM: --signal=USR1@120) stops
training at the next iteration with a checkpoint of the epoch so far (exit code
75); --resume continues mid-epoch with the same result as a run never stopped.
--checkpoint-minutes N also writes that checkpoint every N minutes, for clusters
that kill without warning. --gpus N trains data-parallel on N GPUs of this node
(nnU-Net's scheme: the plans' batch split over the GPUs, Dice over the whole
batch, one process per GPU; rank 0 writes the checkpoints and logs; a signal to
any process stops all of them together). With --device cpu, --gpus N runs N CPU
processes instead: for testing only. After training, the fold's validation cases are
predicted on whole volumes (sliding window) and mapped back to their original
geometry, with Dice per class.

MODEL_DIR receives checkpoint_{latest,best,final}.safetensors,
training_log.jsonl (one line per epoch), progress.png and validation/.

Examples:
  medseg train pre/3d_fullres plans.json splits.json --config 3d_fullres --fold 0 \
      -o models/3d_fullres/fold_0
  medseg train ... --device cpu --epochs 5 --iterations 20          # a short CPU run
  medseg train ... --resume                                          # continue after a crash
  medseg train ... --resume --checkpoint-minutes 15         # on a cluster that preempts
  medseg train ... --device cuda --gpus 4                    # one fold on 4 GPUs of a node
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
    p.add_argument(
        "--checkpoint-minutes",
        type=_positive_minutes,
        metavar="N",
        help="also checkpoint mid-epoch every N minutes (default: at epoch ends and on "
        "SIGTERM/SIGUSR1 only)",
    )
    p.add_argument(
        "--gpus",
        type=_positive_int,
        default=1,
        metavar="N",
        help="data-parallel training on N GPUs of this node (default: 1); with --device cpu, "
        "N CPU processes (for testing)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: all cores; with --gpus, per process)",
    )
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--no-validation", action="store_true", help="skip the final fold validation")
    when.add_argument(
        "--validation-only",
        action="store_true",
        help="only the fold validation of the finished training (the same as 'medseg validate')",
    )


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def stop_on_signals() -> threading.Event:
    """A flag that SIGTERM and SIGUSR1 set (instead of ending the process): training
    checks it after every iteration, checkpoints and stops."""
    flag = threading.Event()

    def handler(signum, _frame) -> None:
        flag.set()

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)
    return flag


def run(args: argparse.Namespace) -> int:
    plans, splits = read_fold_inputs(args)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from medseg.training.interrupt import StopPolicy, TrainingStopped
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
        flag = stop_on_signals()
        minutes = args.checkpoint_minutes
        stop = StopPolicy(flag.is_set, None if minutes is None else minutes * 60)
        hooks = dict(on_iteration=on_iteration, on_epoch=on_epoch, stop=stop)
        try:
            with bar:
                if args.gpus > 1:
                    from medseg.training.distributed import train_distributed

                    train_distributed(
                        plans, splits, args.preprocessed, args.output, settings, args.gpus,
                        resume=args.resume, previous=args.previous, threads=args.threads, **hooks,
                    )  # fmt: skip
                else:
                    train(
                        plans, splits, args.preprocessed, args.output, settings,
                        resume=args.resume, previous=args.previous, **hooks,
                    )  # fmt: skip
        except TrainingStopped as stopped:
            err.print(f"stopped: {stopped}", highlight=False, soft_wrap=True)
            return EXIT_STOPPED
    if args.no_validation:
        return 0
    return validate(args, plans, splits)
