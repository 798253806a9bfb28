"""What a training run's checkpoints hold, and where a run starts from them.

``checkpoint_latest`` (every epoch end, and mid-epoch when stopped or on a timer)
holds the weights, the optimizer buffers, the history, the best EMA pseudo-Dice and,
mid-epoch, the :class:`~medseg.training.interrupt.Cursor`; ``checkpoint_best`` the
weights of the best epoch. Resuming refuses other settings and sets aside a checkpoint
of other plans or another split.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING

from medseg.core.errors import TrainingError
from medseg.core.layout import Checkpoint, FoldDir
from medseg.nets.checkpoint import (
    load_checkpoint,
    load_weights,
    model_weights,
    restore_optimizer,
    save_checkpoint,
)
from medseg.training.interrupt import Cursor
from medseg.training.logs import plot_history, write_history

if TYPE_CHECKING:
    from medseg.training.loop import _Run

log = logging.getLogger(__name__)


def state_document(
    run: _Run, epoch: int, history: list[dict], best: float | None, cursor: Cursor | None = None
) -> dict:
    """A checkpoint's document; ``epoch`` is the last finished epoch, ``cursor`` where a
    stopped epoch after it goes on."""
    return {
        "epoch": epoch,
        "cursor": cursor.to_json() if cursor else None,
        "cases": {"train": list(run.train_spec.case_ids), "val": list(run.val_spec.case_ids)},
        "history": history,
        "best_ema_pseudo_dice": best,
        "settings": {**asdict(run.settings)},
        "configuration": dict(run.config.raw),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }


def _resume(run: _Run, out: FoldDir) -> tuple[int, list[dict], float | None, Cursor | None]:
    tensors, document = load_checkpoint(out.checkpoint(Checkpoint.LATEST))
    state = document["state"]
    cases = {"train": list(run.train_spec.case_ids), "val": list(run.val_spec.case_ids)}
    if state.get("configuration") != dict(run.config.raw) or state.get("cases") != cases:
        raise _Stale()
    saved = {k: v for k, v in state["settings"].items() if k not in ("epochs", "workers", "device")}
    now = {
        k: v for k, v in asdict(run.settings).items() if k not in ("epochs", "workers", "device")
    }
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise TrainingError(
            f"{out.root}: cannot resume with different settings ({', '.join(changed)}); resume "
            "with the settings of the first run, or train into another folder"
        )
    load_weights(run.model, model_weights(tensors))
    restore_optimizer(run.optimizer, tensors, document)
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    cursor = Cursor.from_json(state.get("cursor"))
    if cursor is None:
        log.info("resuming %s after epoch %d", out.root, state["epoch"])
    else:
        log.info(
            "resuming %s in epoch %d at iteration %d", out.root, cursor.epoch, cursor.next_iteration
        )
    return state["epoch"] + 1, state["history"], state["best_ema_pseudo_dice"], cursor


class _Stale(Exception):
    """The latest checkpoint belongs to other plans or another split."""


def finish_epoch(run: _Run, out: FoldDir, epoch: int, history: list[dict], best):
    record = history[-1]
    improved = best is None or record["ema_pseudo_dice"] > best
    if improved:
        best = record["ema_pseudo_dice"]
        record["new_best"] = True
        save_checkpoint(
            out.checkpoint(Checkpoint.BEST), run.model, state_document(run, epoch, [], best)
        )
    save_checkpoint(
        out.checkpoint(Checkpoint.LATEST),
        run.model,
        state_document(run, epoch, history, best),
        run.optimizer,
    )
    write_history(out.training_log, history)
    plot_history(out.progress, history, f"{run.settings.configuration} fold {run.settings.fold}")
    return best


def start_point(run: _Run, folder: FoldDir, resume: bool):
    """Where training starts: ``(epoch, history, best, cursor)`` from the latest
    checkpoint with ``resume``, else from scratch (an existing checkpoint is an error)."""
    latest = folder.checkpoint(Checkpoint.LATEST)
    if not latest.exists():
        return 0, [], None, None
    if not resume:
        raise TrainingError(
            f"{folder.root} already holds a training run; pass --resume to continue "
            "it, or choose another output folder"
        )
    try:
        return _resume(run, folder)
    except _Stale:
        stale = latest.with_suffix(".stale")
        latest.replace(stale)
        log.warning(
            "%s: the checkpoint was made with other plans or another split; it was "
            "set aside as %s and training starts over",
            folder.root,
            stale.name,
        )
        return 0, [], None, None
