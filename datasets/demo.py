"""Generate medseg's demo dataset: small, CT-like, anisotropic, deterministic.

Each case is a crop of an abdomen-like CT: air, a body outline with a
subcutaneous fat ring, a vertebra, and two labelled structures of different
sizes: an enhancing organ (label 1, ~120 HU) and a hypodense lesion inside it
(label 2, ~35 HU). Intensities are Hounsfield-like (int16); voxels are
anisotropic and vary per case as in real CT collections (in-plane 0.7-0.9 mm,
slices 2-3 mm, typically 0.8 x 0.8 x 2.5 mm), so planning picks a median target
spacing and preprocessing really resamples (slice-wise, as nnU-Net does for
anisotropic data). Arrays are stored in a non-trivial orientation ("PLS": first
axis posterior, second left, third superior), so the pipeline's reorientation is
exercised. The same seed gives byte-identical files.

Layout written (MSD, the default)::

    OUT/dataset.json
    OUT/imagesTr/demo_000.nii.gz ...   OUT/labelsTr/demo_000.nii.gz ...
    OUT/imagesTs/demo_100.nii.gz ...   OUT/labelsTs/demo_100.nii.gz ... (reference for QC)

With ``--channels N`` (N > 1) each image holds N channels: the CT itself, then
contrasts derived from it deterministically (channel c: an inverted soft-tissue
window, steeper with c), as a 4D file in the MSD layout. ``--layout nnunet``
writes the nnU-Net v2 raw layout instead, one file per channel, test cases
likewise (nnU-Net's dataset.json: channel_names, labels name -> value,
file_ending)::

    OUT/imagesTr/demo_000_0000.nii.gz, demo_000_0001.nii.gz ...   OUT/labelsTr/demo_000.nii.gz
    OUT/imagesTs/demo_100_0000.nii.gz, demo_100_0001.nii.gz ...   OUT/labelsTs/demo_100.nii.gz

Usage::

    python datasets/demo.py OUT [--train 12] [--test 4] [--seed 0] [--force]
                                [--layout msd|nnunet] [--channels 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.volume import Volume
from medseg.io.volumes import write_volume

IN_PLANE_MM = (0.7, 0.8, 0.8, 0.9)
SLICE_MM = (2.0, 2.5, 2.5, 3.0)
FOV_MM = np.array([54.0, 54.0, 60.0])  # typical field of view (P-A, L-R, S-I)
#: Columns: the RAS direction of each stored axis (posterior, left, superior).
DIRECTIONS = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
LABELS = {"0": "background", "1": "organ", "2": "lesion"}


@dataclass(frozen=True)
class DemoCase:
    case_id: str
    image: Volume
    label: Volume


def _affine(shape, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = DIRECTIONS * spacing
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    affine[:3, 3] = -centre + np.array([0.0, 0.0, rng.uniform(-40, 40)]).round(1)
    return affine


def _ellipsoid(points: np.ndarray, centre, radii, angle: float) -> np.ndarray:
    """Boolean mask of points (..., 3) inside an ellipsoid rotated by ``angle`` about z."""
    c, s = np.cos(angle), np.sin(angle)
    d = points - np.asarray(centre)
    u = c * d[..., 0] + s * d[..., 1]
    v = -s * d[..., 0] + c * d[..., 1]
    r = np.asarray(radii)
    return (u / r[0]) ** 2 + (v / r[1]) ** 2 + (d[..., 2] / r[2]) ** 2 <= 1.0


def make_case(case_id: str, rng: np.random.Generator) -> DemoCase:
    """One demo case drawn from ``rng`` (shapes, positions and noise all random)."""
    in_plane, thick = float(rng.choice(IN_PLANE_MM)), float(rng.choice(SLICE_MM))
    spacing = np.array([in_plane, in_plane, thick])
    fov = FOV_MM * rng.uniform(0.88, 1.12, 3)
    shape = tuple(int(round(f / s)) for f, s in zip(fov, spacing, strict=True))
    affine = _affine(shape, spacing, rng)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    xy = world - centre
    half = spacing[:2] * np.array(shape[:2]) / 2  # half field of view (P-A, L-R) in mm
    body_r = (half[1] * rng.uniform(0.85, 0.95), half[0] * rng.uniform(0.75, 0.85), 1e9)
    body = _ellipsoid(xy, (0, 0, 0), body_r, 0.0)
    muscle = _ellipsoid(xy, (0, 0, 0), (body_r[0] * 0.88, body_r[1] * 0.88, 1e9), 0.0)
    spine = _ellipsoid(xy, (0, -body_r[1] * 0.6, 0), (7.0, 6.5, 1e9), 0.0)
    organ_c = (rng.uniform(-6, 6), rng.uniform(-2, 8), rng.uniform(-6, 6))
    organ_r = (rng.uniform(13, 19), rng.uniform(10, 15), rng.uniform(16, 24))
    organ = _ellipsoid(xy, organ_c, organ_r, rng.uniform(0, np.pi)) & muscle & ~spine
    lesion_c = np.array(organ_c) + rng.uniform(-0.35, 0.35, 3) * np.array(organ_r)
    lesion_r = (rng.uniform(5.5, 8.5), rng.uniform(5.5, 8.5), rng.uniform(6, 10))
    lesion = _ellipsoid(xy, lesion_c, lesion_r, rng.uniform(0, np.pi)) & organ

    hu = np.full(shape, -1000.0)
    hu[body] = -100.0
    hu[muscle] = 40.0
    hu[spine] = 400.0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), (3, 3, 1))
    hu[organ] = 120.0 + 60.0 * texture[organ]
    hu[lesion] = 35.0
    hu = ndimage.gaussian_filter(hu, (0.6, 0.6, 0.3))  # partial volume
    hu += rng.normal(0, 12.0, shape)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return DemoCase(case_id, Volume.image(image, affine), Volume.label(label, affine))


def derived_channel(image: np.ndarray, channel: int) -> np.ndarray:
    """Channel ``channel`` of a case from its CT ``image`` (int16): the CT itself for 0,
    else an inverted soft-tissue window (-160..240 HU), steeper for higher channels."""
    if channel == 0:
        return image
    window = np.clip(image.astype(np.int32), -160, 240) + 160
    return (1000 - window * (1 + channel)).astype(np.int16)


def _write_case(root: Path, case: DemoCase, split: str, layout: str, channels: int) -> str:
    """Write one case's image(s) and label under ``root``; return its first image's path."""
    images, labels = f"images{split}", f"labels{split}"
    ct = case.image.array[0]
    stack = [derived_channel(ct, c) for c in range(channels)]
    if layout == "nnunet":
        for c, array in enumerate(stack):
            write_volume(
                Volume.image(array, case.image.affine),
                root / images / f"{case.case_id}_{c:04d}.nii.gz",
            )
        first = f"./{images}/{case.case_id}_0000.nii.gz"
    else:
        write_volume(
            Volume.image(np.stack(stack), case.image.affine),
            root / images / f"{case.case_id}.nii.gz",
        )
        first = f"./{images}/{case.case_id}.nii.gz"
    write_volume(case.label, root / labels / f"{case.case_id}.nii.gz")
    return first


def _dataset_json(layout: str, channels: int, n_train: int, n_test: int, seed: int, cases):
    """dataset.json of the layout; ``cases`` are (case id, split, first image path)."""
    names = {str(c): "CT" if c == 0 else f"contrast{c}" for c in range(channels)}
    meta = {
        "name": "MedsegDemo",
        "description": "Synthetic CT-like abdomen crops: an organ and a lesion inside it. "
        "Generated by medseg's datasets/demo.py; labelsTs holds the test references.",
        "reference": "medseg",
        "licence": "CC0-1.0",
    }
    if layout == "nnunet":
        labels = {name: int(value) for value, name in LABELS.items()}
        return {
            **meta,
            "channel_names": names,
            "labels": labels,
            "numTraining": n_train,
            "file_ending": ".nii.gz",
            "generator": {
                "script": "datasets/demo.py",
                "seed": seed,
                "layout": layout,
                "channels": channels,
            },
        }
    training = [
        {"image": first, "label": first.replace("images", "labels", 1)}
        for _, split, first in cases
        if split == "Tr"
    ]
    generator = {"script": "datasets/demo.py", "seed": seed}
    if channels > 1:
        generator["channels"] = channels
    return {
        **meta,
        "tensorImageSize": "3D" if channels == 1 else "4D",
        "modality": names,
        "labels": LABELS,
        "numTraining": n_train,
        "numTest": n_test,
        "generator": generator,
        "training": training,
        "test": [first for _, split, first in cases if split == "Ts"],
    }


def write_dataset(
    out: Path,
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    *,
    layout: str = "msd",
    channels: int = 1,
) -> Path:
    """Write the demo dataset to ``out`` (which must not exist) and return it.

    ``layout`` is ``"msd"`` (one file per image, 4D with several channels) or
    ``"nnunet"`` (nnU-Net v2 raw: one file per channel, ``CASE_XXXX.nii.gz``);
    ``channels`` the channels per image (see :func:`derived_channel`). Written into a
    temporary folder beside ``out`` and renamed, so an interrupted run never leaves a
    half-made dataset. The same arguments give byte-identical files.
    """
    out = Path(out)
    if layout not in ("msd", "nnunet") or channels < 1:
        raise ValueError(
            f"layout must be 'msd' or 'nnunet' and channels >= 1, got {layout!r}, {channels}"
        )
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cases = []
        for i in range(n_train + n_test):
            is_test = i >= n_train
            cid = f"demo_{(100 + i - n_train) if is_test else i:03d}"
            case = make_case(cid, np.random.default_rng([seed, i]))
            split = "Ts" if is_test else "Tr"
            cases.append((cid, split, _write_case(tmp, case, split, layout, channels)))
        meta = _dataset_json(layout, channels, n_train, n_test, seed, cases)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def base_parser(description: str, n_train: int) -> argparse.ArgumentParser:
    """The arguments every demo generator takes (this one and ``cascade_demo.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument(
        "--train", type=int, default=n_train, help=f"training cases (default {n_train})"
    )
    parser.add_argument("--test", type=int, default=4, help="test cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--layout",
        choices=("msd", "nnunet"),
        default="msd",
        help="msd (default) or nnunet (nnU-Net v2 raw, one file per channel)",
    )
    return parser


def run_generator(args: argparse.Namespace, write, **options) -> int:
    """Write the dataset ``args`` ask for with ``write`` (``--force`` replaces OUT)."""
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    try:
        write(args.out, args.train, args.test, args.seed, layout=args.layout, **options)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.train} training and {args.test} test cases to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0], 12)
    parser.add_argument(
        "--channels",
        type=int,
        default=1,
        help="channels per image: the CT, then contrasts derived from it (default 1)",
    )
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error("--channels must be at least 1")
    return run_generator(args, write_dataset, channels=args.channels)


if __name__ == "__main__":
    sys.exit(main())
