"""Which JPEG settings a data set's images went through, if any.

Re-encoding an image that was decoded from a JPEG with the encoder's own quality and chroma
subsampling changes it least (JPEG's quantisation is nearly idempotent); any other setting
moves the pixels more (except near-lossless quality 100, which moves any image little, so it
is left out of the comparison). For each (quality, subsampling) this prints the mean squared change
(in 8-bit units) of re-encoding the first N test images with Pillow, and writes the table.

    python scripts/jpeg_settings.py cifar10 --json results/cifar10_data/jpeg_settings.json
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikeforge.data import load_dataset  # noqa: E402
from spikeforge.runtime import git_commit, write_json  # noqa: E402

QUALITIES = (50, 60, 70, 75, 80, 85, 90, 95)
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def reencoding_change(images: np.ndarray, quality: int, subsampling: int) -> float:
    """Mean squared pixel change of a JPEG round trip of ``images`` (N, H, W, 3) uint8."""
    total = 0.0
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
        total += float(((np.asarray(Image.open(buffer), dtype=float) - image) ** 2).mean())
    return total / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    test = load_dataset(args.dataset, "test")
    if test.in_channels != 3:
        parser.error(f"{args.dataset} is not an RGB data set")
    images = test.images[:args.images].permute(0, 2, 3, 1).numpy()
    rows = [{"quality": q, "subsampling": SUBSAMPLING[s],
             "mean_squared_change": reencoding_change(images, q, s)}
            for s in SUBSAMPLING for q in QUALITIES]
    best = min(rows, key=lambda r: r["mean_squared_change"])
    for row in rows:
        print(f"quality {row['quality']:3d}  {row['subsampling']}  "
              f"{row['mean_squared_change']:8.2f}")
    print(f"closest to idempotent: quality {best['quality']}, {best['subsampling']}")
    if args.json:
        write_json(args.json, {"dataset": args.dataset, "images": len(images), "rows": rows,
                               "closest": best, "provenance": {
                                   "command": " ".join(["python", *sys.argv]),
                                   "git_commit": git_commit(),
                                   "pillow": Image.__version__}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
