"""One case through preprocessing, and the exact way back.

Forward (nnU-Net v2's order): reorient to the processing grid -> transpose ->
crop to non-zero -> normalise -> resample. Every step is recorded in a JSON
record, and :func:`to_original` maps a prediction on the preprocessed grid back
to the original file's grid using that record alone.
"""

from __future__ import annotations

import numpy as np

from medseg.core.records import resolve_configuration
from medseg.core.volume import Kind, Volume
from medseg.geometry.orientation import OrientationRecord
from medseg.preprocessing.crop import crop_to_nonzero, uncrop
from medseg.preprocessing.grid import from_processing, reorients, to_processing
from medseg.preprocessing.locations import sample_class_locations
from medseg.preprocessing.normalize import normalize
from medseg.preprocessing.resample import (
    compute_new_shape,
    resample_image,
    resample_label,
    resample_probabilities,
)

CASE_SCHEMA = ("medseg.case", 1)


def target_spacing(config: dict, spacing: tuple[float, ...]) -> list[float]:
    """The configuration's spacing; a 2D configuration keeps the first (slice) axis as is."""
    target = [float(s) for s in config["spacing"]]
    return [float(spacing[0])] + target if len(target) < len(spacing) else target


def preprocess_case(
    image: Volume,
    label: Volume | None,
    plans: dict,
    configuration: str,
    rng: np.random.Generator,
    case_id: str = "",
) -> tuple[np.ndarray, np.ndarray, dict, dict[int, np.ndarray]]:
    """Preprocess one case for ``configuration`` of ``plans``.

    Returns ``data`` (C, ...) float32, ``seg`` (...) int8/int16 with -1 outside the
    non-zero region, the JSON-ready record, and sampled foreground coordinates
    per class (empty when there is no label).
    """
    config = resolve_configuration(plans, configuration)
    forward = plans["transpose_forward"]
    reorient = reorients(plans)
    data, spacing, orientation = to_processing(image, reorient)
    seg = to_processing(label, reorient)[0] if label is not None else None
    data = np.transpose(data, [0] + [a + 1 for a in forward])
    seg = np.transpose(seg, forward) if seg is not None else None
    spacing = tuple(spacing[a] for a in forward)
    shape_before = tuple(int(s) for s in data.shape[1:])
    data, seg, box = crop_to_nonzero(data, seg)
    shape_cropped = tuple(int(s) for s in data.shape[1:])
    target = target_spacing(config, spacing)
    new_shape = compute_new_shape(shape_cropped, spacing, target)
    data = normalize(data, config["normalization_schemes"], config["use_mask_for_norm"],
                     plans["foreground_intensity_properties_per_channel"], seg)  # fmt: skip
    data = resample_image(data, new_shape, spacing, target)
    seg = resample_label(seg, new_shape, spacing, target)
    seg = seg.astype(np.int16 if seg.max(initial=0) > 127 else np.int8)
    classes = [v for v, _ in plans["labels"] if v != 0]
    locations = sample_class_locations(seg, classes, rng) if label is not None else {}
    record = {
        "schema": CASE_SCHEMA[0],
        "schema_version": CASE_SCHEMA[1],
        "case_id": case_id,
        "configuration": configuration,
        "orientation": orientation.to_dict(),
        "transpose_forward": list(forward),
        "shape_before_crop": list(shape_before),
        "crop_box": [list(b) for b in box],
        "shape_after_crop": list(shape_cropped),
        "spacing_before_resampling": list(spacing),
        "spacing_after_resampling": list(target),
        "shape_after_resampling": [int(s) for s in new_shape],
        "has_label": label is not None,
        "class_voxels": {str(c): int(np.count_nonzero(seg == c)) for c in classes},
    }
    return data, seg, record, locations


def _untranspose(array: np.ndarray, record: dict) -> np.ndarray:
    backward = np.argsort(record["transpose_forward"])
    lead = array.ndim - len(backward)
    return np.transpose(array, list(range(lead)) + [lead + int(a) for a in backward])


def to_original(prediction: np.ndarray, record: dict, outside=None) -> Volume:
    """Map a prediction on the preprocessed grid back to the original file's grid.

    ``prediction`` is a label map ``(...)`` (integer; resampled per class,
    linearly, as in preprocessing) or per-class values ``(K, ...)`` (float:
    probabilities or logits; resampled linearly). Voxels outside the crop get
    background: label 0, or ``outside`` per class (default: probability 1 for
    background, 0 for the rest). Returns a label or image :class:`Volume` with
    exactly the original shape and affine.
    """
    args = (record["shape_after_crop"], record["spacing_after_resampling"],
            record["spacing_before_resampling"])  # fmt: skip
    full = record["shape_before_crop"]
    box = tuple(tuple(b) for b in record["crop_box"])
    orientation = OrientationRecord.from_dict(record["orientation"])
    if np.issubdtype(prediction.dtype, np.integer):
        label = resample_label(prediction, *args)
        label = uncrop(np.maximum(label, 0), box, full, fill=0)
        return from_processing(_untranspose(label, record), orientation, Kind.LABEL)
    probs = resample_probabilities(prediction, *args)
    if outside is None:
        outside = np.zeros(probs.shape[0], np.float32)
        outside[0] = 1.0
    fill = np.asarray(outside, np.float32).reshape(-1, 1, 1, 1)  # one value per class
    expanded = uncrop(probs, box, full, fill=fill)
    return from_processing(_untranspose(expanded, record), orientation, Kind.IMAGE)
