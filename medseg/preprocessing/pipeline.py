"""One case through preprocessing, and the exact way back.

Forward (nnU-Net v2's order): to the processing grid -> transpose -> crop to
non-zero -> normalise -> resample. The case record lists these steps in order,
each with the arguments it used (TorchIO's applied-transform history), and
:func:`to_original` maps a prediction on the preprocessed grid back to the
original file's grid by walking that list backwards, undoing each step from its
own entry alone. A new step is one forward function and one inverse here.

Record (``medseg.case``, version 2)::

    {"schema": "medseg.case", "schema_version": 2, "case_id": ..., "configuration": ...,
     "has_label": bool, "class_voxels": {"1": n, ...}, "shape": [final shape],
     "steps": [{"step": "processing_grid", "orientation": {...}},
               {"step": "transpose", "axes": [...]},
               {"step": "crop", "box": [[lo, hi], ...], "shape_before": [...]},
               {"step": "normalize", "schemes": [...]},
               {"step": "resample", "spacing_before": [...], "spacing_after": [...],
                "shape_before": [...], "shape_after": [...]}]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from medseg.core.errors import RecordError
from medseg.core.plans import Configuration, Plans
from medseg.core.records import CASE_SCHEMA
from medseg.core.volume import Kind, Volume
from medseg.geometry.orientation import OrientationRecord
from medseg.preprocessing.crop import crop_to_nonzero, uncrop
from medseg.preprocessing.grid import from_processing, to_processing
from medseg.preprocessing.normalize import normalize
from medseg.preprocessing.resample import (
    compute_new_shape,
    resample_image,
    resample_label,
    resample_probabilities,
)


def target_spacing(config: Configuration, spacing: tuple[float, ...]) -> list[float]:
    """The configuration's spacing; a 2D configuration keeps the first (slice) axis as is."""
    target = list(config.spacing)
    return [float(spacing[0])] + target if len(target) < len(spacing) else target


def preprocess_case(
    image: Volume,
    label: Volume | None,
    plans: Plans | Mapping,
    configuration: str,
    case_id: str = "",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Preprocess one case for ``configuration`` of ``plans``.

    Returns ``data`` (C, ...) float32, ``seg`` (...) int8/int16 with -1 outside the
    non-zero region (None without a label: nothing to resample), and the JSON-ready
    record.
    """
    plans = Plans.of(plans)
    config = plans.configuration(configuration)
    steps = []
    data, spacing, orientation = to_processing(image, plans.reorients)
    seg = to_processing(label, plans.reorients)[0] if label is not None else None
    steps.append({"step": "processing_grid", "orientation": orientation.to_dict()})
    forward = list(plans.transpose_forward)
    data = np.transpose(data, [0] + [a + 1 for a in forward])
    seg = np.transpose(seg, forward) if seg is not None else None
    spacing = tuple(spacing[a] for a in forward)
    steps.append({"step": "transpose", "axes": forward})
    shape_before = [int(s) for s in data.shape[1:]]
    data, seg, box = crop_to_nonzero(data, seg)
    steps.append({"step": "crop", "box": [list(b) for b in box], "shape_before": shape_before})
    # one fresh C-ordered float32 copy (the image read stays untouched: normalisation
    # works in place); the views above cost nothing
    data = np.array(data, dtype=np.float32, order="C")
    data = normalize(
        data,
        config.normalization_schemes,
        config.use_mask_for_norm,
        plans.intensity_properties,
        seg,
    )
    steps.append({"step": "normalize", "schemes": list(config.normalization_schemes)})
    cropped = tuple(int(s) for s in data.shape[1:])
    target = target_spacing(config, spacing)
    new_shape = [int(s) for s in compute_new_shape(cropped, spacing, target)]
    if label is None:  # the non-zero mask only served the normalisation: freed now
        seg = None
    else:  # the label first: its full-size copy is freed before the image's peak
        seg = resample_label(seg, new_shape, spacing, target)
        seg = seg.astype(np.int16 if seg.max(initial=0) > 127 else np.int8, copy=False)
    data = resample_image(data, new_shape, spacing, target)
    steps.append(
        {
            "step": "resample",
            "spacing_before": list(spacing),
            "spacing_after": target,
            "shape_before": list(cropped),
            "shape_after": new_shape,
        }
    )
    head = {"case_id": case_id, "configuration": configuration, "has_label": label is not None}
    return data, seg, _record(head, seg, new_shape, plans.labels.foreground, steps)


def _record(head: dict, seg: np.ndarray | None, shape, classes, steps: list) -> dict:
    """The case record (see the module docstring) around ``head`` and ``steps``."""
    count = (lambda c: 0) if seg is None else (lambda c: int(np.count_nonzero(seg == c)))
    return {
        "schema": CASE_SCHEMA[0],
        "schema_version": CASE_SCHEMA[1],
        **head,
        "class_voxels": {str(c): count(c) for c in classes},
        "shape": [int(s) for s in shape],
        "steps": steps,
    }


def step(record: dict, name: str) -> dict:
    """The entry of step ``name`` in a case record."""
    for entry in record["steps"]:
        if entry["step"] == name:
            return entry
    raise RecordError(f"case record {record.get('case_id')!r} has no {name!r} step")


# -- the way back: each step undone from its own entry, last step first ----------------------


def _untranspose(array: np.ndarray, entry: dict, _outside) -> np.ndarray:
    backward = np.argsort(entry["axes"])
    lead = array.ndim - len(backward)
    return np.transpose(array, list(range(lead)) + [lead + int(a) for a in backward])


def _uncrop(array: np.ndarray, entry: dict, outside) -> np.ndarray:
    box = tuple(tuple(b) for b in entry["box"])
    if np.issubdtype(array.dtype, np.integer):
        return uncrop(np.maximum(array, 0), box, entry["shape_before"], fill=0)
    fill = np.asarray(outside, np.float32).reshape(-1, 1, 1, 1)  # one value per class
    return uncrop(array, box, entry["shape_before"], fill=fill)


def _unresample(array: np.ndarray, entry: dict, _outside) -> np.ndarray:
    args = (entry["shape_before"], entry["spacing_after"], entry["spacing_before"])
    if np.issubdtype(array.dtype, np.integer):
        return resample_label(array, *args)
    return resample_probabilities(array, *args)


def _unnormalize(array: np.ndarray, _entry: dict, _outside) -> np.ndarray:
    return array  # predictions are labels or per-class values: nothing to undo


_INVERSE: dict[str, Callable | None] = {
    "processing_grid": None,  # last: gives the Volume (see to_original)
    "transpose": _untranspose,
    "crop": _uncrop,
    "normalize": _unnormalize,
    "resample": _unresample,
}


def to_original(prediction: np.ndarray, record: dict, outside=None) -> Volume:
    """Map a prediction on the preprocessed grid back to the original file's grid.

    ``prediction`` is a label map ``(...)`` (integer; resampled per class,
    linearly, as in preprocessing) or per-class values ``(K, ...)`` (float:
    probabilities or logits; resampled linearly). Voxels outside the crop get
    background: label 0, or ``outside`` per class (default: probability 1 for
    background, 0 for the rest). Returns a label or image :class:`Volume` with
    exactly the original shape and affine.
    """
    is_label = np.issubdtype(prediction.dtype, np.integer)
    if outside is None and not is_label:
        outside = np.zeros(prediction.shape[0], np.float32)
        outside[0] = 1.0
    array = prediction
    grid, *rest = record["steps"]
    for entry in reversed(rest):
        undo = _INVERSE.get(entry.get("step"))
        if undo is None:
            raise RecordError(
                f"case record {record.get('case_id')!r}: cannot undo step "
                f"{entry.get('step')!r}; preprocess again with this medseg"
            )
        array = undo(array, entry, outside)
    if grid["step"] != "processing_grid":
        raise RecordError(f"case record {record.get('case_id')!r} does not start on the grid")
    orientation = OrientationRecord.from_dict(grid["orientation"])
    return from_processing(array, orientation, Kind.LABEL if is_label else Kind.IMAGE)


def label_to_preprocessed(label: Volume, record: dict, reorient: bool) -> np.ndarray:
    """A label map on the original grid, brought onto the preprocessed grid of ``record``
    by the case's own forward steps (transpose, crop box, label resampling).

    A cascade stage's input: the previous stage's segmentation, mapped exactly as the
    case's image was (the crop box is the image's, not the label's).
    """
    steps = {entry["step"]: entry for entry in record["steps"]}
    seg = to_processing(label, reorient)[0]
    seg = np.transpose(seg, steps["transpose"]["axes"])
    crop = steps["crop"]
    if list(seg.shape) != list(crop["shape_before"]):
        raise RecordError(
            f"case {record.get('case_id')!r}: the label's shape {list(seg.shape)} on the "
            f"processing grid is not the image's {crop['shape_before']}; give the label of "
            "this case"
        )
    seg = seg[tuple(slice(lo, hi) for lo, hi in crop["box"])]
    resample = steps["resample"]
    args = (resample["shape_after"], resample["spacing_before"], resample["spacing_after"])
    seg = resample_label(seg, *args)
    return seg.astype(np.int16 if seg.max(initial=0) > 127 else np.int8)


def previous_stage_channels(seg: np.ndarray, foreground) -> np.ndarray:
    """A cascade stage's extra input: the previous stage's segmentation ``(...)`` as one
    float32 channel per foreground label ``(F, ...)`` (other values, -1 included, are 0)."""
    return np.stack([seg == v for v in foreground]).astype(np.float32)
