"""nnU-Net v2's training augmentation, batched on torch tensors.

Layouts: ``image`` is ``(B, C, *spatial)`` floating point, ``label`` is ``(B, 1, *spatial)``
integer, ``spatial`` is ``(X, Y)`` or ``(X, Y, Z)`` in array-axis order (axis 0 is the
lowest-resolution axis after nnU-Net's transpose). Label value -1 (:data:`OUTSIDE`) marks
voxels outside the image's non-zero region or padding.

The pipeline is nnU-Net v2's ``nnUNetTrainer.get_training_transforms`` (no cascade, no
regions): rotation/scaling and centre crop, Gaussian noise, Gaussian blur, multiplicative
brightness, contrast, simulated low resolution, inverted gamma, gamma, mirroring, masking,
-1 -> 0. Each stage works on the whole batch at once; the only per-item Python loop is
the low-resolution simulation (each channel gets its own intermediate shape).

Randomness: ``generator`` is a ``torch.Generator`` on the CPU or on the tensors' device.
All per-sample and per-channel parameters come from one ``(B, K)`` block of uniforms drawn
from it (then brought to the CPU once, so control flow never waits on the device again).
The Gaussian noise field is drawn from ``generator`` when it lives on the tensors' device,
otherwise from a device generator seeded by one draw from ``generator``. The same generator
state on the same device gives the same output; CPU and CUDA outputs differ (different RNGs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medseg.core.errors import AugmentError
from medseg.core.records import default_mirror_axes
from medseg.preprocessing.crop import OUTSIDE
from medseg.training.augment_intensity import (
    blur,
    brightness,
    contrast_rows,
    gamma_rows,
    lowres,
    noise,
    per_channel,
    same_device,
    uniform,
)

#: nnU-Net's anisotropy threshold for dummy-2D augmentation of 3D patches.
ANISO_THRESHOLD = 3.0
#: The scaling range nnU-Net uses to size the source patch (not the augmentation's own range).
SOURCE_SCALING = (0.85, 1.25)
Range = tuple[float, float]
_RANGES = ("rotation", "scaling", "noise_variance", "blur_sigma", "brightness", "contrast")
_RANGES += ("lowres_scale", "gamma")


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities and ranges of nnU-Net v2's training augmentation (defaults: nnUNetTrainer).

    Angles are in radians. ``noise_variance`` is used as the noise standard deviation, as
    batchgeneratorsv2 does despite the name. ``mirror_axes`` are 0-based spatial axes.
    ``masked_channels`` are the channels normalised with ``use_mask_for_norm``.
    """

    rotation: Range
    p_rotation: float = 0.2
    scaling: Range = (0.7, 1.4)
    p_scaling: float = 0.2
    dummy_2d: bool = False
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_noise: float = 0.1
    noise_variance: Range = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_scale: Range = (0.5, 1.0)
    p_lowres_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: Range = (0.7, 1.5)
    masked_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise AugmentError(f"{name}={value} is not a probability; use a value in [0, 1]")
            if name in _RANGES and (len(value) != 2 or value[0] > value[1]):
                raise AugmentError(f"{name}={value}: give a range as (low, high) with low <= high")


def settings_for_patch(patch_size: Sequence[int], **overrides) -> AugmentSettings:
    """nnU-Net's rotation, dummy-2D and mirroring choice for a patch size, plus overrides.

    2D: rotation +-15 deg if the patch aspect ratio exceeds 1.5, else +-180 deg; mirror (0, 1).
    3D: dummy 2D (in-plane rotation +-180 deg about axis 0) if ``max(patch) / patch[0] > 3``,
    else +-30 deg about every axis; mirror (0, 1, 2).
    """
    patch = [int(p) for p in patch_size]
    if len(patch) == 2:
        limit = 15.0 if max(patch) / min(patch) > 1.5 else 180.0
        base = {"dummy_2d": False, "mirror_axes": default_mirror_axes(patch)}
    elif len(patch) == 3:
        dummy = max(patch) / patch[0] > ANISO_THRESHOLD
        limit = 180.0 if dummy else 30.0
        base = {"dummy_2d": dummy, "mirror_axes": default_mirror_axes(patch)}
    else:
        raise AugmentError(f"patch size {patch_size} must have 2 or 3 axes")
    angle = limit / 360 * 2 * math.pi
    return AugmentSettings(**{"rotation": (-angle, angle), **base, **overrides})


def _axis_rotation(angle: torch.Tensor, axis: int, dim: int) -> torch.Tensor:
    """Rotation matrices ``(N, dim, dim)`` about ``axis`` (3D) or in the plane (2D), float64."""
    i, j = ((axis + 1) % 3, (axis + 2) % 3) if dim == 3 else (0, 1)
    m = torch.eye(dim, dtype=torch.float64).repeat(angle.shape[0], 1, 1)
    c, s = torch.cos(angle), torch.sin(angle)
    m[:, i, i], m[:, j, j], m[:, i, j], m[:, j, i] = c, c, -s, s
    return m


def source_patch_size(patch_size: Sequence[int], settings: AugmentSettings) -> tuple[int, ...]:
    """The patch to read before spatial augmentation (nnU-Net's ``get_patch_size``).

    The corners of ``patch_size`` are rotated by the largest rotation angle (at most 90 deg)
    about each axis in turn, the largest extent is kept, then divided by the smallest of
    :data:`SOURCE_SCALING` and truncated. Like nnU-Net this does not cover scaling below
    0.85 combined with rotation: the rare samples reaching further see padding. With
    ``dummy_2d`` the first axis keeps ``patch_size[0]``.
    """
    patch = torch.tensor([float(p) for p in patch_size], dtype=torch.float64)
    dim = patch.numel()
    angle = min(math.pi / 2, max(abs(a) for a in settings.rotation))
    angle = torch.tensor([angle], dtype=torch.float64)
    extent = patch.clone()
    for axis in range(dim if dim == 3 else 1):
        rotated = patch @ _axis_rotation(angle, axis, dim)[0]
        extent = torch.maximum(extent, rotated.abs())
    out = [int(v) for v in (extent / min(SOURCE_SCALING)).tolist()]
    if settings.dummy_2d:
        out[0] = int(patch_size[0])
    return tuple(out)


def _crop(x: torch.Tensor, patch: Sequence[int], fill: float) -> torch.Tensor:
    """Centre crop of ``(B, C, *S)`` from ``S // 2 - s // 2`` (nnU-Net's), padded with ``fill``."""
    slices, pads = [slice(None), slice(None)], []
    for size, want in zip(x.shape[2:], patch, strict=True):
        start = size // 2 - want // 2
        lo, hi = max(start, 0), min(start + want, size)
        slices.append(slice(lo, hi))
        pads.append((lo - start, want - (hi - start)))
    out = x[tuple(slices)]
    flat = [p for pair in reversed(pads) for p in pair]
    out = F.pad(out, flat, value=fill) if any(flat) else out
    return out.clone(memory_format=torch.contiguous_format)


def center_crop(
    image: torch.Tensor, label: torch.Tensor, patch_size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation batch: centre crop to ``patch_size`` and label -1 -> 0, no augmentation.

    ``image (B, C, *S)``, ``label (B, 1, *S)`` -> ``(B, C, *patch_size)``, ``(B, 1, *patch_size)``;
    where ``S`` is smaller than the patch, images are padded with 0 and labels with 0.
    """
    patch = [int(p) for p in patch_size]
    label = _crop(label, patch, OUTSIDE)
    return _crop(image, patch, 0.0), label.masked_fill(label == OUTSIDE, 0)


def _draw(settings: AugmentSettings, b: int, c: int, generator) -> dict[str, torch.Tensor]:
    """All per-sample uniforms in [0, 1), drawn as one ``(B, K)`` block, returned on the CPU."""
    layout = {"rot_on": (), "scale_on": (), "angles": (3,), "scale": ()}
    layout |= {"noise_on": (), "noise_sigma": (), "blur_on": (), "blur_chan": (c,)}
    layout |= {"blur_sigma": (c, 3), "lowres_on": (), "lowres_chan": (c,), "lowres": (c,)}
    for stage in ("brightness", "contrast", "gamma_inverted", "gamma"):
        layout |= {f"{stage}_on": (), f"{stage}_pick": (c,), stage: (c,)}
    layout["mirror"] = (len(settings.mirror_axes),)
    sizes = [math.prod(shape) for shape in layout.values()]
    u = torch.rand(
        (b, sum(sizes)), generator=generator, device=generator.device, dtype=torch.float64
    ).cpu()
    parts = u.split(sizes, dim=1)
    return {
        k: part.reshape(b, *shape) for (k, shape), part in zip(layout.items(), parts, strict=True)
    }


def _affines(p: dict, s: AugmentSettings, dim: int) -> torch.Tensor:
    """Output-to-source matrices ``(B, dim, dim)`` (voxel units, about the patch centres)."""
    on_rot, on_scale = p["rot_on"] < s.p_rotation, p["scale_on"] < s.p_scaling
    angles = torch.where(on_rot[:, None], uniform(p["angles"], s.rotation), 0.0)
    scale = torch.where(on_scale, uniform(p["scale"], s.scaling), 1.0)
    scales = scale[:, None].repeat(1, dim)
    if dim == 2 or s.dummy_2d:
        if s.dummy_2d:
            scales[:, 0] = 1.0
        rotation = _axis_rotation(angles[:, 0], 0, dim)
    else:  # nnU-Net's Rz @ Ry @ Rx
        rots = [_axis_rotation(angles[:, a], a, 3) for a in range(3)]
        rotation = rots[2] @ rots[1] @ rots[0]
    return rotation * scales[:, None, :]


def _warp(image, label, affines: torch.Tensor, patch: Sequence[int]):
    """Resample ``image (N, C, *S)`` bilinearly and ``label (N, L, *S)`` nearest, one call each.

    ``affines (N, d, d)`` map voxel offsets from the output centre to offsets from the source
    centre (``S / 2 - 0.5``, nnU-Net's); outside the source images get 0 and labels -1.
    """
    n, dim, device = image.shape[0], image.ndim - 2, image.device
    source = torch.tensor(image.shape[2:], dtype=torch.float64)
    # voxel offsets -> grid_sample's [-1, 1] coordinates, whose axis order is reversed
    theta = affines * torch.tensor(patch, dtype=torch.float64) / source[:, None]
    theta = torch.cat([theta.flip(1, 2), torch.zeros(n, dim, 1, dtype=torch.float64)], dim=2)
    grid = F.affine_grid(theta.to(device, torch.float32), [n, 1, *patch], align_corners=False)
    warped = F.grid_sample(image, grid.to(image.dtype), "bilinear", "zeros", False)
    shifted = label.float() - OUTSIDE  # zeros padding then means OUTSIDE
    warped_label = F.grid_sample(shifted, grid, "nearest", "zeros", False) + OUTSIDE
    return warped, warped_label.round().to(label.dtype)


def _spatial(image, label, patch: list[int], s: AugmentSettings, p: dict):
    """Rotate/scale the samples that drew it, centre-crop all others (no interpolation)."""
    out_image, out_label = _crop(image, patch, 0.0), _crop(label, patch, OUTSIDE)
    moved = ((p["rot_on"] < s.p_rotation) | (p["scale_on"] < s.p_scaling)).nonzero()[:, 0]
    if moved.numel() == 0:
        return out_image, out_label
    idx = moved.to(image.device)
    affines, warp_patch = _affines(p, s, image.ndim - 2)[moved], patch
    image, label = image[idx], label[idx]
    if s.dummy_2d:  # nnU-Net's Convert3DTo2D: axis 0 joins the channels, the warp is 2D
        image = _crop(image, [patch[0], *image.shape[3:]], 0.0).flatten(1, 2)
        label = _crop(label, [patch[0], *label.shape[3:]], OUTSIDE).flatten(1, 2)
        affines, warp_patch = affines[:, 1:, 1:], patch[1:]
    warped, warped_label = _warp(image, label, affines, warp_patch)
    out_image[idx] = warped.view(len(idx), -1, *patch)
    out_label[idx] = warped_label.view(len(idx), -1, *patch)
    return out_image, out_label


def _mirror(image, label, p: dict, s: AugmentSettings):
    """Flip each sample along each mirror axis with probability 0.5, image and label together."""
    for k, axis in enumerate(s.mirror_axes):
        idx = (p["mirror"][:, k] < 0.5).nonzero()[:, 0].to(image.device)
        if idx.numel():
            image[idx] = image[idx].flip(axis + 2)
            label[idx] = label[idx].flip(axis + 2)
    return image, label


def _check(image: torch.Tensor, label: torch.Tensor, patch, s: AugmentSettings, generator) -> None:
    """Raise :class:`AugmentError` unless the batch, patch, settings and generator fit together."""
    dim = image.ndim - 2
    if dim not in (2, 3) or label.ndim != image.ndim or label.shape[1] < 1:
        raise AugmentError(
            f"expected image (B, C, *spatial) and label (B, L, *spatial) with 2 or 3 spatial axes, "
            f"got {tuple(image.shape)} and {tuple(label.shape)}"
        )
    if label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise AugmentError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ")
    if not image.is_floating_point() or label.is_floating_point():
        raise AugmentError(
            f"image must be floating point and label integer, got {image.dtype}, {label.dtype}"
        )
    if len(patch) != dim or (s.dummy_2d and dim != 3):
        raise AugmentError(f"patch {patch} (dummy_2d={s.dummy_2d}) does not fit {dim}D tensors")
    if any(a >= dim for a in s.mirror_axes) or any(c >= image.shape[1] for c in s.masked_channels):
        raise AugmentError(
            f"mirror_axes {s.mirror_axes} / masked_channels {s.masked_channels} do not exist in "
            f"{tuple(image.shape)}; use settings_for_patch(patch_size) for {dim}D settings"
        )
    if generator.device.type != "cpu" and not same_device(generator.device, image.device):
        raise AugmentError(f"generator on {generator.device}: use one on the CPU or {image.device}")


def augment(
    image: torch.Tensor,
    label: torch.Tensor,
    patch_size: Sequence[int],
    settings: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch as nnU-Net v2's training pipeline does.

    Parameters
    ----------
    image : torch.Tensor
        ``(B, C, *source)`` floating point, ``source`` usually :func:`source_patch_size`.
    label : torch.Tensor
        ``(B, L, *source)`` integer; -1 marks outside / padding. Channel 0 is the label
        (it masks the image); a cascade stage adds the previous stage's segmentation,
        moved with the label (nearest neighbour).
    patch_size : sequence of int
        Output spatial size.
    settings : AugmentSettings
        Probabilities and ranges (see :func:`settings_for_patch`).
    generator : torch.Generator
        On the CPU or on the tensors' device; the only source of randomness.

    Returns
    -------
    image, label : torch.Tensor
        ``(B, C, *patch_size)`` and ``(B, L, *patch_size)`` (same dtypes), label -1 -> 0.
        The inputs are not modified.
    """
    patch = [int(v) for v in patch_size]
    _check(image, label, patch, settings, generator)
    p = _draw(settings, image.shape[0], image.shape[1], generator)
    s = settings
    image, label = _spatial(image, label, patch, s, p)
    image = blur(noise(image, p, s, generator), p, s)
    image = per_channel(brightness(image, p, s), p, s, "contrast", s.p_contrast, contrast_rows)
    image = lowres(image, p, s)
    image = per_channel(image, p, s, "gamma_inverted", s.p_gamma_inverted, gamma_rows, invert=True)
    image = per_channel(image, p, s, "gamma", s.p_gamma, gamma_rows, invert=False)
    image, label = _mirror(image, label, p, s)
    if s.masked_channels:
        channels = list(s.masked_channels)
        image[:, channels] = image[:, channels].masked_fill(label[:, :1] < 0, 0.0)
    return image, label.masked_fill(label == OUTSIDE, 0)


def deep_supervision_scales(
    pool_op_kernel_sizes: Sequence[Sequence[int]],
) -> list[tuple[float, ...]]:
    """nnU-Net's deep-supervision scales: ``1 / cumprod(pool_op_kernel_sizes)`` without the last."""
    scales, current = [], [1.0] * len(pool_op_kernel_sizes[0])
    for pool in pool_op_kernel_sizes:
        current = [c / k for c, k in zip(current, pool, strict=True)]
        scales.append(tuple(current))
    return scales[:-1]


def deep_supervision_targets(
    label: torch.Tensor, scales: Sequence[Sequence[float]]
) -> list[torch.Tensor]:
    """One label per deep-supervision scale, nearest-exact downsampling (nnU-Net's).

    ``label (B, 1, *spatial)`` -> ``[(B, 1, *round(spatial * scale)) for scale in scales]``;
    a scale of all ones returns ``label`` itself.
    """
    targets, as_float = [], None
    for scale in scales:
        if all(f == 1 for f in scale):
            targets.append(label)
            continue
        as_float = label.float() if as_float is None else as_float
        size = [round(n * f) for n, f in zip(label.shape[2:], scale, strict=True)]
        targets.append(F.interpolate(as_float, size=size, mode="nearest-exact").to(label.dtype))
    return targets
