"""Slab-wise torch resampling of logits against the numpy path (nnU-Net's export rules).

Reference: :func:`medseg.preprocessing.resample.resample_probabilities` (itself tested
for parity with nnU-Net). Values agree to float32 rounding, labels (argmax) agree, and
slabs concatenate to exactly the one-slab result.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from medseg.core.errors import GeometryError
from medseg.inference.resample_torch import _linear_taps, resample_slab, slab_labels
from medseg.preprocessing.resample import (
    compute_new_shape,
    resample_probabilities,
    separate_z_axis,
)

TOL = 1e-5  # absolute, on logits of magnitude ~10
LABEL_AGREEMENT = 0.9999

# (input shape, current spacing, new spacing, target shape or None for compute_new_shape)
ISOTROPIC = [
    ((20, 23, 17), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (41, 30, 33)),  # upsampling
    ((20, 23, 17), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (30, 15, 12)),  # up and down
    ((20, 23, 17), (1.0, 1.0, 1.0), (1.7, 1.3, 1.9), None),  # downsampling, odd factors
    ((12, 30, 30), (2.5, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # ratio 2.5: still 3D
]
SEPARATE = [
    ((10, 24, 18), (3.0, 0.8, 0.8), (1.0, 0.8, 0.8), None),  # axis 0, z only
    ((10, 24, 18), (3.0, 0.8, 0.8), (1.0, 0.6, 1.1), None),  # axis 0, in-plane too
    ((24, 10, 18), (0.8, 3.0, 0.8), (0.5, 1.3, 1.1), None),  # axis 1
    ((24, 10, 18), (0.8, 3.0, 0.8), (0.5, 4.0, 1.0), None),  # axis 1, z downsampled
    ((24, 18, 10), (0.8, 0.8, 5.0), (1.0, 0.4, 2.5), None),  # axis 2
    ((16, 16, 16), (1.0, 1.0, 1.0), (1.0, 1.0, 4.0), None),  # axis 2 of the new spacing
]
UNCHANGED = [
    ((10, 24, 18), (3.0, 0.8, 0.8), (3.0, 0.8, 0.8), None),
    ((20, 23, 17), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),
]
CASES = ISOTROPIC + SEPARATE + UNCHANGED


def _target(case: tuple) -> tuple[int, ...]:
    shape, current, new, target = case
    return target if target is not None else compute_new_shape(shape, current, new)


def _slab_axis(case: tuple) -> int:
    """The caller's choice: the separate axis when there is one, else axis 0."""
    axis = separate_z_axis(case[1], case[2])
    return 0 if axis is None else axis


def _smooth_logits(k: int, shape: tuple, seed: int, scale: float = 10.0) -> np.ndarray:
    """``(k, *shape)`` float32 logits of magnitude ~``scale``: smooth blobs plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(k, 4, 4, 4)) * scale
    smooth = np.stack([zoom(c, [s / 4 for s in shape], order=3) for c in coarse])
    return (smooth + rng.normal(size=(k, *shape))).astype(np.float32)


def _whole(logits: torch.Tensor, case: tuple, axis: int) -> torch.Tensor:
    target = _target(case)
    return resample_slab(logits, target, case[1], case[2], axis, 0, target[axis])


def _cuts(n: int) -> list[int]:
    """Slab boundaries with 1-slice slabs at both borders and inside, and uneven ones."""
    inner = [c for c in (1, 2, 3, n // 3, n // 3 + 1, n - 2, n - 1) if 0 < c < n]
    return sorted({0, n, *inner})


def test_linear_taps_match_scipy_zoom_exactly():
    rng = np.random.default_rng(0)
    for n_in, n_out in [(7, 20), (20, 7), (23, 33), (33, 23), (1, 4), (4, 1), (120, 512)]:
        x = rng.normal(size=n_in)
        low, high, weight = _linear_taps(n_in, n_out)
        ref = zoom(x, n_out / n_in, order=1, mode="nearest", grid_mode=True)
        np.testing.assert_array_equal(x[low] * (1.0 - weight) + x[high] * weight, ref)


def test_cases_take_the_intended_path():
    assert all(separate_z_axis(c[1], c[2]) is None for c in ISOTROPIC)
    assert [separate_z_axis(c[1], c[2]) for c in SEPARATE] == [0, 0, 1, 1, 2, 2]
    assert all(_target(c) == c[0] for c in UNCHANGED)


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("case", CASES)
def test_matches_resample_probabilities(case, k):
    x = _smooth_logits(k, case[0], seed=k)
    ref = resample_probabilities(x, _target(case), case[1], case[2])
    for axis in range(3):
        got = _whole(torch.from_numpy(x), case, axis)
        assert got.dtype == torch.float32
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", CASES)
def test_labels_match_argmax_of_reference(case):
    x = _smooth_logits(20, case[0], seed=1)
    target = _target(case)
    ref = resample_probabilities(x, target, case[1], case[2]).argmax(axis=0)
    axis = _slab_axis(case)
    got = slab_labels(torch.from_numpy(x), target, case[1], case[2], axis, 0, target[axis])
    assert got.dtype == torch.uint8
    assert np.mean(got.numpy() == ref) >= LABEL_AGREEMENT


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("case", CASES)
def test_slabs_concatenate_to_the_whole_exactly(case, k):
    logits = torch.from_numpy(_smooth_logits(k, case[0], seed=2))
    target = _target(case)
    for axis in sorted({_slab_axis(case), 0, 2}):
        whole = _whole(logits, case, axis)
        cuts = _cuts(target[axis])
        slabs = [
            resample_slab(logits, target, case[1], case[2], axis, a, b)
            for a, b in itertools.pairwise(cuts)
        ]
        assert torch.equal(torch.cat(slabs, dim=axis + 1), whole)
        labels = [
            slab_labels(logits, target, case[1], case[2], axis, a, b)
            for a, b in itertools.pairwise(cuts)
        ]
        assert torch.equal(torch.cat(labels, dim=axis), whole.argmax(0).to(torch.uint8))


def test_unchanged_shape_returns_the_input_values():
    x = torch.from_numpy(_smooth_logits(3, (10, 24, 18), seed=3))
    case = UNCHANGED[0]
    assert torch.equal(_whole(x, case, 0), x)
    assert torch.equal(resample_slab(x, x.shape[1:], case[1], case[2], 1, 5, 9), x[:, :, 5:9])


@pytest.mark.parametrize("case", [ISOTROPIC[1], SEPARATE[1], SEPARATE[4]])
def test_float16_input(case):
    x = _smooth_logits(4, case[0], seed=4).astype(np.float16)
    ref = resample_probabilities(x, _target(case), case[1], case[2])
    axis = _slab_axis(case)
    got = _whole(torch.from_numpy(x), case, axis)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


def test_label_ties_go_to_the_lowest_class():
    x = torch.zeros(4, 3, 3, 3)
    x[1:3, :, :, :2] = 5.0  # classes 1 and 2 tie on top; elsewhere all four tie
    labels = slab_labels(x, (5, 6, 4), (1.0,) * 3, (1.0,) * 3, 0, 0, 5)
    ref = resample_probabilities(x.numpy(), (5, 6, 4), (1.0,) * 3, (1.0,) * 3).argmax(axis=0)
    np.testing.assert_array_equal(labels.numpy(), ref)
    assert set(np.unique(ref)) == {0, 1}


def test_clips_to_the_input_range_like_skimage():
    x = np.zeros((2, 6, 5, 4), dtype=np.float32)
    x[0] = 7.0  # constant channel: every weighted sum must come back exactly 7
    x[1, 2:4] = -3.5
    case = ((6, 5, 4), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (11, 3, 13))
    got = _whole(torch.from_numpy(x), case, 0)
    assert torch.all(got[0] == 7.0)
    assert got[1].min() >= -3.5 and got[1].max() <= 0.0
    ref = resample_probabilities(x, _target(case), case[1], case[2])
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axis": 3}, "axis"),
        ({"start": 4, "stop": 4}, "slab"),
        ({"stop": 31}, "slab"),
        ({"new_shape": (30, 24)}, "new_shape"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    args = {"new_shape": (30, 24, 18), "axis": 0, "start": 0, "stop": 30, **kwargs}
    logits = torch.zeros(2, 10, 24, 18)
    with pytest.raises(GeometryError, match=match):
        resample_slab(logits, current_spacing=(3.0, 0.8, 0.8), new_spacing=(1, 0.8, 0.8), **args)


def test_rejects_integer_logits_and_too_many_classes():
    with pytest.raises(GeometryError, match="float"):
        resample_slab(
            torch.zeros(2, 4, 4, 4, dtype=torch.int64), (4, 4, 4), (1,) * 3, (1,) * 3, 0, 0, 4
        )
    with pytest.raises(GeometryError, match="256"):
        slab_labels(torch.zeros(257, 2, 2, 2), (2, 2, 2), (1,) * 3, (1,) * 3, 0, 0, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    for case in (ISOTROPIC[1], SEPARATE[2]):
        logits = torch.from_numpy(_smooth_logits(5, case[0], seed=5))
        axis = _slab_axis(case)
        cpu = _whole(logits, case, axis)
        cuda = _whole(logits.cuda(), case, axis)
        assert cuda.device.type == "cuda"
        # separate elementwise ops, each IEEE-rounded: same bits on both devices
        assert torch.equal(cuda.cpu(), cpu)
