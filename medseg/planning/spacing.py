"""Target spacing, axis transpose and resampled shapes (nnU-Net v2's rules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: An axis is anisotropic if its spacing is this many times the next largest one.
ANISO_THRESHOLD = 3.0


def fullres_target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    anisotropy_threshold: float = ANISO_THRESHOLD,
) -> np.ndarray:
    """Median spacing, except on a clearly low-resolution axis.

    If the median spacing of one axis is more than ``anisotropy_threshold`` times
    the others *and* that axis has that many times fewer voxels, its target is
    the 10th percentile of its spacings instead (but never finer than the other
    axes), so thick-slice cases are not interpolated into many fake slices.
    """
    spacings = np.vstack(spacings).astype(float)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(np.vstack(shapes), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacings = [target[i] for i in others]
    other_sizes = [median_size[i] for i in others]
    aniso_spacing = target[worst] > anisotropy_threshold * max(other_spacings)
    aniso_voxels = median_size[worst] * anisotropy_threshold < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        axis_target = np.percentile(spacings[:, worst], 10)
        if axis_target < max(other_spacings):
            axis_target = max(max(other_spacings), axis_target) + 1e-5
        target[worst] = axis_target
    return target


def transpose_axes(target_spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """Forward transpose putting the coarsest axis first, and its inverse."""
    coarsest = int(np.argmax(target_spacing))
    forward = [coarsest] + [i for i in range(len(target_spacing)) if i != coarsest]
    backward = [forward.index(i) for i in range(len(target_spacing))]
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]):
    """Voxel counts after resampling ``shape`` from ``spacing`` to ``target`` (rounded)."""
    return np.array(
        [int(round(sp / t * n)) for sp, t, n in zip(spacing, target, shape, strict=True)]
    )
