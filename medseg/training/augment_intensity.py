"""The intensity stages of nnU-Net v2's training augmentation, batched on torch tensors.

Gaussian noise, Gaussian blur, multiplicative brightness, contrast, simulated low
resolution and gamma, each on a whole ``(B, C, *spatial)`` batch; which samples and
channels are hit, and by how much, comes from the block of uniforms ``p`` that
:func:`medseg.training.augment.augment` draws once per batch (see there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from medseg.training.augment import AugmentSettings

Range = tuple[float, float]
_EPS = 1e-7


def uniform(u: torch.Tensor, bounds: Range) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def bg_contrast(pick: torch.Tensor, u: torch.Tensor, bounds: Range) -> torch.Tensor:
    """nnU-Net's BGContrast: p=0.5 from ``(low, 1)`` if low < 1, else ``(max(low, 1), high)``."""
    below = (pick < 0.5) & (bounds[0] < 1)
    lo = torch.where(below, bounds[0], max(bounds[0], 1.0))
    hi = torch.where(below, 1.0, bounds[1])
    return lo + (hi - lo) * u


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (``cuda`` and ``cuda:0`` count as one on device 0)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def noise(image: torch.Tensor, p: dict, s: AugmentSettings, generator) -> torch.Tensor:
    """Additive Gaussian noise, one standard deviation per sample, shared by its channels."""
    on = (p["noise_on"] < s.p_noise).nonzero()[:, 0]
    if on.numel() == 0:
        return image
    if not same_device(generator.device, image.device):
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator(device=image.device).manual_seed(seed)
    shape = (on.numel(), *image.shape[1:])
    field = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype)
    sigma = uniform(p["noise_sigma"][on], s.noise_variance).to(image.device, image.dtype)
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


def blur(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Gaussian blur, own sigma per channel and axis (nnU-Net blurs all axes, also in dummy 2D)."""
    rows = _rows(p["blur_on"] < s.p_blur, p["blur_chan"] < s.p_blur_per_channel)
    if rows.numel() == 0:
        return image
    dim = image.ndim - 2
    sigma = uniform(p["blur_sigma"].reshape(-1, 3)[rows, :dim], s.blur_sigma)
    flat, idx = image.view(-1, *image.shape[2:]), rows.to(image.device)
    x = flat[idx]
    for axis in range(dim):
        x = _blur_axis(x, _gaussian_kernels(sigma[:, axis]), axis)
    flat.index_copy_(0, idx, x)
    return image


def brightness(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Multiply each channel of the chosen samples by its own BGContrast factor."""
    on = p["brightness_on"] < s.p_brightness
    if not on.any():
        return image
    factor = bg_contrast(p["brightness_pick"], p["brightness"], s.brightness)
    factor = torch.where(on[:, None], factor, 1.0).to(image.device, image.dtype)
    return image.mul_(factor.view(*factor.shape, *[1] * (image.ndim - 2)))


def contrast_rows(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale rows ``(N, V)`` about their mean, clipped to their original range."""
    mean = x.mean(dim=1, keepdim=True)
    lo, hi = x.aminmax(dim=1, keepdim=True)
    return ((x - mean) * factor + mean).clamp(lo, hi)


def gamma_rows(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """Gamma on rows ``(N, V)`` rescaled to [0, 1], keeping each row's mean and std."""
    x = -x if invert else x
    mean, std = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)
    lo, hi = x.aminmax(dim=1, keepdim=True)
    span = hi - lo
    x = ((x - lo) / span.clamp(min=_EPS)).pow(gamma) * span + lo
    x = (x - x.mean(dim=1, keepdim=True)) * (std / x.std(dim=1, keepdim=True).clamp(min=_EPS))
    x = x + mean
    return -x if invert else x


def per_channel(image, p: dict, s: AugmentSettings, stage: str, p_sample: float, fn, **kw):
    """Apply ``fn(rows, factor)`` to every channel of the chosen samples (BGContrast factor)."""
    rows = _rows(p[f"{stage}_on"] < p_sample, torch.ones_like(p[stage], dtype=torch.bool))
    if rows.numel() == 0:
        return image
    factor = bg_contrast(p[f"{stage}_pick"], p[stage], getattr(s, stage.split("_")[0]))
    factor = factor.flatten()[rows, None].to(image.device, image.dtype)
    flat, idx = image.view(image.shape[0] * image.shape[1], -1), rows.to(image.device)
    flat.index_copy_(0, idx, fn(flat[idx], factor, **kw))
    return image


def lowres(image: torch.Tensor, p: dict, s: AugmentSettings) -> torch.Tensor:
    """Downsample (nearest-exact) and upsample back ((bi/tri)linear), one scale per channel."""
    rows = _rows(p["lowres_on"] < s.p_lowres, p["lowres_chan"] < s.p_lowres_per_channel)
    shape = image.shape[2:]
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    scales = uniform(p["lowres"].flatten()[rows], s.lowres_scale).tolist()
    flat = image.view(-1, *shape)
    for row, scale in zip(rows.tolist(), scales, strict=True):
        small = [
            n if (a == 0 and s.dummy_2d) else max(1, round(n * scale)) for a, n in enumerate(shape)
        ]
        low = F.interpolate(flat[row][None, None], size=small, mode="nearest-exact")
        flat[row] = F.interpolate(low, size=list(shape), mode=mode, align_corners=False)[0, 0]
    return image
