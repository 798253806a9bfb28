"""Crop to the non-zero region (nnU-Net's rule) and its inverse."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

#: Written into the label where the image is outside the non-zero region.
OUTSIDE = -1

Box = tuple[tuple[int, int], ...]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Where any channel of ``data`` (C, ...) is non-zero, with holes filled."""
    mask = np.any(data != 0, axis=0)
    return binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> Box:
    """Half-open ``((lo, hi), ...)`` per axis around ``mask``; the whole array if empty."""
    if not mask.any():
        return tuple((0, int(n)) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def box_slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in box)


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Crop ``data`` (C, ...) and ``seg`` (...) to the bounding box of the non-zero region.

    Returns the cropped data, a cropped label in which background voxels outside
    the non-zero region are set to :data:`OUTSIDE` (-1; the z-score normalisation
    with mask uses ``seg >= 0``), and the box. Without ``seg``, the returned label
    is 0 inside the region and -1 outside (int8).
    """
    mask = nonzero_mask(data)
    box = bounding_box(mask)
    sl = box_slices(box)
    inside = mask[sl]
    cropped = data[(slice(None),) + sl]
    if seg is None:
        label = np.where(inside, np.int8(0), np.int8(OUTSIDE))
    else:
        label = np.array(seg[sl], dtype=np.result_type(seg.dtype, np.int8), copy=True)
        label[(label == 0) & ~inside] = OUTSIDE
    return cropped, label, box


def uncrop(array: np.ndarray, box: Box, full_shape: tuple[int, ...], fill=0) -> np.ndarray:
    """Place ``array`` (..., *box extent) back into an array of spatial ``full_shape``."""
    lead = array.shape[: array.ndim - len(full_shape)]
    out = np.full(lead + tuple(full_shape), fill, dtype=array.dtype)
    out[(Ellipsis,) + box_slices(box)] = array
    return out
