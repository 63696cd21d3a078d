"""The IDX file format of MNIST and Fashion-MNIST (plain or gzipped).

An IDX file is a big-endian header, ``0x00 0x00 <type> <ndim>`` then one int32 per dimension,
followed by the raw values. Only unsigned bytes (type ``0x08``) are used here, so the magic
number is ``2048 + ndim``: 2051 for image files (N, rows, cols), 2049 for label files (N,).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from spikeforge.data.errors import DatasetError, corrupt

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped if its name ends in ``.gz``) into a writable
    uint8 array of the shape its header gives.

    Raises:
        DatasetError: the magic number is not ``magic``, the header is short, or the data are
            shorter or longer than the header says (including a truncated gzip stream).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise corrupt(path, "too short for an IDX header")
            (found,) = struct.unpack(">i", head)
            if found != magic:
                raise corrupt(path, f"IDX magic number is {found}, expected {magic}")
            ndim = magic - (_UBYTE << 8)
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise corrupt(path, "too short for an IDX header")
            shape = struct.unpack(f">{ndim}i", dims_raw)
            if min(shape) < 0:
                raise corrupt(path, f"IDX header has a negative size {shape}")
            try:
                data = np.empty(shape, dtype=np.uint8)
            except (MemoryError, ValueError) as exc:
                raise corrupt(path, f"IDX header claims an impossible size {shape}") from exc
            view = memoryview(data).cast("B")
            filled = 0
            while filled < data.size:
                got = f.readinto(view[filled:])
                if not got:
                    raise corrupt(path, f"header promises {shape} = {data.size} bytes of data "
                                        f"but the file ends after {filled}")
                filled += got
            if f.read(1):
                raise corrupt(path, f"file has more data than its header {shape} promises")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise corrupt(path, f"cannot decompress it ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    return data


def write_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (not compressed)."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writing supports uint8 arrays only, got {array.dtype}")
    header = struct.pack(f">i{array.ndim}i", (_UBYTE << 8) + array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def read_mnist(images_path: str | os.PathLike,
               labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-style pair of IDX files (MNIST, Fashion-MNIST, the bundled subset).

    Returns:
        ``(images, labels)``: uint8 (N, 1, rows, cols) and int64 (N,) in 0..9.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels: one is truncated or from another release; "
                           "delete both and download them again.")
    if labels.size and labels.max() > 9:
        raise corrupt(labels_path, f"label {labels.max()} is outside 0..9")
    return images.reshape(len(images), 1, *images.shape[1:]), labels.astype(np.int64)
