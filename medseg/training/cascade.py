"""Inputs of the cascade's second stage: the previous stage's segmentation as one-hot channels.

nnU-Net v2 (``3d_cascade_fullres``) feeds the network the image plus one channel per
foreground label of the previous stage's segmentation. During training it then corrupts
these channels, per sample and after all other augmentations (and after label -1 -> 0),
with two batchgeneratorsv2 transforms that this module reimplements:

1. with probability ``p_binary``: visit the one-hot channels in a random order; each is
   picked with probability ``p_binary_per_label``; a picked channel gets one operator drawn
   uniformly from (dilation, erosion, closing, opening) with a ball (3D) or disk (2D) of a
   radius drawn uniformly from ``strel_radius`` (``skimage.morphology.ball/disk`` with the
   float radius); voxels the operator adds to a channel are removed from all other one-hot
   channels. Channels are processed one after the other, each on the current state.
2. with probability ``p_remove``: visit the channels in a random order; each is picked with
   probability ``p_remove_per_label``; in a picked, non-empty channel, the connected
   components (full connectivity) smaller than ``max_component_fraction`` of the patch's
   voxels are candidates, and one of them, drawn uniformly, is set to 0 (nnU-Net's
   ``fill_with_other_class_p`` is 0, so nothing is filled in).

Border behaviour (equal to batchgeneratorsv2's ``binary_*_torch``): dilation is a
convolution with the footprint over a zero-padded input (``padding='same'``; for an even
footprint size ``k`` the padding is ``(k - 1) // 2`` before and the rest after), thresholded
at > 0; erosion is ``not dilation(not x)``, so voxels outside the patch count as foreground
and objects are not eroded from the patch border. Opening and closing are compositions.
Non-integer radii give footprints that are even-sized or not centred (``disk`` in
particular); the operators then shift the mask by part of a voxel, so opening is not always
anti-extensive and closing not always extensive, exactly as in nnU-Net.

Layouts: one-hot tensors are ``(B, F, X, Y)`` or ``(B, F, X, Y, Z)`` in array-axis order,
``F`` the number of foreground labels. The morphology runs on the tensor's device: a direct
``conv2d/conv3d`` for small footprints on small patches, else a correlation through
``torch.fft.rfftn`` (as batchgeneratorsv2's ``fft_conv``; same result, voxel for voxel);
component labelling runs on the CPU (scipy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.fft import next_fast_len
from skimage.morphology import ball, disk

from medseg.core.errors import AugmentError

#: The operators in batchgeneratorsv2's order (``ApplyRandomBinaryOperatorTransform``).
OPERATORS = ("dilation", "erosion", "closing", "opening")
#: Dilation goes through the FFT when the footprint has more voxels than ``FFT_MIN_KERNEL``
#: or the mask more than ``FFT_MIN_PATCH`` (measured on CPU, one thread: the direct conv wins
#: only for 3x3x3 balls up to 64^3 and disks up to 5x5 on up to 512^2 patches).
FFT_MIN_KERNEL = 27
FFT_MIN_PATCH = 2**18


@dataclass(frozen=True)
class CascadeAugmentSettings:
    """Probabilities and ranges of the previous-stage corruption (defaults: nnUNetTrainer).

    Parameters
    ----------
    p_binary : float
        Per sample, probability of the random binary operators.
    strel_radius : tuple of float
        ``(low, high)`` of the uniform radius of the ball/disk, in voxels; ``low >= 1``.
    p_binary_per_label : float
        Per one-hot channel, probability of an operator once the sample is picked.
    p_remove : float
        Per sample, probability of the connected-component removal.
    p_remove_per_label : float
        Per one-hot channel, probability of a removal once the sample is picked.
    max_component_fraction : float
        Components covering this fraction of the patch's voxels or more are never removed.
    """

    p_binary: float = 0.4
    strel_radius: tuple[float, float] = (1.0, 8.0)
    p_binary_per_label: float = 0.5
    p_remove: float = 0.2
    p_remove_per_label: float = 0.5
    max_component_fraction: float = 0.15

    def __post_init__(self) -> None:
        names = ("p_binary", "p_binary_per_label", "p_remove", "p_remove_per_label")
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AugmentError(f"{name} = {value!r}: a probability must lie in [0, 1]")
        radius = tuple(self.strel_radius)
        if len(radius) != 2 or not all(math.isfinite(r) for r in radius):
            raise AugmentError(f"strel_radius = {radius!r}: give two finite radii (low, high)")
        if not 1.0 <= radius[0] <= radius[1]:
            raise AugmentError(
                f"strel_radius = {radius!r}: need 1 <= low <= high (radii below 1 give an "
                "empty ball)"
            )
        if not 0.0 < self.max_component_fraction <= 1.0:
            raise AugmentError(
                f"max_component_fraction = {self.max_component_fraction!r}: must lie in (0, 1]"
            )


@dataclass(frozen=True)
class BinaryOperation:
    """One drawn operator: ``operator`` (one of :data:`OPERATORS`) on one-hot ``channel``."""

    channel: int
    operator: str
    radius: float


def previous_onehot(
    previous: torch.Tensor, foreground: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot channels of the previous stage's segmentation.

    Parameters
    ----------
    previous : torch.Tensor
        ``(B, 1, *S)`` integer label map, ``S`` = ``(X, Y)`` or ``(X, Y, Z)``.
    foreground : sequence of int
        The foreground labels, in channel order.
    dtype : torch.dtype
        Output dtype.

    Returns
    -------
    torch.Tensor
        ``(B, F, *S)`` with channel ``i`` equal to 1 where ``previous == foreground[i]``;
        values not in ``foreground`` (0, -1, ...) give all zeros. Same device as ``previous``.
    """
    if previous.ndim not in (4, 5) or previous.shape[1] != 1:
        raise AugmentError(
            f"previous segmentation of shape {tuple(previous.shape)}: expected (B, 1, X, Y) "
            "or (B, 1, X, Y, Z)"
        )
    labels = [int(label) for label in foreground]
    out = torch.zeros(
        (previous.shape[0], len(labels), *previous.shape[2:]), dtype=dtype, device=previous.device
    )
    for i, label in enumerate(labels):
        out[:, i] = (previous[:, 0] == label).to(dtype)
    return out


def footprint(radius: float, ndim: int) -> torch.Tensor:
    """``skimage.morphology.ball`` (``ndim`` 3) or ``disk`` (``ndim`` 2) of ``radius``, as bool."""
    if ndim not in (2, 3):
        raise AugmentError(f"footprint for {ndim} dimensions: only 2 (disk) and 3 (ball)")
    make = disk if ndim == 2 else ball
    return torch.from_numpy(make(float(radius), dtype=bool))


def _fft_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``'valid'`` cross-correlation of ``x`` with ``kernel`` (same ndim) through real FFTs."""
    size = [next_fast_len(n) for n in x.shape]  # zero-padded past n: no circular wrap-around
    dims = tuple(range(x.ndim))
    spectrum = torch.fft.rfftn(x, s=size, dim=dims)
    spectrum *= torch.fft.rfftn(kernel, s=size, dim=dims).conj()
    out = torch.fft.irfftn(spectrum, s=size, dim=dims)
    return out[tuple(slice(0, n - k + 1) for n, k in zip(x.shape, kernel.shape, strict=True))]


def binary_dilation(
    mask: torch.Tensor, strel: torch.Tensor, fft: bool | None = None
) -> torch.Tensor:
    """Dilation of a ``(X, Y)`` or ``(X, Y, Z)`` mask by ``strel``, zero outside the mask.

    The footprint is used as a cross-correlation kernel (no flip), padded ``'same'`` with
    ``(k - 1) // 2`` zeros before and the rest after, as batchgeneratorsv2 does. ``fft``
    forces the FFT (True) or the direct convolution (False); None picks the faster one
    (:data:`FFT_MIN_KERNEL`, :data:`FFT_MIN_PATCH`). Both give the same mask.
    """
    if mask.ndim not in (2, 3) or strel.ndim != mask.ndim:
        raise AugmentError(
            f"mask of shape {tuple(mask.shape)} and footprint of shape {tuple(strel.shape)}: "
            "need a 2D or 3D mask and a footprint with as many dimensions"
        )
    kernel = strel.to(device=mask.device, dtype=torch.float32)
    pad: list[int] = []
    for k in reversed(strel.shape):
        pad += [(k - 1) // 2, k - 1 - (k - 1) // 2]
    x = F.pad(mask.to(torch.float32), pad)
    if fft is None:
        fft = strel.numel() > FFT_MIN_KERNEL or mask.numel() > FFT_MIN_PATCH
    if fft:
        counts = _fft_correlate(x, kernel)
    else:
        conv = F.conv2d if mask.ndim == 2 else F.conv3d
        counts = conv(x[None, None], kernel[None, None])[0, 0]
    # 0/1 inputs: the counts are integers, exact for the conv (also in TF32) and within far
    # less than 0.5 for the FFT, so > 0.5 is batchgeneratorsv2's round(...) > 0.
    return counts > 0.5


def binary_erosion(mask: torch.Tensor, strel: torch.Tensor) -> torch.Tensor:
    """``not dilation(not mask)``: voxels outside the patch count as foreground."""
    return ~binary_dilation(~mask.bool(), strel)


def binary_closing(mask: torch.Tensor, strel: torch.Tensor) -> torch.Tensor:
    """Erosion of the dilation (both as defined here)."""
    return binary_erosion(binary_dilation(mask, strel), strel)


def binary_opening(mask: torch.Tensor, strel: torch.Tensor) -> torch.Tensor:
    """Dilation of the erosion (both as defined here)."""
    return binary_dilation(binary_erosion(mask, strel), strel)


_APPLY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dilation": binary_dilation,
    "erosion": binary_erosion,
    "closing": binary_closing,
    "opening": binary_opening,
}


def _uniforms(n: int, generator: torch.Generator) -> list[float]:
    """``n`` uniforms in [0, 1) from ``generator`` (on its own device), as Python floats."""
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).tolist()


def _picked_channels(n: int, p: float, generator: torch.Generator) -> list[int]:
    """Channels ``0..n-1`` in a random order, each kept with probability ``p``."""
    order = torch.randperm(n, generator=generator, device=generator.device).tolist()
    coins = _uniforms(n, generator)
    return [c for c, u in zip(order, coins, strict=True) if u < p]


def draw_binary_operations(
    n_channels: int, settings: CascadeAugmentSettings, generator: torch.Generator
) -> list[BinaryOperation]:
    """The operators of one picked sample, in the order they are applied."""
    channels = _picked_channels(n_channels, settings.p_binary_per_label, generator)
    low, high = settings.strel_radius
    ops = torch.randint(
        len(OPERATORS), (len(channels),), generator=generator, device=generator.device
    ).tolist()
    radii = [low + (high - low) * u for u in _uniforms(len(channels), generator)]
    return [
        BinaryOperation(c, OPERATORS[o], r) for c, o, r in zip(channels, ops, radii, strict=True)
    ]


def apply_binary_operations(
    sample: torch.Tensor, operations: Sequence[BinaryOperation]
) -> torch.Tensor:
    """Apply ``operations`` one after the other to a ``(F, *S)`` one-hot sample (new tensor).

    Voxels an operator adds to its channel are set to 0 in every other channel.
    """
    out = sample.clone()
    for op in operations:
        before = out[op.channel].bool()
        after = _APPLY[op.operator](before, footprint(op.radius, before.ndim))
        added = after & ~before
        others = [c for c in range(out.shape[0]) if c != op.channel]
        if others:
            out[others] = out[others].masked_fill(added, 0)
        out[op.channel] = after.to(out.dtype)
    return out


def removable_components(mask: np.ndarray, max_fraction: float) -> tuple[np.ndarray, list[int]]:
    """Label ``mask`` (full connectivity); return the labels and the ids of small components.

    A component is a candidate when its voxel count is strictly below ``max_fraction`` times
    the number of voxels of ``mask``.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    limit = mask.size * max_fraction
    return labels, [i + 1 for i, size in enumerate(sizes) if size < limit]


def remove_random_components(
    sample: torch.Tensor, settings: CascadeAugmentSettings, generator: torch.Generator
) -> torch.Tensor:
    """Remove one random small component from randomly picked channels of a ``(F, *S)`` sample."""
    out = sample.clone()
    for channel in _picked_channels(out.shape[0], settings.p_remove_per_label, generator):
        mask = out[channel].bool().cpu().numpy()
        if not mask.any():
            continue
        labels, candidates = removable_components(mask, settings.max_component_fraction)
        if not candidates:
            continue
        pick = torch.randint(len(candidates), (1,), generator=generator, device=generator.device)
        chosen = candidates[int(pick)]
        drop = torch.from_numpy(labels == chosen).to(out.device)
        out[channel] = out[channel].masked_fill(drop, 0)
    return out


def augment_previous(
    onehot: torch.Tensor, settings: CascadeAugmentSettings, generator: torch.Generator
) -> torch.Tensor:
    """nnU-Net's corruption of the previous stage's one-hot channels, per sample.

    Parameters
    ----------
    onehot : torch.Tensor
        ``(B, F, X, Y)`` (disks) or ``(B, F, X, Y, Z)`` (balls), 0/1 values, any float or
        integer dtype, on the CPU or a GPU. Not modified.
    settings : CascadeAugmentSettings
        Probabilities and ranges.
    generator : torch.Generator
        Source of all randomness (normally on the CPU; a generator on another device draws
        there). The same generator state gives the same output.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape, dtype and device: random binary operators (sample
        picked with ``p_binary``), then random component removal (``p_remove``).
    """
    if onehot.ndim not in (4, 5):
        raise AugmentError(
            f"one-hot tensor of shape {tuple(onehot.shape)}: expected (B, F, X, Y) or "
            "(B, F, X, Y, Z)"
        )
    if not isinstance(generator, torch.Generator):
        raise AugmentError(f"generator of type {type(generator).__name__}: pass a torch.Generator")
    samples = []
    for sample in onehot:
        if _uniforms(1, generator)[0] < settings.p_binary:
            operations = draw_binary_operations(sample.shape[0], settings, generator)
            sample = apply_binary_operations(sample, operations)
        if _uniforms(1, generator)[0] < settings.p_remove:
            sample = remove_random_components(sample, settings, generator)
        samples.append(sample)
    if not samples:
        return onehot.clone()
    return torch.stack(samples)
