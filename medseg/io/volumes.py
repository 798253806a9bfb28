"""One entry point to read or write any supported volume, chosen by path.

* ``.nii`` / ``.nii.gz``: nibabel
* ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``: SimpleITK
* a folder, or a DICOM file: the DICOM series it holds (or belongs to)
"""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import VolumeReadError
from medseg.core.sanity import Finding
from medseg.core.volume import Kind, Volume
from medseg.io.atomic import full_suffix
from medseg.io.nifti import read_nifti, write_nifti

# SimpleITK and pydicom are imported only when a file needs them (start-up time)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after its preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_volume(
    path: str | Path, kind: Kind | str = Kind.IMAGE, *, series_uid: str | None = None
) -> Volume:
    """Read ``path`` as an image ``(C, X, Y, Z)`` or a label ``(X, Y, Z)``.

    ``series_uid`` selects a series when ``path`` is a DICOM folder holding
    several. Raises :class:`VolumeReadError` or :class:`DicomSeriesError`
    naming the path and the problem.
    """
    path = Path(path)
    kind = Kind(kind)
    if path.is_dir():
        if kind is Kind.LABEL:
            raise VolumeReadError(f"{path}: a DICOM series cannot be read as a label map")
        from medseg.io.dicom_series import read_dicom_series

        return read_dicom_series(path, series_uid)[0]
    suffix = full_suffix(path).lower()
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path, kind)
    if suffix in ITK_SUFFIXES:
        from medseg.io.itk import read_itk

        return read_itk(path, kind)
    if not path.exists():
        raise VolumeReadError(f"{path}: file not found")
    if is_dicom_file(path) and kind is Kind.IMAGE:
        import pydicom

        from medseg.io.dicom_series import read_dicom_series

        uid = series_uid or str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        return read_dicom_series(path.parent, uid)[0]
    raise VolumeReadError(
        f"{path}: unsupported file type {suffix or '(no extension)'!r}. medseg reads NIfTI "
        f"({', '.join(NIFTI_SUFFIXES)}), {', '.join(ITK_SUFFIXES)} and DICOM series folders."
    )


def header_findings(path: str | Path) -> list[Finding]:
    """Geometry problems in a volume file's header that reading alone does not stop.

    NIfTI only (sform/qform disagreement, invalid voxel size, no orientation; see
    :func:`medseg.io.nifti.nifti_header_findings`); other formats and DICOM series
    are checked while they are read.
    """
    path = Path(path)
    if path.is_file() and full_suffix(path).lower() in NIFTI_SUFFIXES:
        from medseg.io.nifti import nifti_header_findings

        return nifti_header_findings(path)
    return []


def write_volume(volume: Volume, path: str | Path) -> None:
    """Write ``volume`` atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    suffix = full_suffix(path).lower()
    if suffix in NIFTI_SUFFIXES:
        write_nifti(volume, path)
    elif suffix in (".nrrd", ".mha"):
        from medseg.io.itk import write_itk

        write_itk(volume, path)
    else:
        raise VolumeReadError(
            f"{path}: cannot write {suffix or '(no extension)'!r}; use one of "
            f"{', '.join(WRITABLE_SUFFIXES)}"
        )
