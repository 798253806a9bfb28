"""Layer 2: reading and writing volumes (NIfTI, NRRD/MHA, DICOM series).

Names are loaded on first use, so light modules such as ``medseg.io.atomic``
do not pull in nibabel, SimpleITK or pydicom.
"""

from importlib import import_module

_WHERE = {
    "read_volume": "medseg.io.volumes",
    "write_volume": "medseg.io.volumes",
    "read_dicom_series": "medseg.io.dicom_series",
    "scan_series": "medseg.io.dicom_series",
    "SeriesInfo": "medseg.io.dicom_series",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'medseg.io' has no attribute {name!r}")
