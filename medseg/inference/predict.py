"""Predict one volume with a model bundle: folds, configurations, cascade, postprocessing.

Within a configuration the folds' logits are averaged on the preprocessed grid
(nnU-Net's order); the way back to the input's grid (resampling, probabilities,
ensemble average, argmax) is done slab by slab in bounded memory by
:mod:`medseg.inference.reconstruct`. A cascade member first predicts its previous
stage and feeds that segmentation, one-hot, as extra input channels. The result has
exactly the input's shape and affine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.core.options import Blend, parse
from medseg.core.volume import Kind, Volume
from medseg.inference.bundle import Member, ModelBundle
from medseg.inference.gate import channel_findings, enforce
from medseg.inference.memory import current_rss, plan_memory, with_plan
from medseg.inference.reconstruct import DEFAULT_SLAB_BYTES, MemberLogits, reconstruct
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
    #: Memory for one slab of class values on the way back to the input's grid.
    slab_bytes: int = DEFAULT_SLAB_BYTES
    #: Bound on the process's peak memory (bytes): settings are chosen to fit it and a
    #: case that cannot fit is refused (:mod:`medseg.inference.memory`); None: no bound.
    max_memory: int | None = None
    #: Memory the caller needs beside this case meanwhile (bytes; a batch reads the
    #: next case and writes the previous one during a prediction).
    reserve_bytes: int = 0
    #: Resample the class logits back with scipy in float64, bit-identical to nnU-Net's
    #: export (slower); otherwise torch on the logits' device (equal to float32 rounding).
    exact_resampling: bool = False


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
    prev_label = reconstruct([previous], slab_bytes=options.slab_bytes)
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
) -> MemberLogits:
    """One configuration's logits on its preprocessed grid (folds averaged), with the
    case record that maps them back to ``image``'s grid.

    ``memo`` keeps the previous stages predicted for this image (by configuration and
    folds): a cascade's first stage that is also an ensemble member runs once.
    """
    memo = {} if memo is None else memo
    key = (member.configuration, tuple(member.folds))
    if key in memo:
        return memo[key]
    return _predict_member(member, image, bundle, options, progress, memo)


def _predict_member(member: Member, image: Volume, bundle, options, progress, memo):
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
            keep_on_device=True,  # on a GPU: resampled and argmaxed there, slab by slab
        )
        logits = out if logits is None else logits + out
    logits = logits / len(member.networks)
    half = logits.dtype == torch.float16
    if options.exact_resampling:  # scipy, bit-identical to nnU-Net's export function
        return MemberLogits(logits.float().cpu().numpy(), record, half=half)
    # torch, where the logits are (the GPU, or the CPU: 2.5x faster than scipy there)
    return MemberLogits(logits if logits.is_cuda else logits.float(), record, half=half)


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
    probabilities: Path | None = None,
    report: dict | None = None,
) -> Volume:
    """The postprocessed label map ``(X, Y, Z)`` of ``image``, with its exact shape and
    affine; with ``probabilities``, the class probabilities ``(K, X, Y, Z)`` are written
    there too (float16 ``.b2nd``, slab by slab).

    Tile batch and slab size are chosen to fit ``options.max_memory`` (the case is
    refused with :class:`~medseg.core.errors.InputRefusedError` if nothing fits);
    ``report`` (a dict) receives the memory plan under ``"memory"``.
    """
    enforce(channel_findings(image.n_channels, bundle.channel_names))
    baseline = current_rss() + options.reserve_bytes
    plan = plan_memory(image, bundle, options.tile_batch, options.max_memory, baseline)
    options = with_plan(options, plan)
    if report is not None:
        report["memory"] = plan.to_dict()
    memo: dict = {}
    # cascade stages first: their previous stage, when also a member, is then reused
    ordered = sorted(bundle.members, key=lambda m: m.previous is None)
    logits = {id(m): predict_member(m, image, bundle, options, progress, memo) for m in ordered}
    members = [logits[id(m)] for m in bundle.members]  # the bundle's order, as before
    label = reconstruct(members, slab_bytes=options.slab_bytes, probabilities=probabilities)
    if bundle.postprocessing:
        from medseg.evaluation.postprocessing import apply_postprocessing

        label = Volume.label(apply_postprocessing(label.array, bundle.postprocessing), label.affine)
    return label
