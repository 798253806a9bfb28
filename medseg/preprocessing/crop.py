"""Crop to the non-zero region (nnU-Net's rule) and its inverse."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Written into the label where the image is outside the non-zero region.
OUTSIDE = -1

Box = tuple[tuple[int, int], ...]


#: Below this fraction of background voxels, holes are found among those voxels only.
SPARSE_BACKGROUND = 1 / 32


def _background_components(background: np.ndarray, shape: tuple) -> tuple[np.ndarray, int]:
    """Face-connected components of the voxels at sorted flat (C) indices ``background``."""
    coords = np.unravel_index(background, shape)
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]  # C-order element strides
    rows, cols = [], []
    for axis, stride in enumerate(strides):
        src = np.flatnonzero(coords[axis] < shape[axis] - 1)
        target = background[src] + stride
        pos = np.minimum(np.searchsorted(background, target), background.size - 1)
        hit = background[pos] == target
        rows.append(src[hit])
        cols.append(pos[hit])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = background.size
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    count, components = connected_components(graph, directed=False)
    return components, count


def _fill_sparse(mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """:func:`fill_holes` when few voxels are background: a graph of those voxels only."""
    components, count = _background_components(background, mask.shape)
    coords = np.unravel_index(background, mask.shape)
    on_border = np.zeros(background.size, dtype=bool)
    for axis, c in enumerate(coords):
        on_border |= (c == 0) | (c == mask.shape[axis] - 1)
    outside = np.zeros(count, dtype=bool)
    outside[components[on_border]] = True
    filled = np.array(mask, order="C")
    filled.reshape(-1)[background[~outside[components]]] = True
    return filled


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (face connectivity), faster.

    A background voxel stays background if its face-connected background component
    touches the array border; every other component is a hole. The components come
    from one ``label`` pass (scipy iterates a dilation instead), or, when background
    is rare (a CT's scattered voxels of exactly 0 HU), from a graph of the background
    voxels alone.
    """
    background = np.flatnonzero(~mask)
    if background.size == 0:
        return np.array(mask, order="C")
    if background.size <= mask.size * SPARSE_BACKGROUND:
        return _fill_sparse(mask, background)
    components, n = label(~mask)
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.take(components, end, axis=axis)] = True
    outside[0] = False  # the mask itself
    return ~outside[components]


def _any_nonzero(data: np.ndarray) -> np.ndarray:
    """Where any channel of ``data`` (C, ...) is non-zero."""
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return mask


def mask_and_box(data: np.ndarray) -> tuple[np.ndarray, Box]:
    """:func:`nonzero_mask` of ``data`` (C, ...) and its :func:`bounding_box`."""
    mask = _any_nonzero(data)
    box = bounding_box(mask)
    sl = box_slices(box)
    inside = mask[sl]
    if not inside.all():  # else no holes (a CT: air is -1000, not 0)
        # outside the box every voxel is background that reaches the border, so the
        # holes are those of the box alone (its faces count as border)
        mask[sl] = fill_holes(inside)
    return mask, box


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Where any channel of ``data`` (C, ...) is non-zero, with holes filled."""
    return mask_and_box(data)[0]


def bounding_box(mask: np.ndarray) -> Box:
    """Half-open ``((lo, hi), ...)`` per axis around ``mask``; the whole array if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if not hit.size:
            return tuple((0, int(n)) for n in mask.shape)
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
    mask, box = mask_and_box(data)
    sl = box_slices(box)
    inside = mask[sl]
    cropped = data[(slice(None),) + sl]
    everywhere = bool(inside.all())
    if seg is None:
        if everywhere:
            return cropped, np.zeros(inside.shape, dtype=np.int8), box
        return cropped, np.where(inside, np.int8(0), np.int8(OUTSIDE)), box
    label_map = np.array(seg[sl], dtype=np.result_type(seg.dtype, np.int8), order="C")
    if not everywhere:
        label_map[(label_map == 0) & ~inside] = OUTSIDE
    return cropped, label_map, box


def uncrop(array: np.ndarray, box: Box, full_shape: tuple[int, ...], fill=0) -> np.ndarray:
    """Place ``array`` (..., *box extent) back into an array of spatial ``full_shape``."""
    lead = array.shape[: array.ndim - len(full_shape)]
    out = np.full(lead + tuple(full_shape), fill, dtype=array.dtype)
    out[(Ellipsis,) + box_slices(box)] = array
    return out
