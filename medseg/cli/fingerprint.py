"""``medseg fingerprint``: dataset facts the planner needs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from medseg.cli.console import add_command, out, progress
from medseg.core.errors import UsageError

HELP = "extract the dataset fingerprint (spacings, shapes, foreground intensities)"
EPILOG = """\
Every training case is checked (as 'medseg check' does), reoriented to RAS and
cropped to its non-zero region; the fingerprint records per-case spacing and
shapes and the foreground intensity statistics per channel that the planner and
CT normalization use. A case with problems stops the run naming the case;
--skip-invalid excludes it instead and records why. The output is written only
when everything succeeded.

Examples:
  medseg fingerprint /data/Task04_Hippocampus -o work/fingerprint.json -j 4
  medseg fingerprint /data/MyCT -o fp.json --skip-invalid
"""


def add_parser(sub) -> None:
    p = add_command(sub, "fingerprint", HELP, EPILOG, run)
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder with dataset.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="JSON")
    p.add_argument(
        "-j",
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="cases processed in parallel (default: %(default)s)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="exclude cases that fail the checks instead of stopping",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=10_000_000,
        help="foreground intensity samples per channel (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=1234, help="sampling seed (default: 1234)")


def run(args: argparse.Namespace) -> int:
    from medseg.dataset.layout import load_dataset
    from medseg.fingerprint.extract import FingerprintSettings, extract_fingerprint
    from medseg.io.atomic import write_text_atomic
    from medseg.io.guard import refuse_overlap

    refuse_overlap([args.dataset], args.output)
    spec = load_dataset(args.dataset)
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    settings = FingerprintSettings(
        total_samples=args.samples, seed=args.seed, skip_invalid=args.skip_invalid
    )
    with progress() as bar:
        task = bar.add_task("fingerprint", total=len(spec.training))
        fp = extract_fingerprint(
            spec, settings, processes=args.processes, on_case_done=lambda _: bar.advance(task)
        )
    write_text_atomic(args.output, json.dumps(fp.to_dict(), indent=1) + "\n")
    out.print(
        f"fingerprint of {len(fp.cases)} cases written to {args.output}"
        + (f" ({len(fp.excluded)} excluded)" if fp.excluded else ""),
        highlight=False,
    )
    return 0
