"""What lower precision costs in accuracy, and gains or loses in speed: one trained ANN
converted once per precision — ``float32`` (exact), ``bf16`` (bfloat16 synaptic layers,
float32 membranes), ``int8`` (8-bit integer weights per output channel, a model of
neuromorphic hardware, on integer kernels where the CPU has them), ``int8-float`` (the same
int8 model computed in float32, for the kernels' speed-up) and ``auto`` (bf16 where native,
else float32) — and evaluated on the same test images at every t ≤ T.

    python benchmarks/precision.py results/mnist_cnn/model.pt --test-subset 2000 \
        --timesteps 32 --json benchmarks/results/precision_mnist.json

Per precision: accuracy after every t, its largest and final difference from the first
precision listed (float32), the agreement with the ANN's class at T, and the median images/s
of ``--repeats`` timed runs of a batch at T.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from time_to_accuracy import add_common_arguments, images_per_s, load_ann  # noqa: E402

PRECISIONS = ("float32", "bf16", "int8", "int8-float", "auto")


def main() -> int:
    import spikeforge as sf
    from spikeforge.experiments.conversion import parse_method
    from spikeforge.metrics import evaluate
    from spikeforge.simulate import quantize_weights_

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=3)
    parser.add_argument("--method", default="threshold_balancing",
                        help="conversion method with options, e.g. termapping")
    parser.add_argument("--timesteps", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bf16", "int8"],
                        choices=PRECISIONS)
    args = parser.parse_args()
    setup, ann = load_ann(args)
    name, options = parse_method(args.method)
    x = next(iter(setup.loader))[0][:args.batch]
    rows, reference = [], None
    for precision in args.precisions:
        snn = sf.convert(ann, setup.calibration, name, timesteps=args.timesteps,
                         progress=False, precision={"int8-float": "float32"}.get(
                             precision, precision), **options)
        if precision == "int8-float":  # the int8 model computed in float32
            snn.info["weight_rounding"] = max(quantize_weights_(snn.graph).values())
        result = evaluate(snn, setup.loader, args.timesteps, ann=ann, progress=False)
        reference = reference or result.accuracy
        diff = [a - b for a, b in zip(result.accuracy, reference, strict=True)]
        rows.append({
            "precision": precision, "accuracy": result.accuracy,
            "ann_accuracy": result.ann_accuracy, "ann_agreement_at_T": result.agreement[-1],
            "max_abs_diff_vs_first": max(abs(d) for d in diff), "diff_at_T": diff[-1],
            "images_per_s": images_per_s(lambda s=snn: s(x), len(x), args.repeats),
            "weight_rounding": snn.info.get("weight_rounding"),
            **{k: snn.info[k] for k in ("precision_reason", "int8_kernels") if k in snn.info}})
        r = rows[-1]
        print(f"{precision:8s} acc@T {r['accuracy'][-1]:6.2f}  Δ@T {r['diff_at_T']:+5.2f}  "
              f"max|Δ| {r['max_abs_diff_vs_first']:4.2f}  agrees with ANN "
              f"{r['ann_agreement_at_T']:6.2f}%  {r['images_per_s']:7.1f} images/s",
              flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "checkpoint": args.checkpoint,
            "dataset": setup.dataset, "model": setup.model_name, "method": args.method,
            "timesteps": args.timesteps, "test_images": len(setup.loader.dataset),
            "threads": args.threads, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.platform(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
