"""What bf16 autocast costs a training run in accuracy: the same config trained with
``run.amp=false`` (float32) and ``run.amp=bfloat16`` (synaptic layers in bf16; a spiking
network's LIF membranes and surrogate gradients stay float32), same seed and data order, and
in float32 with the next seed: the difference bf16 makes is worth reading beside the one a
seed makes.

    python benchmarks/bf16_training.py configs/fashion_mnist_snn.yaml data.train_subset=10000 \
        optim.epochs=3 --threads 1 --out-dir runs/bf16_training/fashion_mnist \
        --json benchmarks/results/bf16_training_fashion_mnist.json

On a CPU without AVX512-BF16 / AMX bf16 is emulated: the arithmetic (bf16 operands, float32
accumulation) is that of bf16 hardware, the speed is not, so the JSON records whether it was
native and its times are no measure of bf16's speed there. Each run resumes from its
checkpoint (a finished one is read back), so a killed benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

#: run name -> (run.amp, seed offset)
RUNS = {"float32": ("false", 0), "bfloat16": ("bfloat16", 0), "float32_next_seed": ("false", 1)}


def main() -> int:
    from spikeforge.config import load_config
    from spikeforge.runtime import machine_info, native_bf16
    from spikeforge.train import TrainConfig, fit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a training config (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="each run goes into OUT_DIR/<its name in RUNS>")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seed = load_config(TrainConfig, args.config, args.overrides).seed
    rows = {}
    for name, (amp, offset) in RUNS.items():
        cfg = load_config(TrainConfig, args.config, [
            *args.overrides, f"seed={seed + offset}", f"run.amp={amp}",
            f"run.threads={args.threads}", "run.progress=false",
            f"run.out_dir={args.out_dir / name}"])
        result = fit(cfg, resume=True)
        summary = result.summary
        rows[name] = {
            "precision": summary["precision"], "run_amp": amp, "seed": seed + offset,
            "test_accuracy": [h["test_accuracy"] for h in result.history],
            "train_seconds": summary["provenance"]["train_seconds"],
            "results": str(args.out_dir / name / "results.json")}
    f32, bf16, reseeded = (rows[name]["test_accuracy"] for name in RUNS)
    diffs = [b - a for a, b in zip(f32, bf16, strict=True)]
    seed_diffs = [b - a for a, b in zip(f32, reseeded, strict=True)]
    native = native_bf16("cpu")
    print(f"{'epoch':>5} {'float32 %':>10} {'bfloat16 %':>11} {'diff':>6} "
          f"{'float32, seed+1 %':>18} {'diff':>6}")
    for epoch, row in enumerate(zip(f32, bf16, diffs, reseeded, seed_diffs, strict=True), 1):
        print("{:5d} {:10.2f} {:11.2f} {:+6.2f} {:18.2f} {:+6.2f}".format(epoch, *row))
    print(f"bf16 {'native' if native else 'emulated'} on this CPU "
          f"({torch.backends.cpu.get_cpu_capability()})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "config": args.config,
            "overrides": args.overrides, "threads": args.threads,
            "bf16_native": native, "machine": machine_info(),
            "bf16_diff": diffs, "seed_diff": seed_diffs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
