"""DICOMweb for ``medseg serve``: credentials files, and thin calls to dicomweb-client.

A credentials file is a small YAML mapping, either ``username`` and ``password``
(HTTP basic authentication) or ``token`` (a bearer token). It is refused unless only
its owner may read it (mode 0600 or stricter): the error names the file and the
``chmod`` to run. Its contents never appear in an error or a log line; nothing here
takes a credential from the command line or the environment.

The calls below (QIDO-RS series and instance searches, WADO-RS retrieve of one
instance, STOW-RS of one file) never retry by themselves: the poller and the
delivery thread own the back-off, so a server that is down costs one quick failure.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from medseg.core.errors import MedsegError

#: QIDO-RS page size: a poll asks again with a growing offset until a page is short.
PAGE = 500
#: (connect, read) timeouts in seconds of every HTTP request.
TIMEOUT = (10.0, 120.0)

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
RELATED_INSTANCES = "00201209"


class CredentialsError(MedsegError, PermissionError):
    """A credentials file that cannot be used (readable by others, missing, malformed)."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """HTTP basic (``username``, ``password``) or bearer (``token``) credentials."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never show a secret, even by accident
        kind = "token" if self.token else "basic"
        return f"Credentials({kind})"


def check_private(path: Path) -> None:
    """CredentialsError unless ``path`` is a file only its owner can read or write."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CredentialsError(
            f"{path}: credentials file not found; create it (username/password or token) "
            f"and run 'chmod 600 {path}'"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsError(f"{path}: credentials must be a regular file")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise CredentialsError(
            f"{path}: credentials file is readable or writable by group or others (mode "
            f"{mode:04o}); refused. Run 'chmod 600 {path}' and start again"
        )


def read_credentials(path: Path) -> Credentials:
    """The credentials in ``path``, after :func:`check_private`. The file is YAML:
    ``username: ...`` and ``password: ...``, or ``token: ...``."""
    import yaml

    path = Path(path)
    check_private(path)
    expected = "a YAML mapping with 'username' and 'password', or with 'token'"
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):  # the parser's message may quote a secret
        raise CredentialsError(f"{path}: not {expected}; fix the file") from None
    if not isinstance(document, dict):
        raise CredentialsError(f"{path}: not {expected}; fix the file")
    values = {k: document.get(k) for k in ("username", "password", "token")}
    if any(v is not None and not isinstance(v, str) for v in values.values()):
        raise CredentialsError(f"{path}: values must be strings (quote them); fix the file")
    basic = values["username"] is not None and values["password"] is not None
    if basic == (values["token"] is not None):
        raise CredentialsError(f"{path}: needs {expected} (exactly one of the two); fix the file")
    return Credentials(**values)


def make_client(url: str, credentials: Path | None):
    """A ``DICOMwebClient`` for ``url`` (credentials read now; None: no authentication)
    that never retries by itself."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if credentials is not None:
        found = read_credentials(credentials)
        if found.token:
            session.headers["Authorization"] = f"Bearer {found.token}"
        else:
            session.auth = (found.username, found.password)
    client = DICOMwebClient(url, session=session, timeout=TIMEOUT)
    client.set_http_retry_params(retry=False)
    return client


@dataclass(frozen=True)
class RemoteSeries:
    """One QIDO-RS series match: its UIDs and, if the server says, its instance count."""

    study: str
    series: str
    instances: int | None


def _value(item: dict, tag: str):
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def remote_series(item: dict) -> RemoteSeries | None:
    """A QIDO-RS series answer (DICOM JSON) as a RemoteSeries; None without both UIDs."""
    study, series = _value(item, STUDY_UID), _value(item, SERIES_UID)
    if not study or not series:
        return None
    count = _value(item, RELATED_INSTANCES)
    return RemoteSeries(str(study), str(series), None if count is None else int(count))


def search_series(client, filters: dict[str, str]) -> list[RemoteSeries]:
    """Every series matching ``filters`` (QIDO-RS keys), page by page."""
    found, offset = [], 0
    while True:
        page = client.search_for_series(
            search_filters=filters, fields=["NumberOfSeriesRelatedInstances"],
            limit=PAGE, offset=offset,
        )  # fmt: skip
        found.extend(s for s in map(remote_series, page) if s is not None)
        if len(page) < PAGE:
            return found
        offset += len(page)


def instance_uids(client, study: str, series: str) -> list[str]:
    """The SOPInstanceUIDs of one series on the server (QIDO-RS), sorted."""
    uids, offset = set(), 0
    while True:
        page = client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series,
            fields=["SOPInstanceUID"], limit=PAGE, offset=offset,
        )  # fmt: skip
        uids.update(str(v) for v in (_value(item, SOP_UID) for item in page) if v)
        if len(page) < PAGE:
            return sorted(uids)
        offset += len(page)


def retrieve(client, study: str, series: str, sop: str):
    """One instance by WADO-RS: ``(dataset, encode)``, ``encode()`` giving its Part 10
    bytes (the dataset as the server sent it, in its transfer syntax)."""
    import pydicom

    ds = client.retrieve_instance(study, series, sop)

    def encode() -> bytes:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    return ds, encode


class StowError(MedsegError, OSError):
    """A STOW-RS server answered but did not store the instance."""


def stow(client, path: Path) -> None:
    """STOW-RS the DICOM file ``path``; StowError (or the HTTP error) if not stored."""
    import pydicom

    ds = pydicom.dcmread(path)
    answer = client.store_instances([ds])
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reason = failed[0].get("FailureReason")
        raise StowError(f"STOW-RS of {path.name} refused (FailureReason {reason})")
