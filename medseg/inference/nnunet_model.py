"""Run existing nnU-Net v2 models: read a results folder into a :class:`ModelBundle`.

An nnU-Net v2 results folder (``Trainer__Plans__Configuration``) holds
``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_final.pth``. The
network is rebuilt from the plans with dynamic_network_architectures (through
medseg's allow-list) and the weights are read with ``torch.load(weights_only=True)``:
nnU-Net's trainer is never imported and nothing is unpickled. Preprocessing
follows the plans' reader: with nnU-Net's default SimpleITK reader, volumes are
used in their stored axis order, as nnU-Net does.
"""

from __future__ import annotations

import json
from pathlib import Path

from medseg.inference.bundle import Member, ModelBundle, ModelError, default_mirror_axes

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


def nnunet_plans(plans: dict, dataset: dict) -> dict:
    """nnU-Net's plans with medseg's ``labels`` and ``channel_names`` added."""
    labels = dataset.get("labels", {})
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelError("region-based nnU-Net models are not supported yet")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    return {
        **plans,
        "labels": sorted([int(v), str(n)] for n, v in labels.items()),
        "channel_names": [channels[k] for k in sorted(channels, key=int)],
    }


def _checkpoint(fold_dir: Path) -> Path:
    for name in CHECKPOINTS:
        if (fold_dir / name).exists():
            return fold_dir / name
    raise ModelError(f"{fold_dir}: no {' or '.join(CHECKPOINTS)}")


def _network(plans: dict, config: dict, path: Path, device):
    from medseg.nets.checkpoint import load_torch_weights
    from medseg.nets.unet import build_network

    checkpoint = load_torch_weights(path)
    weights = checkpoint.get("network_weights")
    if weights is None:
        raise ModelError(f"{path}: no 'network_weights'; is this an nnU-Net v2 checkpoint?")
    weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile
    network = build_network(config["architecture"], len(plans["channel_names"]),
                            len(plans["labels"]))  # fmt: skip
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise ModelError(f"{path}: the weights do not fit the plans' network ({e})") from e
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return network.to(device).eval(), tuple(axes) if axes is not None else None


def load_nnunet_model(root: Path, device="cpu", folds: list | None = None) -> ModelBundle:
    """A bundle for an nnU-Net v2 results folder (one configuration, its folds)."""
    from medseg.core.records import resolve_configuration

    root = Path(root)
    plans = nnunet_plans(json.loads((root / "plans.json").read_text()),
                         json.loads((root / "dataset.json").read_text()))  # fmt: skip
    configuration = root.name.split("__")[-1]
    config = resolve_configuration(plans, configuration)
    if "previous_stage" in config:
        raise ModelError(f"{root}: nnU-Net cascade models are not supported yet")
    available = sorted(p.name.split("_", 1)[1] for p in root.glob("fold_*") if p.is_dir())
    use = [str(f) for f in folds] if folds else available
    missing = sorted(set(use) - set(available))
    if not use or missing:
        raise ModelError(f"{root}: folds {missing or use} not found (available: {available})")
    member = Member(configuration, config, [int(f) if f.isdigit() else f for f in use],
                    mirror_axes=default_mirror_axes(config))  # fmt: skip
    for fold in use:
        network, axes = _network(plans, config, _checkpoint(root / f"fold_{fold}"), device)
        member.networks.append(network)
        if axes is not None:
            member.mirror_axes = axes
    meta = {"source": "nnunetv2", "folder": str(root), "configuration": configuration}
    return ModelBundle(root, plans, [tuple(x) for x in plans["labels"]], plans["channel_names"],
                       [member], None, meta)  # fmt: skip
