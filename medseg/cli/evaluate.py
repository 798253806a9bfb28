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

Every reference case in LABEL_DIR is scored: LABEL_DIR decides what is counted,
and a prediction without a reference is an error. A reference without a
prediction in PRED_DIR, or whose prediction cannot be read, is an error too
(exit 2, the cases listed, nothing written): predict those cases, or pass
--missing-as-empty to score each of them as an empty prediction (all
background): Dice 0 and NSD 0 for every label in the reference, which pulls
the means down as it should (HD95 is undefined and left out). Such cases are
marked in the summary ("missing": true, "prediction": null, a "note";
"n_missing" counts them), and their number is printed and logged. A
prediction on another voxel grid is always an error.

Label names come from --labels: an MSD or nnU-Net dataset.json, or a medseg
plans.json. Without it, LABEL_DIR/../dataset.json is used if it exists.

Writes a JSON summary (per case, per label, means; undefined values as null)
and a CSV with one row per case and label.

Examples:
  medseg evaluate cv/3d_fullres/predictions data/Task04_Hippocampus/labelsTr
  medseg evaluate preds/ labelsTr/ --labels plans.json -o cv/summary.json -j 4
  medseg evaluate preds/ labelsTr/ --nsd-tolerance 2 --csv metrics.csv
  medseg evaluate preds/ labelsTs/ --missing-as-empty    unpredicted cases score 0
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
    p.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="score a reference case with no readable prediction as an empty prediction "
        "(Dice 0) instead of stopping with an error",
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
    title = f"{summary['n_cases']} cases in {summary['prediction_folder']}"
    if summary.get("n_missing"):
        title += f" ({summary['n_missing']} without a readable prediction, scored as empty)"
    table = Table(title=title)
    for name, justify in (
        ("label", "right"),
        ("name", "left"),
        ("Dice", "right"),
        ("HD95 (mm)", "right"),
        (f"NSD @ {tol:g} mm", "right"),
        ("cases (Dice/HD95)", "right"),
    ):
        table.add_column(name, justify=justify)
    for key, m in summary["mean"].items():
        table.add_row(
            key,
            summary["labels"][key],
            _fmt(m["dice"], 4),
            _fmt(m["hd95"], 2),
            _fmt(m["nsd"], 4),
            f"{m['n_dice']}/{m['n_hd95']}",
        )
    fg = summary["foreground_mean"]
    table.add_row(
        "",
        "foreground mean",
        _fmt(fg["dice"], 4),
        _fmt(fg["hd95"], 2),
        _fmt(fg["nsd"], 4),
        "",
        style="bold",
    )
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.evaluation.cases import listing, match_cases
    from medseg.evaluation.metrics import evaluate_folder, write_summary
    from medseg.io.guard import refuse_overlap

    labels = _load_labels(args.labels, args.label_dir)
    json_path = args.output or args.pred_dir / "summary.json"
    csv_path = args.csv or json_path.with_suffix(".csv")
    for path in (json_path, csv_path):  # beside the predictions is fine, over one is not
        refuse_overlap([args.label_dir, args.labels], path)
        if path.name.endswith(args.file_ending):
            refuse_overlap([args.pred_dir], path)
    missing = "empty" if args.missing_as_empty else "error"
    # every reference case has a prediction, or it is an error before anything is scored
    n = len(match_cases(args.pred_dir, args.label_dir, args.file_ending, missing=missing))
    with progress() as bar:
        task = bar.add_task("evaluating", total=n)
        summary = evaluate_folder(
            args.pred_dir,
            args.label_dir,
            labels,
            processes=args.processes,
            file_ending=args.file_ending,
            nsd_tolerance_mm=args.nsd_tolerance,
            missing=missing,
            on_case_done=lambda _: bar.advance(task),
        )
    write_summary(summary, json_path, csv_path)
    out.print(summary_table(summary))
    if summary["n_missing"]:
        out.print(
            f"{summary['n_missing']} of {summary['n_cases']} cases had no readable prediction "
            f"and were scored as empty (Dice 0): {listing(summary['missing_cases'])}",
            highlight=False,
        )
    out.print(f"wrote {json_path} and {csv_path}", highlight=False)
    return 0
