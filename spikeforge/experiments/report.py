"""Comparison reports: one table and the plots from any number of results entries.

``spikeforge run`` ends with :func:`write_report`; ``spikeforge report RESULTS...`` calls it
on entries merged from several ``results.json`` files. An entry is docs/design.md §2's results
record (``label``, ``accuracy`` per t, ``ann_accuracy``, ``sops_per_step``,
``energy_per_step``, ``firing_rates``, ...).

The summary row of an entry: its method by name (the paper's form by the paper's name, our
extensions by what they add: :func:`spikeforge.convert.recipes.method_name`) and its spec,
the ANN's accuracy, the SNN's accuracy after each chosen t, and at the report's main T (the
last chosen t, or the entry's own last step if it was simulated for fewer steps; column
``T``):

* ``vs ANN``: the accuracy minus the ANN's (points),
* ``MSOPs``: synaptic operations (events × fan-out) per image (millions),
* ``E SNN/ANN``: the energy ratio charging |c| accumulates per augmented event (0.9 pJ per
  accumulate, 4.6 pJ per MAC; direct input: the first layer's MACs at every step),
* ``E events/ANN``: the same charging one accumulate per event — a column only when some
  entry has multi-valued spikes (see :mod:`spikeforge.metrics` for the hardware each models),
* ``t to ANN-0.5``: the first t whose accuracy reaches ANN − 0.5 points ("—" if none up to
  the simulated T).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spikeforge.convert.recipes import method_name
from spikeforge.experiments.conversion import report_points
from spikeforge.experiments.tables import markdown_table
from spikeforge.metrics import rederive_energy

__all__ = ["load_entries", "summary_rows", "write_report"]

#: how close to the ANN (percentage points) counts as "reached"
REACH_MARGIN = 0.5


def load_entries(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The entries of several results files (``{"results": [...]}`` or a list), each
    labelled with the file it came from when labels would collide."""
    entries: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read results file {str(path)!r}: {exc}") from exc
        items = data.get("results") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(e, dict) and "accuracy" in e
                                                  for e in items):
            raise ValueError(f"results file {str(path)!r} holds no results entries (expected "
                             "{'results': [{'method': ..., 'accuracy': [...], ...}]})")
        entries.extend(dict(rederive_energy(e), source=str(path)) for e in items)
    labels = [_label(e) for e in entries]
    for e in entries:
        e["label"] = _label(e)
        if labels.count(e["label"]) > 1:
            e["label"] = f"{e.get('dataset', '')} {e['label']} ({Path(e['source']).parent.name})"
    return entries


def _label(entry: dict[str, Any]) -> str:
    return entry.get("label") or entry.get("method", "?")


def entry_name(entry: dict[str, Any]) -> str:
    """The published name of an entry's method (its ``name``, or derived from its recorded
    neuron options for entries written before names were recorded)."""
    neuron = entry.get("neuron")
    if entry.get("name"):
        return entry["name"]
    return method_name(neuron) if neuron else entry.get("method", "?")


def energy_at(entry: dict[str, Any], t: int, events: bool = False) -> float | None:
    """An entry's SNN energy per image after ``t`` steps (J): charging |c| accumulates per
    augmented event, or one per event with ``events`` (``None`` where not recorded)."""
    entry = rederive_energy(entry)
    per_step = entry.get("energy_events_per_step" if events else "energy_per_step")
    if per_step:
        return per_step[t - 1]
    if t == len(entry["accuracy"]):
        return (entry.get("energy_per_sample") or {}).get("snn_events" if events else "snn")
    return None


def first_reaching(entry: dict[str, Any], margin: float = REACH_MARGIN) -> int | None:
    """The first t whose accuracy is at least the ANN's minus ``margin`` points."""
    ann = entry.get("ann_accuracy")
    if ann is None:
        return None
    return next((t for t, a in enumerate(entry["accuracy"], 1) if a >= ann - margin), None)


def summary_rows(entries: Sequence[dict[str, Any]], points: Sequence[int]
                 ) -> list[dict[str, Any]]:
    """One table row per entry (see the module docstring); ``points[-1]`` is the main T."""
    rows = []
    for e in entries:
        steps = len(e["accuracy"])
        main = min(points[-1], steps)
        ann = e.get("ann_accuracy")
        row: dict[str, Any] = {"method": entry_name(e), "spec": _label(e),
                               "data": e.get("dataset"), "ANN %": ann}
        for t in points:
            row[f"t={t} %"] = e["accuracy"][t - 1] if t <= steps else None
        acc = e["accuracy"][main - 1]
        ann_energy = (e.get("energy_per_sample") or {}).get("ann")
        energy, events = energy_at(e, main), energy_at(e, main, events=True)
        reach = first_reaching(e)
        row.update({
            "T": main,  # the main T, or the entry's own last step when it stopped earlier
            "vs ANN": None if ann is None else acc - ann,
            "MSOPs": e["sops_per_step"][main - 1] / 1e6 if e.get("sops_per_step") else None,
            "E SNN/ANN": energy / ann_energy if energy and ann_energy else None,
            "E events/ANN": events / ann_energy if events and ann_energy else None,
            "t to ANN-0.5": reach if reach is not None else "—",
        })
        rows.append(row)
    return rows


def write_report(entries: Sequence[dict[str, Any]], out_dir: str | os.PathLike,
                 title: str = "", points: Sequence[int] | None = None,
                 preamble: str = "") -> dict[str, Path]:
    """Write ``report.md`` and the plots ``accuracy_vs_time.png``,
    ``energy_vs_accuracy.png`` and ``firing_rates.png`` into ``out_dir``.

    Args:
        entries: results entries (one per converted / trained network).
        title: heading of the report and the plots.
        points: the time steps shown in the table (default 1, 2, 4, ... up to the longest
            simulated T); the last one is the main T of the SOPs / energy columns.
        preamble: Markdown put under the heading (how the results were made).

    Returns:
        The paths written, by kind (``report``, ``accuracy``, ``energy``, ``firing_rates``).
    """
    from spikeforge.experiments.plots import (
        plot_accuracy_vs_time,
        plot_energy_vs_accuracy,
        plot_firing_rates,
    )

    if not entries:
        raise ValueError("no results entries to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = max(len(e["accuracy"]) for e in entries)
    points = [t for t in (points or report_points(steps)) if t <= steps] or [steps]
    paths = {
        "accuracy": plot_accuracy_vs_time(entries, out / "accuracy_vs_time.png", title),
        "energy": plot_energy_vs_accuracy(entries, out / "energy_vs_accuracy.png", title),
        "firing_rates": plot_firing_rates(entries, out / "firing_rates.png", title),
    }
    text = [f"# {title or 'spikeforge report'}", ""]
    if preamble:
        text += [preamble.strip(), ""]
    text += [table(entries, points), "",
             f"`t to ANN-0.5`: the first time step whose accuracy is within "
             f"{REACH_MARGIN} points of the ANN. Energy: {_conventions(entries)}", "",
             "![accuracy against time steps](accuracy_vs_time.png)",
             "![energy against accuracy](energy_vs_accuracy.png)",
             "![firing rates per layer](firing_rates.png)", ""]
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(text))
    return paths


def table(entries: Sequence[dict[str, Any]], points: Sequence[int]) -> str:
    """The comparison table (Markdown) of :func:`summary_rows` (the data set column only
    when the entries come from more than one)."""
    rows = summary_rows(entries, points)
    drop = ["data"] if len({row["data"] for row in rows}) == 1 else []
    if all(row["E events/ANN"] == row["E SNN/ANN"] for row in rows):
        drop.append("E events/ANN")  # no multi-valued spikes: one figure
    for row in rows:
        for key in drop:
            del row[key]
    return markdown_table(rows, digits=2)


def _conventions(entries: Sequence[dict[str, Any]]) -> str:
    """The conventions of the numbers in the table: the current ones (older entries are
    re-derived to them, :func:`spikeforge.metrics.rederive_energy`)."""
    from spikeforge.metrics import CONVENTIONS

    return CONVENTIONS + "."
