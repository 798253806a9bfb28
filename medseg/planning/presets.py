"""Planner presets: nnU-Net v2's experiment planners as data.

nnU-Net v2 ships its planners as classes that differ in a handful of numbers
(``ExperimentPlanner`` and the Residual Encoder presets ``nnUNetPlannerResEncM``,
``nnUNetPlannerResEncL``, ``nnUNetPlannerResEncXL``). Here each is one
:class:`Preset` record; :mod:`medseg.planning.planner` runs the same rules with
the numbers of the preset that :class:`~medseg.planning.planner.PlannerSettings`
names.

Memory scaling follows nnU-Net: the feature-map budget of a configuration is
``reference_3d`` (``reference_2d``) times ``gpu_memory_gb / reference_gb``, so a
preset planned for another GPU size (``--gpu-memory``) scales its reference
linearly, as ``nnUNetv2_plan_experiment -pl nnUNetPlannerResEncL
-gpu_memory_target 40`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from medseg.core.errors import PlanError

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

# ResNet-style encoder of nnU-Net's ResEnc planners: blocks per stage, 1 conv per decoder stage
_RESENC_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
_RESENC_DECODER = (1,) * 12


@dataclass(frozen=True)
class Preset:
    """The numbers one nnU-Net v2 experiment planner fixes in code.

    Attributes
    ----------
    name : str
        medseg's name for it (``medseg plan --preset NAME``).
    nnunet_planner : str
        The nnU-Net v2 class it reproduces (``nnUNetv2_plan_experiment -pl``).
    network_class_name : str
        The dynamic_network_architectures U-Net the plans build.
    plans_name : str
        nnU-Net's plans identifier (the plans file's name without ``.json``).
    gpu_memory_gb : float
        GPU memory target when none is given.
    reference_gb : float
        GPU memory that ``reference_3d`` / ``reference_2d`` correspond to.
    reference_3d, reference_2d : int
        Feature-map voxels that fit ``reference_bs_3d`` / ``reference_bs_2d`` in
        ``reference_gb`` (nnU-Net's ``UNet_reference_val_3d/2d``).
    blocks_encoder, blocks_decoder : tuple of int
        Convolutions (plain) or residual blocks (residual encoder) per encoder stage,
        and convolutions per decoder stage, shallowest first; cut to the stage count.
    max_dataset_fraction : float
        Largest fraction of the dataset's voxels one batch may cover.
    shrink_to_reference_batch : bool
        Shrink the patch until the reference batch size fits the budget (ResEnc
        planners) instead of until batch size 2 fits (default planner).
    shares_data_with : str or None
        Plans name whose 2d and 3d_fullres preprocessed data these plans reuse (their
        ``data_identifier``): the ResEnc presets only change the network.
    description : str
        One line for help texts.
    reference_bs_3d, reference_bs_2d : int
        Batch sizes the reference values correspond to.
    """

    name: str
    nnunet_planner: str
    network_class_name: str
    plans_name: str
    gpu_memory_gb: float
    reference_gb: float
    reference_3d: int
    reference_2d: int
    blocks_encoder: tuple[int, ...]
    blocks_decoder: tuple[int, ...]
    max_dataset_fraction: float
    shrink_to_reference_batch: bool = False
    shares_data_with: str | None = None
    description: str = ""
    reference_bs_3d: int = 2
    reference_bs_2d: int = 12

    @property
    def residual_encoder(self) -> bool:
        return self.network_class_name == RESIDUAL_UNET

    @property
    def encoder_blocks_key(self) -> str:
        """The ``arch_kwargs`` key of the encoder's per-stage count."""
        return "n_blocks_per_stage" if self.residual_encoder else "n_conv_per_stage"


DEFAULT = Preset(
    name="default",
    nnunet_planner="ExperimentPlanner",
    network_class_name=PLAIN_UNET,
    plans_name="medsegPlans",
    gpu_memory_gb=8.0,
    reference_gb=8.0,
    reference_3d=560_000_000,
    reference_2d=85_000_000,
    blocks_encoder=(2,) * 14,
    blocks_decoder=(2,) * 13,
    max_dataset_fraction=0.05,
    description="nnU-Net's default planner (PlainConvUNet, 8 GB)",
)


def _resenc(size: str, gpu_gb: float, ref_3d: int, ref_2d: int, gpus: str) -> Preset:
    return Preset(
        name=f"resenc-{size.lower()}",
        nnunet_planner=f"nnUNetPlannerResEnc{size}",
        network_class_name=RESIDUAL_UNET,
        plans_name=f"nnUNetResEncUNet{size}Plans",
        gpu_memory_gb=gpu_gb,
        reference_gb=gpu_gb,
        reference_3d=ref_3d,
        reference_2d=ref_2d,
        blocks_encoder=_RESENC_ENCODER,
        blocks_decoder=_RESENC_DECODER,
        max_dataset_fraction=1.0,
        shrink_to_reference_batch=True,
        shares_data_with=DEFAULT.plans_name,
        description=f"nnU-Net's nnUNetPlannerResEnc{size} (ResidualEncoderUNet, {gpus})",
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        DEFAULT,
        _resenc("M", 8.0, 680_000_000, 135_000_000, "8 GB target, GPUs of ~9-11 GB"),
        _resenc("L", 24.0, 2_100_000_000, 380_000_000, "24 GB target, e.g. RTX 4090"),
        _resenc("XL", 40.0, 3_600_000_000, 560_000_000, "40 GB target, e.g. A100 40GB"),
    )
}


def preset(name: str) -> Preset:
    """The preset called ``name``; a PlanError listing the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PlanError(f"unknown planner preset {name!r}; choose from {list(PRESETS)}") from None


def stage_blocks(p: Preset, n_stages: int) -> tuple[list[int], list[int]]:
    """Encoder and decoder counts for ``n_stages`` stages (nnU-Net cuts its tuples)."""
    if n_stages > len(p.blocks_encoder):
        raise PlanError(
            f"preset {p.name!r} describes at most {len(p.blocks_encoder)} stages, the "
            f"topology has {n_stages}; use a smaller patch (--patch-size)"
        )
    return list(p.blocks_encoder[:n_stages]), list(p.blocks_decoder[: n_stages - 1])
