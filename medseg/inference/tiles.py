"""Where sliding-window tiles go and how they are weighted, as nnU-Net v2 does it.

Tile placement (:func:`tile_starts`: evenly spread, first at 0, last at the border),
the Gaussian importance map (:func:`gaussian_importance`), zero-padding of images
smaller than the patch, the ``2**k`` mirror flips, and the blend weights: exact
float32, or nnU-Net's float16 map scaled to 10 (:func:`blend_weights`).

MONAI is not used: ``sliding_window_inference`` steps by ``int(patch * (1 - overlap))``
and clips the last tile to the border (size 110, patch 64: starts 0, 32, 46; nnU-Net: 0,
23, 46), and ``compute_importance_map`` centres its Gaussian at ``(patch - 1) / 2``, not
``patch // 2``, and clamps it at 1e-3. Neither reproduces nnU-Net, and parity comes first.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medseg.core.errors import InferenceError
from medseg.core.options import Blend

Tile = tuple[slice, ...]
"""Where one tile lies in the spatial axes of the (padded) image, one slice per axis."""


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


#: How tiles are blended: exactly in float32, or in float16 as nnU-Net v2 does.
BLENDS = (Blend.FLOAT32, Blend.NNUNET)
#: nnU-Net scales its float16 Gaussian to this maximum (its value_scaling_factor).
NNUNET_GAUSSIAN_MAX = 10.0


def blend_weights(patch_size, blend: str, device) -> torch.Tensor:
    """The tile weight map and, by its dtype, the accumulators' precision (read only).

    Cached per patch size, blend and device: prediction asks for it once per network
    and case, and building it costs up to 0.2 s for a 3D patch.

    ``float32``: the Gaussian, maximum 1, float32. ``nnunet``: nnU-Net v2's: maximum
    10, cast to float16, weights that underflow to 0 replaced by the smallest left.
    In float16 the far tile corners' weights underflow, so near image edges nnU-Net's
    blend is coarse; ``float32`` is the exact weighted mean, ``nnunet`` reproduces
    nnU-Net's labels for its own models.
    """
    if blend not in BLENDS:
        raise InferenceError(
            f"unknown blend {blend!r}; use one of {', '.join(b.value for b in BLENDS)}"
        )
    return _blend_weights(tuple(int(p) for p in patch_size), Blend(blend), torch.device(device))


@functools.lru_cache(maxsize=8)
def _blend_weights(patch_size: tuple[int, ...], blend: Blend, device: torch.device) -> torch.Tensor:
    weights = gaussian_importance(patch_size, dtype=torch.float64, device=device)
    if blend is Blend.FLOAT32:
        return weights.to(torch.float32)
    weights = (weights * NNUNET_GAUSSIAN_MAX).to(torch.float16)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = weights[~zero].min()
    return weights
