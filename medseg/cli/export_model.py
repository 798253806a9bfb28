"""``medseg export-model``: a model folder as one checked file (model.zip) to send."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, out

HELP = "pack a model folder into one zip file to share (with a manifest of SHA-256 digests)"
EPILOG = """\
Packs the medseg model folder MODEL_DIR (from 'medseg export' or 'medseg select
--model') into one zip file, for a hospital or a collaborator: model.json,
plans.json and every fold's weights (safetensors), plus package.json, which says
what the model is (name, labels, channel names and modality, configurations and
their spacing in mm, cross-validation scores) and lists every file with its size
and SHA-256. The folder is checked first, as 'medseg predict' loads it. The zip
is written to a temporary file and renamed at the end; an existing file is never
replaced unless --force.

On the receiving side:
  medseg install-model model.zip             checks every file, then installs it
  medseg predict -m model.zip -i scan.nii.gz -o out/   or use the zip directly

Examples:
  medseg export-model results/model -o hippocampus.zip
  medseg export-model results/model -o hippocampus.zip --name hippocampus_v2 --force
"""


def add_parser(sub) -> None:
    p = add_command(sub, "export-model", HELP, EPILOG, run)
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a medseg model folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="ZIP")
    p.add_argument(
        "--name",
        help="the model's name, the folder it installs as (default: MODEL_DIR's name)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing ZIP")


def run(args: argparse.Namespace) -> int:
    from medseg.inference.package import export_package

    record = export_package(args.model, args.output, name=args.name, force=args.force)
    size = sum(f["size"] for f in record["files"])
    out.print(
        f"model {record['name']!r} ({len(record['files'])} files, {size / 1e6:.1f} MB) "
        f"packed into {args.output}",
        highlight=False,
    )
    return 0
