"""Receiving: a pynetdicom Store SCP that spools each instance before it answers.

For every C-STORE: the UIDs are checked against the DICOM UID grammar (they alone
name the file), the instance is written durably to
``spool/incoming/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` exactly as it was
sent (never decoded and re-encoded), then recorded in the queue, and only then is
success answered (:func:`accept_instance`, which the DICOMweb poller uses too).
Nothing here waits for a prediction. Associations from calling AE titles not in
``allowed_callers``, or calling another AE title than ours, are rejected. Accepted:
the storage SOP classes pynetdicom knows (MR, CT, enhanced MR/CT, ...), in the
uncompressed transfer syntaxes (a sender transcodes compressed images).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medseg.serve.config import SeriesAttributes, ServeConfig
from medseg.serve.spool import Spool, SpoolError, write_durable
from medseg.serve.state import record_instance

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110


def series_attributes(ds) -> SeriesAttributes:
    """What routing needs from an instance's header (no patient data)."""
    image_type = ds.get("ImageType") or ()
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return SeriesAttributes(
        str(ds.get("Modality") or ""),
        str(ds.get("BodyPartExamined") or ""),
        str(ds.get("SeriesDescription") or ""),
        tuple(str(v) for v in image_type),
    )


def _uids(event) -> tuple[str, str, str]:
    """``(study, series, sop)`` of a C-STORE, checked; SpoolError if unusable."""
    ds = event.dataset
    uids = tuple(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID"))
    sop = str(ds.get("SOPInstanceUID", ""))
    if sop != str(event.request.AffectedSOPInstanceUID):
        raise SpoolError("the dataset's SOPInstanceUID is not the request's AffectedSOPInstanceUID")
    return uids[0], uids[1], sop


def accept_instance(
    spool: Spool, conn, uids: tuple[str, str, str], dataset, encode: Callable[[], bytes]
) -> str:
    """Spool one instance durably, then record it: the one path every instance takes,
    whether it came by C-STORE or by DICOMweb. ``uids`` is ``(study, series, sop)``;
    ``encode()`` gives the Part 10 bytes to keep (called only for a new instance).
    Returns :func:`~medseg.serve.state.record_instance`'s answer (``duplicate``,
    ``new``, ``new run``); raises SpoolError for a UID that cannot name a file, OSError
    when the spool cannot be written."""
    study, series, sop = uids
    path = spool.instance(study, series, sop)
    if conn.execute("SELECT 1 FROM instances WHERE sop = ?", (sop,)).fetchone():
        log.debug("duplicate instance %s ignored", sop)
        return "duplicate"
    write_durable(path, encode())
    what = record_instance(conn, sop, series, study, series_attributes(dataset), path, time.time())
    if what == "new run":
        log.info("series %s: new instances after its last run; it will be predicted again", series)
    return what


def store(event, spool: Spool, conn) -> int:
    """Handle one C-STORE: spool, record, answer. Returns the DIMSE status."""
    caller = event.assoc.requestor.ae_title
    try:
        uids = _uids(event)
        spool.instance(*uids)
    except SpoolError as e:
        log.warning("refused an instance from %s: %s", caller, e)
        return CANNOT_UNDERSTAND
    except Exception as e:  # a dataset pydicom cannot parse
        log.warning(
            "refused an instance from %s: unreadable dataset (%s)", caller, type(e).__name__
        )
        return CANNOT_UNDERSTAND
    try:
        encode = lambda: event.encoded_dataset(include_meta=True)  # noqa: E731
        accept_instance(spool, conn, uids, event.dataset, encode)
    except OSError as e:
        log.error("could not spool instance %s of series %s: %s", uids[2], uids[1], e)
        return OUT_OF_RESOURCES
    return SUCCESS


class Receiver:
    """The Store SCP (a resource: a listening socket and its threads)."""

    def __init__(self, config: ServeConfig, spool: Spool, connection):
        self.config, self.spool, self.connection = config, spool, connection
        self.server = None

    def start(self) -> None:
        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.config.allowed_callers)
        ae.require_called_aet = True
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        address = (self.config.host, self.config.port)
        self.server = ae.start_server(address, block=False, evt_handlers=handlers)
        log.info("listening as %s on %s:%d", self.config.ae_title, *address)

    def _on_store(self, event) -> int:
        try:
            return store(event, self.spool, self.connection())
        except Exception:  # never let one instance take the server down
            log.exception("failed to store an instance")
            return PROCESSING_FAILURE

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
