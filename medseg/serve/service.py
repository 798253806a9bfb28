"""The service: a Store SCP, a scheduler, one prediction worker, one delivery thread,
and one poller thread per DICOMweb source.

:class:`Service` only holds resources (the spool lock, connections, DICOMweb clients,
threads); what each thread does is a function of :mod:`medseg.serve.worker`,
:mod:`medseg.serve.delivery` and :mod:`medseg.serve.poller`. Start: lock the spool
(one service per spool), open the queue, recover from a crash (temporary files
removed, instance files that were written but not recorded are recorded, series
left ``processing`` requeued), read every credentials file (refused unless private),
load every model, then listen and poll. Stop: the SCP stops accepting first, then the threads end
after their current step (a prediction under way is finished).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from medseg.core.errors import MedsegError
from medseg.serve.config import ServeConfig
from medseg.serve.delivery import deliver_once
from medseg.serve.dicomweb import make_client
from medseg.serve.poller import poll_once
from medseg.serve.receiver import Receiver, series_attributes
from medseg.serve.spool import Spool, stray_files
from medseg.serve.state import connect, init_schema, record_instance, recover
from medseg.serve.worker import Models, schedule_once, work_once

log = logging.getLogger(__name__)

#: Seconds between looks at the queue when a thread has nothing to do.
IDLE = 0.25


class ServeError(MedsegError, RuntimeError):
    """The service cannot start (its spool is in use, its port is taken...)."""


def lock_spool(spool: Spool):
    """Hold ``spool/serve.lock`` for this process's life (released by the OS on exit)."""
    handle = open(spool.lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ServeError(
            f"{spool.root}: another medseg serve uses this spool; stop it first, or give "
            "this one another spool"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def recover_spool(spool: Spool, conn, max_attempts: int) -> dict[str, int]:
    """Make the spool and the queue agree after a crash (see the module docstring)."""
    import pydicom

    instances, temps = stray_files(spool)
    for temp in temps:
        temp.unlink(missing_ok=True)
    known = {r["path"] for r in conn.execute("SELECT path FROM instances")}
    recorded = 0
    for path in instances:
        if str(path) in known:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study, series = path.parent.parent.name, path.parent.name
        record_instance(conn, path.stem, series, study, series_attributes(ds), path, time.time())
        recorded += 1
    counts = {"temporary files removed": len(temps), "instances recorded": recorded}
    counts.update(recover(conn, max_attempts, time.time()))
    return counts


class Service:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.spool = Spool(config.spool)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._local = threading.local()
        self._lock = None
        self.receiver = Receiver(config, self.spool, self.connection)

    def connection(self):
        """This thread's connection to the queue (SQLite connections are per thread)."""
        if not hasattr(self._local, "conn"):
            self._local.conn = connect(self.spool.database)
        return self._local.conn

    def start(self) -> None:
        self.spool.make()
        self._lock = lock_spool(self.spool)
        init_schema(self.connection())
        counts = recover_spool(self.spool, self.connection(), self.config.retry.max_attempts)
        if any(counts.values()):
            log.info("recovered: %s", ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        sources = {s.name: make_client(s.url, s.credentials) for s in self.config.dicomweb_sources}
        stow = {
            d.name: make_client(d.url, d.credentials)
            for d in self.config.destinations
            if d.is_dicomweb
        }
        models = Models(self.config)
        try:
            self.receiver.start()
        except OSError as e:
            raise ServeError(
                f"cannot listen on {self.config.host}:{self.config.port} ({e.strerror}); "
                "choose another port, or stop what uses it"
            ) from None
        loops = {
            "scheduler": lambda conn: schedule_once(self.config, conn),
            "worker": lambda conn: work_once(models, self.config, self.spool, conn),
            "delivery": lambda conn: deliver_once(self.config, conn, stow),
        }
        for name, step in loops.items():
            self._thread(name, self._loop, name, step)
        for source in self.config.dicomweb_sources:
            self._thread(f"poll-{source.name}", self._poll_loop, source, sources[source.name])

    def _thread(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name)
        thread.start()
        self.threads.append(thread)

    def _poll_loop(self, source, client) -> None:
        """Poll ``source`` every ``poll_seconds`` (a failed poll is recorded and retried)."""
        conn = self.connection()
        log.info("polling %s every %g s", source.name, source.poll_seconds)
        while not self.stopping.is_set():
            try:
                poll_once(source, client, self.spool, conn, self.stopping.is_set)
            except Exception:  # e.g. the queue is busy: logged, tried at the next poll
                log.exception("poll-%s: unexpected error", source.name)
            self.stopping.wait(source.poll_seconds)

    def _loop(self, name: str, step) -> None:
        conn = self.connection()
        while not self.stopping.is_set():
            try:
                busy = step(conn)
            except Exception:  # a step that fails is logged and tried again later
                log.exception("%s: unexpected error", name)
                busy = False
            if not busy:
                self.stopping.wait(IDLE)

    def stop(self) -> None:
        """Stop receiving, then let each thread finish its current step."""
        self.receiver.stop()
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        log.info("stopped")
