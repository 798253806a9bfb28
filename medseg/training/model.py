"""The network, its initialisation and the loss for one planned configuration."""

from __future__ import annotations

import numpy as np
import torch

from medseg.core.plans import Configuration
from medseg.nets.unet import build_network

#: nnU-Net's He initialisation slope for LeakyReLU(0.01).
HE_SLOPE = 1e-2


def init_he(network: torch.nn.Module, generator: torch.Generator) -> None:
    """He-normal weights and zero biases for every (transposed) convolution, drawn
    from ``generator`` so initialisation is reproducible without global state."""
    convs = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    for module in network.modules():
        if isinstance(module, convs):
            torch.nn.init.kaiming_normal_(module.weight, a=HE_SLOPE, generator=generator)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def build_model(
    config: Configuration, n_channels: int, n_classes: int, seed: int
) -> torch.nn.Module:
    """The configuration's U-Net with deep supervision, initialised from ``seed``;
    ``n_channels`` are its input channels (:meth:`Configuration.input_channels`)."""
    network = build_network(config.architecture, n_channels, n_classes, deep_supervision=True)
    init_he(network, torch.Generator().manual_seed(int(seed)))
    return network


def set_deep_supervision(network: torch.nn.Module, enabled: bool) -> None:
    """Switch the decoder between all scales (training) and the full scale only."""
    network.decoder.deep_supervision = enabled


def deep_supervision_weights(config: Configuration) -> list[float]:
    """nnU-Net's weights 1, 1/2, 1/4, ... for the decoder outputs, the coarsest set to
    0, normalised to sum to 1 (one weight per output, highest resolution first)."""
    n_outputs = config.n_stages - 1
    weights = np.array([1 / 2**i for i in range(n_outputs)])
    if n_outputs > 1:
        weights[-1] = 0
    return list(weights / weights.sum())


def build_loss(config: Configuration, ignore: int | None = None):
    """Dice + cross-entropy (MONAI) on every deep-supervision output, nnU-Net's weights.

    Dice excludes background and is computed over the whole batch when the plans
    say ``batch_dice``; targets are downsampled to each output by nearest-exact.
    ``ignore``: the dataset's ignore label; its voxels are left out of both terms
    (:mod:`medseg.training.ignore`; the same loss in :mod:`~medseg.training.distributed_loss`).
    """
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    if ignore is not None:
        from medseg.training.distributed_loss import build_distributed_loss

        return build_distributed_loss(config, reduce=_local, ignore=ignore)

    dice_ce = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=config.batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )
    weights = deep_supervision_weights(config)
    return DeepSupervisionLoss(dice_ce, weights=weights), weights


def _local(tensor):
    """No reduction: the sums of this process's batch (one-process training)."""
    return tensor
