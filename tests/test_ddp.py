"""Data-parallel training (``medseg train --gpus N``) with gloo processes on the CPU.

nnU-Net's batch split, per-rank sampling streams, the Dice over the global batch (in one
process the MONAI loss; in two, the one-process gradient), and the CLI end to end:
training, a stop, a resume.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import MEDSEG
from test_training import tiny  # noqa: F401  (the module's fixture)

from medseg.core.errors import DeviceError, TrainingError
from medseg.core.plans import Plans
from medseg.nets.checkpoint import load_checkpoint, model_weights
from medseg.training.data import batch_seed
from medseg.training.distributed import data_parallel, free_port, rank_batches, rank_devices
from medseg.training.distributed_loss import build_distributed_loss
from medseg.training.model import build_loss, build_model

PAIRS = [(2, 2), (7, 2), (7, 3), (5, 4), (4, 2), (9, 4), (12, 5), (3, 3), (2, 1)]


def test_rank_batches_match_nnunet():
    trainer = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    for batch, world in PAIRS:
        want = []
        for rank in range(world):
            fake = SimpleNamespace(
                is_ddp=True,
                configuration_manager=SimpleNamespace(batch_size=batch),
                oversample_foreground_percent=0.33,
            )
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
                mp.setattr(trainer.dist, "get_world_size", lambda w=world: w)
                mp.setattr(trainer.dist, "get_rank", lambda r=rank: r)
                trainer.nnUNetTrainer._set_batch_size_and_oversample(fake)
            want.append((fake.batch_size, fake.oversample_foreground_percent))
        assert rank_batches(batch, world, 0.33) == want, (batch, world)
    with pytest.raises(TrainingError, match="cannot be split over 3.*--gpus 2"):
        rank_batches(2, 3)


def test_rank_streams_and_devices():
    one = batch_seed(3, 1, 4, 0).generate_state(4)
    assert np.array_equal(one, np.random.SeedSequence([3, 1, 4, 0]).generate_state(4))
    assert np.array_equal(one, batch_seed(3, 1, 4, 0, rank=0).generate_state(4))
    other = batch_seed(3, 1, 4, 0, rank=1).generate_state(4)
    assert not np.array_equal(one, other)
    assert np.array_equal(other, batch_seed(3, 1, 4, 0, rank=1).generate_state(4))
    assert rank_devices("cpu", 2, 0) == ("gloo", ["cpu", "cpu"])
    assert rank_devices("cuda", 2, 4) == ("nccl", ["cuda:0", "cuda:1"])
    assert rank_devices("auto", 2, 2)[0] == "nccl"
    with pytest.raises(DeviceError, match="only 1 CUDA device"):
        rank_devices("cuda", 2, 1)
    with pytest.raises(DeviceError, match="--device cpu"):
        rank_devices("auto", 2, 0)
    with pytest.raises(DeviceError, match="--device cuda"):
        rank_devices("cuda:1", 2, 4)


def _outputs_and_label(config, n_classes, batch, seed):
    """Deep-supervision logits of a model on a random batch, and random labels."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(config, 1, n_classes, 0)
    image = torch.randn((batch, 1, *config.patch_size), generator=gen)
    label = torch.randint(0, n_classes, (batch, 1, *config.patch_size), generator=gen)
    return model, image, label.float()


def test_world_one_loss_equals_build_loss(tiny):  # noqa: F811
    _, plans, _ = tiny
    plans = Plans.of(plans)
    planned = plans.configuration("3d_fullres")
    for batch_dice in (True, False):
        config = replace(planned, raw={**planned.raw, "batch_dice": batch_dice})
        monai_loss, weights = build_loss(config)
        ours, ours_weights = build_distributed_loss(config)
        assert weights == ours_weights
        model, image, label = _outputs_and_label(config, plans.labels.n_classes, 3, 7)
        n = sum(1 for w in weights if w > 0)
        outputs = model(image)[:n]
        want, got = monai_loss(outputs, label), ours(outputs, label)
        assert torch.allclose(got, want, rtol=0, atol=1e-6), (batch_dice, float(got - want))
        # random logits, larger: the loss values themselves
        logits = [torch.randn(4, 3, 6, 10, 12) * 3, torch.randn(4, 3, 3, 5, 6)]
        target = torch.randint(0, 3, (4, 1, 6, 10, 12)).float()
        loss_a, _ = build_loss(config)
        loss_b, _ = build_distributed_loss(config)
        assert abs(float(loss_a(logits, target)) - float(loss_b(logits, target))) < 1e-6


def _grad_rank(rank: int, world: int, port: int, raw_plans: dict, data: str, out: str) -> None:
    """One of two processes: its half of the batch, DDP, the distributed loss."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        plans = Plans.of(raw_plans)
        config = plans.configuration("3d_fullres")
        image, label = torch.load(data)
        half = image.shape[0] // world
        model = build_model(config, 1, plans.labels.n_classes, 0)
        loss, weights = build_distributed_loss(config)
        ddp = data_parallel(model, sum(1 for w in weights if w > 0), torch.device("cpu"))
        part = slice(rank * half, (rank + 1) * half)
        value = loss(ddp(image[part]), label[part])
        value.backward()
        if rank == 0:
            grads = {k: p.grad for k, p in model.named_parameters()}
            torch.save({"grads": grads, "loss": value.detach()}, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_first_step_gradient_equals_one_process(tiny, tmp_path):  # noqa: F811
    _, raw_plans, _ = tiny
    plans = Plans.of(raw_plans)
    config = plans.configuration("3d_fullres")
    torch.set_num_threads(1)
    model, image, label = _outputs_and_label(config, plans.labels.n_classes, 4, 3)
    torch.save((image, label), tmp_path / "batch.pt")
    loss, weights = build_loss(config)
    n = sum(1 for w in weights if w > 0)
    loss(model(image)[:n], label).backward()
    want = {k: p.grad for k, p in model.named_parameters()}
    args = (2, free_port(), dict(plans.raw), str(tmp_path / "batch.pt"), str(tmp_path / "g.pt"))
    torch.multiprocessing.spawn(_grad_rank, args=args, nprocs=2)
    got = torch.load(tmp_path / "g.pt")["grads"]
    for key, w in want.items():
        if w is None:  # the unused coarsest head: no gradient in either
            assert got[key] is None, key
            continue
        assert torch.allclose(got[key], w, rtol=1e-4, atol=1e-6), key
    used = [k for k, w in want.items() if w is not None]
    g, w = (torch.cat([d[k].flatten() for k in used]) for d in (got, want))
    big = w.abs() > 1e-3 * w.abs().max()
    print(
        f"first-step gradient: max abs diff {float((g - w).abs().max()):.3g}, relative "
        f"(L2) {float((g - w).norm() / w.norm()):.3g}, max elementwise relative where "
        f"|grad| > 1e-3 max {float(((g - w).abs() / w.abs())[big].max()):.3g}"
    )


def _cmd(root, out, epochs: int, *extra: str) -> list[str]:
    return [
        *MEDSEG, "train", str(root / "pre"), str(root / "plans.json"), str(root / "splits.json"),
        "--config", "3d_fullres", "--fold", "0", "-o", str(out), "--device", "cpu",
        "--gpus", "2", "--epochs", str(epochs), "--iterations", "4", "--val-iterations", "1",
        "--workers", "0", "--threads", "1", "--no-validation", *extra,
    ]  # fmt: skip


def _log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "training_log.jsonl").open()]


def _weights(folder) -> dict:
    return model_weights(load_checkpoint(folder / "checkpoint_final.safetensors")[0])


@pytest.mark.slow
def test_cli_two_processes_train_stop_and_resume(tiny, tmp_path):  # noqa: F811
    """3 epochs on 2 gloo processes; the same run stopped by SIGUSR1 (exit code 75) in
    epoch 1 or at its end, refused without --resume, then resumed: the same weights."""
    root, _, _ = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run(_cmd(*a), env=env, capture_output=True, text=True)  # noqa: E731
    whole = run(root, tmp_path / "whole", 3)
    assert whole.returncode == 0, whole.stderr
    history = _log(tmp_path / "whole")
    assert [h["epoch"] for h in history] == [0, 1, 2] and "epoch 2:" in whole.stdout
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert (tmp_path / "whole" / "checkpoint_final.safetensors").exists()
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(root, cut, 3), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "training_log.jsonl").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)  # in epoch 1: stop at the next iteration or its end
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    state = load_checkpoint(cut / "checkpoint_latest.safetensors")[1]["state"]
    assert state["epoch"] in (0, 1) and not (cut / "checkpoint_final.safetensors").exists()
    refused = run(root, cut, 3)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    resumed = run(root, cut, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [h["epoch"] for h in _log(cut)] == [0, 1, 2]
    a, b = _weights(tmp_path / "whole"), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed differs"
