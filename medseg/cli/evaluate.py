"""``medseg evaluate``: Dice, HD95 and NSD of a folder of predictions against reference labels."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from rich.table import Table

from medseg.cli.console import add_command, out, progress
from medseg.core.errors import DatasetError

HELP = "score predicted label maps against reference labels (Dice, HD95, NSD)"
EPILOG = """\
Every PRED_DIR/CASE.nii.gz is compared with LABEL_DIR/CASE.nii.gz (same name,
same voxel grid). Per label: Dice (as nnU-Net computes it), the 95th percentile
Hausdorff distance in mm, and the normalized surface Dice at a tolerance in mm.
A label in neither map is left out of the means (NaN); a label in only one of
them scores Dice 0, NSD 0 and no HD95. The foreground mean Dice is the number
nnU-Net ranks configurations by.

Label names come from --labels: an MSD or nnU-Net dataset.json, or a medseg
plans.json. Without it, LABEL_DIR/../dataset.json is used if it exists.

Writes a JSON summary (per case, per label, means; undefined values as null)
and a CSV with one row per case and label.

Examples:
  medseg evaluate cv/3d_fullres/predictions data/Task04_Hippocampus/labelsTr
  medseg evaluate preds/ labelsTr/ --labels plans.json -o cv/summary.json -j 4
  medseg evaluate preds/ labelsTr/ --nsd-tolerance 2 --csv metrics.csv
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", HELP, EPILOG, run)
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted labels")
    p.add_argument("label_dir", type=Path, metavar="LABEL_DIR", help="folder of reference labels")
    p.add_argument(
        "--labels",
        type=Path,
        metavar="JSON",
        help="dataset.json (MSD or nnU-Net) or medseg plans.json naming the labels",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="JSON",
        help="summary file (default: PRED_DIR/summary.json)",
    )
    p.add_argument("--csv", type=Path, metavar="CSV", help="per-case CSV (default: beside -o)")
    p.add_argument(
        "-j",
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="cases scored in parallel (default: %(default)s)",
    )
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=1.0,
        metavar="MM",
        help="NSD tolerance in mm (default: %(default)s)",
    )
    p.add_argument(
        "--file-ending", default=".nii.gz", help="suffix of the label files (default: %(default)s)"
    )


def labels_from_metadata(meta: object, where: str) -> dict[int, str]:
    """Foreground label value -> name from a dataset.json or plans.json object.

    Accepts MSD (``{"0": "background", "1": "liver"}``), nnU-Net v2
    (``{"background": 0, "liver": 1}``) and medseg plans (``[[0, "background"],
    [1, "liver"]]``) forms of ``"labels"``; background 0 is dropped.
    """
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if isinstance(raw, list):
        pairs = [tuple(item) for item in raw if isinstance(item, (list, tuple)) and len(item) == 2]
        if len(pairs) != len(raw):
            raise DatasetError(f"{where}: 'labels' must be a list of [value, name] pairs")
    elif isinstance(raw, dict) and raw:
        if any(isinstance(v, (list, tuple)) for v in raw.values()):
            raise DatasetError(f"{where}: region labels (lists of values) are not supported")
        nnunet = all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values())
        pairs = [(v, k) for k, v in raw.items()] if nnunet else list(raw.items())
    else:
        raise DatasetError(f"{where}: no 'labels' object or list")
    try:
        labels = {int(v): str(n) for v, n in pairs}
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: label values must be integers ({e})") from e
    return {v: labels[v] for v in sorted(labels) if v != 0}


def _load_labels(path: Path | None, label_dir: Path) -> dict[int, str]:
    if path is None:
        path = label_dir.resolve().parent / "dataset.json"
        if not path.is_file():
            raise DatasetError(
                f"no --labels given and no {path}: pass --labels with a dataset.json or plans.json"
            )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read labels ({e})") from e
    return labels_from_metadata(meta, str(path))


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_table(summary: dict) -> Table:
    """Mean Dice / HD95 / NSD per label and the foreground mean, as a rich table."""
    tol = summary["nsd_tolerance_mm"]
    table = Table(title=f"{summary['n_cases']} cases in {summary['prediction_folder']}")
    for name, justify in (("label", "right"), ("name", "left"), ("Dice", "right"),
                          ("HD95 (mm)", "right"), (f"NSD @ {tol:g} mm", "right"),
                          ("cases (Dice/HD95)", "right")):  # fmt: skip
        table.add_column(name, justify=justify)
    for key, m in summary["mean"].items():
        table.add_row(key, summary["labels"][key], _fmt(m["dice"], 4), _fmt(m["hd95"], 2),
                      _fmt(m["nsd"], 4), f"{m['n_dice']}/{m['n_hd95']}")  # fmt: skip
    fg = summary["foreground_mean"]
    table.add_row("", "foreground mean", _fmt(fg["dice"], 4), _fmt(fg["hd95"], 2),
                  _fmt(fg["nsd"], 4), "", style="bold")  # fmt: skip
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.evaluation.metrics import evaluate_folder, match_cases, write_summary

    labels = _load_labels(args.labels, args.label_dir)
    json_path = args.output or args.pred_dir / "summary.json"
    csv_path = args.csv or json_path.with_suffix(".csv")
    n = len(match_cases(args.pred_dir, args.label_dir, args.file_ending))
    with progress() as bar:
        task = bar.add_task("evaluating", total=n)
        summary = evaluate_folder(
            args.pred_dir,
            args.label_dir,
            labels,
            processes=args.processes,
            file_ending=args.file_ending,
            nsd_tolerance_mm=args.nsd_tolerance,
            on_case_done=lambda _: bar.advance(task),
        )
    write_summary(summary, json_path, csv_path)
    out.print(summary_table(summary))
    out.print(f"wrote {json_path} and {csv_path}", highlight=False)
    return 0
