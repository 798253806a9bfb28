"""Batches for one epoch, made in worker processes.

Each batch is a pure function of ``(seed, epoch, iteration)`` (and the rank, in
data-parallel training: :mod:`medseg.training.distributed`). On CPU the
workers also augment; on CUDA they only read patches (pinned memory) and the
training process augments the whole batch on the GPU, so augmentation never
limits a fast GPU.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.training.augment import AugmentSettings, augment, source_patch_size
from medseg.training.cascade import CascadeAugmentSettings, augment_previous, previous_onehot
from medseg.training.data import OVERSAMPLE_FOREGROUND, CaseStore, batch_seed, sample_batch

AUGMENT_STREAM, SAMPLE_STREAM, VALIDATION_STREAM, CASCADE_STREAM = 1, 0, 2, 3


def torch_generator(seq: np.random.SeedSequence, device: str | torch.device = "cpu"):
    """A torch generator on ``device`` seeded from a numpy seed sequence."""
    seed = int(seq.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker needs to make batches (picklable, no open files)."""

    folder: Path
    case_ids: tuple[str, ...]
    patch: tuple[int, ...]
    batch_size: int
    seed: int
    augment: AugmentSettings | None
    augment_in_worker: bool
    stream: int = SAMPLE_STREAM
    #: A cascade stage: the previous stage's segmentations, and the labels one-hot encoded
    previous: Path | None = None
    foreground: tuple[int, ...] = ()
    cascade: CascadeAugmentSettings | None = None
    #: Data-parallel training: this process's rank (its own batches) and the fraction of
    #: its batch forced to hold foreground (:func:`medseg.training.distributed.rank_batches`)
    rank: int = 0
    oversample: float = OVERSAMPLE_FOREGROUND


class EpochBatches(torch.utils.data.Dataset):
    """Map-style dataset: index ``(epoch, iteration)`` -> one ready batch."""

    def __init__(self, spec: BatchSpec):
        self.spec = spec
        self.store: CaseStore | None = None

    def __len__(self) -> int:  # indices come from EpochSampler
        return 2**31

    def __getitem__(self, index: tuple[int, int]):
        spec = self.spec
        if self.store is None:  # opened lazily, once per worker process
            self.store = CaseStore(spec.folder, spec.previous)
        epoch, it = index
        read = spec.patch if spec.augment is None else source_patch_size(spec.patch, spec.augment)
        margin = [r - p for r, p in zip(read, spec.patch, strict=True)]
        rng = np.random.default_rng(batch_seed(spec.seed, epoch, it, spec.stream, spec.rank))
        ids, size = list(spec.case_ids), spec.batch_size
        image, label = sample_batch(self.store, ids, read, size, rng, spec.oversample, margin)
        image, label = torch.from_numpy(image), torch.from_numpy(label)
        if spec.augment is None:
            return with_previous(image, label.clamp_(min=0), spec, epoch, it)
        if spec.augment_in_worker:
            gen = torch_generator(batch_seed(spec.seed, epoch, it, AUGMENT_STREAM, spec.rank))
            image, label = augment(image, label, spec.patch, spec.augment, gen)
            return with_previous(image, label, spec, epoch, it)
        return image, label


def with_previous(image, label, spec: BatchSpec, epoch: int, it: int):
    """A cascade batch: the previous stage's segmentation (label channel 1) becomes
    one-hot input channels after the image's, with nnU-Net's cascade augmentation when
    training; other batches pass through."""
    if spec.previous is None:
        return image, label
    onehot = previous_onehot(label[:, 1:2], spec.foreground, image.dtype)
    if spec.cascade is not None:
        gen = torch_generator(batch_seed(spec.seed, epoch, it, CASCADE_STREAM, spec.rank))
        onehot = augment_previous(onehot, spec.cascade, gen)
    return torch.cat([image, onehot], dim=1), label[:, :1]


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, iteration)`` for the iterations ``start..iterations-1`` of one
    epoch (``start`` > 0: an epoch resumed where it was stopped)."""

    def __init__(self, epoch: int, iterations: int, start: int = 0):
        self.epoch, self.iterations, self.start = epoch, iterations, start

    def __iter__(self):
        return ((self.epoch, i) for i in range(self.start, self.iterations))

    def __len__(self) -> int:
        return self.iterations - self.start


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In a loader worker: SIGTERM/SIGUSR1 are for the training process, which stops at
    the next iteration boundary and ends its workers itself (a worker killed first would
    make the next batch fail before the checkpoint)."""
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def epoch_loader(
    spec: BatchSpec, epoch: int, iterations: int, workers: int, pin: bool, start: int = 0
):
    """A DataLoader over one epoch's batches from iteration ``start`` (``workers``
    processes, 0 = in process)."""
    return torch.utils.data.DataLoader(
        EpochBatches(spec),
        batch_size=None,
        sampler=EpochSampler(epoch, iterations, start),
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )


def finish_on_device(image, label, spec: BatchSpec, epoch: int, it: int, device):
    """Move a batch to ``device`` and, for GPU training, augment it there."""
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    if spec.augment is not None and not spec.augment_in_worker:
        seq = batch_seed(spec.seed, epoch, it, AUGMENT_STREAM, spec.rank)
        gen = torch_generator(seq, device)
        image, label = augment(image, label, spec.patch, spec.augment, gen)
        image, label = with_previous(image, label, spec, epoch, it)
    return image, label
