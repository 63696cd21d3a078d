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


def _save(fig: plt.Figure, path: str | os.PathLike, title: str) -> Path:
    """Title, lay out, write (creating the folder) and close ``fig``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
    return _save(fig, path, title)


def plot_accuracy_vs_time(entries: Sequence[dict[str, Any]], path: str | os.PathLike,
                          title: str = "") -> Path:
    """SNN accuracy against time steps (log scale) for each method, the ANN as a dashed line,
    and accuracy against synaptic operations per sample.

    Args:
        entries: results entries with ``label``, ``timesteps``, ``accuracy``,
            ``ann_accuracy`` and (for the right panel) ``sops_per_step``, and
            ``unit_sops_per_step`` (drawn dashed where augmented events make it differ).
        path: the PNG file to write.
    """
    if not entries:
        raise ValueError("no results to plot")
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    dashed = False
    for e in entries:
        line, = ax_t.plot(e["timesteps"], e["accuracy"], label=e.get("label", e["method"]))
        if e.get("sops_per_step"):
            ax_s.plot([s / 1e6 for s in e["sops_per_step"]], e["accuracy"],
                      label=e.get("label", e["method"]), color=line.get_color())
        units = e.get("unit_sops_per_step")
        if units and units != e.get("sops_per_step"):  # multi-valued spikes: unit SOPs too
            dashed = True
            ax_s.plot([s / 1e6 for s in units], e["accuracy"], "--", lw=1,
                      color=line.get_color())
    if dashed:
        ax_s.plot([], [], "--", lw=1, color="gray", label="unit SOPs, |c| per event (dashed)")
    ann = entries[0].get("ann_accuracy")
    if ann is not None:
        for ax in (ax_t, ax_s):
            ax.axhline(ann, color="k", ls="--", lw=1, label=f"ANN {ann:.2f}%")
    best = max(max(e["accuracy"]) for e in entries)
    for ax in (ax_t, ax_s):
        ax.set_ylim(max(0.0, min(best - 20, (ann or best) - 20)), min(100.0, best + 2))
        ax.grid(alpha=0.3, which="both")
        ax.set_ylabel("test accuracy (%)")
    ax_t.set_xscale("log", base=2)
    ax_t.set(xlabel="time steps T", title="accuracy vs. time steps")
    ax_s.set_xscale("log")
    ax_s.set(xlabel="synaptic operations per sample (millions)",
             title="accuracy vs. SOPs")
    ax_t.legend(fontsize=8, loc="lower right")
    return _save(fig, path, title)


def plot_energy_vs_accuracy(entries: Sequence[dict[str, Any]], path: str | os.PathLike,
                            title: str = "") -> Path:
    """Accuracy against energy per sample (µJ, log scale) as t grows, one curve per entry,
    each ANN as a star at its own energy and accuracy. Energy charges |c| accumulates per
    augmented event (solid); where one accumulate per event differs (multi-valued spikes) it
    is drawn dashed in the same colour. An entry whose per-step |c| energy was not recorded
    (re-derived from an older run) gets its value at T as a marker.

    Args:
        entries: results entries with ``label``, ``accuracy``, ``energy_per_step``,
            ``energy_events_per_step``, ``energy_per_sample`` and ``ann_accuracy``.
        path: the PNG file to write.
    """
    from spikeforge.metrics import rederive_energy

    usable = [rederive_energy(e) for e in entries
              if e.get("energy_per_step") or e.get("energy_events_per_step")]
    if not usable:
        raise ValueError("no results with energy per step to plot")
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    seen = set()
    dashed = False
    for e in usable:
        label = e.get("label", e["method"])
        units, events = e.get("energy_per_step"), e.get("energy_events_per_step")
        color = None
        if units:
            line, = ax.plot([j * 1e6 for j in units], e["accuracy"], ".-", ms=3, label=label)
            color = line.get_color()
        else:  # only the value at T is known
            line, = ax.plot(e["energy_per_sample"]["snn"] * 1e6, e["accuracy"][-1], "o",
                            label=label)
            color = line.get_color()
        if events and events != units:
            dashed = True
            ax.plot([j * 1e6 for j in events], e["accuracy"], "--", lw=1, color=color)
        ann = (e.get("ann_accuracy"), e["energy_per_sample"].get("ann"))
        if None not in ann and ann not in seen:
            seen.add(ann)
            ax.plot(ann[1] * 1e6, ann[0], "*", ms=12, color="k",
                    label="ANN" if len(seen) == 1 else None)
    if dashed:
        ax.plot([], [], "--", lw=1, color="gray", label="one AC per event (dashed)")
    best = max(max(e["accuracy"]) for e in usable)
    ax.set_ylim(max(0.0, best - 20), min(100.0, best + 2))
    ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set(xlabel="energy per sample (µJ, 45 nm; |c| ACs per event)",
           ylabel="test accuracy (%)", title="accuracy vs. energy (t = 1 … T)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, title)


def plot_firing_rates(entries: Sequence[dict[str, Any]], path: str | os.PathLike,
                      title: str = "") -> Path:
    """Unit spikes per neuron per time step, layer by layer (in network order), one line per
    entry.

    Args:
        entries: results entries with ``label`` and ``firing_rates`` (layer → rate).
        path: the PNG file to write.
    """
    usable = [e for e in entries if e.get("firing_rates")]
    if not usable:
        raise ValueError("no results with firing rates to plot")
    layers = list(dict.fromkeys(name for e in usable for name in e["firing_rates"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(layers) + 3), 4.0), dpi=110)
    x = range(len(layers))
    for e in usable:
        rates = e["firing_rates"]
        ax.plot(x, [rates.get(name, float("nan")) for name in layers], "o-", ms=4,
                label=e.get("label", e["method"]))
    ax.set_xticks(list(x), layers, rotation=45, ha="right", fontsize=8)
    ax.set(xlabel="layer", ylabel="spikes per neuron per step", title="firing rates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, title)
