"""``medseg info``: what is in a volume file or a DICOM folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from medseg.cli.console import add_command, out
from medseg.core.volume import Volume

HELP = "show shape, spacing, orientation, dtype and intensity range of a volume"
EPILOG = """\
PATH may be a NIfTI (.nii, .nii.gz), NRRD or MHA file, a DICOM file, or a folder
holding a DICOM series. For a folder with several series, info lists them; pick
one with --series.

What 'medseg check', 'fingerprint' and 'predict' would refuse or warn about is
shown as warnings ("findings" in --json), and info still succeeds: NaN/Inf or
blank intensities, a single slice, and NIfTI headers with an invalid voxel size,
disagreeing sform and qform (info shows the sform, as medseg reads it) or no
orientation.

Examples:
  medseg info scan.nii.gz
  medseg info /data/study1/           (a DICOM series folder)
  medseg info /data/study1/ --json    (machine-readable)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", HELP, EPILOG, run)
    p.add_argument("path", type=Path, metavar="PATH", help="volume file or DICOM folder")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, for folders with several")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe(volume: Volume) -> dict:
    """The facts ``info`` reports about a volume, as JSON-ready data."""
    from medseg.geometry.affine import orientation_code

    arr = volume.array
    facts = {
        "shape": list(volume.spatial_shape),
        "channels": volume.n_channels,
        "dtype": str(arr.dtype),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": orientation_code(volume.affine),
        "origin_ras_mm": [round(float(v), 4) for v in volume.affine[:3, 3]],
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
    }
    if arr.size:
        facts["intensity_range"] = [float(np.nanmin(arr)), float(np.nanmax(arr))]
        if arr.dtype.kind in "iub":
            values = np.unique(arr)
            if len(values) <= 16:
                facts["values"] = [int(v) for v in values]
    return facts


def findings(path: Path, volume: Volume, facts: dict) -> list:
    """What the sanity rules say about ``path`` (header) and ``volume`` (content).

    A file that looks like a label map (integers, at most 16 values) is not called
    blank for holding mostly background.
    """
    from medseg.core.sanity import Finding, image_findings
    from medseg.io.volumes import header_findings

    found = []
    for f in header_findings(path):
        if f.code == "sform_qform":
            f = Finding(f.code, f"{f.message} Shown here: the sform.", f.refuse)
        found.append(f)
    label_like = len(facts.get("values", ())) > 1
    return found + [f for f in image_findings(volume) if not (label_like and f.code == "blank")]


def _series_table(path: Path, series) -> Table:
    table = Table(title=f"{path}: {len(series)} DICOM series (choose one with --series UID)")
    for col in ("SeriesInstanceUID", "modality", "files", "description"):
        table.add_column(col)
    for s in series:
        table.add_row(s.uid, s.modality, str(len(s.files)), s.description)
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.io.dicom_series import read_dicom_series, scan_series
    from medseg.io.volumes import read_volume

    path: Path = args.path
    facts: dict = {"path": str(path)}
    if path.is_dir():
        series = scan_series(path)
        if len(series) > 1 and args.series is None:
            if args.json:
                print(
                    json.dumps(
                        {
                            "path": str(path),
                            "series": [
                                {
                                    "uid": s.uid,
                                    "modality": s.modality,
                                    "files": len(s.files),
                                    "description": s.description,
                                }
                                for s in series
                            ],
                        }
                    )
                )
            else:
                out.print(_series_table(path, series))
            return 0
        volume, series_info = read_dicom_series(path, args.series)
        facts.update(
            format="DICOM series",
            modality=series_info.modality,
            series_uid=series_info.series_uid,
            description=series_info.description,
            transfer_syntax=series_info.transfer_syntax,
            files=len(series_info.files),
        )
    else:
        volume = read_volume(path, series_uid=args.series)
        facts["format"] = "file"
    facts.update(describe(volume))
    facts["findings"] = [f.to_dict() for f in findings(path, volume, facts)]
    if args.json:
        print(json.dumps(facts))
        return 0
    table = Table(title=str(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in facts.items():
        if key in ("path", "affine", "findings"):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(key, text or "(none)")
    for finding in facts["findings"]:
        table.add_row("[yellow]warning[/]", escape(finding["message"]))
    out.print(table)
    return 0
