"""GPU memory proxy for a planned U-Net: the number of feature-map voxels.

nnU-Net v2 sizes patches and batches by the feature-map voxel count of the
PlainConvUNet or ResidualEncoderUNet it will train (dynamic_network_architectures'
``compute_conv_feature_map_size``, without deep supervision). That count is
plain arithmetic over the topology, so it is computed here without torch,
keeping planning free of the 2 s torch import; ``tests/test_planning.py``
checks it against the library on many topologies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def feature_map_voxels(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    convs_encoder: Sequence[int],
    convs_decoder: Sequence[int],
    n_classes: int,
    deep_supervision: bool = False,
    residual_encoder: bool = False,
) -> int:
    """Feature-map voxels of an encoder-decoder U-Net for one patch.

    Plain encoder stage ``s`` applies ``convs_encoder[s]`` convolutions with
    ``features[s]`` outputs at its (strided) resolution. A residual encoder
    (``residual_encoder=True``) has a stem convolution at full resolution and
    ``convs_encoder[s]`` residual blocks per stage: two convolutions each, plus a
    projection on the first block's skip path when it strides or changes the width.
    Decoder stage ``k`` (deepest first) upsamples to the skip of encoder stage
    ``n-2-k`` (transposed conv), applies ``convs_decoder[k]`` convolutions there, and
    segments (every stage with deep supervision, else only the last).
    """
    encode = _residual_encoder if residual_encoder else _plain_encoder
    total, sizes = encode([int(p) for p in patch_size], strides, features, convs_encoder)
    n_stages = len(strides)
    for k in range(n_stages - 1):
        skip = math.prod(sizes[n_stages - 2 - k])
        width = features[n_stages - 2 - k]
        total += convs_decoder[k] * width * skip + width * skip
        if deep_supervision or k == n_stages - 2:
            total += n_classes * skip
    return total


def _plain_encoder(size, strides, features, convs) -> tuple[int, list[list[int]]]:
    total, sizes = 0, []
    for s, stride in enumerate(strides):
        size = [n // st for n, st in zip(size, stride, strict=True)]
        sizes.append(size)
        total += convs[s] * features[s] * math.prod(size)
    return total, sizes


def _residual_encoder(size, strides, features, blocks) -> tuple[int, list[list[int]]]:
    total, sizes = features[0] * math.prod(size), []  # the stem: one conv, no stride
    width = features[0]
    for s, stride in enumerate(strides):
        after = [n // st for n, st in zip(size, stride, strict=True)]
        voxels = features[s] * math.prod(after)
        projection = width != features[s] or after != size
        total += 2 * voxels * blocks[s] + (voxels if projection else 0)
        sizes.append(after)
        size, width = after, features[s]
    return total, sizes
