"""Training history: one JSON line per epoch, and a PNG of the curves."""

from __future__ import annotations

import json
from pathlib import Path

from medseg.io.atomic import atomic_path, write_text_atomic


def write_history(path: Path, history: list[dict]) -> None:
    """Rewrite the JSON-lines log atomically (a resumed run never duplicates epochs)."""
    write_text_atomic(path, "".join(json.dumps(h) + "\n" for h in history))


def plot_history(path: Path, history: list[dict], title: str = "") -> None:
    """Losses, pseudo-Dice (per epoch and EMA) and learning rate against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(epochs, [h["train_loss"] for h in history], label="train loss", color="tab:blue")
    top.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="tab:red")
    top.set_ylabel("loss")
    dice = top.twinx()
    dice.plot(
        epochs,
        [h["pseudo_dice_mean"] for h in history],
        ":",
        color="tab:green",
        label="pseudo Dice",
    )
    dice.plot(
        epochs,
        [h["ema_pseudo_dice"] for h in history],
        color="tab:green",
        label="pseudo Dice (EMA)",
    )
    dice.set_ylabel("pseudo Dice")
    dice.set_ylim(0, 1)
    lines = top.get_legend_handles_labels()[0] + dice.get_legend_handles_labels()[0]
    top.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    top.set_title(title)
    bottom.plot(epochs, [h["learning_rate"] for h in history], color="tab:purple")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
