"""Training from partial annotations: nnU-Net's ``ignore`` label.

A label named ``ignore`` in dataset.json (the highest value, see
:class:`medseg.core.plans.LabelSet`) marks voxels nobody annotated. The network has no
output for it, and training never learns from those voxels:

- the loss (:func:`medseg.training.distributed_loss.dice_ce` with ``ignore``): the
  cross-entropy leaves them out (``ignore_index``; 0 when a patch has no annotated
  voxel) and the soft Dice counts only annotated voxels (probabilities and one-hot
  target multiplied by the valid mask), as nnU-Net's ``DC_and_CE_loss(...,
  ignore_label=...)``; deep-supervision targets are downsampled by nearest-exact with
  the ignore value in them, so the mask of every scale is the downsampled mask;
- foreground oversampling: the ignore label is no foreground class, so the stored
  class locations never hold it;
- the pseudo-Dice of validation (:func:`hard_counts`) and evaluation
  (:func:`medseg.evaluation.metrics.case_metrics` with ``ignore``) count only voxels
  whose reference is not ``ignore``.
"""

from __future__ import annotations

import torch


def split_target(target: torch.Tensor, ignore: int | None):
    """``(labels, mask)`` of an integer label batch ``target (B, *S)``.

    ``labels``: ``target`` as int64 with the ignored voxels set to background 0 (any
    class would do: they are masked); ``mask``: float ``(B, 1, *S)``, 1 where annotated,
    or None without an ignore label.
    """
    labels = target.long()
    if ignore is None:
        return labels, None
    valid = labels != ignore
    return torch.where(valid, labels, 0), valid[:, None].to(torch.float32)


def hard_counts(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore: int | None):
    """``(tp, fp, fn)`` float64 of classes ``1..n_classes-1`` for a predicted label batch
    ``pred (B, *S)`` against ``target (B, *S)``; voxels where ``target`` is ``ignore``
    count for nothing (nnU-Net's pseudo-Dice)."""
    valid = None if ignore is None else target != ignore
    tp = torch.zeros(n_classes - 1, dtype=torch.float64)
    fp, fn = tp.clone(), tp.clone()
    for c in range(1, n_classes):
        p, t = pred == c, target == c
        if valid is not None:
            p = p & valid
        tp[c - 1] = (p & t).sum().item()
        fp[c - 1] = (p & ~t).sum().item()
        fn[c - 1] = (~p & t).sum().item()
    return tp, fp, fn
