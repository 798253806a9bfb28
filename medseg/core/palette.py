"""The one colour palette for classes: RTSTRUCT ROI colours, preview and QC pictures.

Okabe & Ito (2008), "Color Universal Design": distinguishable with the common
colour-vision deficiencies. Black is left out (invisible on images). The ``n``-th
foreground class, in order of label value, gets ``PALETTE[n % len(PALETTE)]``, so a
structure has the same colour in a DICOM viewer (RTSTRUCT ROIDisplayColor) and in
medseg's pictures.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Okabe & Ito (2008), colour-blind safe, black left out (invisible on images): RGB 0-255.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)


def palette_colour(n: int) -> tuple[int, int, int]:
    """RGB (0-255) of the ``n``-th foreground class (0-based), cycling through the palette."""
    return PALETTE[n % len(PALETTE)]


def class_colours(label_values: Mapping[int, str] | list[int]) -> dict[int, tuple[int, int, int]]:
    """Foreground label value -> RGB (0-255), by order of value (0, background, left out)."""
    foreground = sorted(int(v) for v in label_values if int(v) != 0)
    return {value: palette_colour(n) for n, value in enumerate(foreground)}


def as_unit_rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """An RGB triple 0-255 as matplotlib's 0-1 floats."""
    return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)
