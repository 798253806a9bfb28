"""medseg predict's one-process pipeline: the next case read and the previous one written
while a case is predicted, with the same records and outputs as one case after another."""

from __future__ import annotations

import errno
import json
import shutil
import threading

import nibabel as nib
import numpy as np
import pytest
from conftest import make_untrained_model

from medseg.core.errors import InferenceError
from medseg.core.options import OutputFormat
from medseg.core.volume import Kind, Volume
from medseg.inference import batch, prefetch
from medseg.inference.batch import BatchSettings, owned_outputs, run_batch
from medseg.inference.bundle import load_model
from medseg.inference.inputs import discover_inputs
from medseg.inference.predict import PredictOptions
from medseg.io.probabilities import load_probabilities
from medseg.io.volumes import write_volume as real_write_volume

TIMEOUT = 60  # s: only a safety net, so that a pipeline that does not overlap fails


@pytest.fixture(scope="module")
def bundle(demo_dataset, tmp_path_factory):
    """A tiny untrained 3d_fullres model: real reading, gate, prediction and writing."""
    folder = make_untrained_model(
        demo_dataset, tmp_path_factory.mktemp("pipeline_model"), (8, 32, 32)
    )
    return load_model(folder, "cpu")


@pytest.fixture
def inputs(demo_dataset, tmp_path):
    """Five good cases, then an unreadable file and a blank scan (the gate refuses it)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(sorted((demo_dataset / "imagesTr").glob("*.nii.gz"))[:5]):
        shutil.copy(src, folder / f"case{i}.nii.gz")
    (folder / "case5.nii.gz").write_bytes(b"not a volume")
    blank = nib.load(folder / "case0.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros(blank.shape, np.float32), blank.affine), folder / "case6.nii.gz"
    )
    return folder


def sequential(bundle, cases, out, options, settings) -> list[dict]:
    """The records of one case after another, each read, predicted and written in turn."""
    out.mkdir(parents=True, exist_ok=True)
    owned = owned_outputs(out)
    return [
        batch._case_record(bundle, c, out, options, settings, "run", None, owned) for c in cases
    ]


def comparable(records: list[dict], out) -> list[dict]:
    """Records without their timings, run and measured memory (the settings chosen stay),
    with the output folder's name removed."""

    def settings(memory):
        return memory and {k: memory[k] for k in ("tile_batch", "slab_bytes")}

    text = json.dumps(
        [
            {**r, "run": None, "seconds": sorted(r["seconds"]), "memory": settings(r.get("memory"))}
            for r in records
        ]
    )
    return json.loads(text.replace(str(out.resolve()), "OUT"))


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def fake_predict(
    bundle, image, options=None, progress=None, probabilities=None, report=None
) -> Volume:
    """A quick stand-in for the network: voxels above the mean are label 1."""
    array = image.array[0]
    return Volume((array > array.mean()).astype(np.uint8), image.affine, Kind.LABEL)


def test_same_records_and_outputs_as_one_case_after_another(bundle, inputs, tmp_path):
    """The real model: labels and probabilities bit for bit, manifest fields but timings."""
    cases, unusable = discover_inputs([inputs], 1)
    cases = cases[:4] + cases[5:]  # 3 to predict, one foreign, one unreadable, one blank
    assert not unusable and [c.case_id for c in cases][-2:] == ["case5", "case6"]
    formats = (OutputFormat.NIFTI, OutputFormat.PROBABILITIES)
    options = PredictOptions(mirroring=False, device="cpu")
    seq, pipe = tmp_path / "seq", tmp_path / "pipe"
    for out in (seq, pipe):  # a file medseg did not write: that case fails
        out.mkdir()
        (out / "case1.nii.gz").write_bytes(b"mine")
    expected = sequential(bundle, cases, seq, options, BatchSettings(formats))
    result = run_batch(bundle, cases, pipe, options, BatchSettings(formats))
    assert comparable(result.records, pipe) == comparable(expected, seq)
    assert comparable(manifest(pipe), pipe) == comparable(expected, seq)
    statuses = [r["status"] for r in result.records]
    assert statuses == ["ok", "failed", "ok", "ok", "failed", "failed"]
    assert set(result.records[0]["seconds"]) == {"read", "predict", "write"}
    for case in ("case0", "case2", "case3"):
        label = f"{case}.nii.gz"
        assert (pipe / label).read_bytes() == (seq / label).read_bytes()
        probs, affine = load_probabilities(pipe / f"{case}_probabilities.b2nd")
        probs_seq, affine_seq = load_probabilities(seq / f"{case}_probabilities.b2nd")
        assert np.array_equal(probs, probs_seq) and np.array_equal(affine, affine_seq)
    assert (pipe / "case1.nii.gz").read_bytes() == b"mine"
    # resumed: the finished cases are skipped, in the same order as one after another
    again = run_batch(bundle, cases, pipe, options, BatchSettings(formats, skip_existing=True))
    expected = sequential(bundle, cases, seq, options, BatchSettings(formats, skip_existing=True))
    assert comparable(again.records, pipe) == comparable(expected, seq)
    assert [r["status"] for r in again.records][:4] == ["skipped", "failed", "skipped", "skipped"]


def test_reading_and_writing_overlap_the_prediction(bundle, inputs, tmp_path, monkeypatch):
    """Case i + 1 is read and case i - 1 written while case i is predicted: each pair
    meets at a barrier, which breaks (failing the case) unless both run at once."""
    cases = discover_inputs([inputs], 1)[0][:5]
    index = {str(c.path): i for i, c in enumerate(cases)}
    read_meets = [threading.Barrier(2, timeout=TIMEOUT) for _ in cases]  # read i+1, predict i
    write_meets = [threading.Barrier(2, timeout=TIMEOUT) for _ in cases]  # write i, predict i+1
    threads: dict[tuple[str, int], str] = {}
    read_scan = prefetch._read_scan

    def reading(case):
        i = index[str(case.path)]
        threads["read", i] = threading.current_thread().name
        if i > 0:
            read_meets[i - 1].wait()
        return read_scan(case)

    def predicting(bundle, image, options, progress=None, probabilities=None, report=None):
        i = next(i for i, c in enumerate(cases) if np.array_equal(image.affine, affines[i]))
        threads["predict", i] = threading.current_thread().name
        if i + 1 < len(cases):
            read_meets[i].wait()
        if i > 0:
            write_meets[i - 1].wait()
        return fake_predict(bundle, image)

    def writing(volume, path):
        i = index[str(inputs / path.name)]
        threads["write", i] = threading.current_thread().name
        if i + 1 < len(cases):
            write_meets[i].wait()
        real_write_volume(volume, path)

    affines = [nib.load(c.path).affine for c in cases]
    monkeypatch.setattr(prefetch, "_read_scan", reading)
    monkeypatch.setattr("medseg.inference.predict.predict_volume", predicting)
    monkeypatch.setattr("medseg.io.volumes.write_volume", writing)
    result = run_batch(bundle, cases, tmp_path / "out", PredictOptions(), BatchSettings(("nifti",)))
    assert [r["status"] for r in result.records] == ["ok"] * 5, result.records
    assert [r["case_id"] for r in manifest(tmp_path / "out")] == [c.case_id for c in cases]
    main = threading.main_thread().name
    for i in range(5):
        assert threads["read", i].startswith("medseg-read")
        assert threads["predict", i] == main
        assert threads["write", i].startswith("medseg-write")
    assert not [t for t in threading.enumerate() if t.name.startswith("medseg-")]


def test_a_case_failing_at_any_stage_fails_alone(bundle, inputs, tmp_path, monkeypatch):
    """Unreadable (case5), refused (case6), failing to predict (case1) or to write
    (case3): the same message as one case after another, the others done."""
    cases = discover_inputs([inputs], 1)[0]

    def predicting(bundle, image, options, progress=None, probabilities=None, report=None):
        if np.array_equal(image.affine, nib.load(inputs / "case1.nii.gz").affine):
            raise InferenceError("case1 cannot be predicted: a test says so")
        return fake_predict(bundle, image)

    def writing(volume, path):
        real_write_volume(volume, path)  # written whole, then the disk is full (removed again)
        if path.name.startswith("case3"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("medseg.inference.predict.predict_volume", predicting)
    monkeypatch.setattr("medseg.io.volumes.write_volume", writing)
    settings, options = BatchSettings(("nifti",)), PredictOptions()
    pipe, seq = tmp_path / "pipe", tmp_path / "seq"
    result = run_batch(bundle, cases, pipe, options, settings)
    expected = sequential(bundle, cases, seq, options, settings)
    assert comparable(result.records, pipe) == comparable(expected, seq)
    records = {r["case_id"]: r for r in manifest(pipe)}
    assert list(records) == [f"case{i}" for i in range(7)]
    assert {k for k, r in records.items() if r["status"] == "ok"} == {"case0", "case2", "case4"}
    assert records["case1"]["error"] == "case1 cannot be predicted: a test says so"
    assert set(records["case1"]["seconds"]) == {"read"}
    assert records["case3"]["error"] == f"{pipe / 'case3.nii.gz'}: No space left on device"
    assert set(records["case3"]["seconds"]) == {"read", "predict"}
    assert records["case5"]["error"].startswith(str(inputs / "case5.nii.gz"))
    assert records["case5"]["seconds"] == {}
    assert "blank" in records["case6"]["error"]
    assert [f["code"] for f in records["case6"]["findings"]] == ["blank"]
    written = {p.name for p in pipe.glob("*.nii.gz")}
    assert written == {"case0.nii.gz", "case2.nii.gz", "case4.nii.gz"}
    owned = owned_outputs(pipe)  # the failed cases' names are released in the ledger
    assert owned == {str((pipe / n).resolve()) for n in written}


def test_an_interrupt_finishes_the_write_in_progress(bundle, inputs, tmp_path, monkeypatch):
    """Ctrl-C while case 1 is predicted and case 0 written: case 0 is written whole and
    recorded, no thread is left running, and case 1 has no output."""
    cases = discover_inputs([inputs], 1)[0][:4]
    predicting_1 = threading.Event()

    def predicting(bundle, image, options, progress=None, probabilities=None, report=None):
        if np.array_equal(image.affine, nib.load(inputs / "case1.nii.gz").affine):
            predicting_1.set()
            raise KeyboardInterrupt
        return fake_predict(bundle, image)

    def writing(volume, path):
        assert predicting_1.wait(TIMEOUT)  # still writing when the interrupt comes
        real_write_volume(volume, path)

    monkeypatch.setattr("medseg.inference.predict.predict_volume", predicting)
    monkeypatch.setattr("medseg.io.volumes.write_volume", writing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(bundle, cases, out, PredictOptions(), BatchSettings(("nifti",)))
    assert not [t for t in threading.enumerate() if t.name.startswith("medseg-")]
    assert [(r["case_id"], r["status"]) for r in manifest(out)] == [("case0", "ok")]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".medseg")) == [
        "case0.nii.gz",
        "manifest.jsonl",
    ]
    assert nib.load(out / "case0.nii.gz").shape == nib.load(inputs / "case0.nii.gz").shape
