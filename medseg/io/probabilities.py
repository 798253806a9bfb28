"""Class probabilities on disk: float16, compressed, with their affine; nothing pickled.

Two containers: ``.npz`` (whole arrays: cross-validation cases) and ``.b2nd`` (a
chunked blosc2 array, written slab by slab by ``medseg predict``, so a hospital-sized
volume's K class maps never sit in memory at once; the affine is in its metadata).
:func:`load_probabilities` reads both.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import blosc2
import numpy as np

from medseg.core.errors import VolumeReadError
from medseg.io.atomic import atomic_path

#: blosc2 settings of slab-written probabilities (float16: byte-shuffled, zstd).
_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]}


def save_probabilities(path: Path, probabilities: np.ndarray, affine: np.ndarray) -> None:
    """Write ``probabilities (K, X, Y, Z)`` as float16 with ``affine``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities.astype(np.float16), affine=affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


class SlabWriter:
    """Writes a float16 ``(K, X, Y, Z)`` blosc2 array region by region (see
    :func:`probability_writer`)."""

    def __init__(self, array) -> None:
        self._array = array

    def write(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Store ``block`` (K, ...) at spatial ``region`` (one slice per spatial axis)."""
        self._array[(slice(None), *region)] = np.ascontiguousarray(block, dtype=np.float16)


@contextlib.contextmanager
def probability_writer(
    path: Path, shape: Sequence[int], affine: np.ndarray, chunks: Sequence[int]
) -> Iterator[SlabWriter]:
    """A :class:`SlabWriter` for ``path`` (``.b2nd``), published atomically on success.

    ``shape`` is ``(K, X, Y, Z)``; ``chunks`` its chunk shape (a writer that stores
    whole chunks at a time never recompresses one).
    """
    with atomic_path(path) as tmp:
        array = blosc2.zeros(
            tuple(shape),
            dtype=np.float16,
            chunks=tuple(chunks),
            urlpath=str(tmp),
            mode="w",
            cparams=_CPARAMS,
        )
        array.schunk.vlmeta["affine"] = np.asarray(affine, np.float64).tolist()
        yield SlabWriter(array)
        del array


def _load_b2nd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array = blosc2.open(str(path), mode="r")
    affine = np.asarray(array.schunk.vlmeta["affine"], np.float64)
    return array[...].astype(np.float32), affine


def load_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 (K, X, Y, Z), affine)`` of a ``.npz`` written by
    :func:`save_probabilities` or a ``.b2nd`` written by :func:`probability_writer`."""
    try:
        if Path(path).suffix == ".b2nd":
            return _load_b2nd(Path(path))
        with np.load(path, allow_pickle=False) as z:
            return z["probabilities"].astype(np.float32), z["affine"]
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise VolumeReadError(
            f"{path}: not a medseg probabilities file ({e}); predict or validate again"
        ) from e
