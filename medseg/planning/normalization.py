"""Which intensity normalization each channel gets (nnU-Net v2's rules)."""

from __future__ import annotations

from collections.abc import Sequence

#: Channel name (case-insensitive) -> scheme; anything else gets z-score.
SCHEME_BY_CHANNEL_NAME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
DEFAULT_SCHEME = "ZScoreNormalization"
#: Schemes that leave voxels outside the non-zero mask at zero when normalising inside it.
MASKABLE = {"ZScoreNormalization"}
#: Use the non-zero mask if cropping removes at least a quarter of the typical case.
MASK_IF_RELATIVE_SIZE_BELOW = 0.75


def normalization_plan(
    channel_names: Sequence[str], median_relative_size_after_crop: float
) -> tuple[list[str], list[bool]]:
    """Scheme per channel, and whether it is computed inside the non-zero mask only.

    CT channels are clipped to the foreground 0.5/99.5 percentiles and z-scored
    with the dataset's foreground mean and std; other channels are z-scored per
    image. When cropping to non-zero removed much of the volume (brain MRI with a
    skull-stripped background), z-scoring uses only the non-zero region.
    """
    schemes = [SCHEME_BY_CHANNEL_NAME.get(n.casefold(), DEFAULT_SCHEME) for n in channel_names]
    use_mask = median_relative_size_after_crop < MASK_IF_RELATIVE_SIZE_BELOW
    return schemes, [use_mask and s in MASKABLE for s in schemes]
