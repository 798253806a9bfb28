"""A throwaway private Orthanc PACS on this machine, for testing medseg's DICOM node.

Started by the ``orthanc`` fixture of ``tests/orthanc_fixture.py`` (once per test
module) and by people from the command line (this file run as a script)::

    python tests/orthanc_server.py up DIR     # start; prints the URLs, AET and ports
    python tests/orthanc_server.py down DIR   # stop what `up` started

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make orthanc-tools``); root is
not needed. Nothing in /etc/orthanc is read: Orthanc gets the one configuration file
``DIR/orthanc.json`` (mode 0600) with

- free localhost ports for HTTP and DICOM, found at start (a system Orthanc that
  Debian's package may have started on 4242/8042 is never touched);
- its own ``storage/`` and ``index/`` (SQLite) folders below DIR;
- HTTP for localhost only (``RemoteAccessAllowed`` false) with basic authentication:
  one user with a fresh random password, kept in that file only. Orthanc's DICOM
  server listens on every interface (no bind address option in 1.10): C-ECHO and
  C-STORE are open to any AE title, but a Lua ``ReceivedInstanceFilter`` drops
  instances that come by DICOM from another host; C-FIND/C-GET/C-MOVE need a
  registered modality, its host checked;
- the DICOMweb plugin from where Debian installs it, at ``/dicom-web/``;
- an AE title of our choice and a ``DicomModalities`` table (more can be added while
  it runs: ``Orthanc.add_modality``, REST ``PUT /modalities/NAME``).

Orthanc runs in its own session, its output in ``DIR/orthanc.log``, and is stopped by
the PID in ``DIR/pid.json`` (checked first to still be Orthanc on this DIR): SIGTERM,
then SIGKILL. The helpers below speak Orthanc's REST API with the standard library
only, so this script runs with any Python 3.10+.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services import alive, free_ports, log_tails, terminate

#: Where Debian's orthanc-dicomweb puts the plugin (first match wins).
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
DICOMWEB_ROOT = "/dicom-web/"
USER = "medseg"
#: Orthanc 1.10 has no DICOM bind address nor connection filter: refuse instances that
#: come by DICOM from another host (C-FIND etc. need a known modality, host checked).
LOCALHOST_ONLY_LUA = """\
function ReceivedInstanceFilter(dicom, origin, info)
  if origin['RequestOrigin'] ~= 'DicomProtocol' then return true end
  local ip = origin['RemoteIp'] or ''
  return string.sub(ip, 1, 4) == '127.' or ip == '::1' or string.sub(ip, 1, 11) == '::ffff:127.'
end
"""
_SBIN = ("/usr/sbin", "/sbin")


class OrthancError(RuntimeError):
    """The test PACS could not be started or answered an error (the message says why)."""


def orthanc_binary() -> str | None:
    """Absolute path of the Orthanc server (PATH, then /usr/sbin and /sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which("Orthanc", path=path)


def dicomweb_plugin() -> str | None:
    """Absolute path of the DICOMweb plugin's shared library, or None."""
    for pattern in DICOMWEB_PLUGINS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def unavailable() -> str | None:
    """Why no test PACS can run here, or None if it can be tried."""
    missing = [
        name
        for name, path in (("Orthanc", orthanc_binary()), ("DICOMweb", dicomweb_plugin()))
        if path is None
    ]
    if missing:
        return (
            f"Orthanc not installed (missing: {', '.join(missing)}): "
            "run `make orthanc-tools` (Debian's orthanc and orthanc-dicomweb)"
        )
    return None


def modality(aet: str, host: str, port: int) -> dict:
    """A ``DicomModalities`` entry (the form of ``PUT /modalities/NAME`` too)."""
    return {"AET": aet, "Host": host, "Port": int(port)}


def orthanc_config(
    root: Path, ports: tuple[int, int], aet: str, password: str, modalities: dict
) -> dict:
    """The whole configuration of a test Orthanc in ``root`` (HTTP, DICOM ports)."""
    return {
        "Name": f"medseg-test-{aet}",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": ports[0],
        "DicomPort": ports[1],
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "HttpDescribeErrors": True,
        "HttpThreadsCount": 8,
        "DicomThreadsCount": 2,
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": modalities,
        "DicomModalitiesInDatabase": False,
        "LuaScripts": [str(root / "localhost_only.lua")],
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": True},
    }


@dataclass(frozen=True)
class Orthanc:
    """A running test Orthanc: its folder, ports, AE title, credentials and PID."""

    root: Path
    http_port: int
    dicom_port: int
    aet: str
    password: str
    pid: int

    @property
    def url(self) -> str:
        """Base URL of the REST API (no trailing slash)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb API (QIDO-RS, WADO-RS, STOW-RS)."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        """(user, password) for HTTP basic authentication."""
        return USER, self.password

    @classmethod
    def attach(cls, root: Path) -> Orthanc:
        """The Orthanc that ``start`` recorded in ``root``."""
        root = Path(root).resolve()
        config = json.loads((root / "orthanc.json").read_text())
        pid = json.loads((root / "pid.json").read_text())["pid"]
        ports = config["HttpPort"], config["DicomPort"]
        password = config["RegisteredUsers"][USER]
        return cls(root, *ports, config["DicomAet"], password, pid)

    def request(
        self, method: str, path: str, body: bytes | dict | list | None = None, timeout=60
    ) -> bytes:
        """One REST call; a dict or list body goes as JSON, bytes as application/dicom."""
        token = base64.b64encode(":".join(self.auth).encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        if isinstance(body, (dict, list)):
            body, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/dicom"
        req = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {error.code} {detail}") from None

    def get(self, path: str):
        """GET ``path`` and decode its JSON answer."""
        return json.loads(self.request("GET", path))

    def upload(self, folder: Path) -> list[dict]:
        """POST every file below ``folder`` to ``/instances``; Orthanc's answers
        (``ID``, ``ParentSeries``, ``ParentStudy``, ``Status``), in file name order."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        return [json.loads(self.request("POST", "/instances", p.read_bytes())) for p in files]

    def studies(self) -> list[dict]:
        """Every study, expanded (``ID``, ``MainDicomTags``, ``Series``, ...)."""
        return self.get("/studies?expand")

    def series(self) -> list[dict]:
        """Every series, expanded (``ID``, ``MainDicomTags``, ``Instances``, ...)."""
        return self.get("/series?expand")

    def instances(self, series_id: str | None = None) -> list[dict]:
        """Every instance, or those of one series (Orthanc ID), expanded."""
        return self.get(f"/series/{series_id}/instances" if series_id else "/instances?expand")

    def tags(self, instance_id: str) -> dict:
        """An instance's tags as keyword -> value (Orthanc's simplified tags)."""
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def lookup(self, uid: str, level: str = "Series") -> str | None:
        """The Orthanc ID of the study, series or instance with this DICOM UID."""
        found = json.loads(self.request("POST", "/tools/lookup", uid.encode()))
        return next((f["ID"] for f in found if f["Type"] == level), None)

    def modalities(self) -> dict:
        """The DICOM modalities Orthanc knows: name -> entry."""
        return self.get("/modalities?expand")

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DICOM destination while Orthanc runs."""
        self.request("PUT", f"/modalities/{name}", modality(aet, host, port))

    def send(self, resource_id: str, name: str, timeout: float = 120) -> dict:
        """Ask Orthanc to C-STORE a study, series or instance (Orthanc ID) to the
        modality ``name``, synchronously; Orthanc's summary of the job."""
        body = {"Resources": [resource_id], "Synchronous": True}
        return json.loads(self.request("POST", f"/modalities/{name}/store", body, timeout))

    def answers(self) -> bool:
        """True when ``GET /system`` answers."""
        try:
            self.request("GET", "/system", timeout=5)
        except (OSError, OrthancError):
            return False
        return True


def _alive(pid: int, root: Path) -> bool:
    """pid is still an Orthanc started on this folder (its command line names root)."""
    return alive(pid, f"{root}/orthanc.json")


def _log_tail(root: Path, lines: int = 20) -> str:
    return log_tails([root / "orthanc.log"], lines)


def _write_config(root: Path, aet: str, modalities: dict) -> dict:
    for sub in ("storage", "index"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "localhost_only.lua").write_text(LOCALHOST_ONLY_LUA)
    http, dicom = free_ports(2)
    config = orthanc_config(root, (http, dicom), aet, secrets.token_urlsafe(16), modalities)
    path = root / "orthanc.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2))
    return config


def start(
    root: Path, aet: str = "ORTHANC", modalities: dict | None = None, timeout: float = 60
) -> Orthanc:
    """Start a private Orthanc in ``root`` (created; an earlier one there must be
    stopped) with AE title ``aet`` and ``modalities`` (name -> ``modality(...)``), and
    wait until its REST API answers."""
    reason = unavailable()
    if reason:
        raise OrthancError(reason)
    root = Path(root).resolve()
    if (root / "pid.json").exists():
        raise OrthancError(f"a test Orthanc is recorded in {root}: stop it first (down)")
    root.mkdir(parents=True, exist_ok=True)
    config = _write_config(root, aet, dict(modalities or {}))
    with open(root / "orthanc.log", "ab") as log:
        proc = subprocess.Popen(
            [orthanc_binary(), str(root / "orthanc.json")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,  # outlives `up`, not hit by a Ctrl-C
        )
    (root / "pid.json").write_text(json.dumps({"pid": proc.pid}))
    server = Orthanc(
        root,
        config["HttpPort"],
        config["DicomPort"],
        aet,
        config["RegisteredUsers"][USER],
        proc.pid,
    )
    try:
        _wait_until_ready(server, proc, timeout)
    except BaseException:
        stop(root)
        raise
    return server


def _wait_until_ready(server: Orthanc, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.answers():
        if proc.poll() is not None:
            raise OrthancError(f"Orthanc exited at start\n{_log_tail(server.root)}")
        if time.monotonic() > deadline:
            raise OrthancError(
                f"Orthanc gave no answer in {timeout:.0f} s\n{_log_tail(server.root)}"
            )
        time.sleep(0.2)


def stop(root: Path, timeout: float = 20) -> list[str]:
    """Stop the Orthanc recorded in ``root``: SIGTERM by its PID, SIGKILL after
    ``timeout`` s. Returns what was stopped."""
    root = Path(root).resolve()
    record = root / "pid.json"
    if not record.exists():
        return []
    pid = json.loads(record.read_text())["pid"]
    stopped = []
    if terminate(pid, f"{root}/orthanc.json", timeout):
        stopped.append(f"Orthanc ({pid})")
    record.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir", type=Path, help="the PACS's folder (created by up)")
    parser.add_argument("--aet", default="ORTHANC", help="Orthanc's AE title (up)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "up":
        try:
            server = start(root, aet=args.aet)
        except OrthancError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"Orthanc up in {root} (PID {server.pid}), AE title {server.aet}")
        print(f"  REST:     {server.url}  (user {USER}, password in {root}/orthanc.json)")
        print(f"  DICOMweb: {server.dicomweb_url}")
        print(f"  DICOM:    127.0.0.1:{server.dicom_port}")
        print(f"stop it with: python {sys.argv[0]} down {root}")
    else:
        stopped = stop(root)
        print(f"stopped {', '.join(stopped)}" if stopped else f"no test Orthanc in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
