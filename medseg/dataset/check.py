"""Validate every case of a dataset and report all problems at once.

Each problem is one line naming the case and the file and saying what is wrong:
unreadable, corrupt or 2D files, files that resolve outside the dataset folder,
NIfTI headers with ambiguous geometry, wrong number of channels, image/label
shape or geometry mismatch, label values not declared in dataset.json,
NaN/Inf intensities, blank images, single slices, empty foreground; and, for
the dataset, a ``numTraining`` that disagrees with the cases found. Doubtful
but usable headers (no orientation) are warnings, not problems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medseg.core.errors import InvalidCaseError, MedsegError
from medseg.core.parallel import parallel_map
from medseg.core.volume import Kind, Volume
from medseg.dataset.check_files import (
    DATASET_ID,
    Problem,
    header_problems,
    image_problems,
    label_shape_problems,
    outside_links,
    rel,
)
from medseg.dataset.layout import Case, DatasetSpec
from medseg.geometry.affine import grid_mismatch
from medseg.io.volumes import read_volume

__all__ = [
    "DATASET_ID",
    "CaseCheck",
    "CheckReport",
    "CheckSettings",
    "Problem",
    "check_case",
    "check_dataset",
    "dataset_problems",
    "inspect_case",
    "read_case",
]


@dataclass(frozen=True)
class CheckSettings:
    """What counts as a problem.

    ``allow_outside_links`` accepts case files that resolve (links followed)
    outside the dataset folder, e.g. an ``imagesTr`` linking into a data store
    (only :func:`check_case` and :func:`check_dataset` look at links).
    """

    allow_empty_labels: bool = False
    tol_voxels: float = 0.01
    allow_outside_links: bool = False


def _read(spec: DatasetSpec, case: Case, path, kind: Kind, out: list[Problem]) -> Volume | None:
    if not path.exists():
        out.append(Problem(case.case_id, f"{rel(spec.root, path)}: file not found"))
        return None
    try:
        return read_volume(path, kind)
    except MedsegError as e:
        msg = str(e).replace(str(path), rel(spec.root, path))
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
                    f"{rel(spec.root, path)}: shape {v.spatial_shape} "
                    f"differs from the first channel's {first.spatial_shape}",
                )
            )
            return None
        diff = grid_mismatch(first.affine, v.affine, first.spatial_shape)
        if diff:
            out.append(
                Problem(
                    case.case_id,
                    f"{rel(spec.root, path)}: channel geometry differs from the first "
                    f"channel: {diff}",
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
    """The problems and warnings of one case and the volumes read while finding them."""

    problems: tuple[Problem, ...]
    image: Volume | None
    label: Volume | None
    warnings: tuple[Problem, ...] = ()


def _files(case: Case) -> tuple:
    return case.images + ((case.label,) if case.label is not None else ())


def _file_problems(spec: DatasetSpec, case: Case, out: list[Problem]) -> list[Problem]:
    """What the case's file headers say; returns the warnings."""
    files = _files(case)
    warnings: list[Problem] = []
    for path in files:
        problems, doubts = header_problems(spec.root, case.case_id, path)
        out.extend(problems)
        warnings.extend(doubts)
    return warnings


def inspect_case(
    spec: DatasetSpec, case: Case, settings: CheckSettings = CheckSettings()
) -> CaseCheck:
    """Read a case and collect all its problems and warnings; later stages reuse the volumes."""
    out: list[Problem] = []
    warnings = _file_problems(spec, case, out)
    image = _check_channels(spec, case, out)
    label = None
    if case.label is not None:
        label = _read(spec, case, case.label, Kind.LABEL, out)
    if image is not None:
        foreground = label is not None and bool(label.array.any())
        out.extend(
            image_problems(
                spec.root, case.case_id, case.images, image, case.label if foreground else None
            )
        )
    if label is not None:
        out.extend(label_shape_problems(spec.root, case.case_id, case.label, label))
        _check_label(spec, case, image, label, settings, out)
    return CaseCheck(tuple(out), image, label, tuple(warnings))


def _check_label(spec, case, image, label, settings, out: list[Problem]) -> None:
    lname = rel(spec.root, case.label)
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
    """Read a case's image and label, raising :class:`InvalidCaseError` listing its problems.

    Warnings (e.g. a header without orientation) do not stop it.
    """
    checked = inspect_case(spec, case, settings)
    if checked.problems:
        raise InvalidCaseError(
            f"case {case.case_id}: "
            + "; ".join(p.message.rstrip(".") for p in checked.problems)
            + ". Fix the case (see 'medseg check') or exclude it."
        )
    return checked.image, checked.label


def check_case(
    spec: DatasetSpec, case: Case, settings: CheckSettings = CheckSettings()
) -> list[Problem]:
    """All problems of one case (an empty list if it is clean); warnings are left out.

    Beyond what :func:`read_case` refuses, files that resolve outside the dataset
    folder are problems here (unless ``settings.allow_outside_links``): ``check``
    says so once, later stages read such files as they are.
    """
    return list(_check_one((spec, case, settings))[0])


def dataset_problems(spec: DatasetSpec) -> list[Problem]:
    """Problems of the dataset as a whole (case id ``dataset.json``): a ``numTraining``
    that disagrees with the training cases found."""
    declared, found = spec.declared_training, len(spec.training)
    if declared is None or declared == found:
        return []
    return [
        Problem(
            DATASET_ID,
            (
                f"numTraining is {declared}, but {found} training case(s) were found; cases may "
                "be missing or left over. Restore the missing cases, or set numTraining to "
                f"{found} if the dataset was changed on purpose."
            ),
        )
    ]


@dataclass(frozen=True)
class CheckReport:
    """The result of checking a whole dataset.

    ``problems`` holds case problems and dataset problems (case id ``dataset.json``);
    ``warnings`` are doubts that do not make a case invalid.
    """

    n_cases: int
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()

    @property
    def bad_cases(self) -> tuple[str, ...]:
        return tuple(sorted({p.case_id for p in self.problems if p.case_id != DATASET_ID}))

    @property
    def dataset_problems(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.case_id == DATASET_ID)

    @property
    def n_valid(self) -> int:
        return self.n_cases - len(self.bad_cases)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_one(args: tuple[DatasetSpec, Case, CheckSettings]) -> tuple[tuple, tuple]:
    spec, case, settings = args
    checked = inspect_case(spec, case, settings)
    links = (
        [] if settings.allow_outside_links else outside_links(spec.root, case.case_id, _files(case))
    )
    return tuple(links) + checked.problems, checked.warnings


def check_dataset(
    spec: DatasetSpec,
    settings: CheckSettings = CheckSettings(),
    *,
    processes: int = 1,
    include_test: bool = False,
    on_case_done: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check the dataset and every training case (and test case if asked),
    ``processes`` cases at a time."""
    cases = spec.training + (spec.test if include_test else ())
    jobs = [(spec, c, settings) for c in cases]
    problems: list[Problem] = dataset_problems(spec)
    warnings: list[Problem] = []
    for case, (found, doubts) in zip(cases, parallel_map(_check_one, jobs, processes), strict=True):
        problems.extend(found)
        warnings.extend(doubts)
        if on_case_done:
            on_case_done(case.case_id)
    return CheckReport(len(cases), tuple(problems), tuple(warnings))
