"""Write the MNIST subset that ships inside the package (``spikeforge/data/bundled/``).

A class-balanced, seeded sample of the real MNIST: 600 images per class from the 60,000
training images and 100 per class from the 10,000 test images, as standard IDX files,
gzip level 9 with mtime 0 (so the bytes are reproducible), plus a README with provenance.

    python scripts/make_bundled_mnist.py [--root /work/shared/data] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing the package

from spikeforge.data.idx import read_mnist, write_idx  # noqa: E402
from spikeforge.runtime import atomic_open  # noqa: E402

OUT = REPO / "spikeforge" / "data" / "bundled"
SPLITS = {"train": ("train", 600), "test": ("t10k", 100)}
MAX_BYTES = 3_000_000


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find(raw: Path, stem: str) -> Path:
    """The gzipped file if present, else the uncompressed one."""
    for path in (raw / f"{stem}.gz", raw / stem):
        if path.is_file():
            return path
    sys.exit(f"error: {raw / stem}.gz not found; pass --root, the folder holding MNIST/raw/")


def balanced_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each label 0..9 drawn without replacement, in original order."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def write_file(path: Path, data: bytes) -> None:
    """Write atomically (the file is readable by all: it is package data)."""
    with atomic_open(path) as handle:
        handle.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/work/shared/data"),
                        help="data root holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    raw = args.root / "MNIST" / "raw"
    rng = np.random.default_rng(args.seed)
    sources, outputs, counts = [], [], []
    for split, (prefix, per_class) in SPLITS.items():
        image_src, label_src = (find(raw, f"{prefix}-{kind}-ubyte")
                                for kind in ("images-idx3", "labels-idx1"))
        images, labels = read_mnist(image_src, label_src)
        keep = balanced_sample(labels, per_class, rng)
        for kind, array, src in (("images-idx3", images[keep, 0], image_src),
                                 ("labels-idx1", labels[keep].astype(np.uint8), label_src)):
            dest = args.out / f"{prefix}-{kind}-ubyte.gz"
            write_file(dest, gzip.compress(write_idx(array), compresslevel=9, mtime=0))
            sources.append((src, sha256(src)))
            outputs.append((dest, sha256(dest), dest.stat().st_size))
        counts.append((split, len(keep), len(labels), per_class))

    total = sum(size for _, _, size in outputs)
    write_readme(args, sources, outputs, counts, total)
    for dest, _, size in outputs:
        print(f"{size:10,d}  {dest}")
    print(f"{total:10,d}  bytes in all (limit {MAX_BYTES:,d})")
    if total > MAX_BYTES:
        print("error: the bundled subset is too large", file=sys.stderr)
        return 1
    return 0


def write_readme(args: argparse.Namespace, sources: list, outputs: list, counts: list,
                 total: int) -> None:
    lines = [
        "# Bundled MNIST subset (`mnist_demo`)",
        "",
        "A small, class-balanced sample of MNIST shipped with spikeforge so that the demo and",
        "the tests run offline: `spikeforge.data.load_dataset(\"mnist_demo\", split)`.",
        "",
        "| split | images | drawn from | per class |",
        "|-------|-------:|-----------:|----------:|",
        *(f"| {s} | {n:,d} | {of:,d} | {k} |" for s, n, of, k in counts),
        "",
        "Files: standard IDX (magic 2051 for images, 2049 for labels), gzip level 9 with mtime 0,",
        "so rerunning the command reproduces them byte for byte. Images keep their original",
        "order within each split.",
        "",
        "## Provenance",
        "",
        "Made by `scripts/make_bundled_mnist.py`:",
        "",
        "```",
        f"python scripts/make_bundled_mnist.py --root {args.root} --seed {args.seed}",
        "```",
        "",
        f"For each split, `numpy.random.default_rng({args.seed})` (one generator, train first,",
        "then test) draws, for each digit 0..9 in turn, the per-class count without replacement",
        "among that digit's images; the chosen indices are sorted.",
        "",
        "Source files (SHA-256):",
        "",
        "```",
        *(f"{digest}  {path.relative_to(args.root)}" for path, digest in sources),
        "```",
        "",
        "These are the published MNIST files (their decompressed contents are the official",
        "ones; see the data folder's README). Output files (SHA-256, bytes):",
        "",
        "```",
        *(f"{digest}  {path.name}  {size}" for path, digest, size in outputs),
        "```",
        "",
        f"Total: {total:,d} bytes.",
        "",
        "## Licence and attribution",
        "",
        "MNIST is by Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), derived from",
        "NIST Special Databases 1 and 3, <http://yann.lecun.com/exdb/mnist/>. It is made",
        "available under the Creative Commons Attribution-Share Alike 3.0 licence",
        "(CC BY-SA 3.0, <https://creativecommons.org/licenses/by-sa/3.0/>); this subset is",
        "shared under the same licence.",
        "",
    ]
    write_file(args.out / "README.md", "\n".join(lines).encode())


if __name__ == "__main__":
    sys.exit(main())
