"""Training batches: patches read from the preprocessed store, with foreground oversampling.

Patches are read from the compressed, chunked case arrays (only the chunks a
patch touches are decompressed). A third of each batch (nnU-Net's 0.33) is
forced to contain foreground: a class present in the case is chosen uniformly,
then one of its stored voxel locations becomes the patch centre. Patches may
extend past the volume (padding: image 0, label -1), as in nnU-Net.

Every batch is a pure function of ``(seed, epoch, iteration)``, whichever
process makes it, so training is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.core.errors import TrainingError
from medseg.io.preprocessed import (
    open_case_arrays,
    open_previous,
    read_case_record,
    read_locations,
)
from medseg.preprocessing.crop import OUTSIDE

OVERSAMPLE_FOREGROUND = 0.33


def batch_seed(
    seed: int, epoch: int, iteration: int, stream: int = 0, rank: int = 0
) -> np.random.SeedSequence:
    """The seed sequence of one batch; ``stream`` separates sampling from augmentation,
    ``rank`` the processes of data-parallel training (rank 0: the one-process stream)."""
    return np.random.SeedSequence(
        [seed, epoch, iteration, stream], spawn_key=(rank,) if rank else ()
    )


def forced_foreground(batch_size: int, fraction: float = OVERSAMPLE_FOREGROUND) -> list[bool]:
    """Which samples of a batch must contain foreground (the last ``fraction``, rounded)."""
    n_random = round(batch_size * (1 - fraction))
    return [i >= n_random for i in range(batch_size)]


@dataclass
class CaseStore:
    """Lazily opened preprocessed cases of one folder (one per worker process); for a
    cascade stage, with the previous stage's segmentations from ``previous``."""

    folder: Path
    previous: Path | None = None
    _open: dict = field(default_factory=dict)

    def case(self, case_id: str):
        if case_id not in self._open:
            read_case_record(self.folder, case_id)  # a complete case of this medseg version
            data, seg = open_case_arrays(self.folder, case_id)
            shape = tuple(int(s) for s in seg.shape)
            locations = read_locations(self.folder, case_id, shape)
            present = [c for c, loc in sorted(locations.items()) if len(loc)]
            prev = None if self.previous is None else open_previous(self.previous, case_id)
            if prev is not None and tuple(prev.shape) != shape:
                raise TrainingError(
                    f"{self.previous}: the previous-stage segmentation of {case_id!r} has shape "
                    f"{tuple(prev.shape)}, the case {shape}; run 'medseg previous-stage' again"
                )
            self._open[case_id] = (data, seg, shape, locations, present, prev)
        return self._open[case_id]


def _window(shape, patch, rng: np.random.Generator, centre=None, margin=None) -> list[int]:
    """Start of a patch read from a case of ``shape``: random, or around ``centre``.

    nnU-Net's rule (its data loader's ``get_bbox``): the patch may stick out of the
    case by ``need`` voxels in all, half on each side, where ``need`` is the
    ``margin`` (the read patch's excess over the network's, kept for rotation and
    scaling) or what a case smaller than the patch lacks, whichever is more. A random
    start is uniform over that range; a start around ``centre`` is only kept from
    going below it, so a foreground voxel near the far side may sit off-centre.
    """
    margin = (0,) * len(patch) if margin is None else margin
    starts = []
    for d, (n, p, m) in enumerate(zip(shape, patch, margin, strict=True)):
        need = max(int(m), p - n)
        lo, hi = (-need) // 2, n + need // 2 + need % 2 - p
        if centre is None:
            starts.append(int(rng.integers(lo, hi + 1)))
        else:
            starts.append(max(lo, int(centre[d]) - p // 2))
    return starts


def _read(array, starts, patch, fill, lead: int):
    """``array[..., window]`` with the part outside the array filled with ``fill``."""
    shape = array.shape[lead:]
    src, dst = [], []
    for s, p, n in zip(starts, patch, shape, strict=True):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out = np.full(array.shape[:lead] + tuple(patch), fill, dtype=array.dtype)
    if all(sl.stop > sl.start for sl in src):
        out[(Ellipsis, *dst)] = array[(slice(None),) * lead + tuple(src)]
    return out


def sample_patch(store: CaseStore, case_id: str, patch, foreground: bool, rng, margin=None):
    """One ``(image (C, *patch), label (L, *patch))`` pair; a 2D ``patch`` takes one slice.

    ``L`` is 1, or 2 for a cascade stage: the label, then the previous stage's
    segmentation of the same window (0 outside the case). ``margin``: see
    :func:`_window`.
    """
    data, seg, shape, locations, present, prev = store.case(case_id)
    centre = None
    if foreground and present:
        cls = present[int(rng.integers(len(present)))]
        centre = locations[cls][int(rng.integers(len(locations[cls])))]
    if len(patch) == len(shape) - 1:  # 2D configuration: a slice, then a 2D window
        z = int(centre[0]) if centre is not None else int(rng.integers(shape[0]))
        starts = _window(shape[1:], patch, rng, None if centre is None else centre[1:], margin)
        image = _read(data, [z, *starts], (1, *patch), 0, lead=1)[:, 0]
        labels = [_read(a, [z, *starts], (1, *patch), f, lead=0)[0] for a, f in _labels(seg, prev)]
        return image, np.stack(labels)
    starts = _window(shape, patch, rng, centre, margin)
    labels = [_read(a, starts, patch, f, lead=0) for a, f in _labels(seg, prev)]
    return _read(data, starts, patch, 0, lead=1), np.stack(labels)


def _labels(seg, prev):
    """The label arrays of a case with the value that pads each."""
    return [(seg, OUTSIDE)] + ([] if prev is None else [(prev, 0)])


def sample_batch(
    store: CaseStore,
    case_ids: list[str],
    patch,
    batch_size: int,
    rng: np.random.Generator,
    oversample: float = OVERSAMPLE_FOREGROUND,
    margin=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``image (B, C, *patch)`` float32 and ``label (B, L, *patch)`` int16 for one batch
    (``L`` = 2 for a cascade stage: label, previous-stage segmentation); ``margin``:
    how much larger ``patch`` is than the network's (see :func:`_window`)."""
    if not case_ids:
        raise TrainingError(
            "no cases to sample training patches from; the fold's training list is empty "
            "(check the splits)"
        )
    images, labels = [], []
    for force in forced_foreground(batch_size, oversample):
        case_id = case_ids[int(rng.integers(len(case_ids)))]
        image, label = sample_patch(store, case_id, tuple(patch), force, rng, margin)
        images.append(image)
        labels.append(label)
    images = np.stack(images).astype(np.float32, copy=False)  # stack made a new array
    return images, np.stack(labels).astype(np.int16)
