"""U-Net topology from spacing and patch size (nnU-Net v2's rules).

Pooling is added stage by stage on the axes whose current spacing is within a
factor 2 of the finest one and whose feature map is still at least twice the
minimum edge length; a kernel becomes 3 on an axis once that axis is within a
factor 2 of the finest spacing. The patch size is then padded up to a multiple
of 2**pools per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Topology:
    """Pools per axis, pooling and conv kernel sizes per stage, padded patch size."""

    pools_per_axis: tuple[int, ...]
    pool_kernel_sizes: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """Smallest multiple of ``divisor`` strictly above ``shape``, or ``shape`` if already one.

    Fractional shapes (medians) round up to the next multiple, as in nnU-Net.
    """
    out = []
    for s, d in zip(shape, divisor, strict=True):
        remainder = s % d
        out.append(int(s if remainder == 0 else s + d - remainder))
    return tuple(out)


def _pool_axes(spacing, size, pools, min_edge: int, max_pools: int) -> list[int]:
    axes = [i for i in range(len(size)) if size[i] >= 2 * min_edge]
    if not axes:
        return []
    finest = min(spacing[i] for i in axes)
    axes = [i for i in axes if spacing[i] / finest < 2 and pools[i] < max_pools]
    if len(axes) == 1 and size[axes[0]] < 3 * min_edge:
        return []
    return axes


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    min_feature_edge: int = 4,
    max_pools: int = 999999,
) -> Topology:
    """nnU-Net's ``get_pool_and_conv_props`` decision for a spacing and a patch size."""
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    pools = [0] * dim
    kernel = [1] * dim
    pool_kernels: list[tuple[int, ...]] = [(1,) * dim]
    conv_kernels: list[tuple[int, ...]] = []
    while True:
        axes = _pool_axes(current_spacing, current_size, pools, min_feature_edge, max_pools)
        if not axes:
            break
        finest = min(current_spacing)
        kernel = [
            3 if k == 3 or current_spacing[d] / finest < 2 else 1 for d, k in enumerate(kernel)
        ]
        stage = [1] * dim
        for a in axes:
            stage[a] = 2
            pools[a] += 1
            current_spacing[a] *= 2
            current_size[a] = float(np.ceil(current_size[a] / 2))
        pool_kernels.append(tuple(stage))
        conv_kernels.append(tuple(kernel))
    conv_kernels.append((3,) * dim)
    divisible_by = tuple(2**p for p in pools)
    return Topology(
        pools_per_axis=tuple(pools),
        pool_kernel_sizes=tuple(pool_kernels),
        conv_kernel_sizes=tuple(conv_kernels),
        patch_size=pad_to_multiple(patch_size, divisible_by),
        divisible_by=divisible_by,
    )
