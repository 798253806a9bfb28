"""Checkpoints that load without unpickling anything.

A checkpoint is one safetensors file: tensors (``model/...`` weights,
``optim/...`` optimizer buffers, ``rng/...`` generator states) plus a JSON
document of everything else (epoch, learning rate, loss-scaler state, EMA,
settings) in the safetensors header; a readable copy of that metadata is
written beside it as ``NAME.json``. It is written to a temporary file and
renamed, so a crash never leaves a half-written checkpoint. Pickle-based files
(``torch.save``) are never unpickled: they are read only with
``torch.load(weights_only=True)``, and anything that needs more is refused.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medseg.core.errors import CheckpointError
from medseg.io.atomic import atomic_path, write_text_atomic

STATE_KEY = "medseg"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{name}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{pid}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": plain}


def unique_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter and buffer once, under its first name.

    dynamic_network_architectures' U-Nets reach some modules by two paths (the
    decoder keeps a reference to the encoder; ``conv`` is also ``all_modules.0``),
    so ``state_dict()`` lists the same tensors under several names, which
    safetensors rightly refuses to store twice.
    """
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return {k: v.detach().cpu().contiguous() for k, v in named.items()}


def load_weights(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], *, where: str | Path | None = None
) -> None:
    """Copy ``weights`` (as saved by :func:`unique_weights`) into ``model``, all or error.

    ``where`` (the checkpoint's path) starts the error messages when given.
    """
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    missing = sorted(set(targets) - set(weights))
    unexpected = sorted(set(weights) - set(targets))
    prefix = f"{where}: " if where is not None else ""
    if missing or unexpected:
        raise CheckpointError(
            f"{prefix}the checkpoint does not fit this network: {len(missing)} missing "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}); was it trained with other plans?"
        )
    with torch.no_grad():
        for name, tensor in targets.items():
            if tensor.shape != weights[name].shape:
                raise CheckpointError(
                    f"{prefix}the checkpoint's {name} has shape {tuple(weights[name].shape)}, "
                    f"the network's {tuple(tensor.shape)}; was it trained with other plans?"
                )
            tensor.copy_(weights[name])


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``model`` weights, optionally ``optimizer`` state, and JSON ``state`` atomically."""
    tensors = {f"model/{k}": v for k, v in unique_weights(model).items()}
    document = {"state": state}
    if optimizer is not None:
        optim_tensors, optim_plain = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        document["optimizer"] = optim_plain
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(document)})
    # a readable copy of the metadata beside it (the safetensors header stays the truth)
    readable = {k: v for k, v in state.items() if k != "history"}
    write_text_atomic(path.with_suffix(".json"), json.dumps(readable, indent=1) + "\n")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the JSON document of a medseg checkpoint (safetensors only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: not a safetensors file. medseg checkpoints are .safetensors; for a "
            "PyTorch .pt/.pth file use load_torch_weights (which refuses pickled objects)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            document = json.loads((f.metadata() or {}).get(STATE_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path}: damaged or not a safetensors checkpoint ({e})") from e
    return tensors, document


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``model/`` entries of a checkpoint, with the prefix removed."""
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, document: dict) -> None:
    """Load optimizer buffers and hyper-parameters saved by :func:`save_checkpoint`."""
    saved = document.get("optimizer")
    if saved is None:
        raise CheckpointError("the checkpoint holds no optimizer state (is it a best/final one?)")
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in saved["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _numpy_number_globals() -> list:
    """numpy's scalar and dtype reconstructors: they rebuild numbers, never run code.

    nnU-Net v2's checkpoints keep numpy float32 scalars in their training logs,
    which torch's weights-only loader refuses unless these are allowed.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in "?bhilqBHILQefdg"]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def load_torch_weights(path: Path) -> dict:
    """Read a PyTorch file with ``weights_only=True``: tensors, plain containers and
    numpy numbers only.

    Files that hold other pickled Python objects are refused with a clear error
    rather than unpickled (unpickling can run arbitrary code).
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise CheckpointError(
            f"{path}: damaged or not a PyTorch checkpoint (not a zip archive); copy or "
            "download it again"
        )
    try:
        with torch.serialization.safe_globals(_numpy_number_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise CheckpointError(
            f"{path}: refused: the file contains pickled Python objects, not just tensors and "
            "plain containers. medseg never unpickles checkpoints, because unpickling runs "
            "arbitrary code. Re-save the weights as safetensors or as a plain state dict. "
            f"(torch said: {str(e).splitlines()[0]})"
        ) from e
