"""Parity of medseg.preprocessing.resample with nnU-Net v2's default resampling.

Every test runs nnU-Net's own function on the same seeded random data and compares.
"""

from __future__ import annotations

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import (
    compute_new_shape as nn_compute_new_shape,
)
from nnunetv2.preprocessing.resampling.default_resampling import (
    determine_do_sep_z_and_axis,
    resample_data_or_seg_to_shape,
)

from medseg.core.errors import GeometryError
from medseg.preprocessing.resample import (
    compute_new_shape,
    resample_image,
    resample_label,
    resample_probabilities,
    separate_z_axis,
)

TOL = 1e-5
LABEL_VALUES = np.array([-1, 0, 1, 2, 5], dtype=np.int16)

# (shape, current spacing, new spacing); the separate axis each case takes is noted.
ISOTROPIC = [
    ((20, 24, 18), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)),  # upsample x2: exact label ties
    ((20, 24, 18), (1.0, 1.0, 1.0), (0.7, 0.6, 0.8)),  # upsample, odd factors
    ((20, 24, 18), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)),  # downsample x2
    ((20, 24, 18), (1.0, 1.0, 1.0), (1.7, 1.3, 1.9)),  # downsample, odd factors
    ((12, 30, 30), (2.5, 1.0, 1.0), (1.0, 1.0, 1.0)),  # ratio 2.5: no separate axis
    ((16, 16, 16), (1.0, 1.0, 1.0), (3.0, 0.5, 3.0)),  # new spacing aniso, coarse axis tied
    ((20, 8, 8), (0.24, 1.25, 1.25), (0.5, 1.0, 1.0)),  # current aniso, coarse axis tied
]
ANISOTROPIC = [
    ((10, 24, 18), (3.0, 0.8, 0.8), (1.5, 0.8, 0.8)),  # axis 0, upsample z only
    ((10, 24, 18), (3.0, 0.8, 0.8), (2.0, 1.1, 0.6)),  # axis 0, in-plane changes too
    ((24, 10, 18), (0.8, 3.0, 0.8), (0.8, 1.3, 0.8)),  # axis 1
    ((24, 10, 18), (0.8, 3.0, 0.8), (0.5, 4.0, 1.0)),  # axis 1, downsample z
    ((24, 18, 10), (0.8, 0.8, 5.0), (0.8, 0.8, 2.5)),  # axis 2
    ((24, 18, 10), (0.8, 0.8, 5.0), (1.0, 0.4, 2.5)),  # axis 2, in-plane changes too
    ((16, 16, 16), (1.0, 1.0, 1.0), (1.0, 1.0, 4.0)),  # isotropic -> aniso: new spacing's axis
]
BOTH = ISOTROPIC + ANISOTROPIC


def _shape(case: tuple) -> tuple[int, ...]:
    return compute_new_shape(*case)


def _nn(data: np.ndarray, case: tuple, *, is_seg: bool, order: int, order_z: int) -> np.ndarray:
    shape, old, new = case
    return resample_data_or_seg_to_shape(
        data,
        _shape(case),
        old,
        new,
        is_seg=is_seg,
        order=order,
        order_z=order_z,
        force_separate_z=None,
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _random_labels(shape: tuple, seed: int, dtype: type = np.int16) -> np.ndarray:
    """Blocky random labels (so regions exist) with salt of single voxels (so ties abound)."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(LABEL_VALUES, size=tuple(-(-s // 3) for s in shape))
    seg = np.kron(coarse, np.ones((3, 3, 3), dtype=coarse.dtype))[
        : shape[0], : shape[1], : shape[2]
    ]
    salt = rng.random(shape) < 0.15
    seg[salt] = rng.choice(LABEL_VALUES, size=int(salt.sum()))
    return seg.astype(dtype)


@pytest.mark.parametrize(
    ("old_shape", "old_spacing", "new_spacing"),
    [
        ((5, 7, 9), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)),  # 2.5, 3.5, 4.5: half to even
        ((512, 512, 100), (0.8, 0.8, 2.5), (0.8, 0.8, 1.25)),
        ((333, 271, 47), (0.7, 0.71, 3.3), (0.75, 0.75, 1.0)),
        ((64, 64, 64), (1.1, 0.9, 1.3), (1.0, 1.0, 1.0)),
        ((3, 3, 3), (0.1, 0.3, 0.7), (0.2, 0.2, 0.2)),
        ((100, 37, 13), (1.5, 1.5, 1.5), (1.0, 2.2, 0.6)),
    ],
)
def test_compute_new_shape_matches_nnunet(old_shape, old_spacing, new_spacing):
    expected = tuple(int(s) for s in nn_compute_new_shape(old_shape, old_spacing, new_spacing))
    got = compute_new_shape(old_shape, old_spacing, new_spacing)
    assert got == expected
    assert all(type(s) is int for s in got)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
        ((3.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # ratio exactly 3: not anisotropic
        ((3.01, 1.0, 1.0), (1.0, 1.0, 1.0)),  # axis 0
        ((0.8, 3.0, 0.8), (0.8, 1.3, 0.8)),  # axis 1
        ((0.8, 0.8, 5.0), (0.8, 0.8, 2.5)),  # axis 2 of the current spacing
        ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)),  # only the new spacing is anisotropic
        ((1.0, 4.0, 1.0), (4.0, 1.0, 1.0)),  # the current spacing's axis wins
        ((0.24, 1.25, 1.25), (0.24, 0.24, 5.0)),  # tie in current: None, no fallback
        ((1.0, 1.0, 1.0), (3.5, 3.5, 1.0)),  # tie in new spacing
        ((5.0, 5.0, 5.0), (1.0, 1.0, 1.0)),  # all three tie
        ((2.0, 2.0, 2.0), (6.0, 6.0, 6.0)),
    ],
)
def test_separate_z_axis_matches_nnunet(current, new):
    do_separate, axis = determine_do_sep_z_and_axis(None, current, new)
    assert separate_z_axis(current, new) == (int(axis) if do_separate else None)


@pytest.mark.parametrize("case", ISOTROPIC)
def test_image_3d_path_order3(case):
    assert separate_z_axis(case[1], case[2]) is None
    data = np.random.default_rng(1).random((2, *case[0]), dtype=np.float32)
    got = resample_image(data, _shape(case), case[1], case[2])
    assert got.dtype == np.float32
    assert _max_diff(got, _nn(data, case, is_seg=False, order=3, order_z=0)) < TOL


@pytest.mark.parametrize("order_z", [0, 1, 3])
@pytest.mark.parametrize("case", ANISOTROPIC)
def test_image_separate_z_path(case, order_z):
    assert separate_z_axis(case[1], case[2]) is not None
    data = np.random.default_rng(2).random((2, *case[0]), dtype=np.float32)
    got = resample_image(data, _shape(case), case[1], case[2], order_z=order_z)
    expected = _nn(data, case, is_seg=False, order=3, order_z=order_z)
    assert _max_diff(got, expected) < TOL


@pytest.mark.parametrize(
    ("case", "order", "order_z"),
    [(ISOTROPIC[1], 3, 0), (ISOTROPIC[3], 1, 0), (ANISOTROPIC[5], 3, 0), (ANISOTROPIC[3], 3, 3)],
)
def test_float32_input_gives_bit_identical_values(case, order, order_z):
    """Stronger than the tolerance tests: float32 working precision loses nothing."""
    data = np.random.default_rng(10).random((1, *case[0]), dtype=np.float32)
    got = resample_image(data, _shape(case), case[1], case[2], order=order, order_z=order_z)
    expected = _nn(data, case, is_seg=False, order=order, order_z=order_z)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64, np.int32])
@pytest.mark.parametrize("case", [ISOTROPIC[3], ANISOTROPIC[5]])
def test_image_any_dtype_gives_float32_of_nnunet_float64(case, dtype):
    rng = np.random.default_rng(3)
    data = (rng.random((1, *case[0])) * 200).astype(dtype)
    got = resample_image(data, _shape(case), case[1], case[2])
    expected = _nn(data.astype(np.float64), case, is_seg=False, order=3, order_z=0)
    assert got.dtype == np.float32
    assert _max_diff(got, expected.astype(np.float32)) < TOL * 200


@pytest.mark.parametrize("case", BOTH)
def test_probabilities_order1(case):
    logits = np.random.default_rng(4).normal(size=(3, *case[0]))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    got = resample_probabilities(probs, _shape(case), case[1], case[2])
    assert got.dtype == np.float32
    assert _max_diff(got, _nn(probs, case, is_seg=False, order=1, order_z=0)) < TOL


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("case", BOTH)
def test_labels_identical(case, order):
    seg = _random_labels(case[0], seed=5)
    got = resample_label(seg, _shape(case), case[1], case[2], order=order)
    expected = _nn(seg[None], case, is_seg=True, order=order, order_z=0)[0]
    assert got.dtype == seg.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("order_z", [1, 3])
@pytest.mark.parametrize("case", ANISOTROPIC)
def test_labels_identical_order_z(case, order_z):
    seg = _random_labels(case[0], seed=6, dtype=np.int8)
    got = resample_label(seg, _shape(case), case[1], case[2], order_z=order_z)
    expected = _nn(seg[None], case, is_seg=True, order=1, order_z=order_z)[0]
    np.testing.assert_array_equal(got, expected)


def test_labels_uint8_and_single_label():
    case = ISOTROPIC[0]
    seg = np.abs(_random_labels(case[0], seed=7)).astype(np.uint8)
    got = resample_label(seg, _shape(case), case[1], case[2])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _nn(seg[None], case, is_seg=True, order=1, order_z=0)[0])
    constant = np.full(case[0], 2, dtype=np.int16)
    np.testing.assert_array_equal(resample_label(constant, (7, 9, 5), case[1], case[2]), 2)


def test_unchanged_shape_returns_input():
    spacing = (1.0, 1.0, 1.0)
    image = np.random.default_rng(8).random((2, 5, 6, 7), dtype=np.float32)
    assert np.array_equal(resample_image(image, (5, 6, 7), spacing, spacing), image)
    ints = (image * 100).astype(np.int16)
    got = resample_image(ints, (5, 6, 7), spacing, (0.9, 1.1, 1.0))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ints.astype(np.float32))
    seg = _random_labels((5, 6, 7), seed=9)
    assert resample_label(seg, (5, 6, 7), (3.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is seg


def test_bad_input_raises_geometry_error():
    spacing = (1.0, 1.0, 1.0)
    with pytest.raises(GeometryError, match="4D array"):
        resample_image(np.zeros((4, 4, 4)), (2, 2, 2), spacing, spacing)
    with pytest.raises(GeometryError, match="3D array"):
        resample_label(np.zeros((1, 4, 4, 4), dtype=np.int8), (2, 2, 2), spacing, spacing)
    with pytest.raises(GeometryError, match="new_shape"):
        resample_label(np.zeros((4, 4, 4), dtype=np.int8), (2, 2), spacing, spacing)
    with pytest.raises(GeometryError, match="spacing"):
        resample_image(np.zeros((1, 4, 4, 4)), (2, 2, 2), (1.0, 0.0, 1.0), spacing)
    with pytest.raises(GeometryError, match="same length"):
        compute_new_shape((4, 4, 4), (1.0, 1.0), spacing)
