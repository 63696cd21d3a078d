"""What a conversion method costs: images per second at the smallest T whose accuracy is
within 0.5 points of the ANN, for spikeforge's methods and SpikingJelly's
own converter (its default recipe: ``RateCodingRecipe(mode="99.9%")``, IF neurons with soft
reset, single-step loop), on the same trained ANN and the same test images, in one run.

    python benchmarks/time_to_accuracy.py results/mnist_cnn/model.pt --max-t 64 \
        --json benchmarks/results/time_to_accuracy_mnist.json
    python benchmarks/time_to_accuracy.py results/cifar10_vgg9/model.pt --test-subset 1000

For each method: accuracy after every t ≤ ``--max-t`` on the test images, the first t within
0.5 points of the ANN's accuracy on the same images (``t_star``; none if never), and the
median images/s of ``--repeats`` timed runs of a batch of ``--batch`` test images at t_star.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("threshold_balancing", "threshold_balancing:channelwise=true", "termapping",
           "augmapping")
TOLERANCE = 0.5


def first_within(accuracy: list[float], target: float) -> int | None:
    """The first t (1-based) whose accuracy is at least ``target``."""
    return next((t for t, a in enumerate(accuracy, 1) if a >= target), None)


def images_per_s(run: Callable[[], object], batch: int, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        run()
        times.append(time.perf_counter() - tick)
    return batch / statistics.median(times)


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The arguments this script shares with ``precision.py``: the ANN, test images, timing."""
    parser.add_argument("checkpoint", help="a trained ANN (spikeforge checkpoint)")
    parser.add_argument("--test-subset", type=int, help="seeded subset of the test set")
    parser.add_argument("--batch", type=int, default=64, help="batch of the timing runs")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-root")
    parser.add_argument("--json", type=Path)


def load_ann(args: argparse.Namespace) -> tuple[Any, nn.Module]:
    """(the conversion setup: model, test loader, calibration; the ANN in eval mode)."""
    from spikeforge.experiments.conversion import load_checkpoint_and_data

    torch.set_num_threads(args.threads)
    setup = load_checkpoint_and_data(args.checkpoint, data_root=args.data_root,
                                     test_subset=args.test_subset, batch_size=250, device="cpu")
    return setup, setup.model.eval()


def spikingjelly_snn(ann: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    from spikingjelly.activation_based import ann2snn

    recipe = ann2snn.RateCodingRecipe(dataloader=calibration, mode="99.9%")
    return ann2snn.FXConverter(recipe=recipe).convert(copy.deepcopy(ann)).eval()


def spikingjelly_accuracy(snn: nn.Module, loader, steps: int) -> list[float]:
    """Accuracy after each t, as SpikingJelly's example evaluates it (reset, then a loop of
    single steps summing the outputs)."""
    from spikingjelly.activation_based import functional

    hits, total = torch.zeros(steps), 0
    with torch.inference_mode():
        for x, y in loader:
            functional.reset_net(snn)
            out = 0
            for t in range(steps):
                out = out + snn(x)
                hits[t] += int((out.argmax(1) == y).sum())
            total += len(y)
    return (100 * hits / total).tolist()


def main() -> int:
    import spikeforge as sf
    from spikeforge.experiments.conversion import parse_method
    from spikeforge.metrics import evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--max-t", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--no-spikingjelly", action="store_true")
    args = parser.parse_args()
    setup, ann = load_ann(args)
    with torch.inference_mode():
        hits = sum(int((ann(x).argmax(1) == y).sum()) for x, y in setup.loader)
    ann_accuracy = 100 * hits / len(setup.loader.dataset)
    target = ann_accuracy - TOLERANCE
    x = next(iter(setup.loader))[0][:args.batch]
    rows = [{"method": "ann", "accuracy_at_t_star": ann_accuracy, "t_star": None,
             "images_per_s": images_per_s(lambda: ann(x), len(x), args.repeats)}]
    for spec in args.methods:
        name, options = parse_method(spec)
        snn = sf.convert(ann, setup.calibration, name, timesteps=args.max_t, progress=False,
                         **options)
        accuracy = evaluate(snn, setup.loader, args.max_t, progress=False).accuracy
        t_star = first_within(accuracy, target)
        rows.append({"method": spec, "implementation": "spikeforge", "t_star": t_star,
                     "accuracy": accuracy,
                     "accuracy_at_t_star": accuracy[t_star - 1] if t_star else None,
                     "images_per_s": images_per_s(lambda s=snn, t=t_star: s(x, t), len(x),
                                                  args.repeats) if t_star else None})
        _print_row(rows[-1])
    if not args.no_spikingjelly:
        from spikingjelly.activation_based import functional

        sj = spikingjelly_snn(ann, setup.calibration)
        accuracy = spikingjelly_accuracy(sj, setup.loader, args.max_t)
        t_star = first_within(accuracy, target)

        def run() -> None:
            functional.reset_net(sj)
            for _ in range(t_star):
                sj(x)
        with torch.inference_mode():
            rate = images_per_s(run, len(x), args.repeats) if t_star else None
        rows.append({"method": "RateCodingRecipe 99.9%", "implementation": "spikingjelly",
                     "t_star": t_star, "accuracy": accuracy,
                     "accuracy_at_t_star": accuracy[t_star - 1] if t_star else None,
                     "images_per_s": rate})
        _print_row(rows[-1])
    print(f"\n{setup.dataset}, {setup.model_name}: ANN {ann_accuracy:.2f}% on "
          f"{len(setup.loader.dataset)} test images; t* = first t within {TOLERANCE} points")
    print(f"{'method':40s} {'t*':>4s} {'acc %':>7s} {'images/s':>9s}")
    for r in rows:
        _print_row(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "checkpoint": args.checkpoint,
            "dataset": setup.dataset, "model": setup.model_name,
            "test_images": len(setup.loader.dataset), "ann_accuracy": ann_accuracy,
            "tolerance": TOLERANCE, "threads": args.threads, "torch": torch.__version__,
            "machine": platform.platform(), "rows": rows}, indent=2))
    return 0


def _print_row(r: dict) -> None:
    name = r["method"] + (" (SpikingJelly)" if r.get("implementation") == "spikingjelly"
                          else "")
    t = "-" if r["t_star"] is None else str(r["t_star"])
    acc = "-" if r["accuracy_at_t_star"] is None else f"{r['accuracy_at_t_star']:.2f}"
    rate = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
    print(f"{name:40s} {t:>4s} {acc:>7s} {rate:>9s}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
