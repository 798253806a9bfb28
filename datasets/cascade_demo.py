"""Generate medseg's cascade demo dataset: CT-like abdomen crops large enough for 3d_lowres.

Each case is a crop of an abdomen-like CT, about 9 x 11 x 10.5 cm: air, a body
outline with a subcutaneous fat ring, a vertebra, the aorta, both kidneys and a
few bowel gas pockets (all unlabelled), and three labelled structures of very
different sizes: a large enhancing liver (label 1, ~100 HU) on the patient's
right, a medium spleen (label 2, ~130 HU) on the left, and one or two small
hypodense lesions inside the liver (label 3, ~35 HU). Intensities are
Hounsfield-like (int16); spacing varies per case as in ``demo.py`` (in-plane
0.7-0.9 mm, slices 2-3 mm, median 0.8 x 0.8 x 2.5 mm), the arrays are stored in
the same non-RAS orientation ("PLS") and the same seed gives byte-identical files.

The median case is about 41 x 112 x 134 voxels (S, A, R at 2.5 x 0.8 x 0.8 mm),
sized so that planning with a small memory budget (``--gpu-memory 0.04
--base-features 8``, see ``pipelines/config/demo_cascade.yaml``) gives a
full-resolution patch that sees about 6% of a case, so nnU-Net's rule adds
3d_lowres (a coarser spacing whose patch sees a quarter of a case) and
3d_cascade_fullres, beside 2d and 3d_fullres.

Layout written: as ``demo.py`` (MSD by default, ``--layout nnunet`` for the
nnU-Net v2 raw layout), case ids ``cascade_000`` ... (training) and
``cascade_100`` ... (test, with reference labels in ``labelsTs``).

Usage::

    python datasets/cascade_demo.py OUT [--train 20] [--test 4] [--seed 0] [--force]
                                        [--layout msd|nnunet]
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.volume import Volume


def _load_demo():
    """``datasets/demo.py`` (a script folder, not a package), imported once by file path."""
    name = "medseg_demo"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("demo.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules[name]


demo = _load_demo()

FOV_MM = np.array([90.0, 108.0, 105.0])  # typical field of view (P-A, L-R, S-I)
LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "lesion"}
#: Hounsfield-like values of each tissue before texture, blur and noise.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "soft": 30.0,
    "gas": -850.0,
    "bone": 450.0,
    "aorta": 190.0,
    "kidney": 165.0,
    "liver": 100.0,
    "spleen": 130.0,
    "lesion": 35.0,
}


def _grid(shape, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm, RAS) of every voxel relative to the volume centre, (X, Y, Z, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (idx - (np.array(shape) - 1) / 2) @ affine[:3, :3].T


def _anatomy(xy: np.ndarray, half: np.ndarray, rng: np.random.Generator) -> dict:
    """Boolean masks of every structure; ``half`` is the half field of view (P-A, L-R, S-I)
    in mm. Patient right is +x, anterior +y, superior +z (RAS)."""
    ell = demo._ellipsoid
    ry, rx = half[0] * rng.uniform(0.78, 0.86), half[1] * rng.uniform(0.86, 0.94)
    body = ell(xy, (0, 0, 0), (rx, ry, 1e9), 0.0)
    wall = ell(xy, (0, 0, 0), (rx - 7, ry - 6, 1e9), 0.0)
    spine = ell(xy, (0, -0.62 * ry, 0), (8.0, 7.0, 1e9), 0.0)
    aorta = ell(xy, (-4.0, -0.62 * ry + 12.0, 0), (5.0, 5.0, 1e9), 0.0)
    inside = wall & ~spine & ~aorta
    zc = half[2] * rng.uniform(-0.15, 0.25)  # organs sit a little above or below the centre
    liver_c = (0.42 * rx + rng.uniform(-4, 4), 0.08 * ry + rng.uniform(-4, 4), zc + 8)
    liver_r = (0.5 * rx * rng.uniform(0.9, 1.1), 0.62 * ry * rng.uniform(0.9, 1.1), 45.0)
    liver = ell(xy, liver_c, liver_r, rng.uniform(-0.3, 0.3)) & inside
    spleen_c = (-0.62 * rx + rng.uniform(-3, 3), -0.28 * ry + rng.uniform(-3, 3), zc + 12)
    spleen_r = (rng.uniform(7, 10), rng.uniform(11, 15), rng.uniform(18, 26))
    spleen = ell(xy, spleen_c, spleen_r, rng.uniform(0.4, 0.9)) & inside & ~liver
    kidneys = np.zeros(xy.shape[:-1], bool)
    for side in (1, -1):
        centre = (side * 0.36 * rx, -0.42 * ry, zc - 22 + rng.uniform(-5, 5))
        radii = (rng.uniform(6, 8), rng.uniform(9, 11), rng.uniform(16, 20))
        kidneys |= ell(xy, centre, radii, side * rng.uniform(0.3, 0.6))
    kidneys &= inside & ~liver & ~spleen
    lesion = np.zeros_like(kidneys)
    for _ in range(int(rng.integers(1, 3))):
        centre = np.array(liver_c) + rng.uniform(-0.45, 0.45, 3) * np.array(liver_r)
        lesion |= ell(xy, centre, rng.uniform(3.5, 7.0, 3) * (1, 1, 1.3), rng.uniform(0, np.pi))
    lesion &= liver
    gas = np.zeros_like(kidneys)
    for _ in range(3):
        centre = (rng.uniform(-0.5, 0.1) * rx, rng.uniform(0.1, 0.6) * ry, rng.uniform(-1, 1) * 40)
        gas |= ell(xy, centre, rng.uniform(3, 7, 3), rng.uniform(0, np.pi))
    gas &= inside & ~liver & ~spleen & ~kidneys
    masks = dict(fat=body, soft=wall, bone=spine, aorta=aorta, kidney=kidneys, gas=gas)
    return {**masks, "liver": liver & ~lesion, "spleen": spleen, "lesion": lesion}


def make_case(case_id: str, rng: np.random.Generator):
    """One case drawn from ``rng`` (spacing, field of view, anatomy and noise all random).

    Returns ``demo.DemoCase``: an int16 CT image and a uint8 label (0..3), stored PLS.
    """
    in_plane, thick = float(rng.choice(demo.IN_PLANE_MM)), float(rng.choice(demo.SLICE_MM))
    spacing = np.array([in_plane, in_plane, thick])
    fov = FOV_MM * rng.uniform(0.93, 1.07, 3)
    shape = tuple(int(round(f / s)) for f, s in zip(fov, spacing, strict=True))
    affine = demo._affine(shape, spacing, rng)
    masks = _anatomy(_grid(shape, affine), spacing * np.array(shape) / 2, rng)

    hu = np.full(shape, HU["air"])
    for tissue in ("fat", "soft", "bone", "aorta", "kidney", "gas", "liver", "spleen", "lesion"):
        hu[masks[tissue]] = HU[tissue]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), (2, 2, 0.7))
    texture /= texture.std()
    for tissue, amplitude in (("soft", 15.0), ("liver", 8.0), ("spleen", 5.0)):
        hu[masks[tissue]] += amplitude * texture[masks[tissue]]
    hu = ndimage.gaussian_filter(hu, (0.6, 0.6, 0.3))  # partial volume
    hu += rng.normal(0, 12.0, shape)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    label = np.zeros(shape, np.uint8)
    for value, tissue in ((1, "liver"), (2, "spleen"), (3, "lesion")):
        label[masks[tissue]] = value
    return demo.DemoCase(case_id, Volume.image(image, affine), Volume.label(label, affine))


def _dataset_json(layout: str, n_train: int, n_test: int, seed: int, cases) -> dict:
    """demo.py's dataset.json with this dataset's name, labels and generator."""
    meta = demo._dataset_json(layout, 1, n_train, n_test, seed, cases)
    meta["name"] = "MedsegCascadeDemo"
    meta["description"] = (
        "Synthetic CT-like abdomen crops: liver, spleen and small liver lesions, sized for "
        "the 3d_lowres + 3d_cascade_fullres configurations. Generated by medseg's "
        "datasets/cascade_demo.py; labelsTs holds the test references."
    )
    if layout == "nnunet":
        meta["labels"] = {name: int(value) for value, name in LABELS.items()}
    else:
        meta["labels"] = dict(LABELS)
    meta["generator"] = {**meta["generator"], "script": "datasets/cascade_demo.py"}
    return meta


def write_dataset(
    out: Path, n_train: int = 20, n_test: int = 4, seed: int = 0, *, layout: str = "msd"
) -> Path:
    """Write the cascade demo dataset to ``out`` (which must not exist) and return it.

    ``layout`` is ``"msd"`` or ``"nnunet"`` (see ``demo.py``). Written into a
    temporary folder beside ``out`` and renamed, so an interrupted run never leaves
    a half-made dataset. The same arguments give byte-identical files.
    """
    out = Path(out)
    if layout not in ("msd", "nnunet"):
        raise ValueError(f"layout must be 'msd' or 'nnunet', got {layout!r}")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cases = []
        for i in range(n_train + n_test):
            is_test = i >= n_train
            cid = f"cascade_{(100 + i - n_train) if is_test else i:03d}"
            case = make_case(cid, np.random.default_rng([seed, i]))
            split = "Ts" if is_test else "Tr"
            cases.append((cid, split, demo._write_case(tmp, case, split, layout, 1)))
        meta = _dataset_json(layout, n_train, n_test, seed, cases)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    args = demo.base_parser(__doc__.split("\n\n")[0], 20).parse_args(argv)
    return demo.run_generator(args, write_dataset)


if __name__ == "__main__":
    sys.exit(main())
