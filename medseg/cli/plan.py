"""``medseg plan``: nnU-Net v2's configurations from a fingerprint."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from rich.table import Table

from medseg.cli.console import add_command, out
from medseg.core.errors import PlanError, UsageError
from medseg.core.layout import configurations_path
from medseg.core.plans import Plans
from medseg.core.records import FINGERPRINT_SCHEMA, Fingerprint, read_record
from medseg.io.atomic import write_text_atomic
from medseg.io.guard import refuse_overlap
from medseg.planning.planner import CONFIGURATIONS, PlannerSettings, plan_experiment
from medseg.planning.presets import DEFAULT, PRESETS

HELP = "plan spacing, normalization, networks, patch and batch sizes from a fingerprint"
EPILOG = """\
Decides what nnU-Net v2 decides, the same way: target spacing (median, with the
anisotropy rule), axis transpose, normalization per channel, the U-Net topology,
patch and batch size from a GPU memory budget, and which configurations exist
(2d, 3d_fullres, and 3d_lowres + 3d_cascade_fullres for large images).
Overrides change the inputs of those rules, never the code. Beside the plans
(PLANS.json) it writes configurations.json: which configurations have their own
preprocessed data and which medseg trains (what the workflow runs).

Presets reproduce nnU-Net's planners (nnUNetv2_plan_experiment -pl CLASS):
  default     ExperimentPlanner: PlainConvUNet, 8 GB target
  resenc-m    nnUNetPlannerResEncM: ResidualEncoderUNet, 8 GB target (GPUs of ~9-11 GB)
  resenc-l    nnUNetPlannerResEncL: ResidualEncoderUNet, 24 GB target (e.g. RTX 4090)
  resenc-xl   nnUNetPlannerResEncXL: ResidualEncoderUNet, 40 GB target (e.g. A100 40GB)
--gpu-memory scales a preset's memory reference linearly, as nnU-Net's
-gpu_memory_target does.

Examples:
  medseg plan fp.json -o plans.json                       # nnU-Net's defaults (8 GB)
  medseg plan fp.json -o plans.json --gpu-memory 24
  medseg plan fp.json -o plans.json --preset resenc-l     # nnUNetResEncUNetLPlans
  medseg plan fp.json -o plans.json --gpu-memory 0.5 --base-features 8 \\
      --configurations 3d_fullres --patch-size 3d_fullres=16x64x64   # a small CPU demo
"""


def _patch(text: str) -> tuple[str, tuple[int, ...]]:
    try:
        name, dims = text.split("=", 1)
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CONFIG=AxBxC (e.g. 3d_fullres=32x64x64), got {text!r}"
        ) from None


def add_parser(sub) -> None:
    p = add_command(sub, "plan", HELP, EPILOG, run)
    p.add_argument("fingerprint", type=Path, metavar="FINGERPRINT", help="fingerprint.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="JSON")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=DEFAULT.name,
        help="nnU-Net planner to reproduce: "
        + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GB",
        help="GPU memory budget in GB (default: the preset's; 8 for default and resenc-m, "
        "24 for resenc-l, 40 for resenc-xl)",
    )
    p.add_argument(
        "--base-features",
        type=int,
        default=32,
        metavar="N",
        help="features of the first U-Net stage, doubling per stage (default: 32)",
    )
    p.add_argument(
        "--configurations",
        nargs="+",
        choices=CONFIGURATIONS,
        metavar="NAME",
        help=f"plan only these (default: all that apply; {', '.join(CONFIGURATIONS)})",
    )
    p.add_argument(
        "--patch-size",
        type=_patch,
        action="append",
        default=[],
        metavar="CONFIG=AxBxC",
        help="fix a configuration's patch size",
    )
    p.add_argument(
        "--target-spacing",
        type=float,
        nargs=3,
        metavar=("S", "A", "R"),
        help="full-resolution spacing in mm, processing order (S, A, R)",
    )
    p.add_argument(
        "--plans-name",
        help="plans identifier (default: the preset's, e.g. medsegPlans, nnUNetResEncUNetLPlans)",
    )


def plans_table(plans: Plans | Mapping, trained: dict[str, str] | None = None) -> Table:
    """The plans' configurations, one row each; with ``trained`` (configuration -> what
    was trained of it, e.g. ``"2 of 2 folds"``) also a column "trained"."""
    plans = Plans.of(plans)
    table = Table(title=f"plans for {plans.dataset_name}")
    columns = ("configuration", "spacing (mm)", "patch", "batch", "stages", "normalization")
    for col in columns + (("trained",) if trained is not None else ()):
        table.add_column(col)
    for name in plans.configurations:
        c = plans.configuration(name)
        extra = (trained.get(name, "not trained"),) if trained is not None else ()
        table.add_row(
            name,
            " x ".join(f"{s:.3g}" for s in c.spacing),
            " x ".join(map(str, c.patch_size)),
            str(c.batch_size),
            str(c.n_stages),
            ", ".join(c.normalization_schemes),
            *extra,
        )
    return table


def run(args: argparse.Namespace) -> int:
    refuse_overlap([args.fingerprint], args.output)
    refuse_overlap([args.fingerprint], configurations_path(args.output))
    fp = Fingerprint.from_dict(
        read_record(args.fingerprint, FINGERPRINT_SCHEMA), str(args.fingerprint)
    )
    for name, _ in args.patch_size:
        if name not in CONFIGURATIONS:
            raise UsageError(
                f"--patch-size: unknown configuration {name!r}; choose from {CONFIGURATIONS}"
            )
    settings = PlannerSettings(
        gpu_memory_gb=args.gpu_memory,
        base_features=args.base_features,
        configurations=tuple(args.configurations) if args.configurations else None,
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None,
        patch_size=dict(args.patch_size),
        plans_name=args.plans_name,
        preset=args.preset,
    )
    plans = plan_experiment(fp, settings)
    if not Plans.of(plans).configurations:
        raise PlanError("no configuration planned: check --configurations against the data")
    write_text_atomic(args.output, json.dumps(plans, indent=1) + "\n")
    stages = configurations_path(args.output)  # what the workflow preprocesses and trains
    write_text_atomic(stages, json.dumps(Plans.of(plans).stages_record(), indent=1) + "\n")
    out.print(plans_table(plans))
    out.print(
        f"plans written to {args.output} (and {stages.name} beside it: what to "
        "preprocess and train)",
        highlight=False,
    )
    return 0
