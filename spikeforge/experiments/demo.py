"""``spikeforge demo``: the main job on the MNIST subset bundled inside the package.

An experiment like any other (:mod:`spikeforge.experiments.run`), built in: it trains the
small CNN twice — with ReLU, and with CS-QCFS activations (L = 4) — converts the first with
threshold balancing, TerMapping, the paper's AugMapping (θ = λ) and our 16-level AugMapping
(θ = λ/16), and the second with its learned thresholds (CS-QCFS, and AugMapping on them),
prints the training tables and the comparison table, and writes the report and the plots.
Works offline, within minutes on one CPU core; a second run reuses what is finished.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from spikeforge.config import from_dict
from spikeforge.experiments.plots import plot_training_curves
from spikeforge.experiments.run import (
    Experiment,
    ExperimentConfig,
    print_summary,
    resolve,
    run_experiment,
)
from spikeforge.experiments.tables import markdown_table

#: the ANN training config of the demo (6000 training / 1000 test images)
DEMO_ANN: dict[str, Any] = {
    "seed": 0,
    "data": {"dataset": "mnist_demo", "batch_size": 64, "augment": {"crop_padding": 2}},
    "model": {"name": "cnn_small", "activation": "relu", "pool": "avg"},
    "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4, "epochs": 4,
              "warmup_epochs": 0.5},
}

#: variant → its ANN overrides and conversion methods
DEMO_VARIANTS: dict[str, dict[str, Any]] = {
    "relu": {"methods": ["threshold_balancing", "termapping", "augmapping:timesteps=8",
                         "augmapping:levels=16,timesteps=4"]},
    "csqcfs_L4": {"overrides": ["model.activation=csqcfs",
                                "model.options.activation_options.levels=4",
                                "model.options.activation_options.threshold=2.0"],
                  "methods": ["csqcfs", "augmapping:thresholds=learned,timesteps=4"]},
}


def demo_experiment(out_dir: str | Path = "spikeforge-demo", overrides: tuple[str, ...] = (),
                    timesteps: int = 16) -> Experiment:
    """The demo as an experiment; ``overrides`` apply to the ANN config of both variants."""
    cfg = from_dict(ExperimentConfig, {
        "name": "demo", "ann": DEMO_ANN, "overrides": list(overrides),
        "description": "spikeforge demo: cnn_small on the MNIST subset bundled in the package.",
        "variants": DEMO_VARIANTS,
        "evaluate": {"timesteps": timesteps, "calibration_samples": 1024},
        "run": {"out_dir": str(out_dir), "progress": False},
    })
    return resolve(cfg, Path.cwd())


def run_demo(out_dir: str | Path = "spikeforge-demo", overrides: tuple[str, ...] = (),
             timesteps: int = 16, force: bool = False) -> list[dict[str, Any]]:
    """Run the demo experiment, print its tables and say where the files are; returns the
    results entries."""
    exp = demo_experiment(out_dir, overrides, timesteps)
    tick = time.perf_counter()
    entries = run_experiment(exp, force=force)
    print(f"\nspikeforge demo: cnn_small on the bundled MNIST subset, "
          f"{time.perf_counter() - tick:.0f} s")
    for variant in exp.variants:
        ann = Path(variant.train.run.out_dir)
        history = json.loads((ann / "results.json").read_text())["history"]
        plot_training_curves(history, ann / "training_curves.png",
                             title=f"cnn_small ({variant.name}) on mnist_demo")
        rows = [{"epoch": h["epoch"], "train loss": h["train_loss"],
                 "train acc %": h["train_accuracy"], "test acc %": h["test_accuracy"],
                 "seconds": h["epoch_seconds"]} for h in history]
        print(f"\nANN {variant.name} ({variant.train.model.activation}):\n")
        print(markdown_table(rows, digits=2))
    print_summary(exp, entries)
    print(f"models:  {exp.out_dir}/<variant>/ann/checkpoint.pt (training curves beside them)")
    sys.stdout.flush()
    return entries
