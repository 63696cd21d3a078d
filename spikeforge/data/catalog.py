"""The data sets spikeforge knows: where their files live under the data root, where to
download them, and how to turn them into an :class:`ImageDataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spikeforge.data.cifar import CIFAR10, CIFAR100, CifarLayout, read_cifar
from spikeforge.data.dataset import ImageDataset
from spikeforge.data.download import download as fetch
from spikeforge.data.errors import DatasetError
from spikeforge.data.idx import read_mnist
from spikeforge.data.svhn import read_svhn, require_scipy
from spikeforge.registry import Registry

SPLITS: tuple[str, ...] = ("train", "test")
ENV_VAR = "SPIKEFORGE_DATA"
BUNDLED = Path(__file__).resolve().with_name("bundled")

#: Base URL each data set's files are downloaded from (tests point these at a local server).
MIRRORS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",
}

#: MD5 of each published file, checked on download only (files already on disk are trusted
#: as long as their structure is sound: local copies may be recompressed).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
}

#: Published per-channel mean and standard deviation of the training images, in [0, 1] units.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist_demo": ((0.1307,), (0.3081,)),
}

DIGITS = tuple(str(d) for d in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

_Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]  # images, labels, class names
_Reader = Callable[[Path, str, bool], _Arrays]  # (root, split, download) -> arrays


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$SPIKEFORGE_DATA``, else
    ``~/.cache/spikeforge``."""
    chosen = root if root is not None else os.environ.get(ENV_VAR) or "~/.cache/spikeforge"
    return Path(chosen).expanduser().absolute()


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = True) -> ImageDataset:
    """Load one split of a data set into memory, downloading missing files if allowed.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        root: data root (see :func:`resolve_root`); ignored by ``mnist_demo``, which ships
            inside the package.
        download: fetch missing files from the official sources (MD5-checked).

    Raises:
        DatasetError: unknown name or split, files missing (one message listing each expected
            path and its URL), download failed, or a file is truncated or corrupt.
    """
    reader = DATASETS.lookup(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for {name}; use 'train' or 'test'")
    images, labels, classes = reader(resolve_root(root), split, download)
    mean, std = STATS[name]
    return ImageDataset(name, split, torch.from_numpy(images), torch.from_numpy(labels),
                        classes, mean, std)


def _fetch(name: str, split: str, root: Path, missing: list[Path], download: bool,
           alternative: str = "") -> None:
    """Download ``missing`` files from :data:`MIRRORS`, or raise one error listing them all."""
    if not missing:
        return
    base = MIRRORS[name]
    reason = "downloading is off (download=False)"
    if download:
        try:
            for dest in missing:
                fetch(base + dest.name, dest, CHECKSUMS[name][dest.name])
            return
        except OSError as exc:
            reason = f"downloading failed: {exc}"
        missing = [dest for dest in missing if not dest.is_file()]
    lines = [f"{name} {split}: {len(missing)} file(s) missing under {root} ({reason})",
             *(f"  {dest}   from {base}{dest.name}" for dest in missing)]
    if alternative:
        lines.append(alternative)
    lines.append(f"Put the files there, or point --data-root (CLI) or the {ENV_VAR} environment "
                 "variable at a folder that has them.")
    raise DatasetError("\n".join(lines))


def _first_file(*candidates: Path) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def _idx_reader(name: str, folder: str, classes: tuple[str, ...]) -> _Reader:
    def read(root: Path, split: str, download: bool) -> _Arrays:
        raw = root / folder / "raw"
        found = {stem: _first_file(raw / stem, raw / f"{stem}.gz") for stem in _IDX_STEMS[split]}
        _fetch(name, split, root, [raw / f"{s}.gz" for s, p in found.items() if p is None],
               download, "(the uncompressed files, without .gz, are read as well)")
        return (*read_mnist(*(p or raw / f"{s}.gz" for s, p in found.items())), classes)

    return read


def _cifar_reader(name: str, layout: CifarLayout, folder: str) -> _Reader:
    def read(root: Path, split: str, download: bool) -> _Arrays:
        dest = root / folder / layout.archive
        source = (root / layout.folder if (root / layout.folder).is_dir()
                  else _first_file(root / layout.archive, dest))
        if source is None:
            _fetch(name, split, root, [dest], download,
                   f"(or the archive at {root / layout.archive}, or the extracted folder "
                   f"{root / layout.folder})")
            source = dest
        return read_cifar(source, layout, split)

    return read


def _read_svhn(root: Path, split: str, download: bool) -> _Arrays:
    require_scipy()
    dest = root / "SVHN" / f"{split}_32x32.mat"
    source = _first_file(dest, root / dest.name)
    if source is None:
        _fetch("svhn", split, root, [dest], download, f"(or at {root / dest.name})")
        source = dest
    return (*read_svhn(source), DIGITS)


def _read_demo(root: Path, split: str, download: bool) -> _Arrays:
    paths = [BUNDLED / f"{stem}.gz" for stem in _IDX_STEMS[split]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DatasetError(f"the bundled MNIST subset is missing ({', '.join(missing)}): "
                           "reinstall spikeforge, or run scripts/make_bundled_mnist.py in a "
                           "source checkout.")
    return (*read_mnist(*paths), DIGITS)


#: data set name → its reader ``(root, split, download) -> (images, labels, classes)``
DATASETS: Registry[_Reader] = Registry("data set", {
    "mnist": _idx_reader("mnist", "MNIST", DIGITS),
    "fashion_mnist": _idx_reader("fashion_mnist", "FashionMNIST", FASHION),
    "cifar10": _cifar_reader("cifar10", CIFAR10, "CIFAR10"),
    "cifar100": _cifar_reader("cifar100", CIFAR100, "CIFAR100"),
    "svhn": _read_svhn,
    "mnist_demo": _read_demo,
}, error=DatasetError)
