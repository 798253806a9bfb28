"""``medseg summary``: what a workflow results folder holds, as tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from rich.table import Table

from medseg.cli.console import add_command, out
from medseg.core.layout import PREPROCESS_SUMMARY, FoldDir, Results, fold_name
from medseg.core.plans import Plans

#: Names inside any fold folder, relative to it (for globbing across folds).
IN_FOLD = FoldDir(Path())

HELP = "summarise a workflow results folder (data, plans, cross-validation, model, test)"
EPILOG = """\
Reads the files the workflow wrote (dataset_check.json, fingerprint.json,
plans.json, splits.json, preprocessed/*, models/*, cv/selection.json, model/,
predictions/) and prints what they say: the stages, the plans (with how many
folds of each configuration have a final checkpoint: a configuration planned but
not trained says so), the cross-validation Dice per class of every configuration
and ensemble, the chosen model, and the test-set scores. The Snakemake workflow
prints this at the end.

Examples:
  medseg summary results/demo
"""


def add_parser(sub) -> None:
    p = add_command(sub, "summary", HELP, EPILOG, run)
    p.add_argument("results", type=Path, metavar="RESULTS", help="the workflow's output folder")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stages(results: Path) -> Table:
    table = Table(title=f"medseg results in {results}")
    table.add_column("stage")
    table.add_column("result")
    r = Results(results)
    check = _read(r.dataset_check)
    if check:
        table.add_row(
            "dataset", f"{check['n_valid']} of {check['n_cases']} cases valid ({check['dataset']})"
        )
    fp = _read(r.fingerprint)
    if fp:
        excluded = f", {len(fp['excluded'])} excluded" if fp.get("excluded") else ""
        table.add_row(
            "fingerprint",
            f"{len(fp['cases'])} cases{excluded}, channels {', '.join(fp['channel_names'])}",
        )
    splits = _read(r.splits)
    if splits:
        sizes = "/".join(str(len(f["val"])) for f in splits["folds"])
        table.add_row("splits", f"{len(splits['folds'])} folds, validation cases {sizes}")
    for folder in sorted(r.preprocessed("*").parent.glob("*")):
        done = _read(folder / PREPROCESS_SUMMARY)
        if done:
            table.add_row(
                f"preprocessed {folder.name}", f"{len(done['cases'])} cases in {done['seconds']} s"
            )
    for metrics in sorted(r.models.glob(f"*/fold_*/{IN_FOLD.validation_metrics}")):
        m = _read(metrics)
        if m:
            dice = ", ".join(f"{k} {_fmt(v)}" for k, v in m["mean_dice"].items())
            table.add_row(
                f"trained {metrics.parent.parent.parent.name} {metrics.parent.parent.name}",
                f"validation Dice {dice}",
            )
    return table


def trained_status(results: Path, plans: Plans | Mapping) -> dict[str, str]:
    """What the results folder holds of each planned configuration: how many of the
    split's folds have a final checkpoint (``models/<config>/fold_<k>/checkpoint_final
    .safetensors``), or why none has."""
    plans = Plans.of(plans)
    r = Results(results)
    splits = _read(r.splits)
    n_folds = len(splits["folds"]) if splits and isinstance(splits.get("folds"), list) else None
    status = {}
    for name in plans.configurations:
        folder = r.models / name
        done = {p.parent.name for p in folder.glob(f"fold_*/{IN_FOLD.checkpoint()}")}
        if n_folds is not None:
            done &= {fold_name(k) for k in range(n_folds)}
        if done or folder.is_dir():  # a fold started but none finished reads "0 of K folds"
            status[name] = f"{len(done)} of {n_folds} folds" if n_folds else f"{len(done)} fold(s)"
        else:
            status[name] = "not trained"
    return status


def _cv_table(selection: dict, plans: Plans) -> Table:
    labels = [(v, n) for v, n in plans.labels.pairs if v != 0]
    table = Table(title=f"cross-validation Dice ({selection['cases']} cases)")
    for col in ("configuration", *(n for _, n in labels), "mean"):
        table.add_column(col)
    for key, c in selection["candidates"].items():
        cells = [_fmt(c["mean"][str(v)]["dice"]) for v, _ in labels]
        name = f"{key} (chosen)" if key == selection["chosen"] else key
        table.add_row(
            name,
            *cells,
            _fmt(c["foreground_dice"]),
            style="bold green" if key == selection["chosen"] else None,
        )
    return table


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _outputs(results: Path, selection: dict | None) -> Table:
    r = Results(results)
    table = Table(title="outputs", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("where")
    if selection:
        steps = selection["postprocessing"]["steps"]
        post = ", ".join(f"{s['method']} {s['classes'] or 'all foreground'}" for s in steps)
        table.add_row(
            "model", f"{r.model.root} ({selection['chosen']}; postprocessing: {post or 'none'})"
        )
    test = _read(r.predictions.summary)
    manifest = r.predictions.manifest
    if manifest.exists():
        lines = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
        ok = sum(r["status"] == "ok" for r in lines)
        detail = f"{ok} of {len(lines)} cases"
        if test:
            per_label = ", ".join(
                f"{test['labels'][k]} {_fmt(m['dice'])}" for k, m in test["mean"].items()
            )
            detail += f"; test Dice {per_label}"
        table.add_row("test predictions", f"{manifest.parent} ({detail})")
    for name, path in (("QC overlays", r.qc), ("training curves", r.curves)):
        if path.exists():
            table.add_row(name, str(path))
    return table


def run(args: argparse.Namespace) -> int:
    from medseg.cli.plan import plans_table

    out.print(_stages(args.results))
    r = Results(args.results)
    document = _read(r.plans)
    plans = Plans.from_dict(document, str(r.plans)) if document else None
    if plans:
        out.print(plans_table(plans, trained_status(args.results, plans)))
    selection = _read(r.selection)
    if selection and plans:
        out.print(_cv_table(selection, plans))
    out.print(_outputs(args.results, selection))
    return 0
