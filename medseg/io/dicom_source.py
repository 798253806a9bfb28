"""The headers of the images a derived DICOM object (DICOM-SEG, RTSTRUCT) references.

Both writers need the same thing from the source series: every image's header in slice
order (no pixel data), with the SOP Class / Instance UIDs that anonymisers sometimes
blank taken back from the file meta, single-frame images only, unchanged since the
series was read, and one study, series and frame of reference to refer to. The error
class and the wording are the caller's (``DicomSegError``, ``RtStructError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from medseg.core.errors import MedsegError
from medseg.io.dicom_series import SeriesInfo

SOP_KEYS = ("SOPClassUID", "SOPInstanceUID")
REFERENCE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def _sop_uids_from_meta(ds: pydicom.Dataset, path: Path, error, product: str) -> list[str]:
    """Fill blanked SOP UIDs from the file meta (in memory only); the names filled."""
    meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
    repaired = []
    for key in SOP_KEYS:
        if not ds.get(key) and meta.get(f"MediaStorage{key}"):
            setattr(ds, key, meta.get(f"MediaStorage{key}"))
            repaired.append(key)
        if not ds.get(key):
            raise error(f"{path}: no {key}; {product} cannot reference this image")
    return repaired


def read_source_headers(
    series: SeriesInfo, error: type[MedsegError], product: str, multi_frame: str
) -> tuple[list[pydicom.Dataset], set[str]]:
    """The headers of ``series.files`` in slice order, and the SOP UID names taken from
    the file meta. ``product`` names what references them (``"a DICOM-SEG"``);
    ``multi_frame`` says what to do with a multi-frame source. Raises ``error``."""
    if not series.files:
        raise error(f"{series.folder}: the SeriesInfo lists no image files")
    headers, repaired = [], set()
    for k, path in enumerate(series.files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # unreadable now although it was read before
            raise error(f"{path}: cannot read the DICOM header ({e})") from e
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise error(f"{path}: multi-frame source image; {multi_frame}")
        repaired.update(_sop_uids_from_meta(ds, Path(path), error, product))
        known = series.sop_instance_uids[k] if k < len(series.sop_instance_uids) else ""
        if known and known != ds.get("SOPInstanceUID"):
            raise error(f"{path} changed since the series was read; read it again")
        headers.append(ds)
    return headers, repaired


def check_source_uids(
    headers: Sequence[pydicom.Dataset], series: SeriesInfo, error: type[MedsegError], product: str
) -> None:
    """One study, series and frame of reference, and distinct SOP Instance UIDs."""
    for key in REFERENCE_KEYS:
        values = {str(h.get(key, "") or "") for h in headers}
        if "" in values or len(values) != 1:
            raise error(
                f"{series.folder}: the source images have {'no' if '' in values else 'mixed'} "
                f"{key}; {product} must name the study, series and frame of reference of "
                "its images. Export the series again with UIDs kept (anonymisers that blank "
                "UIDs break every reference to the images)."
            )
    if len({str(h.SOPInstanceUID) for h in headers}) != len(headers):
        raise error(f"{series.folder}: two source images share a SOPInstanceUID")


def check_label_grid(
    label: np.ndarray, headers: Sequence[pydicom.Dataset], series: SeriesInfo, error
) -> None:
    """``label`` is on the series' own grid: ``(columns, rows, slices)``."""
    expected = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    if np.ndim(label) != 3 or tuple(np.shape(label)) != expected:
        raise error(
            f"label map shape {np.shape(label)} does not match the series in {series.folder} "
            f"(columns, rows, slices) = {expected}; give the prediction on the grid of "
            "read_dicom_series (axes X=column, Y=row, Z=slice), not a resampled one"
        )
