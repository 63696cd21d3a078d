"""Plots written as PNG files (matplotlib, non-interactive Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike,
                         title: str = "") -> Path:
    """Loss and accuracy against epoch (train and test) from a training history.

    Args:
        history: per-epoch records with ``epoch``, ``train_loss``, ``test_loss``,
            ``train_accuracy`` and ``test_accuracy`` (as in ``metrics.jsonl``).
        path: the PNG file to write.
    """
    if not history:
        raise ValueError("cannot plot an empty training history")
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    best = max(history, key=lambda h: h["test_accuracy"])
    ax_acc.annotate(f"{best['test_accuracy']:.2f}%", (best["epoch"], best["test_accuracy"]),
                    textcoords="offset points", xytext=(0, -14), ha="center")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
