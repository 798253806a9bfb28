"""Write a label map as a DICOM RT Structure Set (RTSTRUCT) of closed planar contours.

Radiotherapy systems read contours, not label maps. Written with pydicom and
scikit-image, not rt-utils: rt-utils pulls in opencv-python (a large binary
dependency) for what takes a few functions here.

Conventions
-----------
* The label map is an integer array ``(X, Y, Z)`` on the grid of
  :func:`medseg.io.dicom_series.read_dicom_series` (X = column, Y = row, slice
  ``k`` = ``SeriesInfo.files[k]``); 0 is background.
* One ROI per foreground entry of ``label_names``: ROINumber = label value,
  ROIName = its name, ROIDisplayColor from :data:`medseg.core.palette.PALETTE` (Okabe-Ito,
  colour-blind safe, by ROI order). A label absent from the map is still listed, without
  contours (as the DICOM-SEG describes empty segments): the model looked and found
  nothing, which a left-out structure would not say.
* Contours: :func:`skimage.measure.find_contours` at level 0.5 on each slice's
  mask padded by one background voxel. The outline runs half way between inside
  and outside voxel centres (on voxel edges along straight runs, cutting corners),
  so a reader that fills polygons by voxel centre gets the mask back exactly and
  the polygon area is the voxel area (less 1/8 voxel per corner); the padding
  closes outlines at the image border. Foreground is 4-connected (voxels touching
  at a corner give separate contours); points in the middle of straight runs are
  dropped. Holes are contours inside contours on the same slice: readers filling
  by the even-odd rule (plastimatch with ``--xor-contours``) keep them, readers
  that merge contours (plastimatch's default) fill them.
* Points are DICOM patient coordinates (LPS, mm) from each slice's own
  ImagePositionPatient, ImageOrientationPatient and PixelSpacing; each
  CLOSED_PLANAR contour references its slice's SOPInstanceUID, and the
  Referenced Frame of Reference Sequence lists every image of the series.
* A new series in the source's study: patient and study attributes copied, new
  UIDs. RTROIInterpretedType is empty (type 2: unknown) unless
  ``interpreted_types`` names it (e.g. ``ORGAN``): only the model's author knows
  whether a label is an organ, a target or a lesion.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medseg import __version__
from medseg.core.errors import RtStructError
from medseg.core.palette import palette_colour
from medseg.core.volume import as_label_array
from medseg.io.atomic import atomic_path
from medseg.io.dicom_series import SeriesInfo
from medseg.io.dicom_source import check_label_grid, check_source_uids, read_source_headers

log = logging.getLogger(__name__)

#: Iso-level of find_contours on a 0/1 mask: half way between inside and outside centres.
CONTOUR_LEVEL = 0.5
#: RTROIInterpretedType defined terms (DICOM PS3.3 C.8.8.8.1.2) accepted by the writer.
INTERPRETED_TYPES = frozenset(
    "EXTERNAL PTV CTV GTV TREATED_VOLUME IRRAD_VOLUME BRACHY_CHANNEL BRACHY_ACCESSORY "
    "BRACHY_SRC_APP BRACHY_CHNL_SHLD SUPPORT FIXATION DOSE_REGION CONTRAST CAVITY ORGAN "
    "MARKER REGISTRATION ISOCENTER AVOIDANCE BOLUS CONTROL".split()
)
#: Study Component Management SOP Class, the class plastimatch and others reference studies by.
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.2"
_TYPE2_COPIED = tuple(
    "PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime "
    "ReferringPhysicianName StudyID AccessionNumber".split()
)
_TYPE3_COPIED = tuple(
    "IssuerOfPatientID PatientBirthTime StudyDescription PatientAge PatientSize "
    "PatientWeight".split()
)


@dataclass(frozen=True)
class RtStructMetadata:
    """Descriptive attributes of a written RTSTRUCT (see :func:`write_rtstruct`).

    ``interpreted_types`` maps a label value to its RTROIInterpretedType (e.g.
    ``{1: "ORGAN"}``); labels not in it get an empty one (unknown).
    """

    structure_set_label: str = "MEDSEG"
    series_description: str = "medseg structures"
    series_number: int = 301
    manufacturer: str = "medseg"
    algorithm_name: str = "medseg"
    algorithm_version: str = __version__
    interpreted_types: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("series_description", "manufacturer", "algorithm_name", "algorithm_version"):
            _check_text(getattr(self, key), key)
        _check_text(self.structure_set_label, "structure_set_label", 16)
        if not 0 <= int(self.series_number) <= 2**31 - 1:
            raise RtStructError(f"series_number {self.series_number} must be 0..2147483647")
        bad = {v: t for v, t in self.interpreted_types.items() if t not in INTERPRETED_TYPES}
        if bad:
            raise RtStructError(
                f"interpreted_types {bad}: not DICOM RTROIInterpretedType terms; use one of "
                f"{', '.join(sorted(INTERPRETED_TYPES))}"
            )


def _check_text(value: str, what: str, limit: int = 64) -> None:
    """A DICOM LO (64 characters) or SH (16) value: not empty, no backslash or control."""
    if not value or len(value) > limit or "\\" in value or any(ord(c) < 32 for c in value):
        raise RtStructError(
            f"{what} {value!r} is not valid in DICOM: use 1-{limit} characters without "
            "backslashes or control characters"
        )


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon ``(N, 2)`` without the points in the middle of straight runs."""
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[turn != 0]


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2D mask, in voxel index coordinates.

    Parameters
    ----------
    mask
        Boolean (or 0/1) array ``(I, J)``; for a slice of a label map on a DICOM
        grid, ``I`` is the column and ``J`` the row index.

    Returns
    -------
    list of ndarray
        One float array ``(N, 2)`` of ``(i, j)`` points per closed contour (first
        point not repeated), outlines and holes alike; voxel centres are at integer
        coordinates. Even-odd filling of all contours, by voxel centre, gives ``mask``.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RtStructError(f"mask_contours takes a 2D mask, got shape {mask.shape}")
    where = np.nonzero(mask)
    if not where[0].size:
        return []
    lo = [int(w.min()) for w in where]
    crop = mask[lo[0] : int(where[0].max()) + 1, lo[1] : int(where[1].max()) + 1]
    padded = np.pad(crop != 0, 1).astype(np.float32)
    contours = []
    for c in find_contours(padded, CONTOUR_LEVEL):
        if len(c) > 1 and np.array_equal(c[0], c[-1]):
            c = c[:-1]
        contours.append(_drop_collinear(c + (lo[0] - 1, lo[1] - 1)))
    return contours


def index_to_patient(
    points: np.ndarray,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> np.ndarray:
    """Map ``(i, j)`` = (column, row) index points ``(N, 2)`` of one slice to patient
    coordinates ``(N, 3)`` (LPS, mm).

    ``position``, ``orientation`` and ``pixel_spacing`` are the slice's
    ImagePositionPatient, ImageOrientationPatient (row direction cosines, then
    column direction cosines) and PixelSpacing (between rows, between columns):
    ``P = position + i * spacing[1] * row_cosines + j * spacing[0] * column_cosines``.
    """
    points = np.asarray(points, float).reshape(-1, 2)
    o = np.asarray(orientation, float).reshape(2, 3)
    step = np.stack([o[0] * float(pixel_spacing[1]), o[1] * float(pixel_spacing[0])])
    return np.asarray(position, float) + points @ step


def roi_plan(label_names: Mapping[int, str]) -> list[tuple[int, str]]:
    """The ROIs, ``[(label value = ROI number, name), ...]`` in ascending order of value.

    Label 0 (background) is skipped if present.
    """
    for value in label_names:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise RtStructError(
                f"label_names key {value!r}: label_names maps label value (int >= 0) -> name; "
                "nnU-Net's dataset.json 'labels' maps name -> value, so invert that one"
            )
    plan = []
    for value in sorted(v for v in label_names if v):
        _check_text(str(label_names[value]), f"label_names[{value}]")
        plan.append((int(value), str(label_names[value])))
    if not plan:
        raise RtStructError(
            "label_names declares no foreground label (value > 0); an RTSTRUCT needs at "
            "least one ROI, e.g. label_names={1: 'hippocampus'}"
        )
    return plan


def _source_headers(series: SeriesInfo) -> list[pydicom.Dataset]:
    """Headers of ``series.files`` (slice order), SOP UIDs from the file meta if blanked."""
    headers, _ = read_source_headers(
        series,
        RtStructError,
        "an RTSTRUCT",
        "RTSTRUCT contours reference one image per slice, so medseg writes them for series "
        "of single-frame images only. Convert the series to single frames, or write a "
        "DICOM-SEG instead.",
    )
    check_source_uids(headers, series, RtStructError, "an RTSTRUCT")
    return headers


def _checked_label(label: np.ndarray, headers, series: SeriesInfo, plan) -> np.ndarray:
    check_label_grid(label, headers, series, RtStructError)
    label = as_label_array(label)
    unknown = sorted(set(np.unique(label).tolist()) - {0} - {value for value, _ in plan})
    if unknown:
        raise RtStructError(
            f"label values {unknown} are not in label_names (declared: "
            f"{[value for value, _ in plan]}); add a name for each, or set them to 0"
        )
    return label


def _ds_text(values: np.ndarray) -> list[str]:
    """Decimal strings (DS, at most 16 characters) of coordinates in mm, to 0.1 micrometre."""
    texts = (f"{v:.4f}".rstrip("0").rstrip(".") for v in np.round(np.ravel(values), 4))
    return [text if text not in ("-0", "") else "0" for text in texts]


def _image_ref(header: pydicom.Dataset) -> pydicom.Dataset:
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (
        header.SOPClassUID,
        header.SOPInstanceUID,
    )
    return ref


def _contour_items(label: np.ndarray, headers, value: int) -> list[pydicom.Dataset]:
    """ContourSequence items of label ``value``, slice by slice."""
    items = []
    for k in np.flatnonzero((label == value).any(axis=(0, 1))):
        h = headers[k]
        for points in mask_contours(label[:, :, k] == value):
            patient = index_to_patient(
                points, h.ImagePositionPatient, h.ImageOrientationPatient, h.PixelSpacing
            )
            item = pydicom.Dataset()
            item.ContourImageSequence = DicomSequence([_image_ref(h)])
            item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(patient)
            item.ContourNumber, item.ContourData = len(items) + 1, _ds_text(patient)
            items.append(item)
    return items


def _referenced_frame(headers) -> pydicom.Dataset:
    series = pydicom.Dataset()
    series.SeriesInstanceUID = headers[0].SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_ref(h) for h in headers])
    study = pydicom.Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    study.ReferencedSOPInstanceUID = headers[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = headers[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _new_dataset(source: pydicom.Dataset, meta: RtStructMetadata, texts) -> pydicom.Dataset:
    """Patient, study, RT series, frame of reference, equipment and SOP common modules."""
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = pydicom.Dataset()
    charset = source.get("SpecificCharacterSet") if all(t.isascii() for t in texts) else None
    ds.SpecificCharacterSet = charset if charset is not None else "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, generate_uid()
    for key in _TYPE2_COPIED + _TYPE3_COPIED:
        if key in source:
            ds[key] = source[key]
        elif key in _TYPE2_COPIED:
            setattr(ds, key, "")
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.FrameOfReferenceUID = source.FrameOfReferenceUID  # the images' frame: same patient space
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = int(meta.series_number), meta.series_description
    ds.SeriesDate, ds.SeriesTime, ds.OperatorsName = date, time, ""
    ds.Manufacturer, ds.ManufacturerModelName = meta.manufacturer, meta.algorithm_name
    ds.SoftwareVersions = meta.algorithm_version
    ds.InstanceNumber = 1
    ds.StructureSetLabel, ds.StructureSetName = meta.structure_set_label, meta.series_description
    ds.StructureSetDate, ds.StructureSetTime = date, time
    return ds


def _roi_items(plan, frame_uid: str, meta: RtStructMetadata, contours) -> tuple[list, list, list]:
    """StructureSetROI, ROIContour and RTROIObservations items, one each per ROI."""
    rois, roi_contours, observations = [], [], []
    for n, (value, name) in enumerate(plan):
        roi, roi_contour, observation = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = value, frame_uid, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{meta.algorithm_name} {meta.algorithm_version}"[:64]
        roi_contour.ROIDisplayColor = list(palette_colour(n))
        if contours[value]:  # an ROI without contours has no ContourSequence (type 3)
            roi_contour.ContourSequence = DicomSequence(contours[value])
        roi_contour.ReferencedROINumber = value
        observation.ObservationNumber, observation.ReferencedROINumber = n + 1, value
        observation.RTROIInterpretedType = meta.interpreted_types.get(value, "")
        observation.ROIInterpreter = ""
        rois.append(roi)
        roi_contours.append(roi_contour)
        observations.append(observation)
    return rois, roi_contours, observations


def build_rtstruct(
    label: np.ndarray,
    headers: Sequence[pydicom.Dataset],
    series: SeriesInfo,
    label_names: Mapping[int, str],
    meta: RtStructMetadata,
) -> pydicom.Dataset:
    """The RTSTRUCT dataset (in memory, with file meta) of ``label`` ``(X, Y, Z)``.

    ``headers`` are the headers of ``series.files`` in slice order.
    """
    plan = roi_plan(label_names)
    label = _checked_label(label, headers, series, plan)
    contours = {value: _contour_items(label, headers, value) for value, _ in plan}
    empty = [name for value, name in plan if not contours[value]]
    if empty:
        log.info("RTSTRUCT: %d of %d ROIs have no contours", len(empty), len(plan))
    texts = [name for _, name in plan] + [meta.series_description, meta.algorithm_name]
    ds = _new_dataset(headers[0], meta, texts + [meta.manufacturer, meta.algorithm_version])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(headers)])
    rois, roi_contours, observations = _roi_items(
        plan, headers[0].FrameOfReferenceUID, meta, contours
    )
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_rtstruct(
    label: np.ndarray,
    series: SeriesInfo,
    label_names: Mapping[int, str],
    path: str | Path,
    meta: RtStructMetadata | None = None,
) -> None:
    """Write ``label`` as an RTSTRUCT referencing ``series``, atomically.

    ``label`` is an integer label map ``(X, Y, Z)`` on the grid of
    ``read_dicom_series(series.folder)`` (module docstring); ``label_names`` maps
    label value -> ROI name (0 ignored), each value one ROI, contours or not.
    Parent folders of ``path`` are created; an existing file is replaced only once
    the new one is complete.

    Raises
    ------
    RtStructError
        If the label map does not fit the series, holds a value ``label_names``
        does not declare, or the source images lack UIDs.
    """
    ds = build_rtstruct(
        label, _source_headers(series), series, label_names, meta or RtStructMetadata()
    )
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    n = sum(len(item.get("ContourSequence", [])) for item in ds.ROIContourSequence)
    log.info("wrote RTSTRUCT %s (%d ROIs, %d contours)", path, len(ds.ROIContourSequence), n)
