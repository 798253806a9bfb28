"""``medseg export``: the deployable model folder from a cross-validation selection."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, out
from medseg.core.plans import Plans

HELP = "write the deployable model folder chosen by 'medseg select'"
EPILOG = """\
Reads selection.json (written by 'medseg select') and copies what the chosen
configuration or ensemble needs into MODEL_DIR: plans, label names, every
fold's weights (safetensors), postprocessing and cross-validation scores.
'medseg predict -m MODEL_DIR' needs nothing else; the folder can be copied to
any machine.

Examples:
  medseg export results/models --plans results/plans.json \\
      --selection results/cv/selection.json -o results/model
"""


def add_parser(sub) -> None:
    p = add_command(sub, "export", HELP, EPILOG, run)
    p.add_argument("models", type=Path, metavar="MODELS", help="folder of <config>/fold_<k>")
    p.add_argument("--plans", type=Path, required=True)
    p.add_argument("--selection", type=Path, required=True, help="selection.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL_DIR")


def export_selection(models: Path, plans: Plans, selection: dict, model_dir: Path) -> Path:
    """Write the model folder for ``selection`` (members, postprocessing, CV scores)."""
    from medseg.evaluation.select import member_records
    from medseg.inference.bundle import export_model

    members, checkpoints = member_records(plans, models, selection["members"])
    return export_model(
        model_dir,
        plans,
        members,
        checkpoints,
        postprocessing=selection["postprocessing"],
        cross_validation={"chosen": selection["chosen"], "candidates": selection["candidates"]},
    )


def run(args: argparse.Namespace) -> int:
    import json

    from medseg.core.errors import RecordError
    from medseg.core.plans import read_plans
    from medseg.io.guard import refuse_overlap

    refuse_overlap([args.models, args.plans, args.selection], args.output, replaces=True)
    plans = read_plans(args.plans)
    try:
        selection = json.loads(args.selection.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(
            f"{args.selection}: cannot read the selection ({e}); run 'medseg select' first"
        ) from e
    missing = {"members", "postprocessing", "chosen", "candidates"} - set(selection)
    if missing:
        raise RecordError(
            f"{args.selection}: not a selection written by 'medseg select' "
            f"(missing {', '.join(sorted(missing))})"
        )
    export_selection(args.models, plans, selection, args.output)
    out.print(f"model ({selection['chosen']}) written to {args.output}", highlight=False)
    return 0
