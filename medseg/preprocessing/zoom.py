"""skimage's ``resize`` (spline order 1 or 3, ``mode="edge"``, clipped) as float32, fast and exact.

nnU-Net resamples images with ``skimage.transform.resize``, which calls
``scipy.ndimage.zoom``: for each output voxel scipy sums the ``(order + 1) ** d``
weighted spline coefficients of its neighbourhood in one fixed order, in float64
(64 multiply-adds per voxel in 3D at order 3). Here the same sum is computed
separably, one axis at a time (4 taps per axis, as sparse matrix products). That
differs from scipy's float64 result only by rounding: by less than
:data:`ERROR_ULPS` units of roundoff (2**-53) of the largest coefficient
involved, since the spline weights are non-negative and sum to one. The result
is wanted in float32, so rounding it gives exactly scipy's float32 value unless
it lies within that bound of a float32 rounding boundary. Those few voxels
(about one in 10**5 on CT) are recomputed with ``scipy.ndimage.map_coordinates``,
which runs the same C arithmetic as ``zoom`` at given coordinates. The
coefficients themselves are scipy's (same edge padding, same prefilter calls),
computed a window of rows at a time (:func:`coefficient_rows`: no full-size float64
copy; about 180 MB instead of 800 MB above the input for a 512 x 512 x 300 CT).
So the output is bit-identical to ``resize``'s cast to float32 (see
:func:`coefficient_rows` for the one, vanishingly unlikely, exception).

Conventions: arrays are ``(X, Y, Z)``; with ``stack=True`` the first axis is a
stack of independent 2D images (one ``resize`` call per slice, each clipped to
its own range), as nnU-Net resizes along a separate low-resolution axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates, spline_filter1d
from scipy.sparse import csr_matrix

#: scipy pads by this many voxels (edge mode) before its order > 1 spline prefilter.
PREPAD = 12
#: Bound on |separable - scipy| in units of 2**-53 * max|coefficient| (analysis: < 110).
ERROR_ULPS = 512
#: Size of the float64 blocks worked on at a time.
BLOCK_BYTES = 8 * 1024**2
#: Coefficient rows held at a time by a 3D resize (float64; at least one block's taps).
WINDOW_BYTES = 160 * 1024**2
#: Columns prefiltered along axis 0 at a time (float64, margins included).
CHUNK_BYTES = 16 * 1024**2
#: Extra rows the axis-0 prefilter of a block runs over on each side (see
#: :func:`coefficient_rows`): ``(2 - sqrt(3)) ** 36 < 2**-68``.
MARGIN = 36


@dataclass(frozen=True)
class AxisPlan:
    """Where each output position along one axis samples the (padded) input.

    ``coords`` (n_out,) are scipy's source coordinates (float64, padding included),
    ``taps`` (order + 1, n_out) the clamped input indices and ``weights`` the spline
    weights, computed with scipy's formulas.
    """

    coords: np.ndarray
    taps: np.ndarray
    weights: np.ndarray

    def matrix(self, n_in: int, offset: int = 0) -> csr_matrix:
        """The interpolation as a sparse ``(n_out, n_in)`` matrix; column = tap - offset."""
        n_taps, n_out = self.taps.shape
        return csr_matrix(
            (self.weights.T.ravel(), (self.taps - offset).T.ravel(), np.arange(n_out + 1) * n_taps),
            shape=(n_out, n_in),
        )


def axis_plan(n_in: int, n_out: int, order: int, pad: int = 0) -> AxisPlan:
    """scipy ``zoom(..., grid_mode=True, mode="nearest")`` sampling along one axis."""
    zoom = float(n_in) / n_out
    cc = np.arange(n_out, dtype=np.float64)
    cc += 0.5
    cc *= zoom
    cc -= 0.5
    cc += float(pad)
    floor = np.floor(cc)
    x = cc - floor
    if order == 1:
        first = 1.0 - x
        weights = [first, 1.0 - first]
    elif order == 3:
        z = 1.0 - x
        w1 = (x * x * (x - 2.0) * 3.0 + 4.0) / 6.0
        w2 = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0
        w0 = z * z * z / 6.0
        weights = [w0, w1, w2, ((1.0 - w0) - w1) - w2]
    else:
        raise ValueError(f"spline order {order} has no fast path (1 or 3)")
    start = floor.astype(np.intp) - order // 2
    taps = np.clip(start[None] + np.arange(order + 1)[:, None], 0, n_in + 2 * pad - 1)
    return AxisPlan(cc, taps, np.stack(weights))


def _pad_edge(arr: np.ndarray, pad: int, axes: tuple[int, ...]) -> np.ndarray:
    """float64 copy of ``arr`` padded by ``pad`` along ``axes`` with edge values."""
    shape = [s + 2 * pad if a in axes else s for a, s in enumerate(arr.shape)]
    out = np.empty(shape, dtype=np.float64)
    inner = tuple(
        slice(pad, pad + s) if a in axes else slice(None) for a, s in enumerate(arr.shape)
    )
    out[inner] = arr
    for a in axes:  # axis by axis, as numpy.pad does, so corners take the corner value
        lead = (slice(None),) * a
        out[lead + (slice(0, pad),)] = out[lead + (slice(pad, pad + 1),)]
        end = pad + arr.shape[a]
        out[lead + (slice(end, None),)] = out[lead + (slice(end - 1, end),)]
    return out


def coefficients(arr: np.ndarray, order: int, axes: tuple[int, ...]) -> np.ndarray:
    """scipy's spline coefficients of ``arr`` over ``axes``, C-ordered.

    Order 3: edge padding by :data:`PREPAD` and the order-3 prefilter along ``axes`` in
    increasing order (float64), bit-identical to what ``zoom`` computes. Order 1: the
    values themselves (scipy reads them as they are, and so do the sparse products).
    """
    if order == 1:
        return np.ascontiguousarray(arr)
    coef = _pad_edge(arr, PREPAD, axes)
    for a in axes:
        spline_filter1d(coef, order, a, output=coef, mode="nearest")
    return coef


def _bound(coef: np.ndarray, floor: float = 0.0) -> float:
    """Largest |separable - scipy| for values interpolated from ``coef``; ``floor``: a
    magnitude the coefficients involved may reach elsewhere (see :func:`coefficient_rows`)."""
    return ERROR_ULPS * 2.0**-53 * max(float(coef.max()), -float(coef.min()), floor, 0.0)


def _unsafe(t: np.ndarray, bound: float) -> np.ndarray:
    """Flat indices where a value within ``bound`` of ``t`` (float64) may round to
    another float32 than ``t`` does.

    Rounding is monotonic, so ``t - bound`` and ``t + bound`` rounding to the same
    float32 as ``t`` proves every value between them does (the roundoff of these two
    sums is far inside the margin of :data:`ERROR_ULPS`).
    """
    r = t.astype(np.float32)
    edge = t - bound
    unsafe = edge.astype(np.float32) != r
    np.add(t, bound, out=edge)
    unsafe |= edge.astype(np.float32) != r
    return np.flatnonzero(unsafe)


def _store(out: np.ndarray, t: np.ndarray, coef: np.ndarray, coords: list, bound: float, order):
    """float32 of ``t`` into ``out`` (same shape, contiguous); voxels whose rounding is in
    doubt are recomputed from ``coef`` at ``coords`` (per axis of ``t``) with scipy."""
    out[...] = t
    bad = _unsafe(t, bound)
    if bad.size:
        idx = np.unravel_index(bad, t.shape)
        points = np.stack([c[i] for c, i in zip(coords, idx, strict=True)])
        fixed = map_coordinates(coef, points, order=order, mode="nearest", prefilter=False)
        out.reshape(-1)[bad] = fixed


def _inplane(coef: np.ndarray, wy: csr_matrix, wx: csr_matrix, out: np.ndarray) -> None:
    """Interpolate the 2D coefficients ``coef`` with ``wy`` along Y and ``wx`` along X."""
    along_y = wy @ coef
    out[...] = (wx @ np.ascontiguousarray(along_y.T)).T


def _rows_per_block(row_bytes: int) -> int:
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def coefficient_rows(arr: np.ndarray, order: int, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` (axis 0, padding included) of scipy's coefficients of ``arr``.

    Order 1: the values themselves. Order 3: the prefilter along axis 0 runs over rows
    ``lo - MARGIN .. hi + MARGIN`` only (a column chunk at a time), then along axes 1
    and 2 over these rows, whole, as scipy does. The prefilter's recursions forget
    where they start as ``|z| ** n`` (``z = sqrt(3) - 2``): after :data:`MARGIN` rows
    a wrong start has shrunk below ``2**-65`` of ``max|arr|`` (scipy's own start is
    used where the block reaches an end of the volume). That is far inside the bound
    the separable sums allow for (``_bound`` with ``max|arr|`` as floor: the
    coefficients' maximum is at least ``max|arr|``), so the float32 results stay
    scipy's; only a voxel recomputed because its rounding is in doubt could differ,
    if scipy's value lay within ``2**-65 max|arr|`` of a float32 rounding boundary.
    """
    if order == 1:
        return arr[lo:hi]
    n0, n1, n2 = arr.shape
    padded = (n0 + 2 * PREPAD, n1 + 2 * PREPAD, n2 + 2 * PREPAD)
    f_lo, f_hi = max(0, lo - MARGIN), min(padded[0], hi + MARGIN)
    rows = np.clip(np.arange(f_lo, f_hi) - PREPAD, 0, n0 - 1)
    out = np.empty((hi - lo, padded[1], padded[2]), dtype=np.float64)
    chunk = max(1, CHUNK_BYTES // (8 * (f_hi - f_lo) * padded[2]))
    for j0 in range(0, padded[1], chunk):
        j1 = min(j0 + chunk, padded[1])
        y0 = min(max(j0 - PREPAD, 0), n1 - 1)  # the source columns they clamp to
        y1 = min(max(j1 - PREPAD, y0 + 1), n1)
        block = _pad_edge(arr[rows[0] : rows[-1] + 1, y0:y1], PREPAD, (2,))
        block = _rows_and_columns(block, rows - rows[0], np.arange(j0, j1) - PREPAD - y0)
        spline_filter1d(block, order, 0, output=block, mode="nearest")
        out[:, j0:j1] = block[lo - f_lo : hi - f_lo]
    for axis in (1, 2):
        spline_filter1d(out, order, axis, output=out, mode="nearest")
    return out


def _rows_and_columns(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``block[rows][:, cols]`` with indices clamped to ``block`` (edge padding); no copy
    beyond the one needed when the indices repeat an edge."""
    rows = np.clip(rows, 0, block.shape[0] - 1)
    cols = np.clip(cols, 0, block.shape[1] - 1)
    if np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
        block = block[rows[0] : rows[0] + rows.size]
    else:
        block = block[rows]
    if np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        return np.ascontiguousarray(block[:, cols[0] : cols[0] + cols.size])
    return np.ascontiguousarray(block[:, cols])


def _windows(taps: np.ndarray, coef_row_bytes: int):
    """``(output rows, (lo, hi))``: consecutive output rows (axis 0) and the coefficient
    rows ``lo:hi`` their taps read, about :data:`WINDOW_BYTES` of them (at least the
    taps of one output row)."""
    n_out, n_rows = taps.shape[1], max(1, WINDOW_BYTES // coef_row_bytes)
    first, last = taps.min(axis=0), taps.max(axis=0)
    start = 0
    while start < n_out:
        lo = int(first[start])
        stop = start + int(
            np.searchsorted(last[start:], lo + max(n_rows, taps.shape[0]) - 1, "right")
        )
        stop = max(stop, start + 1)
        yield slice(start, stop), (lo, int(last[start:stop].max()) + 1)
        start = stop


def _zoom_volume(arr: np.ndarray, out: np.ndarray, order: int) -> None:
    """One 3D resize of ``arr`` into float32 ``out`` (unclipped).

    Window by window of coefficient rows along axis 0 (:func:`coefficient_rows`: no
    full-size float64 array), see :func:`_zoom_window`.
    """
    pad = PREPAD if order > 1 else 0
    padded = [n + 2 * pad for n in arr.shape]
    plans = [axis_plan(n, m, order, pad) for n, m in zip(arr.shape, out.shape, strict=True)]
    wy, wx = (p.matrix(n) for p, n in zip(plans[1:], padded[1:], strict=True))
    floor = max(float(arr.max()), -float(arr.min()))
    for sel, (lo, hi) in _windows(plans[0].taps, 8 * padded[1] * padded[2]):
        # one call per window: its coefficient rows are freed before the next window's
        coef = coefficient_rows(arr, order, lo, hi)
        _zoom_window(coef, lo, out, sel, plans, (wy, wx), _bound(coef, floor), order)
        del coef


def _zoom_window(coef, lo: int, out, sel: slice, plans: list, inplane, bound: float, order):
    """Output rows ``sel`` from the coefficient rows ``coef`` (rows ``lo:``): each row is
    interpolated in-plane once, into a small ring, and each block of output rows is
    then interpolated along axis 0 from that ring; doubtful voxels are recomputed from
    ``coef``."""
    taps, coords0 = plans[0].taps[:, sel] - lo, plans[0].coords[sel] - lo
    weights = plans[0].weights[:, sel]
    step = _rows_per_block(8 * out[0].size)
    n = taps.shape[1]
    span = max(int(np.ptp(taps[:, o : o + step])) for o in range(0, n, step)) + 1
    ring = np.empty((span, *out.shape[1:]), dtype=np.float64)
    done = int(taps.min()) - 1  # last coefficient row in the ring
    for o0 in range(0, n, step):
        block = slice(o0, min(o0 + step, n))
        for row in range(max(done + 1, int(taps[:, block].min())), int(taps[:, block].max()) + 1):
            _inplane(coef[row], *inplane, ring[row % span])
            done = row
        axis0 = AxisPlan(coords0[block], taps[:, block] % span, weights[:, block])
        rows = slice(sel.start + o0, sel.start + block.stop)
        t = (axis0.matrix(span) @ ring.reshape(span, -1)).reshape(out[rows].shape)
        _store(out[rows], t, coef, [coords0[block], plans[1].coords, plans[2].coords], bound, order)


def _zoom_stack(arr: np.ndarray, out: np.ndarray, order: int) -> None:
    """A 2D resize of every slice ``arr[i]`` into float32 ``out[i]`` (unclipped)."""
    pad = PREPAD if order > 1 else 0
    shape_in = [n + 2 * pad for n in arr.shape[1:]]
    plans = [axis_plan(n, m, order, pad) for n, m in zip(arr.shape[1:], out.shape[1:], strict=True)]
    wy, wx = (p.matrix(n) for p, n in zip(plans, shape_in, strict=True))
    coords = [plans[0].coords, plans[1].coords]
    step = _rows_per_block(8 * int(np.prod(shape_in)))
    for s0 in range(0, arr.shape[0], step):
        sel = range(s0, min(s0 + step, arr.shape[0]))
        coef = coefficients(arr[sel.start : sel.stop], order, (1, 2))
        t = np.empty(out.shape[1:], dtype=np.float64)
        for i, s in enumerate(sel):
            _inplane(coef[i], wy, wx, t)
            _store(out[s], t, coef[i], coords, _bound(coef[i]), order)


def resize_exact(arr: np.ndarray, shape, order: int, *, stack: bool = False) -> np.ndarray:
    """``skimage.transform.resize(arr, shape, order, mode="edge", clip=True,
    anti_aliasing=False)`` as float32, bit-identical, for ``order`` 1 or 3.

    Parameters
    ----------
    arr
        ``(X, Y, Z)`` float array (skimage would rescale integers; medseg passes
        floats); with ``stack=True`` a stack of 2D images along axis 0, each
        resized (and clipped to its own range) on its own.
    shape
        Output shape ``(X', Y', Z')``; with ``stack``, ``X'`` must be ``X``.
    order
        Spline order, 1 or 3.

    Returns
    -------
    numpy.ndarray
        float32, C-ordered, ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    out = np.empty(shape, dtype=np.float32)
    if stack:
        if shape[1:] == arr.shape[1:]:  # resize returns such slices unchanged
            out[...] = arr
            return out
        _zoom_stack(arr, out, order)
        lo = arr.min(axis=(1, 2)).astype(np.float32)[:, None, None]
        hi = arr.max(axis=(1, 2)).astype(np.float32)[:, None, None]
    else:
        _zoom_volume(arr, out, order)
        lo, hi = np.float32(arr.min()), np.float32(arr.max())
    np.clip(out, lo, hi, out=out)
    return out
