"""``medseg serve``: config, spool paths, the queue, and the node end to end with Orthanc.

The end-to-end tests run the service as a user does (``medseg serve CONFIG`` in a
subprocess) with a private Orthanc (tests/orthanc_fixture.py) as the PACS that sends
the real MR series and receives the results, and a pynetdicom SCP that starts late as
a second destination that is down at first.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from conftest import MEDSEG
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from services import free_ports

from medseg.serve.config import SeriesAttributes, ServeConfigError, match_route, parse_config
from medseg.serve.spool import Spool, SpoolError, valid_uid
from medseg.serve.state import (
    claim_next,
    complete_quiet,
    connect,
    finish,
    init_schema,
    record_instance,
    recover,
)
from medseg.serve.status import read_status

pytest_plugins = ["orthanc_fixture"]

STUDY1 = "mr_hippocampus_crop_study1"
STUDY2 = "mr_hippocampus_crop_study2"
CALLER = "MEDSEG_TEST"


def _config(tmp_path: Path, **changes) -> dict:
    (tmp_path / "model").mkdir(exist_ok=True)
    document = {
        "ae_title": "MEDSEG",
        "port": 11112,
        "allowed_callers": ["ORTHANC"],
        "spool": "spool",
        "models": {"mr": "model"},
        "routes": [{"model": "mr", "modality": "MR"}],
        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "h", "port": 4242}],
    }
    document.update(changes)
    return document


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"allowed_callers": []}, "allowed_callers: a list of at least one calling AE title"),
        ({"port": 70000}, "port: 70000 is greater than the maximum of 65535"),
        ({"ae_title": "A_TITLE_TOO_LONG_X"}, "ae_title: an AE title"),
        ({"routes": [{"model": "ct"}]}, "routes[0].model: 'ct' is not a key of models"),
        (
            {"routes": [{"model": "mr", "series_description": "("}]},
            "routes[0].series_description: not a regular expression",
        ),
        ({"destinations": [{"name": "x", "host": "h"}]}, "destinations[0]: a C-STORE destination"),
        ({"models": {"mr": "nowhere"}}, "models.mr: "),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts: 0 is less than the minimum of 1"),
        ({"colour": "blue"}, "Additional properties are not allowed ('colour' was unexpected)"),
    ],
)
def test_config_errors_name_the_key(tmp_path, changes, key):
    with pytest.raises(ServeConfigError) as e:
        parse_config(_config(tmp_path, **changes), tmp_path, "serve.yaml")
    assert key in str(e.value) and str(e.value).startswith("serve.yaml: ")


def test_missing_key_and_the_example_config_is_valid(tmp_path):
    document = _config(tmp_path)
    del document["spool"]
    with pytest.raises(ServeConfigError, match="spool: missing"):
        parse_config(document, tmp_path)
    from medseg.serve.config import EXAMPLE_CONFIG

    example = yaml.safe_load(EXAMPLE_CONFIG)
    (tmp_path / "models" / "hippocampus").mkdir(parents=True)
    config = parse_config(example, tmp_path)
    assert config.spool == tmp_path / "spool" and config.routes[0].image_type == (
        "ORIGINAL",
        "PRIMARY",
    )
    assert config.destination("archive").folder == tmp_path / "results"


def test_first_matching_route_wins(tmp_path):
    document = _config(tmp_path)
    document["routes"] = [
        {"name": "t1", "model": "mr", "modality": "MR", "series_description": "(?i)t1",
         "image_type": ["ORIGINAL", "PRIMARY"], "min_instances": 10},
        {"name": "brain", "model": "mr", "modality": ["MR", "CT"], "body_part": "brain"},
    ]  # fmt: skip
    routes = parse_config(document, tmp_path).routes
    t1 = SeriesAttributes("MR", "HEAD", "Ax T1 post", ("ORIGINAL", "PRIMARY", "AXIAL"))
    assert match_route(routes, t1, 20).name == "t1"
    assert match_route(routes, t1, 9) is None  # too few, and not BRAIN
    derived = SeriesAttributes("CT", "BRAIN", "Ax T1", ("DERIVED", "SECONDARY"))
    assert match_route(routes, derived, 20).name == "brain"
    assert match_route(routes, SeriesAttributes("US", "BRAIN"), 20) is None


# ---------------------------------------------------------------- spool paths and queue


@pytest.mark.parametrize(
    "uid",
    ["../../etc", "1.2/3", "1.2.3/../4", "", "1..2", ".1.2", "1.2.", "1.2.a", "1" * 65, "/1.2"],
)
def test_only_dicom_uids_name_spool_files(tmp_path, uid):
    spool = Spool(tmp_path / "spool")
    assert not valid_uid(uid)
    for parts in ((uid, "1.2", "1.3"), ("1.2", uid, "1.3"), ("1.2", "1.3", uid)):
        with pytest.raises(SpoolError, match="is not a DICOM UID"):
            spool.instance(*parts)
    with pytest.raises(SpoolError):
        spool.results(uid, 1)


def test_spool_path_is_made_of_uids_only(tmp_path):
    spool = Spool(tmp_path)
    assert valid_uid("1" * 64) and valid_uid("0") and valid_uid("1.2.840.10008.5.1.4")
    path = spool.instance("1.2", "1.2.3", "1.2.3.4")
    assert path == tmp_path / "incoming" / "1.2" / "1.2.3" / "1.2.3.4.dcm"


def test_queue_states_and_crash_recovery(tmp_path):
    conn = connect(tmp_path / "q.sqlite")
    init_schema(conn)
    mr = SeriesAttributes("MR")
    routes = parse_config(_config(tmp_path), tmp_path).routes
    for sop in ("1.1", "1.2", "1.2"):
        record_instance(conn, sop, "9.1", "8", mr, tmp_path / sop, now=100.0)
    record_instance(conn, "2.1", "9.2", "8", SeriesAttributes("OT"), tmp_path / "x", now=100.0)
    assert complete_quiet(conn, 100.5, 1.0, routes) == []  # not quiet yet
    assert sorted(complete_quiet(conn, 101.0, 1.0, routes)) == [
        ("9.1", "complete", "route0"),
        ("9.2", "ignored", None),
    ]
    series = claim_next(conn, 102.0)
    assert (series["uid"], series["instances"], series["attempts"]) == ("9.1", 2, 1)
    assert claim_next(conn, 102.0) is None
    assert recover(conn, max_attempts=3, now=103.0) == {"requeued": 1, "failed": 0}  # killed
    series = claim_next(conn, 104.0)
    assert series["attempts"] == 2
    finish(conn, "9.1", 1, [("pacs", "/r/a.seg.dcm"), ("pacs", "/r/a.seg.dcm")], 105.0)
    assert recover(conn, 3, 106.0) == {"requeued": 0, "failed": 0}  # done stays done
    rows = conn.execute("SELECT series, run, state FROM deliveries").fetchall()
    assert [tuple(r) for r in rows] == [("9.1", 1, "pending")]
    assert record_instance(conn, "1.1", "9.1", "8", mr, tmp_path, 107.0) == "duplicate"
    assert record_instance(conn, "1.3", "9.1", "8", mr, tmp_path, 107.0) == "new run"
    row = conn.execute("SELECT state, run, instances FROM series WHERE uid = '9.1'").fetchone()
    assert tuple(row) == ("receiving", 2, 3)


def test_folder_delivery_is_durable_and_a_missing_file_is_retried(tmp_path):
    from medseg.serve.delivery import deliver_once

    document = _config(tmp_path, destinations=[{"name": "archive", "folder": "out"}])
    document["retry"] = {"backoff_seconds": [60], "max_attempts": 2}
    config = parse_config(document, tmp_path)
    conn = connect(tmp_path / "q.sqlite")
    init_schema(conn)
    record_instance(conn, "1.1", "9.1", "8", SeriesAttributes("MR"), tmp_path, 1.0)
    (tmp_path / "a.seg.dcm").write_bytes(b"result")
    files = [("archive", str(tmp_path / "a.seg.dcm")), ("archive", str(tmp_path / "gone.dcm"))]
    finish(conn, "9.1", 1, files, now=0.0)
    assert deliver_once(config, conn) == 2
    assert (tmp_path / "out" / "9.1" / "1" / "a.seg.dcm").read_bytes() == b"result"
    rows = conn.execute("SELECT file, state, attempts, error FROM deliveries ORDER BY id")
    (_, s1, a1, _), (_, s2, a2, error) = rows.fetchall()
    assert (s1, a1, s2, a2) == ("delivered", 1, "pending", 1) and "gone.dcm" in error
    assert deliver_once(config, conn) == 0  # the retry waits its back-off


# ---------------------------------------------------------------- the node, end to end


class Node:
    """``medseg serve CONFIG`` in a subprocess: start, kill -9, stop by SIGTERM."""

    def __init__(self, root: Path, config: dict):
        self.root, self.config = root, config
        self.path = root / "serve.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None
        self.spool = Spool(root / config["spool"])

    def start(self, timeout: float = 90) -> None:
        with open(self.root / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                [*MEDSEG, "-v", "serve", str(self.path)], stdout=err, stderr=err
            )
        deadline = time.monotonic() + timeout
        while not self.echo():
            assert self.proc.poll() is None, (self.root / "stderr.log").read_text()
            assert time.monotonic() < deadline, "medseg serve did not start listening"
            time.sleep(0.3)

    def echo(self) -> bool:
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.config["port"], ae_title="MEDSEG")
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def status(self) -> dict:
        return read_status(self.spool.root)

    def series_state(self, uid: str) -> str | None:
        conn = connect(self.spool.database, readonly=True)
        row = conn.execute("SELECT state FROM series WHERE uid = ?", (uid,)).fetchone()
        conn.close()
        return row and row["state"]

    def log(self) -> str:
        return self.spool.log.read_text() if self.spool.log.exists() else ""


def wait_for(what: str, check, timeout: float = 90, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.fixture(scope="module")
def late_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def node(orthanc, untrained_model, tmp_path_factory, late_port):
    root = tmp_path_factory.mktemp("serve")
    model = untrained_model
    port = free_ports(1)[0]
    config = {
        "ae_title": "MEDSEG",
        "port": port,
        "allowed_callers": [orthanc.aet, CALLER],
        "spool": "spool",
        "quiet_seconds": 1,
        "models": {"mr": str(model)},
        "routes": [{"name": "mr", "model": "mr", "modality": "MR", "min_instances": 5}],
        "destinations": [
            {
                "name": "pacs",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            },
            {"name": "late", "ae_title": "LATE", "host": "127.0.0.1", "port": late_port},
            {"name": "archive", "folder": "archive"},
        ],
        "formats": ["dicom-seg", "rtstruct"],
        "statistics": True,
        "preview": True,
        "retry": {"backoff_seconds": [0.5, 1], "max_attempts": 1000},
        "prediction": {"device": "cpu", "mirroring": False},
    }
    node = Node(root, config)
    node.start()
    orthanc.add_modality("medseg", "MEDSEG", "127.0.0.1", port)
    try:
        yield node
    finally:
        node.stop()


def results_in_orthanc(orthanc, modality: str) -> dict[str, list[pydicom.Dataset]]:
    """Source SeriesInstanceUID -> the ``modality`` instances (SEG, RTSTRUCT) made from it."""
    found: dict[str, list[pydicom.Dataset]] = {}
    for series in orthanc.series():
        if series["MainDicomTags"].get("Modality") != modality:
            continue
        for instance in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{instance}/file")))
            if modality == "SEG":
                source = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
            else:
                source = (
                    ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                    .RTReferencedSeriesSequence[0].SeriesInstanceUID
                )  # fmt: skip
            found.setdefault(source, []).append(ds)
    return found


def _send_from_orthanc(orthanc, dicom_dir: Path, study: str) -> pydicom.Dataset:
    """Upload a real series to Orthanc and have Orthanc C-STORE it to the node."""
    answers = orthanc.upload(dicom_dir / study)
    summary = orthanc.send(answers[0]["ParentSeries"], "medseg")
    assert summary["FailedInstancesCount"] == 0 and summary["InstancesCount"] == len(answers)
    return pydicom.dcmread(dicom_dir / study / "1.dcm", stop_before_pixels=True)


@pytest.mark.slow
def test_series_from_orthanc_comes_back_as_seg_and_rtstruct(node, orthanc, dicom_dir):
    source = _send_from_orthanc(orthanc, dicom_dir, STUDY1)
    uid = source.SeriesInstanceUID
    segs = wait_for("a SEG in Orthanc", lambda: results_in_orthanc(orthanc, "SEG").get(uid))
    rtstructs = wait_for("an RTSTRUCT", lambda: results_in_orthanc(orthanc, "RTSTRUCT").get(uid))
    assert len(segs) == 1 and len(rtstructs) == 1
    for ds in segs + rtstructs:
        assert ds.StudyInstanceUID == source.StudyInstanceUID  # in the source's study
    # spooled under UIDs only, the result kept, and no patient data in the log
    files = sorted(node.spool.incoming.glob("*/*/*.dcm"))
    assert len(files) == len(list((dicom_dir / STUDY1).iterdir()))
    assert {f.parent.name for f in files} == {uid}
    assert (node.spool.results(uid, 1) / f"{uid}.seg.dcm").is_file()
    # measurements and the preview go to the folder destination (never by C-STORE)
    archive = node.root / "archive" / uid / "1"
    names = {f"{uid}.{x}" for x in ("seg.dcm", "rtstruct.dcm", "statistics.json", "preview.png")}
    wait_for("the archive", lambda: names <= {f.name for f in archive.glob("*")}, 30)
    statistics = json.loads((archive / f"{uid}.statistics.json").read_text())
    assert {s["name"] for s in statistics["structures"]} >= {"Anterior", "Posterior"}, statistics
    log = node.log()
    assert uid in log and "done" in log
    assert str(source.PatientName) not in log and str(source.PatientID) not in log


def _crafted_series(dicom_dir: Path, modality: str, n: int, **tags) -> list[pydicom.Dataset]:
    """``n`` instances of study2 as a new study and series, with ``modality`` and ``tags``."""
    study, series = generate_uid(), generate_uid()
    datasets = []
    for path in sorted((dicom_dir / STUDY2).iterdir())[:n]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, modality
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for key, value in tags.items():
            setattr(ds, key, value)
        datasets.append(ds)
    return datasets


def _cstore(port: int, datasets, caller: str = CALLER) -> list[int] | None:
    """C-STORE ``datasets`` to the node as ``caller``; the statuses, None if refused."""
    ae = AE(ae_title=caller)
    for sop_class in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    if not assoc.is_established:
        return None
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


@pytest.mark.slow
def test_unrouted_series_is_ignored_and_logged_by_uid(node, dicom_dir):
    datasets = _crafted_series(dicom_dir, "OT", 3)
    assert _cstore(node.config["port"], datasets) == [0, 0, 0]
    uid = datasets[0].SeriesInstanceUID
    wait_for("the series ignored", lambda: node.series_state(uid) == "ignored", 30)
    line = next(x for x in node.log().splitlines() if uid in x and "ignored" in x)
    assert line.endswith(f"series {uid} ignored: no route matches it")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unknown_caller_is_rejected_and_crafted_uids_never_move_a_file(node, dicom_dir):
    port = node.config["port"]
    assert _cstore(port, _crafted_series(dicom_dir, "MR", 1), caller="INTRUDER") is None
    evil = _crafted_series(dicom_dir, "MR", 2, PatientName="../../../etc/x", PatientID="/tmp/y")
    evil[0].SeriesInstanceUID = "../../../outside"
    statuses = _cstore(port, evil)
    assert statuses == [0xC210, 0x0000]  # refused; stored under its UIDs only
    root = node.root
    assert not list(root.rglob("outside*")) and not list(root.parent.rglob("outside*"))
    stored = node.spool.instance(evil[1].StudyInstanceUID, evil[1].SeriesInstanceUID,
                                 evil[1].SOPInstanceUID)  # fmt: skip
    assert stored.is_file() and not (root / "etc").exists()
    assert "../../../etc/x" not in node.log()


@pytest.mark.slow
def test_kill_9_while_predicting_then_restart_gives_one_seg(node, orthanc, dicom_dir):
    before = node.status()
    source = _send_from_orthanc(orthanc, dicom_dir, STUDY2)
    uid = source.SeriesInstanceUID
    state = wait_for(
        "the series predicted", lambda: node.series_state(uid) in ("processing", "done"), 30, 0.05
    )
    node.kill9()
    state = node.series_state(uid)
    node.start()
    segs = wait_for("a SEG in Orthanc", lambda: results_in_orthanc(orthanc, "SEG").get(uid))
    wait_for("the deliveries to Orthanc", lambda: _pacs_delivered(node) == 4, 60)
    time.sleep(2)  # nothing more comes
    assert len(results_in_orthanc(orthanc, "SEG")[uid]) == len(segs) == 1
    assert len(results_in_orthanc(orthanc, "RTSTRUCT")[uid]) == 1
    conn = connect(node.spool.database, readonly=True)
    row = conn.execute("SELECT state, attempts, run FROM series WHERE uid = ?", (uid,)).fetchone()
    sent = conn.execute(
        "SELECT attempts FROM deliveries WHERE destination = 'pacs' AND state = 'delivered'"
    ).fetchall()
    conn.close()
    assert row["state"] == "done" and row["run"] == 1
    assert row["attempts"] == (2 if state == "processing" else 1), state
    assert all(r["attempts"] == 1 for r in sent)  # nothing was sent twice
    assert before["series"]["done"] + 1 == node.status()["series"]["done"]


def _pacs_delivered(node) -> int:
    conn = connect(node.spool.database, readonly=True)
    n = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE destination = 'pacs' AND state = 'delivered'"
    ).fetchone()[0]
    conn.close()
    return n


@pytest.mark.slow
def test_destination_down_at_first_gets_the_results_later(node, late_port):
    waiting = node.status()["delivery_problems"]
    assert waiting and all(p["destination"] == "late" and p["state"] == "pending" for p in waiting)
    assert "no association" in waiting[0]["error"]
    received: list[pydicom.Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="LATE")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", late_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        wait_for("the late deliveries", lambda: node.status()["deliveries"]["pending"] == 0, 60)
    finally:
        server.shutdown()
    status = node.status()
    assert status["deliveries"]["pending"] == 0 and status["deliveries"]["failed"] == 0
    assert sorted(ds.Modality for ds in received) == ["RTSTRUCT"] * 2 + ["SEG"] * 2
    assert node.stop() == 0  # SIGTERM: a clean stop
    assert "medseg.serve.service: stopped" in node.log()


def test_status_and_example_config_from_the_command_line(tmp_path):
    example = subprocess.run([*MEDSEG, "serve", "--example-config"], capture_output=True, text=True)
    assert example.returncode == 0 and "allowed_callers" in example.stdout
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    (tmp_path / "spool").mkdir()
    conn = connect(tmp_path / "spool" / "queue.sqlite")
    init_schema(conn)
    record_instance(conn, "1.1", "9.1", "8", SeriesAttributes("MR"), tmp_path, 1.0)
    result = subprocess.run(
        [*MEDSEG, "serve", str(path), "--status", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    import json

    status = json.loads(result.stdout)
    assert status["schema_version"] == 1 and status["series"]["receiving"] == 1
    text = subprocess.run([*MEDSEG, "serve", str(path), "--status"], capture_output=True, text=True)
    assert "1 receiving" in text.stdout
    assert os.path.getsize(tmp_path / "spool" / "queue.sqlite") > 0


# ---------------------------------------------------------------- DICOMweb: units


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_file_readable_by_others_is_refused(tmp_path, mode):
    from medseg.serve.dicomweb import CredentialsError, make_client, read_credentials

    path = _private(tmp_path / "pacs.yaml", "username: u\npassword: s3cret-pw\n", mode)
    for read in (read_credentials, lambda p: make_client("http://127.0.0.1:1", p)):
        with pytest.raises(CredentialsError) as e:
            read(path)
        message = str(e.value)
        assert str(path) in message and f"chmod 600 {path}" in message
        assert f"{mode:04o}" in message and "s3cret-pw" not in message


def test_private_credentials_are_read_and_never_shown(tmp_path):
    from medseg.serve.dicomweb import CredentialsError, make_client, read_credentials

    basic = read_credentials(_private(tmp_path / "b.yaml", "username: u\npassword: '007'\n"))
    assert (basic.username, basic.password, basic.token) == ("u", "007", None)
    assert "007" not in repr(basic)
    token = _private(tmp_path / "t.yaml", "token: abc.def\n", 0o400)
    client = make_client("http://127.0.0.1:1/dicom-web", token)
    assert client._session.headers["Authorization"] == "Bearer abc.def"
    for text in ("password: s3cret-pw\n", "token: s3cret-pw\nusername: u\npassword: p\n",
                 "password: [s3cret-pw\n", "s3cret-pw"):  # fmt: skip
        with pytest.raises(CredentialsError) as e:
            read_credentials(_private(tmp_path / "bad.yaml", text))
        assert "s3cret-pw" not in str(e.value) and "fix the file" in str(e.value)
    with pytest.raises(CredentialsError, match="not found"):
        read_credentials(tmp_path / "missing.yaml")


def test_dicomweb_config(tmp_path):
    from medseg.serve.poller import study_dates

    sources = [{"name": "web", "url": "https://pacs/dicom-web/", "credentials": "c.yaml",
                "poll_seconds": 5, "filters": {"Modality": "MR"}, "since": "20240102"}]  # fmt: skip
    document = _config(tmp_path, dicomweb_sources=sources)
    document["destinations"].append({"name": "stow", "url": "http://pacs/dw"})
    config = parse_config(document, tmp_path)
    (source,) = config.dicomweb_sources
    assert source.url == "https://pacs/dicom-web" and source.credentials == tmp_path / "c.yaml"
    assert source.filters == (("Modality", "MR"),) and source.lookback_days == 1
    assert config.destination("stow").is_dicomweb and not config.destination("pacs").is_dicomweb
    # the window: from `since`, then from the last good poll's date minus lookback_days
    today = __import__("datetime").date(2024, 3, 10)
    assert study_dates(source, None, today) == "20240102-"
    noon = time.mktime((2024, 3, 5, 12, 0, 0, 0, 0, -1))
    assert study_dates(source, noon, today) == "20240304-"
    early = time.mktime((2023, 12, 1, 12, 0, 0, 0, 0, -1))
    assert study_dates(source, early, today) == "20240102-"  # never before since
    unbounded = parse_config(_config(tmp_path, dicomweb_sources=[{"name": "w", "url": "http://x"}]),
                             tmp_path).dicomweb_sources[0]  # fmt: skip
    assert study_dates(unbounded, None, today) == "20240309-"
    for changes, key in [
        ({"url": "https://user:s3cret@pacs/dw"}, "dicomweb_sources[0].url: holds a user"),
        ({"since": "20241301"}, "dicomweb_sources[0].since: '20241301' is not a date"),
        ({"filters": {"PatientID": "x"}}, "a QIDO-RS search key without patient data"),
    ]:
        bad = _config(tmp_path, dicomweb_sources=[{**sources[0], **changes}])
        with pytest.raises(ServeConfigError, match=__import__("re").escape(key)) as e:
            parse_config(bad, tmp_path)
        assert "s3cret" not in str(e.value)


class FakeDicomweb:
    """A DICOMweb server in memory: QIDO-RS and WADO-RS over a list of datasets."""

    def __init__(self, datasets):
        self.datasets, self.retrieved, self.down = list(datasets), [], False

    def _check(self):
        if self.down:
            import requests

            raise requests.ConnectionError("connection refused")

    def search_for_series(self, search_filters, fields, limit, offset):
        self._check()
        series = {}
        for ds in self.datasets:
            series.setdefault((ds.StudyInstanceUID, ds.SeriesInstanceUID), []).append(ds)
        return [
            {"0020000D": {"Value": [st]}, "0020000E": {"Value": [se]},
             "00201209": {"Value": [len(v)]}}
            for (st, se), v in series.items()
        ][offset : offset + limit]  # fmt: skip

    def search_for_instances(self, study_instance_uid, series_instance_uid, fields, limit, offset):
        self._check()
        found = [ds for ds in self.datasets if ds.SeriesInstanceUID == series_instance_uid]
        return [{"00080018": {"Value": [ds.SOPInstanceUID]}} for ds in found][offset:][:limit]

    def retrieve_instance(self, study, series, sop):
        self._check()
        self.retrieved.append(sop)
        return next(ds for ds in self.datasets if ds.SOPInstanceUID == sop)


def test_poller_fetches_each_series_once_and_only_new_instances(tmp_path, dicom_dir):
    from medseg.serve.config import DicomwebSource
    from medseg.serve.poller import poll_once

    spool = Spool(tmp_path / "spool")
    spool.make()
    conn = connect(spool.database)
    init_schema(conn)
    datasets = _crafted_series(dicom_dir, "MR", 4)
    server = FakeDicomweb(datasets[:3])
    source = DicomwebSource("web", "http://fake", since="20200101")
    assert poll_once(source, server, spool, conn)
    assert len(server.retrieved) == 3 and len(list(spool.incoming.glob("*/*/*.dcm"))) == 3
    assert poll_once(source, server, spool, conn)  # nothing new: nothing fetched
    assert len(server.retrieved) == 3
    server.datasets.append(datasets[3])  # the server got one more instance
    assert poll_once(source, server, spool, conn)
    assert server.retrieved[3:] == [datasets[3].SOPInstanceUID]
    uid = datasets[0].SeriesInstanceUID
    row = conn.execute("SELECT instances FROM series WHERE uid = ?", (uid,)).fetchone()
    fetched = conn.execute("SELECT fetched_instances, fetches FROM remote_series").fetchone()
    assert row["instances"] == 4 and tuple(fetched) == (4, 2)
    stored = pydicom.dcmread(spool.instance(datasets[3].StudyInstanceUID, uid,
                                            datasets[3].SOPInstanceUID))  # fmt: skip
    assert stored.SOPInstanceUID == datasets[3].SOPInstanceUID and "PixelData" in stored
    (before,) = read_status(spool.root)["sources"]
    server.down = True  # a failed poll is recorded; the window does not move
    assert not poll_once(source, server, spool, conn)
    (web,) = read_status(spool.root)["sources"]
    assert (web["polls"], web["failures"], web["series_fetched"]) == (4, 1, 1)
    assert "connection refused" in web["last_error"]
    assert web["last_success"] == before["last_success"]
    assert before["study_dates"] != "20200101-"  # from the 2nd poll on: lookback_days


def test_service_refuses_to_start_with_credentials_others_can_read(tmp_path):
    creds = _private(tmp_path / "pacs.yaml", "username: u\npassword: s3cret-pw\n", 0o644)
    sources = [{"name": "web", "url": "http://127.0.0.1:1/dicom-web", "credentials": "pacs.yaml"}]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, dicomweb_sources=sources)))
    result = subprocess.run([*MEDSEG, "serve", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"chmod 600 {creds}" in result.stderr and "s3cret-pw" not in result.stderr


# ---------------------------------------------------------------- DICOMweb: end to end


class Proxy:
    """An HTTP proxy to ``target`` on ``port``, started late: a DICOMweb source that is
    down at first, then comes up."""

    def __init__(self, port: int, target: str):
        import http.server
        import threading
        import urllib.error
        import urllib.request

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                keep = {"Authorization", "Accept", "Content-Type"}
                headers = {k: v for k, v in self.headers.items() if k in keep}
                request = urllib.request.Request(target + self.path, body, headers,
                                                 method=self.command)  # fmt: skip
                try:
                    answer = urllib.request.urlopen(request, timeout=60)
                except urllib.error.HTTPError as error:
                    answer = error
                data = answer.read()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def web_orthanc(tmp_path_factory):
    """A second private Orthanc with only the real MR series of study2 (uploaded by
    REST), polled over DICOMweb; the module's other Orthanc gets C-STORE results."""
    import orthanc_server

    reason = orthanc_server.unavailable()
    if reason:
        pytest.skip(reason)
    server = orthanc_server.start(tmp_path_factory.mktemp("web_orthanc"))
    try:
        yield server
    finally:
        orthanc_server.stop(server.root)


def _web_state(node: Node) -> dict:
    conn = connect(node.spool.database, readonly=True)
    try:
        return {
            "remote": [dict(r) for r in conn.execute("SELECT * FROM remote_series")],
            "series": [dict(r) for r in conn.execute("SELECT * FROM series")],
            "deliveries": [dict(r) for r in conn.execute("SELECT * FROM deliveries")],
            "sources": {r["name"]: dict(r) for r in conn.execute("SELECT * FROM sources")},
        }
    finally:
        conn.close()


@pytest.mark.slow
def test_dicomweb_source_and_stow_destination(web_orthanc, untrained_model, dicom_dir, tmp_path):
    import datetime
    import json

    answers = web_orthanc.upload(dicom_dir / STUDY2)
    source = pydicom.dcmread(dicom_dir / STUDY2 / "1.dcm", stop_before_pixels=True)
    uid = source.SeriesInstanceUID
    user, password = web_orthanc.auth
    _private(tmp_path / "orthanc.yaml", yaml.safe_dump({"username": user, "password": password}))
    # later polls must still see study2 (StudyDate 2020): dedup, not the window, stops a refetch
    lookback = (datetime.date.today() - datetime.date(2020, 1, 1)).days
    down_port = free_ports(1)[0]
    web = {"url": web_orthanc.dicomweb_url, "credentials": "orthanc.yaml"}
    config = {
        "ae_title": "MEDSEG", "port": free_ports(1)[0], "allowed_callers": [CALLER],
        "spool": "spool", "quiet_seconds": 1, "models": {"mr": str(untrained_model)},
        "routes": [{"name": "mr", "model": "mr", "modality": "MR", "min_instances": 5}],
        "destinations": [{"name": "web", **web}],
        "dicomweb_sources": [
            {"name": "web", **web, "poll_seconds": 1, "filters": {"Modality": "MR"},
             "since": "20200101", "lookback_days": lookback},
            {"name": "down", "url": f"http://127.0.0.1:{down_port}/dicom-web",
             "credentials": "orthanc.yaml", "poll_seconds": 1, "since": "20200101",
             "filters": {"Modality": "MR"}},
        ],
        "retry": {"backoff_seconds": [0.5, 1], "max_attempts": 100},
        "prediction": {"device": "cpu", "mirroring": False},
    }  # fmt: skip
    node, proxy = Node(tmp_path, config), None
    node.start()
    try:
        segs = wait_for("a SEG in Orthanc", lambda: results_in_orthanc(web_orthanc, "SEG").get(uid))
        wait_for("the STOW-RS delivery", lambda: _web_state(node)["deliveries"], 30)
        polls = _web_state(node)["sources"]["web"]["polls"]
        wait_for("two more polls", lambda: _web_state(node)["sources"]["web"]["polls"] >= polls + 2)
        down = _web_state(node)["sources"]["down"]
        assert node.proc.poll() is None and down["failures"] >= 2 and not down["last_success"]
        assert "Connection" in down["last_error"]
        proxy = Proxy(down_port, web_orthanc.url)  # the source that was down comes up
        wait_for("the source up", lambda: _web_state(node)["sources"]["down"]["last_success"])
        time.sleep(1.5)  # nothing more comes
        state = _web_state(node)
        status = json.loads(
            subprocess.run(
                [*MEDSEG, "serve", str(node.path), "--status", "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        text = subprocess.run([*MEDSEG, "serve", str(node.path), "--status"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    finally:
        assert node.stop() == 0
        if proxy is not None:
            proxy.close()
    # one SEG in Orthanc, in the source's study, delivered once by STOW-RS
    assert len(results_in_orthanc(web_orthanc, "SEG")[uid]) == len(segs) == 1
    assert segs[0].StudyInstanceUID == source.StudyInstanceUID
    (delivery,) = state["deliveries"]
    assert (delivery["destination"], delivery["state"], delivery["attempts"]) == (
        "web",
        "delivered",
        1,
    )
    # fetched and predicted once, though polled many times, and by two sources
    (series,) = state["series"]
    assert (series["uid"], series["state"], series["run"], series["attempts"]) == (
        uid,
        "done",
        1,
        1,
    )
    assert series["instances"] == len(answers)
    remote = {r["source"]: r for r in state["remote"]}
    assert remote["web"]["fetches"] == 1 and remote["web"]["fetched_instances"] == len(answers)
    assert remote["down"]["fetches"] == 1  # listed, nothing retrieved: every SOP was known
    assert len(list(node.spool.incoming.glob("*/*/*.dcm"))) == len(answers)
    log = node.log()
    assert log.count(f"series {uid}: fetching") == 2
    assert f"series {uid}: fetching {len(answers)} of its" in log
    assert f"series {uid}: fetching 0 of its" in log
    assert log.count("source down: poll failed") == 1  # a warning once, not every second
    assert "source down: answering again after" in log
    assert str(source.PatientName) not in log and str(source.PatientID) not in log
    assert password not in log
    # --status: the sources' polls and the deliveries pending per destination
    by_name = {s["name"]: s for s in status["sources"]}
    assert by_name["web"]["last_success"] and by_name["web"]["series_fetched"] == 1
    assert by_name["down"]["last_error"] and status["pending_by_destination"] == {}
    assert "DICOMweb sources" in text and "down" in text
