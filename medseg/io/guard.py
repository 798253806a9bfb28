"""Inputs are read-only: refuse any output that could overwrite, replace or sit inside one.

Every command calls :func:`refuse_overlap` with its inputs and outputs before it
does any work. Paths are compared after resolving symbolic links (and, for files
that exist, by identity, so a hard link counts as the same file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medseg.core.errors import OutputError


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    return child.resolve().is_relative_to(folder.resolve())


def refuse_overlap(
    inputs: Iterable[Path | None], output: Path, *, replaces: bool = False, what: str = "output"
) -> None:
    """Raise :class:`OutputError` if writing ``output`` could harm one of ``inputs``.

    Refused: ``output`` is an input; ``output`` lies inside an input folder (it
    could overwrite a file there, or be read as an input next time); and, when
    the command ``replaces`` the whole ``output`` folder, an input inside it.
    ``None`` inputs (optional arguments not given) are ignored.
    """
    output = Path(output)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        if _same(source, output):
            raise OutputError(
                f"{output}: the {what} is also an input ({source}); medseg never writes over "
                f"its inputs. Choose another {what}."
            )
        if source.is_dir() and _inside(output, source):
            raise OutputError(
                f"{output}: the {what} lies inside the input folder {source}; medseg never "
                f"writes into its inputs. Put the {what} somewhere else."
            )
        if replaces and _inside(source, output):
            raise OutputError(
                f"{output}: the {what} would be replaced, and it holds the input {source}. "
                f"Choose another {what}."
            )


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: the resolved path, or device and inode."""
    resolved = path.resolve()
    try:
        stat = os.stat(resolved)
    except OSError:
        return (str(resolved),)
    return (stat.st_dev, stat.st_ino)


def refuse_colliding(planned: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Raise :class:`OutputError` if a planned output file is one of the input files."""
    sources = {_identity(Path(p)): Path(p) for p in inputs}
    for path in planned:
        source = sources.get(_identity(Path(path)))
        if source is not None:
            raise OutputError(
                f"{path}: this output would overwrite the input {source}; medseg never "
                "writes over its inputs. Choose an output folder that holds no inputs."
            )
