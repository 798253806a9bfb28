"""Read a DICOM series from a folder into a :class:`Volume`.

Files are grouped by SeriesInstanceUID; the slices are validated and stacked by
:func:`medseg.io.dicom_geometry.stack_slices`; pixel data are decoded by pydicom
(JPEG, JPEG-LS and JPEG 2000 through the pylibjpeg plugins) and the modality
transform (RescaleSlope / RescaleIntercept, or a Modality LUT) is applied by
pydicom. Enhanced multi-frame objects are read with highdicom.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from medseg.core.errors import DicomSeriesError
from medseg.core.volume import Volume
from medseg.geometry.affine import LPS_TO_RAS
from medseg.io.dicom_geometry import stack_slices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one series found in a folder, with a few header facts."""

    uid: str
    modality: str
    description: str
    study_uid: str
    files: tuple[Path, ...]
    headers: tuple[pydicom.Dataset, ...]


@dataclass(frozen=True)
class SeriesInfo:
    """Where a DICOM volume came from: needed to reference it (DICOM-SEG) later.

    ``files[k]`` and ``sop_instance_uids[k]`` belong to slice ``k`` of the
    volume (one entry for a multi-frame object).
    """

    folder: Path
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    transfer_syntax: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]


def _read_header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        log.debug("skipping %s: not a readable DICOM file (%s)", path, e)
        return None


def _candidate_files(folder: Path, recursive: bool) -> Iterable[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(paths):
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR":
            yield p


def scan_series(folder: str | Path, *, recursive: bool = False) -> list[SeriesFiles]:
    """Find the image series in ``folder`` (headers only; pixel data are not read).

    Files that are not DICOM, and DICOM objects without pixel data (reports,
    presentation states), are skipped. Series come sorted by UID.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in _candidate_files(folder, recursive):
        ds = _read_header(path)
        if ds is None or "Rows" not in ds:
            continue
        # a missing SeriesInstanceUID (seen in anonymised exports) groups as ""
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((path, ds))
    series = []
    for uid, members in sorted(groups.items()):
        first = members[0][1]
        series.append(
            SeriesFiles(
                uid=uid,
                modality=str(first.get("Modality", "")),
                description=str(first.get("SeriesDescription", "")),
                study_uid=str(first.get("StudyInstanceUID", "")),
                files=tuple(p for p, _ in members),
                headers=tuple(d for _, d in members),
            )
        )
    return series


def select_series(folder: Path, series: list[SeriesFiles], uid: str | None) -> SeriesFiles:
    """Pick the series with ``uid``, or the only one; otherwise fail listing them."""
    if not series:
        raise DicomSeriesError(
            f"{folder}: no DICOM images found. Point medseg at the folder that holds the "
            "series' .dcm files."
        )
    if uid is not None:
        for s in series:
            if s.uid == uid:
                return s
        raise DicomSeriesError(
            f"{folder}: no series with SeriesInstanceUID {uid}. Found: "
            + "; ".join(f"{s.uid} ({s.modality}, {len(s.files)} files)" for s in series)
        )
    if len(series) > 1:
        listing = "\n".join(
            f"  {s.uid}  {s.modality:<3} {len(s.files):>4} files  {s.description!r}" for s in series
        )
        raise DicomSeriesError(
            f"{folder}: holds {len(series)} series; choose one with --series UID:\n{listing}"
        )
    return series[0]


def _sop_uid(ds: pydicom.Dataset) -> str:
    """SOPInstanceUID, from the file meta header when an anonymiser emptied the dataset's."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid and "file_meta" in dir(ds):
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return uid


def _header_values(ds: pydicom.Dataset, path: Path, key: str, n: int) -> list[float]:
    value = ds.get(key)
    if value is None or len(value) != n:
        raise DicomSeriesError(
            f"{path}: missing or malformed {key}; without it the image cannot be placed "
            "in the patient. Is this a secondary capture or screenshot rather than a scan?"
        )
    return [float(v) for v in value]


def _pixel_values(path: Path) -> tuple[np.ndarray, str]:
    ds = pydicom.dcmread(path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(
            f"{path}: colour image ({ds.get('PhotometricInterpretation')}); medseg "
            "segments greyscale CT, MR and PET series only."
        )
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        raw = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt fragment, truncated file ...
        if not syntax.is_compressed:
            raise DicomSeriesError(
                f"{path}: the pixel data is damaged or cut short ({e}); the file was probably "
                "truncated in transfer: export or send the series again."
            ) from e
        raise DicomSeriesError(
            f"{path}: cannot decode the compressed pixel data ({syntax.name}): {e}. The file "
            "may be damaged (send it again); if other files of this kind fail too, install "
            "the pylibjpeg plugins (pylibjpeg-openjpeg, pylibjpeg-libjpeg) or re-export the "
            "series uncompressed."
        ) from e
    return apply_modality_lut(raw, ds), syntax.name


def _compact(values: np.ndarray) -> np.ndarray:
    """Whole-number data as int16/int32 when it fits, otherwise float32."""
    if np.array_equal(values, np.round(values)):
        lo, hi = float(values.min()), float(values.max())
        for dt in (np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return values.astype(dt)
    return values.astype(np.float32)


def _read_multiframe(sel: SeriesFiles, where: str) -> tuple[Volume, tuple[Path, ...]]:
    import highdicom as hd

    if len(sel.files) != 1:
        raise DicomSeriesError(
            f"{where}: {len(sel.files)} multi-frame objects in one series; medseg reads one "
            "multi-frame object or a series of single-frame images."
        )
    try:
        hvol = hd.imread(str(sel.files[0])).get_volume()
    except Exception as e:
        raise DicomSeriesError(
            f"{where}: the multi-frame object does not describe one regular volume ({e})"
        ) from e
    arr = np.transpose(hvol.array, (2, 1, 0))  # (slice, row, col) -> (col, row, slice)
    affine_lps = hvol.affine[:, [2, 1, 0, 3]].copy()
    if np.dot(affine_lps[:3, 2], np.cross(affine_lps[:3, 0], affine_lps[:3, 1])) < 0:
        # same convention as single-frame series: slices ascend along row x column
        affine_lps[:3, 3] += affine_lps[:3, 2] * (arr.shape[2] - 1)
        affine_lps[:3, 2] *= -1
        arr = arr[:, :, ::-1]
    return Volume.image(_compact(arr), LPS_TO_RAS @ affine_lps), sel.files


def _read_single_frames(
    sel: SeriesFiles, where: str
) -> tuple[Volume, tuple[Path, ...], tuple[str, ...], str]:
    pairs = list(zip(sel.files, sel.headers, strict=True))

    def values(key: str, n: int) -> list[list[float]]:
        return [_header_values(h, p, key, n) for p, h in pairs]

    stack = stack_slices(
        positions=values("ImagePositionPatient", 3),
        orientations=values("ImageOrientationPatient", 6),
        pixel_spacings=values("PixelSpacing", 2),
        shapes=[(int(h.Rows), int(h.Columns)) for h in sel.headers],
        where=where,
    )
    files = tuple(sel.files[i] for i in stack.order)
    sop_uids = tuple(_sop_uid(sel.headers[i]) for i in stack.order)
    planes, syntax = [], ""
    for path in files:
        values_, syntax = _pixel_values(path)
        planes.append(values_.T)  # (rows, cols) -> (col, row)
    volume = Volume.image(_compact(np.stack(planes, axis=-1)), LPS_TO_RAS @ stack.affine_lps)
    return volume, files, sop_uids, syntax


def read_dicom_series(
    folder: str | Path, series_uid: str | None = None, *, recursive: bool = False
) -> tuple[Volume, SeriesInfo]:
    """Read one DICOM series from ``folder`` as an image volume ``(1, X, Y, Z)``.

    Parameters
    ----------
    folder
        Folder holding the series' files (other series and non-DICOM files may
        be present; ``series_uid`` picks among several series).
    series_uid
        SeriesInstanceUID to read; required if the folder holds several series.
    recursive
        Also look in sub-folders.

    Returns
    -------
    (Volume, SeriesInfo)
        The volume (axes: column, row, slice; RAS affine; modality values, e.g.
        Hounsfield units for CT) and where it came from.
    """
    folder = Path(folder)
    sel = select_series(folder, scan_series(folder, recursive=recursive), series_uid)
    where = f"DICOM series in {folder}" + (f" ({sel.uid})" if series_uid else "")
    first = sel.headers[0]
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in sel.headers):
        volume, files = _read_multiframe(sel, where)
        sop_uids = (_sop_uid(first),)
        syntax = first.file_meta.TransferSyntaxUID.name
    else:
        volume, files, sop_uids, syntax = _read_single_frames(sel, where)
    info = SeriesInfo(
        folder=folder,
        series_uid=sel.uid,
        study_uid=sel.study_uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=sel.modality,
        description=sel.description,
        transfer_syntax=syntax,
        files=files,
        sop_instance_uids=sop_uids,
    )
    log.info("read %s: %d slices, shape %s", where, len(files), volume.spatial_shape)
    return volume, info
