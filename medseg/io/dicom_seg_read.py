"""Read a DICOM Segmentation back into a label map on its source series' grid.

Each frame is placed on the slice whose SOPInstanceUID it references (highdicom),
after checking that the frame's position, orientation and pixel spacing are those
of that slice; SEGs of other writers (dcmqi) read alike. Label values come from
medseg's private mapping where present (see :mod:`medseg.io.dicom_seg`), else
segment number = label value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom

from medseg.core.errors import DicomSegError
from medseg.core.volume import smallest_int_dtype
from medseg.io.dicom_seg import (
    LABEL_VALUE_ELEMENT,
    POSITION_TOL_MM,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    source_headers,
)
from medseg.io.dicom_series import SeriesInfo

log = logging.getLogger(__name__)


def segment_label_values(seg: pydicom.Dataset) -> dict[int, int]:
    """``{segment number: label value}`` of a SEG (private medseg mapping, else identity)."""
    mapping = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        value = number
        try:
            block = item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
            if block.get_tag(LABEL_VALUE_ELEMENT) in item:
                value = int(block[LABEL_VALUE_ELEMENT].value)
        except KeyError:  # no medseg private block
            pass
        mapping[number] = value
    return mapping


def read_dicom_seg_names(path: str | Path) -> dict[int, str]:
    """``{label value: segment label}`` of a SEG file (background segments omitted)."""
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    values = segment_label_values(seg)
    return {
        values[int(s.SegmentNumber)]: str(s.SegmentLabel)
        for s in seg.SegmentSequence
        if int(s.SegmentNumber) > 0
    }


def _item(seg: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """First item of functional group ``keyword`` for ``frame`` (per-frame, else shared)."""
    for groups in (
        seg.get("PerFrameFunctionalGroupsSequence"),
        seg.get("SharedFunctionalGroupsSequence"),
    ):
        if groups is not None and keyword in groups[frame if len(groups) > 1 else 0]:
            return groups[frame if len(groups) > 1 else 0][keyword][0]
    return None


def check_frame_geometry(
    seg: pydicom.Dataset, headers: Sequence[pydicom.Dataset], where: str
) -> None:
    """Check that every SEG frame lies exactly on the source slice it references.

    Compares the frame of reference, matrix size, plane orientation, pixel
    spacing and, frame by frame, ImagePositionPatient (within
    ``POSITION_TOL_MM``) with those of the referenced source image.

    Raises
    ------
    DicomSegError
        If the SEG is not on the grid of ``headers`` (another series, a
        resampled grid, or frames that do not reference the source images).
    """
    ref = headers[0]
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    problems = []
    if str(seg.get("FrameOfReferenceUID", "")) != str(ref.get("FrameOfReferenceUID", "")):
        problems.append("it has another FrameOfReferenceUID")
    if (int(seg.Rows), int(seg.Columns)) != (int(ref.Rows), int(ref.Columns)):
        problems.append(
            f"its frames are {seg.Rows}x{seg.Columns}, the images {ref.Rows}x{ref.Columns}"
        )
    for k in range(int(seg.get("NumberOfFrames", 1))):
        source = _referenced_source(seg, k, by_uid)
        orientation = _item(seg, k, "PlaneOrientationSequence")
        position = _item(seg, k, "PlanePositionSequence")
        measures = _item(seg, k, "PixelMeasuresSequence")
        if source is None or orientation is None or position is None or measures is None:
            problems.append(f"frame {k + 1} references no image of this series or lacks geometry")
        elif not (
            np.allclose(
                orientation.ImageOrientationPatient, source.ImageOrientationPatient, atol=1e-4
            )
            and np.allclose(measures.PixelSpacing, source.PixelSpacing, rtol=1e-4)
            and np.allclose(
                position.ImagePositionPatient, source.ImagePositionPatient, atol=POSITION_TOL_MM
            )
        ):
            problems.append(f"frame {k + 1} is not on the plane of the image it references")
        if len(problems) > 3:
            break
    if problems:
        raise DicomSegError(
            f"{where} is not on the grid of the series: " + "; ".join(problems) + ". Read it "
            "against the series it was made from (see its ReferencedSeriesSequence)."
        )


def _referenced_source(
    seg: pydicom.Dataset, frame: int, by_uid: Mapping[str, pydicom.Dataset]
) -> pydicom.Dataset | None:
    derivation = _item(seg, frame, "DerivationImageSequence")
    for source in derivation.get("SourceImageSequence", []) if derivation else []:
        header = by_uid.get(str(source.get("ReferencedSOPInstanceUID", "")))
        if header is not None:
            return header
    return None


def read_dicom_seg(path: str | Path, series: SeriesInfo) -> np.ndarray:
    """Read a DICOM-SEG as a label map ``(X, Y, Z)`` on the grid of ``series``.

    Frames are placed by the source image each one references (checked against
    its geometry, see :func:`check_frame_geometry`); slices without a frame are
    background. Segment numbers become label values through
    :func:`segment_label_values`. BINARY, LABELMAP and FRACTIONAL (binary
    values only) SEGs from any writer are read.

    Returns
    -------
    numpy.ndarray
        ``(X, Y, Z)`` (column, row, slice ``k`` = ``series.files[k]``), the
        smallest integer dtype that holds the label values.

    Raises
    ------
    DicomSegError
        If the file is not a readable SEG, is not on the series' grid, or its
        segments overlap (a label map cannot hold overlapping segments).
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as e:
        raise DicomSegError(f"{path}: not a readable DICOM Segmentation ({e})") from e
    headers = source_headers(series)
    check_frame_geometry(seg, headers, str(path))
    values = segment_label_values(seg)
    numbers = [n for n in seg.segment_numbers if n > 0]
    if not numbers:  # only a background segment
        return np.zeros((int(seg.Columns), int(seg.Rows), len(headers)), np.uint8)
    try:
        planes = seg.get_pixels_by_source_instance(
            [str(h.SOPInstanceUID) for h in headers],
            segment_numbers=numbers,
            combine_segments=True,
            ignore_spatial_locations=True,  # checked above; dcmqi does not record it
            assert_missing_frames_are_empty=True,
        )
    except (RuntimeError, ValueError, KeyError) as e:
        raise DicomSegError(
            f"{path}: cannot be read as one label map ({e}). Overlapping segments need "
            "highdicom's Segmentation API, one mask per segment."
        ) from e
    lut = np.zeros(max(numbers) + 1, np.int64)
    for number in numbers:
        lut[number] = values[number]
    label = lut[planes].astype(smallest_int_dtype(0, int(lut.max())))
    return np.transpose(label, (2, 1, 0))  # (slice, row, col) -> (X, Y, Z)
