"""What to predict: cases found in the paths a user gives, and where their outputs go.

A path is a volume file (NIfTI, NRRD, MHA/MHD; any other file is tried too, so
that the reader can say exactly what is wrong with it), a DICOM series folder,
or a folder holding many studies (every volume file and every DICOM series found
below it is one case). Outputs go to ``OUTDIR/<case id>.<format suffix>``; they
never overwrite an input (checked before any work by :func:`refuse_unsafe_outputs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medseg.core.errors import OutputError
from medseg.io.atomic import full_suffix
from medseg.io.guard import refuse_colliding, refuse_overlap
from medseg.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, is_dicom_file

VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
FORMATS = ("nifti", "dicom-seg", "probabilities")


@dataclass(frozen=True)
class CaseInput:
    """One case to predict: a volume file, or one DICOM series in a folder."""

    case_id: str
    path: Path
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def _file_case_id(path: Path) -> str:
    return path.name[: -len(full_suffix(path))] if full_suffix(path) else path.name


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


def discover_inputs(paths: list[Path]) -> tuple[list[CaseInput], list[dict]]:
    """Cases found in ``paths``, and failures for paths that hold nothing usable.

    A file given by name is always a case (the reader names its problem if it is
    not a readable volume); in folders, volume files and DICOM series are.
    """
    cases, failures = [], []
    for path in map(Path, paths):
        if path.is_file() and is_dicom_file(path):  # the series it belongs to
            cases.append(_dicom_file_case(path))
        elif path.is_file():
            cases.append(CaseInput(_file_case_id(path), path))
        elif path.is_dir():
            files = _volume_files(path)
            cases += [CaseInput(_file_case_id(f), f) for f in files]
            found = _dicom_cases(path)
            cases += found
            if not files and not found:
                failures.append({"input": str(path), "error": (
                    f"{path}: no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM series "
                    "found in this folder"
                )})  # fmt: skip
        else:
            what = "not found" if not path.exists() else "not a file or folder"
            failures.append({"input": str(path), "error": f"{path}: {what}"})
    seen: dict[str, int] = {}
    unique = []
    for case in cases:  # make ids unique, keeping the first as is
        n = seen.get(case.case_id, 0)
        seen[case.case_id] = n + 1
        unique.append(case if n == 0 else CaseInput(f"{case.case_id}_{n}", case.path,
                                                    case.series_uid))  # fmt: skip
    return unique, failures


def outputs_for(case: CaseInput, out: Path, formats) -> dict[str, Path]:
    """The output files of ``case`` in ``out``, by format."""
    paths = {}
    if "nifti" in formats:
        paths["nifti"] = out / f"{case.case_id}.nii.gz"
    if "dicom-seg" in formats and case.is_dicom:
        paths["dicom-seg"] = out / f"{case.case_id}.seg.dcm"
    if "probabilities" in formats:
        paths["probabilities"] = out / f"{case.case_id}_probabilities.npz"
    return paths


def refuse_unsafe_output_folder(inputs: Iterable[Path], out: Path) -> None:
    """Before anything is read: ``out`` is a folder (or new) and no input contains it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; -o names the output folder")
    for path in inputs:
        refuse_overlap([path], out, what="output folder")


def refuse_unsafe_outputs(cases: list[CaseInput], out: Path, formats) -> None:
    """No planned output file of any case is an input file (e.g. ``-i out/a.nii.gz -o out``)."""
    planned = [p for case in cases for p in outputs_for(case, out, formats).values()]
    refuse_colliding(planned, [c.path for c in cases if not c.is_dicom])
