"""The sparse weight gradient of spike-fed convolutions on a trained SNN and real data.

    python benchmarks/sparse_weight_grad.py results/cifar10_fast_hybrid/model.pt \\
        --dataset cifar10 --batch 128 --steps 6 \\
        --json benchmarks/results/sparse_weight_grad_cifar10.json

Loads a directly trained (or hybrid) SNN checkpoint, and times forward + backward on the
first ``--steps`` training batches twice per batch: with :class:`SpikeConv2d`'s weight
gradient summed over the spikes, and with ATen's dense one (the order alternating from batch
to batch), in float32 on the CPU, as ``spikeforge train`` runs where bf16 is not native. It
reports the median seconds per step of each and their ratio, and from the first batch
(untimed) the fraction of nonzero inputs of every spike-fed convolution (the firing rates
the sparse sum exploits) and the largest difference between the two weight gradients,
relative to the layer's largest gradient. Real data (``SPIKEFORGE_DATA``).

    python benchmarks/sparse_weight_grad.py --sweep \\
        --json benchmarks/results/sparse_weight_grad_sweep.json

``--sweep`` times the weight gradient alone and the forward without autograd, sparse
against dense, of one 64-channel 3×3 layer (batch 256 of 32×32, as in a CIFAR VGG's T·B
rows) on random 0/1 spikes at a range of firing rates: where the two break even, the rate
above which ``SpikeConv2d`` keeps ATen's kernels (``DENSE_ABOVE``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

from spikeforge.data import BatchLoader, load_dataset  # noqa: E402
from spikeforge.neurons.modules import mark_spikes  # noqa: E402
from spikeforge.nn import spike_conv  # noqa: E402
from spikeforge.nn.spike_conv import SpikeConv2d, dense_above  # noqa: E402
from spikeforge.runtime import keep_freed_memory, machine_info, set_threads  # noqa: E402
from spikeforge.train import load_model  # noqa: E402

#: firing rates of ``--sweep``
RATES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def _median_seconds(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def density_sweep(repeats: int = 5) -> list[dict]:
    """Per firing rate, on 256 rows of 32×32 random 0/1 spikes into a 64 → 64 3×3 layer,
    median seconds, sparse (``SpikeConv2d``) and dense (ATen's): of the weight gradient (the
    backward of a call in which only the weight needs a gradient), and of the forward
    without autograd."""
    torch.manual_seed(0)
    # the sparse kernels at every rate, to find the break-even
    spike_conv.DENSE_ABOVE = dict.fromkeys(spike_conv.DENSE_ABOVE, 1.0)
    conv = SpikeConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1, bias=False)).to(
        memory_format=torch.channels_last)
    rows = []
    for rate in RATES:
        x = (torch.rand(256, 64, 32, 32) < rate).float().contiguous(
            memory_format=torch.channels_last)
        grad = torch.randn(256, 64, 32, 32).contiguous(memory_format=torch.channels_last)
        row = {"rate": rate}
        for mode in ("sparse", "dense"):
            conv.sparse_weight_grad = conv.sparse_forward = mode == "sparse"
            seconds = []
            for _ in range(repeats + 1):  # the first is a warm-up
                y = conv(mark_spikes(x))
                start = time.perf_counter()
                y.backward(grad)
                seconds.append(time.perf_counter() - start)
                conv.weight.grad = None
            row[mode] = statistics.median(seconds[1:])
            with torch.inference_mode():
                row[f"forward_{mode}"] = _median_seconds(functools.partial(conv, x), repeats)
        row["dense_over_sparse"] = row["dense"] / row["sparse"]
        row["forward_dense_over_sparse"] = row["forward_dense"] / row["forward_sparse"]
        rows.append(row)
        print(f"{100 * rate:5.1f}% nonzero: weight gradient sparse {1e3 * row['sparse']:6.1f} "
              f"ms, dense {1e3 * row['dense']:6.1f} ms -> {row['dense_over_sparse']:.2f}x; "
              f"forward {1e3 * row['forward_sparse']:6.1f} ms, "
              f"{1e3 * row['forward_dense']:6.1f} ms -> {row['forward_dense_over_sparse']:.2f}x")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--sweep", action="store_true",
                        help="the weight gradient alone and the forward, at a range of "
                             "firing rates")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dense-above", type=float, default=None,
                        help="the fraction of nonzero inputs above which a layer keeps "
                             "ATen's dense kernels (default: DENSE_ABOVE for this ISA)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    keep_freed_memory()  # as every spikeforge command runs
    set_threads(args.threads)
    if args.dense_above is not None:
        spike_conv.DENSE_ABOVE = dict.fromkeys(spike_conv.DENSE_ABOVE, args.dense_above)
    if args.sweep:
        record = {"dense_above": dense_above(), "sweep": density_sweep()}
        return _write(args.json, record)
    if args.checkpoint is None:
        parser.error("a checkpoint, or --sweep")
    model = load_model(args.checkpoint).train().to(memory_format=torch.channels_last)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, SpikeConv2d)}
    if not convs:
        raise SystemExit(f"{args.checkpoint}: no convolution that can take the sparse weight "
                         "gradient (not a SpikingModel checkpoint?)")
    density: dict[str, list[float]] = {name: [] for name in convs}  # of the untimed steps
    hooks = [conv.register_forward_pre_hook(functools.partial(_record_density, density[name]))
             for name, conv in convs.items()]
    loader = BatchLoader(load_dataset(args.dataset, "train"), args.batch)
    batches = [batch for batch, _ in zip(loader, range(args.steps), strict=False)]

    def step(x: torch.Tensor, y: torch.Tensor, sparse: bool) -> tuple[float, dict]:
        torch.manual_seed(0)  # the same dropout masks and Poisson spikes both ways
        for conv in convs.values():
            conv.sparse_weight_grad = sparse
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        nn.functional.cross_entropy(model(x), y).backward()
        seconds = time.perf_counter() - start
        return seconds, {name: conv.weight.grad.clone() for name, conv in convs.items()}

    x0, y0 = (t for t in batches[0])
    x0 = x0.contiguous(memory_format=torch.channels_last)
    state = copy.deepcopy(model.state_dict())
    step(x0, y0, True)  # warm-up (builds the kernels)
    model.load_state_dict(state)
    for rates in density.values():
        rates.clear()
    _, sparse_grads = step(x0, y0, True)
    model.load_state_dict(state)  # BN's running statistics as before the first step
    _, dense_grads = step(x0, y0, False)
    difference = {name: float((sparse_grads[name] - dense_grads[name]).abs().max()
                              / dense_grads[name].abs().max().clamp_min(1e-30))
                  for name in convs}
    for hook in hooks:  # the timed steps count nothing
        hook.remove()
    times: dict[str, list[float]] = {"sparse": [], "dense": []}
    for i, (x, y) in enumerate(batches):
        x = x.contiguous(memory_format=torch.channels_last)
        for sparse in ((True, False) if i % 2 == 0 else (False, True)):
            model.load_state_dict(state)
            times["sparse" if sparse else "dense"].append(step(x, y, sparse)[0])
    median = {mode: statistics.median(values) for mode, values in times.items()}
    rates = {name: statistics.mean(values) for name, values in density.items() if values}
    print(f"{args.checkpoint} on {args.dataset}, batch {args.batch}, {args.steps} batches, "
          f"{torch.get_num_threads()} threads, float32")
    print(f"{'layer':<28} {'nonzero inputs':>15} {'grad difference':>16}")
    for name in convs:
        rate = f"{100 * rates[name]:.1f}%" if name in rates else "no spikes"
        print(f"{name:<28} {rate:>15} {difference[name]:>16.1e}")
    print(f"seconds per step: sparse {median['sparse']:.3f}, dense {median['dense']:.3f} "
          f"-> {median['dense'] / median['sparse']:.2f}x")
    return _write(args.json, {
        "checkpoint": str(args.checkpoint), "dataset": args.dataset, "batch": args.batch,
        "steps": args.steps, "dense_above": dense_above(), "seconds": times,
        "median_seconds": median,
        "speedup": median["dense"] / median["sparse"], "nonzero_inputs": rates,
        "relative_grad_difference": difference})


def _write(path: Path | None, record: dict) -> int:
    """``record`` with the command and the machine, as JSON at ``path`` (if given)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "machine": machine_info(),
            "isa": compare.isa(), "threads": torch.get_num_threads(), **record}, indent=2))
    return 0


def _record_density(rates: list[float], module: nn.Module, args: tuple) -> None:
    x = args[0]
    if getattr(x, "_spikeforge_sparse", False) and torch.is_grad_enabled():
        rates.append(int(torch.count_nonzero(x)) / x.numel())


if __name__ == "__main__":
    raise SystemExit(main())
