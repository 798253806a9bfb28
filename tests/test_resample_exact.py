"""The fast resampling paths give exactly what skimage / batchgenerators / scipy give.

medseg.preprocessing.zoom and .label_zoom replace scipy's per-voxel spline sums by
separable ones plus an exact recomputation where rounding is in doubt; crop's
fill_holes replaces scipy's iterated dilation; grid.to_processing returns views.
Each is compared bit for bit with the library call it stands for.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from batchgenerators.augmentations.utils import resize_segmentation
from scipy.ndimage import binary_fill_holes
from skimage.transform import resize
from test_resample import _random_labels as random_labels

import medseg.preprocessing.crop as crop_module
import medseg.preprocessing.zoom as zoom_module
from medseg.core.volume import Kind, Volume
from medseg.geometry.orientation import to_canonical
from medseg.preprocessing.crop import fill_holes, nonzero_mask
from medseg.preprocessing.grid import processing_spacing, to_processing
from medseg.preprocessing.label_zoom import resize_label_linear
from medseg.preprocessing.zoom import resize_exact

SHAPES = [  # (input, output): up, down, mixed, unchanged axes, tiny axes
    ((20, 24, 18), (31, 17, 25)),
    ((12, 30, 30), (30, 30, 30)),
    ((16, 16, 16), (16, 16, 64)),
    ((10, 24, 18), (10, 30, 11)),
    ((5, 7, 9), (5, 3, 4)),
    ((3, 1, 5), (3, 2, 7)),
    ((4, 2, 2), (9, 1, 3)),
]


def _skimage(arr: np.ndarray, shape: tuple, order: int, stack: bool) -> np.ndarray:
    kw = dict(mode="edge", clip=True, anti_aliasing=False)
    if stack:
        return np.stack([resize(s, shape[1:], order, **kw) for s in arr]).astype(np.float32)
    return resize(arr, shape, order, **kw).astype(np.float32)


def _bg_labels(seg: np.ndarray, shape: tuple, stack: bool) -> np.ndarray:
    if stack:
        return np.stack([resize_segmentation(s, shape[1:], 1) for s in seg])
    return resize_segmentation(seg, shape, 1)


def _random_labels(shape: tuple, seed: int, dtype) -> np.ndarray:
    """test_resample's blocky labels with salt (ties everywhere); uint8 without -1."""
    seg = random_labels(shape, seed, np.int16)
    return np.abs(seg).astype(dtype) if dtype == np.uint8 else seg.astype(dtype)


@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize(("shape_in", "shape_out"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_exact_is_skimage_bit_for_bit(shape_in, shape_out, order, stack, dtype):
    if stack:
        shape_out = (shape_in[0], *shape_out[1:])
    arr = (np.random.default_rng(0).normal(size=shape_in) * 100).astype(dtype)
    got = resize_exact(arr, shape_out, order, stack=stack)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _skimage(arr, shape_out, order, stack))


@pytest.mark.parametrize("stack", [False, True])
def test_recomputed_voxels_are_exact_too(monkeypatch, stack):
    """A huge error bound sends every voxel through the exact recomputation."""
    monkeypatch.setattr(zoom_module, "ERROR_ULPS", 2.0**45)
    arr = np.random.default_rng(1).random((6, 11, 13), dtype=np.float32)
    shape = (6, 17, 8) if stack else (9, 17, 8)
    got = resize_exact(arr, shape, 3, stack=stack)
    np.testing.assert_array_equal(got, _skimage(arr, shape, 3, stack))


@pytest.mark.parametrize(
    ("shape_in", "shape_out"), [((200, 6, 7), (57, 5, 9)), ((130, 5, 5), (301, 4, 6))]
)
@pytest.mark.parametrize("order", [1, 3])
def test_resize_exact_block_by_block_along_a_long_axis(monkeypatch, shape_in, shape_out, order):
    """Small coefficient windows: the axis-0 prefilter of each block starts inside the
    volume (MARGIN rows away), and the result is still skimage's, bit for bit, also
    where every voxel is recomputed from the window's coefficients."""
    monkeypatch.setattr(zoom_module, "WINDOW_BYTES", 8 * 9 * 31 * 31)
    monkeypatch.setattr(zoom_module, "CHUNK_BYTES", 8 * 1000)
    rng = np.random.default_rng(6)
    arr = (rng.normal(size=shape_in) * 50).astype(np.float32)
    arr[40:90] += 300.0  # a bright slab: large values far from where some blocks start
    blocks = list(
        zoom_module._windows(
            zoom_module.axis_plan(shape_in[0], shape_out[0], order, 12).taps, 8 * 31 * 31
        )
    )
    assert len(blocks) > 10
    expected = _skimage(arr, shape_out, order, False)
    np.testing.assert_array_equal(resize_exact(arr, shape_out, order), expected)
    monkeypatch.setattr(zoom_module, "ERROR_ULPS", 2.0**45)
    np.testing.assert_array_equal(resize_exact(arr, shape_out, order), expected)


def test_resize_exact_on_a_ct_like_slab():
    """Clipped, normalised intensities with flat regions, at a CT-like in-plane zoom."""
    rng = np.random.default_rng(2)
    arr = (rng.normal(size=(3, 128, 128)) * 0.3).astype(np.float32)
    arr[:, 30:90, 40:100] += 1.0
    arr = np.clip(arr, -1.2, 1.6)
    for stack, shape in ((True, (3, 139, 118)), (False, (7, 139, 118))):
        got = resize_exact(arr, shape, 3, stack=stack)
        np.testing.assert_array_equal(got, _skimage(arr, shape, 3, stack))


@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize(("shape_in", "shape_out"), SHAPES)
@pytest.mark.parametrize("dtype", [np.int16, np.int8, np.uint8])
def test_label_resize_is_batchgenerators_exactly(shape_in, shape_out, stack, dtype):
    if stack:
        shape_out = (shape_in[0], *shape_out[1:])
    for seed in range(3):
        seg = _random_labels(shape_in, seed, dtype)
        got = resize_label_linear(seg, shape_out, stack=stack)
        assert got.dtype == seg.dtype
        np.testing.assert_array_equal(got, _bg_labels(seg, shape_out, stack))


def test_label_resize_of_smooth_organs():
    z, y, x = np.ogrid[:24, :40, :40]
    seg = np.zeros((24, 40, 40), dtype=np.int8)
    seg[((z - 12) / 8.0) ** 2 + ((y - 18) / 12.0) ** 2 + ((x - 20) / 9.0) ** 2 <= 1] = 1
    seg[((z - 10) / 5.0) ** 2 + ((y - 28) / 6.0) ** 2 + ((x - 12) / 5.0) ** 2 <= 1] = 2
    for shape in ((48, 43, 43), (24, 37, 37), (13, 52, 29)):
        np.testing.assert_array_equal(
            resize_label_linear(seg, shape), _bg_labels(seg, shape, False)
        )


@pytest.mark.parametrize("sparse", [0.0, 1.0])
@pytest.mark.parametrize("ndim", [2, 3])
def test_fill_holes_is_scipys(monkeypatch, ndim, sparse):
    """Both ways of finding the components: scipy's label, and the background graph."""
    monkeypatch.setattr(crop_module, "SPARSE_BACKGROUND", sparse)
    rng = np.random.default_rng(3)
    for density in (0.3, 0.6, 0.9, 0.97, 1.0):
        mask = rng.random((12,) * ndim) < density
        np.testing.assert_array_equal(fill_holes(mask), binary_fill_holes(mask))
        view = mask[1:-1, ::2]  # not contiguous
        np.testing.assert_array_equal(fill_holes(view), binary_fill_holes(view))


def test_nonzero_mask_fills_holes_only_inside_the_box():
    data = np.zeros((1, 14, 15, 16), dtype=np.int16)
    data[0, 3:10, 2:12, 4:13] = 5
    data[0, 5:7, 5:7, 6:8] = 0  # a hole
    data[0, 3, 2:12, 4:13] = 0  # a dent open to the outside
    data[0, 6, 6, 12] = 0  # a hole on the box face
    rng = np.random.default_rng(4)
    data[0][rng.random(data.shape[1:]) < 0.02] = 0
    expected = binary_fill_holes(np.any(data != 0, axis=0))
    np.testing.assert_array_equal(nonzero_mask(data), expected)


def _signed_permutations():
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            affine = np.zeros((4, 4))
            for col, (row, sign) in enumerate(zip(axes, signs, strict=True)):
                affine[row, col] = sign * (0.5 + col)
            affine[:3, 3] = (4.0, -2.0, 7.0)
            affine[3, 3] = 1.0
            yield affine


@pytest.mark.parametrize("affine", list(_signed_permutations()))
def test_to_processing_views_match_to_canonical(affine):
    data = np.asfortranarray(np.random.default_rng(5).integers(-9, 9, (1, 4, 5, 6), np.int16))
    volume = Volume(data, affine, Kind.IMAGE)
    canonical, record = to_canonical(volume)
    got, spacing, got_record = to_processing(volume)
    np.testing.assert_array_equal(got, np.transpose(canonical.array, (0, 3, 2, 1)))
    assert got_record == record
    assert spacing == tuple(float(s) for s in reversed(canonical.spacing))
    assert spacing == processing_spacing(affine)
    assert np.shares_memory(got, data)  # a view, no copy
