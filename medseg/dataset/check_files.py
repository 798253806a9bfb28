"""The per-file checks of ``medseg check``: where a file lives, its header, its content.

Each function returns :class:`Problem` lines naming the case and the file relative
to the dataset folder; the rules themselves live in :mod:`medseg.core.sanity`
(content) and :func:`medseg.io.volumes.header_findings` (NIfTI headers), so that
``check``, ``fingerprint``, ``info``, ``convert`` and the prediction gate say the
same thing about the same file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medseg.core.sanity import Finding, channel_findings, shape_findings
from medseg.core.volume import Volume
from medseg.io.volumes import header_findings

#: The case id of problems that concern the dataset as a whole (not one case).
DATASET_ID = "dataset.json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one case (or, with case id ``dataset.json``, the dataset)."""

    case_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.message}"


def rel(root: Path, path: Path) -> str:
    """``path`` relative to the dataset folder ``root`` (as given, if it is not inside)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def outside_links(root: Path, case_id: str, paths: Iterable[Path]) -> list[Problem]:
    """Files of a case that resolve (symbolic links followed) outside the dataset folder.

    ``root`` is resolved too, so a dataset folder that is itself a link is fine.
    Missing files are skipped (reading reports them); a dangling link that points
    outside is reported.
    """
    base = Path(root).resolve()
    found = []
    for path in paths:
        if not (path.exists() or path.is_symlink()):
            continue
        target = path.resolve()
        if not target.is_relative_to(base):
            found.append(
                Problem(
                    case_id,
                    (
                        f"{rel(root, path)}: resolves to {target}, outside the dataset folder "
                        f"{base}; what the dataset holds could change or vanish without it being "
                        "touched. Copy the file into the dataset folder, or pass "
                        "--allow-outside-links if the dataset deliberately links into a data "
                        "store."
                    ),
                )
            )
    return found


def header_problems(root: Path, case_id: str, path: Path) -> tuple[list[Problem], list[Problem]]:
    """``(problems, warnings)`` of a volume file's header (NIfTI geometry; see
    :func:`medseg.io.volumes.header_findings`), the file named relative to ``root``."""
    problems, warnings = [], []
    for finding in header_findings(path):
        problem = Problem(case_id, finding.message.replace(str(path), rel(root, path)))
        (problems if finding.refuse else warnings).append(problem)
    return problems, warnings


def _blank_with_foreground(finding: Finding, label_name: str | None) -> str:
    if finding.code != "blank" or label_name is None:
        return finding.message
    return (
        f"{finding.message} The image is blank, but its label ({label_name}) has foreground: "
        "the image cannot show what is labelled."
    )


def image_problems(
    root: Path,
    case_id: str,
    files: tuple[Path, ...],
    image: Volume,
    labelled_foreground: Path | None = None,
) -> list[Problem]:
    """The content problems of a case's image ``(C, X, Y, Z)`` read from ``files``.

    ``files`` holds one file per channel (nnU-Net layout) or one file with every
    channel (MSD layout); each problem names the file it comes from.
    ``labelled_foreground`` is the case's label file if that label has foreground:
    a blank image then says that the image cannot show what is labelled.
    """
    per_file = len(files) == image.n_channels
    label_name = rel(root, labelled_foreground) if labelled_foreground is not None else None
    found = [
        Problem(case_id, f"{rel(root, files[0])}: {f.message}")
        for f in shape_findings(image.spatial_shape)
    ]
    for c in range(image.n_channels):
        name = "the image" if per_file or image.n_channels == 1 else f"channel {c}"
        path = files[c] if per_file else files[0]
        for finding in channel_findings(image.array[c], name):
            message = _blank_with_foreground(finding, label_name)
            found.append(Problem(case_id, f"{rel(root, path)}: {message}"))
    return found


def label_shape_problems(root: Path, case_id: str, path: Path, label: Volume) -> list[Problem]:
    """A label map ``(X, Y, Z)`` with an axis one voxel long (a slice, not a volume)."""
    return [
        Problem(case_id, f"{rel(root, path)}: {f.message}")
        for f in shape_findings(label.spatial_shape)
    ]
