"""The cascade's previous-stage inputs against batchgeneratorsv2 (nnU-Net v2's own transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.core.errors import AugmentError
from medseg.training.cascade import (
    OPERATORS,
    BinaryOperation,
    CascadeAugmentSettings,
    apply_binary_operations,
    augment_previous,
    binary_closing,
    binary_dilation,
    binary_erosion,
    binary_opening,
    draw_binary_operations,
    footprint,
    previous_onehot,
    remove_random_components,
)

bg_onehot = pytest.importorskip("batchgeneratorsv2.transforms.nnunet.seg_to_onehot")
bg_binary = pytest.importorskip("batchgeneratorsv2.transforms.nnunet.random_binary_operator")
bg_remove = pytest.importorskip("batchgeneratorsv2.transforms.nnunet.remove_connected_components")

OURS = {
    "dilation": binary_dilation,
    "erosion": binary_erosion,
    "closing": binary_closing,
    "opening": binary_opening,
}
THEIRS = {
    "dilation": bg_binary.binary_dilation_torch,
    "erosion": bg_binary.binary_erosion_torch,
    "closing": bg_binary.binary_closing_torch,
    "opening": bg_binary.binary_opening_torch,
}
ALWAYS = CascadeAugmentSettings(
    p_binary=1, p_binary_per_label=1, p_remove=1, p_remove_per_label=1, strel_radius=(1, 3)
)


def label_map(shape, n_labels: int, seed: int) -> np.ndarray:
    """Smooth random blobs with labels 1..n_labels, background 0 and a few -1 voxels."""
    rng = np.random.default_rng(seed)
    fields = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 2) for _ in range(n_labels)])
    labels = np.where(fields.max(0) > 0.05, fields.argmax(0) + 1, 0)
    labels[rng.random(shape) < 0.02] = -1
    return labels


def blob(shape, seed: int) -> torch.Tensor:
    """A bool mask of smooth blobs (touching the border) with some salt and pepper."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.0
    mask ^= rng.random(shape) < 0.03
    return torch.from_numpy(mask)


def changed(a: torch.Tensor, b: torch.Tensor) -> list[bool]:
    return [not torch.equal(x, y) for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize("shape", [(13, 17), (9, 10, 11)])
@pytest.mark.parametrize("foreground", [(1, 2, 3), (3, 1), ()])
def test_previous_onehot_matches_nnunet(shape, foreground):
    previous = torch.from_numpy(np.stack([label_map(shape, 3, s) for s in range(2)]))[:, None]
    ours = previous_onehot(previous, foreground)
    assert ours.shape == (2, len(foreground), *shape) and ours.dtype == torch.float32
    transform = bg_onehot.MoveSegAsOneHotToDataTransform(1, list(foreground))
    for b in range(2):
        image = torch.zeros((1, *shape))
        seg = torch.cat([torch.zeros_like(previous[b]), previous[b]])
        theirs = transform(image=image, segmentation=seg)["image"][1:]
        assert torch.equal(ours[b], theirs)


def test_previous_onehot_rejects_bad_shapes():
    with pytest.raises(AugmentError, match="expected"):
        previous_onehot(torch.zeros((2, 2, 4, 4), dtype=torch.long), [1])


@pytest.mark.parametrize("radius", [1.0, 1.2, 1.7, 2.5, 4.0, 7.9])
def test_operators_match_batchgenerators_2d(radius):
    mask = blob((40, 37), seed=int(radius * 10))
    strel = footprint(radius, 2)
    for name in OPERATORS:
        ours = OURS[name](mask, strel)
        theirs = THEIRS[name](mask, strel)
        assert torch.equal(ours, theirs), (name, radius)


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.5, 2.7, 4.0])
def test_operators_match_batchgenerators_3d(radius):
    mask = blob((18, 20, 15), seed=int(radius * 10))
    strel = footprint(radius, 3)
    for name in OPERATORS:
        ours = OURS[name](mask, strel)
        theirs = THEIRS[name](mask, strel)
        assert torch.equal(ours, theirs), (name, radius)


@pytest.mark.parametrize("shape", [(40, 40, 40), (61, 47)])
def test_fft_path_equals_conv_and_batchgenerators(shape):
    mask = blob(shape, seed=len(shape))
    faces = [mask.select(d, i) for d in range(mask.ndim) for i in (0, -1)]
    assert all(face.any() and not face.all() for face in faces)  # blobs cut by every face
    for radius in (1, 1.5, 2, 2.7, 3, 4, 5, 6, 7, 8):
        strel = footprint(radius, mask.ndim)
        dilated = bg_binary.binary_dilation_torch(mask, strel)
        eroded = bg_binary.binary_erosion_torch(mask, strel)
        for fft in (True, False, None):  # FFT, direct conv, automatic
            assert torch.equal(binary_dilation(mask, strel, fft=fft), dilated), (radius, fft)
            assert torch.equal(~binary_dilation(~mask, strel, fft=fft), eroded), (radius, fft)


def test_erosion_treats_outside_as_foreground():
    full = torch.ones((10, 10, 10), dtype=torch.bool)
    assert torch.equal(binary_erosion(full, footprint(2, 3)), full)
    corner = torch.zeros((10, 10), dtype=torch.bool)
    corner[:4, :4] = True
    eroded = binary_erosion(corner, footprint(1, 2))
    assert eroded[0, 0] and eroded[:3, :3].all() and not eroded[3].any()


def test_applied_operations_match_batchgenerators():
    shape = (20, 18, 16)
    onehot = previous_onehot(torch.from_numpy(label_map(shape, 3, 7))[None, None], [1, 2, 3])[0]
    settings = CascadeAugmentSettings(p_binary_per_label=1.0, strel_radius=(1.0, 4.0))
    generator = torch.Generator().manual_seed(3)
    reference = bg_binary.ApplyRandomBinaryOperatorTransform(channel_idx=[0, 1, 2])
    for _ in range(4):
        ops = draw_binary_operations(3, settings, generator)
        assert sorted(op.channel for op in ops) == [0, 1, 2]
        theirs = reference._apply_to_image(
            onehot.clone(),
            apply_to_channels=[op.channel for op in ops],
            operators=[THEIRS[op.operator] for op in ops],
            strel_size=[op.radius for op in ops],
        )
        assert torch.equal(apply_binary_operations(onehot, ops), theirs), ops


def test_added_voxels_leave_the_other_channels():
    onehot = torch.zeros((3, 12, 12))
    onehot[0, 2:6, 2:6] = 1
    onehot[1, 6:10, 2:6] = 1
    onehot[2, 2:6, 6:10] = 1
    out = apply_binary_operations(onehot, [BinaryOperation(0, "dilation", 2.0)])
    added = out[0].bool() & ~onehot[0].bool()
    assert added.any() and (out.sum(0) <= 1).all()
    for c in (1, 2):
        lost = onehot[c].bool() & ~out[c].bool()
        assert lost.any() and torch.equal(lost, onehot[c].bool() & added)


def test_component_removal_never_touches_large_components():
    onehot = torch.zeros((2, 20, 20))
    onehot[0, :6, :10] = 1  # 60 voxels = 15 % of 400: never removed
    onehot[1, :6, :10] = 1
    onehot[1, 0, 19] = 1  # 1 voxel: the only candidate
    generator = torch.Generator().manual_seed(0)
    out = remove_random_components(onehot, ALWAYS, generator)
    assert torch.equal(out[0], onehot[0])
    expected = onehot[1].clone()
    expected[0, 19] = 0
    assert torch.equal(out[1], expected)
    reference = bg_remove.RemoveRandomConnectedComponentFromOneHotEncodingTransform(
        [0, 1], fill_with_other_class_p=0, dont_do_if_covers_more_than_x_percent=0.15
    )
    assert torch.equal(reference._apply_to_image(onehot.clone(), apply_to_channels=[0, 1]), out)


def test_component_removal_removes_one_whole_component():
    onehot = torch.zeros((1, 12, 12, 12))
    onehot[0, 1:3, 1:3, 1:3] = 1
    onehot[0, 3:5, 3:5, 3:5] = 1  # touches the first cube at a corner: same component
    onehot[0, 8:10, 1:4, 1:3] = 1
    onehot[0, 1:2, 8:11, 8:11] = 1
    mask = onehot[0].bool().numpy()
    full = ndimage.generate_binary_structure(3, 3)
    labels, n = ndimage.label(mask, structure=full)
    assert n == 3
    components = [torch.from_numpy(labels == i) for i in range(1, n + 1)]
    seen = set()
    for seed in range(12):
        out = remove_random_components(onehot, ALWAYS, torch.Generator().manual_seed(seed))
        removed = onehot[0].bool() & ~out[0].bool()
        hits = [i for i, comp in enumerate(components) if torch.equal(removed, comp)]
        assert len(hits) == 1 and torch.equal(out[0].bool() | removed, onehot[0].bool())
        seen.add(hits[0])
    assert seen == {0, 1, 2}


def test_no_probability_no_change_and_input_untouched():
    onehot = previous_onehot(
        torch.from_numpy(np.stack([label_map((24,) * 3, 3, 1)] * 2))[:, None], [1, 2, 3]
    )
    before = onehot.clone()
    never = CascadeAugmentSettings(p_binary=0, p_remove=0)
    out = augment_previous(onehot, never, torch.Generator().manual_seed(0))
    assert torch.equal(out, onehot) and out.data_ptr() != onehot.data_ptr()
    out1 = augment_previous(onehot, ALWAYS, torch.Generator().manual_seed(5))
    out2 = augment_previous(onehot, ALWAYS, torch.Generator().manual_seed(5))
    assert all(changed(out1, onehot)) and torch.equal(out1, out2)
    assert out1.dtype == onehot.dtype and set(out1.unique().tolist()) <= {0.0, 1.0}
    assert (out1.sum(1) <= 1).all()
    assert torch.equal(onehot, before)


def test_change_rates_near_nnunet():
    labels = np.stack([label_map((16, 16), 2, s) for s in range(200)])
    onehot = previous_onehot(torch.from_numpy(labels)[:, None], [1, 2])
    generator = torch.Generator().manual_seed(11)
    binary = augment_previous(onehot, CascadeAugmentSettings(p_remove=0), generator)
    remove = augment_previous(onehot, CascadeAugmentSettings(p_binary=0), generator)
    assert abs(np.mean(changed(binary, onehot)) - 0.4 * 0.75) < 0.12
    assert abs(np.mean(changed(remove, onehot)) - 0.2 * 0.75) < 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_binary": 1.5},
        {"p_remove_per_label": -0.1},
        {"strel_radius": (0.5, 2.0)},
        {"strel_radius": (3.0, 2.0)},
        {"max_component_fraction": 0.0},
    ],
)
def test_settings_are_checked(kwargs):
    with pytest.raises(AugmentError):
        CascadeAugmentSettings(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    labels = np.stack([label_map((20, 22, 18), 3, s) for s in range(3)])
    onehot = previous_onehot(torch.from_numpy(labels)[:, None], [1, 2, 3])
    settings = CascadeAugmentSettings(p_binary=1, p_remove=1)
    cpu = augment_previous(onehot, settings, torch.Generator().manual_seed(2))
    gpu = augment_previous(onehot.cuda(), settings, torch.Generator().manual_seed(2))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
