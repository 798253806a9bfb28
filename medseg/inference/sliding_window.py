"""Sliding-window prediction of a whole preprocessed case, as nnU-Net v2 does it.

Tiles of the patch size are predicted (optionally averaged over mirrored copies) and
blended with a Gaussian importance map ``g``: ``logits = sum_t(g * logits_t) / sum_t(g)``.
Softmax comes after blending, once (nnU-Net averages logits, then applies
``LabelManager.apply_inference_nonlin``).

Follows nnU-Net v2 (2.8.1): tile placement (:func:`tile_starts`, evenly spread, first at
0, last at the border), its Gaussian (:func:`gaussian_importance`), mirroring over all
``2**k`` flips of the allowed axes, zero-padding of images smaller than the patch (content
centred, cropped off again), slice-by-slice prediction for a 2D patch on a 3D image,
autocast on CUDA only, accumulation on the device with a fallback to CPU accumulators on
out-of-memory.

Departs from it in one respect: accumulators and importance map are float32 (nnU-Net
keeps them in float16, map scaled by 10, to save GPU memory; that costs it about 1e-3 in
the logits, and up to about 0.5 near the image corners, where tile weights underflow).
Against nnU-Net with float32 accumulators the logits agree to about 1e-6.

MONAI is not used: ``sliding_window_inference`` steps by ``int(patch * (1 - overlap))``
and clips the last tile to the border (size 110, patch 64: starts 0, 32, 46; nnU-Net: 0,
23, 46), and ``compute_importance_map`` centres its Gaussian at ``(patch - 1) / 2``, not
``patch // 2``, and clamps it at 1e-3. Neither reproduces nnU-Net, and parity comes first.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseg.core.errors import InferenceError

logger = logging.getLogger(__name__)

Tile = tuple[slice, ...]
"""Where one tile lies in the spatial axes of the (padded) image, one slice per axis."""

Progress = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every batch of tiles."""


def tile_starts(
    image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5
) -> list[list[int]]:
    """Start index of every tile along each axis, nnU-Net's placement rule.

    Along an axis of ``size`` voxels, a patch of ``patch`` voxels and a step of
    ``step * patch`` at most, ``n = ceil((size - patch) / (step * patch)) + 1`` tiles are
    spread evenly: the first starts at 0, the last ends at ``size``, and the starts in
    between are ``round(i * (size - patch) / (n - 1))`` (half to even).

    Parameters
    ----------
    image_size : sequence of int
        Spatial shape of the image, one entry per axis.
    patch_size : sequence of int
        Spatial shape of a tile, same number of axes.
    step : float
        Largest distance between tile starts as a fraction of the patch, in (0, 1].

    Returns
    -------
    list of list of int
        Per axis, the starts in ascending order; ``[0]`` for an axis no longer than the
        patch (padded before tiling; nnU-Net's helper, never called so, may give ``[]``).
    """
    if not 0 < step <= 1:
        raise InferenceError(f"tile step must be in (0, 1] (fraction of the patch), got {step}")
    if len(image_size) != len(patch_size):
        raise InferenceError(
            f"image size {tuple(image_size)} and patch size {tuple(patch_size)} "
            "must have the same number of axes"
        )
    starts = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if patch < 1:
            raise InferenceError(f"patch size entries must be >= 1, got {tuple(patch_size)}")
        free = int(size) - int(patch)
        if free <= 0:
            starts.append([0])
            continue
        count = math.ceil(free / (patch * step)) + 1
        stride = free / (count - 1)
        starts.append([round(stride * i) for i in range(count)])
    return starts


def gaussian_importance(
    patch_size: Sequence[int],
    sigma_scale: float = 1 / 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """nnU-Net's Gaussian importance map for blending tiles.

    Equals ``nnunetv2.inference.sliding_window_prediction.compute_gaussian`` with
    ``value_scaling_factor=1``: a Gaussian filter (scipy's sampled kernel, truncated at
    4 sigma, zero outside) applied to a unit impulse at ``patch // 2``, scaled to a
    maximum of 1, computed in float64. After the cast to ``dtype``, zero weights are
    replaced by the smallest non-zero weight, so every voxel of a tile counts.

    Parameters
    ----------
    patch_size : sequence of int
        Spatial shape of a tile.
    sigma_scale : float
        Standard deviation per axis as a fraction of the patch size.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        Shape ``patch_size``, maximum 1 at ``patch // 2``, strictly positive.
    """
    if sigma_scale <= 0:
        raise InferenceError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = torch.ones((), dtype=torch.float64)
    for patch in patch_size:
        sigma = patch * sigma_scale
        radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's kernel radius for truncate=4
        offset = torch.arange(patch, dtype=torch.float64) - patch // 2
        axis = torch.exp(-0.5 * (offset / sigma) ** 2)
        axis = torch.where(offset.abs() <= radius, axis, torch.zeros_like(axis))
        weights = weights[..., None] * axis
    weights = (weights / weights.max()).to(device=device, dtype=dtype)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = weights[~zero].min()
    return weights


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, Tile]:
    """Zero-pad the last ``len(patch_size)`` axes up to the patch, content centred.

    Parameters
    ----------
    image : torch.Tensor
        ``(C, *spatial)``; only the trailing ``len(patch_size)`` spatial axes are padded.
    patch_size : sequence of int
        Smallest spatial shape wanted. Axes already as long are left alone (never cropped).

    Returns
    -------
    padded : torch.Tensor
        ``(C, *padded_spatial)``; ``image`` itself when no axis needs padding. Of the
        padding of an axis, ``pad // 2`` goes below and the rest above (nnU-Net's rule).
    crop : Tile
        One slice per spatial axis: ``padded[(slice(None), *crop)]`` is ``image`` again.
    """
    spatial = image.shape[1:]
    lead = len(spatial) - len(patch_size)
    below = [0] * lead + [
        max(p - s, 0) // 2 for s, p in zip(spatial[lead:], patch_size, strict=True)
    ]
    above = [0] * lead + [
        max(p - s, 0) - b for s, p, b in zip(spatial[lead:], patch_size, below[lead:], strict=True)
    ]
    crop = tuple(slice(b, b + s) for b, s in zip(below, spatial, strict=True))
    if not any(below) and not any(above):
        return image, crop
    pairs = [
        amount for axis in reversed(range(len(spatial))) for amount in (below[axis], above[axis])
    ]
    return F.pad(image, pairs, mode="constant", value=0.0), crop


def tile_slices(
    image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5
) -> list[Tile]:
    """All tiles of an image at least as large as the patch, in nnU-Net's order.

    Parameters
    ----------
    image_size : sequence of int
        Spatial shape of the (padded) image.
    patch_size : sequence of int
        Spatial shape of a tile: as many axes as the image, or one fewer (a 2D patch on a
        3D image: one slice of thickness 1 per index of axis 0, tiled in-plane).
    step : float
        See :func:`tile_starts`.

    Returns
    -------
    list of Tile
        In C order (axis 0 slowest), as nnU-Net iterates them.
    """
    lead = len(image_size) - len(patch_size)
    if lead not in (0, 1):
        raise InferenceError(
            f"patch size {tuple(patch_size)} must have as many axes as the image "
            f"{tuple(image_size)} or one fewer (2D patches on a 3D image)"
        )
    starts = tile_starts(image_size[lead:], patch_size, step)
    per_axis = [[slice(i, i + 1) for i in range(image_size[0])]] if lead else []
    per_axis += [
        [slice(s, s + p) for s in axis] for axis, p in zip(starts, patch_size, strict=True)
    ]
    return list(itertools.product(*per_axis))


def flip_sets(mirror_axes: Sequence[int], spatial_rank: int) -> list[tuple[int, ...]]:
    """Tensor dims to flip for each mirrored copy, nnU-Net's order, un-flipped excluded.

    ``mirror_axes`` count spatial axes of the patch (0 is the first); the returned dims
    count axes of a ``(B, C, *patch)`` batch. Non-empty subsets come by size, then in
    ``itertools.combinations`` order: ``(0, 1)`` gives ``[(2,), (3,), (2, 3)]``.
    """
    axes = sorted(set(mirror_axes))
    if len(axes) != len(mirror_axes) or any(not 0 <= a < spatial_rank for a in axes):
        raise InferenceError(
            f"mirror axes {tuple(mirror_axes)} must be distinct spatial axes of the "
            f"{spatial_rank}D patch, i.e. in 0..{spatial_rank - 1}"
        )
    dims = [a + 2 for a in mirror_axes]
    return [c for k in range(1, len(dims) + 1) for c in itertools.combinations(dims, k)]


@dataclass(frozen=True)
class _Run:
    """Settings of one sliding-window pass (internal: keeps signatures short)."""

    patch_size: tuple[int, ...]
    flips: list[tuple[int, ...]]
    tile_batch: int
    device: torch.device
    progress: Progress | None
    blend: str = "float32"


#: How tiles are blended: exactly in float32, or in float16 as nnU-Net v2 does.
BLENDS = ("float32", "nnunet")
#: nnU-Net scales its float16 Gaussian to this maximum (its value_scaling_factor).
NNUNET_GAUSSIAN_MAX = 10.0


def blend_weights(patch_size, blend: str, device) -> torch.Tensor:
    """The tile weight map and, by its dtype, the accumulators' precision.

    ``float32``: the Gaussian, maximum 1, float32. ``nnunet``: nnU-Net v2's: maximum
    10, cast to float16, weights that underflow to 0 replaced by the smallest left.
    In float16 the far tile corners' weights underflow, so near image edges nnU-Net's
    blend is coarse; ``float32`` is the exact weighted mean, ``nnunet`` reproduces
    nnU-Net's labels for its own models.
    """
    if blend not in BLENDS:
        raise InferenceError(f"unknown blend {blend!r}; use one of {BLENDS}")
    weights = gaussian_importance(patch_size, dtype=torch.float64, device=device)
    if blend == "float32":
        return weights.to(torch.float32)
    weights = (weights * NNUNET_GAUSSIAN_MAX).to(torch.float16)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = weights[~zero].min()
    return weights


def _forward(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = network(batch)
    if not isinstance(logits, torch.Tensor):
        raise InferenceError(
            f"the network returned {type(logits).__name__}, not a tensor of logits "
            "(B, K, *patch); build it with deep supervision disabled"
        )
    if logits.ndim != batch.ndim or logits.shape[2:] != batch.shape[2:]:
        raise InferenceError(
            f"the network mapped a batch {tuple(batch.shape)} to {tuple(logits.shape)}; "
            "sliding-window inference needs logits (B, K, *patch) of the input's spatial shape"
        )
    return logits.float()


def mirrored_logits(
    network: torch.nn.Module, batch: torch.Tensor, flips: Sequence[tuple[int, ...]]
) -> torch.Tensor:
    """Mean of the network's logits over the batch and its mirrored copies, flipped back.

    Parameters
    ----------
    network : torch.nn.Module
        Maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``.
    batch : torch.Tensor
        ``(B, C, *patch)`` on the network's device.
    flips : sequence of tuple of int
        Dims to flip per mirrored copy (from :func:`flip_sets`); empty: no mirroring.

    Returns
    -------
    torch.Tensor
        ``(B, K, *patch)`` float32.
    """
    logits = _forward(network, batch)
    for dims in flips:  # out of place: the network's output may alias its input
        logits = logits + torch.flip(_forward(network, torch.flip(batch, dims)), dims)
    return logits / (len(flips) + 1) if flips else logits


def _accumulate(
    network: torch.nn.Module, image: torch.Tensor, tiles: list[Tile], run: _Run, on: torch.device
) -> torch.Tensor:
    """Gaussian-weighted mean of tile logits, accumulated on device ``on``: (K, *spatial)."""
    image = image.to(on)
    channels = image.shape[0]
    gaussian = blend_weights(run.patch_size, run.blend, on)
    tile_shape = tuple(s.stop - s.start for s in tiles[0])
    tile_weight = gaussian.reshape(tile_shape)
    logits_sum = weight_sum = None
    for first in range(0, len(tiles), run.tile_batch):
        chunk = tiles[first : first + run.tile_batch]
        batch = torch.stack(
            [image[(slice(None), *t)].reshape(channels, *run.patch_size) for t in chunk]
        )
        logits = mirrored_logits(network, batch.to(run.device), run.flips).to(on)
        if logits_sum is None:  # accumulators in the weights' precision
            logits_sum = torch.zeros((logits.shape[1], *image.shape[1:]), device=on,
                                     dtype=gaussian.dtype)  # fmt: skip
            weight_sum = torch.zeros(image.shape[1:], device=on, dtype=gaussian.dtype)
        for tile, tile_logits in zip(chunk, logits, strict=True):
            logits_sum[(slice(None), *tile)] += (tile_logits * gaussian).reshape(-1, *tile_shape)
            weight_sum[tile] += tile_weight
        if run.progress is not None:
            run.progress(min(first + run.tile_batch, len(tiles)), len(tiles))
    return logits_sum.div_(weight_sum)


def _accumulate_with_fallback(
    network: torch.nn.Module, image: torch.Tensor, tiles: list[Tile], run: _Run
) -> torch.Tensor:
    """Accumulate on the device; on CUDA out-of-memory, start again with CPU accumulators."""
    if run.device.type == "cpu":
        return _accumulate(network, image, tiles, run, run.device)
    try:
        return _accumulate(network, image, tiles, run, run.device)
    except torch.cuda.OutOfMemoryError:
        pass  # retried below, once the exception (and the tensors its frames hold) is gone
    logger.warning(
        "sliding window: image %s does not fit on %s with its accumulators; "
        "accumulating on the CPU instead (slower)",
        tuple(image.shape),
        run.device,
    )
    torch.cuda.empty_cache()
    return _accumulate(network, image, tiles, run, torch.device("cpu"))


def _as_image(image: np.ndarray | torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    data = torch.as_tensor(image).to(torch.float32)
    if data.ndim - 1 not in (len(patch_size), len(patch_size) + 1):
        raise InferenceError(
            f"image of shape {tuple(data.shape)} does not fit patch size {tuple(patch_size)}: "
            "expected (C, *spatial) with as many spatial axes as the patch, or one more "
            "(2D patches on a 3D image)"
        )
    return data


def _autocast(device: torch.device, amp: bool, amp_dtype: torch.dtype) -> AbstractContextManager:
    # nnU-Net autocasts on CUDA only: CPU autocast is slow (bfloat16) on most CPUs.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype)
    return nullcontext()


def predict_logits(
    network: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    *,
    step: float = 0.5,
    mirror_axes: tuple[int, ...] = (),
    tile_batch: int = 1,
    device: str | torch.device = "cpu",
    amp: bool = True,
    amp_dtype: torch.dtype = torch.float16,
    progress: Progress | None = None,
    blend: str = "float32",
) -> torch.Tensor:
    """Sliding-window logits of a whole preprocessed case (nnU-Net v2's predictor).

    Parameters
    ----------
    network : torch.nn.Module
        Maps ``(B, C, *patch)`` to logits ``(B, K, *patch)`` (deep supervision off). It
        is moved to ``device`` and put in eval mode for the call; its training flag is
        restored afterwards.
    image : numpy.ndarray or torch.Tensor
        ``(C, *spatial)`` preprocessed intensities (cast to float32; not modified). With
        a 2D patch on a 3D image ``(C, Z, Y, X)``, slices along axis 0 are predicted one
        by one (nnU-Net's ``2d`` configuration).
    patch_size : sequence of int
        Tile shape, as in the plans (axes in the image's order).
    step : float
        Largest tile step as a fraction of the patch, in (0, 1]; nnU-Net uses 0.5.
    mirror_axes : tuple of int
        Spatial axes of the patch to mirror for test-time augmentation (the mean over
        all ``2**k`` flips); ``()`` disables it.
    tile_batch : int
        Tiles per network call.
    device : str or torch.device
        Where the network runs. Accumulation happens there too, or on the CPU when the
        device runs out of memory.
    amp, amp_dtype
        Autocast to ``amp_dtype`` (float16 or bfloat16) on CUDA; ignored on other devices.
    progress : callable, optional
        Called as ``progress(tiles_done, tiles_total)`` after each batch.
    blend : str
        ``"float32"`` (exact) or ``"nnunet"`` (float16 accumulation as nnU-Net v2; see
        :func:`blend_weights`).

    Returns
    -------
    torch.Tensor
        ``(K, *spatial)`` on the CPU: the Gaussian-weighted mean of the tile logits,
        padding cropped off, same spatial shape as ``image``; float32, or float16 with
        ``blend="nnunet"``.
    """
    if tile_batch < 1:
        raise InferenceError(f"tile_batch must be >= 1, got {tile_batch}")
    patch = tuple(int(p) for p in patch_size)
    data = _as_image(image, patch)
    run = _Run(
        patch,
        flip_sets(mirror_axes, len(patch)),
        tile_batch,
        torch.device(device),
        progress,
        blend,
    )
    padded, crop = pad_to_patch(data, patch)
    tiles = tile_slices(padded.shape[1:], patch, step)
    logger.debug("sliding window: %d tiles of %s over %s", len(tiles), patch, tuple(padded.shape))
    was_training = network.training
    network.to(run.device).eval()
    try:
        with torch.no_grad(), _autocast(run.device, amp, amp_dtype):
            logits = _accumulate_with_fallback(network, padded, tiles, run)
    finally:
        network.train(was_training)
    return logits[(slice(None), *crop)].to("cpu").contiguous()


def predict_probabilities(
    network: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    **options,
) -> torch.Tensor:
    """Softmax over classes of :func:`predict_logits` (``options`` as there).

    As in nnU-Net, the softmax is applied once, to the blended logits, in float32.
    Returns ``(K, *spatial)`` float32 class probabilities on the CPU, summing to 1 over K.
    """
    return torch.softmax(predict_logits(network, image, patch_size, **options).float(), dim=0)
