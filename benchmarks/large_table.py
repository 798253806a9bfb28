"""The side-by-side table of ``benchmarks/large.py``: medseg, nnU-Net, ratio per figure."""

from __future__ import annotations

TOOLS = ("medseg", "nnU-Net")


def _cell(run: dict, key: str, scale: float, fmt: str) -> str:
    if key == "peak" and run["status"].startswith("killed") and run.get(key):
        return f">{run[key] / scale:{fmt}} (killed)"
    if run.get(key) is None or run["status"] != "ok":
        return _short(run["status"])
    return f"{run[key] / scale:{fmt}}"


def _short(status: str) -> str:
    if status.startswith("killed by the benchmark"):
        return "killed (mem cap)"
    if status.startswith("out of memory"):
        return "out of memory"
    if status.startswith("refused"):
        return "refused (memory)"
    return "timed out" if status.startswith("timed out") else "failed"


def _ratio(a: dict, b: dict, key: str) -> str:
    if a["status"] != "ok" or b["status"] != "ok" or not b.get(key):
        return "n/a"
    return f"{a[key] / b[key]:.2f}"


def table_rows(pre: dict | None, predictions: list[dict]) -> list[tuple[str, str, str, str]]:
    """(row, medseg, nnU-Net, ratio) for every measured figure."""
    rows = []
    metrics = (("wall (s)", "wall", 1.0, ".1f"), ("peak RSS (MB)", "peak", 1e6, ".0f"))
    if pre is not None:
        what = f"preprocess {pre['info']['cases']} cases"
        for label, key, scale, fmt in (*metrics, ("disk (MB)", "disk", 1e6, ".1f")):
            ours, theirs = pre["medseg"], pre["nnU-Net"]
            cells = (_cell(ours, key, scale, fmt), _cell(theirs, key, scale, fmt))
            rows.append((f"{what}: {label}", *cells, _ratio(ours, theirs, key)))
    for p in predictions:
        what = f"predict {p['size']}x{p['size']}x{p['z']}, {p['classes']} classes"
        ours, theirs = p["medseg"], p["nnU-Net"]
        for label, key, scale, fmt in metrics:
            cells = (_cell(ours, key, scale, fmt), _cell(theirs, key, scale, fmt))
            rows.append((f"{what}: {label}", *cells, _ratio(ours, theirs, key)))
        agree = "n/a" if p["agreement"] is None else f"{p['agreement']:.4%}"
        rows.append((f"{what}: labels agree", agree, "", ""))
    return rows


def print_table(rows, header: str) -> None:
    width = max([len(r[0]) for r in rows] + [10])
    print(f"\n{header}\n")
    print(f"| {'':<{width}} | {'medseg':>16} | {'nnU-Net':>16} | {'ratio':>5} |")
    print(f"| {'-' * width} | {'-' * 16} | {'-' * 16} | {'-' * 5} |")
    for label, ours, theirs, ratio in rows:
        print(f"| {label:<{width}} | {ours:>16} | {theirs:>16} | {ratio:>5} |")
