"""In which order to hand cases to worker processes."""

from __future__ import annotations

from collections.abc import Sequence

from medseg.dataset.layout import Case


def input_bytes(case: Case) -> int:
    """Size on disk of a case's image file(s); 0 for what is not a file (a DICOM folder,
    a missing file: its job reports that)."""
    total = 0
    for path in case.images:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def largest_first(cases: Sequence[Case]) -> list[int]:
    """Indices of ``cases``, largest input first (stable for equal sizes).

    Workers take the next case when they finish one, so starting with the longest
    jobs leaves short ones to fill the end, and no worker idles while the last big
    case runs alone (longest-processing-time-first scheduling).
    """
    sizes = [input_bytes(c) for c in cases]
    return sorted(range(len(cases)), key=lambda i: -sizes[i])
