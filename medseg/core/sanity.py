"""Sanity checks of an image volume before it is trusted: pure functions, no I/O.

A :class:`Finding` is something wrong (``refuse=True``: the input must not be
used) or doubtful (a warning to record beside the result) about one input.
``medseg check`` reports them for training data, and the prediction gate
(:mod:`medseg.inference.gate`) for every new scan, so both say the same thing
about the same image.

What an image is refused for here:

* non-finite voxels (NaN or infinity): a network's output on them is undefined;
* no intensity variation: one value in (almost) every voxel of a channel (all
  zero, constant, or a blank image with a few stray voxels);
* a single slice: an axis one voxel long is not a 3D volume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medseg.core.volume import Volume

#: A channel is blank when at least this fraction of its voxels hold one value.
BLANK_FRACTION = 0.99
#: Voxels looked at (evenly strided) to find the most common value of a channel.
SAMPLE_VOXELS = 1_000_000


@dataclass(frozen=True)
class Finding:
    """One problem (``refuse``) or warning about an input, with a message for people.

    ``code`` is a stable identifier (e.g. ``"non_finite"``) for records and tests.
    """

    code: str
    message: str
    refuse: bool = True

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "refuse": self.refuse}


def refusals(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that stop an input from being used."""
    return [f for f in findings if f.refuse]


def warnings_of(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that are recorded but do not stop the input."""
    return [f for f in findings if not f.refuse]


def _channel(index: int, n_channels: int) -> str:
    return f"channel {index}" if n_channels > 1 else "the image"


def _most_common_fraction(values: np.ndarray) -> tuple[float, float]:
    """The most common value of a (sampled) 1D array and the fraction of voxels holding it."""
    unique, counts = np.unique(values, return_counts=True)
    top = int(np.argmax(counts))
    return float(unique[top]), float(counts[top]) / values.size


def channel_findings(array: np.ndarray, name: str) -> list[Finding]:
    """Non-finite values and missing intensity variation in one channel ``(X, Y, Z)``."""
    if array.size == 0:
        return [Finding("empty", f"{name} holds no voxels")]
    lo, hi = array.min(), array.max()  # NaN propagates into min/max; infinities show there
    if array.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        return [
            Finding(
                "non_finite",
                f"{name} holds {bad} NaN or infinite voxel(s) of {array.size}; a segmentation "
                "of it would be meaningless. Replace them with valid intensities (or re-export "
                "the scan).",
            )
        ]
    if lo == hi:
        return [
            Finding(
                "blank",
                f"{name} holds one value ({float(lo):g}) in all {array.size} voxels: a blank "
                "image, nothing to segment. Check that the right file was exported.",
            )
        ]
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE_VOXELS)]
    value, fraction = _most_common_fraction(sample)
    if fraction >= BLANK_FRACTION:
        return [
            Finding(
                "blank",
                f"{name} is almost blank: {100 * fraction:.1f}% of its voxels hold the same "
                f"value ({value:g}), nothing to segment. Check that the right file was "
                "exported.",
            )
        ]
    return []


def shape_findings(shape: tuple[int, ...]) -> list[Finding]:
    """A spatial shape ``(X, Y, Z)`` with an axis one voxel long is a slice, not a volume."""
    flat = [axis for axis, n in enumerate(shape) if n < 2]
    if not flat:
        return []
    return [
        Finding(
            "single_slice",
            f"shape {' x '.join(map(str, shape))} is a single slice (axis {flat[0]} is one voxel "
            "long), not a 3D volume; medseg segments 3D volumes. Give the whole series or "
            "volume.",
        )
    ]


def image_findings(image: Volume) -> list[Finding]:
    """Every problem of an image volume ``(C, X, Y, Z)`` that makes it unusable."""
    found = shape_findings(image.spatial_shape)
    for c in range(image.n_channels):
        found += channel_findings(image.array[c], _channel(c, image.n_channels))
    return found
