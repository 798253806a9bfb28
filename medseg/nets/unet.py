"""U-Nets described by a plans record, built with ``dynamic_network_architectures``.

The architecture record has nnU-Net v2's shape (``network_class_name``,
``arch_kwargs``, ``_kw_requires_import``), so medseg plans and nnU-Net plans
build the same, weight-compatible networks. Class names are resolved through an
allow-list instead of importing whatever a plans file names, so a plans file
from elsewhere cannot make medseg import arbitrary modules.
"""

from __future__ import annotations

from collections.abc import Mapping

from medseg.core.errors import PlanError


def _allowed() -> dict[str, object]:
    import torch
    from dynamic_network_architectures.architectures.unet import (
        PlainConvUNet,
        ResidualEncoderUNet,
    )

    nn = torch.nn
    classes = [PlainConvUNet, ResidualEncoderUNet]
    ops = [
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.Dropout,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.LeakyReLU,
        nn.ReLU,
        nn.GELU,
    ]
    named = {f"{c.__module__}.{c.__name__}": c for c in classes}
    named.update({f"torch.nn.{o.__name__}": o for o in ops})
    named.update({f"{o.__module__}.{o.__name__}": o for o in ops})
    return named


def _resolve(name: str, allowed: Mapping[str, object]) -> object:
    try:
        return allowed[name]
    except KeyError:
        raise PlanError(
            f"unsupported network component {name!r} in the plans; medseg builds "
            "dynamic_network_architectures' PlainConvUNet and ResidualEncoderUNet with torch.nn "
            "convolutions, norms, dropouts and activations: plan again with 'medseg plan'"
        ) from None


def build_network(
    architecture: Mapping,
    in_channels: int,
    n_classes: int,
    *,
    deep_supervision: bool = False,
    device: str | None = None,
):
    """Instantiate the network described by ``architecture`` (a plans record).

    ``device="meta"`` builds it without allocating weights (for size estimates).
    """
    import torch

    allowed = _allowed()
    cls = _resolve(architecture["network_class_name"], allowed)
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = _resolve(kwargs[key], allowed)
    if device is None:
        return cls(
            input_channels=in_channels,
            num_classes=n_classes,
            deep_supervision=deep_supervision,
            **kwargs,
        )
    with torch.device(device):
        return cls(
            input_channels=in_channels,
            num_classes=n_classes,
            deep_supervision=deep_supervision,
            **kwargs,
        )
