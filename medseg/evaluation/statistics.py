"""Measurements of each predicted structure: volume, intensities, bounding box, centroid.

:func:`structure_statistics` is pure: a label map and its image in, a record out
(``medseg.statistics``, a schema version). Per foreground label of the model:

* ``voxels`` and ``volume_ml`` (voxels x the voxel volume, ``|det|`` of the affine's
  3x3 part, in mm^3 / 1000);
* ``intensity``: mean, std (population, ddof 0), min and max of image channel 0
  inside the structure, in the input's own units (HU for CT: the DICOM reader applies
  the modality LUT / rescale; whatever a NIfTI file stores otherwise);
* ``bbox_voxel``: first and last voxel index ``[i, j, k]`` inside, per array axis of
  the input (inclusive);
* ``bbox_ras_mm`` and ``centroid_ras_mm``: patient coordinates in mm of the voxel
  *centres*, in medseg's world frame, RAS+ (+x towards the patient's right, +y
  anterior, +z superior: the NIfTI / nibabel convention of the affine). The box is
  the smallest axis-aligned box (in RAS) holding every voxel centre of the structure,
  exact for oblique affines too. For DICOM inputs also ``bbox_lps_mm`` and
  ``centroid_lps_mm`` (DICOM patient coordinates: x and y negated);
* an empty structure: ``voxels`` 0, ``volume_ml`` 0, everything else null.

:func:`statistics_rows` flattens a record into CSV rows (one per structure); the
same columns serve the per-case CSV and the batch table of ``medseg predict``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.errors import VolumeError
from medseg.core.records import stamp
from medseg.core.volume import Volume
from medseg.io.atomic import write_text_atomic

STATISTICS_SCHEMA = ("medseg.statistics", 1)
COORDINATES = (
    "mm, RAS+ (x towards the patient's right, y anterior, z superior), voxel centres; "
    "LPS = DICOM patient coordinates (x, y negated)"
)
COLUMNS = (
    "case_id label name voxels volume_ml intensity_mean intensity_std intensity_min "
    "intensity_max bbox_i_min bbox_i_max bbox_j_min bbox_j_max bbox_k_min bbox_k_max "
    "bbox_x_min_ras_mm bbox_x_max_ras_mm bbox_y_min_ras_mm bbox_y_max_ras_mm "
    "bbox_z_min_ras_mm bbox_z_max_ras_mm centroid_x_ras_mm centroid_y_ras_mm centroid_z_ras_mm"
).split()

__all__ = [
    "COLUMNS",
    "STATISTICS_SCHEMA",
    "centroid_index",
    "label_regions",
    "statistics_csv",
    "statistics_rows",
    "structure_statistics",
    "summary",
    "write_statistics",
]


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of voxel indices ``(3, N)`` -> ``(3, N)``."""
    return affine[:3, :3] @ index + affine[:3, 3:4]


def _ras_box(mask: np.ndarray, offset: np.ndarray, affine: np.ndarray) -> tuple[list, list]:
    """Smallest RAS box holding the centres of ``mask``'s voxels (a crop at ``offset``).

    World coordinates are linear in the index: along each ``(i, j)`` column their
    extremes are at the column's first or last voxel inside, so those points suffice.
    """
    inside = mask.any(axis=2)
    i, j = np.nonzero(inside)
    first = np.argmax(mask, axis=2)[i, j]
    last = mask.shape[2] - 1 - np.argmax(mask[:, :, ::-1], axis=2)[i, j]
    points = np.concatenate([np.stack([i, j, first]), np.stack([i, j, last])], axis=1)
    world = _world(affine, points + offset[:, None])
    return world.min(axis=1).tolist(), world.max(axis=1).tolist()


def centroid_index(mask: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Mean voxel index ``[i, j, k]`` of the voxels of ``mask`` (a crop whose first voxel
    is at index ``offset`` of the whole grid)."""
    return np.asarray(ndimage.center_of_mass(mask)) + offset


def label_regions(array: np.ndarray) -> list:
    """Bounding slices of each label value ``v >= 1`` at ``[v - 1]`` (None where absent),
    one pass over ``array`` (negative values, not classes, are ignored)."""
    if not array.size:
        return []
    if array.min() < 0:
        array = np.where(array < 0, 0, array)
    return ndimage.find_objects(array)


def _intensity(values: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(values, dtype=np.float64)),
        "std": float(np.std(values, dtype=np.float64)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _lps(box_or_point: list) -> list:
    return [-box_or_point[0], -box_or_point[1], box_or_point[2]]


def _structure(value: int, name: str, crop, image, affine, voxel_ml, lps) -> dict:
    """One structure's measurements; ``crop`` is its bounding slices or None if empty."""
    empty = {"voxels": 0, "volume_ml": 0.0, "intensity": None, "bbox_voxel": None}
    entry = {"label": value, "name": name, **empty, "bbox_ras_mm": None, "centroid_ras_mm": None}
    if lps:
        entry.update(bbox_lps_mm=None, centroid_lps_mm=None)
    if crop is None:
        return entry
    mask, region = crop
    offset = np.array([s.start for s in region])
    count = int(mask.sum())
    lo, hi = _ras_box(mask, offset, affine)
    centroid = _world(affine, centroid_index(mask, offset)[:, None])[:, 0].tolist()
    entry.update(
        voxels=count,
        volume_ml=count * voxel_ml,
        intensity=None if image is None else _intensity(image[region][mask]),
        bbox_voxel={"min": offset.tolist(), "max": [s.stop - 1 for s in region]},
        bbox_ras_mm={"min": lo, "max": hi},
        centroid_ras_mm=centroid,
    )
    if lps:  # negating x and y swaps their min and max
        lps_lo = [-hi[0], -hi[1], lo[2]]
        lps_hi = [-lo[0], -lo[1], hi[2]]
        entry.update(bbox_lps_mm={"min": lps_lo, "max": lps_hi}, centroid_lps_mm=_lps(centroid))
    return entry


def structure_statistics(
    label: Volume,
    image: Volume | None,
    label_names: Mapping[int, str],
    *,
    case_id: str = "",
    intensity_unit: str = "",
    lps: bool = False,
) -> dict:
    """The measurements of every foreground structure of ``label_names`` in ``label``.

    Parameters
    ----------
    label
        ``(X, Y, Z)`` integer label map; its affine (voxel index -> RAS+ mm) gives the
        voxel volume and the patient coordinates.
    image
        The image on the same grid, ``(C, X, Y, Z)``; channel 0 is measured. None: no
        intensities (null).
    label_names
        Value -> name, background (0) included or not; every foreground value is listed,
        found or not.
    intensity_unit
        Unit of the image's values (``"HU"``); ``""`` when unknown (e.g. MR).
    lps
        Also give DICOM patient coordinates (LPS) beside RAS.

    Returns
    -------
    dict
        A ``medseg.statistics`` record (see the module's docstring), JSON-ready.
    """
    if image is not None and image.spatial_shape != label.spatial_shape:
        raise VolumeError(
            f"image {image.spatial_shape} and label {label.spatial_shape} differ in shape; "
            "measure a label map on the grid of the image it was predicted from"
        )
    affine = np.asarray(label.affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    array = np.asarray(label.array)
    values = sorted(int(v) for v in label_names if int(v) != 0)
    regions = label_regions(array)
    channel0 = None if image is None else np.asarray(image.array[0])
    structures = []
    for value in values:
        region = regions[value - 1] if value - 1 < len(regions) else None
        crop = None if region is None else (array[region] == value, region)
        structures.append(
            _structure(value, str(label_names[value]), crop, channel0, affine, voxel_ml, lps)
        )
    record = {
        "case_id": case_id,
        "labels": {str(v): str(label_names[v]) for v in values},
        "units": {
            "volume": "mL",
            "intensity": intensity_unit or "as stored in the input",
            "coordinates": COORDINATES,
        },
        "spacing_mm": list(label.spacing),
        "shape": list(label.spatial_shape),
        "voxel_volume_ml": voxel_ml,
        "structures": structures,
    }
    return stamp(record, STATISTICS_SCHEMA)


def summary(record: Mapping) -> dict:
    """The compact form for a manifest line: name -> ``{"volume_ml", "voxels"}``."""
    return {
        s["name"]: {"volume_ml": round(s["volume_ml"], 6), "voxels": s["voxels"]}
        for s in record["structures"]
    }


def statistics_rows(record: Mapping) -> list[dict]:
    """One flat row per structure, keyed by :data:`COLUMNS` (None for an empty structure)."""
    rows = []
    for s in record["structures"]:
        row = dict.fromkeys(COLUMNS)
        row.update(case_id=record.get("case_id", ""), label=s["label"], name=s["name"])
        row.update(voxels=s["voxels"], volume_ml=s["volume_ml"])
        for key, value in (s["intensity"] or {}).items():
            row[f"intensity_{key}"] = value
        if s["bbox_voxel"]:
            for a, axis in enumerate("ijk"):
                row[f"bbox_{axis}_min"] = s["bbox_voxel"]["min"][a]
                row[f"bbox_{axis}_max"] = s["bbox_voxel"]["max"][a]
            for a, axis in enumerate("xyz"):
                row[f"bbox_{axis}_min_ras_mm"] = s["bbox_ras_mm"]["min"][a]
                row[f"bbox_{axis}_max_ras_mm"] = s["bbox_ras_mm"]["max"][a]
                row[f"centroid_{axis}_ras_mm"] = s["centroid_ras_mm"][a]
        rows.append(row)
    return rows


def statistics_csv(rows: Iterable[Mapping]) -> str:
    """CSV text of ``rows`` (header :data:`COLUMNS`; None as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buffer.getvalue()


def write_statistics(record: Mapping, json_path: Path, csv_path: Path) -> None:
    """The record as JSON and its rows as CSV, each written atomically."""
    write_text_atomic(json_path, json.dumps(record, indent=1) + "\n")
    write_text_atomic(csv_path, statistics_csv(statistics_rows(record)))
