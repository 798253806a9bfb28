"""The closed sets of values a user can choose, in one place each.

The command line (``choices=``), the batch and engine code and the workflow's
config schema (checked by a test) all use these lists. Each is a ``str`` enum,
so a member equals its value (``OutputFormat.NIFTI == "nifti"``) and JSON writes
it as the string; strings from the boundary become members with :func:`parse`.
"""

from __future__ import annotations

from enum import Enum

from medseg.core.errors import UsageError


class Engine(str, Enum):
    """What runs the network: ``auto`` = OpenVINO on CPU, PyTorch on GPUs."""

    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"


class Blend(str, Enum):
    """How tiles are accumulated: exact float32, or float16 as nnU-Net v2 (its labels);
    ``auto`` = nnunet for nnU-Net models, float32 for medseg models."""

    AUTO = "auto"
    FLOAT32 = "float32"
    NNUNET = "nnunet"


class OutputFormat(str, Enum):
    """What ``medseg predict`` writes per case."""

    NIFTI = "nifti"
    DICOM_SEG = "dicom-seg"
    PROBABILITIES = "probabilities"
    RTSTRUCT = "rtstruct"


class ConfigurationName(str, Enum):
    """nnU-Net v2's configurations, in planning order."""

    TWO_D = "2d"
    FULLRES = "3d_fullres"
    LOWRES = "3d_lowres"
    CASCADE_FULLRES = "3d_cascade_fullres"


def values(options: type[Enum]) -> tuple[str, ...]:
    """The valid values of an option, in order (for ``choices=`` and schemas)."""
    return tuple(member.value for member in options)


def parse(options: type[Enum], text: str, what: str):
    """``text`` as a member of ``options``; a UsageError naming ``what`` and the choices."""
    try:
        return options(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not one of {', '.join(values(options))}") from None
