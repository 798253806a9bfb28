"""``medseg status``: where every training job of a results folder stands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.table import Table

from medseg.cli.console import add_command, out
from medseg.core.errors import UsageError
from medseg.core.layout import FoldDir, Results
from medseg.training.progress import fold_progress, read_history

HELP = "show each training job's epoch, last pseudo-Dice and expected finish"
EPILOG = """\
Reads every models/<configuration>/fold_<k>/training_log.jsonl under RESULTS (the
workflow's output folder; or give a models folder, or one fold folder) and prints,
per configuration and fold: finished / running / stalled (no new epoch for three
epochs' time: the job may have died or be waiting for a node), epochs done of
planned, the last epoch's pseudo-Dice and its moving average, and the expected
time left from the median of the recent epochs. Only reads files: safe to run
while the jobs run, on a cluster's login node too.

Examples:
  medseg status results/demo
  medseg status results/demo --json        the same as JSON, for scripts
  watch -n 60 medseg status results/demo
"""


def add_parser(sub) -> None:
    p = add_command(sub, "status", HELP, EPILOG, run)
    p.add_argument("results", type=Path, metavar="RESULTS", help="the workflow's output folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def fold_folders(root: Path) -> list[Path]:
    """The fold folders under ``root``: a results folder, a models folder or one fold."""
    if (root / FoldDir(Path()).training_log).is_file():
        return [root]
    models = Results(root).models
    base = models if models.is_dir() else root
    return sorted(p for p in base.glob("*/fold_*") if p.is_dir())


def _row(folder: Path, now: float) -> dict:
    fold = FoldDir(folder)
    log = fold.training_log
    age = now - log.stat().st_mtime if log.is_file() else None
    finished = fold.checkpoint().is_file()
    progress = fold_progress(read_history(log), finished, age)
    return {"configuration": folder.parent.name, "fold": folder.name, **progress.to_dict()}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _table(root: Path, rows: list[dict]) -> Table:
    table = Table(title=f"training in {root}")
    for col in ("configuration", "fold", "state", "epochs", "pseudo-Dice (EMA)", "epoch", "left"):
        table.add_column(col)
    for r in rows:
        planned = "?" if r["epochs"] is None else str(r["epochs"])
        dice = "-" if r["pseudo_dice"] is None else f"{r['pseudo_dice']:.3f}"
        if r["ema_pseudo_dice"] is not None:
            dice += f" ({r['ema_pseudo_dice']:.3f})"
        epoch = "-" if r["epoch_seconds"] is None else f"{r['epoch_seconds']:.0f} s"
        left = _duration(r["eta_seconds"]) if r["state"] == "running" else "-"
        done = f"{r['epochs_done']} of {planned}"
        table.add_row(r["configuration"], r["fold"], r["state"], done, dice, epoch, left)
    return table


def run(args: argparse.Namespace) -> int:
    if not args.results.is_dir():
        raise UsageError(f"{args.results}: no such folder; give the workflow's output folder")
    folders = fold_folders(args.results)
    if not folders:
        raise UsageError(
            f"{args.results}: no training jobs found (no models/<configuration>/fold_<k> "
            "folders); give the workflow's output folder"
        )
    now = time.time()
    rows = [_row(folder, now) for folder in folders]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        out.print(_table(args.results, rows))
    return 0
