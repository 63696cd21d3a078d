"""Where the time of spikeforge's benchmark-B training step (or benchmark-A inference) goes:
per layer, forward and backward, from ``torch.profiler``.

    python benchmarks/profile_step.py --timesteps 8 --threads 1 \
        --json benchmarks/results/profile_training_T8.json
    python benchmarks/profile_step.py --kind inference --timesteps 16 --batch 64

The network, weights and inputs are ``compare.py``'s. Every leaf module's forward runs inside a
``record_function`` label, so each operator's self time is charged to the layer it ran in.
Backward work is charged through autograd's sequence numbers: a backward node carries the
number of the forward operator that made it (the last one recorded with that number, since
operators record the counter's next value), which ties it to the layer.
What runs outside any layer (the loss, the optimiser, autograd's bookkeeping) is listed as
such. The profiler adds its own cost per operator, so the shares are what to read; the
step's time without the profiler is measured separately and printed beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.autograd.profiler import record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

from spikeforge.neurons.native import native_status  # noqa: E402
from spikeforge.runtime import compile_enabled, keep_freed_memory  # noqa: E402

PREFIX = "layer "


def label_layers(net: nn.Module) -> None:
    """Wrap every leaf module's forward in a ``record_function("layer <name> <Type>")`` range."""
    for qualified, module in net.named_modules():
        if list(module.children()):
            continue
        name = f"{PREFIX}{qualified} {type(module).__name__}"
        ranges: list[record_function] = []

        def enter(_module, _args, name=name, ranges=ranges):
            ranges.append(record_function(name))
            ranges[-1].__enter__()

        def leave(_module, _args, _out, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def _layer_of(event) -> str | None:
    while event is not None:
        if event.name.startswith(PREFIX):
            return event.name
        event = event.cpu_parent
    return None


def attribute(events) -> dict[str, dict[str, float]]:
    """Self-CPU seconds per (layer, 'forward' | 'backward'), from a profiler's event list.
    A layer's own range counts too: what its forward runs outside any operator (Python,
    or a C++ extension such as the fused LIF kernels) is its range's self time."""
    engine = "autograd::engine::evaluate_function"
    nodes = [e for e in events if e.name.startswith(engine)]  # these ranges do not nest
    in_backward = set()
    stack = list(nodes)
    while stack:
        event = stack.pop()
        in_backward.add(event.id)
        stack.extend(event.cpu_children)
    forward = [e for e in events if e.id not in in_backward]
    sequence_layer: dict[int, str | None] = {}
    for event in forward:  # operators record the counter's next value: the last one that
        if event.sequence_nr >= 0 and not event.name.startswith(PREFIX):  # saw n made node n
            sequence_layer[event.sequence_nr] = _layer_of(event)
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for node in nodes:
        layer = sequence_layer.get(node.sequence_nr) or "outside layers"
        seconds[layer]["backward"] += node.cpu_time_total / 1e6
    for event in forward:
        seconds[_layer_of(event) or "outside layers"]["forward"] += (
            event.self_cpu_time_total / 1e6)
    return {k: dict(v) for k, v in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("training", "inference"), default="training")
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="profiled (and timed) calls")
    rows = sorted({*compare.PRECISION_OF, *compare.TRAINING} - {*compare.PEERS})
    parser.add_argument("--impl", default="spikeforge", choices=rows,
                        help="which spikeforge row of compare.py (its precision)")
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args()
    keep_freed_memory()  # as every spikeforge command runs
    torch.set_num_threads(args.threads)
    if args.kind == "training":
        run, _, net = compare.training(args.impl, args.timesteps, args.batch)
        grad = torch.enable_grad()
    else:
        run, _, net = compare.inference("vgg_cifar", args.impl, args.timesteps, args.batch)
        grad = torch.inference_mode()
    label_layers(net)
    with grad:
        run()  # warm-up (and compilation, with SPIKEFORGE_COMPILE=1)
        times = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            run()
            times.append(time.perf_counter() - tick)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                run()
    per_layer = attribute(prof.events())
    total = sum(sum(v.values()) for v in per_layer.values())
    ran = dict.fromkeys(e.name for e in prof.events() if e.name.startswith(PREFIX))
    order = [name for name in ran if name in per_layer] + sorted(set(per_layer) - set(ran))
    rows = []
    for name in order:
        fwd = per_layer[name].get("forward", 0.0) / args.repeats
        bwd = per_layer[name].get("backward", 0.0) / args.repeats
        rows.append({"layer": name.removeprefix(PREFIX), "forward_s": fwd, "backward_s": bwd,
                     "share": (fwd + bwd) * args.repeats / total})
    step = statistics.median(times)
    print(f"{args.kind}, T = {args.timesteps}, batch {args.batch}, {args.threads} thread(s): "
          f"{step:.3f} s per call without the profiler (median of {args.repeats}), "
          f"{total / args.repeats:.3f} s with it")
    print(f"{'layer':<30} {'forward s':>10} {'backward s':>11} {'share':>7}")
    for row in rows:
        print(f"{row['layer']:<30} {row['forward_s']:>10.3f} {row['backward_s']:>11.3f} "
              f"{100 * row['share']:>6.1f}%")
    by_type: dict[str, float] = defaultdict(float)
    for row in rows:
        outside = row["layer"] == "outside layers"
        by_type[row["layer"] if outside else row["layer"].rsplit(" ", 1)[-1]] += row["share"]
    print("by type: " + ", ".join(f"{name} {100 * share:.1f}%" for name, share in
                                  sorted(by_type.items(), key=lambda kv: -kv[1])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "isa": compare.isa(),
            "compile": compile_enabled(), "native_lif": native_status(),
            "kind": args.kind, "implementation": args.impl, "timesteps": args.timesteps,
            "batch": args.batch, "threads": args.threads, "seconds_per_call": step,
            "seconds_per_call_profiled": total / args.repeats, "layers": rows,
            "share_by_type": dict(by_type)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
