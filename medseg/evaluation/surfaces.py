"""HD95 and NSD of two non-empty masks from one surface-distance computation.

MONAI's ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice``
each call ``monai.metrics.utils.get_edge_surface_distance`` on the same masks: the
edges (``get_mask_edges``: a voxel of the mask with a 6-neighbour outside it) and,
for each edge voxel, the distance in mm to the nearest edge voxel of the other mask,
in both directions (``get_surface_distance``: a KD-tree on the CPU). Here those
building blocks run once, and both metrics are taken from the two distance arrays
exactly as MONAI takes them:

* HD95: the larger of the two directions' 95th percentiles (``torch.quantile``,
  linear interpolation, float32);
* NSD: the share of edge voxels of both masks within the tolerance of the other
  surface (``distance <= tolerance`` in float32, the ratio in float32).

Masks are first cropped to the bounding box of their union plus one voxel, which is
what MONAI's own cropping does: edges and distances are unchanged.
"""

from __future__ import annotations

import multiprocessing
import warnings

import numpy as np

#: The percentile of HD95.
PERCENTILE = 95


def crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``p | r`` plus one voxel (metrics unchanged).

    ``p | r`` must not be empty.
    """
    union = p | r
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    return p[tuple(box)], r[tuple(box)]


def preload() -> None:
    """Import torch and MONAI's metric utilities now, in this process.

    Called before worker processes are forked, so that each of them does not spend
    seconds importing them again.
    """
    import torch  # noqa: F401
    from monai.metrics import utils  # noqa: F401


def single_threaded_in_workers() -> None:
    """In a worker process, limit torch to one thread (no-op in the main process).

    Workers already split the cores between them, and torch's thread pool is not
    safe to use in a process forked after the parent imported torch.
    """
    if multiprocessing.parent_process() is not None:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


def surface_distances(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...]) -> tuple:
    """MONAI's surface distances (mm, float32 tensors) of two non-empty masks ``(X, Y, Z)``.

    Returns ``(prediction -> reference, reference -> prediction)``: one distance per
    edge voxel of the first mask, to the nearest edge voxel of the second.
    """
    import torch
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    p, r = crop_to_union(p, r)
    yp = torch.from_numpy(np.ascontiguousarray(p, dtype=bool))
    y = torch.from_numpy(np.ascontiguousarray(r, dtype=bool))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        # already cropped as MONAI crops (union box + 1 voxel): crop=False saves its box search
        edges_pred, edges_ref = get_mask_edges(yp, y, crop=False)
    spacing = list(spacing)
    return (
        get_surface_distance(edges_pred, edges_ref, "euclidean", spacing),
        get_surface_distance(edges_ref, edges_pred, "euclidean", spacing),
    )


def hd95_and_nsd(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float
) -> tuple[float, float]:
    """HD95 (mm) and NSD of two non-empty masks, as MONAI computes them (see module docstring).

    Parameters
    ----------
    p, r : np.ndarray
        Predicted and reference boolean masks ``(X, Y, Z)``, each with at least one voxel.
    spacing : tuple[float, ...]
        Voxel size in mm along each axis.
    tolerance_mm : float
        NSD tolerance in mm.

    Returns
    -------
    tuple[float, float]
        ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice``
        of the two masks (background excluded), as Python floats.
    """
    import torch

    single_threaded_in_workers()
    forward, backward = surface_distances(p, r, spacing)
    # compute_hausdorff_distance: max over directions of torch.quantile(d, percentile / 100)
    per_direction = [torch.quantile(d, PERCENTILE / 100) for d in (forward, backward)]
    hd95 = torch.max(torch.stack(per_direction))
    # compute_surface_dice (use_subvoxels=False): correct / complete, in float32
    nsd = torch.empty((), dtype=torch.float)
    correct = torch.sum(forward <= tolerance_mm) + torch.sum(backward <= tolerance_mm)
    nsd.fill_(correct / (len(forward) + len(backward)))
    return float(hd95.to(torch.float).item()), float(nsd.item())
