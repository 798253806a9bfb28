"""Pairwise ensembles of cross-validation predictions: averaged probabilities, then labels.

An ensemble of two configurations labels each voxel with the class of highest
summed (so averaged) probability of the two configurations' cross-validation
probabilities (``CASE.npz`` beside each fold's ``CASE.nii.gz``, written by
``medseg train``'s validation). Each case is made by one worker, which reads each
configuration's probabilities once for every ensemble it is in. An ensemble label
map whose two probability files are unchanged since it was written (and which
itself is unchanged) is not made again (:mod:`medseg.evaluation.cache`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.core.errors import EvaluationError
from medseg.core.layout import FoldDir
from medseg.core.parallel import parallel_map
from medseg.core.volume import Volume
from medseg.evaluation.cache import CaseCache, code_versions, file_identity
from medseg.evaluation.cases import listing
from medseg.io.probabilities import load_probabilities
from medseg.io.volumes import write_volume

log = logging.getLogger(__name__)


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """``np.argmax(probabilities, axis=0)`` as uint8, for ``(K, X, Y, Z)`` probabilities.

    Channel by channel (several times faster than an argmax over the first axis of a
    large array); the first of tied channels wins, as with ``np.argmax``, and so
    does the first NaN.
    """
    best = probabilities[0].copy()
    label = np.zeros(probabilities.shape[1:], np.uint8)
    for k in range(1, len(probabilities)):
        better = probabilities[k] > best
        label[better] = k
        np.maximum(best, probabilities[k], out=best)  # NaN propagates: checked below
    if np.isnan(best).any():
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    return label


def probability_files(folds: Mapping, configuration: str, cases: list[str]) -> dict[str, Path]:
    """``{case: CASE.npz}`` of a configuration's cross-validation (first fold that has it).

    ``folds`` is ``{fold: fold folder}``; an :class:`EvaluationError` lists the
    cases without probabilities.
    """
    found: dict[str, Path] = {}
    for folder in folds.values():
        for case in cases:
            path = FoldDir(Path(folder)).validation_probabilities(case)
            if case not in found and path.is_file():
                found[case] = path
    absent = [case for case in cases if case not in found]
    if absent:
        raise EvaluationError(
            f"{configuration}: no cross-validation probabilities (validation/CASE.npz) for "
            f"{len(absent)} case(s): {listing(absent)}. Ensembles average them: validate "
            f"every fold of {configuration} again ('medseg train' writes them)."
        )
    return found


def _load_stored(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (K, X, Y, Z), affine)`` of :func:`load_probabilities`, in the dtype
    stored (float16): converting to float32 while adding two of them is several times
    faster than converting each first, and gives the very same float32 sums."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["probabilities"], z["affine"]
    except (OSError, KeyError, ValueError):
        return load_probabilities(path)  # raises its own error, naming the file


def _make_case(job: tuple[str, dict[str, Path], list[tuple[str, str, str, Path]]]) -> tuple:
    """Write one case's ensemble label maps; return ``(case, [(key, output identity)])``."""
    case, files, outputs = job
    loaded = {name: _load_stored(path) for name, path in files.items()}
    made = []
    for key, a, b, out in outputs:
        (pa, _), (pb, affine) = loaded[a], loaded[b]
        if pa.shape != pb.shape:
            raise EvaluationError(
                f"case {case}: the probabilities of {a} {files[a]} have shape {pa.shape} but "
                f"those of {b} {files[b]} have {pb.shape}; both must be on the case's grid"
            )
        probs = np.add(pa, pb, dtype=np.float32)  # as load_probabilities' float32, then +
        write_volume(Volume.label(argmax_labels(probs), affine), out)
        made.append((key, file_identity(out)))
    return case, made


def make_ensembles(
    members: Mapping[str, tuple[str, str]],
    files: Mapping[str, Mapping[str, Path]],
    cv_dir: Path,
    cases: list[str],
    processes: int = 1,
) -> None:
    """Write ``cv_dir/<key>/CASE.nii.gz`` of each ensemble ``key -> (a, b)``, for every case.

    Parameters
    ----------
    members : Mapping[str, tuple[str, str]]
        Ensemble folder name -> its two configurations.
    files : Mapping[str, Mapping[str, Path]]
        Configuration -> case -> probabilities file (:func:`probability_files`).
    cv_dir : Path
        The cross-validation folder; each ensemble's labels go to ``cv_dir/<key>``.
    cases : list[str]
        Every case to make.
    processes : int
        Cases made in parallel.
    """
    caches = {key: CaseCache(cv_dir / key, "ensemble") for key in members}
    todo: dict[str, list] = {}
    keys = {}
    for case in cases:
        for key, (a, b) in members.items():
            out = cv_dir / key / f"{case}.nii.gz"
            sources = [file_identity(files[a][case]), file_identity(files[b][case])]
            made_from = {"members": sources, "code": code_versions()}
            written = file_identity(out)
            if written is not None and caches[key].get(case, made_from) == written:
                continue  # made from these very files, and untouched since
            keys[key, case] = made_from
            todo.setdefault(case, []).append((key, a, b, out))
    jobs = []
    for case, outputs in todo.items():
        needed = {name for _, a, b, _ in outputs for name in (a, b)}
        jobs.append((case, {name: files[name][case] for name in sorted(needed)}, outputs))
    try:
        for case, made in parallel_map(_make_case, jobs, processes):
            for key, identity in made:
                caches[key].put(case, keys[key, case], identity)
    finally:
        for cache in caches.values():
            cache.save(cases)
    log.info("ensembles: %d of %d case(s) made, the rest unchanged", len(jobs), len(cases))
