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

from pathlib import Path

from medseg.core.errors import CheckpointError
from medseg.core.layout import NnunetResultsDir
from medseg.core.plans import Configuration, Plans
from medseg.inference.bundle import Member, ModelBundle, ModelError
from medseg.inference.model_check import (
    NNUNET_FIX,
    build_checked_network,
    check_configuration,
    check_labels,
    read_nnunet_files,
    typed_plans,
)


def nnunet_plans(plans: dict, dataset: dict, where: str = "dataset.json") -> dict:
    """nnU-Net's plans with medseg's ``labels`` and ``channel_names`` added.

    ``where`` names the dataset.json in error messages.
    """
    labels = dataset.get("labels", {})
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelError(f"{where}: labels: region-based nnU-Net models are not supported yet")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    return {
        **plans,
        "labels": sorted([int(v), str(n)] for n, v in labels.items()),
        "channel_names": [channels[k] for k in sorted(channels, key=int)],
    }


def _checkpoint(fold_dir: Path) -> Path:
    for name in NnunetResultsDir.CHECKPOINTS:
        if (fold_dir / name).exists():
            return fold_dir / name
    raise ModelError(f"{fold_dir}: no {' or '.join(NnunetResultsDir.CHECKPOINTS)}")


def _network(plans: Plans, config: Configuration, n_in: int, path: Path, device, where: str):
    """The fold network of ``path`` and the mirroring axes it was trained with; ``where``
    names the plans' architecture in errors."""
    from medseg.nets.checkpoint import load_torch_weights

    try:
        checkpoint = load_torch_weights(path)
    except CheckpointError as e:
        raise ModelError(str(e)) from e
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ModelError(f"{path}: no 'network_weights'; is this an nnU-Net v2 checkpoint?")
    weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile
    network = build_checked_network(config.architecture, n_in, plans.labels.n_classes, where)
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:  # torch lists each mismatch on its own line
        details = "; ".join(x.strip() for x in str(e).splitlines()[1:4] if x.strip())
        raise ModelError(
            f"{path}: the weights do not fit the plans' network ({details}); "
            f"was it trained with other plans? {NNUNET_FIX}"
        ) from e
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return network.to(device).eval(), tuple(axes) if axes is not None else None


def _checked_plans(root: Path) -> tuple[Plans, str, Configuration]:
    """The folder's plans (with labels and channels), its configuration's name and entry,
    checked: every problem is a ModelError naming plans.json or dataset.json and the field."""
    document, dataset = read_nnunet_files(root)
    folder = NnunetResultsDir(root)
    document = nnunet_plans(document, dataset, str(folder.dataset_json))
    check_labels(document["labels"], f"{folder.dataset_json}: labels", NNUNET_FIX)
    plans = typed_plans(document, folder.plans_json, NNUNET_FIX)
    configuration = root.name.split("__")[-1]
    referrer = f"{root}: the folder name's configuration"
    config = check_configuration(plans, configuration, folder.plans_json, referrer, NNUNET_FIX)
    return plans, configuration, config


def _load_member(root: Path, device, folds: list | None) -> tuple[Plans, Member]:
    """The member of one nnU-Net results folder; a cascade stage with its previous stage,
    read from the sibling folder nnU-Net keeps it in (``Trainer__Plans__3d_lowres``)."""
    plans, configuration, config = _checked_plans(root)
    available = NnunetResultsDir(root).folds()
    use = [str(f) for f in folds] if folds else available
    missing = sorted(set(use) - set(available))
    if not use or missing:
        raise ModelError(f"{root}: folds {missing or use} not found (available: {available})")
    member = Member(
        configuration,
        config,
        [int(f) if f.isdigit() else f for f in use],
        mirror_axes=config.mirror_axes,
    )
    where = f"{NnunetResultsDir(root).plans_json}: configurations.{configuration}.architecture"
    n_in = config.input_channels(plans.n_channels, plans.labels)
    for fold in use:
        path = _checkpoint(NnunetResultsDir(root).fold(fold))
        network, axes = _network(plans, config, n_in, path, device, where)
        member.networks.append(network)
        if axes is not None:
            member.mirror_axes = axes
    if config.previous_stage:
        sibling = root.with_name(f"{root.name.rsplit('__', 1)[0]}__{config.previous_stage}")
        if not sibling.is_dir():
            raise ModelError(
                f"{root}: a cascade stage after {config.previous_stage}, whose results folder "
                f"{sibling.name} should be beside it; copy both stages' folders together"
            )
        prev_folds = NnunetResultsDir(sibling).folds()
        same = folds and all(str(f) in prev_folds for f in folds)
        member.previous = _load_member(sibling, device, folds if same else None)[1]
    return plans, member


def load_nnunet_model(root: Path, device="cpu", folds: list | None = None) -> ModelBundle:
    """A bundle for an nnU-Net v2 results folder (one configuration, its folds; a
    cascade stage with its previous stage's folder beside it)."""
    root = Path(root)
    plans, member = _load_member(root, device, folds)
    meta = {"source": "nnunetv2", "folder": str(root), "configuration": member.configuration}
    return ModelBundle(root, plans, [member], None, meta)
