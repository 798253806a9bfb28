"""The preprocessed-case store: compressed, chunked arrays plus a JSON record.

Per case in a configuration folder::

    CASE.b2nd        image (C, ...) float32, blosc2 NDArray chunked by patch size
    CASE_seg.b2nd    label (...) int8/int16 (-1 outside the non-zero region)
    CASE_fg.npz      sampled foreground voxels per class as sorted flat indices
                     (compressed plain arrays, loaded without pickle)
    CASE.json        the preprocessing record; written last, so its presence means
                     the case is complete

Chunks are at most a training patch per axis (a small case is one chunk), and
blosc2 splits chunks into small blocks, so reading a random patch decompresses
the blocks it touches rather than the whole case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import blosc2
import numpy as np

from medseg.core.errors import RecordError
from medseg.core.layout import PreprocessedDir, PreviousStageDir
from medseg.core.records import CASE_SCHEMA, read_record

MAX_CHUNK_BYTES = 8 * 1024**2
# measured on Hippocampus: ZSTD-3 + BYTEDELTA stores normalised float32 in 60% of
# the space of ZSTD + SHUFFLE (the common choice), at the same speed; lossless
# one thread per call: parallelism comes from processing cases in parallel
CPARAMS = {
    "codec": blosc2.Codec.ZSTD,
    "clevel": 3,
    "filters": [blosc2.Filter.BYTEDELTA],
    "nthreads": 1,
}


def chunk_shape(shape: Sequence[int], patch_size: Sequence[int], itemsize: int) -> tuple[int, ...]:
    """Chunk shape for an array ``(C, *spatial)`` or ``(*spatial)`` read by patches.

    One channel per chunk; spatially at most the patch size per axis, halved on
    the largest axis until under 8 MiB. blosc2 blocks inside a chunk stay small,
    so a patch read decompresses little more than the patch.
    """
    spatial = list(shape[-len(patch_size) :])
    chunk = [min(int(s), int(p)) for s, p in zip(spatial, patch_size, strict=True)]
    while math.prod(chunk) * itemsize > MAX_CHUNK_BYTES and max(chunk) > 1:
        axis = int(np.argmax(chunk))
        chunk[axis] = math.ceil(chunk[axis] / 2)
    lead = [1] * (len(shape) - len(spatial))
    return tuple(lead + chunk)


def _write_array(array: np.ndarray, path: Path, patch_size: Sequence[int]) -> None:
    if len(patch_size) < array.ndim - (1 if array.ndim == 4 else 0):
        patch_size = (1, *patch_size)  # a 2D patch reads one slice of the volume
    chunks = chunk_shape(array.shape, patch_size, array.itemsize)
    blosc2.asarray(
        np.ascontiguousarray(array), urlpath=str(path), mode="w", chunks=chunks, cparams=CPARAMS
    )


def write_case(
    folder: Path,
    case_id: str,
    data: np.ndarray,
    seg: np.ndarray,
    record: dict,
    locations: dict[int, np.ndarray],
    patch_size: Sequence[int],
) -> None:
    """Write one preprocessed case; the record goes last and marks completion.

    Files are written in place: the caller writes into a folder it publishes
    atomically when all cases are done (see ``medseg.prepare.preprocess``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    store = PreprocessedDir(folder)
    _write_array(data.astype(np.float32, copy=False), store.image(case_id), patch_size)
    _write_array(seg, store.seg(case_id), patch_size)
    flat = {
        f"class_{c}": np.sort(np.ravel_multi_index(tuple(v.T), seg.shape)).astype(np.int64)
        for c, v in locations.items()
    }
    with open(store.locations(case_id), "wb") as f:
        np.savez_compressed(f, **{k: np.diff(v, prepend=0) for k, v in flat.items()})
    store.record(case_id).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def write_previous(folder: Path, case_id: str, seg: np.ndarray, patch_size: Sequence[int]) -> None:
    """Store a cascade stage's previous-stage segmentation of one case, chunked like the
    case's label (so a training patch reads only the chunks it touches)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_array(seg, PreviousStageDir(folder).seg(case_id), patch_size)


def require_previous(folder: Path, case_ids: Sequence[str]) -> None:
    """Raise :class:`RecordError` unless ``folder`` holds every case's previous-stage
    segmentation (checked before work starts, not hours into a training run)."""
    store = PreviousStageDir(Path(folder))
    missing = [c for c in case_ids if not store.seg(c).is_file()]
    if missing:
        raise RecordError(
            f"{folder}: no previous-stage segmentation of {len(missing)} case(s) "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run 'medseg "
            "previous-stage' after validating every fold of the previous stage"
        )


def open_previous(folder: Path, case_id: str):
    """The previous-stage segmentation of a case, lazily opened (index it to read)."""
    path = PreviousStageDir(Path(folder)).seg(case_id)
    if not path.is_file():
        raise RecordError(
            f"{path}: no previous-stage segmentation of case {case_id!r}; run "
            "'medseg previous-stage' after validating every fold of the previous stage"
        )
    try:
        return blosc2.open(str(path), mode="r")
    except Exception as e:
        raise RecordError(f"{path}: cannot open ({e}); run 'medseg previous-stage' again") from e


def case_ids(folder: Path) -> list[str]:
    """Ids of the complete cases in ``folder`` (label array and record both present)."""
    folder = Path(folder)
    store, suffix = PreprocessedDir(folder), PreprocessedDir.SEG_SUFFIX
    ids = (p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    return sorted(i for i in ids if store.record(i).is_file())


def read_case_record(folder: Path, case_id: str) -> dict:
    """The preprocessing record of a case, checked: a record of another version (an older
    medseg's preprocessing) is refused with what to do."""
    path = PreprocessedDir(Path(folder)).record(case_id)
    if not path.is_file():
        raise RecordError(f"{path}: no preprocessed case {case_id!r}; run 'medseg preprocess'")
    record = read_record(path, CASE_SCHEMA)
    if record["schema_version"] != CASE_SCHEMA[1] or not isinstance(record.get("steps"), list):
        raise RecordError(
            f"{path}: preprocessed by another medseg version (case record version "
            f"{record['schema_version']}); run 'medseg preprocess' again"
        )
    return record


def open_case_arrays(folder: Path, case_id: str):
    """Lazily opened ``(image, label)`` blosc2 arrays; index them to decompress a region."""
    folder = Path(folder)
    try:
        data = blosc2.open(str(PreprocessedDir(folder).image(case_id)), mode="r")
        seg = blosc2.open(str(PreprocessedDir(folder).seg(case_id)), mode="r")
    except Exception as e:
        raise RecordError(
            f"{folder}: cannot open preprocessed case {case_id!r}: {e}; run 'medseg preprocess' "
            "again"
        ) from e
    return data, seg


def read_locations(folder: Path, case_id: str, shape: Sequence[int]) -> dict[int, np.ndarray]:
    """Foreground coordinates per class, ``(N, ndim)`` int32, in a label of ``shape``."""
    with np.load(PreprocessedDir(Path(folder)).locations(case_id), allow_pickle=False) as z:
        return {
            int(k.split("_", 1)[1]): np.stack(
                np.unravel_index(np.cumsum(z[k]), tuple(shape)), axis=1
            ).astype(np.int32)
            for k in z.files
        }
