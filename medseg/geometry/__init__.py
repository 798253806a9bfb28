"""Layer 1: affines, orientation codes, reorientation and its inverse (pure numpy)."""

from medseg.geometry.affine import (
    LPS_TO_RAS,
    affine_from_components,
    components_from_affine,
    orientation_code,
)
from medseg.geometry.orientation import OrientationRecord, from_canonical, to_canonical

__all__ = [
    "LPS_TO_RAS",
    "OrientationRecord",
    "affine_from_components",
    "components_from_affine",
    "from_canonical",
    "orientation_code",
    "to_canonical",
]
