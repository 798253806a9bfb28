"""Which cases a folder evaluation scores: every reference case, with its prediction or none.

The reference folder decides what is scored: each reference ``CASE<file_ending>``
is one case, and a prediction without a reference is an error. A reference case
without a prediction (or whose prediction cannot be read) is never skipped in
silence: by default it is an error, and with ``missing="empty"`` it is scored as
an empty prediction (all background on the reference's voxel grid), which gives
Dice 0 and NSD 0 for every label present in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.core.errors import EvaluationError, GeometryError, VolumeReadError
from medseg.core.volume import Volume
from medseg.geometry.affine import grid_mismatch
from medseg.io.volumes import read_volume

#: How many names an error message lists before it gives only a count.
MAX_LISTED = 10
#: What to do with a reference case whose prediction is absent or unreadable.
MISSING_POLICIES = ("error", "empty")
#: What to do about missing predictions, said in error messages.
_MISSING_HINT = (
    "or score them as empty predictions (Dice 0) with 'medseg evaluate --missing-as-empty' "
    "(missing='empty' in Python)"
)


@dataclass(frozen=True)
class CasePair:
    """A reference file and the prediction of the same name (None: there is none)."""

    case: str
    prediction: Path | None
    reference: Path


def check_missing_policy(missing: str) -> str:
    """``missing`` itself if it is one of :data:`MISSING_POLICIES`, else an error."""
    if missing not in MISSING_POLICIES:
        raise EvaluationError(
            f"missing must be one of {', '.join(map(repr, MISSING_POLICIES))}, got {missing!r}"
        )
    return missing


def listing(names: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _label_files(folder: Path, file_ending: str) -> list[str]:
    """Names of the files in ``folder`` ending in ``file_ending``, not hidden, sorted."""
    return sorted(
        f.name
        for f in folder.iterdir()
        if f.name.endswith(file_ending) and not f.name.startswith(".") and f.is_file()
    )


def _requested(ref_dir: Path, refs: list[str], cases: Sequence[str], file_ending: str) -> list[str]:
    """File names of the requested ``cases``; each needs a reference."""
    names = sorted({f"{c}{file_ending}" for c in cases})
    if not names:
        raise EvaluationError("cases is an empty list: name at least one case to score")
    absent = [n for n in names if n not in set(refs)]
    if absent:
        raise EvaluationError(
            f"{len(absent)} of {len(names)} requested cases have no reference in {ref_dir}: "
            f"{listing(absent)}. Check the case names and the reference folder."
        )
    return names


def match_cases(
    pred_dir: Path,
    ref_dir: Path,
    file_ending: str = ".nii.gz",
    *,
    missing: str = "error",
    cases: Sequence[str] | None = None,
) -> list[CasePair]:
    """One pair per reference ``ref_dir/CASE<file_ending>``, with ``pred_dir/CASE<file_ending>``.

    Parameters
    ----------
    pred_dir, ref_dir : Path
        Folders of predicted and reference label maps (hidden files are ignored).
    file_ending : str
        Suffix that selects the files.
    missing : {"error", "empty"}
        A reference without a prediction is an :class:`EvaluationError` listing
        every such case (``"error"``), or a pair with ``prediction=None`` that
        the caller scores as an empty prediction (``"empty"``).
    cases : Sequence[str], optional
        Score only these case ids (each must have a reference); predictions of
        other cases are then ignored. By default every reference is scored, and
        a prediction without a reference is an error.

    Returns
    -------
    list[CasePair]
        Sorted by case id.
    """
    check_missing_policy(missing)
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: the {what} folder does not exist")
    preds, refs = _label_files(pred_dir, file_ending), _label_files(ref_dir, file_ending)
    if not preds:
        raise EvaluationError(f"{pred_dir}: no predictions ending in {file_ending!r}")
    if not refs:
        raise EvaluationError(f"{ref_dir}: no reference labels ending in {file_ending!r}")
    if cases is not None:
        refs = _requested(ref_dir, refs, cases, file_ending)
    else:
        orphans = sorted(set(preds) - set(refs))
        if orphans:
            raise EvaluationError(
                f"{len(orphans)} of {len(preds)} predictions in {pred_dir} have no reference of "
                f"the same name in {ref_dir}: {listing(orphans)}. Check that LABEL_DIR holds the "
                "reference labels (e.g. labelsTr) and that the file names match."
            )
    absent = [n for n in refs if n not in set(preds)]
    if absent and missing == "error":
        raise EvaluationError(
            f"{len(absent)} of {len(refs)} reference cases in {ref_dir} have no prediction in "
            f"{pred_dir}: {listing(absent)}. Every reference case is scored: predict the missing "
            f"cases into {pred_dir}, {_MISSING_HINT}."
        )
    return [
        CasePair(n[: -len(file_ending)], None if n in absent else pred_dir / n, ref_dir / n)
        for n in refs
    ]


def unreadable_error(
    unreadable: Sequence[tuple[str, str]], n_cases: int, pred_dir: Path, ref_dir: Path
) -> EvaluationError:
    """The error for predictions that exist but cannot be read: ``(file name, reason)`` each.

    All of them are named (up to :data:`MAX_LISTED`), with the reason of the first.
    """
    names = [name for name, _ in unreadable]
    first = " ".join(unreadable[0][1].split())
    return EvaluationError(
        f"{len(names)} of {n_cases} predictions in {pred_dir} cannot be read: {listing(names)} "
        f"(first: {first}). Every reference case in {ref_dir} needs a readable prediction: "
        f"predict these cases again into {pred_dir}, {_MISSING_HINT}."
    )


def _check_grid(pair: CasePair, pred, ref) -> None:
    """A :class:`GeometryError` naming the case if ``pred`` is not on ``ref``'s voxel grid."""
    if pred.spatial_shape != ref.spatial_shape:
        raise GeometryError(
            f"case {pair.case}: prediction {pair.prediction} has shape {pred.spatial_shape} but "
            f"reference {pair.reference} has {ref.spatial_shape}"
        )
    mismatch = grid_mismatch(pred.affine, ref.affine, ref.spatial_shape)
    if mismatch:
        raise GeometryError(
            f"case {pair.case}: prediction {pair.prediction} is not on the voxel grid of its "
            f"reference {pair.reference} ({mismatch}). Predictions must be written in the "
            "geometry of the original scan."
        )


def read_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Prediction and reference arrays ``(X, Y, Z)`` and the spacing (mm) of one case.

    Raises :class:`GeometryError` naming the case if the two are not on the same
    voxel grid (shape, spacing, origin or orientation), :class:`VolumeReadError`
    if either cannot be read, and :class:`EvaluationError` if there is no prediction.
    """
    if pair.prediction is None:
        raise EvaluationError(f"case {pair.case}: no prediction for reference {pair.reference}")
    pred, ref = read_volume(pair.prediction, "label"), read_volume(pair.reference, "label")
    _check_grid(pair, pred, ref)
    return pred.array, ref.array, ref.spacing


def read_case(
    pair: CasePair, ref: Volume | None = None
) -> tuple[np.ndarray | None, np.ndarray, tuple[float, float, float], str | None]:
    """Like :func:`read_pair`, but an absent or unreadable prediction is not an error.

    Parameters
    ----------
    pair : CasePair
        The case.
    ref : Volume, optional
        ``pair.reference`` if already read (several predictions of one case are
        scored against one read of it); read here if not given.

    Returns
    -------
    tuple
        ``(pred, ref, spacing, problem)``: ``pred`` is None and ``problem`` says
        why (``"no prediction file"``, or the message of the read error, which
        names the file) when there is no readable prediction.
        An unreadable reference or a prediction on another grid still raises.
    """
    if ref is None:
        ref = read_volume(pair.reference, "label")
    if pair.prediction is None:
        return None, ref.array, ref.spacing, "no prediction file"
    try:
        pred = read_volume(pair.prediction, "label")
    except VolumeReadError as e:
        return None, ref.array, ref.spacing, str(e)
    _check_grid(pair, pred, ref)
    return pred.array, ref.array, ref.spacing, None
