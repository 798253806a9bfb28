"""A real PACS for medseg's DICOM node: Orthanc and the DICOM networking libraries.

The ``orthanc`` fixture (tests/orthanc_fixture.py) starts a private Orthanc (Debian's
1.10 with its DICOMweb plugin, ``make orthanc-tools``) per module; these tests prove
that it and the libraries ``medseg serve`` will use work together on real MR series:
REST upload, C-ECHO/C-STORE with pynetdicom, QIDO-RS/WADO-RS/STOW-RS with
dicomweb-client, and Orthanc sending a series to a pynetdicom Store SCP.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

pytest_plugins = ["orthanc_fixture"]

STUDY1 = "mr_hippocampus_crop_study1"
STUDY2 = "mr_hippocampus_crop_study2"
SUCCESS = 0x0000


def _headers(folder: Path) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID -> header (no pixels) of every file in ``folder``."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    return {ds.SOPInstanceUID: ds for ds in headers}


@pytest.fixture(scope="module")
def study1(dicom_dir: Path) -> Path:
    return dicom_dir / STUDY1


@pytest.fixture(scope="module")
def uploaded(orthanc, study1: Path) -> list[dict]:
    """Orthanc's answers to the REST upload of study1 (one per file)."""
    return orthanc.upload(study1)


def _dicomweb(orthanc) -> DICOMwebClient:
    return DICOMwebClient(
        orthanc.dicomweb_url, session=create_session_from_user_pass(*orthanc.auth)
    )


def test_rest_upload_gives_one_study_one_series(orthanc, uploaded, study1):
    headers = _headers(study1)
    first = next(iter(headers.values()))
    assert len(uploaded) == len(headers) == 32
    assert {answer["Status"] for answer in uploaded} <= {"Success", "AlreadyStored"}
    assert len({answer["ParentStudy"] for answer in uploaded}) == 1
    series_id = orthanc.lookup(first.SeriesInstanceUID)
    assert {answer["ParentSeries"] for answer in uploaded} == {series_id}

    study = next(s for s in orthanc.studies() if s["ID"] == uploaded[0]["ParentStudy"])
    assert study["MainDicomTags"]["StudyInstanceUID"] == first.StudyInstanceUID
    assert study["Series"] == [series_id]
    series = next(s for s in orthanc.series() if s["ID"] == series_id)
    assert series["MainDicomTags"]["SeriesInstanceUID"] == first.SeriesInstanceUID
    instances = orthanc.instances(series_id)
    assert len(series["Instances"]) == len(instances) == len(headers)

    tags = orthanc.tags(instances[0]["ID"])
    header = headers[tags["SOPInstanceUID"]]
    assert tags["PatientID"] == header.PatientID
    assert int(tags["Rows"]) == header.Rows and int(tags["Columns"]) == header.Columns
    assert tags["ImagePositionPatient"].split("\\") == [str(v) for v in header.ImagePositionPatient]


def test_cecho_and_cstore_to_orthanc(orthanc, dicom_dir):
    files = sorted((dicom_dir / STUDY2).iterdir())
    datasets = [pydicom.dcmread(p) for p in files]
    ae = AE(ae_title="MEDSEG_TEST")
    ae.add_requested_context(Verification)
    for sop_class in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established, f"association to {orthanc.aet} refused"
    try:
        assert assoc.send_c_echo().Status == SUCCESS
        statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()
    assert statuses == [SUCCESS] * len(datasets) == [SUCCESS] * 35

    series_id = orthanc.lookup(datasets[0].SeriesInstanceUID)
    instances = orthanc.instances(series_id)
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in instances} == {
        ds.SOPInstanceUID for ds in datasets
    }
    origin = orthanc.request("GET", f"/instances/{instances[0]['ID']}/metadata/RemoteAET")
    assert origin.decode() == "MEDSEG_TEST"


def test_dicomweb_qido_wado(orthanc, uploaded, study1):
    headers = _headers(study1)
    first = next(iter(headers.values()))
    client = _dicomweb(orthanc)
    found = client.search_for_series(search_filters={"SeriesInstanceUID": first.SeriesInstanceUID})
    assert len(found) == 1
    series = pydicom.Dataset.from_json(found[0])
    assert series.StudyInstanceUID == first.StudyInstanceUID
    assert int(series.NumberOfSeriesRelatedInstances) == len(headers)

    retrieved = client.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(headers)
    original = pydicom.dcmread(study1 / "1.dcm")
    same = next(ds for ds in retrieved if ds.SOPInstanceUID == original.SOPInstanceUID)
    assert (same.pixel_array == original.pixel_array).all()


def test_dicomweb_stow(orthanc, study1):
    ds = pydicom.dcmread(study1 / "1.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    client = _dicomweb(orthanc)
    client.store_instances([ds])
    found = client.search_for_instances(
        study_instance_uid=ds.StudyInstanceUID, search_filters={"SOPInstanceUID": ds.SOPInstanceUID}
    )
    assert len(found) == 1
    instance_id = orthanc.lookup(ds.SOPInstanceUID, "Instance")
    assert orthanc.tags(instance_id)["SeriesInstanceUID"] == ds.SeriesInstanceUID


def test_orthanc_sends_series_to_store_scp(orthanc, uploaded, study1):
    received: list[pydicom.Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return SUCCESS

    ae = AE(ae_title="MEDSEG_SCP")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        orthanc.add_modality("medseg", "MEDSEG_SCP", "127.0.0.1", server.server_address[1])
        assert orthanc.modalities()["medseg"]["AET"] == "MEDSEG_SCP"
        summary = orthanc.send(uploaded[0]["ParentSeries"], "medseg")
    finally:
        server.shutdown()
    headers = _headers(study1)
    assert summary["InstancesCount"] == len(headers) and summary["FailedInstancesCount"] == 0
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(headers)
    assert {ds.SeriesInstanceUID for ds in received} == {
        next(iter(headers.values())).SeriesInstanceUID
    }
