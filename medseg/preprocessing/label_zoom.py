"""Label maps resized as batchgenerators' ``resize_segmentation``; order 1 (nnU-Net's)
computed exactly, but only where it matters.

The rule (see :mod:`medseg.preprocessing.resample`): each label's indicator is
resized linearly (``scipy.ndimage.zoom``, ``mode="nearest"``, clipped to [0, 1]),
the label with the highest score wins, and ties go to the nearest-neighbour label
if it is among the tied ones, else to the smallest. An output voxel whose 2^d
interpolation corners all hold one label L gets L: every other indicator is
exactly 0 there and L's is positive. So the result is the nearest-neighbour
resize everywhere except at voxels whose corners disagree (label boundaries,
typically a few percent of a CT volume). There every label's score is computed
with scipy's own arithmetic (weights from the same formula, products and sums
in the same order, so ties are the same ties) and the rule is applied as is.

Arrays are ``(X, Y, Z)``; with ``stack=True`` axis 0 holds independent 2D label
maps (one resize per slice), as nnU-Net resizes along a separate axis.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from medseg.preprocessing.zoom import AxisPlan, axis_plan


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Order-0 source index per output position ``(n_out,)``, as scipy's zoom rounds."""
    plan = axis_plan(n_in, n_out, 1)
    return np.clip(np.floor(plan.coords + 0.5).astype(np.intp), 0, n_in - 1)


def _block_uniform(seg: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Whether the 2^d block ``seg[i:i+2, ...]`` over ``axes`` (clamped) holds one value."""
    lo, hi = seg, seg
    for a in axes:
        if seg.shape[a] < 2:
            continue
        head = (slice(None),) * a + (slice(0, -1),)
        tail = (slice(None),) * a + (slice(1, None),)
        lo_next, hi_next = lo.copy(), hi.copy()
        np.minimum(lo[head], lo[tail], out=lo_next[head])
        np.maximum(hi[head], hi[tail], out=hi_next[head])
        lo, hi = lo_next, hi_next
    return lo == hi


def _gather(arr: np.ndarray, index: list[np.ndarray | None]) -> np.ndarray:
    """``arr`` sampled at the outer product of per-axis indices (``None``: whole axis)."""
    for a, idx in enumerate(index):
        if idx is not None:
            arr = np.take(arr, idx, axis=a)
    return arr


def _corners(plans: list[AxisPlan | None], points: tuple) -> list[tuple]:
    """Per corner, in scipy's order (last axis fastest): (index tuple, weight) at ``points``."""
    corners = [((), None)]
    for plan, p in zip(plans, points, strict=True):
        if plan is None:  # the stacking axis: no interpolation
            corners = [(idx + (p,), w) for idx, w in corners]
            continue
        corners = [
            (idx + (plan.taps[k][p],), plan.weights[k][p] if w is None else w * plan.weights[k][p])
            for idx, w in corners
            for k in range(2)
        ]
    return corners


def _settle(seg: np.ndarray, plans: list, points: tuple, nearest: np.ndarray) -> np.ndarray:
    """The winning label at ``points`` (per-axis output indices) by the argmax rule."""
    corners = [(seg[idx], w) for idx, w in _corners(plans, points)]
    labels = np.unique(np.concatenate([c for c, _ in corners]))

    def score(label) -> np.ndarray:
        t = np.zeros(nearest.shape, dtype=np.float64)
        for values, w in corners:
            t += np.where(values == label, w, 0.0)
        return np.minimum(t, 1.0)  # resize clips each indicator to its range [0, 1]

    winner = np.full(nearest.shape, labels[0], dtype=seg.dtype)
    best = score(labels[0])
    for label in labels[1:]:
        s = score(label)
        take = (s == best) & (s > 0) & (nearest == label)
        take |= s > best
        winner[take] = label
        np.maximum(best, s, out=best)
    return winner


def _index_dtype(n: int) -> type:
    """Smallest signed integer type that indexes ``n`` labels."""
    return next(t for t in (np.int8, np.int16, np.int32, np.int64) if n <= np.iinfo(t).max)


def _resize_label(seg: np.ndarray, shape: tuple, order: int) -> np.ndarray:
    """Label map of any dimension resized like batchgenerators' ``resize_segmentation``.

    Per-label indicator scores (float64, so exact ties stay exact); highest score
    wins, ties go to the nearest-neighbour label if tied, else the smallest label.
    """
    if seg.size == 0:
        return np.zeros(shape, dtype=seg.dtype)
    if order == 0:
        return _skimage(seg, shape, 0)
    labels = np.unique(seg)
    if len(labels) == 1:
        return np.full(shape, labels[0], dtype=seg.dtype)
    index = np.searchsorted(labels, seg).astype(_index_dtype(len(labels)))
    nearest = _skimage(index, shape, 0)
    del index
    winner = np.zeros(shape, dtype=nearest.dtype)
    best = _skimage((seg == labels[0]).astype(np.float64), shape, order)
    for i in range(1, len(labels)):
        score = _skimage((seg == labels[i]).astype(np.float64), shape, order)
        take = score == best
        take &= score > 0
        take &= nearest == i
        take |= score > best
        np.copyto(winner, i, where=take)
        np.maximum(best, score, out=best)
        del score, take
    return labels[winner]


def _skimage(arr: np.ndarray, shape: tuple, order: int) -> np.ndarray:
    return resize(arr, shape, order, mode="edge", clip=True, anti_aliasing=False)


def resize_label(seg: np.ndarray, shape, order: int, *, stack: bool = False) -> np.ndarray:
    """``resize_segmentation(seg, shape, order)`` of batchgenerators 0.25.5, exactly; with
    ``stack``, one such 2D resize per slice ``seg[i]``. Order 1 takes the fast path."""
    shape = tuple(int(s) for s in shape)
    if seg.size == 0:
        return np.zeros(shape, dtype=seg.dtype)
    if order == 1:
        return resize_label_linear(seg, shape, stack=stack)
    if stack:
        return np.stack([_resize_label(s, shape[1:], order) for s in seg]).astype(seg.dtype)
    return _resize_label(seg, shape, order)


def resize_label_linear(seg: np.ndarray, shape, *, stack: bool = False) -> np.ndarray:
    """``resize_segmentation(seg, shape, order=1)`` of batchgenerators 0.25.5, exactly.

    Parameters
    ----------
    seg
        ``(X, Y, Z)`` integer label map (any values, -1 included).
    shape
        Output shape; with ``stack``, a per-slice 2D resize along axis 0 (``X' == X``).
    """
    shape = tuple(int(s) for s in shape)
    zoomed = range(1, 3) if stack else range(3)
    plans: list[AxisPlan | None] = [None] * 3
    near: list[np.ndarray | None] = [None] * 3
    for a in zoomed:
        plans[a] = axis_plan(seg.shape[a], shape[a], 1)
        near[a] = _nearest(seg.shape[a], shape[a])
    out = _gather(seg, near)
    starts = [None if p is None else p.taps[0] for p in plans]
    mixed = ~_gather(_block_uniform(seg, tuple(zoomed)), starts)
    flat = np.flatnonzero(mixed)
    del mixed
    if flat.size:
        points = np.unravel_index(flat, shape)
        out.reshape(-1)[flat] = _settle(seg, plans, points, out.reshape(-1)[flat])
    return out
