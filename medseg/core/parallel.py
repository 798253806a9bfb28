"""Run a function over items in worker processes, results in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], processes: int = 1) -> Iterator[R]:
    """``map(fn, items)`` over ``processes`` worker processes (in this process if <= 1).

    Results come in input order as they complete. If ``fn`` raises, the error is
    re-raised here and the work not yet started is cancelled.
    """
    items = list(items)
    if processes <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    workers = min(processes, len(items))
    # a few items per task: less inter-process traffic, still balanced
    chunksize = max(1, len(items) // (workers * 8))
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(fn, items, chunksize=chunksize)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
