"""medseg runs a real nnU-Net v2 results folder as nnU-Net's own predictor does.

A tiny ``3d_fullres`` model is planned, preprocessed and trained by nnunetv2 itself on 10
MSD Hippocampus cases with nnU-Net's default SimpleITK reader, so the model saw volumes
in their stored axis order, never reoriented (see ``nnunet_model.py``). Held-out images
are then predicted by ``nnUNetPredictor.predict_from_files`` (tile step 0.5, Gaussian,
mirroring on, CPU, as ``nnUNetv2_predict``) and by ``medseg predict -m <results folder>``,
and label maps and class probabilities are compared voxel by voxel.

Inputs: two held-out Hippocampus images (stored RAS), a third rewritten with permuted and
flipped axes (same physical image, a non-trivial direction: a reorienting reader would
diverge from nnU-Net here), and a real MR DICOM series (LPS), which medseg reads as DICOM
and nnU-Net gets as SimpleITK's NIfTI conversion of it. A second DICOM series only has
to come out (NIfTI and DICOM-SEG).

The model is trained for a few iterations only, so that it still predicts all three
labels in every image (longer, it predicts only background, and labels would agree
trivially); its logits are small, so many voxels are near-ties between two labels.

medseg blends tiles the way the model's origin asks: for nnU-Net models its default
(``--blend auto``) is nnU-Net's float16 blending, so their labels come out as nnU-Net's;
``--blend float32`` is the exact weighted mean. Each is compared with its counterpart:

- nnU-Net with its blending patched to float32 (``nnunet_model._blend_in_float32``)
  computes the exact Gaussian-weighted mean it means to; against it everything must agree
  everywhere: labels on >= 99.99% of all voxels, probabilities within 1e-3 (medseg writes
  float16 probabilities: rounding up to 2**-12 = 2.4e-4 near 1).
- nnU-Net as shipped blends tiles in float16 (logits and a Gaussian map scaled by 10);
  medseg's ``--blend nnunet`` (the default for nnU-Net models) does the same, so against
  it: labels on >= 99.9% of all voxels, probabilities within 1e-2 everywhere. Agreement
  in the interior (at least ``EDGE`` voxels from every face) and on voxels whose two best
  classes are at least ``DECIDED`` apart is printed beside it, for diagnosis.

Every compared image must hold all three labels in nnU-Net's prediction, or agreement
would say nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nnunet_model  # noqa: E402
from conftest import MEDSEG

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 10
N_HELD_OUT = 3
DICOM_SERIES = ("mr_hippocampus_crop_study1", "mr_hippocampus_crop_study2")
DICOM_PARITY = DICOM_SERIES[0]  # also given to nnU-Net, as SimpleITK converts it
REORIENTED = ("A", "S", "L")  # stored axis codes of the rewritten copy (the source is RAS)
EDGE = 4
DECIDED = 1e-2
#: (min share of ALL voxels with equal labels, max |probability difference| anywhere)
FLOAT32 = (0.9999, 1e-3)
STOCK = (0.999, 1e-2)
#: One torch thread per process: results do not depend on it, and on a small shared
#: machine two threads that wait on each other make CPU convolutions several times slower.
THREADS = 1


def _hippocampus_ids(hippocampus: Path) -> list[str]:
    meta = json.loads((hippocampus / "dataset.json").read_text())
    return [nnunet_model.case_id(Path(item["image"])) for item in meta["training"]]


def _reoriented_copy(source: Path, dest: Path) -> Path:
    """``source`` with its axes stored in ``REORIENTED`` order (the same physical image)."""
    img = nib.load(source)
    current = nib.orientations.io_orientation(img.affine)
    wanted = nib.orientations.axcodes2ornt(REORIENTED)
    nib.save(img.as_reoriented(nib.orientations.ornt_transform(current, wanted)), dest)
    return dest


def _dicom_as_nifti(series: Path, dest: Path) -> Path:
    """The series as SimpleITK reads it (what an nnU-Net user converts and feeds)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    sitk.WriteImage(reader.Execute(), str(dest))
    return dest


def _medseg_predict(
    model: Path, inputs: list[Path], out: Path, formats: list[str], *extra: str
) -> list[dict]:
    cmd = [
        *MEDSEG,
        "predict",
        "-m",
        str(model),
        "-i",
        *map(str, inputs),
        "-o",
        str(out),
        "--formats",
        *formats,
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines() if manifest.is_file() else []
    assert done.returncode == 0 and lines, (
        f"medseg predict failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def interop(tmp_path_factory, hippocampus: Path, dicom_dir: Path) -> dict:
    """Train the model, predict with nnU-Net (twice) and medseg; say where everything is."""
    work = tmp_path_factory.mktemp("nnunet_interop")
    ids = _hippocampus_ids(hippocampus)
    model = nnunet_model.train_tiny_model(
        hippocampus, work, ids[:N_TRAIN], base_features=4, iterations=5, threads=THREADS
    )
    inputs = work / "inputs"
    inputs.mkdir()
    held_out = [hippocampus / "imagesTr" / f"{c}.nii.gz" for c in ids[-N_HELD_OUT:]]
    nifti = [*held_out[:-1], _reoriented_copy(held_out[-1], inputs / f"{ids[-1]}_ASL.nii.gz")]
    dicom_nifti = _dicom_as_nifti(dicom_dir / DICOM_PARITY, inputs / f"{DICOM_PARITY}.nii.gz")
    for name, float32 in (("stock", False), ("float32", True)):
        cmd = nnunet_model.predict_command(
            model, [*nifti, dicom_nifti], work / name, probabilities=True, float32=float32
        )
        nnunet_model.run_checked(cmd, nnunet_model.nnunet_env(work, THREADS))
    records = _medseg_predict(model, nifti, work / "medseg", ["nifti", "probabilities"])
    exact = _medseg_predict(
        model,
        [*nifti, dicom_nifti],
        work / "medseg_float32",
        ["nifti", "probabilities"],
        "--blend",
        "float32",
    )
    dicom_records = _medseg_predict(
        model,
        [dicom_dir / s for s in DICOM_SERIES],
        work / "medseg_dicom",
        ["nifti", "dicom-seg", "probabilities"],
    )
    return {
        "work": work,
        "nifti": nifti,
        "records": records,
        "dicom_records": dicom_records,
        "exact": exact,
    }


def _labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def _nnunet_probabilities(path: Path) -> np.ndarray:
    """nnU-Net's ``CASE.npz``: ``(K, z, y, x)`` -> ``(K, X, Y, Z)``, medseg's order."""
    with np.load(path) as npz:
        return npz["probabilities"].astype(np.float32).transpose(0, 3, 2, 1)


def _medseg_probabilities_and_affine(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from medseg.io.probabilities import load_probabilities

    return load_probabilities(Path(path))


def _medseg_probabilities(path: Path) -> np.ndarray:
    return _medseg_probabilities_and_affine(path)[0]


def _interior(shape: tuple[int, ...]) -> np.ndarray:
    """Voxels at least ``EDGE`` voxels from every face."""
    mask = np.zeros(shape, bool)
    mask[tuple(slice(EDGE, max(n - EDGE, EDGE)) for n in shape)] = True
    return mask


def _decided(probabilities: np.ndarray) -> np.ndarray:
    """Voxels whose two most probable classes are at least ``DECIDED`` apart."""
    top = np.sort(probabilities, axis=0)
    return top[-1] - top[-2] >= DECIDED


def _check(ours: dict[str, Path], case: str, reference: str, work: Path) -> None:
    """medseg's label map and probabilities of ``case`` vs nnU-Net's (``reference`` run)."""
    label = _labels(ours["nifti"])[0]
    theirs = _labels(work / reference / f"{case}.nii.gz")[0]
    assert label.shape == theirs.shape, f"{case}: shape {label.shape} vs nnU-Net {theirs.shape}"
    diff = np.abs(
        _medseg_probabilities(ours["probabilities"])
        - _nnunet_probabilities(work / reference / f"{case}.npz")
    ).max(0)
    same = label == theirs
    inner = _interior(label.shape)
    decided = inner & _decided(_nnunet_probabilities(work / "float32" / f"{case}.npz"))
    counts = np.bincount(theirs.ravel().astype(np.int64), minlength=3).tolist()
    print(
        f"\n{case} vs nnU-Net {reference}: labels agree on {same.mean():.4%} of {same.size} "
        f"voxels, {same[inner].mean():.4%} of the interior, {same[decided].mean():.4%} of "
        f"its {decided.sum()} decided voxels; nnU-Net's label counts {counts}; |probability "
        f"diff| max {diff.max():.2e}, interior max {diff[inner].max():.2e}, "
        f"mean {diff.mean():.2e}"
    )
    assert min(counts) > 0, f"{case}: nnU-Net predicts only labels {counts}: agreement is trivial"
    limits = FLOAT32 if reference == "float32" else STOCK
    assert same.mean() >= limits[0], f"{case}: label agreement {same.mean():.4%}"
    assert diff.max() <= limits[1], f"{case}: max |probability diff| {diff.max():.2e}"


def _outputs(record: dict) -> dict[str, Path]:
    return {k: Path(v) for k, v in record["outputs"].items()}


def test_nifti_cases_succeed(interop) -> None:
    assert [r["status"] for r in interop["records"]] == ["ok"] * len(interop["nifti"])


def test_nifti_predictions_match_stock_nnunet(interop) -> None:
    """medseg's default for nnU-Net models gives nnU-Net's labels (>= 99.9% of voxels)."""
    for record in interop["records"]:
        _check(_outputs(record), record["case_id"], "stock", interop["work"])


def test_float32_blend_matches_nnunet_exact_blend(interop) -> None:
    """--blend float32 gives what nnU-Net computes with float32 blending, everywhere."""
    for record in interop["exact"]:
        _check(_outputs(record), record["case_id"], "float32", interop["work"])


def test_label_maps_have_the_input_geometry(interop) -> None:
    for image, record in zip(interop["nifti"], interop["records"], strict=True):
        source, outputs = nib.load(image), _outputs(record)
        label, affine = _labels(outputs["nifti"])
        assert label.shape == source.shape, image
        np.testing.assert_allclose(affine, source.affine, atol=1e-6, err_msg=str(image))
        nnunet_affine = _labels(interop["work"] / "stock" / outputs["nifti"].name)[1]
        np.testing.assert_allclose(affine, nnunet_affine, atol=1e-4, err_msg=str(image))
        probabilities, affine = _medseg_probabilities_and_affine(outputs["probabilities"])
        assert probabilities.shape[1:] == source.shape, image
        np.testing.assert_allclose(affine, source.affine, atol=1e-6)


def test_dicom_series_predicted(interop) -> None:
    import pydicom

    records = interop["dicom_records"]
    assert [r["status"] for r in records] == ["ok"] * len(DICOM_SERIES), records
    for record in records:
        seg = pydicom.dcmread(record["outputs"]["dicom-seg"])
        assert seg.Modality == "SEG"
        assert len(seg.SegmentSequence) == 2  # anterior, posterior
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == record["series_uid"]


def test_dicom_seg_holds_the_predicted_labels(interop) -> None:
    """End to end with real content (this model predicts both structures): the SEG passes
    dciodvfy and reads back equal to the NIfTI label map, frames in the series' geometry."""
    from dicom_tools import dciodvfy_errors, require_dciodvfy

    from medseg.io import read_dicom_series
    from medseg.io.dicom_seg_read import read_dicom_seg

    require_dciodvfy()
    for record in interop["dicom_records"]:
        outputs = _outputs(record)
        label = _labels(outputs["nifti"])[0]
        assert set(np.unique(label)) == {0, 1, 2}, record["input"]
        _, info = read_dicom_series(Path(record["input"]))
        assert dciodvfy_errors(outputs["dicom-seg"]) == []
        assert np.array_equal(read_dicom_seg(outputs["dicom-seg"], info), label)


def test_dicom_series_matches_nnunet_on_its_conversion(interop) -> None:
    """The series read by medseg vs the same series converted by SimpleITK, run by nnU-Net."""
    (record,) = [r for r in interop["dicom_records"] if r["input"].endswith(DICOM_PARITY)]
    outputs = _outputs(record)
    nnunet_affine = _labels(interop["work"] / "stock" / f"{DICOM_PARITY}.nii.gz")[1]
    np.testing.assert_allclose(_labels(outputs["nifti"])[1], nnunet_affine, atol=1e-4)
    _check(outputs, DICOM_PARITY, "stock", interop["work"])
