"""spikeforge against SpikingJelly and snnTorch, in one run (issue 7, benchmarks A, B and C).

    python benchmarks/compare.py --quick            # A and C at T = 16; B at T = 8; < 5 minutes
    python benchmarks/compare.py --json benchmarks/results/compare.json

Every peer is built the way its users build it, from the same weights:

* SpikingJelly 2.0: ``layer.Conv2d/AvgPool2d/Flatten/Linear`` and ``neuron.IFNode``
  (``v_reset=None``: reset by subtraction) or ``neuron.LIFNode``, in multi-step mode
  (``functional.set_step_mode(net, "m")``, input ``x.repeat(T, ...)``) and in single-step
  mode (a Python loop over t);
* snnTorch: ``torch.nn`` layers and ``snn.Leaky`` (``init_hidden=True``), a loop over t.

A. Converted-SNN inference: IF neurons, reset by subtraction, v(0) = 0, direct input, the
   thresholds of spikeforge's threshold balancing (max), seeded random weights — a CIFAR-sized
   VGG (conv64-conv64-pool-conv128-conv128-pool-conv256-pool-fc), batch 64, T in {4, 16, 32},
   and the MNIST CNN (cnn_small) at T = 16. The peers' neurons emit 0/1, so the threshold of a
   layer is folded into the next layer's weights (as SpikingJelly's converter does).
B. One BPTT training step of the same VGG with LIF neurons (leak 0.9, reset to zero, atan
   surrogate, θ = 1; weights ×3 so that every layer fires), T in {4, 8}, batch 32: forward,
   cross-entropy on the mean readout, backward, SGD step.
C. The dense ANN forward of the same network (channels-last, batch 64): the per-step floor;
   shown as images/s ÷ T beside the SNNs.

Each measurement runs in a fresh process, with glibc keeping freed memory as the ``spikeforge``
commands do (``--malloc default``: glibc's settings; either way the same for every
implementation): the median of >= 5 timed repetitions after a
warm-up, images per second, the ratio to the best peer, the process's peak RSS (torch and
the model included, the same for all) and the RSS the measured calls added
(``work_mib``: peak minus the RSS before them — a lower bound, 0 when an earlier stage such
as calibration peaked higher), and the largest
difference of the summed readout (A) or of the first step's loss and output (B) from
spikeforge's. Peers: the ``bench`` extra, next to the existing torch (see
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from spikeforge.runtime import compile_enabled, keep_freed_memory  # noqa: E402

PEERS = ("spikingjelly-m", "spikingjelly-s", "snntorch")
INFERENCE = ("spikeforge", "spikeforge-bf16", *PEERS, "ann")
TRAINING = ("spikeforge", "spikingjelly-m", "snntorch")
LIF = {"leak": 0.9, "threshold": 1.0}
#: B scales the seeded weights so that every layer fires (4-21% of neurons per step, as in
#: a trained network; with PyTorch's default init the deeper layers stay silent)
TRAINING_GAIN = 3.0
CHANNELS_LAST = True


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


def chain(snn) -> list[nn.Module | float]:
    """The converted graph as a chain of layers: a torch layer, or a float — the threshold
    of a layer of IF neurons — with that threshold folded into the next synaptic layer."""
    from spikeforge.neurons import SpikingNeuron

    layers: list[nn.Module | float] = []
    theta = None
    for node in snn.graph.graph.nodes:
        if node.op != "call_module":
            continue
        module = snn.graph.get_submodule(node.target)
        if isinstance(module, SpikingNeuron):
            theta = float(module.threshold)
            layers.append(theta)
            continue
        module = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and theta is not None:
            module.weight.data.mul_(theta)
        layers.append(module)
    return layers


def spikingjelly(layers: list[nn.Module | float], step_mode: str,
                 lif: dict | None = None) -> nn.Sequential:
    """The chain in SpikingJelly's own layers and neurons."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def build(m: nn.Module | float) -> nn.Module:
        if isinstance(m, float):
            if lif:
                return neuron.LIFNode(tau=1 / (1 - lif["leak"]), decay_input=False,
                                      v_threshold=m, v_reset=0.0,
                                      surrogate_function=surrogate.ATan())
            return neuron.IFNode(v_threshold=m, v_reset=None)
        if isinstance(m, nn.Conv2d):
            new = layer.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                               m.padding, bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            new = layer.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, nn.AvgPool2d):
            return layer.AvgPool2d(m.kernel_size, m.stride)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            return layer.AdaptiveAvgPool2d(m.output_size)
        elif isinstance(m, nn.Flatten):
            return layer.Flatten(m.start_dim, m.end_dim)
        else:
            raise TypeError(f"no SpikingJelly layer for {type(m).__name__}")
        new.load_state_dict(m.state_dict())
        return new

    net = nn.Sequential(*map(build, layers))
    functional.set_step_mode(net, step_mode)
    return net


def snntorch(layers: list[nn.Module | float], lif: dict | None = None) -> nn.Sequential:
    """The chain with snnTorch's ``Leaky`` neurons (β = 1: IF)."""
    import snntorch as snn
    from snntorch import surrogate

    def build(m: nn.Module | float) -> nn.Module:
        if not isinstance(m, float):
            return m
        if lif:
            return snn.Leaky(beta=lif["leak"], threshold=m, reset_mechanism="zero",
                             spike_grad=surrogate.atan(), init_hidden=True)
        return snn.Leaky(beta=1.0, threshold=m, reset_mechanism="subtract", init_hidden=True)
    return nn.Sequential(*map(build, layers))


def reset(net: nn.Module, impl: str) -> None:
    if impl.startswith("spikingjelly"):
        from spikingjelly.activation_based import functional

        functional.reset_net(net)
    elif impl == "snntorch":
        from snntorch import utils

        utils.reset(net)


def peer_forward(net: nn.Module, impl: str, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The peer's (T, B, classes) readout, run the way its documentation shows."""
    reset(net, impl)
    if impl == "spikingjelly-m":
        return net(x.unsqueeze(0).repeat(timesteps, *([1] * x.ndim)))
    return torch.stack([net(x) for _ in range(timesteps)])


# --- A and C: inference ---------------------------------------------------------------------

class Case(NamedTuple):
    """One implementation ready to measure: the timed call, the output to compare with
    spikeforge's, and the network the call runs (for ``profile_step.py``)."""

    run: Callable
    output: Callable
    net: nn.Module


def inference(bench: str, impl: str, timesteps: int, batch: int) -> Case:
    """The timed call runs the network; the output is the summed readout."""
    import spikeforge as sf

    ann, shape = network(bench)
    torch.manual_seed(1)
    x = torch.rand(batch, *shape)
    options = {"precision": "bf16"} if impl == "spikeforge-bf16" else {}
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=timesteps, percentile=100.0,
                     progress=False, **options)
    if impl.startswith("spikeforge"):
        return Case(lambda: snn(x), lambda: snn(x).float().sum(0), snn)
    if impl == "ann":
        dense = ann.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        return Case(lambda: dense(xl), lambda: None, dense)
    layers = chain(snn)
    net = (snntorch(layers) if impl == "snntorch"
           else spikingjelly(layers, impl[-1])).eval()
    run = lambda: peer_forward(net, impl, x, timesteps)  # noqa: E731
    return Case(run, lambda: run().sum(0), net)


# --- B: training ----------------------------------------------------------------------------

def training(impl: str, timesteps: int, batch: int) -> Case:
    """The timed call is one training step; the output is its (loss, output)."""
    from spikeforge.models.spiking import SpikingModel
    from spikeforge.neurons import LIF as SfLIF

    ann, _ = network("vgg_cifar")
    for m in ann:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.mul_(TRAINING_GAIN)
    layers = [LIF["threshold"] if isinstance(m, nn.ReLU) else m for m in ann.train()]
    if impl == "spikeforge":
        net = SpikingModel(nn.Sequential(*[
            SfLIF(m, leak=LIF["leak"], reset="zero", surrogate="atan")
            if isinstance(m, float) else m for m in layers]), timesteps)
        forward = net
    else:
        net = (snntorch(layers, LIF) if impl == "snntorch"
               else spikingjelly(layers, "m", LIF))
        forward = lambda x: peer_forward(net, impl, x, timesteps).mean(0)  # noqa: E731
    torch.manual_seed(2)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if impl == "spikeforge" and CHANNELS_LAST:  # as `spikeforge train` runs it (run.channels_last)
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        out = forward(x)
        loss = nn.functional.cross_entropy(out, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss.detach(), out.detach()
    state = copy.deepcopy(net.state_dict())

    def first() -> torch.Tensor:
        net.load_state_dict(state)
        loss, out = step()
        return torch.cat([loss.view(1), out.flatten()])
    return Case(step, first, net)


# --- measuring ------------------------------------------------------------------------------

def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(kind: str, bench: str, impl: str, timesteps: int, batch: int, repeats: int,
            threads: int, keep_memory: bool = True) -> dict:
    """Time one implementation in this process; its output for the comparison. With
    ``keep_memory`` glibc keeps freed memory (:func:`spikeforge.runtime.keep_freed_memory`,
    what every ``spikeforge`` command does) for whichever implementation runs here."""
    if keep_memory:
        keep_freed_memory()
    torch.set_num_threads(threads)
    grad = torch.enable_grad() if kind == "training" else torch.inference_mode()
    with grad:
        run, output, _ = (training(impl, timesteps, batch) if kind == "training"
                          else inference(bench, impl, timesteps, batch))
        before = _rss_mib()
        out = output()
        times = []
        for i in range(repeats + 1):
            tick = time.perf_counter()
            run()
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - tick)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = statistics.median(times)
    return {"kind": kind, "benchmark": bench, "implementation": impl, "timesteps": timesteps,
            "batch": batch, "threads": threads, "seconds": seconds,
            "images_per_s": batch / seconds, "peak_rss_mib": peak,
            "work_mib": max(0.0, peak - before),
            "output": None if out is None else out.double().tolist()}


def _child(queue: mp.Queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except Exception as exc:  # a missing peer, for example
        queue.put({"implementation": args[2], "error": f"{type(exc).__name__}: {exc}"})


def isolated(*args) -> dict:
    """``measure`` in a fresh process, so that its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def compare_rows(rows: list[dict]) -> None:
    """Add ``max_abs_diff`` (to spikeforge's output) and ``ratio_vs_best_peer``."""
    ok = [r for r in rows if "error" not in r]
    reference = next((r["output"] for r in ok if r["implementation"] == "spikeforge"), None)
    best = max((r["images_per_s"] for r in ok if r["implementation"] in PEERS), default=None)
    for r in ok:
        out = r.pop("output")
        r["max_abs_diff"] = (None if out is None or reference is None
                             else float((torch.tensor(out) - torch.tensor(reference))
                                        .abs().max()))
        if best and r["implementation"] != "ann":
            r["ratio_vs_best_peer"] = r["images_per_s"] / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="A and C at T = 16, B at T = 8, 5 repetitions (bf16 only where "
                             "the CPU has bf16 instructions)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="inference batch (A, C)")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch (B)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--bench", nargs="+", default=["vgg_cifar", "mnist_cnn", "training"],
                        choices=("vgg_cifar", "mnist_cnn", "training"))
    parser.add_argument("--timesteps", type=int, nargs="+", help="T values (VGG, A)")
    parser.add_argument("--only", nargs="+", help="implementations to run")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory in every measuring process, as "
                             "the spikeforge commands run (no page faults per call on large "
                             "tensors); default: glibc's own settings")
    args = parser.parse_args()
    steps = args.timesteps or ((16,) if args.quick else (4, 16, 32))
    repeats = 5 if args.quick else max(5, args.repeats)
    # emulated bf16 (a CPU without bf16 instructions) is slow: --quick leaves it out
    slow = set() if not args.quick or torch.ops.mkldnn._is_mkldnn_bf16_supported() else {
        "spikeforge-bf16"}
    keep = lambda impls: [i for i in impls  # noqa: E731
                          if (not args.only or i in args.only) and i not in slow]
    records = []
    for bench in args.bench:
        if bench == "training":
            cases = [("training", "vgg_cifar", t, args.train_batch, keep(TRAINING))
                     for t in ((8,) if args.quick else (4, 8))]
        else:
            cases = [("inference", bench, t, args.batch, keep(INFERENCE))
                     for t in (steps if bench == "vgg_cifar" else (16,))]
        for kind, name, t, batch, impls in cases:
            rows = [isolated(kind, name, impl, t, batch, repeats, args.threads,
                             args.malloc == "keep") for impl in impls]
            compare_rows(rows)
            records.extend(rows)
            _print(kind, name, t, batch, args.threads, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "malloc": args.malloc, "compile": compile_enabled(),
            "machine": platform.platform(), "records": records}, indent=2))
    return 0


def _print(kind: str, bench: str, t: int, batch: int, threads: int, rows: list[dict]) -> None:
    what = "training step" if kind == "training" else "inference"
    print(f"\n{bench} {what}, T={t}, batch {batch}, {threads} threads")
    print(f"{'implementation':20s} {'images/s':>9s} {'vs best peer':>12s} {'peak RSS MiB':>12s} "
          f"{'work MiB':>9s} {'max |diff|':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['implementation']:20s} {r['error']}")
            continue
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        ratio = r.get("ratio_vs_best_peer")
        floor = r["implementation"] == "ann"
        name = r["implementation"] + (" (÷T floor)" if floor else "")
        rate = r["images_per_s"] / (t if floor else 1)
        print(f"{name:20s} {rate:9.1f} {'' if ratio is None else f'{ratio:.2f}':>12s} "
              f"{r['peak_rss_mib']:12.0f} {r['work_mib']:9.0f} {diff:>10s}")


if __name__ == "__main__":
    sys.exit(main())
