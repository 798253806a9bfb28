"""Foreground voxel locations per class, for oversampling patches during training."""

from __future__ import annotations

import math

import numpy as np

MIN_SAMPLES = 10_000
MIN_FRACTION = 0.01


def sample_class_locations(
    seg: np.ndarray, classes: list[int], rng: np.random.Generator
) -> dict[int, np.ndarray]:
    """Up to ``max(10000, 1%)`` voxel coordinates ``(N, ndim)`` of each class in ``seg``.

    Classes absent from ``seg`` get an empty ``(0, ndim)`` array. Coordinates are
    sorted so the stored arrays compress well and are reproducible.
    """
    out = {}
    for c in classes:
        flat = np.flatnonzero(seg == c)
        n = min(MIN_SAMPLES, flat.size)
        n = max(n, math.ceil(flat.size * MIN_FRACTION))
        if flat.size:
            flat = np.sort(rng.choice(flat, n, replace=False))
        out[c] = np.stack(np.unravel_index(flat, seg.shape), axis=1).astype(np.int32)
    return out
