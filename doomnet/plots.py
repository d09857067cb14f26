"""Figures of one run (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def learning_curve(history: Sequence[dict[str, float]], title: str, path: Path) -> None:
    """Loss (left) and accuracy (right) against iteration, train and validation, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(steps, [h[f"{split}/loss"] for h in history], style, label=split)
        ax_acc.plot(steps, [h[f"{split}/acc"] for h in history], style, label=split)
    ax_loss.set(xlabel="iteration", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
