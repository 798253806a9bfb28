"""``medseg check``: validate every case of a dataset, report all problems at once."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.markup import escape

from medseg.cli.console import add_command, out, progress

HELP = "validate a dataset (MSD or nnU-Net v2 layout); exit 0 only if every case is clean"
EPILOG = """\
Every case is read and checked for: unreadable or corrupt files, missing channel
files, wrong number of channels, image/label shape or voxel-grid mismatch, label
values not declared in dataset.json, NaN/Inf intensities, and labels with no
foreground. All problems are printed, one line per problem, naming the case.

Examples:
  medseg check /data/Task04_Hippocampus
  medseg check /data/Dataset004_Hippocampus -j 4 --report problems.json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "check", HELP, EPILOG, run)
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder with dataset.json")
    p.add_argument(
        "-j",
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="cases checked in parallel (default: %(default)s)",
    )
    p.add_argument(
        "--allow-empty-labels",
        action="store_true",
        help="do not report labels that hold background only",
    )
    p.add_argument("--include-test", action="store_true", help="also check the test images")
    p.add_argument("--report", type=Path, metavar="JSON", help="also write the problems as JSON")


def run(args: argparse.Namespace) -> int:
    from medseg.dataset.check import CheckSettings, check_dataset
    from medseg.dataset.layout import load_dataset
    from medseg.io.atomic import write_text_atomic

    spec = load_dataset(args.dataset)
    settings = CheckSettings(allow_empty_labels=args.allow_empty_labels)
    n = len(spec.training) + (len(spec.test) if args.include_test else 0)
    with progress() as bar:
        task = bar.add_task(f"checking {spec.name}", total=n)
        report = check_dataset(
            spec,
            settings,
            processes=args.processes,
            include_test=args.include_test,
            on_case_done=lambda _: bar.advance(task),
        )
    for problem in report.problems:
        out.print(escape(str(problem)), highlight=False, soft_wrap=True)
    summary = (
        f"{report.n_cases} cases checked ({spec.layout} layout, {spec.n_channels} channel(s), "
        f"labels {sorted(spec.label_values)}): {report.n_valid} valid"
    )
    if report.problems:
        summary += f", {len(report.bad_cases)} with {len(report.problems)} problem(s)"
    out.print(summary, style="bold green" if report.ok else "bold red", highlight=False)
    if args.report:
        write_text_atomic(
            args.report,
            json.dumps(
                {
                    "dataset": str(spec.root),
                    "n_cases": report.n_cases,
                    "n_valid": report.n_valid,
                    "problems": [
                        {"case": p.case_id, "message": p.message} for p in report.problems
                    ],
                },
                indent=2,
            ),
        )
    return 0 if report.ok else 1
