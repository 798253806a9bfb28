"""Stopping training between iterations: on request (a signal) or on a timer.

Clusters end jobs at their wall-time limit or when a higher-priority job preempts
them; SLURM sends SIGTERM (and, with ``--signal``, an earlier SIGUSR1) and kills the
job a little later. Losing a whole epoch then costs up to an hour on a large dataset,
so the loop checks a :class:`StopPolicy` after every iteration:

- ``requested()`` true (the CLI sets it from SIGTERM/SIGUSR1): the loop writes
  ``checkpoint_latest`` with a :class:`Cursor` (where the epoch stopped and the
  losses of its finished iterations) and raises :class:`TrainingStopped`;
- ``checkpoint_seconds`` elapsed since the last checkpoint (``--checkpoint-minutes``,
  for clusters that kill without a warning): the same checkpoint, and training goes on.

A resumed run starts the stopped epoch at ``Cursor.next_iteration``. Batch
``(epoch, iteration)`` is a pure function of the seed, the weights and optimizer
buffers are restored exactly, and the epoch's learning rate is a function of the
epoch, so on the CPU the resumed run ends with the same weights, bit for bit, as a
run that was never stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


class TrainingStopped(MedsegError, RuntimeError):
    """Training stopped on request after saving a checkpoint; ``--resume`` continues it."""

    def __init__(self, folder, cursor: Cursor):
        self.cursor = cursor
        super().__init__(
            f"{folder}: training stopped on request (a signal) before iteration "
            f"{cursor.next_iteration} of epoch {cursor.epoch}; checkpoint_latest holds "
            "everything: run the same command with --resume to continue"
        )


@dataclass(frozen=True)
class Cursor:
    """Where an epoch was stopped: its first iteration not yet trained, the training
    losses of the iterations before it, and the seconds they took."""

    epoch: int
    next_iteration: int
    losses: tuple[float, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch,
            "next_iteration": self.next_iteration,
            "losses": list(self.losses),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> Cursor | None:
        if not data:
            return None
        return cls(
            epoch=int(data["epoch"]),
            next_iteration=int(data["next_iteration"]),
            losses=tuple(float(x) for x in data["losses"]),
            seconds=float(data.get("seconds", 0.0)),
        )


def never() -> bool:
    return False


@dataclass
class StopPolicy:
    """When the loop saves a mid-epoch checkpoint, and when it stops.

    ``requested``: a cheap callable, true once the run should stop (e.g. a flag a
    signal handler sets). ``checkpoint_seconds``: save a mid-epoch checkpoint when this
    many seconds passed since the last checkpoint (None: only at epoch ends).
    ``clock``: monotonic seconds (replaceable in tests).
    """

    requested: Callable[[], bool] = never
    checkpoint_seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint_seconds is not None and self.checkpoint_seconds <= 0:
            raise ValueError(f"checkpoint_seconds must be positive, got {self.checkpoint_seconds}")
        self._last = self.clock()

    def saved(self) -> None:
        """A checkpoint was just written: the timer starts again."""
        self._last = self.clock()

    def due(self) -> bool:
        """The timer ran out: a mid-epoch checkpoint is due."""
        if self.checkpoint_seconds is None:
            return False
        return self.clock() - self._last >= self.checkpoint_seconds


@dataclass
class Stopper:
    """Applies a :class:`StopPolicy` in the loop: ``save(cursor)`` writes the mid-epoch
    checkpoint; ``folder`` names the run in the :class:`TrainingStopped` message."""

    policy: StopPolicy
    save: Callable[[Cursor], None]
    folder: object

    def after_iteration(self, cursor: Cursor) -> None:
        """Between two iterations of an epoch: checkpoint if due or requested, then stop
        if requested."""
        requested = self.policy.requested()
        if requested or self.policy.due():
            self.save(cursor)
            self.policy.saved()
            log.info(
                "checkpoint in epoch %d before iteration %d", cursor.epoch, cursor.next_iteration
            )
        if requested:
            raise TrainingStopped(self.folder, cursor)

    def after_epoch(self, next_epoch: int) -> None:
        """An epoch's checkpoint was written: restart the timer; stop if requested."""
        self.policy.saved()
        if self.policy.requested():
            raise TrainingStopped(self.folder, Cursor(next_epoch, 0))
