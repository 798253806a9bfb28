"""Where training patches are read: medseg's window rule is nnU-Net's ``get_bbox``.

nnU-Net v2's data loader (``nnUNetDataLoader.get_bbox``) decides how far a training
patch may stick out of its case and where a foreground-forced patch sits. medseg
draws its own random numbers, so the check is on the rule: for every case shape,
patch and margin, the range random starts are drawn from, and the start around a
given foreground voxel, are nnU-Net's.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from medseg.training.data import _window


class _Recorder:
    """Stands in for a random generator: returns the low end, records each range."""

    def __init__(self):
        self.ranges = []

    def integers(self, lo, hi_exclusive):  # numpy Generator.integers
        self.ranges.append((int(lo), int(hi_exclusive)))
        return lo

    def randint(self, lo, hi_exclusive):  # numpy's global randint, as nnU-Net calls it
        return self.integers(lo, hi_exclusive)


def _nnunet_bbox(shape, read, final, voxel=None):
    loader = SimpleNamespace(
        need_to_pad=np.array(read) - np.array(final),
        patch_size=list(read),
        has_ignore=False,
        annotated_classes_key=(-1, 0, 1),
    )
    recorder = _Recorder()
    force = voxel is not None
    locations = {1: np.array([[0, *voxel]])} if force else None
    saved = np.random.randint
    np.random.randint = recorder.randint
    try:
        starts, _ = nnUNetDataLoader.get_bbox(loader, np.array(shape), force, locations)
    finally:
        np.random.randint = saved
    return [int(s) for s in starts], recorder.ranges


SHAPES = [(36, 51, 35), (20, 80, 64), (90, 90, 90), (41, 56, 40), (7, 130, 3)]
PATCHES = [((73, 80, 64), (40, 56, 40)), ((40, 56, 40), (40, 56, 40)), ((51, 51, 51), (48, 48, 48))]


@pytest.mark.parametrize(("shape", "patches"), list(itertools.product(SHAPES, PATCHES)))
def test_window_ranges_and_foreground_starts_are_nnunets(shape, patches):
    read, final = patches
    margin = [r - f for r, f in zip(read, final, strict=True)]
    _, theirs = _nnunet_bbox(shape, read, final)
    ours = _Recorder()
    _window(shape, read, ours, margin=margin)
    assert ours.ranges == theirs
    rng = np.random.default_rng(0)
    for _ in range(20):
        voxel = [int(rng.integers(n)) for n in shape]
        expected, _ = _nnunet_bbox(shape, read, final, voxel)
        assert _window(shape, read, rng, centre=voxel, margin=margin) == expected
