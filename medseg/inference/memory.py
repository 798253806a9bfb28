"""How much memory predicting one case takes, known before it starts, and settings that fit.

``medseg predict --max-memory GB`` bounds the process's peak resident memory. Before
a case is predicted, :func:`plan_memory` estimates that peak from the scan's shape,
voxel size and data type, the model's plans (each configuration's grid, patch,
channels and width), the class count and the settings (tiles per network call, slab
size of the way back), and picks the largest settings that fit; a case that fits
with none is refused with the estimate and what to change.

The estimate follows the stages of :func:`medseg.inference.predict.predict_volume`
on the CPU, each holding what it holds at its peak (``parts`` names them):

* ``preprocess``: the normalized float32 copy of the scan, with the non-zero mask
  (int8) or later the resampling's float64 window of spline coefficients, and the
  result;
* ``network``: the preprocessed input and its padded copy, the float32 accumulators
  (K classes + weights), the logits of the configurations already done, the
  activations of one call (tiles x patch x widths) and the blended result;
* ``reconstruct``: every configuration's logits, the label map twice (processing
  and original axes) and one slab.

``baseline`` is the process when the case starts, measured: interpreter, libraries,
the model and the scan just read; a batch adds a reserve for the next case read
meanwhile and the label map being written (``PredictOptions.reserve_bytes``).
The constants below were fitted to peaks measured on this project's CPU machines
(``tests/test_memory.py`` checks the estimate against a measured peak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from medseg.core.errors import InputRefusedError
from medseg.core.volume import Volume
from medseg.geometry.orientation import canonical_ornt
from medseg.preprocessing.grid import processing_spacing
from medseg.preprocessing.pipeline import target_spacing
from medseg.preprocessing.resample import compute_new_shape, separate_z_axis
from medseg.preprocessing.zoom import CHUNK_BYTES, WINDOW_BYTES

#: Activation bytes per patch voxel and tile, per feature of the first stage.
ACTIVATION_PER_FEATURE = 4 * 6.0
#: Slab budgets tried, largest first (bytes).
SLAB_CHOICES = (256 * 2**20, 64 * 2**20, 16 * 2**20)

GB = 1e9


@dataclass(frozen=True)
class MemberSize:
    """What one configuration of a model costs in memory, per case."""

    voxels: int  # on its preprocessed grid (before the crop: an upper bound)
    channels: int  # network input channels (cascade: image + previous stage)
    patch_voxels: int
    base_features: int
    spline_bytes: int = 0  # the float64 spline coefficients of the image resampling


@dataclass(frozen=True)
class MemoryPlan:
    """The estimated peak (bytes, baseline included), its parts, and the settings."""

    estimate: int
    baseline: int
    tile_batch: int
    slab_bytes: int
    parts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "estimate_bytes": self.estimate,
            "baseline_bytes": self.baseline,
            "tile_batch": self.tile_batch,
            "slab_bytes": self.slab_bytes,
            "parts_bytes": dict(self.parts),
        }


def _processing_shape(image: Volume, reorients: bool) -> tuple[int, ...]:
    """``image``'s spatial shape on the processing grid (as ``to_processing`` gives it)."""
    shape = list(image.spatial_shape)
    if reorients:
        canonical = [0, 0, 0]
        for src, (dst, _) in enumerate(canonical_ornt(image.affine)):
            canonical[int(dst)] = shape[src]
        shape = canonical
    return tuple(reversed(shape))


def _member_size(image: Volume, plans, member) -> MemberSize:
    spacing = processing_spacing(image.affine, plans.reorients)
    shape = _processing_shape(image, plans.reorients)
    spacing = tuple(spacing[a] for a in plans.transpose_forward)
    shape = tuple(shape[a] for a in plans.transpose_forward)
    target = target_spacing(member.config, spacing)
    previous = 0 if member.previous is None else len(plans.labels.foreground)
    features = member.config.architecture.get("arch_kwargs", {}).get("features_per_stage", [32])
    new_shape = compute_new_shape(shape, spacing, target)
    return MemberSize(
        voxels=math.prod(new_shape),
        channels=image.n_channels + previous,
        patch_voxels=math.prod(member.config.patch_size),
        base_features=int(features[0]),
        spline_bytes=_spline_bytes(shape, new_shape, separate_z_axis(spacing, target)),
    )


def _spline_bytes(shape, new_shape, axis: int | None) -> int:
    """The order-3 resampling's float64 coefficients: a window of rows of the volume
    padded by 12 voxels per side (:mod:`medseg.preprocessing.zoom`), or one slice when
    a low-resolution axis is resampled separately; the prefilter's column chunks."""
    if tuple(shape) == tuple(new_shape):
        return 0
    padded = [s + 24 for a, s in enumerate(shape) if a != axis]
    window = min(8 * math.prod(padded), WINDOW_BYTES + 8 * math.prod(padded[1:]))
    return window + 3 * CHUNK_BYTES


def member_sizes(image: Volume, bundle) -> list[MemberSize]:
    """Every configuration the bundle runs for ``image`` (previous stages included)."""
    sizes = []
    for member in bundle.members:
        while member is not None:
            sizes.append(_member_size(image, bundle.plans, member))
            member = member.previous
    return sizes


def estimate_parts(
    image: Volume, sizes: list[MemberSize], n_classes: int, tile_batch: int, slab_bytes: int
) -> dict[str, int]:
    """Peak bytes above the baseline of each stage (see the module docstring)."""
    n = math.prod(image.spatial_shape)
    channels = image.n_channels
    logits = [4 * n_classes * s.voxels for s in sizes]
    network = 0
    for i, s in enumerate(sizes):
        data = 4 * s.channels * s.voxels
        accumulators = 4 * (n_classes + 1) * s.voxels
        activations = (
            tile_batch
            * s.patch_voxels
            * (ACTIVATION_PER_FEATURE * s.base_features + 4 * (4 * n_classes + 2 * s.channels))
        )
        held = sum(logits[:i])
        network = max(network, 2 * data + accumulators + 2 * logits[i] + activations + held)
    biggest = max(s.voxels for s in sizes)
    return {
        "preprocess": 4 * channels * n
        + max(n, max(s.spline_bytes for s in sizes))
        + 4 * channels * biggest,
        "network": network,
        "reconstruct": sum(logits) + 2 * n + min(slab_bytes, 4 * n_classes * n * 3),
    }


def plan_memory(
    image: Volume, bundle, tile_batch: int, budget: int | None, baseline: int
) -> MemoryPlan:
    """The settings (``tile_batch`` at most as asked, a slab size) whose estimated peak
    fits ``budget`` bytes; ``budget`` None: the asked settings. Raises
    :class:`InputRefusedError` with the estimate when none fits."""
    sizes = member_sizes(image, bundle)
    n_classes = len(bundle.labels)
    tried = []
    batches = sorted({tile_batch, *(b for b in (4, 2, 1) if b < tile_batch)}, reverse=True)
    for batch in batches:
        for slab in SLAB_CHOICES:
            parts = estimate_parts(image, sizes, n_classes, batch, slab)
            plan = MemoryPlan(baseline + max(parts.values()), baseline, batch, slab, parts)
            if budget is None or plan.estimate <= budget:
                return plan
            tried.append(plan)
    raise InputRefusedError(_refusal(tried[-1], budget, image))


def _refusal(smallest: MemoryPlan, budget: int, image: Volume) -> str:
    stage = max(smallest.parts, key=smallest.parts.get)
    shape = " x ".join(map(str, image.spatial_shape))
    return (
        f"too large for the memory allowed: predicting this {shape} "
        f"scan needs about {smallest.estimate / GB:.1f} GB even with 1 tile per call and "
        f"small slabs (most in the {stage} stage), and --max-memory is {budget / GB:.1f} GB; "
        "raise --max-memory if the machine has the memory, predict with fewer "
        "configurations (--folds does not change it), or use a machine with more memory"
    )


def default_budget() -> int:
    """``--max-memory``'s default: 80% of the machine's memory, or what is available now
    if that is less (bytes)."""
    import psutil

    memory = psutil.virtual_memory()
    return int(min(0.8 * memory.total, memory.available))


def current_rss() -> int:
    """This process's resident memory now (bytes): the baseline of the next case."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def with_plan(options, plan: MemoryPlan):
    """``options`` with the plan's tile batch and slab size."""
    return replace(options, tile_batch=plan.tile_batch, slab_bytes=plan.slab_bytes)
