"""Dice + cross-entropy for data-parallel training: Dice over the global batch.

Each process holds its share of the batch. With ``batch_dice`` (nnU-Net's default for
3D), the Dice of one class is computed over the whole global batch: every process sums
its soft intersection, prediction and label volumes per class, these sums are added
over the processes (with gradient: the sum's backward sums the gradients too, as
nnU-Net's ``AllGatherGrad``), and all processes compute the same Dice from them. The
cross-entropy is each process's own mean: DistributedDataParallel averages the
gradients over the processes. In one process the loss equals
:func:`medseg.training.model.build_loss`'s (MONAI's ``DiceCELoss`` inside
``DeepSupervisionLoss``) to float precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medseg.core.plans import Configuration
from medseg.training.ignore import split_target
from medseg.training.model import deep_supervision_weights

SMOOTH = 1e-5


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the default process group, differentiably; ``tensor``
    itself without one (a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


def dice_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    batch: bool,
    reduce: Callable[[torch.Tensor], torch.Tensor] = sum_over_processes,
    smooth: float = SMOOTH,
    ignore: int | None = None,
) -> torch.Tensor:
    """Soft Dice (foreground classes) + cross-entropy of ``logits (B, C, *spatial)``
    against integer labels ``target (B, 1, *spatial)`` (float or int).

    ``batch``: one Dice per class over the batch, with its sums passed through
    ``reduce`` (the global batch); else one per sample and class, local. MONAI's
    formula: ``1 - (2 tp + s) / (2 (tp + fp/2 + fn/2) + s)``, averaged.

    ``ignore``: the label of unannotated voxels (:mod:`medseg.training.ignore`), left
    out of both terms; the cross-entropy is 0 when no voxel is annotated.
    """
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, 1)[:, 1:]
    labels, mask = split_target(target[:, 0], ignore)
    onehot = F.one_hot(labels, n_classes).movedim(-1, 1)[:, 1:].to(probs.dtype)
    if mask is not None:
        probs, onehot = probs * mask, onehot * mask
    axes = list(range(2, logits.ndim))
    if batch:
        axes = [0, *axes]
    stats = torch.stack(
        [(probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes)]
    )  # (3, C-1) or (3, B, C-1)
    if batch:
        stats = reduce(stats)
    tp, pred, truth = stats
    fp, fn = (pred - tp) * 0.5, (truth - tp) * 0.5
    dice = 1 - (2 * tp + smooth) / (2 * (tp + fp + fn) + smooth)
    if mask is None:
        return dice.mean() + F.cross_entropy(logits, labels)
    if not bool(mask.any()):  # nnU-Net: no cross-entropy without annotated voxels
        return dice.mean() + 0 * logits.sum()
    return dice.mean() + F.cross_entropy(logits, target[:, 0].long(), ignore_index=ignore)


class GlobalDiceCE(torch.nn.Module):
    """:func:`dice_ce` as a loss module (what ``DeepSupervisionLoss`` wraps)."""

    def __init__(self, batch_dice: bool, reduce=sum_over_processes, ignore: int | None = None):
        super().__init__()
        self.batch_dice, self.reduce, self.ignore = batch_dice, reduce, ignore

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_ce(logits, target, self.batch_dice, self.reduce, ignore=self.ignore)


def build_distributed_loss(
    config: Configuration, reduce=sum_over_processes, ignore: int | None = None
):
    """The data-parallel twin of :func:`~medseg.training.model.build_loss`: the same
    deep-supervision weights and target downsampling, Dice over the global batch;
    ``ignore``: the ignore label, if the dataset has one."""
    from monai.losses import DeepSupervisionLoss

    weights = deep_supervision_weights(config)
    loss = GlobalDiceCE(config.batch_dice, reduce, ignore)
    return DeepSupervisionLoss(loss, weights=weights), weights
