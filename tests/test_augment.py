"""Batched nnU-Net v2 training augmentation (medseg.training.augment)."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.training.augment import (
    AugmentError,
    AugmentSettings,
    augment,
    center_crop,
    deep_supervision_scales,
    deep_supervision_targets,
    settings_for_patch,
    source_patch_size,
)

ALL_OFF = {
    "p_rotation": 0.0,
    "p_scaling": 0.0,
    "p_noise": 0.0,
    "p_blur": 0.0,
    "p_brightness": 0.0,
    "p_contrast": 0.0,
    "p_lowres": 0.0,
    "p_gamma_inverted": 0.0,
    "p_gamma": 0.0,
    "mirror_axes": (),
}
ALL_ON = {k: 1.0 for k in ALL_OFF if k.startswith("p_")}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b, c, source, seed=0, labels=(-1, 0, 1, 2), label_dtype=torch.int8):
    g = gen(seed)
    image = torch.randn((b, c, *source), generator=g)
    pick = torch.randint(len(labels), (b, 1, *source), generator=g)
    return image, torch.tensor(labels, dtype=label_dtype)[pick]


@pytest.mark.parametrize(
    ("patch", "overrides"),
    [((32, 24), {}), ((20, 24, 16), {}), ((6, 32, 32), {}), ((20, 24, 16), ALL_ON)],
)
def test_shapes_dtypes_and_label_values(patch, overrides):
    settings = settings_for_patch(patch, **overrides)
    assert settings.dummy_2d == (patch == (6, 32, 32))
    source = source_patch_size(patch, settings)
    image, label = batch(3, 2, source, labels=(-1, 0, 2, 5))
    before = image.clone(), label.clone()
    for seed in range(4):
        out_image, out_label = augment(image, label, patch, settings, gen(seed))
        assert out_image.shape == (3, 2, *patch) and out_image.dtype == torch.float32
        assert out_label.shape == (3, 1, *patch) and out_label.dtype == torch.int8
        assert set(out_label.unique().tolist()) <= {0, 2, 5}
        assert torch.isfinite(out_image).all()
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])  # inputs untouched


def test_same_seed_same_output_other_seed_other_output():
    patch = (16, 20, 12)
    settings = settings_for_patch(patch, **ALL_ON)
    image, label = batch(2, 2, source_patch_size(patch, settings))
    first = augment(image, label, patch, settings, gen(7))
    again = augment(image, label, patch, settings, gen(7))
    other = augment(image, label, patch, settings, gen(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize(("patch", "source"), [((16, 12, 10), (23, 18, 10)), ((9, 14), (9, 20))])
def test_all_off_equals_center_crop(patch, source):
    settings = settings_for_patch(patch, **ALL_OFF)
    image, label = batch(2, 3, source)
    out_image, out_label = augment(image, label, patch, settings, gen())
    crop_image, crop_label = center_crop(image, label, patch)
    assert torch.equal(out_image, crop_image) and torch.equal(out_label, crop_label)
    starts = [s // 2 - p // 2 for s, p in zip(source, patch, strict=True)]  # nnU-Net's centre
    window = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
    assert torch.equal(out_image, image[(..., *window)])
    assert torch.equal(out_label, label[(..., *window)].clamp(min=0))


def test_non_contiguous_inputs_work():
    patch = (8, 10, 6)
    settings = settings_for_patch(patch, **ALL_ON)
    image, label = batch(2, 3, (6, 10, 8))
    image, label = image.transpose(2, 4), label.transpose(2, 4)  # (2, C, 8, 10, 6), not contiguous
    out = augment(image, label, patch, settings, gen())
    again = augment(image.contiguous(), label.contiguous(), patch, settings, gen())
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])


def test_center_crop_pads_small_sources():
    image, label = torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), 3, dtype=torch.int16)
    out_image, out_label = center_crop(image, label, (6, 4))
    assert out_image[0, 0, :, 0].tolist() == [0, 1, 1, 1, 1, 0]
    assert out_label[0, 0, :, 0].tolist() == [0, 3, 3, 3, 3, 0]


def _forced(angle: float, patch, **extra) -> AugmentSettings:
    return settings_for_patch(
        patch, **{**ALL_OFF, "p_rotation": 1.0, "rotation": (angle, angle), **extra}
    )


def test_rotation_by_90_degrees_2d_and_dummy_2d():
    label = torch.zeros(1, 1, 8, 8, dtype=torch.int16)
    label[0, 0, 1, 1:5] = 1  # an "L": a bar along axis 1 and a foot along axis 0
    label[0, 0, 2:6, 1] = 2
    image = label.float()
    out_image, out_label = augment(image, label, (8, 8), _forced(math.pi / 2, (8, 8)), gen())
    expected = torch.rot90(label, -1, dims=(2, 3))  # out[i, j] = in[n - 1 - j, i]
    assert torch.equal(out_label, expected)
    assert torch.allclose(out_image, expected.float(), atol=1e-5)

    volume = label[:, :, None].repeat(1, 1, 3, 1, 1)  # (1, 1, 3, 8, 8): the same slice thrice
    settings = _forced(math.pi / 2, (3, 8, 8), dummy_2d=True)
    _, out3 = augment(volume.float(), volume, (3, 8, 8), settings, gen())
    assert torch.equal(out3, expected[:, :, None].repeat(1, 1, 3, 1, 1))


def _nnunet_spatial(image, label, patch, angle, scale, dummy_2d=False):
    """batchgeneratorsv2's SpatialTransform, as nnUNetTrainer configures it (nearest labels)."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import (
        Convert2DTo3DTransform,
        Convert3DTo2DTransform,
    )

    transform = SpatialTransform(
        patch[1:] if dummy_2d else patch,
        0,
        False,
        p_rotation=1,
        rotation=(angle, angle),
        p_scaling=1,
        scaling=(scale, scale),
        p_synchronize_scaling_across_axes=1,
        mode_seg="nearest",
        border_mode_seg="constant",
        padding_value_seg=-1,
    )
    data = {"image": image.clone(), "segmentation": label.clone()}
    if dummy_2d:
        data = Convert2DTo3DTransform()(**transform(**Convert3DTo2DTransform()(**data)))
    else:
        data = transform(**data)
    return data["image"], data["segmentation"]


@pytest.mark.parametrize(("angle", "scale", "source"), [(math.pi / 2, 1.0, (12, 12, 12))])
def test_rotation_by_90_degrees_3d_matches_nnunet_exactly(angle, scale, source):
    image, label = batch(1, 1, source, labels=(-1, 0, 1, 2, 3))
    settings = _forced(angle, (8, 8, 8), p_scaling=1.0, scaling=(scale, scale))
    out_image, out_label = augment(image, label, (8, 8, 8), settings, gen())
    ref_image, ref_label = _nnunet_spatial(image[0], label[0], (8, 8, 8), angle, scale)
    assert torch.equal(out_label[0], ref_label.clamp(min=0))
    assert torch.allclose(out_image[0], ref_image, atol=1e-5)
    # rotations by 90 deg about every axis only permute and flip the cube's axes
    assert sorted(out_label.flatten().tolist()) == sorted(
        label[0, 0, 2:10, 2:10, 2:10].clamp(min=0).flatten().tolist()
    )


@pytest.mark.parametrize(
    ("angle", "scale", "source", "patch", "dummy_2d"),
    [
        (0.4, 1.25, (30, 27, 26), (20, 18, 16), False),
        (-0.3, 0.8, (24, 24, 24), (20, 18, 16), False),
        (2.5, 1.1, (6, 30, 27), (6, 20, 22), True),
        (0.7, 0.9, (31, 28), (20, 22), False),
    ],
)
def test_rotation_and_scaling_match_nnunet(angle, scale, source, patch, dummy_2d):
    image, label = batch(1, 2, source, labels=(-1, 0, 1))
    pool = torch.nn.functional.avg_pool3d if len(source) == 3 else torch.nn.functional.avg_pool2d
    smooth = pool(image, 5, 1, 2)  # continuous, so bilinear interpolation agrees closely
    settings = _forced(angle, patch, p_scaling=1.0, scaling=(scale, scale), dummy_2d=dummy_2d)
    out_image, out_label = augment(smooth, label, patch, settings, gen())
    ref_image, ref_label = _nnunet_spatial(smooth[0], label[0], patch, angle, scale, dummy_2d)
    assert torch.allclose(out_image[0], ref_image, atol=1e-4)
    agree = (out_label[0] == ref_label.clamp(min=0)).float().mean()
    assert agree > 0.999  # nearest neighbour may break exact ties differently


def test_mirroring_flips_image_and_label_together():
    patch = (6, 5, 4)
    settings = settings_for_patch(patch, **{**ALL_OFF, "mirror_axes": (0, 1, 2)})
    image = torch.arange(2 * 120, dtype=torch.float32).view(2, 1, 6, 5, 4)
    label = (torch.arange(2 * 120).view(2, 1, 6, 5, 4) % 7).to(torch.int16)
    seen = set()
    for seed in range(12):
        out_image, out_label = augment(image, label, patch, settings, gen(seed))
        for b in range(2):
            flips = [
                axes
                for axes in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]
                if torch.equal(out_image[b], image[b].flip(axes) if axes else image[b])
            ]
            assert len(flips) == 1
            flipped = label[b].flip(flips[0]) if flips[0] else label[b]
            assert torch.equal(out_label[b], flipped)
            seen.add(flips[0])
    assert len(seen) >= 6


def test_intensity_transforms_keep_constant_images_constant():
    patch = (8, 8, 8)
    image, label = torch.full((4, 2, 8, 8, 8), 3.0), torch.zeros((4, 1, 8, 8, 8), dtype=torch.int8)
    on = {"p_contrast": 1.0, "p_gamma": 1.0, "p_gamma_inverted": 1.0}
    settings = settings_for_patch(patch, **{**ALL_OFF, **on})
    out, _ = augment(image, label, patch, settings, gen())
    assert torch.equal(out, image)
    settings = settings_for_patch(patch, **{**ALL_OFF, "p_brightness": 1.0})
    out, _ = augment(image, label, patch, settings, gen(3))
    per_channel = out.flatten(2)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2))  # still constant per channel
    assert ((per_channel >= 0.75 * 3) & (per_channel <= 1.25 * 3)).all()
    assert len(set(per_channel[:, :, 0].flatten().tolist())) == 8  # own factor per channel


def test_contrast_preserves_range_and_gamma_retains_stats():
    patch = (10, 10, 10)
    image, label = batch(3, 2, patch)
    settings = settings_for_patch(patch, **{**ALL_OFF, "p_contrast": 1.0})
    out, _ = augment(image, label, patch, settings, gen())
    assert (out.flatten(2).amin(2) >= image.flatten(2).amin(2)).all()
    assert (out.flatten(2).amax(2) <= image.flatten(2).amax(2)).all()
    assert not torch.equal(out, image)
    settings = settings_for_patch(patch, **{**ALL_OFF, "p_gamma": 1.0})
    out, _ = augment(image, label, patch, settings, gen())
    assert torch.allclose(out.flatten(2).mean(2), image.flatten(2).mean(2), atol=1e-4)
    assert torch.allclose(out.flatten(2).std(2), image.flatten(2).std(2), atol=1e-4)


def _nnunet_intensity(stage: str):
    """batchgeneratorsv2's transform for one stage, as nnUNetTrainer configures it, fixed value."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform

    return {
        "brightness": lambda: MultiplicativeBrightnessTransform((1.2, 1.2), False, 1),
        "contrast": lambda: ContrastTransform((1.2, 1.2), True, False, 1),
        "gamma": lambda: GammaTransform((1.3, 1.3), 0, False, 1, 1),
        "gamma_inverted": lambda: GammaTransform((1.4, 1.4), 1, False, 1, 1),
        "blur": lambda: GaussianBlurTransform((0.8, 0.8), False, False, 1),
        "lowres": lambda: SimulateLowResolutionTransform((0.6, 0.6), False, True, None, None, 1),
    }[stage]()


OURS = {
    "brightness": {"p_brightness": 1.0, "brightness": (1.2, 1.2)},
    "contrast": {"p_contrast": 1.0, "contrast": (1.2, 1.2)},
    "gamma": {"p_gamma": 1.0, "gamma": (1.3, 1.3)},
    "gamma_inverted": {"p_gamma_inverted": 1.0, "gamma": (1.4, 1.4)},
    "blur": {"p_blur": 1.0, "blur_sigma": (0.8, 0.8), "p_blur_per_channel": 1.0},
    "lowres": {"p_lowres": 1.0, "lowres_scale": (0.6, 0.6), "p_lowres_per_channel": 1.0},
}


def test_noise_has_the_drawn_std_and_differs_per_channel():
    patch = (16, 16, 16)
    image, label = torch.zeros(2, 2, *patch), torch.zeros(2, 1, *patch, dtype=torch.int8)
    overrides = {**ALL_OFF, "p_noise": 1.0, "noise_variance": (0.05, 0.05)}
    out, _ = augment(image, label, patch, settings_for_patch(patch, **overrides), gen())
    assert torch.allclose(out.flatten(2).std(2), torch.full((2, 2), 0.05), rtol=0.05)
    assert not torch.equal(out[:, 0], out[:, 1]) and not torch.equal(out[0], out[1])


def test_bg_contrast_sampling_halves_below_and_above_one():
    patch = (2, 2)
    image, label = torch.ones(2000, 1, 2, 2), torch.zeros(2000, 1, 2, 2, dtype=torch.int8)
    settings = settings_for_patch(patch, **{**ALL_OFF, "p_brightness": 1.0})
    factor = augment(image, label, patch, settings, gen())[0][:, 0, 0, 0]
    assert ((factor >= 0.75) & (factor <= 1.25)).all()
    assert 0.45 < (factor < 1).float().mean() < 0.55
    below, above = factor[factor < 1], factor[factor >= 1]
    assert 0.85 < below.mean() < 0.9 and 1.1 < above.mean() < 1.15  # uniform on each side


@pytest.mark.parametrize("stage", sorted(OURS))
def test_intensity_stages_match_nnunet(stage):
    patch = (9, 8, 7)
    image, label = batch(2, 2, patch)
    out, _ = augment(
        image, label, patch, settings_for_patch(patch, **{**ALL_OFF, **OURS[stage]}), gen()
    )
    for b in range(2):
        ref = _nnunet_intensity(stage)(image=image[b].clone())["image"]
        assert torch.allclose(out[b], ref, atol=1e-5)


def test_masking_zeroes_masked_channels_outside():
    patch = (8, 8, 8)
    image = torch.ones((2, 2, 8, 8, 8))
    label = torch.zeros((2, 1, 8, 8, 8), dtype=torch.int16)
    label[:, :, :3] = -1
    label[:, :, 5:] = 1
    settings = settings_for_patch(patch, **{**ALL_OFF, "masked_channels": (1,)})
    out_image, out_label = augment(image, label, patch, settings, gen())
    assert torch.equal(out_image[:, 0], image[:, 0])
    assert (out_image[:, 1, :3] == 0).all() and (out_image[:, 1, 3:] == 1).all()
    assert torch.equal(out_label, label.clamp(min=0))


def test_deep_supervision_targets_match_nnunet():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )

    scales = deep_supervision_scales([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert scales == [(1, 1, 1), (1, 0.5, 0.5), (0.5, 0.25, 0.25)]
    _, label = batch(2, 1, (40, 56, 40), labels=(0, 1, 2))
    targets = deep_supervision_targets(label, scales)
    assert [tuple(t.shape) for t in targets] == [
        (2, 1, 40, 56, 40),
        (2, 1, 40, 28, 20),
        (2, 1, 20, 14, 10),
    ]
    assert all(t.dtype == label.dtype for t in targets)
    ref = DownsampleSegForDSTransform(scales)(segmentation=label[0])["segmentation"]
    assert all(torch.equal(t[0], r) for t, r in zip(targets, ref, strict=True))


@pytest.mark.parametrize(
    "patch", [(64, 64, 64), (40, 56, 40), (28, 256, 256), (80, 160, 160), (512, 512), (128, 96)]
)
@pytest.mark.parametrize("degrees", [None, 0, 10, 45, 100])
def test_source_patch_size_matches_nnunet(patch, degrees):
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    settings = settings_for_patch(patch)
    if degrees is not None:
        settings = settings_for_patch(
            patch, rotation=(-math.radians(degrees), math.radians(degrees))
        )
    rot = settings.rotation
    expected = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
    if settings.dummy_2d:
        expected[0] = patch[0]
    assert source_patch_size(patch, settings) == tuple(int(v) for v in expected)


def test_settings_for_patch_follows_nnunet():
    assert settings_for_patch((28, 256, 256)).dummy_2d
    assert math.isclose(settings_for_patch((28, 256, 256)).rotation[1], math.pi)
    assert math.isclose(settings_for_patch((64, 64, 64)).rotation[1], math.pi / 6)
    assert settings_for_patch((512, 256)).rotation[1] == pytest.approx(math.pi / 12)
    assert settings_for_patch((256, 256)).mirror_axes == (0, 1)
    with pytest.raises(AugmentError, match="probability"):
        settings_for_patch((8, 8), p_gamma=1.5)


def test_bad_inputs_say_what_is_wrong():
    image, label = batch(1, 1, (8, 8))
    with pytest.raises(AugmentError, match="settings_for_patch"):
        augment(image, label, (8, 8), AugmentSettings(rotation=(0.0, 0.0)), gen())
    with pytest.raises(AugmentError, match="floating point"):
        augment(label, label, (8, 8), settings_for_patch((8, 8)), gen())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_shapes_and_is_deterministic():
    patch = (32, 40, 24)
    settings = settings_for_patch(patch, **ALL_ON)
    image, label = batch(4, 2, source_patch_size(patch, settings))
    image, label = image.cuda(), label.cuda()
    for make in (lambda: gen(5), lambda: torch.Generator(device="cuda").manual_seed(5)):
        first = augment(image, label, patch, settings, make())
        again = augment(image, label, patch, settings, make())
        assert first[0].is_cuda and first[0].shape == (4, 2, *patch)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    settings = settings_for_patch(patch, **ALL_OFF)
    cpu = augment(image.cpu(), label.cpu(), patch, settings, gen())
    gpu = augment(image, label, patch, settings, gen())
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
