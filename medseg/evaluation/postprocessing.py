"""nnU-Net's connected-component postprocessing, chosen on cross-validation predictions.

The rule (nnU-Net v2 ``determine_postprocessing``), with Dice averaged over
cases with NaN left out, and the foreground Dice the mean of those per-label
means:

1. Keep only the largest connected component of the whole foreground (all
   labels as one object; voxels of other components become background). Accept
   if the foreground Dice gets strictly better **and** no label's mean Dice gets
   worse.
2. Only if there are two or more labels: for each label in turn, on top of what
   was accepted so far, keep only that label's largest component. Accept if
   that label's mean Dice gets strictly better (the other labels cannot change:
   only voxels of that label are removed).

Components are 26-connected (full connectivity), as in nnU-Net, which labels
them with ``skimage.measure.label`` (connectivity ``None``, via
``acvl_utils.remove_all_but_largest_component``), not with cc3d. We use
``scipy.ndimage.label`` with the full 3x3x3 structure: the same components.
Components tied for the largest size are all kept, as in nnU-Net.

The choice is a JSON-ready record; :func:`apply_postprocessing` applies it to
a label map using nothing else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.errors import EvaluationError
from medseg.core.parallel import parallel_map
from medseg.core.records import check_schema, stamp
from medseg.evaluation.cache import CaseCache, code_versions, file_identity
from medseg.evaluation.cases import CasePair, match_cases, read_pair
from medseg.evaluation.summary import foreground_labels, nanmean, to_json_value

log = logging.getLogger(__name__)

#: Neighbourhood size -> ``ndimage.generate_binary_structure`` rank, for 3D arrays.
CONNECTIVITY = {6: 1, 18: 2, 26: 3}
#: nnU-Net's connectivity: full (skimage's default ``connectivity=None`` in 3D).
NNUNET_CONNECTIVITY = 26
METHOD = "keep_largest_component"
POSTPROCESSING_SCHEMA = ("medseg.postprocessing", 1)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in CONNECTIVITY:
        raise EvaluationError(
            f"connectivity must be one of {sorted(CONNECTIVITY)}, got {connectivity}"
        )
    return ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity])


def _largest(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Voxels of ``mask`` in its largest connected component(s); ties are all kept."""
    structure = _structure(connectivity)
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes == sizes.max()) + 1
    return np.isin(components, keep)


def keep_largest_component(
    label: np.ndarray,
    classes: Sequence[int] | None,
    *,
    connectivity: int = NNUNET_CONNECTIVITY,
) -> np.ndarray:
    """Remove all but the largest connected component; removed voxels become background 0.

    Parameters
    ----------
    label : np.ndarray
        Label map ``(X, Y, Z)``; not modified.
    classes : Sequence[int] or None
        None: all foreground (``label != 0``) is one object, and only its largest
        component is kept (whatever labels it holds). Otherwise each listed class
        separately keeps only its own largest component.
    connectivity : int
        6, 18 or 26 (default, nnU-Net's) neighbours.

    Returns
    -------
    np.ndarray
        A new label map, same shape and dtype.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise EvaluationError(f"a label map must be (X, Y, Z), got shape {label.shape}")
    out = label.copy()
    masks = [label != 0] if classes is None else [label == int(c) for c in classes]
    for mask in masks:
        out[mask & ~_largest(mask, connectivity)] = 0
    return out


def apply_postprocessing(label: np.ndarray, record: dict) -> np.ndarray:
    """Apply the steps of a record from :func:`choose_postprocessing` to ``label`` ``(X, Y, Z)``.

    Each step removes all but the largest component of the foreground (``classes``
    null) or of each listed class. Returns a new array; ``label`` is not modified.

    Every single step is idempotent, and so is the usual record. The sequence
    "foreground, then a class" is not always: if removing a small component of
    the class cuts the foreground in two, applying the record again removes the
    smaller part. nnU-Net applies the same steps once, in the same order.
    """
    check_schema(record, POSTPROCESSING_SCHEMA, "postprocessing record")
    steps = record.get("steps")
    if not isinstance(steps, list):
        raise EvaluationError("a postprocessing record needs a 'steps' list")
    connectivity = record.get("connectivity", NNUNET_CONNECTIVITY)
    out = np.asarray(label)
    for step in steps:
        if not isinstance(step, Mapping) or step.get("method", METHOD) != METHOD:
            raise EvaluationError(f"unknown postprocessing step {step!r}; expected {METHOD!r}")
        out = keep_largest_component(out, step.get("classes"), connectivity=connectivity)
    return out if steps else out.copy()


def _dice_of(n_pred: int, n_ref: int, tp: int) -> float:
    """``2 TP / (|P| + |R|)``, NaN if both are empty: :func:`dice_per_label` from counts."""
    denom = n_pred + n_ref
    return 2 * tp / denom if denom else math.nan


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``mask``, None if it is empty."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _keep_largest(counts: tuple[int, int, int], sizes, overlap, alive) -> tuple[int, int, int]:
    """``(n_pred, n_ref, tp)`` after keeping only the largest of the ``alive`` components.

    ``sizes`` and ``overlap`` (voxels also in the reference) are per component; as
    :func:`_largest`, nothing is removed from one component or none, and ties are kept.
    """
    n_pred, n_ref, tp = counts
    if np.count_nonzero(alive) <= 1:
        return counts
    drop = alive & (sizes != sizes[alive].max())
    return n_pred - int(sizes[drop].sum()), n_ref, tp - int(overlap[drop].sum())


def _voxel_counts(pred: np.ndarray, ref: np.ndarray, c: int) -> tuple[int, int, int]:
    """``(n_pred, n_ref, tp)`` of label ``c``."""
    p, r = pred == c, ref == c
    return int(np.count_nonzero(p)), int(np.count_nonzero(r)), int(np.count_nonzero(p & r))


def _foreground_step(pred, ref, labels, counts, structure) -> tuple[dict, np.ndarray | None]:
    """Counts after keeping the largest foreground component(s), and the voxels removed."""
    components, n = ndimage.label(pred != 0, structure=structure)
    if n <= 1:
        return dict(counts), None
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    removed = np.concatenate([[False], sizes != sizes.max()])[components]
    gone_pred, gone_ref = pred[removed], ref[removed]
    after = {}
    for c in labels:
        gone = gone_pred == c
        n_pred, n_ref, tp = counts[c]
        n_gone, tp_gone = int(np.count_nonzero(gone)), int(np.count_nonzero(gone_ref[gone] == c))
        after[c] = (n_pred - n_gone, n_ref, tp - tp_gone)
    return after, removed


def _class_step(pred, ref, c, counts, after_fg, removed, structure) -> tuple[float, float]:
    """Label ``c``'s Dice after keeping its largest component, without and after the fg step.

    A component of a label lies inside one foreground component, so the foreground
    step removes it whole or not at all: one labelling serves both.
    """
    mask = pred == c
    components, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    overlap = np.bincount(components[mask & (ref == c)], minlength=n + 1)[1:]
    alive = np.ones(n, bool)
    per_class = _dice_of(*_keep_largest(counts, sizes, overlap, alive))
    if removed is not None:
        alive[np.unique(components[removed & mask]) - 1] = False
    return per_class, _dice_of(*_keep_largest(after_fg, sizes, overlap, alive))


def candidate_rows(
    case: str, pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], connectivity: int
) -> dict:
    """Dice of one case under every candidate of the rule, from component sizes (pure).

    ``baseline[c]`` is label ``c``'s Dice as predicted, ``fg[c]`` after the foreground
    step; ``per_class[c]`` after keeping label ``c``'s largest component of the
    prediction as it is, ``fg_per_class[c]`` of the foreground-processed one (two or
    more labels only). The same numbers as applying :func:`keep_largest_component`
    and counting Dice, with one labelling of the foreground and one of each label.
    """
    structure = _structure(connectivity)
    labels = [int(c) for c in labels]
    counts = {c: _voxel_counts(pred, ref, c) for c in labels}
    row = {"case": case, "baseline": {c: _dice_of(*counts[c]) for c in labels}}
    box = _box(pred != 0)  # every component lies inside it
    if box is None:
        after_fg, removed = dict(counts), None
    else:
        pred, ref = pred[box], ref[box]
        after_fg, removed = _foreground_step(pred, ref, labels, counts, structure)
    row["fg"] = {c: _dice_of(*after_fg[c]) for c in labels}
    if len(labels) > 1:
        row["per_class"], row["fg_per_class"] = {}, {}
        for c in labels:
            step = _class_step(pred, ref, c, counts[c], after_fg[c], removed, structure)
            row["per_class"][c], row["fg_per_class"][c] = step
    return row


def _candidate_dice(job: tuple[CasePair, tuple[int, ...], int]) -> dict:
    """:func:`candidate_rows` of one case, read from its files."""
    pair, labels, connectivity = job
    pred, ref, _ = read_pair(pair)
    return candidate_rows(pair.case, pred, ref, labels, connectivity)


def _rows(
    pairs: list[CasePair],
    labels: tuple[int, ...],
    connectivity: int,
    processes: int,
    cache: CaseCache | None,
) -> list[dict]:
    """:func:`candidate_rows` of every case: from ``cache`` if unchanged, else computed."""
    rows: dict[str, dict] = {}
    keys = {}
    for pair in pairs:
        key = {
            "prediction": file_identity(pair.prediction),
            "reference": file_identity(pair.reference),
            "labels": list(labels),
            "connectivity": connectivity,
            "code": code_versions(),
        }
        hit = cache.get(pair.case, key) if cache is not None else None
        if isinstance(hit, dict):
            rows[pair.case] = _row_from_json(hit)
        keys[pair.case] = key
    jobs = [(p, labels, connectivity) for p in pairs if p.case not in rows]
    for row in parallel_map(_candidate_dice, jobs, processes):
        rows[row["case"]] = row
        if cache is not None and keys[row["case"]]["prediction"] is not None:
            cache.put(row["case"], keys[row["case"]], to_json_value(row))
    if cache is not None:
        cache.save([pair.case for pair in pairs])
    return [rows[pair.case] for pair in pairs]


def _row_from_json(row: dict) -> dict:
    """A cached row as :func:`candidate_rows` returns it: int label keys, NaN for null."""
    out = {"case": row["case"]}
    for key, values in row.items():
        if key != "case":
            out[key] = {int(c): math.nan if v is None else v for c, v in values.items()}
    return out


def _means(rows: Sequence[dict], key: str, labels: Sequence[int]) -> dict[int, float]:
    return {c: nanmean([row[key][c] for row in rows]) for c in labels}


def decide_postprocessing(rows: Sequence[dict], labels: Sequence[int], connectivity: int) -> dict:
    """nnU-Net's decision from per-case candidate Dice (see the module docstring; pure).

    Comparisons with NaN are false, as in nnU-Net: a label with no defined Dice
    never blocks the foreground step and never gets a step of its own.
    """
    labels = [int(c) for c in labels]
    before = _means(rows, "baseline", labels)
    fg = _means(rows, "fg", labels)
    fg_before, fg_after = nanmean(list(before.values())), nanmean(list(fg.values()))
    worse = [c for c in labels if fg[c] < before[c]]
    take_fg = fg_after > fg_before and not worse
    trials = [_trial(None, fg_before, fg_after, take_fg, before, fg)]
    steps = [{"method": METHOD, "classes": None}] if take_fg else []
    current = dict(fg if take_fg else before)
    if len(labels) > 1:
        per_class = _means(rows, "fg_per_class" if take_fg else "per_class", labels)
        for c in labels:
            accepted = per_class[c] > current[c]
            trials.append(_trial([c], current[c], per_class[c], accepted))
            if accepted:
                steps.append({"method": METHOD, "classes": [c]})
                current[c] = per_class[c]
    record = {
        "method": METHOD,
        "connectivity": connectivity,
        "labels": labels,
        "n_cases": len(rows),
        "steps": steps,
        "dice_before": fg_before,
        "dice_after": nanmean(list(current.values())),
        "mean_dice_before": before,
        "mean_dice_after": current,
        "trials": trials,
    }
    return to_json_value(stamp(record, POSTPROCESSING_SCHEMA))


def _trial(
    classes: list[int] | None,
    before: float,
    after: float,
    accepted: bool,
    per_before: dict[int, float] | None = None,
    per_after: dict[int, float] | None = None,
) -> dict:
    trial = {"classes": classes, "dice_before": before, "dice_after": after, "accepted": accepted}
    if per_before is not None:
        trial["mean_dice_before"], trial["mean_dice_after"] = per_before, per_after
    return trial


def choose_postprocessing(
    pred_dir: Path,
    ref_dir: Path,
    labels: Mapping[int, str],
    *,
    processes: int = 1,
    file_ending: str = ".nii.gz",
    connectivity: int = NNUNET_CONNECTIVITY,
    cache: bool = False,
) -> dict:
    """Choose connected-component postprocessing from cross-validation predictions.

    Parameters
    ----------
    pred_dir, ref_dir : Path
        All cross-validation predictions (every training case, predicted by the
        fold that did not train on it) and the reference labels, ``CASE<file_ending>``.
        Every reference needs a prediction (an :class:`EvaluationError` lists
        those without).
    labels : Mapping[int, str]
        Label value -> name; background 0 is ignored.
    processes : int
        Cases read and scored in parallel.
    file_ending : str
        Suffix that selects the files.
    connectivity : int
        6, 18 or 26 (nnU-Net's) neighbours.
    cache : bool
        Keep each case's candidate Dice in ``pred_dir`` (:mod:`medseg.evaluation.cache`)
        and reuse them while its prediction and reference are unchanged.

    Returns
    -------
    dict
        JSON-ready ``medseg.postprocessing`` record: ``steps`` (in order; each
        ``{"method", "classes"}``, classes null for the whole foreground),
        ``dice_before`` / ``dice_after``
        (foreground mean Dice), per-label means, and every ``trials`` entry with
        the numbers it was decided on. Apply it with :func:`apply_postprocessing`.
    """
    fg = tuple(foreground_labels(labels))
    _structure(connectivity)  # fail early on a bad value
    pairs = match_cases(pred_dir, ref_dir, file_ending)  # every reference, each predicted
    rows = _rows(
        pairs, fg, connectivity, processes, CaseCache(pred_dir, "postprocessing") if cache else None
    )
    record = decide_postprocessing(rows, fg, connectivity)
    log.info(
        "postprocessing: %d step(s), foreground Dice %.5f -> %.5f",
        len(record["steps"]),
        record["dice_before"] if record["dice_before"] is not None else math.nan,
        record["dice_after"] if record["dice_after"] is not None else math.nan,
    )
    return record
