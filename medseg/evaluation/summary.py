"""Evaluation summaries: per-label means over cases, and their JSON and CSV files.

A summary (``medseg.evaluation`` record) holds, per case and label, Dice, HD95 (mm),
NSD and voxel counts, and per label their means over cases with NaN left out (see
:mod:`medseg.evaluation.metrics` for when a metric is NaN). JSON has no NaN: undefined
values are written as null and read back as NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.core.errors import EvaluationError
from medseg.core.records import read_record
from medseg.io.atomic import write_text_atomic

#: Metrics that may be NaN and are averaged with NaN left out.
METRICS = ("dice", "hd95", "nsd")
#: Voxel counts stored beside the metrics of each case and label.
COUNTS = ("tp", "fp", "fn", "n_pred", "n_ref")
CSV_COLUMNS = ("case", "label", "name", *METRICS, *COUNTS, "missing")
SUMMARY_SCHEMA = ("medseg.evaluation", 1)


def foreground_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """``labels`` without background 0, sorted by value; an error if nothing is left."""
    fg = {int(v): str(n) for v, n in sorted(labels.items()) if int(v) != 0}
    if not fg:
        raise EvaluationError(f"no foreground labels to evaluate in {dict(labels)}")
    return fg


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (without a warning) if there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def summarize_cases(cases: Sequence[dict], labels: Mapping[int, str]) -> dict:
    """Per-label means and the foreground mean of per-case results (pure).

    Unlike nnU-Net, which averages the per-label means with ``np.mean`` (NaN as
    soon as one label is absent from every case), a label whose mean is NaN is
    left out of the foreground mean.
    """
    mean: dict[str, dict[str, float]] = {}
    for c in labels:
        rows = [case["metrics"][str(c)] for case in cases]
        entry: dict[str, float] = {}
        for m in METRICS:
            values = [row[m] for row in rows]
            entry[m] = nanmean(values)
            entry[f"n_{m}"] = sum(1 for v in values if math.isfinite(v))
        mean[str(c)] = entry
    foreground = {m: nanmean([mean[str(c)][m] for c in labels]) for m in METRICS}
    return {
        "labels": {str(c): name for c, name in labels.items()},
        "n_cases": len(cases),
        "cases": list(cases),
        "mean": mean,
        "foreground_mean": foreground,
    }


def to_json_value(obj: object) -> object:
    """A copy of ``obj`` that strict JSON can hold: NaN and inf become None, numpy -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_value(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_summary(summary: dict, json_path: Path, csv_path: Path | None = None) -> None:
    """Write ``summary`` as JSON (NaN as null) and, if given, a CSV of one row per case x label.

    Both files are written atomically. CSV cells of undefined metrics are empty;
    the last column, ``missing``, is 1 for a case scored as an empty prediction.
    """
    text = json.dumps(to_json_value(summary), indent=2, allow_nan=False)
    write_text_atomic(json_path, text + "\n")
    if csv_path is None:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in summary["cases"]:
        for key, row in case["metrics"].items():
            cells = [_csv_cell(row[m]) for m in (*METRICS, *COUNTS)]
            missing = int(bool(case.get("missing", False)))
            writer.writerow([case["case"], key, summary["labels"].get(key, ""), *cells, missing])
    write_text_atomic(csv_path, buf.getvalue())


def _csv_cell(value: float) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else ""
    return str(value)


def read_summary(json_path: Path) -> dict:
    """Read a summary written by :func:`write_summary`; null metrics become NaN again."""
    summary = read_record(json_path, SUMMARY_SCHEMA)

    def fix(entry: dict) -> None:
        for m in METRICS:
            if m in entry and entry[m] is None:
                entry[m] = math.nan

    for case in summary.get("cases", []):
        for row in case["metrics"].values():
            fix(row)
    for row in summary.get("mean", {}).values():
        fix(row)
    fix(summary.get("foreground_mean", {}))
    return summary
