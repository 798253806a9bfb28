"""Segmentation metrics: Dice, HD95 and NSD per case and label, and nnU-Net's folder summary.

Label maps are integer arrays ``(X, Y, Z)`` on the same voxel grid; ``spacing`` is
the voxel size in mm along those axes, so HD95 is in mm and the NSD tolerance is
in mm. HD95 and NSD are MONAI's (``compute_hausdorff_distance`` with
``percentile=95``, ``compute_surface_dice``), both taken from one computation of
the surface distances with MONAI's own building blocks (see
:mod:`medseg.evaluation.surfaces`); Dice is counted from voxels, the same number
as MONAI's ``compute_dice``.

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

Folders are scored case by case in worker processes; with ``cache=True`` each
case's metrics are kept in the prediction folder (:mod:`medseg.evaluation.cache`)
and reused while the prediction and reference files are unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.core.errors import EvaluationError
from medseg.core.parallel import parallel_map
from medseg.core.plans import IGNORE_NAME
from medseg.core.records import stamp
from medseg.evaluation.cache import CaseCache, code_versions, file_identity, nan_from_none
from medseg.evaluation.cases import CasePair, listing, match_cases, read_case, unreadable_error
from medseg.evaluation.summary import (  # noqa: F401  (re-exported: the public names)
    COUNTS,
    CSV_COLUMNS,
    METRICS,
    SUMMARY_SCHEMA,
    foreground_labels,
    nanmean,
    read_summary,
    summarize_cases,
    to_json_value,
    write_summary,
)
from medseg.evaluation.surfaces import crop_to_union, hd95_and_nsd, preload
from medseg.io.volumes import read_volume

log = logging.getLogger(__name__)

#: Kept under its former name.
_crop_to_union = crop_to_union


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 1.0,
    ignore: int | None = None,
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
    ignore : int, optional
        The ignore label (partial annotations): voxels where ``ref`` has it are
        left out of every label's counts and surfaces (nnU-Net's rule).

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
    valid = None if ignore is None else ref != ignore
    return {
        int(c): _label_metrics(_masked(pred == c, valid), ref == c, sp, float(nsd_tolerance_mm))
        for c in labels
    }


def _masked(mask: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``mask`` where the reference is annotated (all of it without an ignore label)."""
    return mask if valid is None else mask & valid


def dice_per_label(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], ignore: int | None = None
) -> dict[int, float]:
    """Dice ``2 TP / (2 TP + FP + FN)`` of each label, from voxel counts; NaN if in neither.

    The same numbers as :func:`case_metrics` (and nnU-Net), without the surface
    metrics: cheap enough to score many postprocessing candidates.
    """
    scores = {}
    valid = None if ignore is None else ref != ignore
    for c in labels:
        p, r = _masked(pred == c, valid), ref == c
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
        # MONAI's compute_dice (float64) is this very quotient: 2 TP / (|P| + |R|)
        dice = 2 * tp / (n_pred + n_ref)
        hd95, nsd = hd95_and_nsd(p, r, spacing, tol)
    counts = {"tp": tp, "fp": n_pred - tp, "fn": n_ref - tp, "n_pred": n_pred, "n_ref": n_ref}
    return {"dice": dice, "hd95": hd95, "nsd": nsd, **counts}


def _score_pair(
    pair: CasePair, ref, labels: tuple[int, ...], tol: float, missing: str, ignore=None
) -> dict:
    """Score one case against the reference volume ``ref`` already read.

    Without a readable prediction, score an empty one (``missing="empty"``) or,
    with ``missing="error"``, return ``{"case", "unreadable": (file name, reason)}``,
    so that every such case can be reported at once.
    """
    pred, ref_array, spacing, problem = read_case(pair, ref)
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
        pred = np.zeros(ref_array.shape, ref_array.dtype)  # all background on the reference's grid
    metrics = case_metrics(pred, ref_array, labels, spacing, tol, ignore)
    return {**record, "metrics": {str(c): m for c, m in metrics.items()}}


def _score_group(job: tuple) -> list:
    """Score predictions of one case (``(folder key, pair)`` each), reading its reference
    once; ``job``: ``(items, labels, tol, missing, ignore)``."""
    items, labels, tol, missing, ignore = job
    ref = read_volume(items[0][1].reference, "label")
    return [(key, _score_pair(pair, ref, labels, tol, missing, ignore)) for key, pair in items]


def _jobs(todo: list[tuple[str, CasePair]], processes: int) -> list[list[tuple[str, CasePair]]]:
    """Group ``(key, pair)`` by case (one read of each reference); split if fewer than workers."""
    by_case: dict[str, list[tuple[str, CasePair]]] = {}
    for key, pair in todo:
        by_case.setdefault(pair.case, []).append((key, pair))
    groups = list(by_case.values())
    if len(groups) < processes:
        groups = [[item] for group in groups for item in group]
    return groups


def _cache_key(pair: CasePair, labels: tuple[int, ...], tol: float, ignore=None) -> dict | None:
    """What a case's metrics depend on; None if the prediction is not a readable file."""
    prediction = file_identity(pair.prediction)
    if prediction is None:
        return None
    return ({} if ignore is None else {"ignore": ignore}) | {
        "prediction": prediction,
        "reference": file_identity(pair.reference),
        "labels": list(labels),
        "nsd_tolerance_mm": tol,
        "code": code_versions(),
    }


def _cached_record(pair: CasePair, metrics: dict) -> dict:
    return {
        "case": pair.case,
        "prediction": str(pair.prediction),
        "reference": str(pair.reference),
        "missing": False,
        "metrics": {c: nan_from_none(row, METRICS) for c, row in metrics.items()},
    }


def _score_all(
    pairs: dict[str, list[CasePair]],
    caches: dict[str, CaseCache],
    settings: tuple[tuple[int, ...], float, str, int | None],
    processes: int,
) -> Iterator[tuple[str, dict]]:
    """``(key, record)`` of every pair: from the caches, then scored in one pool of workers;
    ``settings``: ``(labels, tol, missing, ignore)``."""
    labels, tol, missing, ignore = settings
    todo, keys = [], {}
    for key, key_pairs in pairs.items():
        for pair in key_pairs:
            cache_key = _cache_key(pair, labels, tol, ignore) if key in caches else None
            hit = caches[key].get(pair.case, cache_key) if cache_key is not None else None
            if hit is not None:
                yield key, _cached_record(pair, hit)
                continue
            keys[key, pair.case] = cache_key
            todo.append((key, pair))
    if processes > 1 and len(todo) > 1:
        preload()  # torch and MONAI imported once here, before the workers fork
    jobs = [(group, labels, tol, missing, ignore) for group in _jobs(todo, processes)]
    for results in parallel_map(_score_group, jobs, processes):
        for key, record in results:
            cache_key = keys[key, record["case"]]
            if cache_key is not None and "metrics" in record and not record["missing"]:
                caches[key].put(record["case"], cache_key, to_json_value(record["metrics"]))
            yield key, record


def evaluate_folders(
    pred_dirs: Mapping[str, Path],
    ref_dir: Path,
    labels: Mapping[int, str],
    *,
    processes: int = 1,
    file_ending: str = ".nii.gz",
    nsd_tolerance_mm: float = 1.0,
    missing: str = "error",
    cases: Sequence[str] | None = None,
    cache: bool = False,
    on_case_done: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """:func:`evaluate_folder` for several prediction folders against one reference folder.

    All ``(folder, case)`` pairs are scored by one pool of ``processes`` workers,
    each job scoring every folder's prediction of one case against one read of its
    reference. With ``cache``, each folder keeps its cases' metrics in a cache file
    (:mod:`medseg.evaluation.cache`) and a case whose prediction and reference are
    unchanged is not scored again. Returns ``{key: summary}`` in the order of ``pred_dirs``.
    A label named ``ignore`` is not scored: voxels where the reference has it count for
    no label (nnU-Net's rule for partial annotations).
    """
    ignore = ignore_label(labels)
    fg = foreground_labels({v: n for v, n in labels.items() if int(v) != ignore})
    tol = float(nsd_tolerance_mm)
    pairs = {
        key: match_cases(folder, ref_dir, file_ending, missing=missing, cases=cases)
        for key, folder in pred_dirs.items()
    }
    caches = {key: CaseCache(pred_dirs[key], "metrics") for key in pairs} if cache else {}
    scored: dict[str, dict[str, dict]] = {key: {} for key in pairs}
    unreadable: dict[str, list] = {key: [] for key in pairs}
    try:
        settings = (tuple(fg), tol, missing, ignore)
        for key, record in _score_all(pairs, caches, settings, processes):
            if "unreadable" in record:
                unreadable[key].append(record["unreadable"])
            else:
                scored[key][record["case"]] = record
            if on_case_done is not None:
                on_case_done(record["case"])
    finally:
        for key, key_cache in caches.items():
            key_cache.save([pair.case for pair in pairs[key]])
    summaries = {}
    for key, folder in pred_dirs.items():
        if unreadable[key]:
            raise unreadable_error(unreadable[key], len(pairs[key]), folder, ref_dir)
        records = [scored[key][pair.case] for pair in pairs[key]]
        header = {
            "prediction_folder": str(folder),
            "reference_folder": str(ref_dir),
            "file_ending": file_ending,
            "nsd_tolerance_mm": tol,
            "missing": missing,
            **({} if ignore is None else {"ignore_label": ignore}),
        }
        summaries[key] = _summary(records, fg, header)
    return summaries


def ignore_label(labels: Mapping[int, str]) -> int | None:
    """The value of the label named ``ignore`` in ``labels`` (value -> name), or None."""
    found = [int(v) for v, n in labels.items() if str(n) == IGNORE_NAME]
    return found[0] if found else None


def _summary(records: list[dict], fg: dict[int, str], header: dict) -> dict:
    """The ``medseg.evaluation`` record of one folder's scored cases; ``header`` first."""
    empty = [case["case"] for case in records if case["missing"]]
    if empty:
        log.warning(
            "%d of %d reference cases in %s have no readable prediction in %s and were scored "
            "as empty predictions (Dice 0): %s",
            len(empty),
            len(records),
            header["reference_folder"],
            header["prediction_folder"],
            listing(empty),
        )
    summary = {**header, "n_missing": len(empty), "missing_cases": empty}
    return stamp({**summary, **summarize_cases(records, fg)}, SUMMARY_SCHEMA)


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
    cache: bool = False,
) -> dict:
    """Score every reference case in ``ref_dir`` against the prediction of the same name.

    Parameters
    ----------
    pred_dir, ref_dir : Path
        Folders of label maps ``CASE<file_ending>``; each prediction needs a
        reference on the same voxel grid.
    labels : Mapping[int, str]
        Label value -> name; background 0, if present, is not scored, nor a label
        named ``ignore``, whose voxels in the reference count for no label.
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
    cache : bool
        Keep each case's metrics in ``pred_dir`` (:mod:`medseg.evaluation.cache`)
        and reuse them while the case's prediction and reference are unchanged.

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
    return evaluate_folders(
        {"": pred_dir},
        ref_dir,
        labels,
        processes=processes,
        file_ending=file_ending,
        nsd_tolerance_mm=nsd_tolerance_mm,
        missing=missing,
        cases=cases,
        cache=cache,
        on_case_done=on_case_done,
    )[""]
