"""Convert a trained checkpoint with several methods, evaluate each on the test set, and
write the results JSON of docs/design.md §2 (one entry per method), a table of accuracy against t
and a plot.

A method is given as ``name`` or ``name:key=value,key=value`` (options of
:func:`spikeforge.convert`, and ``timesteps`` to simulate this method for another T), e.g.
``termapping:symmetric=true`` or ``augmapping:cap=4,timesteps=16``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import spikeforge
from spikeforge.config import ConfigError, safe_load
from spikeforge.convert import convert
from spikeforge.data import BatchLoader, load_dataset
from spikeforge.experiments.tables import markdown_table
from spikeforge.metrics import evaluate
from spikeforge.runtime import git_commit, machine_info, select_device, write_json
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, load_model

__all__ = ["Setup", "accuracy_table", "command_line", "convert_and_evaluate",
           "export_checkpoint", "load_checkpoint_and_data", "parse_method", "report_points",
           "run_conversion"]


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"termapping:symmetric=true,percentile=99"`` → ``("termapping", {...})``; values
    are read as YAML scalars (numbers, booleans, null)."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"method option {item!r} in {spec!r} is not key=value")
        options[key.strip()] = safe_load(value)
    return name.strip(), options


def label(name: str, options: dict[str, Any]) -> str:
    """A short column label: the method and its non-default options."""
    return name + "".join(f" {k}={v}" for k, v in options.items() if k != "timesteps")


def command_line() -> str:
    """The command this process runs, as a user types it: ``spikeforge ...`` when started as
    the ``spikeforge`` command (or ``python -m spikeforge.cli``), else the script and its
    arguments."""
    if sys.argv and Path(sys.argv[0]).name in ("spikeforge", "cli.py"):
        return " ".join(["spikeforge", *sys.argv[1:]])
    return " ".join(sys.argv)


def report_points(timesteps: int) -> list[int]:
    """1, 2, 4, ... up to T, and T itself."""
    points, t = [], 1
    while t < timesteps:
        points.append(t)
        t *= 2
    return [*points, timesteps]


def accuracy_table(entries: Sequence[dict[str, Any]], points: Sequence[int] | None = None
                   ) -> str:
    """Markdown table: one row per t, one column per method (headed by its spec label; the
    entries' ``name`` says which form it is) and, for entries evaluated with flip views, one
    more (``label, flip``); the ANN in the last row."""
    columns = [(e["label"], e["accuracy"], e["ann_accuracy"]) for e in entries]
    columns += [(f"{e['label']}, flip", e["accuracy_flip"], e.get("ann_accuracy_flip"))
                for e in entries if e.get("accuracy_flip")]
    steps = max(len(accuracy) for _, accuracy, _ in columns)
    rows = []
    for t in points or report_points(steps):
        rows.append({"T": t, **{label: accuracy[t - 1] if t <= len(accuracy) else None
                                for label, accuracy, _ in columns}})
    rows.append({"T": "ANN", **{label: ann for label, _, ann in columns}})
    return markdown_table(rows, digits=2)


@dataclass
class Setup:
    """A trained ANN with its calibration batches and test loader, ready to convert."""

    checkpoint: str
    model: nn.Module
    dataset: str
    model_name: str | None
    train_config: dict[str, Any]
    calibration: list[torch.Tensor]
    loader: BatchLoader
    device: torch.device
    seed: int


def load_checkpoint_and_data(checkpoint: str | os.PathLike, *, data_root: str | None = None,
                             calibration_samples: int = 2048, test_subset: int | None = None,
                             batch_size: int = 250, device: str | None = None, seed: int = 0
                             ) -> Setup:
    """Load ``checkpoint`` and the data set it was trained on: a seeded subset of
    ``calibration_samples`` training images and the test set (or a seeded subset of it)."""
    dev = select_device(device)
    state = load_checkpoint(checkpoint)
    config = state.get("config") or {}
    dataset = (config.get("data") or {}).get("dataset")
    if not dataset:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not say which data set "
                              "it was trained on (config.data.dataset)")
    model: nn.Module = load_model(checkpoint).to(dev)
    train = load_dataset(dataset, "train", root=data_root)
    test = load_dataset(dataset, "test", root=data_root)
    if test_subset:
        test = test.subset(test_subset, seed=seed)
    subset = train.subset(min(calibration_samples, len(train)), seed=seed)
    calibration = [x for x, _ in BatchLoader(subset, batch_size, device=dev)]
    return Setup(str(checkpoint), model, dataset, (state.get("model_spec") or {}).get("name"),
                 config, calibration, BatchLoader(test, batch_size, device=dev), dev, seed)


def convert_and_evaluate(setup: Setup, spec: str, timesteps: int | None,
                         progress: bool = False, flip: bool = False,
                         **options: Any) -> dict[str, Any]:
    """Convert ``setup.model`` with the method ``spec`` and evaluate it at t = 1..T: one
    results entry (docs/design.md §2) with its provenance.

    Args:
        spec: ``name`` or ``name:key=value,...`` (see the module docstring).
        timesteps: T, unless the spec says ``timesteps=`` (``None``: the method's default).
        flip: also report the accuracy over each image and its mirror image
            (:func:`spikeforge.metrics.evaluate`).
        options: conversion options shared by all methods; the spec's own win. Only what
            was given: every other option is the method's default
            (:func:`spikeforge.convert.recipes.method_defaults`), and the entry's ``neuron``
            record says what each resolved to.
    """
    tick = time.perf_counter()
    name, own = parse_method(spec)
    method_options = {**options, **own}
    steps = method_options.pop("timesteps", timesteps)
    snn = convert(setup.model, setup.calibration, name,
                  timesteps=None if steps is None else int(steps), seed=setup.seed,
                  progress=progress, **method_options)
    from spikeforge.models.spiking import SpikingModel

    ann = None if isinstance(setup.model, SpikingModel) else setup.model  # no ANN to compare
    result = evaluate(snn, setup.loader, snn.timesteps, ann=ann, progress=progress, flip=flip)
    return {
        "method": name, "name": snn.info["name"], "label": label(name, own),
        "options": method_options,
        "dataset": setup.dataset, "model": setup.model_name, **result.to_dict(),
        "neuron": {k: v for k, v in snn.info.items() if k != "thresholds"},
        "thresholds": snn.info["thresholds"],
        "provenance": {
            "checkpoint": setup.checkpoint, "command": command_line(),
            "seed": setup.seed,
            "calibration_samples": sum(len(x) for x in setup.calibration),
            "spikeforge": spikeforge.__version__, "git_commit": git_commit(),
            "torch": torch.__version__, "device": str(setup.device),
            "wall_seconds": time.perf_counter() - tick,
            "machine": machine_info(setup.device), "train_config": setup.train_config,
        },
    }


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      method: str | None = None, timesteps: int | None = None, *,
                      approximate: bool = False, data_root: str | None = None,
                      calibration_samples: int = 2048) -> tuple[str, Any, Any]:
    """Convert ``checkpoint`` with ``method`` (a spec; default: a trained SNN as it is, an
    ANN by threshold balancing) on the CPU and write its NIR graph to ``out``.

    Returns:
        ``(spec, snn, graph)``: the method spec used, the SNN and its ``nir.NIRGraph``.

    Raises:
        spikeforge.export.ExportError: the SNN has a layer NIR cannot represent (unless
            ``approximate``), or the optional ``nir`` package is missing.
    """
    from spikeforge.export import to_nir, write_nir
    from spikeforge.models.spiking import SpikingModel

    setup = load_checkpoint_and_data(checkpoint, data_root=data_root, device="cpu",
                                     calibration_samples=calibration_samples, test_subset=16)
    spec = method or ("snn" if isinstance(setup.model, SpikingModel)
                      else "threshold_balancing")
    name, options = parse_method(spec)
    snn = convert(setup.model, setup.calibration, name, timesteps=timesteps, **options)
    graph = to_nir(snn, setup.calibration[0], approximate=approximate)
    write_nir(graph, out)
    return spec, snn, graph


def run_conversion(checkpoint: str | os.PathLike, methods: Sequence[str],
                   timesteps: int | None,
                   out: str | os.PathLike | None = None, *, data_root: str | None = None,
                   calibration_samples: int = 2048, test_subset: int | None = None,
                   batch_size: int = 250, device: str | None = None, seed: int = 0,
                   progress: bool = False, flip: bool = False,
                   **options: Any) -> list[dict[str, Any]]:
    """Convert ``checkpoint`` with each method, evaluate at t = 1..T, return the entries (and
    write ``{"results": entries}`` to ``out``).

    Args:
        checkpoint: a spikeforge training checkpoint (model, model_spec and config).
        methods: method specs (see the module docstring).
        timesteps: T (``None``: the method's default); accuracy is reported for every
            t ≤ T.
        out: results JSON path (a PNG plot is written beside it).
        calibration_samples: training images used to calibrate (seeded subset).
        test_subset: evaluate on a seeded subset of the test set (default: all of it).
        flip: also report the accuracy over each image and its mirror image.
        options: conversion options shared by all methods (``percentile``,
            ``channelwise``, ``encoder``, ...), only those set; a method's own options
            win.
    """
    started = time.perf_counter()
    setup = load_checkpoint_and_data(checkpoint, data_root=data_root,
                                     calibration_samples=calibration_samples,
                                     test_subset=test_subset, batch_size=batch_size,
                                     device=device, seed=seed)
    entries = []
    for spec in methods:
        entries.append(convert_and_evaluate(setup, spec, timesteps, progress, flip,
                                            **options))
        if out is not None:  # after every method, so a long run can be read as it goes
            write_json(Path(out), {"results": entries,
                                   "wall_seconds": time.perf_counter() - started})
    if out is not None:
        from spikeforge.experiments.plots import plot_accuracy_vs_time

        plot_accuracy_vs_time(entries, Path(out).with_suffix(".png"),
                              title=f"{entries[0]['model']} on {setup.dataset}")
    return entries
