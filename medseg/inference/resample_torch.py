"""Logits back to the original grid on the device, one output slab at a time.

Computes, with torch on the logits' own device (CPU or CUDA), a slab of
:func:`medseg.preprocessing.resample.resample_probabilities` with its defaults
(``order=1``, ``order_z=0``), i.e. nnU-Net v2's export resampling, without ever
building the full output: memory is ``O(K x slab)`` besides the input.

The rules reproduced
--------------------
* skimage ``resize(order=1, mode="edge", anti_aliasing=False)`` is ``scipy.ndimage.zoom``
  with ``grid_mode=True, mode="nearest"``: output ``j`` reads source coordinate
  ``(j + 0.5) * (n_in / n_out) - 0.5`` (float64), clamped to ``[0, n_in - 1]``, and
  interpolates linearly between ``floor`` and ``floor + 1``. Multilinear interpolation
  is separable, so it runs here as 1-D passes: the slab axis first (down to the slab),
  then the others.
* A separate low-resolution axis (:func:`separate_z_axis`): slices across it are
  resized in-plane and then *picked* (``order_z=0``) by :func:`_nearest_indices`, the
  very indices the numpy path uses; no interpolation along that axis.
* ``clip=True``: skimage clips each resize to its input's range. In 3D that is the
  channel's range over the whole input; with a separate axis it is the range of each
  source slice (each slice is resized on its own).
* Unchanged axes are left alone (a zoom by 1 reads exactly the source voxel).

The result is float32. Values differ from the numpy path only by float32 rounding
(scipy sums in float64): a few ulp of the logits. For a fixed ``axis``, each output
voxel goes through the same operations whatever the slab, so slabs concatenate to
exactly the one-slab result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medseg.core.errors import GeometryError
from medseg.preprocessing.resample import _nearest_indices, _validate, separate_z_axis

# Per axis: None (unchanged), (indices,) for order-0 picking, (low, high, weight) for linear.
_Taps = tuple[np.ndarray, ...] | None


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours and upper weight per output, as ``scipy.ndimage.zoom(grid_mode=True)``.

    Coordinates ``(j + 0.5) * (n_in / n_out) - 0.5`` in scipy's operation order (float64),
    clamped to ``[0, n_in - 1]`` (mode ``nearest``: scipy clamps the neighbours, which
    gives the same value), ``low = floor(c)``, ``high = min(low + 1, n_in - 1)``, and
    scipy's weights ``w0 = 1 - (c - low)``, ``w1 = 1 - w0``.
    """
    coord = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    coord = np.clip(coord, 0.0, n_in - 1.0)
    floor = np.floor(coord)
    weight = 1.0 - (1.0 - (coord - floor))
    low = floor.astype(np.int64)
    return low, np.minimum(low + 1, n_in - 1), weight


def _axis_taps(n_in: int, n_out: int, separate: bool) -> _Taps:
    """How one axis is resampled: unchanged, picked (separate axis, order 0) or linear."""
    if n_in == n_out:
        return None
    if separate:
        return (_nearest_indices(n_in, n_out).astype(np.int64),)
    return _linear_taps(n_in, n_out)


def _pick(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, index)`` as a ``gather`` (much faster on CPU for inner dims)."""
    view = [1] * t.ndim
    view[dim] = -1
    shape = list(t.shape)
    shape[dim] = len(index)
    return torch.gather(t, dim, index.view(view).expand(shape))


def _resample_axis(t: torch.Tensor, dim: int, taps: _Taps, part: slice) -> torch.Tensor:
    """Outputs ``part`` along ``dim`` of ``t``; linear as float32 ``a + (b - a) * w1``.

    Separate elementwise ops (no fused lerp), so every voxel is rounded the same way
    whatever the tensor's size and position in a vector register.
    """
    if taps is None:
        return t.narrow(dim, part.start, part.stop - part.start)
    index = [torch.from_numpy(a[part]).to(t.device) for a in taps[:2]]
    if len(taps) == 1:
        return _pick(t, dim, index[0])
    shape = [1] * t.ndim
    shape[dim] = -1
    weight = torch.from_numpy(taps[2][part].astype(np.float32)).to(t.device).view(shape)
    low = _pick(t, dim, index[0]).to(torch.float32)
    high = _pick(t, dim, index[1]).to(torch.float32)
    return high.sub_(low).mul_(weight).add_(low)


def _clip_bounds(
    logits: torch.Tensor, z_axis: int | None, z_taps: _Taps, z_part: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """skimage's ``clip=True`` range, broadcastable to the slab (float32).

    3D: each channel's min/max over the whole input, ``(K, 1, 1, 1)``. With a separate
    axis: each source slice's in-plane min/max, picked like the slices themselves.
    """
    dims = (1, 2, 3) if z_axis is None else tuple(d for d in (1, 2, 3) if d != z_axis + 1)
    low = logits.amin(dim=dims, keepdim=True).to(torch.float32)
    high = logits.amax(dim=dims, keepdim=True).to(torch.float32)
    if z_axis is not None:
        low = _resample_axis(low, z_axis + 1, z_taps, z_part)
        high = _resample_axis(high, z_axis + 1, z_taps, z_part)
    return low, high


def resample_slab(
    logits: torch.Tensor,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    axis: int,
    start: int,
    stop: int,
) -> torch.Tensor:
    """One slab of :func:`~medseg.preprocessing.resample.resample_probabilities`, on device.

    Parameters
    ----------
    logits
        ``(K, X, Y, Z)`` float tensor (float32 or float16) on the preprocessed grid, on
        any device; it is read, never copied whole.
    new_shape
        Spatial shape ``(X', Y', Z')`` of the target grid.
    current_spacing, new_spacing
        Spacing in mm of ``logits`` and of the target grid; they decide the separate
        low-resolution axis (:func:`~medseg.preprocessing.resample.separate_z_axis`).
    axis
        Spatial axis (0, 1 or 2) along which the output is cut into slabs; use the
        separate axis when there is one (each output slice then reads one source slice).
    start, stop
        The slab: output positions ``start:stop`` along ``axis``.

    Returns
    -------
    torch.Tensor
        float32 on ``logits.device``, shaped like ``(K, X', Y', Z')`` except ``stop -
        start`` along ``axis``: ``resample_probabilities(logits.cpu().numpy(), ...)``
        restricted to the slab, up to float32 rounding.
    """
    shape = _validate(logits, 4, new_shape, (current_spacing, new_spacing))
    if not logits.is_floating_point():
        raise GeometryError(f"logits must be a float tensor, got {logits.dtype}")
    if axis not in (0, 1, 2) or not 0 <= start < stop <= shape[axis]:
        raise GeometryError(
            f"slab {start}:{stop} along axis {axis} is not a non-empty part of the target "
            f"shape {shape}; use axis 0, 1 or 2 and 0 <= start < stop <= new_shape[axis]"
        )
    if tuple(logits.shape[1:]) == shape:  # nnU-Net returns the input as is, unclipped
        return logits.narrow(axis + 1, start, stop - start).to(torch.float32, copy=True)
    z_axis = separate_z_axis(current_spacing, new_spacing)
    taps = [_axis_taps(logits.shape[a + 1], shape[a], a == z_axis) for a in range(3)]
    parts = [slice(start, stop) if a == axis else slice(0, shape[a]) for a in range(3)]
    # slab axis first; then shrinking axes before growing ones, the picked axis last
    order = sorted(range(3), key=lambda a: (a != axis, a == z_axis, shape[a] / logits.shape[a + 1]))
    out = logits
    for a in order:
        out = _resample_axis(out, a + 1, taps[a], parts[a])
    z_taps, z_part = (None, None) if z_axis is None else (taps[z_axis], parts[z_axis])
    low, high = _clip_bounds(logits, z_axis, z_taps, z_part)
    return out.to(torch.float32).clamp_(low, high)  # a fresh tensor: some axis changed


def slab_labels(logits: torch.Tensor, *slab) -> torch.Tensor:
    """Labels of one output slab: argmax over classes of :func:`resample_slab` (``slab``:
    its arguments after ``logits``), on device.

    Ties go to the lowest class, as with numpy's argmax (``max(dim=0).indices`` is
    documented so, and is several times faster than ``argmax(dim=0)`` on CPU).

    Returns
    -------
    torch.Tensor
        ``uint8`` on ``logits.device``, the slab's spatial shape; at most 256 classes.
    """
    if logits.ndim == 4 and logits.shape[0] > 256:
        raise GeometryError(f"uint8 labels hold at most 256 classes, got {logits.shape[0]}")
    return resample_slab(logits, *slab).max(dim=0).indices.to(torch.uint8)
