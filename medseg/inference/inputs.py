"""What to predict: cases found in the paths a user gives, and where their outputs go.

A path is a volume file (NIfTI, NRRD, MHA/MHD; any other file is tried too, so
that the reader can say exactly what is wrong with it), a DICOM series folder,
or a folder holding many studies (every volume file and every DICOM series found
below it is one case). Outputs go to ``OUTDIR/<case id>.<format suffix>``; they
never overwrite an input (checked before any work by :func:`refuse_unsafe_outputs`).

Channel files (the nnU-Net v2 raw layout, as ``nnUNetv2_predict`` reads a folder)
----------------------------------------------------------------------------------
A volume file named ``<id>_<4 digits><suffix>`` (e.g. ``BRATS_001_0001.nii.gz``) is
a channel file. Within one folder (and, separately, among the files given by
name), the channel files that share ``<id>`` and suffix form a group; for a model
with ``N`` channels:

* a group whose channel numbers are exactly ``0000 .. N-1`` is one case ``<id>``
  with ``N`` files, read in channel order and stacked (``BRATS_001_0000.nii.gz`` +
  ``BRATS_001_0001.nii.gz`` -> case ``BRATS_001``; with ``N = 1``,
  ``CASE_0000.nii.gz`` -> case ``CASE``, so outputs are named like the references
  ``CASE.nii.gz``);
* a group whose numbers are all below ``N`` but miss some is one failed case
  ``<id>`` naming the missing file(s); nothing of it is read;
* a group with a number ``N`` or above is not this model's channels (e.g. case
  numbers, ``scan_0000`` .. ``scan_0041``): each of its files is a case of its own,
  named by the whole file name.

Every other file (``BRATS_001.nii.gz``, a 4D NIfTI holding all channels as in the
MSD layout) is a single-file case. The rule looks at names only: two single-channel
scans named ``img_0000`` and ``img_0001`` given to a 2-channel model are one case,
as for nnU-Net.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from medseg.core.errors import OutputError
from medseg.core.layout import PredictionDir
from medseg.core.options import OutputFormat
from medseg.io.atomic import full_suffix
from medseg.io.guard import refuse_colliding, refuse_overlap
from medseg.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, is_dicom_file

VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
#: A channel file's name without its suffix: ``<id>_<4 digits>`` (nnU-Net v2 raw layout).
CHANNEL_NAME = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseInput:
    """One case to predict: a volume file, the channel files of one case, or one DICOM
    series in a folder.

    ``path`` is the volume file (for a case of channel files: channel 0's, whose
    geometry the outputs get) or the DICOM folder. ``channel_files`` are the files
    of a case in the nnU-Net layout, in channel order (empty otherwise). ``problem``
    says why the case cannot be predicted when that is known before reading anything
    (a missing channel file): such a case fails without being read.
    """

    case_id: str
    path: Path
    series_uid: str | None = None
    channel_files: tuple[Path, ...] = ()
    problem: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()

    @property
    def files(self) -> tuple[Path, ...]:
        """Every input path of the case: its channel files, or its one file or folder."""
        return self.channel_files or (self.path,)


def _file_case_id(path: Path) -> str:
    return path.name[: -len(full_suffix(path))] if full_suffix(path) else path.name


def _channel_key(path: Path) -> tuple[Path, str, str, int] | None:
    """``(folder, id, suffix, channel)`` of a channel file, or None for any other file."""
    suffix = full_suffix(path)
    if suffix.lower() not in VOLUME_SUFFIXES:
        return None
    match = CHANNEL_NAME.match(path.name[: len(path.name) - len(suffix)])
    if match is None:
        return None
    return path.parent, match["id"], suffix, int(match["channel"])


def _channel_case(case_id: str, found: dict[int, Path], n_channels: int) -> CaseInput:
    """The case made of the channel files ``found`` (by channel number), complete or not."""
    files = tuple(found[c] for c in sorted(found))
    first = files[0]
    suffix = full_suffix(first)
    wanted = [first.parent / f"{case_id}_{c:04d}{suffix}" for c in range(n_channels)]
    missing = [p for c, p in enumerate(wanted) if c not in found]
    if not missing:
        return CaseInput(case_id, first, channel_files=files)
    problem = (
        f"{missing[0]}: channel file not found; the model has {n_channels} channels, so case "
        f"{case_id} needs {wanted[0].name} .. {wanted[-1].name} ({len(missing)} missing: "
        f"{', '.join(p.name for p in missing)}). Add the missing file(s), or move the case's "
        "other files out of the input"
    )
    return CaseInput(case_id, first, channel_files=files, problem=problem)


def group_files(files: Sequence[Path], n_channels: int) -> list[tuple[int, CaseInput]]:
    """The cases the volume ``files`` make for a model of ``n_channels`` channels.

    Channel files (see the module's docstring) are grouped into cases; every other
    file is a case of its own. Returns ``(index in files of the case's first file,
    case)`` pairs, in that order. Pure: looks at names only.
    """
    groups: dict[tuple[Path, str, str], dict[int, Path]] = {}
    keys = [_channel_key(Path(f)) for f in files]
    for f, key in zip(files, keys, strict=True):
        if key is not None:
            groups.setdefault(key[:3], {}).setdefault(key[3], Path(f))
    cases, done = [], set()
    for i, (f, key) in enumerate(zip(files, keys, strict=True)):
        found = groups.get(key[:3]) if key is not None else None
        if found is None or max(found) >= n_channels:  # not channel files of this model
            cases.append((i, CaseInput(_file_case_id(Path(f)), Path(f))))
        elif key[:3] not in done:
            done.add(key[:3])
            cases.append((i, _channel_case(key[1], found, n_channels)))
    return cases


def _dicom_cases(folder: Path) -> list[CaseInput]:
    from medseg.io.dicom_series import scan_series

    by_folder: dict[Path, list] = {}
    for series in scan_series(folder, recursive=True):
        parents = {f.parent for f in series.files}
        by_folder.setdefault(min(parents), []).append(series)
    cases = []
    for parent, group in sorted(by_folder.items()):
        rel = parent.relative_to(folder).as_posix()
        base = folder.name if rel == "." else rel.replace("/", "_")
        for s in group:
            suffix = f"_{s.uid.split('.')[-1]}" if len(group) > 1 else ""
            cases.append(CaseInput(base + suffix, parent, s.uid or None))
    return cases


def _dicom_file_case(path: Path) -> CaseInput:
    import pydicom

    try:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    except Exception:  # unreadable or no series UID: reading the case names the problem
        uid = None
    return CaseInput(path.parent.name, path.parent, uid)


def _volume_files(folder: Path) -> list[Path]:
    """Volume files below ``folder``, hidden files (e.g. half-written temporaries) left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and full_suffix(p).lower() in VOLUME_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _folder_cases(folder: Path, n_channels: int) -> tuple[list[CaseInput], list[dict]]:
    files = _volume_files(folder)
    cases = [case for _, case in group_files(files, n_channels)] + _dicom_cases(folder)
    if cases:
        return cases, []
    return [], [
        {
            "input": str(folder),
            "error": (
                f"{folder}: no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM series "
                "found in this folder"
            ),
        }
    ]


def discover_inputs(paths: list[Path], n_channels: int = 1) -> tuple[list[CaseInput], list[dict]]:
    """Cases found in ``paths`` for a model of ``n_channels`` channels, and failures for
    paths that hold nothing usable.

    A file given by name is always part of a case (the reader names its problem if it
    is not a readable volume): channel files given by name are grouped among
    themselves as channel files in a folder are (module docstring). In folders,
    volume files and DICOM series are cases. Cases keep the order of ``paths``.
    """
    paths = [Path(p) for p in paths]
    found: list[tuple[int, CaseInput]] = []
    failures = []
    named = [(i, p) for i, p in enumerate(paths) if p.is_file() and not is_dicom_file(p)]
    for k, case in group_files([p for _, p in named], n_channels):
        found.append((named[k][0], case))
    for i, path in enumerate(paths):
        if path.is_file() and is_dicom_file(path):  # the series it belongs to
            found.append((i, _dicom_file_case(path)))
        elif path.is_dir():
            cases, bad = _folder_cases(path, n_channels)
            found += [(i, c) for c in cases]
            failures += bad
        elif not path.is_file():
            what = "not found" if not path.exists() else "not a file or folder"
            failures.append({"input": str(path), "error": f"{path}: {what}"})
    found.sort(key=lambda item: item[0])  # stable: a folder's cases keep their order
    return _unique_ids([case for _, case in found]), failures


def _unique_ids(cases: list[CaseInput]) -> list[CaseInput]:
    """``cases`` with ids made unique, the first of each id kept as is."""
    seen: dict[str, int] = {}
    unique = []
    for case in cases:
        n = seen.get(case.case_id, 0)
        seen[case.case_id] = n + 1
        unique.append(case if n == 0 else replace(case, case_id=f"{case.case_id}_{n}"))
    return unique


#: Keys of the outputs of ``--statistics`` and ``--preview`` (beside the formats').
STATISTICS, STATISTICS_CSV, PREVIEW = "statistics", "statistics-csv", "preview"


def outputs_for(
    case: CaseInput, out: Path, formats, *, statistics: bool = False, preview: bool = False
) -> dict[str, Path]:
    """The output files of ``case`` in ``out``, by format (none for a case with a problem),
    with the measurements (JSON and CSV) and the preview picture when asked for."""
    paths = {}
    if case.problem:
        return paths
    folder = PredictionDir(Path(out))
    if OutputFormat.NIFTI in formats:
        paths[OutputFormat.NIFTI.value] = folder.label(case.case_id)
    if OutputFormat.DICOM_SEG in formats and case.is_dicom:
        paths[OutputFormat.DICOM_SEG.value] = folder.dicom_seg(case.case_id)
    if OutputFormat.PROBABILITIES in formats:
        paths[OutputFormat.PROBABILITIES.value] = folder.probabilities(case.case_id)
    if OutputFormat.RTSTRUCT in formats and case.is_dicom:
        paths[OutputFormat.RTSTRUCT.value] = folder.rtstruct(case.case_id)
    if statistics:
        paths[STATISTICS] = folder.statistics(case.case_id)
        paths[STATISTICS_CSV] = folder.statistics_csv(case.case_id)
    if preview:
        paths[PREVIEW] = folder.preview(case.case_id)
    return paths


def refuse_unsafe_output_folder(inputs: Iterable[Path], out: Path) -> None:
    """Before anything is read: ``out`` is a folder (or new) and no input contains it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; -o names the output folder")
    for path in inputs:
        refuse_overlap([path], out, what="output folder")


def refuse_unsafe_outputs(cases: list[CaseInput], out: Path, formats, **extras: bool) -> None:
    """No planned output file of any case is an input file (e.g. ``-i out/a.nii.gz -o out``),
    every channel file of every case included. ``extras``: ``statistics``, ``preview``
    as for :func:`outputs_for`."""
    planned = [p for case in cases for p in outputs_for(case, out, formats, **extras).values()]
    refuse_colliding(planned, [f for c in cases if not c.is_dicom for f in c.files])
