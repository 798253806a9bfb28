"""Quality-control pictures: prediction overlays and training curves (PNG).

Overlays show, per case, one axial slice of the image (reoriented to RAS so every
case looks the same way round, windowed to its 1st-99th percentile) with the
outline of each class in its own colour (:mod:`medseg.core.palette`, as in the
RTSTRUCT and the preview pictures of ``medseg predict --preview``): the prediction
solid, the reference dashed, on the slice where they hold the most foreground.
Curves plot every fold's losses and EMA pseudo-Dice against epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.core.palette import as_unit_rgb, palette_colour
from medseg.core.volume import Volume
from medseg.geometry.orientation import to_canonical
from medseg.io.atomic import atomic_path

MAX_CASES = 8


@dataclass(frozen=True)
class OverlayCase:
    name: str
    image: Volume
    prediction: Volume
    reference: Volume | None = None


def _axial(case: OverlayCase) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = to_canonical(case.image)[0].array[0]
    pred = to_canonical(case.prediction)[0].array
    ref = to_canonical(case.reference)[0].array if case.reference is not None else None
    fg = (pred > 0) | (ref > 0) if ref is not None else pred > 0
    z = int(np.argmax(fg.sum(axis=(0, 1)))) if fg.any() else image.shape[2] // 2
    return image[:, :, z].T, pred[:, :, z].T, None if ref is None else ref[:, :, z].T


def _window(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, (1, 99))
    return float(lo), float(max(hi, lo + 1e-6))


def _outlines(ax, label: np.ndarray, linestyle: str) -> set[int]:
    """Each class of ``label`` outlined in its palette colour; the classes drawn."""
    values = {int(v) for v in np.unique(label[label > 0])}
    for value in sorted(values):
        colour = as_unit_rgb(palette_colour(value - 1))
        ax.contour(
            label == value, levels=[0.5], colors=[colour], linewidths=0.9, linestyles=linestyle
        )
    return values


def overlay_montage(
    cases: Sequence[OverlayCase],
    path: Path,
    title: str = "",
    label_names: Mapping[int, str] | None = None,
) -> None:
    """A grid of overlays (at most :data:`MAX_CASES`), written atomically as PNG.

    Each class has its own colour, the same in prediction and reference: label value
    ``v`` gets :func:`medseg.core.palette.palette_colour` ``(v - 1)`` (the colour of the
    RTSTRUCT and of ``--preview`` when the labels are 1 .. N, as nnU-Net requires).
    The prediction's outline is a solid line, the reference's a dashed one: where they
    agree the dashes lie on the solid line. ``label_names`` (value -> name) adds a
    legend of the classes drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cases = list(cases)[:MAX_CASES]
    cols = min(4, max(1, len(cases)))
    rows = max(1, -(-len(cases) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    drawn: set[int] = set()
    for ax, case in zip(axes.flat, cases, strict=False):
        image, pred, ref = _axial(case)
        lo, hi = _window(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        drawn |= _outlines(ax, pred, "solid")
        if ref is not None:
            drawn |= _outlines(ax, ref, "dashed")
        ax.set_title(case.name, fontsize=8)
    if label_names:
        handles = [
            Patch(color=as_unit_rgb(palette_colour(v - 1)), label=str(label_names.get(v, v)))
            for v in sorted(drawn)
        ]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7)
    fig.suptitle(title + "\nsolid: prediction, dashed: reference; colour: class", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def training_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """Every run's training and validation loss and EMA pseudo-Dice, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in sorted(histories.items()):
        epochs = [h["epoch"] for h in history]
        line = loss_ax.plot(epochs, [h["train_loss"] for h in history], label=f"{name} train")[0]
        loss_ax.plot(
            epochs,
            [h["val_loss"] for h in history],
            "--",
            color=line.get_color(),
            label=f"{name} val",
        )
        dice_ax.plot(
            epochs, [h["ema_pseudo_dice"] for h in history], color=line.get_color(), label=name
        )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="losses")
    dice_ax.set(
        xlabel="epoch", ylabel="EMA pseudo-Dice", title="validation pseudo-Dice", ylim=(0, 1)
    )
    loss_ax.legend(fontsize=7)
    dice_ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
