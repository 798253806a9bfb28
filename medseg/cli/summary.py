"""``medseg summary``: what a workflow results folder holds, as tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from medseg.cli.console import add_command, out

HELP = "summarise a workflow results folder (dataset check, plans, preprocessing)"
EPILOG = """\
Reads the files the workflow wrote (dataset_check.json, fingerprint.json,
plans.json, splits.json, preprocessed/*) and prints what they say. The
Snakemake workflow prints this when it finishes.

Examples:
  medseg summary results/demo
"""


def add_parser(sub) -> None:
    p = add_command(sub, "summary", HELP, EPILOG, run)
    p.add_argument("results", type=Path, metavar="RESULTS", help="the workflow's output folder")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stages(results: Path) -> Table:
    table = Table(title=f"medseg results in {results}")
    table.add_column("stage")
    table.add_column("result")
    check = _read(results / "dataset_check.json")
    if check:
        table.add_row("dataset", f"{check['n_valid']} of {check['n_cases']} cases valid "
                      f"({check['dataset']})")  # fmt: skip
    fp = _read(results / "fingerprint.json")
    if fp:
        excluded = f", {len(fp['excluded'])} excluded" if fp.get("excluded") else ""
        table.add_row("fingerprint", f"{len(fp['cases'])} cases{excluded}, channels "
                      f"{', '.join(fp['channel_names'])}")  # fmt: skip
    splits = _read(results / "splits.json")
    if splits:
        sizes = "/".join(str(len(f["val"])) for f in splits["folds"])
        table.add_row("splits", f"{len(splits['folds'])} folds, validation cases {sizes}")
    for folder in sorted((results / "preprocessed").glob("*")):
        done = _read(folder / "preprocess.json")
        if done:
            table.add_row(f"preprocessed {folder.name}",
                          f"{len(done['cases'])} cases in {done['seconds']} s")  # fmt: skip
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.cli.plan import plans_table

    out.print(_stages(args.results))
    plans = _read(args.results / "plans.json")
    if plans:
        out.print(plans_table(plans))
    return 0
