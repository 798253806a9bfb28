"""Logits back to the original grid one slab at a time, bit-identical to the whole volume.

:func:`medseg.preprocessing.resample.resample_probabilities` (nnU-Net's export rule:
linear, slice-wise with nearest slices along a separate low-resolution axis) resamples
all K class channels over the whole original grid at once: K float32 volumes of
hospital-CT size. :func:`resample_slab` computes any slab ``[start, stop)`` along any
axis of that output alone, with exactly the same values:

* 3D (no separate axis): skimage's ``resize`` is ``scipy.ndimage.zoom`` (grid mode,
  ``nearest`` edges) then a clip to the channel's range. scipy computes each output
  coordinate per axis as ``((j + shift) + 0.5) * zoom - 0.5`` with the zoom factor
  ``in / out`` taken from the whole shapes, so calling its zoom kernel on the whole
  (small) input with ``shift = start`` along the slab axis and an output buffer of the
  slab's size gives the very same coordinates, weights and sums. The clip uses the
  whole channel's range, as the whole-volume call does.
* Separate axis: each output slice is the in-plane resize of one source slice (picked
  by nearest index), so a slab along that axis resizes just its own source slices; a
  slab along an in-plane axis resizes each source slice's part with the same zoom
  kernel trick in 2D.

The tests check bit-identity against the whole-volume function for every case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import _nd_image, _ni_support  # the kernel scipy.ndimage.zoom calls

from medseg.preprocessing.resample import (
    _nearest_indices,
    _resize,
    separate_z_axis,
)

#: scipy's code for mode ``nearest`` (skimage's ``edge``).
_NEAREST = _ni_support._extend_mode_to_code("nearest")


def _zoom_part(
    source: np.ndarray, out_shape: Sequence[int], axis: int, start: int, out: np.ndarray
) -> None:
    """``out`` = the part ``[start, start + out.shape[axis])`` along ``axis`` of skimage's
    ``resize(source, out_shape, order=1, mode="edge", clip=True, anti_aliasing=False)``."""
    source = np.ascontiguousarray(source, dtype=np.float32)
    # as scipy.ndimage.zoom(grid_mode=True) computes it from the whole shapes
    zoom = np.divide(np.array(source.shape), np.array(out_shape), dtype=np.float64)
    shift = np.zeros(source.ndim, dtype=np.float64)
    shift[axis] = start
    _nd_image.zoom_shift(source, zoom, shift, out, 1, _NEAREST, 0.0, 0, True)
    np.clip(out, source.min(), source.max(), out=out)


def slab_axis(current_spacing: Sequence[float], new_spacing: Sequence[float]) -> int:
    """The axis to cut slabs along: the separate low-resolution axis if there is one
    (each output slice then comes from one source slice), else axis 0."""
    axis = separate_z_axis(current_spacing, new_spacing)
    return 0 if axis is None else axis


def _along(axis: int, start: int, stop: int) -> tuple:
    return (slice(None),) * axis + (slice(start, stop),)


def _separate_channel(
    channel: np.ndarray, out_shape: tuple, sep: int, axis: int, start: int, out: np.ndarray
) -> None:
    """One channel's slab for a separate low-resolution axis ``sep`` (order_z 0)."""
    n_in, n_out = channel.shape[sep], out_shape[sep]
    source = np.arange(n_out) if n_in == n_out else _nearest_indices(n_in, n_out)
    plane = tuple(s for a, s in enumerate(out_shape) if a != sep)
    if axis == sep:
        done: dict[int, np.ndarray] = {}
        for j in range(out.shape[axis]):
            i = int(source[start + j])
            if i not in done:
                done = {i: _resize(np.take(channel, i, axis=sep), plane, 1)}
            out[(slice(None),) * sep + (j,)] = done[i]
        return
    in_plane_axis = axis - (axis > sep)
    part_plane = list(plane)
    part_plane[in_plane_axis] = out.shape[axis]
    inplane_shape = list(out.shape)
    inplane_shape[sep] = n_in
    inplane = np.empty(inplane_shape, dtype=np.float32)
    for i in range(n_in):
        target = inplane[(slice(None),) * sep + (i,)]
        part = np.empty(part_plane, dtype=np.float32)
        _zoom_part(np.take(channel, i, axis=sep), plane, in_plane_axis, start, part)
        target[...] = part
    np.take(inplane, source, axis=sep, out=out)


def resample_slab(
    logits: np.ndarray,
    out_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    axis: int,
    start: int,
    stop: int,
) -> np.ndarray:
    """The slab ``[start, stop)`` along ``axis`` of ``resample_probabilities(logits,
    out_shape, current_spacing, new_spacing)``, computed alone and bit-identical to it.

    ``logits`` is ``(K, X, Y, Z)`` float32 (order 1, order_z 0: nnU-Net's export).
    Returns a new float32 array ``(K, ...)`` with ``stop - start`` along ``axis``.
    """
    out_shape = tuple(int(s) for s in out_shape)
    slab_shape = list(out_shape)
    slab_shape[axis] = stop - start
    if tuple(logits.shape[1:]) == out_shape:
        return np.array(logits[(slice(None), *_along(axis, start, stop))], dtype=np.float32)
    out = np.empty((logits.shape[0], *slab_shape), dtype=np.float32)
    sep = separate_z_axis(current_spacing, new_spacing)
    for k in range(logits.shape[0]):
        channel = logits[k].astype(np.float32, copy=False)
        if sep is None:
            _zoom_part(channel, out_shape, axis, start, out[k])
        else:
            _separate_channel(channel, out_shape, sep, axis, start, out[k])
    return out
