"""Write a label map as a DICOM Segmentation (DICOM-SEG); reading is in dicom_seg_read.

Conventions
-----------
* A label map is an integer array ``(X, Y, Z)`` on the grid of
  :func:`medseg.io.dicom_series.read_dicom_series`: X = column index, Y = row
  index, Z = slice index, slice ``k`` being ``SeriesInfo.files[k]``. 0 is
  background.
* The SEG is written by highdicom as a BINARY segmentation: one segment per
  foreground entry of ``label_names`` (empty segments are still described) and
  one frame per (segment, slice) that holds the segment. Frame ``(k, s)``
  references source image ``files[k]`` and carries its ImagePositionPatient;
  orientation and pixel spacing are those of the source (all in DICOM's LPS
  patient frame, as the source series).
* Segment numbers must run 1..N (DICOM and highdicom), so the declared label
  values are numbered in ascending order. When a segment number differs from
  its label value (e.g. ``{1: "a", 4: "b"}``), the label value is recorded in
  the segment's item of SegmentSequence as private element ``(0071,xx01)`` UL
  of private creator ``"MEDSEG"``. Readers that do not know it still get
  correct segments with correct names; :func:`read_dicom_seg` restores the
  label values (segment number = label value where the element is absent, as
  in SEGs from other tools).
* Segmented property: category and type default to SCT 85756007 "Tissue", a
  member of CID 7150 that is true of any anatomical or pathological label; pass
  ``property_codes`` for specific codes (e.g. SCT "Hippocampus"), which viewers
  such as OHIF show.
* Reading places each frame on the slice whose SOPInstanceUID it references
  (highdicom), after checking that the frame's position, orientation and pixel
  spacing are those of that slice; SEGs of other writers (dcmqi) read alike.
* Empty SOPClassUID / SOPInstanceUID in the source headers (a habit of some
  anonymisers) are taken from the files' meta information; empty Study or
  Series UIDs cannot be recovered and are an error.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medseg import __version__
from medseg.core.errors import DicomSegError
from medseg.core.volume import as_label_array
from medseg.io.atomic import atomic_path
from medseg.io.dicom_series import SeriesInfo
from medseg.io.dicom_source import check_label_grid, check_source_uids, read_source_headers

log = logging.getLogger(__name__)

PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "MEDSEG"
LABEL_VALUE_ELEMENT = 0x01  # (0071,xx01) UL: the label value of a segment
DEFAULT_PROPERTY = codes.SCT.Tissue  # SCT 85756007, category and type
POSITION_TOL_MM = 0.01
_TEXT_FIELDS = ("algorithm_name", "algorithm_version", "series_description", "manufacturer")
# type 2 attributes that highdicom copies from the source and anonymisers often drop
_TYPE2_SOURCE_KEYS = tuple(
    "PatientID PatientName PatientBirthDate PatientSex AccessionNumber StudyID StudyDate "
    "StudyTime".split()
)


@dataclass(frozen=True)
class SegMetadata:
    """Descriptive attributes of a written SEG (see :func:`write_dicom_seg`)."""

    algorithm_name: str = "medseg"
    algorithm_version: str = __version__
    series_description: str = "medseg segmentation"
    series_number: int = 300
    manufacturer: str = "medseg"
    content_label: str = "MEDSEG"
    property_codes: Mapping[int, tuple[Code, Code]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in _TEXT_FIELDS:
            _check_lo(getattr(self, key), key)
        if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", self.content_label):
            raise DicomSegError(
                f"content_label {self.content_label!r} is not a DICOM code string: use 1-16 "
                "upper-case letters, digits, spaces or underscores, e.g. 'MEDSEG'"
            )
        if not 0 <= int(self.series_number) <= 2**31 - 1:
            raise DicomSegError(f"series_number {self.series_number} must be 0..2147483647")


def _check_lo(value: str, what: str) -> None:
    if not value or len(value) > 64 or "\\" in value or any(ord(c) < 32 for c in value):
        raise DicomSegError(
            f"{what} {value!r} is not a valid DICOM long string: use 1-64 characters "
            "without backslashes or control characters"
        )


def segment_plan(label_names: Mapping[int, str]) -> list[tuple[int, int, str]]:
    """Number the foreground labels: ``[(segment number, label value, name), ...]``.

    Label 0 (background) is skipped if present; the others are numbered 1..N in
    ascending order of label value.

    Raises
    ------
    DicomSegError
        If a label value is negative or not an integer, a name is not a valid
        segment label, or no foreground label is declared.
    """
    for value in label_names:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise DicomSegError(
                f"label_names key {value!r}: label_names maps label value (int >= 0) -> name; "
                "nnU-Net's dataset.json 'labels' maps name -> value, so invert that one"
            )
        if value > 65535:
            raise DicomSegError(f"label value {value}: medseg writes label values up to 65535")
    plan = []
    for value in sorted(label_names):
        if value == 0:
            continue
        _check_lo(str(label_names[value]), f"label_names[{value}]")
        plan.append((len(plan) + 1, int(value), str(label_names[value])))
    if not plan:
        raise DicomSegError(
            "label_names declares no foreground label (value > 0); a DICOM-SEG needs at "
            "least one segment, e.g. label_names={1: 'hippocampus'}"
        )
    return plan


def _value_counts(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Present values and their voxel counts; a bincount (no sort) for non-negative labels."""
    if label.size and label.min() >= 0:
        counts = np.bincount(label.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(label, return_counts=True)


def segment_number_array(label: np.ndarray, plan: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """Map a label map ``(X, Y, Z)`` to segment numbers, same layout (uint8 or uint16).

    Raises
    ------
    DicomSegError
        If the label map holds a non-zero value that ``plan`` does not declare.
    """
    label = as_label_array(label)
    values, counts = _value_counts(label)
    declared = {value for _, value, _ in plan}
    unknown = [
        (int(v), int(c)) for v, c in zip(values, counts, strict=True) if v and v not in declared
    ]
    if unknown:
        listing = ", ".join(f"label value {v} ({c} voxels)" for v, c in unknown)
        raise DicomSegError(
            f"{listing} not in label_names (declared: {sorted(declared)}); add a name for "
            "each value to label_names, or set those voxels to 0 (background)"
        )
    lut = np.zeros(max(declared) + 1, np.uint16)  # every non-zero value is declared
    for number, value, _ in plan:
        lut[value] = number
    return lut[label].astype(np.uint8 if len(plan) < 256 else np.uint16)


def source_headers(series: SeriesInfo) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of ``series.files``, in slice order, repaired.

    An empty SOPClassUID / SOPInstanceUID (seen in anonymised exports) is taken
    from the file's meta information (MediaStorage...UID), with a warning; the type 2
    attributes highdicom reads are added empty where missing (in memory only).

    Raises
    ------
    DicomSegError
        If the series is one multi-frame object, a file is unreadable or has no
        SOP Class / Instance UID, or the files changed since the series was read.
    """
    headers, repaired = read_source_headers(
        series,
        DicomSegError,
        "a DICOM-SEG",
        "DICOM-SEG export supports series of single-frame images only. Convert the series "
        "to single frames first.",
    )
    for ds in headers:
        for key in _TYPE2_SOURCE_KEYS:  # type 2: may be empty, but highdicom reads them
            if key not in ds:
                setattr(ds, key, "")
    if repaired:
        log.warning("%s: empty %s; using the file meta's", series.folder, sorted(repaired))
    return headers


def _character_set(headers: Sequence[pydicom.Dataset], texts: Sequence[str]) -> object:
    """The source's SpecificCharacterSet, or UTF-8 if our own text is not ASCII."""
    if all(t.isascii() for t in texts):
        return headers[0].get("SpecificCharacterSet")
    return "ISO_IR 192"


def _segment_descriptions(plan: Sequence[tuple[int, int, str]], meta: SegMetadata) -> list:
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=meta.algorithm_name,
        family=codes.DCM.ArtificialIntelligence,
        version=meta.algorithm_version,
        source=meta.manufacturer,
    )
    descriptions = []
    for number, value, name in plan:
        category, type_ = meta.property_codes.get(value, (DEFAULT_PROPERTY, DEFAULT_PROPERTY))
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=category,
            segmented_property_type=type_,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if number != value:
            block = desc.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
            block.add_new(LABEL_VALUE_ELEMENT, "UL", value)
        descriptions.append(desc)
    return descriptions


def build_segmentation(
    label: np.ndarray,
    headers: Sequence[pydicom.Dataset],
    series: SeriesInfo,
    label_names: Mapping[int, str],
    meta: SegMetadata,
):
    """Build the highdicom ``Segmentation`` (in memory) for ``label`` ``(X, Y, Z)``.

    ``headers`` are :func:`source_headers` of ``series``. Returns a
    ``highdicom.seg.Segmentation`` with new Series and SOP Instance UIDs.
    """
    import highdicom as hd

    check_source_uids(headers, series, DicomSegError, "a DICOM-SEG")
    check_label_grid(label, headers, series, DicomSegError)
    plan = segment_plan(label_names)
    numbers = segment_number_array(label, plan)
    texts = [name for _, _, name in plan] + [getattr(meta, key) for key in _TEXT_FIELDS]
    if not numbers.any():  # DICOM needs >= 1 frame, so highdicom encodes all (and warns)
        log.info("empty label map: the SEG holds %d empty segments", len(plan))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Encoding an empty image", UserWarning)
        return hd.seg.Segmentation(
            source_images=list(headers),
            pixel_array=np.ascontiguousarray(np.transpose(numbers, (2, 1, 0))),  # (Z, row, col)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(plan, meta),
            series_instance_uid=hd.UID(),
            series_number=int(meta.series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=meta.manufacturer,
            manufacturer_model_name=meta.algorithm_name,
            software_versions=meta.algorithm_version,
            device_serial_number="0",  # type 1; software has none
            content_label=meta.content_label,
            content_description=meta.series_description,
            series_description=meta.series_description,
            omit_empty_frames=True,
            specific_character_set=_character_set(headers, texts),
        )


def write_dicom_seg(
    label: np.ndarray,
    series: SeriesInfo,
    label_names: Mapping[int, str],
    path: str | Path,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str = __version__,
    series_description: str = "medseg segmentation",
    series_number: int = 300,
    manufacturer: str = "medseg",
    content_label: str = "MEDSEG",
    property_codes: Mapping[int, tuple[Code, Code]] | None = None,
) -> None:
    """Write ``label`` as a BINARY DICOM-SEG referencing ``series``, atomically.

    Parameters
    ----------
    label
        Integer label map ``(X, Y, Z)`` on the grid of
        ``read_dicom_series(series.folder)`` (X = column, Y = row, Z = slice
        ``k`` = ``series.files[k]``); 0 is background.
    series
        Where the image came from (from :func:`read_dicom_series`).
    label_names
        ``{label value: segment label}``; 0 may be present and is ignored. Each
        other value becomes one segment, even if no voxel has it.
    path
        Output file (parent folders are created; an existing file is replaced
        only once the new one is complete).
    algorithm_name, algorithm_version
        Identify the (AUTOMATIC, "Artificial Intelligence") algorithm.
    series_description, series_number, manufacturer, content_label
        Header attributes of the new SEG series.
    property_codes
        ``{label value: (category, type)}`` coded concepts; default SCT "Tissue".

    Raises
    ------
    DicomSegError
        If the label map does not fit the series, holds a value that
        ``label_names`` does not declare, or the source images lack UIDs.
    """
    meta = SegMetadata(
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        series_description=series_description,
        series_number=series_number,
        manufacturer=manufacturer,
        content_label=content_label,
        property_codes=dict(property_codes or {}),
    )
    seg = build_segmentation(label, source_headers(series), series, label_names, meta)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM-SEG %s (%s frames)", path, seg.NumberOfFrames)
