"""Class probabilities on disk: float16, compressed, with their affine (plain npz, no pickle)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medseg.core.errors import VolumeReadError
from medseg.io.atomic import atomic_path


def save_probabilities(path: Path, probabilities: np.ndarray, affine: np.ndarray) -> None:
    """Write ``probabilities (K, X, Y, Z)`` as float16 with ``affine``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities.astype(np.float16), affine=affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 (K, X, Y, Z), affine)`` from :func:`save_probabilities`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["probabilities"].astype(np.float32), z["affine"]
    except (OSError, KeyError, ValueError) as e:
        raise VolumeReadError(
            f"{path}: not a medseg probabilities file ({e}); predict or validate again"
        ) from e
