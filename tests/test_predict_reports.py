"""medseg predict --statistics and --preview: per-case files, manifest, batch table."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import make_untrained_model, run_medseg

from medseg.core.volume import Kind, Volume
from medseg.evaluation.statistics import statistics_csv, statistics_rows, structure_statistics
from medseg.inference.batch import BatchSettings, run_batch
from medseg.inference.bundle import load_model
from medseg.inference.inputs import discover_inputs
from medseg.inference.predict import PredictOptions
from medseg.inference.reports import is_hounsfield
from medseg.io import read_volume

REPORTS = {"statistics", "statistics-csv", "preview"}


@pytest.fixture(scope="module")
def model(demo_dataset, tmp_path_factory):
    """A tiny untrained 3d_fullres model folder (real reading, prediction and writing)."""
    return make_untrained_model(demo_dataset, tmp_path_factory.mktemp("reports_model"), (8, 32, 32))


@pytest.fixture
def inputs(demo_dataset, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(sorted((demo_dataset / "imagesTr").glob("*.nii.gz"))[:3]):
        shutil.copy(src, folder / f"case{i}.nii.gz")
    return folder


def three_classes(bundle, image, options=None, progress=None, probabilities=None, report=None):
    """A quick stand-in for the network giving every class: 1 above the 60th percentile,
    2 above the 90th."""
    array = image.array[0]
    lo, hi = np.percentile(array, (60, 90))
    label = (array > lo).astype(np.uint8) + (array > hi)
    return Volume(label.astype(np.uint8), image.affine, Kind.LABEL)


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def table(out) -> list[dict]:
    with open(out / "statistics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_predict_cli_statistics_and_preview_match_the_written_label(model, inputs, tmp_path):
    """End to end, two worker processes: the files exist and their numbers are the
    function applied to the label map written and the input."""
    out = tmp_path / "out"
    r = run_medseg(
        "predict", "-m", model, "-i", inputs, "-o", out, "--formats", "nifti", "--device", "cpu",
        "--engine", "torch", "--no-mirroring", "--workers", "2", "--statistics", "--preview",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    bundle = load_model(model, "cpu")
    names = bundle.label_names
    unit = "HU" if is_hounsfield(None, bundle.channel_names) else ""  # the demo data: CT
    records = {r["case_id"]: r for r in manifest(out)}
    assert set(records) == {"case0", "case1", "case2"}
    for case, record in records.items():
        assert REPORTS < set(record["outputs"])
        label = read_volume(out / f"{case}.nii.gz", "label")
        expected = structure_statistics(
            label, read_volume(inputs / f"{case}.nii.gz"), names, case_id=case, intensity_unit=unit
        )
        written = json.loads((out / f"{case}.statistics.json").read_text())
        assert written == json.loads(json.dumps(expected))
        assert (out / f"{case}.statistics.csv").read_text() == statistics_csv(
            statistics_rows(expected)
        )
        assert record["statistics"] == {
            s["name"]: {"volume_ml": pytest.approx(s["volume_ml"]), "voxels": s["voxels"]}
            for s in expected["structures"]
        }
        assert record["outputs"]["preview"] == str((out / f"{case}.preview.png").resolve())
        assert matplotlib.image.imread(out / f"{case}.preview.png").shape[1] >= 500
    rows = table(out)
    assert len(rows) == 3 * (len(names) - 1)
    assert sorted({row["case_id"] for row in rows}) == ["case0", "case1", "case2"]


def test_batch_table_keeps_earlier_cases_and_a_failing_preview_fails_its_case(
    model, inputs, tmp_path, monkeypatch
):
    """The pipelined path: a rerun with --skip-existing keeps the earlier cases in the
    table; a case whose preview cannot be drawn fails alone, its outputs removed."""
    monkeypatch.setattr("medseg.inference.predict.predict_volume", three_classes)
    bundle = load_model(model, "cpu")
    cases = discover_inputs([inputs], 1)[0]
    out = tmp_path / "out"
    settings = BatchSettings(("nifti",), statistics=True, preview=True)
    first = run_batch(bundle, cases[:2], out, PredictOptions(), settings)
    assert [r["status"] for r in first.records] == ["ok", "ok"]
    assert [s["voxels"] > 0 for s in first.records[0]["statistics"].values()] == [True, True]
    assert [row["case_id"] for row in table(out)] == ["case0", "case0", "case1", "case1"]

    from medseg.evaluation import preview

    real = preview.preview_figure

    def failing(image, label, names, **kwargs):
        if kwargs.get("title") == "case2":
            raise ValueError("no room for the legend")
        return real(image, label, names, **kwargs)

    monkeypatch.setattr(preview, "preview_figure", failing)
    again = run_batch(bundle, cases, out, PredictOptions(), BatchSettings(
        ("nifti",), skip_existing=True, statistics=True, preview=True
    ))  # fmt: skip
    assert [r["status"] for r in again.records] == ["skipped", "skipped", "failed"]
    error = again.records[2]["error"]
    assert error.startswith(f"{out / 'case2.preview.png'}: could not draw the preview picture")
    assert "ValueError: no room for the legend" in error and "statistics" not in again.records[2]
    assert not list(out.glob("case2*"))  # its label map and measurements removed with it
    assert [row["case_id"] for row in table(out)] == ["case0", "case0", "case1", "case1"]


def test_a_foreign_statistics_table_is_refused_before_any_case(model, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "statistics.csv").write_text("mine\n")
    bundle = load_model(model, "cpu")
    cases = discover_inputs([inputs], 1)[0]
    from medseg.core.errors import OutputError

    with pytest.raises(OutputError, match="statistics.csv: exists and was not written"):
        run_batch(bundle, cases, out, PredictOptions(), BatchSettings(statistics=True))
    assert (out / "statistics.csv").read_text() == "mine\n"
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("reports", [{}, {"statistics": True, "preview": True}])
def test_workflow_passes_the_flags_when_the_test_section_asks(demo_dataset, tmp_path, reports):
    """``snakemake -n -p``: the test prediction gets --statistics --preview only if asked."""
    import subprocess
    import sys

    import yaml
    from conftest import ROOT

    config = {
        "configurations": ["3d_fullres"],
        "dataset": str(demo_dataset),
        "output": "out",
        "device": "cpu",
        "test": {"images": str(demo_dataset / "imagesTs"), "formats": ["nifti"], **reports},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile")]
    result = subprocess.run(
        [*snakemake, "-d", str(tmp_path), "--cores", "1", "-n", "-p"]
        + ["--configfile", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [command] = [line for line in result.stdout.splitlines() if "medseg predict" in line]
    assert ("--statistics --preview" in command) == bool(reports)
