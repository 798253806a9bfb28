"""Experiment planning: from a fingerprint to the configurations nnU-Net v2 would choose.

The plans record keeps nnU-Net v2's layout (``configurations`` with
``patch_size``, ``batch_size``, ``spacing``, ``architecture``...), so medseg plans
and nnU-Net plans can be compared key by key and read by the same code. Every
knob that nnU-Net fixes in code (GPU memory budget, feature widths, which
configurations) is a field of :class:`PlannerSettings` instead, and nnU-Net's
planner classes (the default one and the Residual Encoder presets) are records of
:mod:`medseg.planning.presets` that ``PlannerSettings.preset`` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from medseg.core.errors import PlanError
from medseg.core.options import ConfigurationName, values
from medseg.core.records import PLANS_SCHEMA, Fingerprint, stamp
from medseg.planning.memory import feature_map_voxels
from medseg.planning.normalization import normalization_plan
from medseg.planning.presets import DEFAULT, Preset, preset, stage_blocks
from medseg.planning.spacing import fullres_target_spacing, resampled_shape, transpose_axes
from medseg.planning.topology import Topology, pool_and_conv_props

CONFIGURATIONS = values(ConfigurationName)

MIN_FEATURE_EDGE = 4
LOWRES_THRESHOLD = 0.25
LOWRES_STEP = 1.03


@dataclass(frozen=True)
class PlannerSettings:
    """Everything the planner can be told. Defaults reproduce nnU-Net v2's ExperimentPlanner.

    ``preset`` names the nnU-Net planner to reproduce (see
    :data:`medseg.planning.presets.PRESETS`); ``gpu_memory_gb``,
    ``max_dataset_fraction`` and ``plans_name`` left at None take the preset's value,
    and ``convs_per_stage`` (None: the preset's) replaces its per-stage counts.
    ``patch_size`` fixes the patch of a configuration (for example a small patch
    for a CPU demo); its topology and batch size are then derived from it.
    ``target_spacing`` overrides the full-resolution spacing (processing order).
    """

    gpu_memory_gb: float | None = None
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    convs_per_stage: int | None = None
    min_batch_size: int = 2
    max_dataset_fraction: float | None = None
    configurations: tuple[str, ...] | None = None
    target_spacing: tuple[float, ...] | None = None
    patch_size: dict[str, tuple[int, ...]] = field(default_factory=dict)
    plans_name: str | None = None
    preset: str = DEFAULT.name


def resolved_settings(settings: PlannerSettings) -> PlannerSettings:
    """``settings`` with every None that its preset fills filled in."""
    p = preset(settings.preset)
    return replace(
        settings,
        gpu_memory_gb=p.gpu_memory_gb if settings.gpu_memory_gb is None else settings.gpu_memory_gb,
        max_dataset_fraction=(
            p.max_dataset_fraction
            if settings.max_dataset_fraction is None
            else settings.max_dataset_fraction
        ),
        plans_name=p.plans_name if settings.plans_name is None else settings.plans_name,
    )


def _blocks(p: Preset, settings: PlannerSettings, n_stages: int) -> tuple[list[int], list[int]]:
    if settings.convs_per_stage is not None:
        return [settings.convs_per_stage] * n_stages, [settings.convs_per_stage] * (n_stages - 1)
    return stage_blocks(p, n_stages)


def _architecture(topo: Topology, settings: PlannerSettings) -> dict:
    dim = len(topo.patch_size)
    n_stages = len(topo.pool_kernel_sizes)
    max_features = settings.max_features_2d if dim == 2 else settings.max_features_3d
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    p = preset(settings.preset)
    encoder, decoder = _blocks(p, settings, n_stages)
    return {
        "network_class_name": p.network_class_name,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [
                min(max_features, settings.base_features * 2**i) for i in range(n_stages)
            ],
            "conv_op": conv,
            "kernel_sizes": [list(k) for k in topo.conv_kernel_sizes],
            "strides": [list(s) for s in topo.pool_kernel_sizes],
            p.encoder_blocks_key: encoder,
            "n_conv_per_stage_decoder": decoder,
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


class _MemoryModel:
    """Feature-map size of candidate networks, cached (nnU-Net's GPU memory proxy)."""

    def __init__(self, n_channels: int, n_classes: int, settings: PlannerSettings):
        self.n_channels, self.n_classes, self.settings = n_channels, n_classes, settings
        self._cache: dict[str, int] = {}

    def estimate(self, topo: Topology) -> int:
        key = f"{topo.patch_size}_{topo.pool_kernel_sizes}"
        if key not in self._cache:
            p = preset(self.settings.preset)
            arch = _architecture(topo, self.settings)["arch_kwargs"]
            self._cache[key] = feature_map_voxels(
                topo.patch_size,
                arch["strides"],
                arch["features_per_stage"],
                arch[p.encoder_blocks_key],
                arch["n_conv_per_stage_decoder"],
                self.n_classes,
                residual_encoder=p.residual_encoder,
            )
        return self._cache[key]


def _initial_patch(spacing: np.ndarray, median_shape: Sequence[float]) -> np.ndarray:
    """A patch with the spacing's aspect ratio, 256**3 (2048**2) voxels, clipped to the median."""
    inv = 1 / np.asarray(spacing, dtype=float)
    edge, power = (256, 3) if len(spacing) == 3 else (2048, 2)
    patch = [round(i) for i in inv * (edge**power / np.prod(inv)) ** (1 / power)]
    return np.array([min(p, m) for p, m in zip(patch, median_shape, strict=True)])


def _shrink(topo: Topology, spacing, median_shape) -> Topology:
    """Reduce the axis that is largest relative to the median shape by one valid step."""
    axis = np.argsort([p / m for p, m in zip(topo.patch_size, median_shape, strict=True)])[-1]
    trial = list(topo.patch_size)
    trial[axis] -= topo.divisible_by[axis]
    step = pool_and_conv_props(spacing, trial, MIN_FEATURE_EDGE).divisible_by[axis]
    patch = list(topo.patch_size)
    patch[axis] -= step
    return pool_and_conv_props(spacing, patch, MIN_FEATURE_EDGE)


def plan_configuration(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    n_voxels_dataset: float,
    memory: _MemoryModel,
    fixed_patch: Sequence[int] | None = None,
) -> dict:
    """Patch size, topology and batch size for one configuration (resolved settings)."""
    settings = memory.settings
    p = preset(settings.preset)
    spacing = np.asarray(spacing, dtype=float)
    is_2d = len(spacing) == 2
    # nnU-Net's order of operations, so that budgets other than 8 GB round the same way
    reference = (p.reference_2d if is_2d else p.reference_3d) * (
        settings.gpu_memory_gb / p.reference_gb
    )
    ref_bs = p.reference_bs_2d if is_2d else p.reference_bs_3d
    start = fixed_patch if fixed_patch is not None else _initial_patch(spacing, median_shape)
    topo = pool_and_conv_props(spacing, start, MIN_FEATURE_EDGE)
    estimate = memory.estimate(topo)
    while fixed_patch is None and _too_large(estimate, reference, ref_bs, p):
        topo = _shrink(topo, spacing, median_shape)
        estimate = memory.estimate(topo)
    batch = round(reference / estimate * ref_bs)
    cap = round(
        n_voxels_dataset
        * settings.max_dataset_fraction
        / np.prod(topo.patch_size, dtype=np.float64)
    )
    batch = max(min(batch, cap), settings.min_batch_size)
    return {
        "batch_size": int(batch),
        "patch_size": [int(p) for p in topo.patch_size],
        "median_image_size_in_voxels": [float(m) for m in median_shape],
        "spacing": [float(s) for s in spacing],
        "architecture": _architecture(topo, settings),
    }


def _too_large(estimate: int, reference: float, ref_bs: int, p: Preset) -> bool:
    """Whether the patch must shrink: the reference batch (ResEnc presets) or batch 2
    (default planner) would not fit the budget."""
    if p.shrink_to_reference_batch:
        return estimate > reference
    return estimate / ref_bs * 2 > reference


def _lowres(full: dict, median_shape: np.ndarray, n_training: int, memory: _MemoryModel):
    """nnU-Net's search for a low-resolution configuration, or None if not needed."""
    full_spacing = np.asarray(full["spacing"])
    median_voxels = np.prod(median_shape, dtype=np.float64)
    patch_voxels = np.prod(full["patch_size"], dtype=np.float64)
    spacing = full_spacing.copy()
    plan = None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        coarsest = max(spacing)
        if np.any(coarsest / spacing > 2):
            spacing[coarsest / spacing > 2] *= LOWRES_STEP
        else:
            spacing *= LOWRES_STEP
        shape = full_spacing / spacing * median_shape
        median_voxels = np.prod(shape, dtype=np.float64)
        plan = plan_configuration(
            spacing, tuple(round(i) for i in shape), float(median_voxels * n_training), memory
        )
        patch_voxels = np.prod(plan["patch_size"], dtype=np.int64)
    if np.prod(median_shape, dtype=np.float64) / median_voxels < 2:
        return None
    return plan


def _wanted(settings: PlannerSettings, name: str) -> bool:
    return settings.configurations is None or name in settings.configurations


def plan_experiment(fp: Fingerprint, settings: PlannerSettings = PlannerSettings()) -> dict:
    """The plans record for a fingerprint (see the module docstring)."""
    settings = resolved_settings(settings)
    for name in settings.configurations or ():
        if name not in CONFIGURATIONS:
            raise PlanError(f"unknown configuration {name!r}; choose from {CONFIGURATIONS}")
    if settings.target_spacing is not None:
        target = np.array(settings.target_spacing, dtype=float)
    else:
        target = fullres_target_spacing(fp.spacings, fp.shapes_after_crop)
    forward, backward = transpose_axes(target)
    shapes = [
        resampled_shape(sh, sp, target)
        for sp, sh in zip(fp.spacings, fp.shapes_after_crop, strict=True)
    ]
    median_shape = np.median(shapes, 0)[forward]
    spacing = target[forward]
    n_training = len(fp.cases)
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * n_training)
    memory = _MemoryModel(len(fp.channel_names), len(fp.labels), settings)
    schemes, use_mask = normalization_plan(fp.channel_names, fp.median_relative_size_after_crop)
    common = _common_entries(schemes, use_mask)
    configs: dict[str, dict] = {}
    if median_shape[0] != 1 and any(_wanted(settings, c) for c in CONFIGURATIONS[1:]):
        full = plan_configuration(
            spacing, median_shape, n_voxels, memory, settings.patch_size.get("3d_fullres")
        )
        low = _lowres(full, median_shape, n_training, memory)
        if low is not None and _wanted(settings, "3d_lowres"):
            configs["3d_lowres"] = {
                **_entry(settings, "3d_lowres", low, common),
                "batch_dice": False,
            }
        if _wanted(settings, "3d_fullres"):
            configs["3d_fullres"] = {
                **_entry(settings, "3d_fullres", full, common),
                "batch_dice": low is not None,
            }
        if "3d_lowres" in configs and "3d_fullres" in configs:
            if _wanted(settings, "3d_cascade_fullres"):
                configs["3d_lowres"]["next_stage"] = "3d_cascade_fullres"
                configs["3d_cascade_fullres"] = {
                    "inherits_from": "3d_fullres",
                    "previous_stage": "3d_lowres",
                }
    if _wanted(settings, "2d"):
        plan_2d = plan_configuration(
            spacing[1:], median_shape[1:], n_voxels, memory, settings.patch_size.get("2d")
        )
        configs = {"2d": {**_entry(settings, "2d", plan_2d, common), "batch_dice": True}, **configs}
    return stamp(_plans_body(fp, settings, forward, backward, configs), PLANS_SCHEMA)


def _common_entries(schemes: list[str], use_mask: list[bool]) -> dict:
    """Entries shared by every configuration (nnU-Net's resampling and normalization)."""
    seg_kwargs = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "preprocessor_name": "DefaultPreprocessor",
        "normalization_schemes": schemes,
        "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {**seg_kwargs, "is_seg": False, "order": 3},
        "resampling_fn_seg_kwargs": seg_kwargs,
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**seg_kwargs, "is_seg": False},
    }


def _entry(settings: PlannerSettings, name: str, plan: dict, common: dict) -> dict:
    shared = preset(settings.preset).shares_data_with
    prefix = shared if shared and name in ("2d", "3d_fullres") else settings.plans_name
    return {"data_identifier": f"{prefix}_{name}", **common, **plan}


def _plans_body(fp: Fingerprint, settings: PlannerSettings, forward, backward, configs) -> dict:
    spacings = np.array(fp.spacings, dtype=float)
    shapes = np.array(fp.shapes_after_crop, dtype=float)
    settings_record = asdict(settings)
    settings_record["patch_size"] = {k: list(v) for k, v in settings.patch_size.items()}
    return {
        "dataset_name": fp.dataset_name,
        "plans_name": settings.plans_name,
        "axis_order": "processing: canonical RAS with axes reversed (S, A, R)",
        "channel_names": list(fp.channel_names),
        "labels": [[v, n] for v, n in fp.labels],
        "original_median_spacing_after_transp": [float(i) for i in np.median(spacings, 0)[forward]],
        "original_median_shape_after_transp": [
            int(round(i)) for i in np.median(shapes, 0)[forward]
        ],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [int(i) for i in forward],
        "transpose_backward": [int(i) for i in backward],
        "configurations": configs,
        "experiment_planner_used": "medseg",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): dict(stats) for c, stats in enumerate(fp.foreground_intensity)
        },
        "planner_settings": settings_record,
    }
