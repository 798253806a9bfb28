"""Preview pictures of one predicted case: three orthogonal slices per structure (PNG).

One row per structure found (at most :data:`MAX_ROWS`; with more, one row for all of
them), through the structure's centroid: axial, coronal and sagittal slices of the
image, reoriented to RAS by axis permutation and flips only (no interpolation; an
oblique scan is shown on its closest anatomical axes). Radiological convention: the
patient's right on the viewer's left in axial and coronal slices, anterior on the
left in sagittal ones; each panel has orientation letters at its edges. Pixels are
drawn at their physical size (the voxel spacing), so the aspect is correct.

Every class is drawn in every panel as translucent fill plus an opaque outline, one
colour per class from :mod:`medseg.core.palette` (as in the RTSTRUCT), with a legend
of the label names (a class not found is listed as such).

Window: a soft-tissue window (level 40, width 400 HU) when the image is in HU (told
by the caller, or when the values look like CT: air at about -1000); otherwise the
0.5th-99.5th percentile of the non-zero voxels (MR).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.core.palette import as_unit_rgb, class_colours
from medseg.core.volume import Volume
from medseg.evaluation.statistics import centroid_index, label_regions
from medseg.geometry.orientation import to_canonical
from medseg.io.atomic import atomic_path

MAX_ROWS = 6
#: Soft-tissue window (level 40 HU, width 400 HU).
SOFT_TISSUE = (-160.0, 240.0)
FILL_ALPHA = 0.35
#: Per panel: slice name, the canonical axis fixed, the orientation letters (left, right,
#: bottom, top) of the panel as drawn by :func:`_slice`.
VIEWS = (("axial", 2, "RLPA"), ("coronal", 1, "RLIS"), ("sagittal", 0, "APIS"))

__all__ = ["MAX_ROWS", "intensity_window", "preview_figure", "write_preview"]


def _sample(image: np.ndarray, most: int = 1_000_000) -> np.ndarray:
    flat = image.ravel()
    return flat[:: max(1, flat.size // most)]


def looks_like_hu(image: np.ndarray) -> bool:
    """Whether the values look like CT in HU: the darkest voxels (air) near -1000."""
    low = float(np.percentile(_sample(image), 0.5))
    return -1100.0 <= low <= -900.0


def intensity_window(image: np.ndarray, hounsfield: bool = False) -> tuple[float, float]:
    """Display range of ``image``: soft tissue for HU, else non-zero 0.5-99.5th percentiles."""
    if hounsfield or looks_like_hu(image):
        return SOFT_TISSUE
    values = _sample(image)
    values = values[values != 0] if np.any(values != 0) else values
    lo, hi = np.percentile(values, (0.5, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def _slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The canonical slice at ``index`` of ``axis``, as drawn: rows bottom-up along the
    later axis (A or S up), columns along the earlier one, flipped (R, or A, on the left)."""
    return np.take(array, index, axis=axis).T[:, ::-1]


def _rows(label: np.ndarray, names: Mapping[int, str]) -> tuple[list, set]:
    """``(title, canonical centroid index)`` of each row of panels, and the classes found."""
    regions = label_regions(label)
    found = [v for v in names if v - 1 < len(regions) and regions[v - 1] is not None]
    if not found:
        return [("no structure found", [s // 2 for s in label.shape])], set()
    if len(found) > MAX_ROWS:
        centre = centroid_index(label > 0, np.zeros(3, dtype=int))
        return [(f"all {len(found)} structures", np.round(centre).astype(int))], set(found)
    rows = []
    for value in found:
        region = regions[value - 1]
        offset = np.array([s.start for s in region])
        centre = centroid_index(label[region] == value, offset)
        rows.append((names[value], np.round(centre).astype(int)))
    return rows, set(found)


def _overlay(label: np.ndarray, colours: Mapping[int, tuple]) -> np.ndarray:
    """RGBA fill of every class in a drawn slice (transparent elsewhere)."""
    rgba = np.zeros((*label.shape, 4))
    for value, rgb in colours.items():
        rgba[label == value] = (*as_unit_rgb(rgb), FILL_ALPHA)
    return rgba


def _panel(ax, image, label, spacing, view, window, colours) -> None:
    """One slice: image, class fill and outlines, orientation letters; extent in mm."""
    name, axis, letters = view
    rows_axis, cols_axis = [a for a in range(3) if a != axis][::-1]
    extent = (0, image.shape[1] * spacing[cols_axis], 0, image.shape[0] * spacing[rows_axis])
    style = {"origin": "lower", "extent": extent}
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], **style)
    ax.imshow(_overlay(label, colours), interpolation="nearest", **style)
    for value, rgb in colours.items():
        mask = label == value
        if mask.any() and not mask.all():
            ax.contour(mask, levels=[0.5], colors=[as_unit_rgb(rgb)], linewidths=1.2, **style)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    text = {"color": "white", "fontsize": 8, "transform": ax.transAxes, "weight": "bold"}
    ax.text(0.02, 0.5, letters[0], ha="left", va="center", **text)
    ax.text(0.98, 0.5, letters[1], ha="right", va="center", **text)
    ax.text(0.5, 0.02, letters[2], ha="center", va="bottom", **text)
    ax.text(0.5, 0.98, letters[3], ha="center", va="top", **text)


def preview_figure(
    image: Volume, label: Volume, label_names: Mapping[int, str], *, hounsfield=False, title=""
):
    """The preview as a matplotlib figure (Agg), one row of three panels per structure.

    ``image`` ``(C, X, Y, Z)`` (channel 0 drawn) and ``label`` ``(X, Y, Z)`` share one
    grid; ``label_names`` maps value -> name (background, 0, left out of the legend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    canonical, _ = to_canonical(label)
    array, spacing = canonical.array, canonical.spacing
    pixels = to_canonical(image.with_array(image.array[:1]))[0].array[0]
    colours = class_colours(label_names)
    names = {v: str(label_names[v]) for v in colours}
    window = intensity_window(pixels, hounsfield)
    rows, present = _rows(array, names)
    fig, axes = plt.subplots(
        len(rows), 3, figsize=(9, 3 * len(rows) + 0.7), squeeze=False, layout="constrained"
    )
    for row, (name, centre) in zip(axes, rows, strict=True):
        for ax, view in zip(row, VIEWS, strict=True):
            axis, index = view[1], centre[view[1]]
            drawn = (_slice(pixels, axis, index), _slice(array, axis, index))
            _panel(ax, *drawn, spacing, view, window, colours)
            ax.set_title(f"{name}: {view[0]}", fontsize=8)
    handles = [
        Patch(color=as_unit_rgb(rgb), label=names[v] + ("" if v in present else " (not found)"))
        for v, rgb in colours.items()
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def write_preview(
    image: Volume,
    label: Volume,
    label_names: Mapping[int, str],
    path: Path,
    *,
    hounsfield: bool = False,
    title: str = "",
) -> None:
    """:func:`preview_figure` written atomically as PNG to ``path``."""
    import matplotlib.pyplot as plt

    fig = preview_figure(image, label, label_names, hounsfield=hounsfield, title=title)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
