"""The demo dataset generator: deterministic, valid, CT-like, anisotropic, non-RAS."""

import hashlib

import numpy as np

from medseg.dataset import check_dataset, load_dataset
from medseg.geometry import orientation_code
from medseg.io import read_volume


def digest(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(demo_module, tmp_path):
    a = demo_module.write_dataset(tmp_path / "a", 2, 1, seed=3)
    b = demo_module.write_dataset(tmp_path / "b", 2, 1, seed=3)
    c = demo_module.write_dataset(tmp_path / "c", 2, 1, seed=4)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_demo_dataset_is_valid_msd(demo_dataset):
    spec = load_dataset(demo_dataset)
    assert spec.layout == "msd" and spec.channel_names == ("CT",)
    assert [n for _, n in spec.labels] == ["background", "organ", "lesion"]
    assert len(spec.training) == 6 and len(spec.test) == 2
    assert check_dataset(spec, include_test=True).ok
    assert (demo_dataset / "labelsTs" / f"{spec.test[0].case_id}.nii.gz").exists()


def test_demo_cases_look_like_ct(demo_dataset):
    sizes = []
    for case in load_dataset(demo_dataset).training:
        image = read_volume(case.images[0])
        label = read_volume(case.label, "label")
        assert image.array.dtype == np.int16
        sx, sy, sz = image.spacing
        assert np.isclose(sx, sy) and 0.65 < sx < 0.95 and 1.9 < sz < 3.1  # anisotropic CT
        assert orientation_code(image.affine) == "PLS"
        hu = image.array[0]
        assert hu.min() <= -900  # air
        assert 80 < np.median(hu[label.array == 1]) < 160  # enhancing organ
        assert 20 < np.median(hu[label.array == 2]) < 80  # hypodense lesion
        sizes.append((np.sum(label.array == 1), np.sum(label.array == 2)))
    organ, lesion = np.array(sizes).T
    spacings = {read_volume(c.images[0]).spacing for c in load_dataset(demo_dataset).training}
    assert len(spacings) > 1  # spacing varies between cases, as in real collections
    assert np.all(lesion > 0) and np.all(organ > 3 * lesion)  # two structures, different sizes
    assert len(set(organ)) == len(organ)  # every case differs
