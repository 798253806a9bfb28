"""Predict one volume with a model bundle: folds, configurations, cascade, postprocessing.

Within a configuration the folds' logits are averaged on the preprocessed grid
(nnU-Net's order), resampled back to the input's grid, then turned into
probabilities; configurations of an ensemble are averaged as probabilities on
the input's grid. A cascade member first predicts its previous stage and feeds
that segmentation, one-hot, as extra input channels. The result has exactly the
input's shape and affine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from medseg.core.options import Blend, parse
from medseg.core.volume import Kind, Volume
from medseg.inference.bundle import Member, ModelBundle
from medseg.inference.gate import channel_findings, enforce
from medseg.inference.sliding_window import predict_logits
from medseg.preprocessing.pipeline import (
    label_to_preprocessed,
    preprocess_case,
    previous_stage_channels,
    to_original,
)

log = logging.getLogger(__name__)

#: Logit given to foreground classes outside the cropped region (background wins).
OUTSIDE_LOGIT = -1e4


@dataclass(frozen=True)
class PredictOptions:
    """How to run the sliding window (nnU-Net's defaults)."""

    step: float = 0.5
    mirroring: bool = True
    tile_batch: int = 4
    device: str = "cpu"
    amp: bool = True
    #: "auto": nnU-Net's float16 blending for nnU-Net models (their labels, exactly),
    #: exact float32 blending for medseg models; or "float32" / "nnunet" for all.
    blend: Blend = Blend.AUTO


def _input_with_previous(
    member: Member, image: Volume, bundle: ModelBundle, options, progress, memo: dict
):
    """Preprocessed input of ``member``; for a cascade, with the previous stage one-hot
    (its segmentation mapped by the case's own steps, as in training)."""
    data, _, record = preprocess_case(image, None, bundle.plans, member.configuration)
    if member.previous is None:
        return data, record
    previous = predict_member(member.previous, image, bundle, options, progress, memo)
    memo[(member.previous.configuration, tuple(member.previous.folds))] = previous
    prev_label = Volume.label(previous.array.argmax(0).astype(np.uint8), previous.affine)
    seg = label_to_preprocessed(prev_label, record, bundle.plans.reorients)
    return np.concatenate(
        [data, previous_stage_channels(seg, bundle.plans.labels.foreground)]
    ), record


def predict_member(
    member: Member,
    image: Volume,
    bundle: ModelBundle,
    options: PredictOptions = PredictOptions(),
    progress: Callable[[int, int], None] | None = None,
    memo: dict | None = None,
) -> Volume:
    """Class probabilities ``(K, X, Y, Z)`` of one configuration, on the input's grid.

    ``memo`` keeps the previous stages predicted for this image (by configuration and
    folds): a cascade's first stage that is also an ensemble member runs once.
    """
    memo = {} if memo is None else memo
    key = (member.configuration, tuple(member.folds))
    if key in memo:
        return memo[key]
    return _predict_member(member, image, bundle, options, progress, memo)


def _predict_member(member: Member, image: Volume, bundle, options, progress, memo) -> Volume:
    data, record = _input_with_previous(member, image, bundle, options, progress, memo)
    mirror = member.mirror_axes if options.mirroring else ()
    blend = resolve_blend(options.blend, bundle)
    logits = None
    for network in member.networks:  # summed in the blend's precision, as nnU-Net does
        out = predict_logits(
            network,
            data,
            member.config.patch_size,
            step=options.step,
            mirror_axes=mirror,
            tile_batch=options.tile_batch,
            device=options.device,
            amp=options.amp,
            progress=progress,
            blend=blend,
        )
        logits = out if logits is None else logits + out
    logits = logits / len(member.networks)
    return probabilities_on_original_grid(
        logits.float().numpy(), record, half=logits.dtype == torch.float16
    )


def resolve_blend(blend: Blend | str, bundle: ModelBundle) -> Blend:
    """``auto``: nnU-Net's float16 blending for nnU-Net models, exact float32 otherwise."""
    blend = parse(Blend, blend, "blend")
    if blend is not Blend.AUTO:
        return blend
    return Blend.NNUNET if bundle.meta.get("source") == "nnunetv2" else Blend.FLOAT32


def probabilities_on_original_grid(logits: np.ndarray, record: dict, half: bool = False) -> Volume:
    """Logits ``(K, ...)`` on the preprocessed grid -> probabilities on the original grid.

    As nnU-Net: resample the logits (linearly, slice-wise where anisotropic), then
    softmax; outside the cropped region background wins. With ``half``, resampled
    logits are rounded to float16 as nnU-Net's resampling returns its input's dtype.
    """
    outside = np.full((logits.shape[0],), OUTSIDE_LOGIT, np.float32)
    outside[0] = 0.0
    back = to_original(logits, record, outside=outside)
    values = back.array.astype(np.float16).astype(np.float32) if half else back.array
    probs = torch.softmax(torch.from_numpy(values), dim=0).numpy()
    return Volume(probs, back.affine, Kind.IMAGE)


def predict_volume(
    bundle: ModelBundle,
    image: Volume,
    options: PredictOptions = PredictOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Volume, Volume]:
    """Probabilities ``(K, X, Y, Z)`` and the postprocessed label map ``(X, Y, Z)``.

    Both have ``image``'s exact shape and affine.
    """
    enforce(channel_findings(image.n_channels, bundle.channel_names))
    probs, memo = None, {}
    # cascade stages first: their previous stage, when also a member, is then reused (the
    # array summed into in place below is always the first member's own, never a reused one)
    for member in sorted(bundle.members, key=lambda m: m.previous is None):
        p = predict_member(member, image, bundle, options, progress, memo).array
        probs = p if probs is None else probs + p
    if len(bundle.members) > 1:
        probs /= len(bundle.members)  # in place: probs is the sum just made
    label = probs.argmax(0).astype(np.uint8 if probs.shape[0] < 256 else np.int16)
    if bundle.postprocessing:
        from medseg.evaluation.postprocessing import apply_postprocessing

        label = apply_postprocessing(label, bundle.postprocessing)
    return Volume(probs.astype(np.float32, copy=False), image.affine, Kind.IMAGE), Volume.label(
        label, image.affine
    )
