"""The "python version" of CIFAR-10 and CIFAR-100: pickled batches, read from the extracted
folder or straight out of the ``.tar.gz`` archive (nothing is extracted to disk)."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikeforge.data.errors import DatasetError, corrupt

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR release keeps its batches and what its keys are called."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
    meta="batches.meta", label_key="labels", names_key="label_names", num_classes=10)
CIFAR100 = CifarLayout(
    folder="cifar-100-python", archive="cifar-100-python.tar.gz",
    train=("train",), test=("test",),
    meta="meta", label_key="fine_labels", names_key="fine_label_names", num_classes=100)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only, so a tampered download cannot run
    code (the batches hold dicts, lists, strings, ints and one uint8 array; Python 3 writes
    bytes into protocol-2 pickles as ``_codecs.encode`` calls)."""

    _ALLOWED = {(module, name)
                for core in ("numpy.core", "numpy._core")
                for module, name in ((f"{core}.multiarray", "_reconstruct"),
                                     (f"{core}.multiarray", "scalar"),
                                     (f"{core}.numeric", "_frombuffer"))}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar(source: str | Path, layout: CifarLayout,
               split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read one split of a CIFAR release.

    Args:
        source: the extracted folder (``cifar-10-batches-py/``) or the ``.tar.gz`` archive.
        layout: :data:`CIFAR10` or :data:`CIFAR100`.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels, class_names)``: uint8 (N, 3, 32, 32), int64 (N,), names in label order.
    """
    source = Path(source)
    members = (*(layout.train if split == "train" else layout.test), layout.meta)
    archived = source.is_file()
    raw = _read_tar(source, layout, members) if archived else _read_folder(source, members)
    where = {m: f"{source} ({layout.folder}/{m})" if archived else str(source / m)
             for m in members}
    meta = _unpickle(raw[layout.meta], where[layout.meta])
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise corrupt(where[layout.meta], f"no list of {layout.num_classes} "
                                          f"{layout.names_key!r} in it")
    images, labels = [], []
    for member in members[:-1]:
        data, batch_labels = _check_batch(_unpickle(raw[member], where[member]),
                                          where[member], layout.label_key)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    label_array = np.concatenate(labels)
    if label_array.size and not 0 <= label_array.min() <= label_array.max() < layout.num_classes:
        raise corrupt(source, f"labels outside 0..{layout.num_classes - 1}")
    return np.concatenate(images), label_array, tuple(str(n) for n in names)


def _check_batch(batch: Any, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``data`` array and the labels of one unpickled batch, checked for shape and type."""
    data = batch.get("data") if isinstance(batch, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != _PIXELS):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise corrupt(where, f"'data' should be a uint8 array of shape (n, {_PIXELS}), "
                             f"got {got}")
    try:
        labels = np.asarray(batch.get(label_key, ()), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise corrupt(where, f"{label_key!r} is not a list of integers") from exc
    if labels.shape != (len(data),):
        raise corrupt(where, f"{len(data)} images but {labels.size} {label_key!r}")
    return data, labels


def _unpickle(raw: bytes, where: str) -> Any:
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # a damaged pickle can fail in many ways, all meaning "corrupt"
        raise corrupt(where, f"cannot unpickle it ({type(exc).__name__}: {exc})") from exc


def _read_folder(folder: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    missing = [m for m in members if not (folder / m).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)}: the extracted folder is "
                           "incomplete; delete it and extract or download the archive again.")
    try:
        return {m: (folder / m).read_bytes() for m in members}
    except OSError as exc:
        raise DatasetError(f"cannot read {folder}: {exc}") from exc


def _read_tar(archive: Path, layout: CifarLayout, members: tuple[str, ...]) -> dict[str, bytes]:
    """Stream through the archive once, keeping the wanted members and stopping early."""
    wanted = {f"{layout.folder}/{m}": m for m in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for info in tar:
                name = wanted.get(info.name.removeprefix("./"))
                if name is not None and info.isfile():
                    handle = tar.extractfile(info)
                    assert handle is not None
                    found[name] = handle.read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise corrupt(archive, f"cannot read the archive ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {archive}: {exc}") from exc
    missing = [m for m in members if m not in found]
    if missing:
        names = ", ".join(f"{layout.folder}/{m}" for m in missing)
        raise corrupt(archive, f"the archive has no {names}")
    return found
