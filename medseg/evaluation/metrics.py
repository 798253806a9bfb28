"""Segmentation metrics: Dice, HD95 and NSD per case and label, and nnU-Net's folder summary.

Label maps are integer arrays ``(X, Y, Z)`` on the same voxel grid; ``spacing`` is
the voxel size in mm along those axes, so HD95 is in mm and the NSD tolerance is
in mm. Dice, HD95 and NSD come from MONAI (``compute_dice``,
``compute_hausdorff_distance`` with ``percentile=95``, ``compute_surface_dice``).

Empty cases, per label (``P`` predicted voxels, ``R`` reference voxels):

========================  ======  ======  =====
case                      dice    hd95    nsd
========================  ======  ======  =====
``P`` and ``R`` empty     NaN     NaN     NaN
exactly one empty         0       NaN     0
both present              MONAI   MONAI   MONAI
========================  ======  ======  =====

Dice follows nnU-Net v2 (``2 TP / (2 TP + FP + FN)``, NaN when the label is in
neither map) and NSD follows MONAI. A Hausdorff distance to an empty surface is
undefined (MONAI returns inf): it is stored as NaN so that means stay finite and
JSON stays standard. NaN values are left out of every mean, and each per-label
mean says how many cases entered it (``n_dice``, ``n_hd95``, ``n_nsd``), so a
mean HD95 over few cases is visible as such.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.core.errors import EvaluationError
from medseg.core.parallel import parallel_map
from medseg.core.records import read_record, stamp
from medseg.evaluation.cases import CasePair, listing, match_cases, read_case, unreadable_error
from medseg.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: Metrics that may be NaN and are averaged with NaN left out.
METRICS = ("dice", "hd95", "nsd")
#: Voxel counts stored beside the metrics of each case and label.
COUNTS = ("tp", "fp", "fn", "n_pred", "n_ref")
CSV_COLUMNS = ("case", "label", "name", *METRICS, *COUNTS, "missing")
SUMMARY_SCHEMA = ("medseg.evaluation", 1)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 1.0,
) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm), NSD and voxel counts of each label of one case.

    Parameters
    ----------
    pred, ref : np.ndarray
        Predicted and reference label maps ``(X, Y, Z)``, same shape and grid.
    labels : Sequence[int]
        Label values to score (background 0 is scored only if listed).
    spacing : Sequence[float]
        Voxel size in mm along each array axis.
    nsd_tolerance_mm : float
        A boundary voxel counts as correct for NSD if it lies within this
        distance (mm) of the other surface.

    Returns
    -------
    dict[int, dict[str, float]]
        Per label: ``dice``, ``hd95``, ``nsd`` (floats, NaN where undefined; see
        the module docstring) and ``tp``, ``fp``, ``fn``, ``n_pred``, ``n_ref``
        (ints, voxels).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise EvaluationError(f"spacing must be {pred.ndim} positive sizes in mm, got {spacing}")
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise EvaluationError(f"the NSD tolerance must be >= 0 mm, got {nsd_tolerance_mm}")
    return {
        int(c): _label_metrics(pred == c, ref == c, sp, float(nsd_tolerance_mm)) for c in labels
    }


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice ``2 TP / (2 TP + FP + FN)`` of each label, from voxel counts; NaN if in neither.

    The same numbers as :func:`case_metrics` (and nnU-Net), without the surface
    metrics: cheap enough to score many postprocessing candidates.
    """
    scores = {}
    for c in labels:
        p, r = pred == c, ref == c
        denom = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
        tp = int(np.count_nonzero(p & r))
        scores[int(c)] = 2 * tp / denom if denom else math.nan
    return scores


def _label_metrics(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], tol: float
) -> dict[str, float]:
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r))
    if n_pred == 0 and n_ref == 0:
        dice = hd95 = nsd = math.nan
    elif n_pred == 0 or n_ref == 0:
        dice, hd95, nsd = 0.0, math.nan, 0.0
    else:
        dice, hd95, nsd = _monai_metrics(*_crop_to_union(p, r), spacing, tol)
    counts = {"tp": tp, "fp": n_pred - tp, "fn": n_ref - tp, "n_pred": n_pred, "n_ref": n_ref}
    return {"dice": dice, "hd95": hd95, "nsd": nsd, **counts}


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``p | r`` plus one voxel (metrics unchanged)."""
    union = p | r
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    return p[tuple(box)], r[tuple(box)]


def _monai_metrics(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], tol: float
) -> tuple[float, float, float]:
    """MONAI's Dice, HD95 and NSD of two non-empty masks."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    def one_hot(mask: np.ndarray) -> torch.Tensor:  # (1, 2, X, Y, Z): background, label
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
        return torch.stack([~t, t])[None]

    yp, y = one_hot(p), one_hot(r)
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated argument to get_mask_edges
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        # float64 reference: Dice = 2 TP / (|P| + |R|) in double precision, as nnU-Net
        dice = compute_dice(yp, y.double(), include_background=False, ignore_empty=False)
        hd95 = compute_hausdorff_distance(
            yp, y, include_background=False, percentile=95, spacing=list(spacing)
        )
        nsd = compute_surface_dice(
            yp, y, class_thresholds=[tol], include_background=False, spacing=list(spacing)
        )
    return float(dice.item()), float(hd95.item()), float(nsd.item())


def _evaluate_case(job: tuple[CasePair, tuple[int, ...], float, str]) -> dict:
    """Score one case; without a readable prediction, score an empty one or report it.

    With ``missing="error"`` a case whose prediction cannot be read is not scored:
    its record is ``{"case", "unreadable": (file name, reason)}``, so that every
    such case can be reported at once.
    """
    pair, labels, tol, missing = job
    pred, ref, spacing, problem = read_case(pair)
    record = {
        "case": pair.case,
        "prediction": None if pred is None else str(pair.prediction),
        "reference": str(pair.reference),
        "missing": pred is None,
    }
    if pred is None:
        if missing == "error":
            name = pair.prediction.name if pair.prediction else pair.reference.name
            return {"case": pair.case, "unreadable": (name, problem)}
        record["note"] = f"scored as an empty prediction: {problem}"
        pred = np.zeros(ref.shape, ref.dtype)  # all background on the reference's grid
    metrics = case_metrics(pred, ref, labels, spacing, tol)
    return {**record, "metrics": {str(c): m for c, m in metrics.items()}}


def foreground_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """``labels`` without background 0, sorted by value; an error if nothing is left."""
    fg = {int(v): str(n) for v, n in sorted(labels.items()) if int(v) != 0}
    if not fg:
        raise EvaluationError(f"no foreground labels to evaluate in {dict(labels)}")
    return fg


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    labels: Mapping[int, str],
    *,
    processes: int = 1,
    file_ending: str = ".nii.gz",
    nsd_tolerance_mm: float = 1.0,
    missing: str = "error",
    cases: Sequence[str] | None = None,
    on_case_done: Callable[[str], None] | None = None,
) -> dict:
    """Score every reference case in ``ref_dir`` against the prediction of the same name.

    Parameters
    ----------
    pred_dir, ref_dir : Path
        Folders of label maps ``CASE<file_ending>``; each prediction needs a
        reference on the same voxel grid.
    labels : Mapping[int, str]
        Label value -> name; background 0, if present, is not scored.
    processes : int
        Cases scored in parallel.
    file_ending : str
        Suffix that selects the files.
    nsd_tolerance_mm : float
        NSD tolerance in mm.
    missing : {"error", "empty"}
        A reference case whose prediction is absent or cannot be read is an
        :class:`EvaluationError` (``"error"``: absent ones are found before
        anything is scored, unreadable ones are all listed after scoring), or
        is scored as an empty prediction, all background on the reference's grid
        (``"empty"``: Dice 0 and NSD 0 for the labels in the reference, HD95 NaN),
        marked in its record and logged as a warning.
    cases : Sequence[str], optional
        Score only these case ids (see :func:`match_cases`); default: every
        reference in ``ref_dir``.
    on_case_done : Callable[[str], None], optional
        Called with each case id when it is scored (progress bars).

    Returns
    -------
    dict
        JSON-ready ``medseg.evaluation`` record: ``cases`` (per case, per label
        metrics; ``missing`` true, ``prediction`` null and a ``note`` for a case
        scored as empty), ``n_missing`` and ``missing_cases`` (those cases),
        ``mean`` (per label, NaN left out) and ``foreground_mean`` (mean over
        labels of the per-label means: ``foreground_mean["dice"]`` is the number
        nnU-Net ranks by). Keys of labels are strings; undefined values are NaN.
    """
    fg = foreground_labels(labels)
    pairs = match_cases(pred_dir, ref_dir, file_ending, missing=missing, cases=cases)
    jobs = [(p, tuple(fg), float(nsd_tolerance_mm), missing) for p in pairs]
    scored, unreadable = [], []
    for result in parallel_map(_evaluate_case, jobs, processes):
        if "unreadable" in result:
            unreadable.append(result["unreadable"])
        else:
            scored.append(result)
        if on_case_done is not None:
            on_case_done(result["case"])
    if unreadable:
        raise unreadable_error(unreadable, len(pairs), pred_dir, ref_dir)
    empty = [case["case"] for case in scored if case["missing"]]
    if empty:
        log.warning(
            "%d of %d reference cases in %s have no readable prediction in %s and were scored "
            "as empty predictions (Dice 0): %s",
            len(empty), len(scored), ref_dir, pred_dir, listing(empty),
        )  # fmt: skip
    summary = {
        "prediction_folder": str(pred_dir),
        "reference_folder": str(ref_dir),
        "file_ending": file_ending,
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "missing": missing,
        "n_missing": len(empty),
        "missing_cases": empty,
        **summarize_cases(scored, fg),
    }
    return stamp(summary, SUMMARY_SCHEMA)


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
