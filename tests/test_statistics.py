"""Measurements of predicted structures and preview pictures, on hand-made arrays."""

from __future__ import annotations

import itertools
import json

import matplotlib.image
import numpy as np
import pytest

from medseg.core.palette import PALETTE, class_colours
from medseg.core.records import check_schema
from medseg.core.volume import Volume
from medseg.evaluation.figures import OverlayCase, overlay_montage
from medseg.evaluation.preview import intensity_window, preview_figure, write_preview
from medseg.evaluation.statistics import (
    COLUMNS,
    STATISTICS_SCHEMA,
    statistics_csv,
    statistics_rows,
    structure_statistics,
    summary,
    write_statistics,
)

NAMES = {0: "background", 1: "cube", 2: "slab", 3: "absent"}


def rotated_affine() -> np.ndarray:
    """Spacing (0.5, 1.0, 2.5) mm, rotated about an oblique axis, shifted."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = np.deg2rad(35.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.5, 1.0, 2.5])
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    return affine


def cube_case():
    """A 10 mm cube (20 x 10 x 4 voxels at 0.5 x 1 x 2.5 mm) valued 1 .. 800 inside."""
    affine = rotated_affine()
    label = np.zeros((32, 24, 12), np.uint8)
    image = np.full((1, 32, 24, 12), -5.0, np.float32)
    label[5:25, 3:13, 2:6] = 1
    image[0, 5:25, 3:13, 2:6] = np.arange(1, 801, dtype=np.float32).reshape(20, 10, 4)
    label[28:30, 20:22, 9] = 2  # a 2 x 2 x 1 slab
    return Volume.label(label, affine), Volume.image(image, affine)


def test_a_cube_on_a_rotated_anisotropic_grid_measures_exactly():
    label, image = cube_case()
    record = structure_statistics(label, image, NAMES, case_id="c", intensity_unit="HU")
    check_schema(json.loads(json.dumps(record)), STATISTICS_SCHEMA, "record")
    cube = record["structures"][0]
    assert (cube["label"], cube["name"], cube["voxels"]) == (1, "cube", 800)
    assert cube["volume_ml"] == pytest.approx(1.0, rel=1e-12)  # (10 mm)^3
    assert cube["intensity"]["mean"] == pytest.approx(400.5, rel=1e-12)
    assert cube["intensity"]["std"] == pytest.approx(np.sqrt((800**2 - 1) / 12), rel=1e-12)
    assert (cube["intensity"]["min"], cube["intensity"]["max"]) == (1.0, 800.0)
    assert cube["bbox_voxel"] == {"min": [5, 3, 2], "max": [24, 12, 5]}
    affine = label.affine
    centre = affine @ [5 + 19 / 2, 3 + 9 / 2, 2 + 3 / 2, 1]
    assert cube["centroid_ras_mm"] == pytest.approx(centre[:3].tolist(), abs=1e-9)
    corners = np.array(
        [affine @ [i, j, k, 1] for i, j, k in itertools.product((5, 24), (3, 12), (2, 5))]
    )[:, :3]
    assert cube["bbox_ras_mm"]["min"] == pytest.approx(corners.min(0).tolist(), abs=1e-9)
    assert cube["bbox_ras_mm"]["max"] == pytest.approx(corners.max(0).tolist(), abs=1e-9)
    slab = record["structures"][1]
    assert slab["voxels"] == 4 and slab["volume_ml"] == pytest.approx(4 * 1.25 / 1000)
    assert slab["intensity"] == {"mean": -5.0, "std": 0.0, "min": -5.0, "max": -5.0}
    assert record["units"]["intensity"] == "HU" and record["units"]["volume"] == "mL"
    assert record["spacing_mm"] == pytest.approx([0.5, 1.0, 2.5])
    assert record["labels"] == {"1": "cube", "2": "slab", "3": "absent"}
    assert "centroid_lps_mm" not in cube


def test_an_empty_structure_has_no_values_and_lps_negates_x_and_y():
    label, image = cube_case()
    record = structure_statistics(label, image, NAMES, lps=True)
    absent = record["structures"][2]
    assert absent == {
        "label": 3,
        "name": "absent",
        "voxels": 0,
        "volume_ml": 0.0,
        "intensity": None,
        "bbox_voxel": None,
        "bbox_ras_mm": None,
        "centroid_ras_mm": None,
        "bbox_lps_mm": None,
        "centroid_lps_mm": None,
    }
    cube = record["structures"][0]
    x, y, z = cube["centroid_ras_mm"]
    assert cube["centroid_lps_mm"] == [-x, -y, z]
    ras, lps = cube["bbox_ras_mm"], cube["bbox_lps_mm"]
    assert lps["min"] == [-ras["max"][0], -ras["max"][1], ras["min"][2]]
    assert lps["max"] == [-ras["min"][0], -ras["min"][1], ras["max"][2]]
    # an all-background map, no image: every structure empty
    nothing = structure_statistics(label.with_array(np.zeros_like(label.array)), None, NAMES)
    assert [s["voxels"] for s in nothing["structures"]] == [0, 0, 0]
    assert summary(nothing) == {
        n: {"volume_ml": 0.0, "voxels": 0} for n in ("cube", "slab", "absent")
    }


def test_json_and_csv_written_with_a_row_per_structure(tmp_path):
    label, image = cube_case()
    record = structure_statistics(label, image, NAMES, case_id="c")
    write_statistics(record, tmp_path / "c.statistics.json", tmp_path / "c.statistics.csv")
    assert json.loads((tmp_path / "c.statistics.json").read_text()) == record
    lines = (tmp_path / "c.statistics.csv").read_text().splitlines()
    assert lines[0].split(",") == COLUMNS and len(lines) == 4
    assert lines[1].startswith("c,1,cube,800,")
    assert lines[3] == "c,3,absent,0,0.0" + "," * (len(COLUMNS) - 5)
    assert statistics_csv(statistics_rows(record)) == (tmp_path / "c.statistics.csv").read_text()
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_window_is_soft_tissue_for_hu_and_percentiles_otherwise():
    rng = np.random.default_rng(0)
    ct = np.concatenate([np.full(5000, -1000.0), rng.normal(40, 30, 5000)])
    assert intensity_window(ct) == (-160.0, 240.0)
    mr = np.concatenate([np.zeros(5000), rng.uniform(100, 900, 5000)])
    lo, hi = intensity_window(mr)
    assert 100 <= lo < 110 and 890 < hi <= 900  # the zeros (background) left out
    assert intensity_window(mr, hounsfield=True) == (-160.0, 240.0)


def _panel_pixels(fig, ax) -> np.ndarray:
    """The RGB pixels of one axes of a drawn figure."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    box = ax.get_window_extent()
    height = rgba.shape[0]
    rows = slice(int(height - box.y1), int(height - box.y0))
    return rgba[rows, int(box.x0) : int(box.x1), :3]


def _has_colour(pixels: np.ndarray, rgb) -> bool:
    return bool(np.any(np.all(np.abs(pixels.astype(int) - rgb) <= 2, axis=-1)))


def test_preview_draws_each_class_in_its_palette_colour(tmp_path):
    import matplotlib.pyplot as plt

    label, image = cube_case()
    names = {0: "background", 1: "cube", 2: "slab"}
    fig = preview_figure(image, label, names)
    try:
        axes = fig.axes
        assert len(axes) == 6  # one row of three per structure
        colours = class_colours(names)
        assert colours == {1: PALETTE[0], 2: PALETTE[1]}
        for row, value in ((axes[:3], 1), (axes[3:], 2)):
            for ax in row:  # each structure's outline in each of its own panels
                assert _has_colour(_panel_pixels(fig, ax), colours[value]), (ax.get_title(), value)
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend == ["cube", "slab"]
    finally:
        plt.close(fig)
    path = tmp_path / "c.preview.png"
    write_preview(image, label, {**names, 3: "absent"}, path, title="c")
    picture = matplotlib.image.imread(path)
    assert 500 <= picture.shape[1] <= 1200 and 500 <= picture.shape[0] <= 1200
    rgb = np.round(picture[..., :3] * 255)
    for colour in PALETTE[:3]:  # the absent class is in the legend too
        assert _has_colour(rgb, colour)


def test_qc_overlay_uses_a_colour_per_class(tmp_path):
    array = np.zeros((32, 24, 12), np.uint8)
    array[4:14, 4:14, 3:8], array[18:28, 8:20, 4:9] = 1, 2  # both on the axial slices 4-7
    label = Volume.label(array, np.diag([1.0, 1.0, 2.0, 1.0]))
    image = Volume.image(np.random.default_rng(0).normal(size=array.shape), label.affine)
    reference = label.with_array(np.where(array == 2, 0, array))
    path = tmp_path / "qc.png"
    overlay_montage([OverlayCase("c", image, label, reference)], path, "t", NAMES)
    rgb = np.round(matplotlib.image.imread(path)[..., :3] * 255)
    assert _has_colour(rgb, PALETTE[0]) and _has_colour(rgb, PALETTE[1])
    assert not _has_colour(rgb, (255, 0, 0))  # no longer red for every class


@pytest.mark.parametrize("series", ["mr_hippocampus_crop_study1", "ct_abdomen_jpeg2000"])
def test_lps_coordinates_agree_with_the_dicom_headers(dicom_dir, series):
    """A voxel's LPS centroid is ImagePositionPatient + column x PixelSpacing[1] x row
    direction + row x PixelSpacing[0] x column direction of its own slice's header."""
    import pydicom

    from medseg.io import read_dicom_series

    image, info = read_dicom_series(dicom_dir / series)
    array = np.zeros(image.spatial_shape, np.uint8)
    i, j, k = image.spatial_shape[0] // 2 + 5, image.spatial_shape[1] // 2 + 3, 1
    array[i, j, k] = 1
    record = structure_statistics(Volume.label(array, image.affine), image, NAMES, lps=True)
    ds = pydicom.dcmread(info.files[k], stop_before_pixels=True)
    rows, columns = np.array(ds.ImageOrientationPatient, float).reshape(2, 3)
    pixel = np.array(ds.PixelSpacing, float)
    expected = (
        np.array(ds.ImagePositionPatient, float) + i * pixel[1] * rows + j * pixel[0] * columns
    )
    dot = record["structures"][0]
    assert dot["centroid_lps_mm"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert dot["bbox_lps_mm"]["min"] == dot["bbox_lps_mm"]["max"] == dot["centroid_lps_mm"]
    assert dot["intensity"]["mean"] == float(image.array[0, i, j, k])
    assert (intensity_window(image.array[0]) == (-160.0, 240.0)) == (info.modality == "CT")
