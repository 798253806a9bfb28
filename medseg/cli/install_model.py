"""``medseg install-model``: check a model package (zip) member by member, then install it."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.console import add_command, out

HELP = "check a model package (zip from 'medseg export-model') and install it as a model folder"
EPILOG = """\
Checks the package before anything is written: it is a zip; its package.json is
of a schema version this medseg reads; no member name is absolute or holds '..',
a backslash or a drive letter; no member is a symbolic link or a pickled file;
the members' total uncompressed size is under --max-size (a zip bomb guard);
every member is listed with its size and SHA-256, they match, and nothing else
is in the zip. Then it extracts into a temporary folder beside DIR/NAME, checks
the model folder as 'medseg predict' loads it, and renames it into place. Any
failure names the zip and the member, and nothing is installed.

An existing install is never replaced unless --force (and then only a model
folder). nnU-Net model zips (nnUNetv2_export_model_to_zip) hold pickled
checkpoints and are refused. 'medseg predict -m model.zip' does the same checks
and keeps its own extracted copy, so installing is optional.

Examples:
  medseg install-model hippocampus.zip
  medseg install-model hippocampus.zip --into /srv/medseg/models --force
  medseg install-model hippocampus.zip --check       check only, install nothing
  medseg predict -m /srv/medseg/models/hippocampus -i scan.nii.gz -o out/
"""

DEFAULT_INTO = Path.home() / ".local" / "share" / "medseg" / "models"


def _gigabytes(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of GB, got {text}")
    return value


def add_parser(sub) -> None:
    p = add_command(sub, "install-model", HELP, EPILOG, run)
    p.add_argument("package", type=Path, metavar="ZIP", help="a model package")
    p.add_argument(
        "--into",
        type=Path,
        default=DEFAULT_INTO,
        metavar="DIR",
        help="the folder of installed models (default: ~/.local/share/medseg/models)",
    )
    p.add_argument("--name", help="install as DIR/NAME (default: the package's name)")
    p.add_argument("--force", action="store_true", help="replace an existing install")
    p.add_argument("--check", action="store_true", help="only check the package; install nothing")
    p.add_argument(
        "--max-size",
        type=_gigabytes,
        default=20.0,
        metavar="GB",
        help="refuse a package whose members add up to more than this, uncompressed (default: 20)",
    )


def run(args: argparse.Namespace) -> int:
    from medseg.inference.package import install_package, verify_package

    limit = int(args.max_size * 1e9)
    if args.check:
        record = verify_package(args.package, max_bytes=limit)
        out.print(
            f"{args.package}: model {record['name']!r} intact "
            f"({len(record['files'])} files checked)",
            highlight=False,
        )
        return 0
    folder = install_package(
        args.package, args.into, name=args.name, replace=args.force, max_bytes=limit
    )
    out.print(f"installed {folder}", highlight=False)
    out.print(f"use it: medseg predict -m {folder} -i SCAN -o OUTDIR", highlight=False)
    return 0
