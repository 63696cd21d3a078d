"""spikeforge against SpikingJelly and snnTorch, in one run (benchmarks A, B and C).

    python benchmarks/compare.py --quick            # A and C at T = 16; B at T = 8; 3 rounds
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
   spikeforge runs in float32 (``spikeforge``), bfloat16 (``spikeforge-bf16``), on the int8
   model with integer kernels (``spikeforge-int8``: 8-bit weights, so its readout differs from
   float32 by the weights' rounding) and with ``precision="auto"`` (``spikeforge-auto``: bf16
   where the CPU has it natively, else int8 where its integer kernels run, else float32;
   when that is a row already measured, the
   auto row repeats it and says so in ``same_as``).
B. One BPTT training step of the same VGG with LIF neurons (leak 0.9, reset to zero, atan
   surrogate, θ = 1; weights ×3 so that every layer fires), T in {4, 8}, batch 32: forward,
   cross-entropy on the mean readout, backward, SGD step. spikeforge runs with its C++
   kernels (``spikeforge``: the fused LIF scan, and the spike-fed convolutions' weight
   gradient from the spikes alone, :class:`spikeforge.nn.spike_conv.SpikeConv2d`), with the
   LIF kernels only (``spikeforge-dense-wgrad``), without them (``spikeforge-eager``: the
   eager scan, ATen's backward) and under bf16 autocast
   (``spikeforge-bf16``: convolutions in bf16, membranes and surrogate gradients in
   float32, as ``spikeforge train`` runs where bf16 is native).
C. The dense ANN forward of the same network (channels-last, batch 64): the per-step floor;
   shown as images/s ÷ T beside the SNNs.

A measurement that holds still on a shared machine: every implementation of a benchmark runs
in its own process (set up once: imports, conversion, one output for the comparison), and
the processes are timed in interleaved rounds — A B C … then B C … A … (the order rotates) —
each round a warm-up call and the median of ``--repeats`` timed calls. A slow minute on the
machine then hits every implementation of a round alike. Reported per implementation: the
median images/s over the rounds, and the median, min and max over the rounds of the ratio to
the best peer *of the same round*. Also its process's peak RSS (torch and the model
included, the same for all) and the RSS the measured calls added (``work_mib``: peak minus
the RSS before them — a lower bound, 0 when an earlier stage such as calibration peaked
higher), the heap memory one more call holds at its peak (``heap_work_mib``: the tensors
themselves, without the holes between them that the RSS also counts; sampled, so a lower
bound), and the largest difference of the summed readout (A) or of the first step's loss
and output (B) from spikeforge's (float32). glibc keeps freed memory in every process, as
the ``spikeforge`` commands do (``--malloc default``: glibc's settings). The JSON records
the CPU's instruction set (``isa``). Peers: the ``bench`` extra, next to the existing torch
(see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from spikeforge.neurons.native import NATIVE_ENV, native_status  # noqa: E402
from spikeforge.runtime import (  # noqa: E402
    compile_enabled,
    cpu_info,
    keep_freed_memory,
    machine_info,
    native_bf16,
)

PEERS = ("spikingjelly-m", "spikingjelly-s", "snntorch")
#: spikeforge's rows and the precision each converts with
PRECISION_OF = {"spikeforge": "float32", "spikeforge-bf16": "bf16", "spikeforge-int8": "int8",
                "spikeforge-auto": "auto"}
INFERENCE = (*PRECISION_OF, *PEERS, "ann")
#: ``spikeforge-dense-wgrad``: spikeforge with ATen's weight gradient in every convolution
#: (the fused LIF kernels on, the sparse weight gradient of ``SpikeConv2d`` off);
#: ``spikeforge-eager``: spikeforge without its C++ kernels (``SPIKEFORGE_NATIVE=0``);
#: ``spikeforge-bf16``: the step under bf16 autocast, as ``run.amp`` trains
TRAINING = ("spikeforge", "spikeforge-dense-wgrad", "spikeforge-eager", "spikeforge-bf16",
            "spikingjelly-m", "snntorch")
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
    with warnings.catch_warnings():  # bf16 where it is emulated: measured all the same
        warnings.simplefilter("ignore", UserWarning)
        snn = sf.convert(ann, [x], "threshold_balancing", timesteps=timesteps,
                         percentile=100.0, progress=False,
                         precision=PRECISION_OF.get(impl, "float32"))
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
    """The timed call is one training step; the output is its (loss, output).
    ``spikeforge-eager`` turns spikeforge's C++ kernels off for the whole process."""
    from spikeforge.models.spiking import SpikingModel
    from spikeforge.neurons import LIF as SfLIF
    from spikeforge.nn.spike_conv import SpikeConv2d

    ann, _ = network("vgg_cifar")
    for m in ann:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.mul_(TRAINING_GAIN)
    layers = [LIF["threshold"] if isinstance(m, nn.ReLU) else m for m in ann.train()]
    if impl == "spikeforge-eager":
        os.environ[NATIVE_ENV] = "0"
    if impl.startswith("spikeforge"):
        net = SpikingModel(nn.Sequential(*[
            SfLIF(m, leak=LIF["leak"], reset="zero", surrogate="atan")
            if isinstance(m, float) else m for m in layers]), timesteps)
        for conv in net.modules():
            if isinstance(conv, SpikeConv2d):
                conv.sparse_weight_grad = impl != "spikeforge-dense-wgrad"
        forward = net
    else:
        net = (snntorch(layers, LIF) if impl == "snntorch"
               else spikingjelly(layers, "m", LIF))
        forward = lambda x: peer_forward(net, impl, x, timesteps).mean(0)  # noqa: E731
    torch.manual_seed(2)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if impl.startswith("spikeforge") and CHANNELS_LAST:  # as `spikeforge train` (channels_last)
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)

    bf16 = impl == "spikeforge-bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), looked up once; None elsewhere."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2


def _heap_mib() -> float | None:
    """The bytes glibc's malloc has handed out and not yet freed (``mallinfo2``: in-use
    chunks plus mmapped blocks), in MiB; None off glibc ≥ 2.33."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def _heap_peak_mib(call: Callable) -> float | None:
    """The most heap memory in use during ``call()`` above what was in use before it, in
    MiB: sampled every millisecond by a thread (torch's operators release the GIL), so a
    lower bound of the tensors a call holds at once, free of how the allocator places them
    (the RSS counts the holes between blocks too). None off glibc."""
    before = _heap_mib()
    if before is None:
        return None
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _heap_mib())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _heap_mib()) - before


def _precision_info(case: Case, impl: str) -> dict:
    """What a spikeforge network ran in: the precision chosen and why, and (int8) which
    layers ran on integer kernels."""
    info = getattr(case.net, "info", None)
    if not impl.startswith("spikeforge") or not isinstance(info, dict):
        return {}
    keys = ("precision", "precision_requested", "precision_reason", "int8_kernels")
    return {k: info[k] for k in keys if k in info}


def _worker(conn, kind: str, bench: str, impl: str, timesteps: int, batch: int, threads: int,
            keep_memory: bool) -> None:
    """One implementation in its own process: set up once and send the output to compare;
    then, for every ``repeats`` received, a warm-up call and ``repeats`` timed calls (their
    seconds sent back); 0 ends it with the process's peak RSS and the heap peak of one more,
    untimed call (the sampling thread would slow the timed ones). With ``keep_memory`` glibc
    keeps freed memory (:func:`spikeforge.runtime.keep_freed_memory`)."""
    try:
        if keep_memory:
            keep_freed_memory()
        torch.set_num_threads(threads)
        mode = torch.enable_grad if kind == "training" else torch.inference_mode
        with mode():
            case = (training(impl, timesteps, batch) if kind == "training"
                    else inference(bench, impl, timesteps, batch))
            before = _rss_mib()
            out = case.output()
        native = ({"native_lif": native_status()}
                  if kind == "training" and impl.startswith("spikeforge") else {})
        conn.send({"output": None if out is None else out.double().tolist(),
                   **_precision_info(case, impl), **native})
        while repeats := conn.recv():
            times = []
            with mode():
                for i in range(repeats + 1):
                    tick = time.perf_counter()
                    case.run()
                    if i:  # the first call of a round is its warm-up
                        times.append(time.perf_counter() - tick)
            conn.send(times)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with mode():
            heap = _heap_peak_mib(case.run)
        conn.send({"peak_rss_mib": peak, "work_mib": max(0.0, peak - before),
                   "heap_work_mib": heap})
    except Exception as exc:  # a missing peer, for example
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


class Worker:
    """A measuring process (:func:`_worker`) and its pipe."""

    def __init__(self, *args) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *args))
        self.proc.start()
        self.setup: dict = {}
        self.error: str | None = None

    def ready(self) -> None:
        """Wait for the set-up (all workers set up at once; nothing is timed meanwhile)."""
        self.setup = self._receive()
        self.error = self.setup.get("error")

    def _receive(self):
        try:
            return self.conn.recv()
        except EOFError:  # killed, e.g. out of memory
            return {"error": f"the measuring process died (exit code {self.proc.exitcode})"}

    def round(self, repeats: int) -> list[float] | None:
        """The seconds of ``repeats`` timed calls after a warm-up; None on an error."""
        self.conn.send(repeats)
        reply = self._receive()
        if isinstance(reply, dict):
            self.error = reply["error"]
            return None
        return reply

    def close(self) -> dict:
        """The process's peak RSS and the RSS its measured calls added."""
        final = {}
        if self.error is None:
            self.conn.send(0)
            final = self._receive()
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
        return final


def interleaved(kind: str, bench: str, impls: list[str], timesteps: int, batch: int,
                rounds: int, repeats: int, threads: int, keep_memory: bool) -> list[dict]:
    """Measure ``impls`` in interleaved rounds (see the module docstring): one row each,
    with the seconds of every round and the output to compare."""
    workers = {impl: Worker(kind, bench, impl, timesteps, batch, threads, keep_memory)
               for impl in impls}
    for worker in workers.values():
        worker.ready()
    seconds: dict[str, list[float]] = {impl: [] for impl in impls}
    for r in range(rounds):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            worker = workers[impl]
            if worker.error is None:
                times = worker.round(repeats)
                if times is not None:
                    seconds[impl].append(statistics.median(times))
    rows = []
    for impl, worker in workers.items():
        final = worker.close()
        base = {"kind": kind, "benchmark": bench, "implementation": impl,
                "timesteps": timesteps, "batch": batch, "threads": threads}
        if worker.error is not None:
            rows.append({**base, "error": worker.error})
            continue
        rows.append({**base, **final, **worker.setup,
                     "rounds_seconds": seconds[impl],
                     "seconds": statistics.median(seconds[impl])})
    return rows


def compare_rows(rows: list[dict]) -> None:
    """Add to every row ``images_per_s`` (the median over the rounds), ``max_abs_diff`` (to
    spikeforge's output) and, where there are peers, the median / min / max over the rounds
    of the ratio to the best peer of the same round (``ratio_vs_best_peer``,
    ``ratio_min``, ``ratio_max``)."""
    ok = [r for r in rows if "error" not in r]
    reference = next((r["output"] for r in ok if r["implementation"] == "spikeforge"), None)
    peers = [r for r in ok if r["implementation"] in PEERS]
    rounds = min((len(r["rounds_seconds"]) for r in ok), default=0)
    best = [max(r["batch"] / r["rounds_seconds"][i] for r in peers) for i in range(rounds)
            ] if peers else []
    for r in ok:
        out = r.pop("output")
        r["images_per_s"] = r["batch"] / r["seconds"]
        r["rounds_images_per_s"] = [r["batch"] / t for t in r["rounds_seconds"]]
        r["max_abs_diff"] = (None if out is None or reference is None
                             else float((torch.tensor(out) - torch.tensor(reference))
                                        .abs().max()))
        if best and r["implementation"] != "ann":
            ratios = [r["rounds_images_per_s"][i] / best[i] for i in range(rounds)]
            r.update(ratio_vs_best_peer=statistics.median(ratios), ratio_min=min(ratios),
                     ratio_max=max(ratios), rounds_ratio=ratios)


def auto_alias(impls: list[str]) -> str | None:
    """The row ``spikeforge-auto`` would repeat here (``precision="auto"`` resolves to the
    precision of a row in ``impls``), or None."""
    from spikeforge.simulate import resolve_precision

    chosen, _ = resolve_precision("auto", "cpu")
    same = next((impl for impl, p in PRECISION_OF.items() if p == chosen), None)
    return same if same in impls else None


def with_alias(rows: list[dict], alias: str | None) -> list[dict]:
    """``rows`` with the ``spikeforge-auto`` row copied from the row it resolves to."""
    if alias is None:
        return rows
    source = next((r for r in rows if r["implementation"] == alias), None)
    if source is None or "error" in source:
        return rows
    auto = {**source, "implementation": "spikeforge-auto", "same_as": alias,
            "precision_requested": "auto"}
    from spikeforge.simulate import resolve_precision

    auto["precision_reason"] = resolve_precision("auto", "cpu")[1]
    index = next(i for i, r in enumerate(rows) if r["implementation"] == alias)
    return [*rows[:index + 1], auto, *rows[index + 1:]]


#: the CPU flags that decide which kernels are fast
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_int8", "amx_bf16")


#: environment variables that cap the vector ISA torch and oneDNN use below the CPU's
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def isa() -> dict:
    """The CPU's instruction set: PyTorch's capability level, whether bf16 is native, the
    relevant ``/proc/cpuinfo`` flags, the model name, and the caps set (``ISA_CAPS``: a run
    of the AVX2 code paths on an AVX-512 CPU says so)."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16("cpu"), "cpu_model": info.get("model name"),
            "flags": [f for f in ISA_FLAGS if f in flags],
            "caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="A and C at T = 16, B at T = 8, 3 rounds of one timed call "
                             "(bf16 only where the CPU has bf16 instructions)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 3)")
    parser.add_argument("--repeats", type=int,
                        help="timed calls per round after its warm-up (default 5; --quick 1)")
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
    started = time.perf_counter()
    steps = args.timesteps or ((16,) if args.quick else (4, 16, 32))
    rounds = args.rounds or (3 if args.quick else 5)
    repeats = args.repeats or (1 if args.quick else 5)
    if rounds < 1 or repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    # emulated bf16 (a CPU without bf16 instructions) is slow: --quick leaves it out
    slow = set() if not args.quick or native_bf16("cpu") else {"spikeforge-bf16"}
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
            alias = auto_alias(impls) if "spikeforge-auto" in impls else None
            measured = [i for i in impls if not (alias and i == "spikeforge-auto")]
            rows = interleaved(kind, name, measured, t, batch, rounds, repeats, args.threads,
                               args.malloc == "keep")
            compare_rows(rows)
            rows = with_alias(rows, alias)
            records.extend(rows)
            _print(kind, name, t, batch, args.threads, rounds, rows)
    wall = time.perf_counter() - started
    print(f"\n{wall:.0f} s; {rounds} interleaved rounds of {repeats} timed calls")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "isa": isa(),
            "machine_info": machine_info(), "rounds": rounds, "repeats": repeats,
            "malloc": args.malloc, "compile": compile_enabled(), "wall_seconds": wall,
            "machine": platform.platform(), "records": records}, indent=2))
    return 0


def _print(kind: str, bench: str, t: int, batch: int, threads: int, rounds: int,
           rows: list[dict]) -> None:
    what = "training step" if kind == "training" else "inference"
    print(f"\n{bench} {what}, T={t}, batch {batch}, {threads} threads, median of {rounds} "
          "rounds")
    print(f"{'implementation':26s} {'images/s':>9s} {'vs best peer [min-max]':>23s} "
          f"{'peak RSS MiB':>12s} {'work MiB':>9s} {'heap MiB':>9s} {'max |diff|':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['implementation']:26s} {r['error']}")
            continue
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        ratio = ("" if r.get("ratio_vs_best_peer") is None else
                 f"{r['ratio_vs_best_peer']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]")
        floor = r["implementation"] == "ann"
        name = r["implementation"] + (" (÷T floor)" if floor else "")
        name += f" (= {r['same_as']})" if "same_as" in r else ""
        rate = r["images_per_s"] / (t if floor else 1)
        heap = "" if r.get("heap_work_mib") is None else f"{r['heap_work_mib']:.0f}"
        print(f"{name:26s} {rate:9.1f} {ratio:>23s} {r['peak_rss_mib']:12.0f} "
              f"{r['work_mib']:9.0f} {heap:>9s} {diff:>10s}")
        if r.get("precision_reason") and r.get("precision_requested") == "auto":
            print(f"{'':26s} {r['precision_reason']}")
        kernels = r.get("int8_kernels")
        if kernels:
            integer = sum(v == "int8" for v in kernels.values())
            print(f"{'':26s} {integer} of {len(kernels)} synaptic layers on int8 kernels")


if __name__ == "__main__":
    sys.exit(main())
