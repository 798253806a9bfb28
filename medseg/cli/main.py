"""``medseg``: the command-line entry point."""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from medseg import __version__
from medseg.cli import (
    check,
    convert,
    evaluate,
    export,
    export_model,
    fingerprint,
    info,
    install_model,
    plan,
    predict,
    preprocess,
    previous_stage,
    qc,
    select,
    serve,
    split,
    status,
    summary,
    train,
    validate,
)
from medseg.cli.console import err, setup_logging
from medseg.cli.errors import EXIT_INTERRUPTED, describe_error

COMMANDS = (
    info,
    check,
    convert,
    fingerprint,
    plan,
    split,
    preprocess,
    train,
    validate,
    previous_stage,
    predict,
    evaluate,
    select,
    export,
    export_model,
    install_model,
    qc,
    summary,
    status,
    serve,
)

DESCRIPTION = """\
medseg: self-configuring 3D medical image segmentation (the nnU-Net method),
with DICOM in and DICOM-SEG out.

Typical use:
  medseg info scan.nii.gz                  what is in a volume or DICOM folder
  medseg check path/to/Task04_Hippocampus  validate every case of a dataset
  medseg convert dicom_folder/ scan.nii.gz convert a DICOM series to NIfTI

The pipeline, one command per stage (the Snakemake workflow runs them for you):
  medseg fingerprint DATASET -o fingerprint.json
  medseg plan fingerprint.json -o plans.json
  medseg split DATASET -o splits.json
  medseg preprocess DATASET plans.json --config 3d_fullres -o pre/3d_fullres
  medseg train pre/3d_fullres plans.json splits.json --config 3d_fullres \\
      --fold 0 -o models/3d_fullres/fold_0       trains, then validates the fold
  medseg validate pre/3d_fullres plans.json splits.json --fold 0 \\
      -o models/3d_fullres/fold_0                the fold validation on its own
  medseg select models/ --dataset DATASET --plans plans.json --splits splits.json \\
      -o cv/ --model model/                     best configuration or ensemble from CV
  medseg evaluate predictions/ labels/          Dice, HD95, NSD per class and case
  medseg status results/NAME                    each training job's epoch, Dice, time left
  medseg predict -m MODEL -i scan.nii.gz dicom_folder/ -o out/
  medseg export-model model/ -o model.zip       one checked file to share a model
  medseg install-model model.zip                check every file, then install it
  medseg serve serve.yaml                       a DICOM node: C-STORE in, DICOM-SEG back

Run 'medseg COMMAND --help' for the options of each command.

Exit codes: 0 done; 1 some cases failed or problems were found (each named);
2 bad usage or input (the message names the path and what to do); 3 internal
error (the message names a file with the traceback for a bug report).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of any error (for bug reports)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # every error ends as one line and an exit code, never a traceback
        if args.debug:
            raise
        message, code = describe_error(e, args.command)
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
