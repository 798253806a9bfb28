"""Data-parallel training of one fold on N devices of one node (``medseg train --gpus N``).

nnU-Net's scheme (``nnUNetv2_train -num_gpus N``):

- the plans' batch is split over the processes (:func:`rank_batches`, nnU-Net's rule),
  each with the oversampling fraction that keeps the global batch's foreground share;
- process ``r`` draws its batches from its own streams: batch ``(epoch, iteration)`` is
  a pure function of ``(seed, epoch, iteration, r)``, and rank 0's stream is the
  one-process stream (:func:`medseg.training.data.batch_seed`);
- the model is wrapped in ``DistributedDataParallel`` (gradients averaged), the loss
  takes Dice over the global batch (:mod:`medseg.training.distributed_loss`), and
  validation counts and losses are summed over the processes, so all agree;
- only rank 0 writes checkpoints, ``training_log.jsonl`` and ``progress.png``; every
  rank resumes from ``checkpoint_latest``, mid-epoch cursor included;
- a stop request (a signal to the launching process or to any rank) is agreed by all
  ranks after every iteration (the maximum of their flags), so they stop together;
- the launching process watches the ranks: the first one to fail ends all of them and
  its error is raised here; collectives time out instead of hanging.

CUDA runs one process per GPU (``nccl``); ``--device cpu`` runs N ``gloo`` processes on
the CPU, which is for testing.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch

from medseg.core.errors import DeviceError, MedsegError, TrainingError
from medseg.core.layout import FoldDir
from medseg.core.plans import Plans
from medseg.training.data import OVERSAMPLE_FOREGROUND
from medseg.training.distributed_loss import build_distributed_loss
from medseg.training.interrupt import Cursor, StopPolicy, TrainingStopped
from medseg.training.loader import BatchSpec

log = logging.getLogger(__name__)

#: Seconds to wait for the other ranks' last words after one failed, before killing them.
GRACE_SECONDS = 5.0


class RankFailed(TrainingError):
    """One process of a data-parallel training failed; the others were ended."""


class _PeerFailed(MedsegError, RuntimeError):
    """Another rank failed first (its own error is the one to report)."""


def rank_batches(
    global_batch: int, world: int, oversample: float = OVERSAMPLE_FOREGROUND
) -> list[tuple[int, float]]:
    """Per rank ``(batch size, oversampling fraction)`` for a global batch over ``world``
    processes: nnU-Net's rule (``nnUNetTrainer._set_batch_size_and_oversample``).

    The first ``global_batch % world`` ranks get one sample more. The global batch's
    last ``global_batch - round(global_batch * (1 - oversample))`` samples are forced
    foreground; each rank gets the fraction of those that fall in its slice.
    """
    if world < 1 or global_batch < world:
        raise TrainingError(
            f"a batch of {global_batch} cannot be split over {world} processes; use at most "
            f"--gpus {global_batch}, or plan a larger batch size"
        )
    sizes = [global_batch // world + (1 if i < global_batch % world else 0) for i in range(world)]
    n_random = round(global_batch * (1 - oversample))
    forced = [i >= n_random for i in range(global_batch)]
    shares, low = [], 0
    for size in sizes:
        high = low + size
        if high / global_batch < 1 - oversample:
            fraction = 0.0
        elif low / global_batch > 1 - oversample:
            fraction = 1.0
        else:
            fraction = sum(forced[low:high]) / size
        shares.append((size, fraction))
        low = high
    return shares


def rank_spec(spec: BatchSpec, rank: int, share: tuple[int, float]) -> BatchSpec:
    """``spec`` for process ``rank`` with its ``(batch size, oversampling)`` share."""
    return replace(spec, rank=rank, batch_size=share[0], oversample=share[1])


def rank_devices(device: str, gpus: int, cuda_count: int) -> tuple[str, list[str]]:
    """The backend and the device of each rank for ``--device`` and ``--gpus``."""
    name = (device or "auto").lower()
    if gpus < 1:
        raise DeviceError(f"--gpus must be 1 or more, got {gpus}")
    if name == "auto":
        name = "cuda" if cuda_count else "cpu"
        if name == "cpu" and gpus > 1:
            raise DeviceError(
                f"--gpus {gpus}: no CUDA device is visible here; use a machine with "
                f"{gpus} GPUs, or --device cpu to run {gpus} CPU processes (for testing)"
            )
    if name == "cpu":
        return "gloo", ["cpu"] * gpus
    if name != "cuda":
        raise DeviceError(
            f"--gpus {gpus} with --device {device!r}: use --device cuda (GPUs 0..{gpus - 1}, "
            "choose them with CUDA_VISIBLE_DEVICES) or --device cpu"
        )
    if gpus > cuda_count:
        raise DeviceError(
            f"--gpus {gpus}: only {cuda_count} CUDA device(s) are visible here; use "
            f"--gpus {max(cuda_count, 1)} or fewer"
        )
    return "nccl", [f"cuda:{i}" for i in range(gpus)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the ranks' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _Job:
    """What every rank needs (picklable: it travels to spawned processes)."""

    plans: dict
    splits: dict
    preprocessed: Path
    out: Path
    settings: object  # TrainSettings
    resume: bool
    previous: Path | None
    backend: str
    devices: tuple[str, ...]
    port: int
    timeout_s: float
    threads: int | None
    checkpoint_seconds: float | None

    @property
    def world(self) -> int:
        return len(self.devices)


def train_distributed(
    plans: Plans | Mapping,
    splits: dict,
    preprocessed: Path,
    out: Path,
    settings,
    gpus: int,
    *,
    resume: bool = False,
    previous: Path | None = None,
    on_iteration: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    stop: StopPolicy | None = None,
    threads: int | None = None,
    timeout_s: float = 600.0,
) -> dict:
    """:func:`medseg.training.loop.train` on ``gpus`` processes of this node.

    ``settings.device``: ``cuda``/``auto`` (one GPU per process, nccl) or ``cpu`` (gloo
    processes, for testing). ``on_iteration``/``on_epoch`` run here with rank 0's
    (process-averaged) numbers; ``stop.requested`` is watched here and passed on, its
    ``checkpoint_seconds`` apply in rank 0. ``threads``: torch threads per process (CPU
    default: the cores shared out). ``timeout_s``: the longest a collective may wait
    for a silent rank. Returns the last epoch's record; raises the first failing rank's
    error, or :class:`TrainingStopped`.
    """
    plans = Plans.of(plans)
    backend, devices = rank_devices(settings.device, gpus, torch.cuda.device_count())
    rank_batches(plans.configuration(settings.configuration).batch_size, gpus)  # fail early
    job = _Job(
        plans=dict(plans.raw),
        splits=splits,
        preprocessed=Path(preprocessed),
        out=Path(out),
        settings=settings,
        resume=resume,
        previous=None if previous is None else Path(previous),
        backend=backend,
        devices=tuple(devices),
        port=free_port(),
        timeout_s=timeout_s,
        threads=threads,
        checkpoint_seconds=None if stop is None else stop.checkpoint_seconds,
    )
    ctx = torch.multiprocessing.get_context("spawn")
    messages, stop_all = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_rank_main, args=(r, job, messages, stop_all)) for r in range(gpus)]
    for p in procs:
        p.start()
    try:
        outcome = _watch(procs, messages, stop_all, stop, on_iteration, on_epoch)
    finally:
        _end(procs)
    return _result(outcome, job)


def _watch(procs, messages, stop_all, stop, on_iteration, on_epoch) -> dict:
    """Relay rank 0's callbacks and the stop request until all ranks ended or one failed."""
    outcome = {"record": None, "cursor": None, "failures": [], "codes": {}}
    failed_at = None
    while True:
        codes = [p.exitcode for p in procs]  # before draining: an ended rank's words are in
        _drain(messages, outcome, on_iteration, on_epoch)
        if stop is not None and not stop_all.is_set() and stop.requested():
            stop_all.set()
        if failed_at is None and (outcome["failures"] or any(c not in (None, 0) for c in codes)):
            failed_at = time.monotonic()
        done = all(c is not None for c in codes)
        late = failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS
        if done or late:
            outcome["codes"] = dict(enumerate(codes))
            return outcome


def _drain(messages, outcome: dict, on_iteration, on_epoch) -> None:
    """Handle the messages that came within 0.1 s, and all that are waiting."""
    try:
        message = messages.get(timeout=0.1)
        while True:
            _dispatch(message, outcome, on_iteration, on_epoch)
            message = messages.get_nowait()
    except queue_module.Empty:
        return


def _dispatch(message: tuple, outcome: dict, on_iteration, on_epoch) -> None:
    kind, rank, *rest = message
    if kind == "iteration" and on_iteration:
        on_iteration(*rest)
    elif kind == "epoch" and on_epoch:
        on_epoch(rest[0])
    elif kind == "done" and rank == 0:
        outcome["record"] = rest[0]
    elif kind == "stopped" and rank == 0:
        outcome["cursor"] = rest[0]
    elif kind == "failed":
        outcome["failures"].append((rank, *rest))


def _end(procs) -> None:
    """Ask the ranks still running to end, then make them."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _result(outcome: dict, job: _Job) -> dict:
    failures = sorted(outcome["failures"], key=lambda f: (f[1] == "peer", f[1] == "dist"))
    if failures:
        rank, _, name, text, trace = failures[0]
        log.error("training process %d of %d failed:\n%s", rank, job.world, trace)
        raise _rebuild(name, text, rank, job.world)
    bad = {r: c for r, c in outcome["codes"].items() if c != 0}
    if bad:
        rank, code = min(bad.items())
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise RankFailed(
            f"{job.out}: training process {rank} of {job.world} ended ({how}) without an "
            "error message, e.g. killed for lack of memory; the others were stopped. "
            "Check the memory, then run the same command with --resume"
        )
    if outcome["cursor"] is not None:
        raise TrainingStopped(job.out, Cursor.from_json(outcome["cursor"]))
    return outcome["record"] or {}


def _rebuild(name: str, text: str, rank: int, world: int) -> Exception:
    """A rank's error as raised there when it is a medseg error, else :class:`RankFailed`."""
    import importlib

    module, _, qualname = name.rpartition(".")
    if module.startswith("medseg."):
        cls = getattr(importlib.import_module(module), qualname, None)
        if isinstance(cls, type) and issubclass(cls, MedsegError):
            try:
                return cls(text)
            except TypeError:
                pass
    return RankFailed(
        f"training process {rank} of {world} failed ({name.rpartition('.')[2]}: {text}); "
        "the others were stopped"
    )


def _rank_main(rank: int, job: _Job, messages, stop_all) -> None:
    """One rank: train, and say how it ended on ``messages`` (exit code 1 on failure)."""
    import sys

    flag = threading.Event()
    for name in ("SIGTERM", "SIGUSR1"):
        signal.signal(getattr(signal, name), lambda *_: flag.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the launcher ends the ranks
    parent = os.getppid()
    requested = lambda: flag.is_set() or stop_all.is_set() or os.getppid() != parent  # noqa: E731
    try:
        record = _train_rank(rank, job, messages, requested)
        messages.put(("done", rank, record))
    except TrainingStopped as stopped:
        messages.put(("stopped", rank, stopped.cursor.to_json()))
    except BaseException as error:  # noqa: BLE001 - reported to the launcher
        kind = "peer" if isinstance(error, _PeerFailed) else "error"
        if isinstance(error, torch.distributed.DistError):
            kind = "dist"
        name = f"{type(error).__module__}.{type(error).__qualname__}"
        messages.put(("failed", rank, kind, name, str(error), traceback.format_exc()))
        sys.exit(1)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train_rank(rank: int, job: _Job, messages, requested: Callable[[], bool]) -> dict:
    from medseg.training.loop import _build_run, _fit

    device = torch.device(job.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = job.threads or (
        max(1, (os.cpu_count() or 1) // job.world) if device.type == "cpu" else None
    )
    if threads:
        torch.set_num_threads(threads)
    torch.distributed.init_process_group(
        job.backend,
        init_method=f"tcp://127.0.0.1:{job.port}",
        rank=rank,
        world_size=job.world,
        timeout=timedelta(seconds=job.timeout_s),
    )
    settings = replace(job.settings, device=str(device))
    run = _build_run(Plans.of(job.plans), job.splits, job.preprocessed, settings, job.previous)
    share = rank_batches(run.config.batch_size, job.world)[rank]
    run.train_spec = rank_spec(run.train_spec, rank, share)
    run.val_spec = rank_spec(run.val_spec, rank, share)
    run.loss, _ = build_distributed_loss(run.config, ignore=run.ignore)
    run.ddp = data_parallel(run.model, run.n_weighted, device)
    run.reduce = lambda t: _sum(t, device)
    run.is_writer = rank == 0
    folder = FoldDir(job.out)
    if rank == 0:
        job.out.mkdir(parents=True, exist_ok=True)
    begin = _ordered_start(run, folder, job.resume, rank, device)
    agreed = lambda: _any(requested(), device)  # noqa: E731
    stop = StopPolicy(agreed, job.checkpoint_seconds if rank == 0 else None)
    on_iteration = on_epoch = None
    if rank == 0:
        on_iteration = lambda e, i, loss: messages.put(("iteration", 0, e, i, loss))  # noqa: E731
        on_epoch = lambda record: messages.put(("epoch", 0, record))  # noqa: E731
    return _fit(run, folder, begin, on_iteration, on_epoch, stop)


class _Weighted(torch.nn.Module):
    """The network's outputs that the loss weighs (the coarsest has weight 0)."""

    def __init__(self, net: torch.nn.Module, n_weighted: int):
        super().__init__()
        self.net, self.n_weighted = net, n_weighted

    def forward(self, x: torch.Tensor):
        return self.net(x)[: self.n_weighted]


def data_parallel(model: torch.nn.Module, n_weighted: int, device: torch.device):
    """``model`` in DistributedDataParallel, returning its first ``n_weighted`` outputs:
    the head of the others gets no gradient, which DDP is told to expect."""
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        _Weighted(model, n_weighted), device_ids=ids, find_unused_parameters=True
    )


def _sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum over ranks of a CPU tensor (through ``device`` for nccl), on the CPU."""
    x = tensor.to(device, copy=True)
    torch.distributed.all_reduce(x)
    return x.cpu()


def _any(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (all ranks must call it)."""
    x = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
    return bool(x.item() > 0)


def _ordered_start(run, folder: FoldDir, resume: bool, rank: int, device) -> tuple:
    """:func:`start_point` in rank 0 first (which may set a stale checkpoint aside),
    then in the others, which read the same ``checkpoint_latest`` (or none)."""
    from medseg.training.run_state import start_point

    begin, error = None, None
    if rank == 0:
        try:
            begin = start_point(run, folder, resume)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
            error = e
    if _any(error is not None, device):
        if error is not None:
            raise error
        raise _PeerFailed("rank 0 could not start the run")
    return begin if rank == 0 else start_point(run, folder, resume)
