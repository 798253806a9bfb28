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
Every case is read and checked; each problem is one line naming the case and
the file (relative to the dataset folder). Problems (exit 1):
  files       missing, unreadable or corrupt, 2D instead of 3D, or (links
              followed) outside the dataset folder (--allow-outside-links
              accepts that, e.g. for an imagesTr linking into a data store)
  headers     NIfTI voxel size (pixdim) zero, negative or not finite; sform and
              qform both set but placing the scan differently (medseg reads the
              sform, other tools may read the qform)
  images      wrong number of channels, channel files differing in shape or
              voxel grid, NaN/Inf intensities, blank (one value
              in >= 99% of a channel's voxels; said so explicitly when the
              label has foreground), a single slice (an axis one voxel long)
  labels      a single slice, shape or voxel grid differing from the image,
              values not declared in dataset.json, no foreground
              (--allow-empty-labels accepts that)
  dataset     numTraining in dataset.json differing from the training cases
              found (reported as "dataset.json: ...")
Warnings (printed as "warning:", do not change the exit code): a NIfTI header
with no orientation (sform and qform codes 0).

Examples:
  medseg check /data/Task04_Hippocampus
  medseg check /data/Dataset004_Hippocampus -j 4 --report problems.json
  medseg check /cluster/Dataset004_Hippocampus --allow-outside-links
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
    p.add_argument(
        "--allow-outside-links",
        action="store_true",
        help="accept case files that resolve (symbolic links followed) outside the dataset "
        "folder, e.g. an imagesTr linking into a data store",
    )
    p.add_argument("--include-test", action="store_true", help="also check the test images")
    p.add_argument("--report", type=Path, metavar="JSON", help="also write the problems as JSON")


def _summary(spec, report) -> str:
    text = (
        f"{report.n_cases} cases checked ({spec.layout} layout, {spec.n_channels} channel(s), "
        f"labels {sorted(spec.label_values)}): {report.n_valid} valid"
    )
    n_case_problems = len(report.problems) - len(report.dataset_problems)
    if report.bad_cases:
        text += f", {len(report.bad_cases)} with {n_case_problems} problem(s)"
    if report.dataset_problems:
        text += f"; {len(report.dataset_problems)} problem(s) with dataset.json"
    if report.warnings:
        text += f"; {len(report.warnings)} warning(s)"
    return text


def _report_json(spec, report) -> str:
    def lines(problems):
        return [{"case": p.case_id, "message": p.message} for p in problems]

    return json.dumps(
        {
            "dataset": str(spec.root),
            "n_cases": report.n_cases,
            "n_valid": report.n_valid,
            "problems": lines(report.problems),
            "warnings": lines(report.warnings),
        },
        indent=2,
    )


def run(args: argparse.Namespace) -> int:
    from medseg.dataset.check import CheckSettings, check_dataset
    from medseg.dataset.layout import load_dataset
    from medseg.io.atomic import write_text_atomic
    from medseg.io.guard import refuse_overlap

    if args.report:
        refuse_overlap([args.dataset], args.report, what="report")
    spec = load_dataset(args.dataset)
    settings = CheckSettings(
        allow_empty_labels=args.allow_empty_labels, allow_outside_links=args.allow_outside_links
    )
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
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False, soft_wrap=True)
    style = "bold green" if report.ok else "bold red"
    out.print(_summary(spec, report), style=style, highlight=False)
    if args.report:
        write_text_atomic(args.report, _report_json(spec, report))
    return 0 if report.ok else 1
