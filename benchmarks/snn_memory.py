"""Memory kept for backward and time per training step of direct SNN training: spikeforge's
LIF layers (one autograd function over the time loop) against SpikingJelly's multi-step
LIFNode (``step_mode="m"``; SpikingJelly 2.0 runs it in PyTorch) in the same network.

    python benchmarks/snn_memory.py --model vgg7 --timesteps 8 --batch 16

Both networks are the same zoo model run time-folded (conv / BN / pool once on T·B rows);
only the neurons differ: spikeforge's ``LIF`` or SpikingJelly's ``LIFNode`` (surrogate atan,
reset to zero) wrapped to take the folded tensor. Memory is what autograd keeps for backward
(bytes of the distinct tensors saved by the forward pass, measured with
``torch.autograd.graph.saved_tensors_hooks``), which is what grows with T; on CUDA the peak
allocated memory of a training step is reported too. Prints a table with the ratios and
writes ``benchmarks/results/snn_memory.json``. Needs SpikingJelly (``pip install
spikingjelly loguru --no-deps`` next to the existing torch).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikeforge.models import create  # noqa: E402
from spikeforge.models.spiking import SpikingModel  # noqa: E402
from spikeforge.neurons import LIF  # noqa: E402


class _Folded(nn.Module):
    """A SpikingJelly multi-step neuron fed the time-folded (T·B, ...) tensor."""

    def __init__(self, node: nn.Module) -> None:
        super().__init__()
        self.node, self.timesteps = node, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.node(x.unflatten(0, (self.timesteps, -1)))
        return out.flatten(0, 1)


def build(kind: str, model: str, timesteps: int, in_channels: int) -> nn.Module:
    if kind == "spikeforge":
        act = lambda channels: LIF(1.0, leak=0.99, reset="zero", surrogate="atan")  # noqa: E731
    else:
        from spikingjelly.activation_based import neuron, surrogate

        def act(channels: int) -> nn.Module:
            node = neuron.LIFNode(tau=100.0, v_threshold=1.0, v_reset=0.0, decay_input=False,
                                  surrogate_function=surrogate.ATan(), step_mode="m")
            return _Folded(node)
    net = create(model, num_classes=10, in_channels=in_channels, activation=act, dropout=0.0)
    return SpikingModel(net, timesteps)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves during one forward pass, as stored (a
    spike tensor that spikeforge keeps as booleans counts one byte per value)."""
    import spikeforge.models.spiking as spiking
    from spikeforge.neurons import modules

    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        packed = modules._pack(t)
        stored = packed.bits if isinstance(packed, modules._Spikes) else t
        key = (stored.untyped_storage().data_ptr(), stored.dtype)
        seen[key] = max(seen.get(key, 0), stored.untyped_storage().nbytes())
        return packed

    measuring = lambda: torch.autograd.graph.saved_tensors_hooks(pack, modules._unpack)  # noqa: E731
    original, spiking.compact_saved_spikes = spiking.compact_saved_spikes, measuring
    try:
        out = model(x)
    finally:
        spiking.compact_saved_spikes = original
    out.sum().backward()
    return sum(seen.values())


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(repeats + 1):
        _reset(model)
        tick = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tick)
    return sorted(times[1:])[len(times[1:]) // 2]  # median, first (warm-up) dropped


def _reset(model: nn.Module) -> None:
    try:
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
    except ImportError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg7")
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/snn_memory.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    rows = {}
    for kind in ("spikeforge", "spikingjelly"):
        model = build(kind, args.model, args.timesteps, 3).to(device)
        _reset(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        saved = saved_bytes(model, x)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        rows[kind] = {"saved_for_backward_MiB": saved / 2**20,
                      "cuda_peak_MiB": None if peak is None else peak / 2**20,
                      "seconds_per_step": step_seconds(model, x, y, args.repeats)}
    ratio = {k: rows["spikeforge"][k] / rows["spikingjelly"][k]
             for k in rows["spikeforge"] if rows["spikeforge"][k] is not None}
    print(f"{args.model}, T={args.timesteps}, batch {args.batch}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':14s} {'saved MiB':>10s} {'s/step':>8s}")
    for kind, row in rows.items():
        print(f"{kind:14s} {row['saved_for_backward_MiB']:10.1f} {row['seconds_per_step']:8.3f}")
    print(f"{'ratio sf/sj':14s} {ratio['saved_for_backward_MiB']:10.2f} "
          f"{ratio['seconds_per_step']:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "model": args.model,
        "timesteps": args.timesteps, "batch": args.batch, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.platform(), "results": rows, "ratio_spikeforge_over_spikingjelly":
        ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
