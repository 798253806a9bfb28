"""``medseg serve``: config, spool paths, the queue, and the node end to end with Orthanc.

The end-to-end tests run the service as a user does (``medseg serve CONFIG`` in a
subprocess) with a private Orthanc (tests/orthanc_fixture.py) as the PACS that sends
the real MR series and receives the results, and a pynetdicom SCP that starts late as
a second destination that is down at first.
"""

from __future__ import annotations

import io
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
        ],
        "formats": ["dicom-seg", "rtstruct"],
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
    assert status["deliveries"] == {"pending": 0, "delivered": 8, "failed": 0}
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
