"""``medseg qc`` and ``medseg curves``: pictures to check results by eye."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.cli.console import add_command, out

QC_HELP = "PNG overlays of predictions (and references) on their images"
QC_EPILOG = """\
For each prediction PREDICTIONS/CASE.nii.gz, the image IMAGES/CASE.nii.gz (or
CASE_0000.nii.gz) is drawn with the prediction's outline as a solid line and,
with --labels, the reference LABELS/CASE.nii.gz as a dashed line, each class in its
own colour (colour-blind safe, the RTSTRUCT's colours), on the axial slice with the
most foreground. At most 8 cases.

Examples:
  medseg qc results/predictions --images data/imagesTs --labels data/labelsTs -o qc.png
"""
CURVES_HELP = "one PNG of the training curves of every configuration and fold"
CURVES_EPILOG = """\
Reads MODELS/<configuration>/fold_<k>/training_log.jsonl.

Examples:
  medseg curves results/models -o results/training_curves.png
"""


def add_parser(sub) -> None:
    p = add_command(sub, "qc", QC_HELP, QC_EPILOG, run_qc)
    p.add_argument("predictions", type=Path, metavar="PREDICTIONS")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--labels", type=Path, help="reference labels, for comparison")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PNG")
    c = add_command(sub, "curves", CURVES_HELP, CURVES_EPILOG, run_curves)
    c.add_argument("models", type=Path, metavar="MODELS")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="PNG")


def _image_for(images: Path, case: str) -> Path:
    for name in (f"{case}.nii.gz", f"{case}_0000.nii.gz"):
        if (images / name).exists():
            return images / name
    from medseg.core.errors import VolumeReadError

    raise VolumeReadError(
        f"{images}: no image for case {case!r} ({case}.nii.gz or {case}_0000.nii.gz); give "
        "--images the folder the predictions were made from"
    )


def run_qc(args: argparse.Namespace) -> int:
    from medseg.evaluation.figures import OverlayCase, overlay_montage
    from medseg.io.guard import refuse_overlap
    from medseg.io.volumes import read_volume

    refuse_overlap([args.predictions, args.images, args.labels], args.output)
    cases = []
    for pred in sorted(args.predictions.glob("*.nii.gz"))[:8]:
        case = pred.name[: -len(".nii.gz")]
        ref = args.labels / pred.name if args.labels else None
        cases.append(
            OverlayCase(
                case,
                read_volume(_image_for(args.images, case)),
                read_volume(pred, "label"),
                read_volume(ref, "label") if ref and ref.exists() else None,
            )
        )
    overlay_montage(cases, args.output, title=f"{len(cases)} case(s) from {args.predictions}")
    out.print(f"wrote {args.output} ({len(cases)} cases)", highlight=False)
    return 0


def run_curves(args: argparse.Namespace) -> int:
    from medseg.core.layout import FoldDir
    from medseg.evaluation.figures import training_curves
    from medseg.io.guard import refuse_overlap

    refuse_overlap([args.models], args.output)
    histories = {}
    for log in sorted(args.models.glob(f"*/fold_*/{FoldDir(Path()).training_log}")):
        name = f"{log.parent.parent.name} {log.parent.name}"
        histories[name] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    training_curves(histories, args.output)
    out.print(f"wrote {args.output} ({len(histories)} runs)", highlight=False)
    return 0
