"""Delivering results: C-STORE to a DICOM node, STOW-RS to a DICOMweb server, or a
durable copy into a folder.

Each delivery is one file to one destination, recorded in the queue. It is marked
delivered only after the destination confirmed it (C-STORE success or warning,
STOW-RS success without a failed instance) or the copy was synced; a failed try
waits ``retry.backoff_seconds`` and tries again, up to ``retry.max_attempts``.
A crash between the send and its record sends the same file again: same
SOPInstanceUID, so the receiver keeps one instance.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.serve.config import Destination, ServeConfig
from medseg.serve.spool import copy_durable
from medseg.serve.state import delivered, delivery_failed, due_deliveries

log = logging.getLogger(__name__)

#: C-STORE statuses that mean stored: success, and the warnings of PS3.4 B.2.3.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(MedsegError, OSError):
    """A result could not be delivered now (the destination is down or refused it)."""


def send_cstore(dest: Destination, path: Path, calling_ae: str, timeout: float = 30) -> None:
    """C-STORE the DICOM file ``path`` to ``dest``; DeliveryError saying why if not stored."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    own = ds.file_meta.TransferSyntaxUID
    syntaxes = list(dict.fromkeys([own, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"{where}: no association (down, or refused our AE {calling_ae})")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = status.get("Status") if status else None
    if code not in STORED:
        what = "no answer" if code is None else f"status 0x{code:04X}"
        raise DeliveryError(f"{where}: C-STORE of {path.name} failed ({what})")


def copy_to_folder(dest: Destination, path: Path, series: str, run: int) -> None:
    """Copy ``path`` to ``<folder>/<SeriesUID>/<run>/<name>`` (atomic, synced)."""
    copy_durable(path, dest.folder / series / str(int(run)) / path.name)


def _log_failure(row, path: Path, state: str, error: Exception) -> None:
    """First failure: a warning; later tries: info (the status shows them); giving up: error."""
    then = "will retry" if state == "pending" else "gave up"
    level = logging.ERROR if state == "failed" else logging.INFO
    if row["attempts"] == 0 and state == "pending":
        level = logging.WARNING
    what = (row["series"], path.name, row["destination"], then, error)
    log.log(level, "series %s: %s not delivered to %s (%s): %s", *what)


def send_stow(dest: Destination, path: Path, clients: dict) -> None:
    """STOW-RS ``path`` to ``dest`` with its client in ``clients`` (made once, its
    credentials read then); DeliveryError saying why if not stored."""
    from medseg.serve.dicomweb import make_client, stow

    if dest.name not in clients:
        clients[dest.name] = make_client(dest.url, dest.credentials)
    try:
        stow(clients[dest.name], path)
    except OSError as e:  # requests' errors and StowError are OSErrors
        raise DeliveryError(f"{dest.name} ({dest.url}): {type(e).__name__}: {e}") from None


def _deliver(config: ServeConfig, row, clients: dict) -> None:
    dest = config.destination(row["destination"])
    path = Path(row["file"])
    if dest is None:
        raise DeliveryError(f"destination {row['destination']!r} is no longer configured")
    if dest.is_folder:
        copy_to_folder(dest, path, row["series"], row["run"])
    elif dest.is_dicomweb:
        send_stow(dest, path, clients)
    else:
        send_cstore(dest, path, config.ae_title)


def deliver_once(config: ServeConfig, conn, clients: dict | None = None) -> int:
    """Try every delivery that is due; returns how many were tried. ``clients``:
    destination name -> DICOMweb client, kept by the caller (made when missing)."""
    clients = {} if clients is None else clients
    rows = due_deliveries(conn, time.time())
    for row in rows:
        path = Path(row["file"])
        try:
            _deliver(config, row, clients)
        except Exception as e:  # any failure is retried; the thread goes on
            state = delivery_failed(conn, row["id"], str(e), config.retry, time.time())
            _log_failure(row, path, state, e)
            continue
        delivered(conn, row["id"], time.time())
        log.info("series %s: %s delivered to %s", row["series"], path.name, row["destination"])
    return len(rows)
