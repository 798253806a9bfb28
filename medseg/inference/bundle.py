"""Deployable model folders: what ``medseg predict`` needs, and nothing else.

A medseg model folder::

    MODEL/model.json                      what to run: members (configuration + folds, a
                                          cascade's previous stage), postprocessing, labels,
                                          channels, medseg version
    MODEL/plans.json                      the plans the networks were trained with
    MODEL/<configuration>/fold_<k>.safetensors   weights (+ readable .json metadata)

One member is a single configuration (its folds averaged); two members are an
ensemble of configurations (probabilities averaged). A cascade member names its
previous stage, whose folds live in the same folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medseg import __version__
from medseg.core.errors import ModelError
from medseg.core.layout import ModelFolder, NnunetResultsDir
from medseg.core.plans import Configuration, Plans
from medseg.core.records import stamp
from medseg.inference.model_check import (
    MODEL_SCHEMA,
    build_checked_network,
    load_checked_weights,
    read_model_folder,
    weight_path,
)
from medseg.io.atomic import atomic_dir


@dataclass
class Member:
    """One configuration of a model, with its fold networks loaded."""

    configuration: str
    config: Configuration
    folds: list[int | str]
    networks: list = field(default_factory=list)
    mirror_axes: tuple[int, ...] = ()
    previous: Member | None = None


@dataclass
class ModelBundle:
    """A loaded model: plans (labels, channels), members with networks, postprocessing."""

    root: Path
    plans: Plans
    members: list[Member]
    postprocessing: dict | None
    meta: dict

    @property
    def labels(self) -> list[tuple[int, str]]:
        return list(self.plans.labels.pairs)

    @property
    def channel_names(self) -> list[str]:
        return list(self.plans.channel_names)

    @property
    def label_names(self) -> dict[int, str]:
        return self.plans.labels.names


def export_model(
    out: Path,
    plans: Plans | Mapping,
    members: list[dict],
    checkpoints: dict[str, dict],
    *,
    postprocessing: dict | None = None,
    cross_validation: dict | None = None,
) -> Path:
    """Write a model folder (all or nothing: a temporary folder renamed at the end).

    ``members``: e.g. ``[{"configuration": "3d_fullres", "folds": [0, 1]}]`` (a cascade
    member adds ``"previous": {"configuration": "3d_lowres", "folds": [...]}``).
    ``checkpoints[configuration][fold]``: the safetensors file to copy (weights and
    metadata only are kept: it is copied as is; training state is small beside them).
    """
    out, plans = Path(out), Plans.of(plans)
    with atomic_dir(out, "medseg model folder", recognize=ModelFolder(out).model_json.name) as tmp:
        needed = _needed(members)
        for configuration, folds in needed.items():
            plans.configuration(configuration)
            for fold in folds:
                src = Path(checkpoints[configuration][fold])
                dst = weight_path(tmp, configuration, fold)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                if src.with_suffix(".json").exists():
                    shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
        record = stamp(
            {
                "medseg_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": "medseg",
                "dataset_name": plans.dataset_name,
                "labels": plans.labels.to_list(),
                "channel_names": list(plans.channel_names),
                "members": members,
                "postprocessing": postprocessing,
                "cross_validation": cross_validation,
            },
            MODEL_SCHEMA,
        )
        ModelFolder(tmp).model_json.write_text(json.dumps(record, indent=1) + "\n")
        ModelFolder(tmp).plans_json.write_text(plans.to_json())
    return out


def _needed(members: list[dict]) -> dict[str, list]:
    needed: dict[str, list] = {}
    for m in members:
        for part in (m, m.get("previous")):
            if part:
                needed.setdefault(part["configuration"], [])
                needed[part["configuration"]] += [
                    f for f in part["folds"] if f not in needed[part["configuration"]]
                ]
    return needed


def _load_member(root: Path, plans: Plans, record: dict, folds, device) -> Member:
    """One member of a checked model folder, with the networks of the folds in use."""
    configuration = record["configuration"]
    config = plans.configuration(configuration)
    use = [f for f in record["folds"] if folds is None or f in folds]
    if not use:
        raise ModelError(
            f"{root}: none of the folds {folds} exist for {configuration} "
            f"(available: {record['folds']})"
        )
    previous = None
    if record.get("previous"):
        previous = _load_member(root, plans, record["previous"], folds, device)
    n_in = config.input_channels(plans.n_channels, plans.labels)
    member = Member(configuration, config, use, mirror_axes=config.mirror_axes, previous=previous)
    where = f"{ModelFolder(root).plans_json}: configurations.{configuration}.architecture"
    for fold in use:
        network = build_checked_network(config.architecture, n_in, plans.labels.n_classes, where)
        load_checked_weights(network, weight_path(root, configuration, fold))
        member.networks.append(network.to(device).eval())
    return member


def load_model(path: Path, device="cpu", folds: list | None = None) -> ModelBundle:
    """Load a medseg model folder or an nnU-Net v2 results folder (Trainer__Plans__Config).

    The folder is checked first (:mod:`medseg.inference.model_check`): every problem,
    from a missing field to a weight file that does not fit its network, is a
    :class:`ModelError` naming the file and the field or tensor.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"{root}: not a model folder")
    if not ModelFolder(root).model_json.exists():
        nnunet = NnunetResultsDir(root)
        if nnunet.plans_json.exists() and nnunet.dataset_json.exists():
            from medseg.inference.nnunet_model import load_nnunet_model

            return load_nnunet_model(root, device, folds)
        raise ModelError(
            f"{root}: no model.json; expected a medseg model folder (made by 'medseg select' "
            "or 'medseg export') or an nnU-Net v2 results folder (plans.json, dataset.json, "
            "fold_*/checkpoint_final.pth)"
        )
    meta, plans = read_model_folder(root)
    members = [_load_member(root, plans, m, folds, device) for m in meta["members"]]
    return ModelBundle(root, plans, members, meta.get("postprocessing"), meta)
