"""Intensity normalization schemes (nnU-Net v2's), as pure functions on one channel.

Scheme names are nnU-Net's class names so plans stay interchangeable.
"""

from __future__ import annotations

import numpy as np

from medseg.core.errors import PlanError

EPS = 1e-8


def _zscore(image: np.ndarray, mask: np.ndarray | None, props: dict) -> np.ndarray:
    if mask is not None:
        values = image[mask]
        image[mask] = (values - values.mean()) / max(values.std(), EPS)
        return image
    mean, std = image.mean(), image.std()
    image -= mean
    image /= max(std, EPS)
    return image


def _ct(image: np.ndarray, mask: np.ndarray | None, props: dict) -> np.ndarray:
    np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
    image -= props["mean"]
    image /= max(props["std"], EPS)
    return image


def _rescale01(image: np.ndarray, mask: np.ndarray | None, props: dict) -> np.ndarray:
    image -= image.min()
    image /= max(image.max(), EPS)
    return image


def _rgb01(image: np.ndarray, mask: np.ndarray | None, props: dict) -> np.ndarray:
    if image.min() < 0 or image.max() > 255:
        raise PlanError(
            f"RGBTo01Normalization expects values in [0, 255], found [{image.min()}, "
            f"{image.max()}]: the plans' normalization does not fit this image"
        )
    image /= 255.0
    return image


SCHEMES = {
    "ZScoreNormalization": _zscore,
    "CTNormalization": _ct,
    "NoNormalization": lambda image, mask, props: image,
    "RescaleTo01Normalization": _rescale01,
    "RGBTo01Normalization": _rgb01,
}


def normalize(
    data: np.ndarray,
    schemes: list[str],
    use_mask: list[bool],
    channel_props: dict,
    seg: np.ndarray,
) -> np.ndarray:
    """Normalise each channel of ``data`` (C, ...) as float32, in place where possible.

    ``seg`` is the cropped label with -1 outside the non-zero region; channels
    with ``use_mask`` are normalised inside ``seg >= 0`` only. ``channel_props``
    maps the channel index (as a string) to the dataset's foreground statistics.
    """
    data = data.astype(np.float32, copy=False)
    inside = seg >= 0 if any(use_mask) else None  # the same mask for every masked channel
    for c in range(data.shape[0]):
        try:
            fn = SCHEMES[schemes[c]]
        except KeyError:
            raise PlanError(
                f"unknown normalization scheme {schemes[c]!r} in the plans; known: "
                f"{', '.join(SCHEMES)}"
            ) from None
        mask = inside if use_mask[c] else None
        data[c] = fn(data[c], mask, channel_props.get(str(c), {}))
    return data
