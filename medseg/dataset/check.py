"""Validate every case of a dataset and report all problems at once.

Each problem is one line naming the case and saying what is wrong: unreadable or
corrupt files, wrong number of channels, image/label shape or geometry mismatch,
label values not declared in dataset.json, NaN/Inf intensities, empty
foreground.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medseg.core.errors import MedsegError
from medseg.core.parallel import parallel_map
from medseg.core.volume import Kind, Volume
from medseg.dataset.layout import Case, DatasetSpec
from medseg.geometry.affine import grid_mismatch
from medseg.io.volumes import read_volume


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one case."""

    case_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.message}"


@dataclass(frozen=True)
class CheckSettings:
    """What counts as a problem."""

    allow_empty_labels: bool = False
    tol_voxels: float = 0.01


def _rel(spec: DatasetSpec, path) -> str:
    try:
        return str(path.relative_to(spec.root))
    except ValueError:
        return str(path)


def _read(spec: DatasetSpec, case: Case, path, kind: Kind, out: list[Problem]) -> Volume | None:
    if not path.exists():
        out.append(Problem(case.case_id, f"{_rel(spec, path)}: file not found"))
        return None
    try:
        return read_volume(path, kind)
    except MedsegError as e:
        msg = str(e).replace(str(path), _rel(spec, path))
        out.append(Problem(case.case_id, msg))
        return None


def _check_channels(spec: DatasetSpec, case: Case, out: list[Problem]) -> Volume | None:
    """Read the image file(s), check channel count and channel-file agreement."""
    volumes = [_read(spec, case, p, Kind.IMAGE, out) for p in case.images]
    if any(v is None for v in volumes) or not volumes:
        return None
    first = volumes[0]
    for path, v in zip(case.images[1:], volumes[1:], strict=True):
        if v.spatial_shape != first.spatial_shape:
            out.append(
                Problem(
                    case.case_id,
                    f"{_rel(spec, path)}: shape {v.spatial_shape} "
                    f"differs from the first channel's {first.spatial_shape}",
                )
            )
            return None
        diff = grid_mismatch(first.affine, v.affine, first.spatial_shape)
        if diff:
            out.append(
                Problem(
                    case.case_id,
                    f"{_rel(spec, path)}: channel geometry differs from the first channel: {diff}",
                )
            )
    array = np.concatenate([v.array for v in volumes]) if len(volumes) > 1 else first.array
    if array.shape[0] != spec.n_channels:
        out.append(
            Problem(
                case.case_id,
                f"{array.shape[0]} image channel(s), but dataset.json "
                f"declares {spec.n_channels} ({', '.join(spec.channel_names)})",
            )
        )
    return Volume(array, first.affine, Kind.IMAGE)


@dataclass(frozen=True)
class CaseCheck:
    """The problems of one case and the volumes read while finding them."""

    problems: tuple[Problem, ...]
    image: Volume | None
    label: Volume | None


def inspect_case(
    spec: DatasetSpec, case: Case, settings: CheckSettings = CheckSettings()
) -> CaseCheck:
    """Read a case and collect all its problems; later stages reuse the volumes."""
    out: list[Problem] = []
    image = _check_channels(spec, case, out)
    if image is not None and image.array.dtype.kind == "f":
        finite = np.isfinite(image.array)
        if not finite.all():
            n_bad = int(finite.size - np.count_nonzero(finite))
            out.append(
                Problem(
                    case.case_id,
                    f"image holds {n_bad} NaN or infinite voxel(s); "
                    "replace them with valid intensities",
                )
            )
    label = None
    if case.label is not None:
        label = _read(spec, case, case.label, Kind.LABEL, out)
        if label is not None:
            _check_label(spec, case, image, label, settings, out)
    return CaseCheck(tuple(out), image, label)


def _check_label(spec, case, image, label, settings, out: list[Problem]) -> None:
    lname = _rel(spec, case.label)
    if image is not None:
        if image.spatial_shape != label.spatial_shape:
            out.append(
                Problem(
                    case.case_id,
                    f"image shape {image.spatial_shape} and label shape "
                    f"{label.spatial_shape} ({lname}) differ",
                )
            )
        else:
            diff = grid_mismatch(
                image.affine, label.affine, image.spatial_shape, settings.tol_voxels
            )
            if diff:
                out.append(
                    Problem(
                        case.case_id,
                        f"image and label ({lname}) are not on the same voxel grid: {diff}",
                    )
                )
    present = set(np.unique(label.array).tolist())
    undeclared = sorted(present - spec.label_values)
    if undeclared:
        out.append(
            Problem(
                case.case_id,
                f"label ({lname}) holds value(s) {undeclared} not declared "
                f"in dataset.json (declared: {sorted(spec.label_values)})",
            )
        )
    if present <= {0} and not settings.allow_empty_labels:
        out.append(Problem(case.case_id, f"label ({lname}) is empty (background only)"))


def read_case(
    spec: DatasetSpec, case: Case, settings: CheckSettings = CheckSettings()
) -> tuple[Volume, Volume | None]:
    """Read a case's image and label, raising a :class:`MedsegError` listing its problems."""
    checked = inspect_case(spec, case, settings)
    if checked.problems:
        raise MedsegError(
            f"case {case.case_id}: "
            + "; ".join(p.message for p in checked.problems)
            + ". Fix the case (see 'medseg check') or exclude it."
        )
    return checked.image, checked.label


def check_case(
    spec: DatasetSpec, case: Case, settings: CheckSettings = CheckSettings()
) -> list[Problem]:
    """All problems of one case (an empty list if it is clean)."""
    return list(inspect_case(spec, case, settings).problems)


@dataclass(frozen=True)
class CheckReport:
    """The result of checking a whole dataset."""

    n_cases: int
    problems: tuple[Problem, ...]

    @property
    def bad_cases(self) -> tuple[str, ...]:
        return tuple(sorted({p.case_id for p in self.problems}))

    @property
    def n_valid(self) -> int:
        return self.n_cases - len(self.bad_cases)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_one(args: tuple[DatasetSpec, Case, CheckSettings]) -> list[Problem]:
    return check_case(*args)


def check_dataset(
    spec: DatasetSpec,
    settings: CheckSettings = CheckSettings(),
    *,
    processes: int = 1,
    include_test: bool = False,
    on_case_done: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check every training case (and test case if asked), ``processes`` at a time."""
    cases = spec.training + (spec.test if include_test else ())
    jobs = [(spec, c, settings) for c in cases]
    problems: list[Problem] = []
    for case, found in zip(cases, parallel_map(_check_one, jobs, processes), strict=True):
        problems.extend(found)
        if on_case_done:
            on_case_done(case.case_id)
    return CheckReport(len(cases), tuple(problems))
