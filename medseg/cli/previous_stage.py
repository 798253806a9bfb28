"""``medseg previous-stage``: a cascade's first-stage CV segmentations on its grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, out

HELP = "bring the previous stage's CV segmentations onto a cascade stage's grid"
EPILOG = """\
A cascade stage (3d_cascade_fullres) takes the image plus the previous stage's
(3d_lowres) segmentation as input. For training and fold validation that
segmentation is each case's cross-validation prediction (made by the fold that held
the case out), which 'medseg validate' wrote into MODELS/fold_<k>/validation/.
This command maps every case's one onto the cascade stage's preprocessed grid and
stores it (compressed, chunked) in OUTPUT, for 'medseg train/validate --previous'.
Validate every fold of the previous stage first.

Examples:
  medseg previous-stage models/3d_lowres pre/3d_fullres plans.json splits.json \\
      --config 3d_cascade_fullres -o previous_stage/3d_cascade_fullres
  medseg train pre/3d_fullres plans.json splits.json --config 3d_cascade_fullres \\
      --fold 0 -o models/3d_cascade_fullres/fold_0 \\
      --previous previous_stage/3d_cascade_fullres
"""


def add_parser(sub) -> None:
    p = add_command(sub, "previous-stage", HELP, EPILOG, run)
    p.add_argument("models", type=Path, metavar="MODELS", help="the previous stage's models")
    p.add_argument("preprocessed", type=Path, metavar="PREPROCESSED_DIR")
    p.add_argument("plans", type=Path, metavar="PLANS")
    p.add_argument("splits", type=Path, metavar="SPLITS")
    p.add_argument(
        "--config", required=True, metavar="NAME", help="the cascade stage (3d_cascade_fullres)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT")


def run(args: argparse.Namespace) -> int:
    from medseg.cascade.previous import export_previous_stage
    from medseg.core.plans import read_plans
    from medseg.core.records import SPLITS_SCHEMA, read_record
    from medseg.io.guard import refuse_overlap

    refuse_overlap([args.models, args.preprocessed, args.plans, args.splits], args.output)
    plans = read_plans(args.plans)
    splits = read_record(args.splits, SPLITS_SCHEMA)
    summary = export_previous_stage(
        args.models, args.preprocessed, plans, splits, args.config, args.output
    )
    out.print(
        f"{summary['cases']} previous-stage ({summary['previous_stage']}) segmentations "
        f"written to {args.output}",
        highlight=False,
    )
    return 0
