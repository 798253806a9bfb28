"""Training stopped between iterations (signal or timer) resumes mid-epoch, bit for bit.

What a cluster does to a long training job: SLURM's time limit or a preemption sends
SIGTERM (with ``--signal``, an earlier SIGUSR1) and kills the job soon after. The loop
checkpoints with an iteration cursor and stops; ``--resume`` starts the stopped epoch at
that iteration. On the CPU the result must be the weights of a run never stopped.
The SLURM version of this (a real time limit) is in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from test_training import _train_cmd, tiny  # noqa: F401  (tiny: the module's fixture)

from medseg.nets.checkpoint import load_checkpoint, model_weights
from medseg.training.interrupt import Cursor, StopPolicy, TrainingStopped
from medseg.training.loader import EpochSampler
from medseg.training.loop import TrainSettings, train

SETTINGS = TrainSettings("3d_fullres", 0, device="cpu", epochs=3, iterations=5, val_iterations=1)


def _weights(folder, name="checkpoint_final"):
    return model_weights(load_checkpoint(folder / f"{name}.safetensors")[0])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _state(folder) -> dict:
    """The document of checkpoint_latest (its safetensors header)."""
    return load_checkpoint(folder / "checkpoint_latest.safetensors")[1]["state"]


class Counter:
    """A stop request that becomes true after ``after`` training iterations."""

    def __init__(self, after: int):
        self.after, self.seen = after, 0

    def on_iteration(self, epoch, it, loss) -> None:
        self.seen += 1

    def requested(self) -> bool:
        return self.seen >= self.after


def test_cursor_and_sampler_and_timer():
    cursor = Cursor(2, 3, (0.5, 0.25, 1 / 3), 1.5)
    assert Cursor.from_json(json.loads(json.dumps(cursor.to_json()))) == cursor
    assert Cursor.from_json(None) is None
    assert list(EpochSampler(4, 5, start=3)) == [(4, 3), (4, 4)]
    assert len(EpochSampler(4, 5, start=3)) == 2
    now = [0.0]
    policy = StopPolicy(checkpoint_seconds=60, clock=lambda: now[0])
    assert not policy.due()
    now[0] = 59.9
    assert not policy.due()
    now[0] = 60.0
    assert policy.due()
    policy.saved()
    assert not policy.due()
    assert not StopPolicy().due()
    with pytest.raises(ValueError, match="positive"):
        StopPolicy(checkpoint_seconds=0)


@pytest.mark.slow
def test_stop_mid_epoch_and_at_an_epoch_end_then_resume_equals_uninterrupted(tiny, tmp_path):  # noqa: F811
    root, plans, splits = tiny
    pre = root / "pre"
    train(plans, splits, pre, tmp_path / "whole", SETTINGS)
    # stopped after 7 iterations: in epoch 1 before its iteration 2
    stop = Counter(7)
    cut = tmp_path / "cut"
    with pytest.raises(TrainingStopped, match="before iteration 2 of epoch 1.*--resume") as info:
        train(plans, splits, pre, cut, SETTINGS, on_iteration=stop.on_iteration,
              stop=StopPolicy(stop.requested))  # fmt: skip
    assert info.value.cursor.epoch == 1 and info.value.cursor.next_iteration == 2
    state = _state(cut)
    assert state["epoch"] == 0 and state["cursor"]["next_iteration"] == 2
    assert len(state["cursor"]["losses"]) == 2 and len(state["history"]) == 1
    assert not (cut / "checkpoint_final.safetensors").exists()
    # resumed, then stopped again right after epoch 1's checkpoint (iteration 5 of 5)
    stop = Counter(3)
    with pytest.raises(TrainingStopped, match="before iteration 0 of epoch 2"):
        train(plans, splits, pre, cut, SETTINGS, resume=True, on_iteration=stop.on_iteration,
              stop=StopPolicy(stop.requested))  # fmt: skip
    assert stop.seen == 3 and _state(cut)["cursor"] is None and _state(cut)["epoch"] == 1
    last = train(plans, splits, pre, cut, SETTINGS, resume=True)
    assert _same(_weights(tmp_path / "whole"), _weights(cut)), "resumed weights differ"
    whole_log = (tmp_path / "whole" / "training_log.jsonl").read_text().splitlines()
    cut_log = (cut / "training_log.jsonl").read_text().splitlines()
    for a, b in zip(map(json.loads, whole_log), map(json.loads, cut_log), strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert last["epoch"] == 2


@pytest.mark.slow
def test_timed_checkpoints_do_not_change_training(tiny, tmp_path):  # noqa: F811
    """--checkpoint-minutes: a mid-epoch checkpoint whenever the timer runs out, training
    goes on, and the result is the same; resuming from such a checkpoint too."""
    root, plans, splits = tiny
    pre = root / "pre"
    train(plans, splits, pre, tmp_path / "whole", SETTINGS)
    ticks = [0.0]
    clock = lambda: ticks[0]  # noqa: E731
    seen = []

    def on_iteration(epoch, it, loss):
        ticks[0] += 1.0  # one "second" per iteration: a checkpoint every 3 iterations
        if (epoch, it) == (1, 3):
            seen.append(_state(tmp_path / "timed"))  # what a kill now would leave

    policy = StopPolicy(checkpoint_seconds=3, clock=clock)
    train(plans, splits, pre, tmp_path / "timed", SETTINGS, on_iteration=on_iteration, stop=policy)
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "timed"))
    # epoch 1 started with the timer reset at epoch 0's end: checkpoint after iteration 2
    assert seen[0]["cursor"]["epoch"] == 1 and seen[0]["cursor"]["next_iteration"] == 3


@pytest.mark.slow
def test_sigusr1_stops_the_cli_with_exit_75_and_resume_matches(tiny, tmp_path):  # noqa: F811
    """The real process: SIGUSR1 mid-epoch (loader workers in their own processes) ->
    checkpoint, exit code 75, a message naming --resume; --resume -> the same weights."""
    root, _, _ = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    longer = ("--iterations", "60")
    whole = subprocess.run(
        _train_cmd(root, tmp_path / "whole", 3, *longer), env=env, capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr
    log = tmp_path / "cut" / "training_log.jsonl"
    proc = subprocess.Popen(
        _train_cmd(root, tmp_path / "cut", 3, *longer), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not log.exists():
        time.sleep(0.01)
    time.sleep(1.0)  # into epoch 1 (60 iterations of 0.05 s or more)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    state = _state(tmp_path / "cut")
    assert state["cursor"] is not None and state["cursor"]["epoch"] == 1, state["cursor"]
    resumed = subprocess.run(
        _train_cmd(root, tmp_path / "cut", 3, *longer, "--resume"),
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))
