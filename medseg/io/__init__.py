"""Layer 2: reading and writing volumes (NIfTI, NRRD/MHA, DICOM series)."""

from medseg.io.dicom_series import SeriesInfo, read_dicom_series, scan_series
from medseg.io.volumes import read_volume, write_volume

__all__ = ["SeriesInfo", "read_dicom_series", "read_volume", "scan_series", "write_volume"]
