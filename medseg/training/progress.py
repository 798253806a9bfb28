"""Where a training run stands, from its training log alone (``medseg status``).

A fold folder holds ``training_log.jsonl`` (one record per finished epoch, rewritten
atomically by the trainer) and, once done, ``checkpoint_final``. From those two files
:func:`fold_progress` says how far the run is, its last pseudo-Dice and, from the
recent epochs' duration, when it should finish. Pure: the caller reads the files and
gives the clock.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

#: Recent epochs whose median duration predicts the rest.
RECENT_EPOCHS = 5
#: A run whose log has not changed for this many epoch durations is called stalled.
STALL_FACTOR = 3.0


@dataclass(frozen=True)
class FoldProgress:
    """One fold's training progress (JSON-ready with :meth:`to_dict`)."""

    state: str  # "finished", "running", "stalled" (no new epoch for a long time), "not started"
    epochs_done: int
    epochs: int | None  # planned epochs (None: a log written before medseg recorded them)
    pseudo_dice: float | None  # the last epoch's mean pseudo-Dice
    ema_pseudo_dice: float | None
    epoch_seconds: float | None  # median of the recent epochs
    eta_seconds: float | None  # remaining epochs x epoch_seconds (running runs only)

    def to_dict(self) -> dict:
        return asdict(self)


def read_history(path: Path) -> list[dict]:
    """The records of a training log; a missing file is no epochs, a torn or foreign
    line is skipped (the trainer rewrites the file atomically, so only a foreign
    edit can leave one)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    history = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            history.append(record)
    return history


def fold_progress(
    history: list[dict], finished: bool, log_age_seconds: float | None = None
) -> FoldProgress:
    """Progress of one fold from its log records, whether ``checkpoint_final`` exists,
    and how long ago the log last changed (None: unknown)."""
    if not history:
        state = "finished" if finished else "not started"
        return FoldProgress(state, 0, None, None, None, None, None)
    last = history[-1]
    done = int(last["epoch"]) + 1
    planned = last.get("epochs")
    recent = [float(h["epoch_seconds"]) for h in history[-RECENT_EPOCHS:] if "epoch_seconds" in h]
    per_epoch = statistics.median(recent) if recent else None
    state, eta = "finished", None
    if not finished:
        state = "running"
        if per_epoch and log_age_seconds is not None and log_age_seconds > STALL_FACTOR * per_epoch:
            state = "stalled"
        if per_epoch and planned is not None:
            eta = max(0.0, (int(planned) - done) * per_epoch - (log_age_seconds or 0.0))
    return FoldProgress(
        state,
        done,
        None if planned is None else int(planned),
        _number(last.get("pseudo_dice_mean")),
        _number(last.get("ema_pseudo_dice")),
        per_epoch,
        eta,
    )


def _number(value) -> float | None:
    return None if value is None else float(value)
