"""``spikeforge demo``: the main job on the MNIST subset bundled inside the package.

Works offline on any machine in about a minute on 2 CPU cores: trains the small CNN, converts
it to spiking networks with threshold balancing, TerMapping and AugMapping, prints the training
table and the SNN accuracy against time steps, and writes the plots.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from spikeforge.config import apply_overrides, from_dict
from spikeforge.experiments.conversion import accuracy_table, run_conversion
from spikeforge.experiments.plots import plot_training_curves
from spikeforge.experiments.tables import markdown_table
from spikeforge.train import TrainConfig, TrainResult, fit

DEMO_CONFIG = {
    "seed": 0,
    "data": {"dataset": "mnist_demo", "batch_size": 64, "augment": {"crop_padding": 2}},
    "model": {"name": "cnn_small", "activation": "relu", "pool": "avg"},
    "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4, "epochs": 4,
              "warmup_epochs": 0.5},
    "run": {"out_dir": "spikeforge-demo"},
}


DEMO_METHODS = ("threshold_balancing", "termapping", "augmapping:timesteps=8")


def run_demo(out_dir: str | Path = "spikeforge-demo", overrides: tuple[str, ...] = (),
             timesteps: int = 32) -> TrainResult:
    """Train the demo network, convert it with each method of :data:`DEMO_METHODS` (up to
    ``timesteps`` steps), report; returns the training result."""
    cfg = from_dict(TrainConfig, apply_overrides(DEMO_CONFIG, [f"run.out_dir={out_dir}",
                                                               *overrides]))
    tick = time.perf_counter()
    result = fit(cfg)
    seconds = time.perf_counter() - tick
    rows = [{"epoch": h["epoch"], "train loss": h["train_loss"],
             "train acc %": h["train_accuracy"], "test acc %": h["test_accuracy"],
             "seconds": h["epoch_seconds"]} for h in result.history]
    plot = plot_training_curves(result.history, result.out_dir / "training_curves.png",
                                title=f"{cfg.model.name} on {cfg.data.dataset}")
    print(f"\nspikeforge demo: {cfg.model.name} on the bundled MNIST subset "
          f"(6000 train / 1000 test images), {seconds:.0f} s\n")
    print(markdown_table(rows, digits=2))
    print(f"\nANN test accuracy {result.test_accuracy:.2f}%; converting to SNNs ...")
    sys.stdout.flush()
    snn_json = result.out_dir / "conversion.json"
    entries = run_conversion(result.out_dir / "checkpoint.pt", DEMO_METHODS, timesteps, snn_json,
                             calibration_samples=1024, seed=cfg.seed, progress=False,
                             test_subset=cfg.data.test_subset,
                             device=cfg.run.device if cfg.run.device != "auto" else None)
    print(f"\nSNN test accuracy (%) after T time steps ({entries[0]['samples']} images):\n")
    print(accuracy_table(entries))
    print()
    for e in entries:
        print(f"{e['label']:20s} {e['sops_per_sample'] / 1e6:6.2f} M synaptic ops/image at "
              f"T={len(e['accuracy'])} (ANN: {e['ann_macs_per_sample'] / 1e6:.2f} M MACs)")
    print(f"\nresults: {result.out_dir / 'results.json'}, {snn_json}")
    print(f"plots:   {plot}, {snn_json.with_suffix('.png')}")
    print(f"model:   {result.out_dir / 'checkpoint.pt'}")
    sys.stdout.flush()
    return result
