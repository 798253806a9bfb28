"""The GPU kit's table: ``results.md`` (markdown) beside ``results.json``.

One row per measured figure; a part or a tool that failed or ran out of its time budget
says so in its cells, and the other rows stand. Ratios are medseg / nnU-Net: above 1 is
faster for iterations/s, slower for seconds per case.
"""

from __future__ import annotations

ROWS = (
    "(a) gpu tests",
    "(b) training iterations/s",
    "(c) mean Dice",
    "(c) Dice per class",
    "(c) training iterations/s",
    "(d) prediction s/case",
    "(d) labels agree",
)
HEADER = "| part | measure | medseg | nnU-Net | medseg / nnU-Net | status |"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(tool: dict | None, key: str, digits: int = 3) -> str:
    if not tool:
        return "not run"
    if tool.get("status") != "ok":
        return tool.get("status") or "not run"
    return _num(tool.get(key), digits)


def _ratio(part: dict, key: str) -> str:
    ours, theirs = (part.get(t) or {} for t in ("medseg", "nnunet"))
    a, b = ours.get(key), theirs.get(key)
    return f"{a / b:.2f}" if a is not None and b else "-"


def _status(part: dict | None) -> str:
    if not part:
        return "not run"
    return f"{part['status']}, {part.get('seconds', 0):.0f} of {part.get('allowed', 0):.0f} s"


def _tests_row(part: dict | None) -> list[str]:
    if not part or "passed" not in part:
        return [
            "(a) gpu tests",
            "pytest -m gpu",
            part.get("status", "-") if part else "-",
            "-",
            "-",
        ]
    counts = f"{part['passed']} passed, {part['failed'] + part['errors']} failed"
    counts += f", {part['skipped']} skipped"
    return ["(a) gpu tests", f"pytest -m gpu, {len(part['files'])} files", counts, "-", "-"]


def _per_class(tool: dict | None) -> str:
    if not tool or tool.get("status") != "ok":
        return _cell(tool, "dice")
    return ", ".join(f"{k} {v:.3f}" for k, v in tool["dice"].items())


def rows(results: dict) -> list[list[str]]:
    """The table's rows (without header), in :data:`ROWS` order."""
    parts = results["parts"]
    speed, dice, predict = (parts.get(k) or {} for k in ("speed", "dice", "predict"))
    plans = results.get("plans", {})
    shape = "x".join(map(str, plans.get("patch_size", [])))
    batch = f"batch {plans.get('batch_size')} x {shape}"
    timed = f"{speed.get('warmup')} + {speed.get('iterations')} timed"
    schedule = f"{dice.get('epochs')} x {dice.get('epoch_iterations')} iterations"
    cases = (predict.get("result") or {}).get("cases", predict.get("cases"))
    agree = (predict.get("result") or {}).get("labels_agree")
    pr = predict.get("result") or {}
    pr_tools = {
        t: {**(pr.get(t) or {}), "status": predict.get("status")} for t in ("medseg", "nnunet")
    }
    return [
        [*_tests_row(parts.get("tests")), _status(parts.get("tests"))],
        ["(b) training iterations/s", f"{batch}, {timed}"]
        + [_cell(speed.get("medseg"), "its"), _cell(speed.get("nnunet"), "its")]
        + [_ratio(speed, "its"), _status(parts.get("speed"))],
        ["(c) mean Dice", f"fold 0 after {schedule}, own validation"]
        + [_cell(dice.get("medseg"), "mean_dice"), _cell(dice.get("nnunet"), "mean_dice")]
        + [_ratio(dice, "mean_dice"), _status(parts.get("dice"))],
        ["(c) Dice per class", "same runs"]
        + [_per_class(dice.get("medseg")), _per_class(dice.get("nnunet")), "-", "-"],
        ["(c) training iterations/s", "same runs, after the first epoch, epoch ends included"]
        + [_cell(dice.get("medseg"), "its"), _cell(dice.get("nnunet"), "its")]
        + [_ratio(dice, "its"), "-"],
        ["(d) prediction s/case", f"{cases} cases, one nnU-Net model, mirroring"]
        + [
            _cell(pr_tools["medseg"], "seconds_per_case"),
            _cell(pr_tools["nnunet"], "seconds_per_case"),
        ]
        + [_ratio(pr, "seconds_per_case"), _status(parts.get("predict"))],
        ["(d) labels agree", "same cases, medseg vs nnU-Net's predictor"]
        + [f"{100 * agree:.3f}%" if agree is not None else "-", "-", "-", "-"],
    ]


def markdown(results: dict) -> str:
    """``results.md``: a few lines on the run, then the table."""
    info = results.get("info", {})
    stubs = ", ".join(results["stubs"]) or "none"
    settings = results.get("settings", {})
    workers = f"data workers: medseg {settings.get('workers')}, nnU-Net "
    workers += f"{settings.get('nnunet_workers') or 'its default'}"
    workers += f", nnU-Net torch.compile {settings.get('nnunet_compile', 'default')}"
    lines = [
        f"# medseg vs nnU-Net v2 on {info.get('gpu') or results['device']}"
        + (" (smoke run)" if results.get("smoke") else ""),
        "",
        f"python {info.get('python')}, torch {info.get('torch')}, {info.get('cpus')} CPUs, "
        f"nnunetv2 {info.get('nnunetv2')}; kit built from medseg "
        f"{results.get('kit', {}).get('medseg_commit')}, {results.get('cases')} Hippocampus "
        f"cases; stubs: {stubs}; {workers}.",
        f"Wall {results.get('wall_seconds', 0):.0f} s ({results.get('setup_seconds', 0):.0f} s "
        f"set-up, parts within {results['budgets']['total']:.0f} s).",
        "",
        HEADER,
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    notes = [f"- {k}: {p['note']}" for k, p in results["parts"].items() if p.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    errors = [f"- {name}: {text}" for name, text in results.get("errors", {}).items()]
    if errors:
        lines += ["", "Failures (log tails in kit_run.log):", *errors]
    return "\n".join(lines) + "\n"
