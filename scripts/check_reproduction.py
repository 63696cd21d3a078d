"""Re-run a published experiment from its config and compare every accuracy with the
committed one (within ±0.3 points).

    python scripts/check_reproduction.py results/mnist_qcfs --only qcfs_L1 --out runs/repro

Runs ``spikeforge run <config file> --out-dir OUT [--only ...]`` (the config file recorded in
the published results), then prints, per entry, the largest |Δ accuracy| over t and the ANN's
Δ, and exits with status 1 if any exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _key(entry: dict) -> tuple:
    return entry["variant"], entry["method"], json.dumps(entry["options"], sort_keys=True)


def compare(published: list[dict], fresh: list[dict], tolerance: float) -> bool:
    ok = True
    new = {_key(e): e for e in fresh}
    for old in published:
        e = new.get(_key(old))
        if e is None:
            continue
        worst = max(abs(a - b) for a, b in zip(old["accuracy"], e["accuracy"], strict=True))
        ann = abs(old["ann_accuracy"] - e["ann_accuracy"])
        good = worst <= tolerance and ann <= tolerance
        ok &= good
        print(f"{old['variant']:12s} {old['label']:36s} max |Δ| over t {worst:5.2f}  "
              f"ANN |Δ| {ann:5.2f}  {'ok' if good else 'DIFFERS'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("published", type=Path, help="a results/<experiment> folder")
    parser.add_argument("--out", type=Path, required=True, help="where to re-run it")
    parser.add_argument("--only", nargs="+", help="re-run only these variants")
    parser.add_argument("--tolerance", type=float, default=0.3)
    parser.add_argument("--threads", type=int, help="CPU threads (default: the config's)")
    args = parser.parse_args()
    record = json.loads((args.published / "results.json").read_text())
    config = record["results"][0]["provenance"]["config_file"]
    command = [sys.executable, "-m", "spikeforge.cli", "run", config, "--out-dir",
               str(args.out), "--no-progress", *(["--only", *args.only] if args.only else []),
               *(["--threads", str(args.threads)] if args.threads else [])]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    fresh = json.loads((args.out / "results.json").read_text())["results"]
    return 0 if compare(record["results"], fresh, args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
