"""Run the real nnU-Net v2 on a dataset and read back what it decided and produced.

Test support for medseg's parity tests: they compare medseg's fingerprint, plans and
preprocessed arrays with what ``nnunetv2`` (2.8.1) writes for the same data.

nnU-Net v2 is driven through its console scripts in the running interpreter's ``bin``
folder, as subprocesses, with ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` pointing into a work folder. Only the planning and preprocessing
entry points are used: nnU-Net's trainer registry imports torchvision, which is broken
on CPU-only machines (see ``../shared/NNUNET_ORACLE.md``).

Where nnU-Net 2.8.1 puts things (``P = nnUNet_preprocessed/DatasetXXX_Name``):

- ``P/dataset_fingerprint.json`` -- ``nnUNetv2_extract_fingerprint``
- ``P/<plans_name>.json`` (``nnUNetPlans.json`` for ``ExperimentPlanner``) and a copy
  of ``dataset.json`` -- ``nnUNetv2_plan_experiment``
- ``P/<data_identifier>/CASE.b2nd`` (image, float32, ``(C, *spatial)``),
  ``CASE_seg.b2nd`` (labels, int16, ``(1, *spatial)``), ``CASE.pkl`` (properties), and
  ``P/gt_segmentations/CASE<file_ending>`` -- ``nnUNetv2_preprocess``. The data
  identifier is ``<plans_name>_<configuration>``, e.g. ``nnUNetPlans_3d_fullres``.

Spatial axes of preprocessed arrays are in SimpleITK order (z, y, x of the file as read;
with ``NibabelIOWithReorient`` that is S, A, R after reorienting to RAS), then permuted
by the plans' ``transpose_forward``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_ENDING = ".nii.gz"
DATASET_NAME = re.compile(r"Dataset(\d{3})_\S+")
STEP_TIMEOUT_S = 3600
TAIL_CHARS = 4000


@dataclass(frozen=True)
class OracleRun:
    """What one nnU-Net run produced.

    Attributes
    ----------
    raw : Path
        The ``nnUNet_raw/DatasetXXX_Name`` folder that was run.
    preprocessed : Path
        The ``nnUNet_preprocessed/DatasetXXX_Name`` folder.
    fingerprint : dict
        Contents of ``dataset_fingerprint.json``.
    plans : dict
        Contents of the plans file (``nnUNetPlans.json`` for the default planner);
        ``plans["plans_name"]`` names it.
    """

    raw: Path
    preprocessed: Path
    fingerprint: dict
    plans: dict


# --------------------------------------------------------------------------------------
# Conversion to the nnU-Net v2 raw layout
# --------------------------------------------------------------------------------------


def to_nnunet_raw(
    source: Path,
    dest_root: Path,
    dataset_id: int,
    name: str,
    *,
    reader: str | None = "NibabelIOWithReorient",
    cases: list[str] | None = None,
) -> Path:
    """Convert a dataset folder to the nnU-Net v2 raw layout.

    Parameters
    ----------
    source : Path
        An MSD-layout folder (``dataset.json`` with ``modality``, ``labels`` int->name
        and a ``training`` list of ``{image, label}`` paths; 4D images ``(X, Y, Z, C)``
        are split into one 3D file per channel) or an nnU-Net v2 raw folder
        (``dataset.json`` with ``channel_names``, ``labels`` name->int, ``file_ending``).
    dest_root : Path
        Folder to write ``DatasetXXX_name`` into (usually ``work / "nnUNet_raw"``).
    dataset_id : int
        nnU-Net dataset id, 1..999 (written with 3 digits).
    name : str
        Dataset name part, without spaces or path separators.
    reader : str or None
        If given, written as ``overwrite_image_reader_writer`` in ``dataset.json``; the
        default makes nnU-Net reorient NIfTI to RAS, as medseg does.
    cases : list of str, optional
        Restrict to these case ids (image file name without extension and, for v2
        sources, without the ``_0000`` channel suffix).

    Returns
    -------
    Path
        The new ``dest_root/DatasetXXX_name`` folder. 3D files are symlinked, not copied.

    Raises
    ------
    FileExistsError
        If the destination folder already exists and is not empty.
    ValueError
        For a bad id or name, an unknown layout, or requested cases that do not exist.
    """
    source = Path(source).resolve()
    dest = Path(dest_root) / dataset_folder_name(dataset_id, name)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} already exists and is not empty; pick another id/folder")
    meta = json.loads((source / "dataset.json").read_text())
    if "channel_names" in meta and "file_ending" in meta:
        entries, dataset_json = _v2_entries(source, meta)
    elif "modality" in meta and "training" in meta:
        entries, dataset_json = _msd_entries(source, meta)
    else:
        raise ValueError(
            f"{source / 'dataset.json'} is neither MSD ('modality', 'training') nor nnU-Net v2 "
            "('channel_names', 'file_ending')"
        )
    entries = _select_cases(entries, cases, source)
    (dest / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dest / "labelsTr").mkdir(exist_ok=True)
    ending = dataset_json["file_ending"]
    for case_id, (images, label) in entries.items():
        _write_case_images(images, dest / "imagesTr", case_id, ending)
        _link(label, dest / "labelsTr" / f"{case_id}{ending}")
    dataset_json["numTraining"] = len(entries)
    if reader is not None:
        dataset_json["overwrite_image_reader_writer"] = reader
    (dest / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return dest


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """Return ``DatasetXXX_name`` after checking the id and name nnU-Net can parse."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be 1..999 (3 digits for nnU-Net), got {dataset_id}")
    folder = f"Dataset{int(dataset_id):03d}_{name}"
    if not name or DATASET_NAME.fullmatch(folder) is None or "/" in name:
        raise ValueError(f"dataset name {name!r} must be non-empty, without spaces or '/'")
    return folder


def _case_id(path: str | Path, ending: str) -> str:
    file_name = Path(path).name
    if not file_name.endswith(ending):
        raise ValueError(f"{path} does not end with {ending!r}")
    return file_name[: -len(ending)]


def _msd_entries(source: Path, meta: dict) -> tuple[dict[str, tuple[list[Path], Path]], dict]:
    """Case id -> ([image], label) and the v2 dataset.json for an MSD folder."""
    entries = {}
    for item in meta["training"]:
        image = (source / item["image"]).resolve()
        entries[_case_id(image, NIFTI_ENDING)] = ([image], (source / item["label"]).resolve())
    modality = meta["modality"]
    dataset_json = {
        "name": meta.get("name", source.name),
        "description": meta.get("description", ""),
        "channel_names": {
            str(k): v for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))
        },
        "labels": {v: int(k) for k, v in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))},
        "file_ending": NIFTI_ENDING,
    }
    return entries, dataset_json


def _v2_entries(source: Path, meta: dict) -> tuple[dict[str, tuple[list[Path], Path]], dict]:
    """Case id -> (channel images, label) and a copy of dataset.json for a v2 folder."""
    ending = meta["file_ending"]
    dataset_json = {k: v for k, v in meta.items() if k != "dataset"}
    if "dataset" in meta:  # explicit file lists, relative to the dataset folder
        entries = {
            k: ([(source / p).resolve() for p in v["images"]], (source / v["label"]).resolve())
            for k, v in meta["dataset"].items()
        }
        return dict(sorted(entries.items())), dataset_json
    n_channels = len(meta["channel_names"])
    labels = sorted((source / "labelsTr").glob(f"*{ending}"))
    entries = {}
    for label in labels:
        case_id = _case_id(label, ending)
        images = [source / "imagesTr" / f"{case_id}_{c:04d}{ending}" for c in range(n_channels)]
        entries[case_id] = ([p.resolve() for p in images], label.resolve())
    return entries, dataset_json


def _select_cases(
    entries: dict[str, tuple[list[Path], Path]], cases: list[str] | None, source: Path
) -> dict[str, tuple[list[Path], Path]]:
    if cases is None:
        return entries
    missing = [c for c in cases if c not in entries]
    if missing:
        raise ValueError(f"cases not in {source}: {missing}; known e.g. {list(entries)[:5]}")
    wanted = set(cases)
    return {k: v for k, v in entries.items() if k in wanted}


def _link(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise ValueError(f"missing file {src}")
    dst.symlink_to(src)


def _write_case_images(images: list[Path], folder: Path, case_id: str, ending: str) -> None:
    """Link 3D channel files; split a single 4D NIfTI ``(X, Y, Z, C)`` into C 3D files."""
    if len(images) == 1 and ending in (".nii.gz", ".nii"):
        img = nib.load(images[0])
        if img.ndim == 4:
            for c in range(img.shape[3]):
                nib.save(_channel_image(img, c), folder / f"{case_id}_{c:04d}{ending}")
            return
        if img.ndim != 3:
            raise ValueError(f"{images[0]}: expected a 3D or 4D image, got shape {img.shape}")
    for c, image in enumerate(images):
        _link(image, folder / f"{case_id}_{c:04d}{ending}")


def _channel_image(img: nib.Nifti1Image, channel: int) -> nib.Nifti1Image:
    """Channel ``channel`` of a 4D NIfTI as a 3D image with the same grid and values.

    Values are taken after applying the file's scaling and written in that dtype, so the
    channel file reads back exactly as ``img.dataobj[..., channel]``.
    """
    data = np.asanyarray(img.dataobj[..., channel])
    header = img.header.copy()
    header.set_data_dtype(data.dtype)
    out = nib.Nifti1Image(data, img.affine, header)
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    if qform is not None:
        out.set_qform(qform, int(qcode))
    if sform is not None:
        out.set_sform(sform, int(scode))
    return out


# --------------------------------------------------------------------------------------
# Running nnU-Net
# --------------------------------------------------------------------------------------


def run_nnunet(
    raw_dataset: Path,
    work: Path,
    *,
    configurations: tuple[str, ...] | list[str] = ("3d_fullres",),
    gpu_memory_gb: float | None = None,
    processes: int = 2,
    preprocess: bool = True,
    planner: str = "ExperimentPlanner",
) -> OracleRun:
    """Run nnU-Net v2 fingerprint extraction, planning and (optionally) preprocessing.

    Runs ``nnUNetv2_extract_fingerprint -d ID -np N --clean``, ``nnUNetv2_plan_experiment
    -d ID -pl PLANNER [-gpu_memory_target GB]`` and ``nnUNetv2_preprocess -d ID
    -plans_name PLANS -c CONFIGS -np N`` from ``Path(sys.executable).parent``.
    Configurations the plans lack (e.g. ``3d_lowres`` for small images) are skipped by
    nnU-Net itself, silently.

    Parameters
    ----------
    raw_dataset : Path
        A ``DatasetXXX_Name`` folder in nnU-Net v2 raw layout. If it is not inside
        ``work / "nnUNet_raw"`` it is symlinked there.
    work : Path
        Work folder; gets ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``.
    configurations : sequence of str
        Configurations to preprocess.
    gpu_memory_gb : float, optional
        Passed as ``-gpu_memory_target`` (planner default, 8 GB, when None).
    processes : int
        Worker processes for fingerprinting and preprocessing (2 on a 2-core machine).
    preprocess : bool
        Whether to run ``nnUNetv2_preprocess``.
    planner : str
        Experiment planner class name (``-pl``).

    Returns
    -------
    OracleRun

    Raises
    ------
    RuntimeError
        If a step fails or times out; the message holds the command and its output tail.
    """
    work = Path(work).resolve()
    raw, dataset_id = _place_raw_dataset(Path(raw_dataset), work)
    env = _nnunet_env(work)
    bin_dir = Path(sys.executable).parent
    ident = ["-d", str(dataset_id)]
    np_args = ["-np", str(processes)]
    _run_step(
        [bin_dir / "nnUNetv2_extract_fingerprint", *ident, *np_args, "--clean", "--no_pbar"], env
    )
    plan_cmd = [bin_dir / "nnUNetv2_plan_experiment", *ident, "-pl", planner]
    if gpu_memory_gb is not None:
        plan_cmd += ["-gpu_memory_target", str(float(gpu_memory_gb))]
    preprocessed = work / "nnUNet_preprocessed" / raw.name
    plans_file = _plans_file(_run_step(plan_cmd, env), preprocessed)
    plans = json.loads(plans_file.read_text())
    if preprocess:
        pp_cmd = [bin_dir / "nnUNetv2_preprocess", *ident, "-plans_name", plans_file.stem]
        _run_step([*pp_cmd, "-c", *configurations, *np_args, "--no_pbar"], env)
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
    return OracleRun(raw=raw, preprocessed=preprocessed, fingerprint=fingerprint, plans=plans)


def _place_raw_dataset(raw_dataset: Path, work: Path) -> tuple[Path, int]:
    """Make ``work/nnUNet_raw/<name>`` the dataset (symlink if needed); return it and its id."""
    match = DATASET_NAME.fullmatch(raw_dataset.name)
    if match is None:
        raise ValueError(f"{raw_dataset.name!r} is not named DatasetXXX_Name (3-digit id)")
    dataset_id = int(match.group(1))
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / sub).mkdir(parents=True, exist_ok=True)
        clashes = [
            p.name
            for p in (work / sub).glob(f"Dataset{dataset_id:03d}_*")
            if p.name != raw_dataset.name
        ]
        if clashes:
            raise ValueError(f"dataset id {dataset_id} is already used in {work / sub}: {clashes}")
    placed = work / "nnUNet_raw" / raw_dataset.name
    target = raw_dataset.resolve()
    if not (target / "dataset.json").is_file():
        raise ValueError(f"{raw_dataset} has no dataset.json")
    if not placed.exists() and not placed.is_symlink():
        placed.symlink_to(target, target_is_directory=True)
    elif placed.resolve() != target:
        raise ValueError(f"{placed} exists and is not {target}")
    return placed, dataset_id


def _nnunet_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["nnUNet_raw"] = str(work / "nnUNet_raw")
    env["nnUNet_preprocessed"] = str(work / "nnUNet_preprocessed")
    env["nnUNet_results"] = str(work / "nnUNet_results")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run_step(cmd: list[str | Path], env: dict[str, str]) -> str:
    """Run one nnU-Net console script quietly; return its stdout, raise with its tail."""
    args = [str(c) for c in cmd]
    if not Path(args[0]).is_file():
        raise RuntimeError(f"{args[0]} not found: is nnunetv2 installed in {sys.prefix}?")
    try:
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        tails = _tails(exc.stdout, exc.stderr)
        raise RuntimeError(
            f"timed out after {STEP_TIMEOUT_S} s: {' '.join(args)}\n{tails}"
        ) from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"exit code {done.returncode}: {' '.join(args)}\n{_tails(done.stdout, done.stderr)}"
        )
    return done.stdout


def _tails(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def tail(text: str | bytes | None) -> str:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return (text or "")[-TAIL_CHARS:]

    return f"--- stdout (tail) ---\n{tail(stdout)}\n--- stderr (tail) ---\n{tail(stderr)}"


def _plans_file(plan_stdout: str, preprocessed: Path) -> Path:
    """The plans file ``nnUNetv2_plan_experiment`` reported writing."""
    found = re.findall(r"Plans were saved to (.+\.json)", plan_stdout)
    if found and Path(found[-1].strip()).is_file():
        return Path(found[-1].strip())
    candidates = [
        p
        for p in preprocessed.glob("*.json")
        if p.name not in ("dataset.json", "dataset_fingerprint.json", "splits_final.json")
    ]
    if not candidates:
        raise RuntimeError(
            f"no plans file in {preprocessed}; planner output:\n{plan_stdout[-TAIL_CHARS:]}"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


# --------------------------------------------------------------------------------------
# Reading preprocessed cases
# --------------------------------------------------------------------------------------


def configuration_plans(plans: dict, configuration: str) -> dict:
    """One configuration of a plans dict, with ``inherits_from`` resolved."""
    configs = plans["configurations"]
    if configuration not in configs:
        raise KeyError(f"configuration {configuration!r} not in plans; have {sorted(configs)}")
    config = dict(configs[configuration])
    parent = config.pop("inherits_from", None)
    if parent is None:
        return config
    return {**configuration_plans(plans, parent), **config}


def load_preprocessed_case(
    run: OracleRun, configuration: str, case_id: str
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one case nnU-Net preprocessed.

    Parameters
    ----------
    run : OracleRun
        A run made with ``preprocess=True`` for ``configuration``.
    configuration : str
        E.g. ``"3d_fullres"``; its ``data_identifier`` names the folder.
    case_id : str
        Case identifier (raw image name without channel suffix and extension).

    Returns
    -------
    data : np.ndarray
        float32, ``(C, *spatial)``: cropped to nonzero, normalized, resampled, in nnU-Net
        axis order (SimpleITK z, y, x order permuted by ``transpose_forward``).
    seg : np.ndarray
        Integer (int16 as written by 2.8.1), ``(1, *spatial)``; -1 marks background
        outside the nonzero mask.
    properties : dict
        The case's ``.pkl`` (spacing, crop box, shapes, class locations, reader info).
    """
    folder = run.preprocessed / configuration_plans(run.plans, configuration)["data_identifier"]
    stem = folder / case_id
    if Path(f"{stem}.b2nd").is_file():
        data, seg = _read_b2nd(Path(f"{stem}.b2nd")), _read_b2nd(Path(f"{stem}_seg.b2nd"))
    elif Path(f"{stem}.npz").is_file():  # nnUNetDatasetNumpy layout of older versions
        with np.load(f"{stem}.npz") as npz:
            data, seg = npz["data"], npz["seg"]
    else:
        raise FileNotFoundError(f"no preprocessed case {case_id!r} in {folder}")
    with open(f"{stem}.pkl", "rb") as f:
        properties = pickle.load(f)  # nnU-Net's own output, written in this test run
    return np.asarray(data, dtype=np.float32), np.asarray(seg), properties


def _read_b2nd(path: Path) -> np.ndarray:
    import blosc2

    return blosc2.open(urlpath=str(path), mode="r")[...]
