"""Read a dataset folder (MSD or nnU-Net v2 raw layout) into one list of cases.

MSD (Medical Segmentation Decathlon)::

    dataset.json   {"modality": {"0": "CT"}, "labels": {"0": "background", ...},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                    "test": ["./imagesTs/y.nii.gz"]}
    imagesTr/x.nii.gz   one file per case; several channels as a 4D (X, Y, Z, C) image

nnU-Net v2 raw::

    dataset.json   {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...},
                    "file_ending": ".nii.gz", "numTraining": N}
    imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz ...   one file per channel
    labelsTr/CASE.nii.gz

Loading checks the structure of ``dataset.json`` only; whether the files exist
and agree with each other is :mod:`medseg.dataset.check`'s job, so that all
problems can be reported at once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medseg.core.errors import DatasetError


@dataclass(frozen=True)
class Case:
    """One case: its image file(s) and label file (None for unlabelled test cases).

    ``images`` holds one file per channel (nnU-Net layout) or a single file
    holding all channels (MSD layout).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset folder as medseg sees it, whatever its layout."""

    root: Path
    layout: str
    name: str
    channel_names: tuple[str, ...]
    labels: tuple[tuple[int, str], ...]
    file_ending: str
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    #: ``numTraining`` as dataset.json declares it (None if absent); ``check`` compares it
    #: with the cases found.
    declared_training: int | None = None

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> frozenset[int]:
        return frozenset(v for v, _ in self.labels)

    def case(self, case_id: str) -> Case:
        for c in self.training + self.test:
            if c.case_id == case_id:
                return c
        raise DatasetError(f"{self.root}: no case {case_id!r}")


def _inside(root: Path, rel: str, where: str) -> Path:
    """Resolve ``rel`` against ``root``, refusing paths that leave the folder."""
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: expected a relative file path, got {rel!r}")
    if os.path.isabs(rel):
        raise DatasetError(
            f"{where}: absolute path {rel!r}; paths in dataset.json must be relative to the "
            "dataset folder"
        )
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise DatasetError(
            f"{where}: path {rel!r} points outside the dataset folder; keep every file inside it"
        )
    return root / norm


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else Path(name).stem


def _indexed(mapping: object, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f'{where}: {key!r} must be a non-empty object like {{"0": "CT"}}')
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as e:
        raise DatasetError(f"{where}: the keys of {key!r} must be 0, 1, 2, ...") from e
    if [i for i, _ in items] != list(range(len(items))):
        raise DatasetError(f"{where}: the keys of {key!r} must be 0, 1, ... without gaps")
    return tuple(v for _, v in items)


def _declared_training(meta: dict, where: str) -> int | None:
    """``numTraining`` if dataset.json gives it: a non-negative integer."""
    value = meta.get("numTraining")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(
            f"{where}: 'numTraining' must be the number of training cases (an integer), got "
            f"{value!r}; correct it or remove the key"
        )
    return value


def _labels(raw: object, name_to_value: bool, where: str) -> tuple[tuple[int, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'labels' must be a non-empty object")
    pairs = []
    for k, v in raw.items():
        value, name = (v, k) if name_to_value else (k, v)
        if isinstance(value, (list, tuple)):
            raise DatasetError(
                f"{where}: label {name!r} is a region (list of values); region-based "
                "training is not supported yet"
            )
        try:
            pairs.append((int(value), str(name)))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{where}: label value {value!r} is not an integer") from e
    pairs.sort()
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise DatasetError(f"{where}: label values repeat: {values}")
    if values[0] != 0:
        raise DatasetError(f"{where}: labels must include background as 0, got {values}")
    if values != list(range(len(values))):
        raise DatasetError(
            f"{where}: label values must be consecutive 0, 1, 2, ... (as nnU-Net requires), got "
            f"{values}; renumber the labels in the files and in dataset.json"
        )
    ignore = [v for v, n in pairs if n == "ignore"]
    if ignore and ignore[0] != values[-1]:
        raise DatasetError(
            f"{where}: the label 'ignore' (unannotated voxels) must have the highest value, "
            f"got {ignore[0]} of {values} (nnU-Net's convention); renumber it in dataset.json "
            "and the label files"
        )
    return tuple(pairs)


def _load_msd(root: Path, meta: dict, where: str) -> DatasetSpec:
    training = meta.get("training")
    if not isinstance(training, list):
        raise DatasetError(f"{where}: 'training' must be a list of {{image, label}} entries")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{where}: training entry {i} has no 'image': {entry!r}")
        image = _inside(root, entry["image"], where)
        label = _inside(root, entry["label"], where) if entry.get("label") else None
        cases.append(Case(_strip_ending(image.name, ".nii.gz"), (image,), label))
    test = []
    for entry in meta.get("test") or []:
        rel = entry["image"] if isinstance(entry, dict) else entry
        image = _inside(root, rel, where)
        test.append(Case(_strip_ending(image.name, ".nii.gz"), (image,), None))
    return DatasetSpec(
        root=root,
        layout="msd",
        name=str(meta.get("name", root.name)),
        channel_names=_indexed(meta.get("modality"), "modality", where),
        labels=_labels(meta.get("labels"), name_to_value=False, where=where),
        file_ending=".nii.gz",
        training=_unique(cases, where),
        test=_unique(test, where),
        declared_training=_declared_training(meta, where),
    )


def _scan_channels(folder: Path, ending: str, n_channels: int, labels: Path | None) -> list[Case]:
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    ids = set()
    if folder.is_dir():
        for f in folder.iterdir():
            m = pattern.match(f.name)
            if m and not f.name.startswith("."):
                ids.add(m.group("case"))
    return [
        Case(
            cid,
            tuple(folder / f"{cid}_{c:04d}{ending}" for c in range(n_channels)),
            (labels / f"{cid}{ending}") if labels is not None else None,
        )
        for cid in sorted(ids)
    ]


def _load_nnunet(root: Path, meta: dict, where: str) -> DatasetSpec:
    channels = _indexed(meta.get("channel_names"), "channel_names", where)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DatasetError(f"{where}: 'file_ending' must be a suffix like \".nii.gz\"")
    if isinstance(meta.get("dataset"), dict):
        cases = []
        for cid, entry in sorted(meta["dataset"].items()):
            images = tuple(_inside(root, p, where) for p in entry.get("images", []))
            label = _inside(root, entry["label"], where) if entry.get("label") else None
            cases.append(Case(str(cid), images, label))
    else:
        cases = _scan_channels(root / "imagesTr", ending, len(channels), root / "labelsTr")
    test = _scan_channels(root / "imagesTs", ending, len(channels), None)
    return DatasetSpec(
        root=root,
        layout="nnunetv2",
        name=str(meta.get("name", root.name)),
        channel_names=channels,
        labels=_labels(meta.get("labels"), name_to_value=True, where=where),
        file_ending=ending,
        training=_unique(cases, where),
        test=_unique(test, where),
        declared_training=_declared_training(meta, where),
    )


def _unique(cases: list[Case], where: str) -> tuple[Case, ...]:
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise DatasetError(f"{where}: case {c.case_id!r} is listed twice")
        seen.add(c.case_id)
    return tuple(cases)


def load_dataset(root: str | Path) -> DatasetSpec:
    """Read ``root/dataset.json`` (MSD or nnU-Net v2 layout) into a :class:`DatasetSpec`."""
    root = Path(root)
    meta_path = root / "dataset.json"
    where = str(meta_path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the dataset folder holding dataset.json")
    if not meta_path.is_file():
        raise DatasetError(
            f"{root}: no dataset.json. medseg reads the MSD layout and the nnU-Net v2 raw "
            "layout, both described by a dataset.json in the dataset folder."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{where}: must hold a JSON object")
    if "channel_names" in meta:
        spec = _load_nnunet(root, meta, where)
    elif "modality" in meta and "training" in meta:
        spec = _load_msd(root, meta, where)
    else:
        raise DatasetError(
            f"{where}: neither an nnU-Net v2 dataset.json (needs 'channel_names', 'labels', "
            "'file_ending') nor an MSD one (needs 'modality', 'labels', 'training')"
        )
    if not spec.training:
        raise DatasetError(f"{where}: no training cases found")
    return spec
