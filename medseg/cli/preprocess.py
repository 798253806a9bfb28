"""``medseg preprocess``: crop, normalise, resample and store every case."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medseg.cli.console import add_command, out, progress

HELP = "preprocess a dataset for one planned configuration"
EPILOG = """\
Each case is reoriented to RAS, transposed as planned, cropped to its non-zero
region, normalised, resampled to the configuration's spacing (order 3 for
images, per-class linear for labels, slice-wise for anisotropic data) and stored
compressed and chunked (blosc2), with a JSON record per case from which any
prediction maps back exactly to the original image grid. OUTDIR appears only
when every case succeeded.

Examples:
  medseg preprocess /data/Task04_Hippocampus plans.json --config 3d_fullres -o pre/3d_fullres
"""


def add_parser(sub) -> None:
    p = add_command(sub, "preprocess", HELP, EPILOG, run)
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder with dataset.json")
    p.add_argument("plans", type=Path, metavar="PLANS", help="plans.json from 'medseg plan'")
    p.add_argument("--config", required=True, metavar="NAME", help="configuration, e.g. 3d_fullres")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument(
        "-j",
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="cases processed in parallel (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=1234, help="seed for foreground sampling")


def run(args: argparse.Namespace) -> int:
    from medseg.core.plans import read_plans
    from medseg.dataset.layout import load_dataset
    from medseg.io.guard import refuse_overlap
    from medseg.prepare.preprocess import preprocess_dataset

    refuse_overlap([args.dataset, args.plans], args.output, replaces=True)
    spec = load_dataset(args.dataset)
    plans = read_plans(args.plans)
    with progress() as bar:
        task = bar.add_task(f"preprocess {args.config}", total=len(spec.training))
        summary = preprocess_dataset(
            spec,
            plans,
            args.config,
            args.output,
            processes=args.processes,
            seed=args.seed,
            on_case_done=lambda _: bar.advance(task),
        )
    out.print(
        f"{len(summary['cases'])} cases preprocessed for {args.config} into {args.output} "
        f"in {summary['seconds']} s",
        highlight=False,
    )
    return 0
