"""Records passed between stages as JSON files: fingerprint, plans, splits.

Each record carries ``"schema"`` (what it is) and ``"schema_version"``; readers
refuse records of another kind or a newer version with a message that says so.

Axis convention of every per-axis list in these records (spacing, shapes, patch
sizes): the *processing order*, which is the volume reoriented to canonical RAS
with its axes reversed, ``(S, A, R)``. This is the order nnU-Net v2 uses for
NIfTI read with reorientation, so plans compare one to one with nnU-Net's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medseg.core.errors import RecordError

FINGERPRINT_SCHEMA = ("medseg.fingerprint", 1)
PLANS_SCHEMA = ("medseg.plans", 1)
SPLITS_SCHEMA = ("medseg.splits", 1)
#: Which planned configurations the workflow preprocesses and trains (``medseg plan``).
STAGES_SCHEMA = ("medseg.configurations", 2)
PREVIOUS_STAGE_SCHEMA = ("medseg.previous_stage", 1)
#: One preprocessed case: the steps applied, in order (see medseg.preprocessing.pipeline).
CASE_SCHEMA = ("medseg.case", 2)


def stamp(record: dict, schema: tuple[str, int]) -> dict:
    """``record`` with its schema name and version first."""
    return {"schema": schema[0], "schema_version": schema[1], **record}


def check_schema(record: object, schema: tuple[str, int], where: str) -> dict:
    """Verify ``record`` is a dict of the given schema and a version we can read."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object")
    name, version = schema
    if record.get("schema") != name:
        raise RecordError(
            f"{where}: not a {name} record (schema {record.get('schema')!r}); did you pass the "
            "right file?"
        )
    got = record.get("schema_version")
    if not isinstance(got, int) or got > version:
        raise RecordError(
            f"{where}: {name} schema version {got!r} is newer than this medseg reads ({version}); "
            "upgrade medseg or recreate the file"
        )
    return record


def read_record(path: str | Path, schema: tuple[str, int]) -> dict:
    """Load and check a JSON record file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    return check_schema(data, schema, str(path))


@dataclass(frozen=True)
class CaseFacts:
    """Per-case fingerprint entry (per-axis values in processing order)."""

    case_id: str
    spacing: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_crop: float
    orientation: str
    foreground_voxels: int
    intensity: tuple[dict, ...]


@dataclass(frozen=True)
class Fingerprint:
    """What the planner needs to know about a dataset."""

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: tuple[tuple[int, str], ...]
    cases: tuple[CaseFacts, ...]
    foreground_intensity: tuple[dict, ...]
    median_relative_size_after_crop: float
    excluded: tuple[dict, ...] = ()
    sampling: dict = field(default_factory=dict)

    @property
    def spacings(self) -> list[tuple[float, ...]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[tuple[int, ...]]:
        return [c.shape_after_crop for c in self.cases]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = [list(p) for p in self.labels]
        return stamp(d, FINGERPRINT_SCHEMA)

    @classmethod
    def from_dict(cls, d: dict, where: str = "fingerprint") -> Fingerprint:
        check_schema(d, FINGERPRINT_SCHEMA, where)
        try:
            cases = tuple(
                CaseFacts(
                    case_id=str(c["case_id"]),
                    spacing=tuple(float(s) for s in c["spacing"]),
                    shape_before_crop=tuple(int(s) for s in c["shape_before_crop"]),
                    shape_after_crop=tuple(int(s) for s in c["shape_after_crop"]),
                    relative_size_after_crop=float(c["relative_size_after_crop"]),
                    orientation=str(c["orientation"]),
                    foreground_voxels=int(c["foreground_voxels"]),
                    intensity=tuple(dict(i) for i in c["intensity"]),
                )
                for c in d["cases"]
            )
            return cls(
                dataset_name=str(d["dataset_name"]),
                channel_names=tuple(str(c) for c in d["channel_names"]),
                labels=tuple((int(v), str(n)) for v, n in d["labels"]),
                cases=cases,
                foreground_intensity=tuple(dict(i) for i in d["foreground_intensity"]),
                median_relative_size_after_crop=float(d["median_relative_size_after_crop"]),
                excluded=tuple(dict(e) for e in d.get("excluded", ())),
                sampling=dict(d.get("sampling", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError(f"{where}: malformed fingerprint ({type(e).__name__}: {e})") from e


def default_mirror_axes(patch_size) -> tuple[int, ...]:
    """nnU-Net's mirroring axes for a patch: every spatial axis, ``(0, 1)`` in 2D and
    ``(0, 1, 2)`` in 3D (for training augmentation and test-time mirroring alike)."""
    return tuple(range(len(patch_size)))
