"""Resampling to a new voxel grid with nnU-Net v2's default rules.

Reproduces ``nnunetv2.preprocessing.resampling.default_resampling`` with
``force_separate_z=None`` (the default plans), including the label rule of the
installed ``batchgenerators.augmentations.utils.resize_segmentation``.

Conventions
-----------
Arrays are ``(X, Y, Z)`` for one volume, ``(C, X, Y, Z)`` with channels first.
Spacings are ``(3,)`` in mm, in the same axis order as the array.

The rules
---------
* New shape: ``round(old_spacing / new_spacing * old_shape)`` per axis (Python's
  round, half to even).
* If the current spacing is anisotropic (``max / min > 3``), or else the new one is,
  its coarsest axis is the *low-resolution axis*. Each slice across that axis is
  resized in-plane (spline ``order``), then the slices are interpolated along the
  axis with ``order_z`` (0, nearest, by default). If two or three axes share the
  coarsest spacing there is no separate axis and the volume is resized in 3D.
* Images and probabilities: ``skimage.transform.resize`` with ``mode="edge"``,
  ``anti_aliasing=False`` and clipping to the input range.
* Labels: each label's indicator is resized (``order``, default linear) and every
  voxel takes the label with the highest score; where the top score is shared, the
  nearest-neighbour label wins if it is among the tied labels, otherwise the
  smallest tied label. This is the rule of batchgenerators 0.25.5 (the installed
  version); older releases instead wrote each label where its score was >= 0.5, in
  ascending label order, which differs at boundaries. Along a separate axis with
  ``order_z > 0`` each label's indicator is interpolated and written where it
  exceeds 0.5, in ascending label order, over a zero-initialized result.

Differences from nnU-Net that do not change values (the tests check bit-identity):
spline orders 1 and 3 are computed by :mod:`.zoom` (separable sums, exact float32
result) and label resizing at order 1 by :mod:`.label_zoom` (the argmax rule only
where a voxel's interpolation corners disagree); images are processed in float32
whenever that is exact; along the low-resolution axis with ``order_z == 0`` the
source slices are gathered with ``np.take``; label slices whose in-plane shape does
not change are not resized (that resize is the identity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from medseg.core.errors import GeometryError
from medseg.preprocessing.label_zoom import resize_label
from medseg.preprocessing.zoom import resize_exact

#: Spacing ratio (coarsest / finest) above which a low-resolution axis is separated.
ANISO_THRESHOLD = 3.0
#: Spline orders computed by the exact fast paths (:mod:`.zoom`, :mod:`.label_zoom`).
FAST_ORDERS = (1, 3)


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Shape of a volume after resampling from ``old_spacing`` to ``new_spacing``.

    Parameters
    ----------
    old_shape
        Spatial shape, e.g. ``(X, Y, Z)``.
    old_spacing, new_spacing
        Voxel spacing in mm per axis, same length as ``old_shape``.

    Returns
    -------
    tuple of int
        ``round(old_spacing / new_spacing * old_shape)`` per axis, with Python's
        round-half-to-even, evaluated in float64 in that operation order.
    """
    if not len(old_shape) == len(old_spacing) == len(new_spacing):
        raise GeometryError(
            f"shape {tuple(old_shape)}, old spacing {tuple(old_spacing)} and new spacing "
            f"{tuple(new_spacing)} must have the same length (one entry per spatial axis)"
        )
    return tuple(
        int(round(float(o) / float(n) * int(s)))
        for s, o, n in zip(old_shape, old_spacing, new_spacing, strict=True)
    )


def _coarsest_axes(spacing: np.ndarray) -> np.ndarray:
    """Indices of the axes whose spacing equals the largest spacing."""
    return np.flatnonzero(spacing.max() / spacing == 1)


def separate_z_axis(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    threshold: float = ANISO_THRESHOLD,
) -> int | None:
    """The low-resolution axis to resample separately, or ``None`` for plain 3D resampling.

    Parameters
    ----------
    current_spacing, new_spacing
        Spacing in mm per spatial axis.
    threshold
        A spacing is anisotropic when ``max / min > threshold``.

    Returns
    -------
    int or None
        The coarsest axis of ``current_spacing`` if it is anisotropic, else that of
        ``new_spacing`` if *it* is, else ``None``. Also ``None`` when the chosen
        spacing's coarsest value is shared by two or three axes (e.g.
        ``(0.24, 1.25, 1.25)``); nnU-Net then does not fall back to the other spacing.
    """
    for spacing in (current_spacing, new_spacing):
        s = np.asarray(spacing, dtype=np.float64)
        if s.max() / s.min() > threshold:
            axes = _coarsest_axes(s)
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _validate(arr: np.ndarray, ndim: int, new_shape: Sequence[int], spacings: tuple) -> tuple:
    """Check dimensions; return ``new_shape`` as a tuple of int."""
    what = "(C, X, Y, Z)" if ndim == 4 else "(X, Y, Z)"
    if arr.ndim != ndim:
        raise GeometryError(f"expected a {ndim}D array {what}, got shape {arr.shape}")
    shape = tuple(int(s) for s in new_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GeometryError(f"new_shape must be 3 positive ints (X, Y, Z), got {tuple(new_shape)}")
    for spacing in spacings:
        if len(spacing) != 3 or min(spacing) <= 0:
            raise GeometryError(f"spacing must be 3 positive values in mm, got {tuple(spacing)}")
    return shape


def _work_dtype(dtype: np.dtype) -> type[np.floating]:
    """float32 where it holds every value of ``dtype`` exactly, else float64."""
    if dtype.kind == "b" or (dtype.kind in "iuf" and dtype.itemsize <= 2) or dtype == np.float32:
        return np.float32
    return np.float64


def _resize(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage resize as nnU-Net calls it: edge padding, no anti-aliasing, clipped."""
    return resize(arr, tuple(shape), order, mode="edge", clip=True, anti_aliasing=False)


def _slab(axis: int, i: int) -> tuple:
    """Index selecting position ``i`` along ``axis`` of a 3D array."""
    return (slice(None),) * axis + (i,)


def _axis_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinates ``(n_out,)`` along the low-resolution axis, as nnU-Net computes them."""
    scale = float(n_in) / n_out
    return scale * (np.arange(n_out) + 0.5) - 0.5


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source slice per output slice ``(n_out,)`` for order 0, with scipy's own rounding."""
    source = np.arange(n_in, dtype=np.float64)
    picked = map_coordinates(source, _axis_coordinates(n_in, n_out)[None], order=0, mode="nearest")
    return picked.astype(np.intp)


def _interp_along_axis(arr: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Spline-interpolate a 3D float array along ``axis`` only (mode ``nearest``), float64.

    Exactly nnU-Net's call: one 3D ``map_coordinates`` over the full output grid with
    integer in-plane coordinates. Kept whole (not chunked) because the spline
    prefilter runs over the whole array, and label indicators are thresholded at 0.5
    where rounding differences would flip exact ties.
    """
    out_shape = list(arr.shape)
    out_shape[axis] = n_out
    coords = np.indices(out_shape, dtype=np.float64)
    view = [1, 1, 1]
    view[axis] = n_out
    coords[axis] = _axis_coordinates(arr.shape[axis], n_out).reshape(view)
    return map_coordinates(arr, coords, order=order, mode="nearest")


def _inplane(channel: np.ndarray, axis: int, plane_shape: tuple, order: int, dtype) -> np.ndarray:
    """Each slice across ``axis`` resized to ``plane_shape``; the slices stay along ``axis``."""
    if order in FAST_ORDERS and dtype == np.float32:
        stack = np.moveaxis(channel, axis, 0)
        out = resize_exact(stack, (stack.shape[0], *plane_shape), order, stack=True)
        return np.moveaxis(out, 0, axis)
    inplane_shape = list(plane_shape)
    inplane_shape.insert(axis, channel.shape[axis])
    inplane = np.empty(inplane_shape, dtype=dtype)
    for i in range(channel.shape[axis]):
        inplane[_slab(axis, i)] = _resize(channel[_slab(axis, i)], plane_shape, order)
    return inplane


def _image_channel(
    channel: np.ndarray, out: np.ndarray, axis: int | None, order: int, order_z: int
) -> None:
    """Resample one float channel ``(X, Y, Z)`` into ``out`` (float32, target shape)."""
    if axis is None:
        if order in FAST_ORDERS:
            out[...] = resize_exact(channel, out.shape, order)
        else:
            out[...] = _resize(channel, out.shape, order)
        return
    plane_shape = tuple(s for a, s in enumerate(out.shape) if a != axis)
    # order_z > 0 interpolates between in-plane values, which must then stay float64
    inplane = _inplane(
        channel, axis, plane_shape, order, np.float32 if order_z == 0 else channel.dtype
    )
    n_in, n_out = channel.shape[axis], out.shape[axis]
    if n_in == n_out:
        out[...] = inplane
    elif order_z == 0 and inplane.dtype == out.dtype:
        np.take(inplane, _nearest_indices(n_in, n_out), axis=axis, out=out, mode="clip")
    elif order_z == 0:
        out[...] = np.take(inplane, _nearest_indices(n_in, n_out), axis=axis)
    else:
        out[...] = _interp_along_axis(inplane, axis, n_out, order_z)


def resample_image(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 3,
    order_z: int = 0,
) -> np.ndarray:
    """Resample a multi-channel image to ``new_shape`` with nnU-Net's default rules.

    Parameters
    ----------
    data
        ``(C, X, Y, Z)`` image, any real dtype.
    new_shape
        Target spatial shape ``(X', Y', Z')``.
    current_spacing, new_spacing
        Spacing in mm of ``data`` and of the target grid; they only decide whether a
        low-resolution axis is resampled separately (see :func:`separate_z_axis`).
    order
        Spline order for the (in-plane or full 3D) resize.
    order_z
        Spline order along a separate low-resolution axis (0: nearest).

    Returns
    -------
    numpy.ndarray
        float32 ``(C, X', Y', Z')``: the values of nnU-Net's
        ``resample_data_or_seg_to_shape(..., is_seg=False, force_separate_z=None)``.
        If the shape is unchanged this is ``data`` as float32, which may be ``data``
        itself (no copy) when it already is float32.
    """
    data = np.asarray(data)
    shape = _validate(data, 4, new_shape, (current_spacing, new_spacing))
    if data.shape[1:] == shape:
        return data.astype(np.float32, copy=False)
    axis = separate_z_axis(current_spacing, new_spacing)
    # order_z > 0 interpolates between in-plane results, which must then stay float64
    work = _work_dtype(data.dtype) if axis is None or order_z == 0 else np.float64
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        _image_channel(data[c].astype(work, copy=False), out[c], axis, order, order_z)
    return out


def resample_probabilities(
    probs: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 1,
    order_z: int = 0,
) -> np.ndarray:
    """Resample class probabilities (softmax output) to ``new_shape``, as nnU-Net's export does.

    Parameters
    ----------
    probs
        ``(K, X, Y, Z)`` float, one channel per class.
    new_shape, current_spacing, new_spacing, order_z
        As in :func:`resample_image`.
    order
        Spline order; nnU-Net uses 1 (linear) for probabilities.

    Returns
    -------
    numpy.ndarray
        float32 ``(K, X', Y', Z')``. Values are clipped per channel to that channel's
        input range, so they need not sum to exactly one.
    """
    return resample_image(
        probs, new_shape, current_spacing, new_spacing, order=order, order_z=order_z
    )


def _label_along_axis(arr: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """nnU-Net's ``order_z > 0`` label rule: per-label interpolation, ``> 0.5`` overwrites."""
    out_shape = list(arr.shape)
    out_shape[axis] = n_out
    out = np.zeros(out_shape, dtype=arr.dtype)
    for label in np.unique(arr):
        score = _interp_along_axis((arr == label).astype(np.float64), axis, n_out, order)
        out[score > 0.5] = label
    return out


def _label_inplane(seg: np.ndarray, axis: int, plane_shape: tuple, order: int) -> np.ndarray:
    """Each label slice across ``axis`` resized to ``plane_shape`` (``seg`` if unchanged:
    resizing a slice to its own shape returns it as it is)."""
    if plane_shape == tuple(s for a, s in enumerate(seg.shape) if a != axis):
        return seg
    stack = np.moveaxis(seg, axis, 0)
    out = resize_label(stack, (stack.shape[0], *plane_shape), order, stack=True)
    return np.moveaxis(out, 0, axis)


def resample_label(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 1,
    order_z: int = 0,
) -> np.ndarray:
    """Resample a label map to ``new_shape`` with nnU-Net's default rules.

    Parameters
    ----------
    seg
        ``(X, Y, Z)`` integer label map; any values, including negative ones (-1).
    new_shape
        Target spatial shape ``(X', Y', Z')``.
    current_spacing, new_spacing
        Spacing in mm; decide the separate low-resolution axis.
    order
        Spline order for each label's indicator (1: linear); 0 is nearest neighbour.
    order_z
        Order along a separate low-resolution axis (0: nearest).

    Returns
    -------
    numpy.ndarray
        ``(X', Y', Z')`` with ``seg``'s dtype; equal to nnU-Net's
        ``resample_data_or_seg_to_shape(seg[None], ..., is_seg=True,
        force_separate_z=None)[0]``. ``seg`` itself if the shape is unchanged.
    """
    seg = np.asarray(seg)
    shape = _validate(seg, 3, new_shape, (current_spacing, new_spacing))
    if seg.shape == shape:
        return seg
    axis = separate_z_axis(current_spacing, new_spacing)
    if axis is None:
        return resize_label(seg, shape, order)
    inplane = _label_inplane(seg, axis, tuple(s for a, s in enumerate(shape) if a != axis), order)
    n_in, n_out = seg.shape[axis], shape[axis]
    if n_in == n_out:
        return inplane
    if order_z == 0:
        return np.take(inplane, _nearest_indices(n_in, n_out), axis=axis)
    return _label_along_axis(inplane, axis, n_out, order_z)
