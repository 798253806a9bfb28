"""Layer 2: dataset layouts (MSD, nnU-Net v2 raw) and their validation."""

from medseg.dataset.check import CheckReport, CheckSettings, Problem, check_case, check_dataset
from medseg.dataset.layout import Case, DatasetSpec, load_dataset

__all__ = [
    "Case",
    "CheckReport",
    "CheckSettings",
    "DatasetSpec",
    "Problem",
    "check_case",
    "check_dataset",
    "load_dataset",
]
