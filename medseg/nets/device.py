"""Choosing the torch device from a user's words: auto, cpu, cuda, cuda:N."""

from __future__ import annotations

from medseg.core.errors import DeviceError


def resolve_device(name: str = "auto"):
    """``torch.device`` for ``name``; ``auto`` is the first CUDA GPU if there is one."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available here (torch "
                f"{torch.__version__}); use --device cpu, or install a CUDA build of torch"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return device
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
