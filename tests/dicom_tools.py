"""Test aid: validate DICOM files with dciodvfy (David Clunie's dicom3tools).

``dciodvfy FILE`` checks a file against its IOD (modules, attribute types,
value representations, defined terms) and prints one line per finding to
stderr: ``Error - ...`` for violations of the standard, ``Warning - ...`` for
questionable content. Findings about an attribute may be prefixed by its tag,
e.g. ``(0x0071,0x1001)  ?  - Warning - Unrecognized tag``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"


def find_dciodvfy() -> str | None:
    """Path of the dciodvfy executable, or None if it is not installed."""
    return shutil.which(DCIODVFY)


def require_dciodvfy() -> str:
    """dciodvfy's path; skip the test without it, or fail it in CI (``CI=true``)."""
    exe = find_dciodvfy()
    if exe is None:
        message = "dciodvfy (Debian/Ubuntu package dicom3tools) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must validate DICOM output")
        pytest.skip(message)
    return exe


def dciodvfy_lines(path: str | Path) -> list[str]:
    """All non-empty lines dciodvfy prints for ``path`` (stdout and stderr)."""
    exe = require_dciodvfy()
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]


def is_error(line: str) -> bool:
    """Whether a dciodvfy line reports an error (bare or tag-prefixed)."""
    return line.startswith("Error") or " - Error - " in line


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The error lines dciodvfy prints for ``path`` (empty: the file is valid)."""
    return [line for line in dciodvfy_lines(path) if is_error(line)]


def dciodvfy_warnings(path: str | Path) -> list[str]:
    """The warning lines dciodvfy prints for ``path``."""
    return [line for line in dciodvfy_lines(path) if "Warning" in line and not is_error(line)]


def write_ct_series(volume, folder: Path) -> Path:
    """Write a 3D image :class:`~medseg.core.volume.Volume` (int16-valued, in HU) as a
    plain CT series, one slice per third array axis, with its exact geometry."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(volume.affine, float)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    array = np.asarray(volume.array).astype(np.int16)
    array = array[0] if array.ndim == 4 else array  # one channel first
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
            CTImageStorage,
            generate_uid(),
        )
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.StudyID, ds.SeriesNumber = "Test^Cascade", "T1", "1", 1
        ds.Modality, ds.InstanceNumber, ds.ImageType = "CT", k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in lps @ [0, 0, k, 1]]
        ds.ImageOrientationPatient = [
            float(v) for v in (*lps[:, 0] / spacing[0], *lps[:, 1] / spacing[1])
        ]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T).tobytes()
        ds.save_as(folder / f"slice_{k:04d}.dcm", enforce_file_format=True)
    return folder
