"""``medseg predict``: segment scans, DICOM series or whole hospital folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, err, out
from medseg.core.errors import UsageError
from medseg.core.layout import PredictionDir
from medseg.core.options import Blend, Engine, OutputFormat, values

HELP = "segment volumes or DICOM series with a trained model (NIfTI, DICOM-SEG, RTSTRUCT out)"
EPILOG = """\
INPUT may be volume files (.nii.gz, .nii, .nrrd, .mha), DICOM series folders, or
folders of many studies: every DICOM series found below them is one case. Each
label map has the input's own geometry (same shape and affine; for DICOM, the
series' geometry); DICOM inputs also get a DICOM-SEG referencing the series and,
with --formats rtstruct, an RTSTRUCT: one ROI of closed planar contours per label
(for radiotherapy planning systems; a label absent from the scan is an ROI with no
contours). Volume-file inputs get neither: those formats are skipped for them.

Outputs are written atomically, and never over an input: an OUTDIR inside an
input folder, or an output that would replace an input file, is refused before
anything is done (exit 2); an existing file in OUTDIR that medseg did not write
is never overwritten (that case fails).

Channel files (nnU-Net v2 layout, as nnUNetv2_predict reads a folder): files named
<id>_<4 digits>.<suffix> in one folder (or among the files named) that share <id>
and have exactly the numbers 0000 .. N-1 (N: the model's channels) are one case
<id>, stacked in channel order; its outputs are <id>.nii.gz ... with channel 0's
geometry (BRATS_001_0000.nii.gz + BRATS_001_0001.nii.gz -> BRATS_001.nii.gz; for a
1-channel model CASE_0000.nii.gz -> CASE.nii.gz). A group with numbers all below N
but one missing is a failed case naming the missing file; a group with a number N
or above is not channel files: each file is a case named by its whole name. Any
other file (e.g. a 4D NIfTI holding every channel, MSD style) is one case. Each
channel file must hold one channel on channel 0's voxel grid, or the case fails.

Every scan passes a sanity gate first. Refused, with the reason: NaN/Inf voxels,
no intensity variation (blank), a 2D image or single slice, the wrong number of
channels, a DICOM modality the model was not trained on, a NIfTI header whose
sform and qform disagree or whose voxel size is not positive. Warned (recorded,
the case is still predicted): a voxel size more than 3x from the model's
training median on some axis, a NIfTI header without orientation.

Memory: before each case its peak memory is estimated from its size, the model
and the classes; the settings (tiles per network call, slab size of the way
back to the scan's grid) are chosen to stay under --max-memory, and a case that
cannot is refused with the estimate (recorded in the manifest as "memory"). The
class maps are brought back to the scan's grid slab by slab, so even a
512 x 512 x 1000 CT with many classes needs memory for its voxels, not voxels x
classes. While a case is predicted the next is read and the previous written.

Measurements and pictures: --statistics writes per case CASE.statistics.json
and CASE.statistics.csv (per structure of the model: volume in mL, voxel count,
mean/std/min/max of channel 0 inside it in the input's units, HU for CT; bounding
box in voxel indices and in patient coordinates, and centroid: mm, RAS+ as in
NIfTI, plus LPS for DICOM inputs; an empty structure has count 0 and null values),
records each structure's volume and count in the manifest, and rebuilds
OUTDIR/statistics.csv (one row per case and structure, every case that succeeded
in OUTDIR, earlier runs included). --preview writes CASE.preview.png: axial,
coronal and sagittal slices through each structure's centroid, each class filled
and outlined in its own colour-blind safe colour (as in the RTSTRUCT), with a
legend. A case whose measurements or picture cannot be made fails like any other.

A case that fails is recorded in
OUTDIR/manifest.jsonl with the reason (and the gate's findings) and the batch
goes on; the exit code is 1 if any case failed. --skip-existing makes an
interrupted batch resumable.

MODEL is a medseg model folder, an nnU-Net v2 results folder
(Trainer__Plans__Configuration with fold_*/checkpoint_final.pth), or a medseg model
package (model.zip, from 'medseg export-model'): the package is checked whole (member
names, sizes, SHA-256 of every file) and extracted once into --model-cache, in a
folder named by the zip's digest, reused while its files are intact.

Examples:
  medseg predict -m models/hippocampus -i scan.nii.gz -o out/
  medseg predict -m models/hippocampus -i /pacs/export/ -o out/ --skip-existing
  medseg predict -m nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres \\
      -i /data/study1 -o out/ --formats nifti dicom-seg probabilities --folds 0 1
  medseg predict -m models/hippocampus -i /data/study1 -o out/ --formats nifti rtstruct
  medseg predict -m models/hippocampus -i /pacs/export/ -o out/ --statistics --preview
  medseg predict -m hippocampus.zip -i scan.nii.gz -o out/
"""


def _fold(text: str):
    return text if text == "all" else int(text)


def add_parser(sub) -> None:
    p = add_command(sub, "predict", HELP, EPILOG, run)
    p.add_argument("-m", "--model", type=Path, required=True, metavar="MODEL")
    p.add_argument("-i", "--input", type=Path, nargs="+", required=True, metavar="INPUT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--no-mirroring", action="store_true", help="no mirroring test-time augmentation"
    )
    p.add_argument(
        "--step", type=float, default=0.5, help="sliding-window step, fraction of a patch"
    )
    p.add_argument("--folds", type=_fold, nargs="+", metavar="K", help="use only these folds")
    p.add_argument(
        "--formats",
        nargs="+",
        default=[OutputFormat.NIFTI.value, OutputFormat.DICOM_SEG.value],
        choices=values(OutputFormat),
        help="outputs (default: nifti dicom-seg; dicom-seg and rtstruct only for DICOM inputs)",
    )
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default: 4)")
    p.add_argument(
        "--blend",
        choices=values(Blend),
        default=Blend.AUTO.value,
        help="tile blending: float32 (exact), nnunet (float16 as nnU-Net v2, giving "
        "its labels); auto = nnunet for nnU-Net models (default: auto)",
    )
    p.add_argument(
        "--exact-resampling",
        action="store_true",
        help="bring the class maps back to the scan's grid with scipy in float64, "
        "bit-identical to nnU-Net's export (2-3x slower on large scans); default: torch "
        "on the device, equal to float32 rounding (labels differ on < 1e-6 of voxels)",
    )
    p.add_argument("--skip-existing", action="store_true", help="skip cases whose outputs exist")
    p.add_argument(
        "--statistics",
        action="store_true",
        help="also measure each structure (volume, intensities, bounding box, centroid): "
        "CASE.statistics.json and .csv, and the table OUTDIR/statistics.csv",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also draw CASE.preview.png: three orthogonal slices through each structure",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="cases predicted at once, each in its own process with its share of "
        "the CPU cores (default: 1, which is fastest on a few cores)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    p.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="bound on the peak memory of each case (all workers together): tile batch and "
        "slab size are chosen to fit, and a case that cannot fit is refused with its "
        "estimate (default: 80%% of the machine's memory, or what is free if less)",
    )
    p.add_argument(
        "--engine-cache",
        type=Path,
        default=Path.home() / ".cache" / "medseg" / "openvino",
        help="where converted OpenVINO networks are kept, named by a digest of their "
        "weights (default: ~/.cache/medseg/openvino)",
    )
    p.add_argument(
        "--model-cache",
        type=Path,
        default=Path.home() / ".cache" / "medseg" / "models",
        help="where a model package (-m model.zip) is extracted, in a folder named by the "
        "zip's digest (default: ~/.cache/medseg/models)",
    )
    p.add_argument(
        "--engine",
        choices=values(Engine),
        default=Engine.AUTO.value,
        help="what runs the network: torch, or openvino (CPU only, about 1.3x faster, "
        "float32, labels equal to 1e-5 of voxels; converting takes about 1.5 s per "
        "network); "
        "auto = openvino on CPU, torch on GPUs (default: auto)",
    )


def _summary_table(records: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="medseg predict")
    for col in ("case", "status", "seconds", "detail"):
        table.add_column(col)
    for r in records:
        style = {"ok": "green", "failed": "red", "skipped": "yellow"}[r["status"]]
        seconds = sum(r.get("seconds", {}).values())
        names = ", ".join(Path(p).name for p in r.get("outputs", {}).values())
        detail = escape(r["error"] or names)
        for finding in r.get("findings", []):
            if not finding["refuse"]:
                detail += f"\n[yellow]warning:[/] {escape(finding['message'])}"
        table.add_row(
            r["case_id"] or r["input"], f"[{style}]{r['status']}[/]", f"{seconds:.1f}", detail
        )
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.inference.inputs import (
        discover_inputs,
        refuse_unsafe_output_folder,
        refuse_unsafe_outputs,
    )

    refuse_unsafe_output_folder(args.input, args.output)  # before anything is read
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from medseg.inference.bundle import load_model
    from medseg.inference.engines import resolve_engine
    from medseg.nets.device import resolve_device

    if args.model.is_file():  # a model package: checked, extracted once, then a folder
        from medseg.inference.package import cached_model

        args.model = cached_model(args.model, args.model_cache)
    device = resolve_device(args.device)
    # The model (checked whole) comes before the inputs: its channel count decides how
    # channel files group into cases, hence the case ids and the output names checked next.
    bundle = load_model(args.model, device, args.folds)
    cases, unusable = discover_inputs(args.input, len(bundle.channel_names))
    extras = {"statistics": args.statistics, "preview": args.preview}
    refuse_unsafe_outputs(cases, args.output, args.formats, **extras)  # before any input is read
    engine = resolve_engine(args.engine, device)
    return _predict(args, bundle, device, engine, (cases, unusable))


def _memory_budget(gigabytes: float | None) -> int:
    """``--max-memory`` in bytes (its default when not given)."""
    from medseg.inference.memory import default_budget

    if gigabytes is None:
        return default_budget()
    if gigabytes <= 0:
        raise UsageError(f"--max-memory must be a positive number of GB, got {gigabytes}")
    return int(gigabytes * 1e9)


def _predict(args, bundle, device, engine: str, inputs) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medseg.inference.batch import BatchSettings, WorkerModel, run_batch
    from medseg.inference.engines import convert_bundle, use_openvino
    from medseg.inference.predict import PredictOptions

    cases, unusable = inputs
    worker_model = WorkerModel(args.model, args.folds)
    if engine is Engine.OPENVINO:
        irs = convert_bundle(bundle, args.engine_cache)
        worker_model = WorkerModel(args.model, args.folds, irs)
        if args.workers <= 1:
            use_openvino(bundle, irs)
    options = PredictOptions(
        step=args.step,
        mirroring=not args.no_mirroring,
        tile_batch=args.tile_batch,
        device=str(device),
        blend=Blend(args.blend),
        max_memory=_memory_budget(args.max_memory) // max(1, args.workers),
        exact_resampling=args.exact_resampling,
    )
    formats = tuple(OutputFormat(f) for f in args.formats)
    settings = BatchSettings(
        formats=formats,
        skip_existing=args.skip_existing,
        workers=args.workers,
        statistics=args.statistics,
        preview=args.preview,
    )
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        overall = bar.add_task("cases", total=len(cases))
        tiles = bar.add_task("tiles", total=None)

        def on_tiles(done: int, total: int) -> None:
            bar.update(tiles, completed=done, total=total)

        def on_case(record: dict) -> None:
            bar.update(overall, advance=1)
            bar.reset(tiles)

        result = run_batch(
            bundle,
            cases,
            args.output,
            options,
            settings,
            unusable=unusable,
            on_case=on_case,
            progress=on_tiles,
            model=worker_model,
        )
    out.print(_summary_table(result.records))
    counts = {s: sum(r["status"] == s for r in result.records) for s in ("ok", "skipped", "failed")}
    out.print(
        f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"manifest: {PredictionDir(args.output).manifest}",
        highlight=False,
    )
    return 1 if counts["failed"] else 0
