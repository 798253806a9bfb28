"""``medseg split``: k-fold cross-validation splits, made once by their own step."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.cli.console import add_command, out
from medseg.core.records import RecordError

HELP = "write k-fold cross-validation splits (or validate a given one)"
EPILOG = """\
Cases are shuffled with --seed and dealt into --folds folds; each case is
validated in exactly one fold. With --from, a split you made yourself (medseg's
format or nnU-Net's splits_final.json) is checked against the dataset and
written in medseg's format instead.

Examples:
  medseg split /data/Task04_Hippocampus -o splits.json --folds 5 --seed 12345
  medseg split /data/Task04_Hippocampus -o splits.json --from my_splits_final.json
"""


def add_parser(sub) -> None:
    p = add_command(sub, "split", HELP, EPILOG, run)
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder with dataset.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="JSON")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    p.add_argument("--seed", type=int, default=12345, help="shuffle seed (default: 12345)")
    p.add_argument(
        "--from",
        dest="given",
        type=Path,
        metavar="JSON",
        help="use this split (validated) instead of making one",
    )


def run(args: argparse.Namespace) -> int:
    from medseg.dataset.layout import load_dataset
    from medseg.io.atomic import write_text_atomic
    from medseg.io.guard import refuse_overlap
    from medseg.planning.splits import make_splits, validate_splits

    refuse_overlap([args.dataset, args.given], args.output)
    spec = load_dataset(args.dataset)
    ids = [c.case_id for c in spec.training]
    if args.given:
        try:
            given = json.loads(args.given.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RecordError(f"{args.given}: cannot read the split ({e})") from e
        record = validate_splits(given, ids, str(args.given))
    else:
        record = make_splits(ids, args.folds, args.seed)
    write_text_atomic(args.output, json.dumps(record, indent=1) + "\n")
    sizes = ", ".join(str(len(f["val"])) for f in record["folds"])
    out.print(
        f"{len(record['folds'])} folds (validation sizes {sizes}) written to {args.output}",
        highlight=False,
    )
    return 0
