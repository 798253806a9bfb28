"""Typed plans: the facts every stage reads from plans.json, read and checked once.

``plans.json`` stays nnU-Net v2's layout (plus medseg's ``labels`` and
``channel_names``); :class:`Plans` wraps it, checks what the stages rely on, and
answers their questions in one place: a configuration's patch size, spacing,
network and normalization, its input channels (a cascade stage adds the previous
stage's one-hot foreground), nnU-Net's mirroring axes, the foreground labels.
:meth:`Plans.to_dict` gives the JSON back unchanged.

Per-axis values are in the processing order (see :mod:`medseg.core.records`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.core.errors import RecordError
from medseg.core.records import PLANS_SCHEMA, STAGES_SCHEMA, check_schema, read_record, stamp

#: The readers whose volumes are reoriented to canonical RAS (medseg's own plans).
REORIENTING_READERS = ("NibabelIOWithReorient",)
#: Keys a configuration must have (after inheritance) for any stage to use it.
CONFIGURATION_KEYS = (
    "patch_size",
    "spacing",
    "architecture",
    "normalization_schemes",
    "use_mask_for_norm",
    "batch_size",
)


#: The label name that marks unannotated voxels (nnU-Net's ``ignore``).
IGNORE_NAME = "ignore"


@dataclass(frozen=True)
class LabelSet:
    """Label values and names: background 0, foreground 1, 2, ... in order.

    A label named ``ignore`` (nnU-Net's convention for partial annotations) must have
    the highest value; it is kept apart in :attr:`ignore`: it is no class of the
    network (not in :attr:`pairs`, :attr:`foreground` or :attr:`n_classes`) and only
    returns in :meth:`to_list`.
    """

    pairs: tuple[tuple[int, str], ...]
    ignore: int | None = None

    @classmethod
    def of(cls, pairs: Sequence, where: str = "labels") -> LabelSet:
        """From ``[[0, "background"], [1, "liver"], ...]``; values must be 0, 1, 2, ...
        (an ``ignore`` label included, which must have the highest value)."""
        try:
            items = tuple((int(v), str(n)) for v, n in pairs)
        except (TypeError, ValueError) as e:
            raise RecordError(f"{where}: labels must be [value, name] pairs ({e})") from e
        if [v for v, _ in items] != list(range(len(items))) or len(items) < 2:
            raise RecordError(
                f"{where}: label values must be 0 (background), 1, 2, ... in "
                f"order, got {[v for v, _ in items]}"
            )
        ignore = [v for v, n in items if n == IGNORE_NAME]
        if not ignore:
            return cls(items)
        if len(ignore) > 1 or ignore[0] != items[-1][0] or len(items) < 3:
            raise RecordError(
                f"{where}: the label {IGNORE_NAME!r} must be the one with the highest value, "
                f"after background and at least one class (nnU-Net's convention), got "
                f"{[list(p) for p in items]}; renumber it in dataset.json and the label files"
            )
        return cls(items[:-1], ignore[0])

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(v for v, _ in self.pairs)

    @property
    def foreground(self) -> tuple[int, ...]:
        """Foreground label values (background 0 and the ignore label left out)."""
        return tuple(v for v, _ in self.pairs if v != 0)

    @property
    def names(self) -> dict[int, str]:
        """Value -> name, background included, the ignore label not."""
        return dict(self.pairs)

    @property
    def all_names(self) -> dict[int, str]:
        """:attr:`names` and the ignore label, if any (what evaluation needs)."""
        return dict(self.to_list())

    @property
    def n_classes(self) -> int:
        """Network output channels: one per label, background included, ignore not."""
        return len(self.pairs)

    def to_list(self) -> list[list]:
        extra = [] if self.ignore is None else [[self.ignore, IGNORE_NAME]]
        return [[v, n] for v, n in self.pairs] + extra


@dataclass(frozen=True)
class Configuration:
    """One configuration of the plans (``inherits_from`` resolved)."""

    name: str
    raw: Mapping = field(repr=False)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.raw["patch_size"])

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.raw["spacing"])

    @property
    def batch_size(self) -> int:
        return int(self.raw["batch_size"])

    @property
    def architecture(self) -> Mapping:
        return self.raw["architecture"]

    @property
    def normalization_schemes(self) -> tuple[str, ...]:
        return tuple(self.raw["normalization_schemes"])

    @property
    def use_mask_for_norm(self) -> tuple[bool, ...]:
        return tuple(bool(m) for m in self.raw["use_mask_for_norm"])

    @property
    def batch_dice(self) -> bool:
        return bool(self.raw.get("batch_dice", False))

    @property
    def previous_stage(self) -> str | None:
        """The configuration whose segmentation this cascade stage takes as input."""
        return self.raw.get("previous_stage")

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """nnU-Net's mirroring axes: every spatial axis of the patch (training and testing)."""
        return tuple(range(len(self.patch_size)))

    @property
    def n_stages(self) -> int:
        kwargs = self.architecture["arch_kwargs"]
        return int(kwargs["n_stages"]) if "n_stages" in kwargs else len(kwargs["strides"])

    def input_channels(self, n_image_channels: int, labels: LabelSet) -> int:
        """The network's input channels: the image's, plus one per foreground label of the
        previous stage's segmentation for a cascade stage."""
        return n_image_channels + (len(labels.foreground) if self.previous_stage else 0)


@dataclass(frozen=True)
class Plans:
    """A plans record, checked; its JSON is :attr:`raw` (do not change it)."""

    raw: Mapping = field(repr=False)

    @classmethod
    def from_dict(cls, record: Mapping, where: str = "plans") -> Plans:
        """Wrap a plans dict (medseg's, or nnU-Net's with labels and channels added)."""
        if not isinstance(record, Mapping):
            raise RecordError(f"{where}: plans must be a JSON object")
        if "schema" in record:
            check_schema(dict(record), PLANS_SCHEMA, where)
        for key in ("configurations", "labels", "channel_names", "transpose_forward"):
            if key not in record:
                raise RecordError(f"{where}: plans without {key!r}; plan again")
        plans = cls(copy.deepcopy(dict(record)))
        LabelSet.of(record["labels"], where)
        return plans

    @classmethod
    def of(cls, plans: Plans | Mapping, where: str = "plans") -> Plans:
        """``plans`` itself, or the plans of a dict (what the planner and JSON files give);
        for public entry points that take either."""
        return plans if isinstance(plans, Plans) else cls.from_dict(plans, where)

    @property
    def labels(self) -> LabelSet:
        return LabelSet.of(self.raw["labels"])

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.raw["channel_names"])

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def configurations(self) -> tuple[str, ...]:
        """Configuration names, in the plans' order."""
        return tuple(self.raw["configurations"])

    @property
    def transpose_forward(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.raw["transpose_forward"])

    @property
    def reorients(self) -> bool:
        """Whether volumes were reoriented to RAS before planning (medseg's reader)."""
        reader = self.raw.get("image_reader_writer", REORIENTING_READERS[0])
        return reader in REORIENTING_READERS

    @property
    def intensity_properties(self) -> Mapping:
        """Foreground intensity statistics per channel (``{"0": {...}}``)."""
        return self.raw.get("foreground_intensity_properties_per_channel", {})

    @property
    def median_spacing(self) -> tuple[float, ...] | None:
        """The training data's median spacing (processing order, transposed)."""
        value = self.raw.get("original_median_spacing_after_transp")
        return tuple(float(s) for s in value) if value else None

    @property
    def median_shape(self) -> tuple[int, ...] | None:
        value = self.raw.get("original_median_shape_after_transp")
        return tuple(int(s) for s in value) if value else None

    @property
    def dataset_name(self) -> str | None:
        return self.raw.get("dataset_name")

    @property
    def plans_name(self) -> str | None:
        return self.raw.get("plans_name")

    def configuration(self, name: str, where: str | None = None) -> Configuration:
        """The configuration ``name`` with ``inherits_from`` resolved and its keys checked."""
        merged = self.resolve(name, where)
        missing = [k for k in CONFIGURATION_KEYS if k not in merged]
        if missing:
            raise RecordError(
                f"{_at(where)}configuration {name!r} lacks {', '.join(missing)}; plan again"
            )
        return Configuration(name, merged)

    def resolve(self, name: str, where: str | None = None) -> dict:
        """The JSON of configuration ``name`` with ``inherits_from`` resolved, unchecked
        (for validators that report on the JSON itself)."""
        configs = self.raw["configurations"]
        if name not in configs:
            raise RecordError(
                f"{_at(where)}the plans have no configuration {name!r}; available: "
                f"{', '.join(configs) or 'none'}"
            )
        merged, seen, parent = dict(configs[name]), {name}, None
        while "inherits_from" in merged:
            parent = merged.pop("inherits_from")
            if parent in seen or parent not in configs:
                raise RecordError(
                    f"{_at(where)}configuration {name!r} inherits from unknown or cyclic {parent!r}"
                )
            seen.add(parent)
            merged = {**configs[parent], **merged}
        return copy.deepcopy(merged)

    @property
    def preprocessed_configurations(self) -> tuple[str, ...]:
        """Configurations with preprocessed data of their own (a cascade stage that
        inherits from 3d_fullres reads 3d_fullres's)."""
        configs = self.raw["configurations"]
        return tuple(n for n in self.configurations if "inherits_from" not in configs[n])

    def data_configuration(self, name: str) -> str:
        """The configuration whose preprocessed data ``name`` trains on (itself, or the
        one it inherits from: 3d_cascade_fullres reads 3d_fullres's)."""
        configs = self.raw["configurations"]
        self.resolve(name)  # known, no cycle
        while "inherits_from" in configs[name]:
            name = configs[name]["inherits_from"]
        return name

    def stages_record(self) -> dict:
        """What the workflow preprocesses and trains, as the record ``medseg plan`` writes
        beside the plans (so the workflow never reads the plans' internals)."""
        return stamp(
            {
                "preprocess": list(self.preprocessed_configurations),
                # every configuration trains (a cascade stage after its previous stage)
                "train": list(self.configurations),
                "data": {n: self.data_configuration(n) for n in self.configurations},
                "previous": {
                    n: self.configuration(n).previous_stage
                    for n in self.configurations
                    if self.configuration(n).previous_stage
                },
            },
            STAGES_SCHEMA,
        )

    def to_dict(self) -> dict:
        """The plans JSON (a copy)."""
        return copy.deepcopy(dict(self.raw))

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=1) + "\n"


def _at(where: str | None) -> str:
    return f"{where}: " if where else ""


def read_plans(path: str | Path) -> Plans:
    """Read and check a medseg plans file."""
    return Plans.from_dict(read_record(path, PLANS_SCHEMA), str(path))
