"""Converted-SNN inference speed against peers, in one run (issue 7, benchmarks A and C).

    python benchmarks/compare.py --quick            # T = 4 and 16, fewer repetitions
    python benchmarks/compare.py --json benchmarks/results/compare.json

A. The same IF network (soft reset, v(0) = 0, direct input, thresholds from spikeforge's
   calibration, seeded random weights) run by spikeforge (time-folded), SpikingJelly 2.0
   (multi-step and single-step modes) and snnTorch (``Leaky`` with β = 1, reset by
   subtraction, stepped in Python): a CIFAR-sized VGG (conv64-conv64-pool-conv128-conv128-
   pool-conv256-pool-fc, batch 64) and the MNIST CNN (cnn_small, batch 64). Every
   implementation's summed readout is compared with spikeforge's (``max_abs_diff``).
C. The dense ANN forward of the same network: the per-step floor (× T for the SNN).

Reported per benchmark and implementation: median seconds of ≥ 5 timed repetitions after a
warm-up, images per second, ratio to the best peer, and the peak RSS of a fresh process that
ran only that measurement. Peers: ``pip install --no-deps spikingjelly==2.0.0 loguru
snntorch`` (the ``bench`` extra) next to the existing torch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMPLEMENTATIONS = ("spikeforge", "spikingjelly-m", "spikingjelly-s", "snntorch")


def vgg_cifar() -> nn.Sequential:
    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*conv(3, 64), *conv(64, 64), nn.AvgPool2d(2), *conv(64, 128),
                         *conv(128, 128), nn.AvgPool2d(2), *conv(128, 256), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(256 * 4 * 4, 10))


def network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "vgg_cifar":
        return vgg_cifar().eval(), (3, 32, 32)
    from spikeforge.models import create

    return create("cnn_small", num_classes=10, in_channels=1).eval(), (1, 28, 28)


def converted(name: str, batch: int, timesteps: int):
    import spikeforge as sf

    ann, shape = network(name)
    torch.manual_seed(1)
    x = torch.rand(batch, *shape)
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=timesteps, percentile=100.0,
                     progress=False)
    return ann, snn, x


def peer_network(snn, kind: str) -> nn.Module:
    """The converted graph with each spikeforge neuron replaced by a peer's IF neuron of the
    same threshold (emitting θ·s, as spikeforge's neurons do)."""
    import copy

    from spikeforge.neurons import SpikingNeuron

    graph = copy.deepcopy(snn.graph)
    for name, module in list(graph.named_modules()):
        if isinstance(module, SpikingNeuron):
            theta = float(module.threshold)
            graph.add_submodule(name, _Peer(kind, theta))
    return graph


class _Peer(nn.Module):
    """A peer's IF neuron called like spikeforge's: (time-folded input, T) → θ·s."""

    def __init__(self, kind: str, theta: float) -> None:
        super().__init__()
        self.kind, self.theta = kind, theta
        if kind.startswith("spikingjelly"):
            from spikingjelly.activation_based import neuron

            self.node = neuron.IFNode(v_threshold=theta, v_reset=None,
                                      step_mode="m" if kind.endswith("-m") else "s")
        else:
            import snntorch as snn

            self.node = snn.Leaky(beta=1.0, threshold=theta, reset_mechanism="subtract",
                                  init_hidden=True, reset_delay=False)

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        seq = x.unflatten(0, (timesteps, -1))
        if self.kind == "spikingjelly-m":
            out = self.node(seq)
        else:
            out = torch.stack([self.node(seq[t]) for t in range(timesteps)])
        return (out * self.theta).flatten(0, 1)


def _reset(module: nn.Module, kind: str) -> None:
    if kind.startswith("spikingjelly"):
        from spikingjelly.activation_based import functional

        functional.reset_net(module)
    elif kind == "snntorch":
        from snntorch import utils

        utils.reset(module)


def measure(bench: str, impl: str, timesteps: int, batch: int, repeats: int) -> dict:
    """Time one implementation (in this process) and compare its readout with spikeforge's."""
    torch.set_num_threads(torch.get_num_threads())
    ann, snn, x = converted(bench, batch, timesteps)
    with torch.inference_mode():
        reference = snn(x).sum(0)
        if impl == "ann":
            run = lambda: ann(x)  # noqa: E731
            out = None
        elif impl == "spikeforge":
            run = lambda: snn(x)  # noqa: E731
            out = reference
        else:
            peer = peer_network(snn, impl).eval()
            folded = x.unsqueeze(0).expand(timesteps, *x.shape).reshape(-1, *x.shape[1:])

            def run():
                _reset(peer, impl)
                return peer(folded, timesteps).unflatten(0, (timesteps, batch))
            out = run().sum(0)
        times = []
        for i in range(repeats + 1):
            tick = time.perf_counter()
            run()
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - tick)
    seconds = statistics.median(times)
    return {"benchmark": bench, "implementation": impl, "timesteps": timesteps,
            "batch": batch, "seconds": seconds, "images_per_s": batch / seconds,
            "max_abs_diff": None if out is None else float((out - reference).abs().max()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(queue: mp.Queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except Exception as exc:  # a missing peer, for example
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def isolated(*args) -> dict:
    """``measure`` in a fresh process, so that its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 4 and 16, 5 repetitions")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--bench", nargs="+", default=["vgg_cifar", "mnist_cnn"],
                        choices=("vgg_cifar", "mnist_cnn"))
    parser.add_argument("--timesteps", type=int, nargs="+", help="T values (VGG)")
    args = parser.parse_args()
    steps = args.timesteps or ((4, 16) if args.quick else (4, 16, 32))
    repeats = 5 if args.quick else max(5, args.repeats)
    records = []
    for bench in args.bench:
        for t in steps if bench == "vgg_cifar" else (16,):
            rows = [isolated(bench, impl, t, args.batch, repeats)
                    for impl in (*IMPLEMENTATIONS, "ann")]
            peers = [r for r in rows if r.get("implementation", "").startswith(("spikingj",
                                                                                 "snntorch"))]
            best = max((r["images_per_s"] for r in peers), default=None)
            for r in rows:
                if "error" not in r and best and r["implementation"] != "ann":
                    r["ratio_vs_best_peer"] = r["images_per_s"] / best
            records.extend(rows)
            _print(bench, t, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.platform(),
            "records": records}, indent=2))
    return 0


def _print(bench: str, t: int, rows: list[dict]) -> None:
    print(f"\n{bench}, T={t}, batch {rows[0].get('batch', '?')}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'implementation':16s} {'images/s':>9s} {'vs best peer':>12s} {'peak RSS MiB':>12s} "
          f"{'max |diff|':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{'?':16s} {r['error']}")
            continue
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        ratio = r.get("ratio_vs_best_peer")
        name = r["implementation"] + (" (×T floor)" if r["implementation"] == "ann" else "")
        rate = r["images_per_s"] / (t if r["implementation"] == "ann" else 1)
        print(f"{name:16s} {rate:9.1f} {'' if ratio is None else f'{ratio:.2f}':>12s} "
              f"{r['peak_rss_mib']:12.0f} {diff:>10s}")


if __name__ == "__main__":
    sys.exit(main())
