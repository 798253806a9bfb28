"""From logits on the preprocessed grid to labels on the original grid, in bounded memory.

nnU-Net (and medseg before) resampled all K class logits to the whole original grid
in float32, then took softmax and argmax: K full-size float32 volumes at once, tens
of gigabytes for a hospital CT with many classes. Here the original grid is cut
into slabs along one axis (the separate low-resolution axis if any); for each slab
every member's logits are resampled, turned into labels, and, when asked,
into probabilities written to a chunked file. Peak memory is the uint8 label volume
plus one slab of K classes: it grows with voxels, not voxels x classes.

Resampling: logits held as a numpy array go through
:func:`~medseg.inference.slab_resample.resample_slab` (scipy, bit-identical to
nnU-Net's whole-volume export resampling); logits held as a torch tensor through
:func:`~medseg.inference.resample_torch.resample_slab` on their device (the GPU, or the
CPU where it is 2.5x faster than scipy), equal to float32 rounding.

Labels: one member (one configuration; its folds were averaged on the preprocessed
grid) takes the argmax of its resampled logits (softmax does not change it);
several members (an ensemble) average their softmax probabilities first. Outside
the crop to non-zero, background. The slab thickness changes nothing but memory:
the tests check that any thickness gives the labels of one slab holding everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.core.errors import RecordError
from medseg.core.volume import Kind, Volume
from medseg.geometry.orientation import OrientationRecord
from medseg.inference.slab_resample import resample_slab, slab_axis
from medseg.preprocessing.grid import from_processing, reverse_spatial

#: Default memory for one slab's class values (all members, temporaries included).
DEFAULT_SLAB_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MemberLogits:
    """One configuration's averaged logits ``(K, ...)`` on its preprocessed grid (a float32
    numpy array, or a torch tensor on its device; see the module docstring), the case
    record that maps them back, and whether they were blended in float16 (nnU-Net's
    blending: resampled values are rounded to float16, as nnU-Net's are)."""

    logits: np.ndarray
    record: dict
    half: bool = False


@dataclass(frozen=True)
class _Grid:
    """The original grid as the records describe it, on the transposed processing grid."""

    full: tuple[int, ...]  # processing grid after the transpose (before the crop)
    box: tuple[tuple[int, int], ...]  # the crop to non-zero
    forward: tuple[int, ...]  # the transpose
    orientation: OrientationRecord

    def original_axis(self, axis: int) -> tuple[int, bool]:
        """The original array axis of transposed axis ``axis``, and whether it is reversed."""
        canonical = 2 - self.forward[axis]  # the processing grid is canonical, reversed
        return self.orientation.axes[canonical], self.orientation.flips[canonical]

    def to_original_axes(self, block: np.ndarray) -> np.ndarray:
        """A block ``(..., a, b, c)`` in transposed axis order, in the original axis order
        and direction (the undoing of transpose and reorientation, as
        :func:`~medseg.preprocessing.grid.from_processing` does it)."""
        lead = block.ndim - 3
        back = np.argsort(self.forward)
        arr = reverse_spatial(np.transpose(block, [*range(lead), *(lead + int(b) for b in back)]))
        flips = tuple(lead + i for i, f in enumerate(self.orientation.flips) if f)
        arr = np.flip(arr, flips) if flips else arr
        inverse = np.argsort(self.orientation.axes)
        return np.transpose(arr, [*range(lead), *(lead + int(a) for a in inverse)])


def _steps(record: dict) -> dict:
    return {entry["step"]: entry for entry in record["steps"]}


def _grid(members: Sequence[MemberLogits]) -> _Grid:
    """The shared original grid of ``members`` (one image: same orientation, transpose, crop)."""
    grids = set()
    for member in members:
        steps = _steps(member.record)
        grids.add(
            (
                tuple(steps["crop"]["shape_before"]),
                tuple(tuple(b) for b in steps["crop"]["box"]),
                tuple(steps["transpose"]["axes"]),
                OrientationRecord.from_dict(steps["processing_grid"]["orientation"]),
            )
        )
    if len(grids) != 1:
        raise RecordError(
            "the configurations' case records disagree on the original grid (orientation, "
            "transpose or crop); they must come from one image and one plans file"
        )
    return _Grid(*grids.pop())


def _softmax(values):
    """Softmax over axis 0 per voxel (the same values for any slab): numpy in place, or
    torch on the values' device."""
    if not isinstance(values, np.ndarray):
        import torch

        return torch.softmax(values, dim=0)
    values -= values.max(axis=0, keepdims=True)
    np.exp(values, out=values)
    values /= values.sum(axis=0, keepdims=True)
    return values


def _member_slab(member: MemberLogits, axis: int, start: int, stop: int):
    """``member``'s logits resampled onto the cropped original grid, slab ``[start, stop)``:
    numpy (bit-identical to the whole volume) or, for logits held as a torch tensor (on
    the GPU), torch on their device (equal to float32 rounding)."""
    entry = _steps(member.record)["resample"]
    args = (entry["shape_before"], entry["spacing_after"], entry["spacing_before"], axis)
    if isinstance(member.logits, np.ndarray):
        values = resample_slab(member.logits, *args, start, stop)
        return values.astype(np.float16).astype(np.float32) if member.half else values
    from medseg.inference.resample_torch import resample_slab as resample_on_device

    values = resample_on_device(member.logits, *args, start, stop)
    return values.half().float() if member.half else values


def _scores(members: Sequence[MemberLogits], axis: int, start: int, stop: int, probs: bool):
    """Per-class scores of the cropped slab whose argmax is the label: one member's
    logits, or (several members, or ``probs``) the mean of their probabilities."""
    if len(members) == 1 and not probs:
        return _member_slab(members[0], axis, start, stop)
    total = None
    for member in members:  # summed in member order, then divided, as before
        p = _softmax(_member_slab(member, axis, start, stop))
        total = p if total is None else total + p
    if len(members) > 1:
        total /= len(members)
    return total


def _labels_and_values(scores) -> tuple[np.ndarray, object]:
    """The argmax over classes (ties: the lowest class) as a host array, and the scores;
    from a device tensor only the labels travel (uint8), the values stay there."""
    if isinstance(scores, np.ndarray):
        return np.argmax(scores, axis=0), scores
    import torch

    dtype = torch.uint8 if scores.shape[0] < 256 else torch.int16
    return scores.max(dim=0).indices.to(dtype).cpu().numpy(), scores


def _host(values) -> np.ndarray:
    """``values`` as a host numpy array."""
    return values if isinstance(values, np.ndarray) else values.float().cpu().numpy()


def slab_thickness(
    grid_plane: int, n_classes: int, n_members: int, probabilities: bool, slab_bytes: int
) -> int:
    """Slices per slab so that one slab's class values stay within ``slab_bytes``.

    Per slice of ``grid_plane`` voxels: each member's resampled values and the sum
    (float32, K classes), the probability block when written, the int64 argmax.
    """
    per_voxel = 4 * n_classes * (n_members + 1 + (2 if probabilities else 0)) + 9
    return max(1, int(slab_bytes // max(1, per_voxel * grid_plane)))


def _slab_ranges(grid: _Grid, axis: int, thickness: int):
    """``(t0, t1)`` on the transposed grid for consecutive slabs of the ORIGINAL axis
    (so that file chunks of ``thickness`` along it are written whole, once)."""
    n = grid.full[axis]
    _, reversed_ = grid.original_axis(axis)
    for o0 in range(0, n, thickness):
        o1 = min(o0 + thickness, n)
        yield (n - o1, n - o0) if reversed_ else (o0, o1)


def _block(members, grid: _Grid, axis: int, t0: int, t1: int, n_classes: int, probs: bool):
    """Labels ``(...)`` and (with ``probs``) probabilities ``(K, ...)`` of the slab
    ``[t0, t1)`` of the transposed grid, background outside the crop."""
    shape = list(grid.full)
    shape[axis] = t1 - t0
    label = np.zeros(shape, dtype=np.uint8 if n_classes < 256 else np.int16)
    block = None
    if probs:
        block = np.zeros((n_classes, *shape), dtype=np.float32)
        block[0] = 1.0
    lo, hi = grid.box[axis]
    g0, g1 = max(t0, lo) - lo, min(t1, hi) - lo
    if g1 <= g0:
        return label, block
    inner = [slice(b0, b1) for b0, b1 in grid.box]
    inner[axis] = slice(g0 + lo - t0, g1 + lo - t0)
    labels, scores = _labels_and_values(_scores(members, axis, g0, g1, probs))
    label[tuple(inner)] = labels
    if probs:
        block[(slice(None), *inner)] = _host(scores)
    return label, block


def reconstruct(
    members: Sequence[MemberLogits],
    *,
    slab_bytes: int = DEFAULT_SLAB_BYTES,
    probabilities: Path | None = None,
) -> Volume:
    """The label map on the original grid of ``members`` (one or an ensemble), slab by slab.

    With ``probabilities``, the class probabilities ``(K, X, Y, Z)`` are also written
    there (float16 ``.b2nd``, atomically), one slab at a time. Returns a label
    :class:`Volume` with the original shape and affine.
    """
    grid = _grid(members)
    n_classes = int(members[0].logits.shape[0])
    first = _steps(members[0].record)["resample"]
    axis = slab_axis(first["spacing_after"], first["spacing_before"])
    plane = int(np.prod(grid.full)) // grid.full[axis]
    thickness = slab_thickness(
        plane, n_classes, len(members), probabilities is not None, slab_bytes
    )
    label = np.zeros(grid.full, dtype=np.uint8 if n_classes < 256 else np.int16)
    ranges = list(_slab_ranges(grid, axis, thickness))
    if probabilities is None:
        for t0, t1 in ranges:
            label[(slice(None),) * axis + (slice(t0, t1),)] = _block(
                members, grid, axis, t0, t1, n_classes, False
            )[0]
    else:
        _with_probabilities(members, grid, axis, ranges, label, probabilities, thickness)
    back = np.transpose(label, np.argsort(grid.forward))
    return from_processing(back, grid.orientation, Kind.LABEL)


def _with_probabilities(members, grid: _Grid, axis, ranges, label, path: Path, thickness):
    """:func:`reconstruct`'s loop when probabilities are written too."""
    from medseg.io.probabilities import probability_writer

    n_classes = int(members[0].logits.shape[0])
    original, _ = grid.original_axis(axis)
    shape = grid.orientation.original_shape
    chunks = [1, *shape]
    chunks[1 + original] = thickness
    affine = np.array(grid.orientation.original_affine)
    with probability_writer(path, (n_classes, *shape), affine, chunks) as writer:
        for t0, t1 in ranges:
            slab_label, block = _block(members, grid, axis, t0, t1, n_classes, True)
            label[(slice(None),) * axis + (slice(t0, t1),)] = slab_label
            region = [slice(None)] * 3
            n, (_, reversed_) = grid.full[axis], grid.original_axis(axis)
            region[original] = slice(n - t1, n - t0) if reversed_ else slice(t0, t1)
            writer.write(tuple(region), grid.to_original_axes(block))
