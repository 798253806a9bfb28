"""Sliding-window prediction of a whole preprocessed case, as nnU-Net v2 does it.

Tiles of the patch size are predicted (optionally averaged over mirrored copies) and
blended with a Gaussian importance map ``g``: ``logits = sum_t(g * logits_t) / sum_t(g)``.
Softmax comes after blending, once (nnU-Net averages logits, then applies
``LabelManager.apply_inference_nonlin``).

Follows nnU-Net v2 (2.8.1): tile placement (evenly spread, first at 0, last at the
border), its Gaussian importance map, mirroring over all
``2**k`` flips of the allowed axes, zero-padding of images smaller than the patch (content
centred, cropped off again), slice-by-slice prediction for a 2D patch on a 3D image,
autocast on CUDA only, accumulation on the device with a fallback to CPU accumulators on
out-of-memory.

Blending: ``float32`` (default) keeps accumulators and importance map in float32, the
exact weighted mean (against nnU-Net with float32 accumulators the logits agree to about
1e-6). ``nnunet`` blends in float16 with the map scaled to 10, as nnU-Net v2 does to save
GPU memory (about 1e-3 off in the logits, more near image corners where tile weights
underflow), which reproduces nnU-Net's labels for its own models. Tile geometry and
weights live in :mod:`medseg.inference.tiles`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from medseg.core.errors import InferenceError
from medseg.inference.tiles import (  # noqa: F401  (re-exported: the sliding-window API)
    BLENDS,
    NNUNET_GAUSSIAN_MAX,
    Tile,
    blend_weights,
    flip_sets,
    gaussian_importance,
    pad_to_patch,
    tile_slices,
    tile_starts,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every batch of tiles."""


@dataclass(frozen=True)
class _Run:
    """Settings of one sliding-window pass (internal: keeps signatures short)."""

    patch_size: tuple[int, ...]
    flips: list[tuple[int, ...]]
    tile_batch: int
    device: torch.device
    progress: Progress | None
    blend: str = "float32"


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
            logits_sum = torch.zeros(
                (logits.shape[1], *image.shape[1:]), device=on, dtype=gaussian.dtype
            )
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
    keep_on_device: bool = False,
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
    keep_on_device : bool
        Return the logits where they were accumulated (the GPU, unless it ran out of
        memory) instead of on the CPU, for resampling and argmax there.

    Returns
    -------
    torch.Tensor
        ``(K, *spatial)`` on the CPU (or see ``keep_on_device``): the Gaussian-weighted
        mean of the tile logits,
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
    logits = logits[(slice(None), *crop)]
    return logits.contiguous() if keep_on_device else logits.to("cpu").contiguous()


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
