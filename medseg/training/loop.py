"""Training one configuration and fold: nnU-Net v2's recipe, resumable epoch by epoch.

SGD (Nesterov, momentum 0.99, weight decay 3e-5), learning rate 0.01 with
polynomial decay (exponent 0.9), gradient clipping at 12, Dice + CE with
deep-supervision weights, mixed precision on CUDA. Each epoch ends with a
checkpoint written atomically, so a run killed at any moment loses at most the
epoch in progress, and ``resume`` continues with identical state: weights,
optimizer buffers, history; the data of epoch ``e`` depend only on
``(seed, e)``, so a resumed CPU run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.core.errors import TrainingError
from medseg.core.layout import Checkpoint, FoldDir
from medseg.core.plans import Configuration, Plans
from medseg.io.preprocessed import case_ids, require_previous
from medseg.nets.checkpoint import (
    save_checkpoint,
)
from medseg.nets.device import resolve_device
from medseg.planning.splits import fold_cases
from medseg.training.augment import settings_for_patch
from medseg.training.cascade import CascadeAugmentSettings
from medseg.training.ignore import hard_counts
from medseg.training.interrupt import Cursor, Stopper, StopPolicy
from medseg.training.loader import (
    VALIDATION_STREAM,
    BatchSpec,
    epoch_loader,
    finish_on_device,
)
from medseg.training.model import build_loss, build_model
from medseg.training.run_state import finish_epoch, start_point, state_document

log = logging.getLogger(__name__)

EMA_DECAY = 0.9


@dataclass(frozen=True)
class TrainSettings:
    """What ``medseg train`` was asked to do (defaults: nnU-Net v2's trainer)."""

    configuration: str
    fold: int | str
    device: str = "auto"
    epochs: int = 1000
    iterations: int = 250
    val_iterations: int = 50
    seed: int = 0
    workers: int = 2
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip: float = 12.0
    amp: bool = True


def poly_lr(initial: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    return initial * (1 - epoch / epochs) ** exponent


@dataclass
class _Run:
    settings: TrainSettings
    config: Configuration
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.nn.Module
    n_weighted: int
    device: torch.device
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    train_spec: BatchSpec
    val_spec: BatchSpec
    n_classes: int
    #: The dataset's ignore label (:mod:`medseg.training.ignore`), or None.
    ignore: int | None = None
    #: Data-parallel training (:mod:`medseg.training.distributed`): the wrapped model the
    #: training step runs, the sum over processes of a CPU float64 tensor, and whether this
    #: process writes checkpoints and logs. The defaults are one process.
    ddp: torch.nn.Module | None = None
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    is_writer: bool = True


def _autocast(run: _Run):
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.amp_dtype)


def _train_step(run: _Run, image, label) -> float:
    run.optimizer.zero_grad(set_to_none=True)
    with _autocast(run):
        outputs = (run.model if run.ddp is None else run.ddp)(image)
    loss = run.loss(outputs[: run.n_weighted], label.float())
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    return float(loss.detach())


def _train_epoch(
    run: _Run, epoch: int, on_iteration, cursor: Cursor | None, stop: Stopper
) -> tuple[float, float]:
    """Train one epoch from ``cursor`` (a stopped epoch) or its start; return the mean
    loss and iterations per second. After every iteration ``stop`` may checkpoint or stop."""
    run.model.train()
    s = run.settings
    first = cursor.next_iteration if cursor else 0
    losses = list(cursor.losses) if cursor else []
    before = cursor.seconds if cursor else 0.0
    start = time.perf_counter()
    pin = run.device.type == "cuda"
    batches = epoch_loader(run.train_spec, epoch, s.iterations, s.workers, pin, start=first)
    for it, (image, label) in enumerate(batches, start=first):
        image, label = finish_on_device(image, label, run.train_spec, epoch, it, run.device)
        loss = _train_step(run, image, label)
        if run.reduce is not None:  # the mean over processes
            total = run.reduce(torch.tensor([loss, 1.0], dtype=torch.float64))
            loss = float(total[0] / total[1])
        losses.append(loss)
        if on_iteration:
            on_iteration(epoch, it, losses[-1])
        if it + 1 < s.iterations:
            seconds = before + time.perf_counter() - start
            stop.after_iteration(Cursor(epoch, it + 1, tuple(losses), seconds))
    return float(np.mean(losses)), s.iterations / (before + time.perf_counter() - start)


@torch.no_grad()
def _validate_epoch(run: _Run, epoch: int) -> tuple[float, list[float]]:
    """Validation loss and pseudo-Dice per foreground class on random validation patches."""
    run.model.eval()
    s = run.settings
    tp = torch.zeros(run.n_classes - 1, dtype=torch.float64)
    fp, fn = tp.clone(), tp.clone()
    losses = []
    for image, label in epoch_loader(run.val_spec, epoch, s.val_iterations, s.workers, False):
        image, label = image.to(run.device), label.to(run.device)
        with _autocast(run):
            outputs = run.model(image)
        losses.append(float(run.loss(outputs[: run.n_weighted], label.float())))
        counts = hard_counts(outputs[0].argmax(1), label[:, 0].long(), run.n_classes, run.ignore)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    val_loss = float(np.mean(losses))
    if run.reduce is not None:  # counts and losses of all processes
        tp, fp, fn = run.reduce(torch.stack([tp, fp, fn]))
        total = run.reduce(torch.tensor([sum(losses), len(losses)], dtype=torch.float64))
        val_loss = float(total[0] / total[1])
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    return val_loss, [float(d) for d in dice]


def _amp(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype on CUDA (bf16 where supported, else fp16 with a loss scaler)."""
    if device.type != "cuda" or not enabled:
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def _cascade(config: Configuration, plans: Plans, previous: Path | None) -> dict:
    """The batch fields of a cascade stage (none for other configurations)."""
    if not config.previous_stage:
        if previous is not None:
            raise TrainingError(f"{config.name} is not a cascade stage; drop --previous")
        return {}
    if previous is None:
        raise TrainingError(
            f"{config.name} is a cascade stage after {config.previous_stage}: give its "
            "cross-validation segmentations with --previous (see 'medseg previous-stage')"
        )
    return {"previous": Path(previous), "foreground": tuple(plans.labels.foreground)}


def _build_run(
    plans: Plans, splits: dict, folder: Path, s: TrainSettings, previous: Path | None
) -> _Run:
    config = plans.configuration(s.configuration)
    cascade = _cascade(config, plans, previous)
    train_ids, val_ids = fold_cases(splits, s.fold, case_ids(folder))
    if cascade:
        require_previous(cascade["previous"], [*train_ids, *val_ids])
    n_classes = plans.labels.n_classes
    device = resolve_device(s.device)
    n_in = config.input_channels(plans.n_channels, plans.labels)
    model = build_model(config, n_in, n_classes, s.seed).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=s.initial_lr,
        momentum=s.momentum,
        nesterov=True,
        weight_decay=s.weight_decay,
    )
    loss, weights = build_loss(config, plans.labels.ignore)
    amp_dtype, use_scaler = _amp(device, s.amp)
    masked = tuple(i for i, m in enumerate(config.use_mask_for_norm) if m)
    patch = config.patch_size
    common = dict(folder=folder, patch=patch, batch_size=config.batch_size, seed=s.seed, **cascade)
    return _Run(
        settings=s,
        config=config,
        model=model,
        optimizer=optimizer,
        loss=loss,
        n_weighted=sum(1 for w in weights if w > 0),
        device=device,
        scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        amp_dtype=amp_dtype,
        train_spec=BatchSpec(
            case_ids=tuple(train_ids),
            augment=settings_for_patch(patch, masked_channels=masked),
            augment_in_worker=device.type != "cuda",
            cascade=CascadeAugmentSettings() if cascade else None,
            **common,
        ),
        val_spec=BatchSpec(
            case_ids=tuple(val_ids),
            augment=None,
            augment_in_worker=True,
            stream=VALIDATION_STREAM,
            **common,
        ),
        n_classes=n_classes,
        ignore=plans.labels.ignore,
    )


def _record(run: _Run, epoch: int, history: list[dict], t0: float, trained, validated) -> dict:
    """One line of training_log.jsonl."""
    (train_loss, its), (val_loss, dice) = trained, validated
    mean_dice = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else 0.0
    ema = (
        mean_dice
        if not history
        else EMA_DECAY * history[-1]["ema_pseudo_dice"] + (1 - EMA_DECAY) * mean_dice
    )
    return {
        "epoch": epoch,
        "epochs": run.settings.epochs,  # planned: medseg status's ETA
        "train_loss": train_loss,
        "val_loss": val_loss,
        "pseudo_dice": dice,
        "pseudo_dice_mean": mean_dice,
        "ema_pseudo_dice": ema,
        "learning_rate": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": time.perf_counter() - t0,
        "iterations_per_second": its,
    }


def train(
    plans: Plans | Mapping,
    splits: dict,
    preprocessed: Path,
    out: Path,
    settings: TrainSettings,
    *,
    resume: bool = False,
    previous: Path | None = None,
    on_iteration: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    stop: StopPolicy | None = None,
) -> dict:
    """Train ``settings.configuration`` fold ``settings.fold``; return the last epoch's record.

    ``out`` receives checkpoint_latest/best/final.safetensors, training_log.jsonl
    and progress.png. Without ``resume``, an existing checkpoint is an error
    (nothing is overwritten by accident); with it, training continues from it, also
    in the middle of an epoch (or starts, if there is none; or starts over, if the
    checkpoint was made with other plans or another split, which is then kept as
    ``.stale``). A cascade stage needs ``previous``: the previous stage's CV
    segmentations (``medseg previous-stage``). ``stop``: when to write mid-epoch
    checkpoints and when to stop (:mod:`medseg.training.interrupt`; raises
    :class:`~medseg.training.interrupt.TrainingStopped` after the checkpoint).
    """
    run = _build_run(Plans.of(plans), splits, Path(preprocessed), settings, previous)
    folder = FoldDir(Path(out))
    Path(out).mkdir(parents=True, exist_ok=True)
    begin = start_point(run, folder, resume)
    return _fit(run, folder, begin, on_iteration, on_epoch, stop or StopPolicy())


def _fit(run: _Run, folder: FoldDir, begin: tuple, on_iteration, on_epoch, stop) -> dict:
    """The epochs from ``begin`` (:func:`start_point`'s answer) to the end; only a
    writer (``run.is_writer``) writes checkpoints, the log and the curves."""
    settings = run.settings
    start, history, best, cursor = begin

    def save_cursor(c: Cursor) -> None:
        if run.is_writer:
            state = state_document(run, c.epoch - 1, history, best, c)
            save_checkpoint(folder.checkpoint(Checkpoint.LATEST), run.model, state, run.optimizer)

    stopper = Stopper(stop, save_cursor, folder.root)
    for epoch in range(start, settings.epochs):
        for group in run.optimizer.param_groups:
            group["lr"] = poly_lr(settings.initial_lr, epoch, settings.epochs)
        t0 = time.perf_counter()
        trained = _train_epoch(run, epoch, on_iteration, cursor, stopper)
        cursor = None
        history.append(_record(run, epoch, history, t0, trained, _validate_epoch(run, epoch)))
        if run.is_writer:
            best = finish_epoch(run, folder, epoch, history, best)
        if on_epoch:
            on_epoch(history[-1])
        if epoch + 1 < settings.epochs:
            stopper.after_epoch(epoch + 1)
    if run.is_writer:
        final = state_document(run, settings.epochs - 1, [], best)
        save_checkpoint(folder.checkpoint(Checkpoint.FINAL), run.model, final)
    return history[-1] if history else {}
