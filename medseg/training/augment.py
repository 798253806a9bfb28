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
from medseg.preprocessing.crop import OUTSIDE

#: nnU-Net's anisotropy threshold for dummy-2D augmentation of 3D patches.
ANISO_THRESHOLD = 3.0
#: The scaling range nnU-Net uses to size the source patch (not the augmentation's own range).
SOURCE_SCALING = (0.85, 1.25)
_EPS = 1e-7
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
        base = {"dummy_2d": False, "mirror_axes": (0, 1)}
    elif len(patch) == 3:
        dummy = max(patch) / patch[0] > ANISO_THRESHOLD
        limit = 180.0 if dummy else 30.0
        base = {"dummy_2d": dummy, "mirror_axes": (0, 1, 2)}
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


def _uniform(u: torch.Tensor, bounds: Range) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _bg_contrast(pick: torch.Tensor, u: torch.Tensor, bounds: Range) -> torch.Tensor:
    """nnU-Net's BGContrast: p=0.5 from ``(low, 1)`` if low < 1, else ``(max(low, 1), high)``."""
    below = (pick < 0.5) & (bounds[0] < 1)
    lo = torch.where(below, bounds[0], max(bounds[0], 1.0))
    hi = torch.where(below, 1.0, bounds[1])
    return lo + (hi - lo) * u


def _affines(p: dict, s: AugmentSettings, dim: int) -> torch.Tensor:
    """Output-to-source matrices ``(B, dim, dim)`` (voxel units, about the patch centres)."""
    on_rot, on_scale = p["rot_on"] < s.p_rotation, p["scale_on"] < s.p_scaling
    angles = torch.where(on_rot[:, None], _uniform(p["angles"], s.rotation), 0.0)
    scale = torch.where(on_scale, _uniform(p["scale"], s.scaling), 1.0)
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
    out_label[idx] = warped_label.view(len(idx), 1, *patch)
    return out_image, out_label


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (``cuda`` and ``cuda:0`` count as one on device 0)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _noise(image: torch.Tensor, p: dict, s: AugmentSettings, generator) -> torch.Tensor:
    """Additive Gaussian noise, one standard deviation per sample, shared by its channels."""
    on = (p["noise_on"] < s.p_noise).nonzero()[:, 0]
    if on.numel() == 0:
        return image
    if not _same_device(generator.device, image.device):
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator(device=image.device).manual_seed(seed)
    shape = (on.numel(), *image.shape[1:])
    field = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype)
    sigma = _uniform(p["noise_sigma"][on], s.noise_variance).to(image.device, image.dtype)
    field *= sigma.view(-1, *[1] * (image.ndim - 1))
    return image.index_add_(0, on.to(image.device), field)


def _gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """Normalised 1D kernels ``(N, K)``, each of batchgeneratorsv2's size (odd, about 6 sigma)."""
    x = sigma * 6 + 0.5
    r = torch.round(x)
    size = torch.where(r % 2 == 1, r, torch.where(x - r >= 0, r + 1, r - 1))
    width = int(size.max()) // 2
    offsets = torch.arange(-width, width + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    w = w * (offsets.abs() <= (size[:, None] - 1) / 2)
    return w / w.sum(dim=1, keepdim=True)


def _blur_axis(x: torch.Tensor, kernels: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-row separable convolution of ``x (N, *spatial)`` along ``axis``, reflect padding."""
    width, dim = kernels.shape[1] // 2, x.ndim - 1
    pad = [0] * (2 * dim)
    pad[2 * (dim - 1 - axis)], pad[2 * (dim - 1 - axis) + 1] = width, width
    padded = F.pad(x[None], pad, mode="reflect")[0]
    w = kernels.to(x.device, x.dtype).view(-1, kernels.shape[1], *[1] * dim)
    out = torch.zeros_like(x)
    for k in range(kernels.shape[1]):
        out.addcmul_(w[:, k], padded.narrow(axis + 1, k, x.shape[axis + 1]))
    return out


def _rows(sample_on: torch.Tensor, channel_on: torch.Tensor) -> torch.Tensor:
    """Flat ``b * C + c`` indices of the channels a stage changes: ``(B,)`` and ``(B, C)`` coins."""
    return (sample_on[:, None] & channel_on).flatten().nonzero()[:, 0]


def _blur(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Gaussian blur, own sigma per channel and axis (nnU-Net blurs all axes, also in dummy 2D)."""
    rows = _rows(p["blur_on"] < s.p_blur, p["blur_chan"] < s.p_blur_per_channel)
    if rows.numel() == 0:
        return image
    dim = image.ndim - 2
    sigma = _uniform(p["blur_sigma"].reshape(-1, 3)[rows, :dim], s.blur_sigma)
    flat, idx = image.view(-1, *image.shape[2:]), rows.to(image.device)
    x = flat[idx]
    for axis in range(dim):
        x = _blur_axis(x, _gaussian_kernels(sigma[:, axis]), axis)
    flat.index_copy_(0, idx, x)
    return image


def _brightness(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Multiply each channel of the chosen samples by its own BGContrast factor."""
    on = p["brightness_on"] < s.p_brightness
    if not on.any():
        return image
    factor = _bg_contrast(p["brightness_pick"], p["brightness"], s.brightness)
    factor = torch.where(on[:, None], factor, 1.0).to(image.device, image.dtype)
    return image.mul_(factor.view(*factor.shape, *[1] * (image.ndim - 2)))


def _contrast_rows(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale rows ``(N, V)`` about their mean, clipped to their original range."""
    mean = x.mean(dim=1, keepdim=True)
    lo, hi = x.aminmax(dim=1, keepdim=True)
    return ((x - mean) * factor + mean).clamp(lo, hi)


def _gamma_rows(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """Gamma on rows ``(N, V)`` rescaled to [0, 1], keeping each row's mean and std."""
    x = -x if invert else x
    mean, std = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)
    lo, hi = x.aminmax(dim=1, keepdim=True)
    span = hi - lo
    x = ((x - lo) / span.clamp(min=_EPS)).pow(gamma) * span + lo
    x = (x - x.mean(dim=1, keepdim=True)) * (std / x.std(dim=1, keepdim=True).clamp(min=_EPS))
    x = x + mean
    return -x if invert else x


def _per_channel(image, p: dict, s: AugmentSettings, stage: str, p_sample: float, fn, **kw):
    """Apply ``fn(rows, factor)`` to every channel of the chosen samples (BGContrast factor)."""
    rows = _rows(p[f"{stage}_on"] < p_sample, torch.ones_like(p[stage], dtype=torch.bool))
    if rows.numel() == 0:
        return image
    factor = _bg_contrast(p[f"{stage}_pick"], p[stage], getattr(s, stage.split("_")[0]))
    factor = factor.flatten()[rows, None].to(image.device, image.dtype)
    flat, idx = image.view(image.shape[0] * image.shape[1], -1), rows.to(image.device)
    flat.index_copy_(0, idx, fn(flat[idx], factor, **kw))
    return image


def _lowres(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Downsample (nearest-exact) and upsample back ((bi/tri)linear), one scale per channel."""
    rows = _rows(p["lowres_on"] < s.p_lowres, p["lowres_chan"] < s.p_lowres_per_channel)
    shape = image.shape[2:]
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    scales = _uniform(p["lowres"].flatten()[rows], s.lowres_scale).tolist()
    flat = image.view(-1, *shape)
    for row, scale in zip(rows.tolist(), scales, strict=True):
        small = [
            n if (a == 0 and s.dummy_2d) else max(1, round(n * scale)) for a, n in enumerate(shape)
        ]
        low = F.interpolate(flat[row][None, None], size=small, mode="nearest-exact")
        flat[row] = F.interpolate(low, size=list(shape), mode=mode, align_corners=False)[0, 0]
    return image


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
    if dim not in (2, 3) or label.ndim != image.ndim or label.shape[1] != 1:
        raise AugmentError(
            f"expected image (B, C, *spatial) and label (B, 1, *spatial) with 2 or 3 spatial axes, "
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
    if generator.device.type != "cpu" and not _same_device(generator.device, image.device):
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
        ``(B, 1, *source)`` integer; -1 marks outside / padding.
    patch_size : sequence of int
        Output spatial size.
    settings : AugmentSettings
        Probabilities and ranges (see :func:`settings_for_patch`).
    generator : torch.Generator
        On the CPU or on the tensors' device; the only source of randomness.

    Returns
    -------
    image, label : torch.Tensor
        ``(B, C, *patch_size)`` and ``(B, 1, *patch_size)`` (same dtypes), label -1 -> 0.
        The inputs are not modified.
    """
    patch = [int(v) for v in patch_size]
    _check(image, label, patch, settings, generator)
    p = _draw(settings, image.shape[0], image.shape[1], generator)
    s = settings
    image, label = _spatial(image, label, patch, s, p)
    image = _blur(_noise(image, p, s, generator), p, s)
    image = _per_channel(_brightness(image, p, s), p, s, "contrast", s.p_contrast, _contrast_rows)
    image = _lowres(image, p, s)
    image = _per_channel(
        image, p, s, "gamma_inverted", s.p_gamma_inverted, _gamma_rows, invert=True
    )
    image = _per_channel(image, p, s, "gamma", s.p_gamma, _gamma_rows, invert=False)
    image, label = _mirror(image, label, p, s)
    if s.masked_channels:
        channels = list(s.masked_channels)
        image[:, channels] = image[:, channels].masked_fill(label < 0, 0.0)
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
