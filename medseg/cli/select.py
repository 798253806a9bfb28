"""``medseg select``: best configuration or ensemble from cross-validation, and the model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medseg.cli.console import add_command, out

HELP = "choose the best configuration or ensemble from cross-validation; write the model"
EPILOG = """\
Every trained configuration in MODELS (MODELS/<configuration>/fold_<k>, as
'medseg train' writes them) is scored on its cross-validation predictions
against the dataset's labels, and so is every pairwise ensemble. The best mean
foreground Dice wins (nnU-Net's rule); connected-component postprocessing is
chosen on its cross-validation predictions; with --model, the deployable model
folder (all folds, plans, labels, postprocessing) is written there (or later,
from selection.json, by 'medseg export').

CV_DIR receives each candidate's predictions and summary.json / summary.csv,
and selection.json with the scores and the choice.

Examples:
  medseg select results/models --dataset /data/Task04_Hippocampus \\
      --plans results/plans.json --splits results/splits.json \\
      -o results/cv --model results/model
"""


def add_parser(sub) -> None:
    p = add_command(sub, "select", HELP, EPILOG, run)
    p.add_argument("models", type=Path, metavar="MODELS", help="folder of <config>/fold_<k>")
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder (the labels)")
    p.add_argument("--plans", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="CV_DIR")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="write the model folder here")
    p.add_argument("--configurations", nargs="+", metavar="NAME", help="consider only these")
    p.add_argument("-j", "--processes", type=int, default=min(4, os.cpu_count() or 1))


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from medseg.cli.export import export_selection
    from medseg.core.layout import CvDir
    from medseg.core.plans import read_plans
    from medseg.core.records import SPLITS_SCHEMA, read_record
    from medseg.dataset.layout import load_dataset
    from medseg.evaluation.select import select_model, write_selection
    from medseg.io.guard import refuse_overlap

    inputs = [args.models, args.dataset, args.plans, args.splits]
    refuse_overlap(inputs, args.output)
    if args.model:
        refuse_overlap(inputs + [args.output], args.model, replaces=True)
    plans = read_plans(args.plans)
    splits = read_record(args.splits, SPLITS_SCHEMA)
    selection = select_model(
        args.models,
        load_dataset(args.dataset),
        plans,
        splits,
        args.output,
        configurations=args.configurations,
        processes=args.processes,
    )
    if args.model:
        export_selection(args.models, plans, selection, args.model)
    write_selection(selection, CvDir(args.output).selection)
    foreground = [(v, n) for v, n in plans.labels.pairs if v != 0]
    names = [n for _, n in foreground]
    table = Table(title=f"cross-validation ({selection['cases']} cases): mean Dice")
    for col in ("candidate", *names, "foreground"):
        table.add_column(col)
    for key, c in selection["candidates"].items():
        per_label = [f"{c['mean'][str(v)]['dice']:.4f}" for v, _ in foreground]
        mark = " *" if key == selection["chosen"] else ""
        table.add_row(key + mark, *per_label, f"{c['foreground_dice']:.4f}")
    out.print(table)
    steps = selection["postprocessing"]["steps"]
    written = f"; model written to {args.model}" if args.model else ""
    out.print(
        f"chosen: {selection['chosen']}; postprocessing: "
        f"{', '.join(s['method'] for s in steps) if steps else 'none'}{written}",
        highlight=False,
    )
    return 0
