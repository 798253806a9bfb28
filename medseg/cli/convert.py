"""``medseg convert``: any readable volume or DICOM series to NIfTI (or NRRD/MHA)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from medseg.cli.console import add_command, err, out
from medseg.core.volume import Kind, Volume

HELP = "convert a DICOM series or volume file to NIfTI (or NRRD / MHA)"
EPILOG = """\
The output format follows OUTPUT's suffix (.nii.gz, .nii, .nrrd, .mha). The
geometry (spacing, orientation, origin) is kept exactly; --canonical instead
reorients the axes to RAS (permutation and flips only, no interpolation). The
output is written to a temporary file and renamed, so it is never half-written.

Inputs that 'medseg check' or 'predict' would refuse still convert, with a
"warning:" line on stderr for each finding: NaN/Inf or blank intensities, a
single slice, and NIfTI headers with an invalid voxel size, disagreeing sform
and qform (the sform is used; the output's sform and qform then agree) or no
orientation.

Examples:
  medseg convert /data/study1/ study1.nii.gz
  medseg convert /data/mixed/ ct.nii.gz --series 1.2.840.113619.2.55.3
  medseg convert seg.nrrd seg.nii.gz --label
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", HELP, EPILOG, run)
    p.add_argument("input", type=Path, metavar="INPUT", help="volume file or DICOM series folder")
    p.add_argument("output", type=Path, metavar="OUTPUT", help="output file, e.g. scan.nii.gz")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, for folders with several")
    p.add_argument("--label", action="store_true", help="the input is a label map (kept integer)")
    p.add_argument("--canonical", action="store_true", help="reorient to RAS")


def _warn(path: Path, volume: Volume) -> None:
    """Print a ``warning:`` line on stderr for every sanity finding of the input."""
    from medseg.core.sanity import image_findings, shape_findings
    from medseg.io.volumes import header_findings

    found = header_findings(path)
    if volume.kind is Kind.IMAGE:
        found += image_findings(volume)
    else:
        found += shape_findings(volume.spatial_shape)
    for f in found:
        text = f.message
        if f.code == "sform_qform":
            text += " Converted with the sform (the output's sform and qform agree)."
        err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    from medseg.geometry.affine import orientation_code
    from medseg.geometry.orientation import to_canonical
    from medseg.io.guard import refuse_overlap
    from medseg.io.volumes import is_dicom_file, read_volume, write_volume

    series_folder = args.input.parent if is_dicom_file(args.input) else None  # read whole
    refuse_overlap([args.input, series_folder], args.output)
    kind = Kind.LABEL if args.label else Kind.IMAGE
    volume = read_volume(args.input, kind, series_uid=args.series)
    _warn(args.input, volume)
    if args.canonical:
        volume = to_canonical(volume)[0]
    write_volume(volume, args.output)
    spacing = " x ".join(f"{s:.4g}" for s in volume.spacing)
    out.print(
        f"wrote {args.output}: shape {volume.spatial_shape}, {volume.n_channels} channel(s), "
        f"spacing {spacing} mm, orientation {orientation_code(volume.affine)}",
        highlight=False,
    )
    return 0
