"""What ``SPIKEFORGE_COMPILE=1`` gains per training step: eager and compiled steps of the same
network alternate in one process (two rounds each), one thread, fixed random inputs.

    python benchmarks/compile_gain.py --json benchmarks/results/compile_gain.json

Networks: cnn_small with QCFS (L = 4) and ReLU (the floor), batch 128, 28x28; LeNet with LIF
neurons (Lee's rule, leak 0.99) and Poisson input at T = 20, batch 64; VGG-7 with LIF neurons
(atan) at T = 8, batch 32, 32x32. Reported: the median ms per step (forward, backward, SGD
step) over the timed steps of both rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikeforge.models import create  # noqa: E402
from spikeforge.models.spiking import create_snn  # noqa: E402
from spikeforge.runtime import machine_info  # noqa: E402


def networks() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    qcfs = {"levels": 4, "threshold": 2.0}
    return {
        "cnn_small relu": (create("cnn_small", in_channels=1), (128, 1, 28, 28)),
        "cnn_small qcfs L=4": (create("cnn_small", in_channels=1, activation="qcfs",
                                      activation_options=qcfs), (128, 1, 28, 28)),
        "lenet LIF T=20 poisson": (create_snn("lenet", timesteps=20, in_channels=1,
                                              encoder="poisson", pool_threshold=0.75,
                                              neuron={"leak": 0.99, "surrogate": "lee"}),
                                   (64, 1, 28, 28)),
        "vgg7 LIF T=8": (create_snn("vgg7", timesteps=8, in_channels=3,
                                    neuron={"leak": 0.99, "surrogate": "atan"}),
                         (32, 3, 32, 32)),
    }


def step_ms(model: torch.nn.Module, shape: tuple[int, ...], steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(*shape), torch.randint(0, 10, (shape[0],))
    times = []
    for _ in range(steps + 1):  # the first is a warm-up (and compiles)
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and mode")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    records = []
    for name, (model, shape) in networks().items():
        model = model.to(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"0": [], "1": []}
        for _ in range(2):
            for mode in ("0", "1"):
                os.environ["SPIKEFORGE_COMPILE"] = mode
                times[mode] += step_ms(model, shape, args.steps)
        eager, compiled = (statistics.median(times[m]) for m in ("0", "1"))
        records.append({"network": name, "batch": shape[0], "eager_ms": round(eager, 1),
                        "compiled_ms": round(compiled, 1),
                        "speedup": round(eager / compiled, 3)})
        print(f"{name:24s} eager {eager:8.1f} ms  compiled {compiled:8.1f} ms  "
              f"x{eager / compiled:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "seed": 0, "threads": 1,
            "machine": machine_info(), "records": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
