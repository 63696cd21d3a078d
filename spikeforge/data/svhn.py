"""SVHN's cropped-digit files (``train_32x32.mat``, ``test_32x32.mat``: MATLAB v5), read with
SciPy, which is an optional dependency (``pip install spikeforge[svhn]``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spikeforge.data.errors import DatasetError, corrupt


def require_scipy() -> None:
    """Fail early, before any download, when SciPy is not installed."""
    try:
        import scipy.io  # noqa: F401
    except ImportError as exc:
        raise DatasetError("reading SVHN needs SciPy, which is not installed: "
                           "pip install spikeforge[svhn]") from exc


def read_svhn(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN ``.mat`` file.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,) digits 0..9 (the file's
        label 10 stands for the digit 0).
    """
    require_scipy()
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (FileNotFoundError, PermissionError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    except Exception as exc:  # scipy reports damage as OSError, ValueError, MatReadError...
        raise corrupt(path, f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    x, y = mat.get("X"), mat.get("y")
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4
            or x.shape[:3] != (32, 32, 3)):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "nothing"
        raise corrupt(path, f"'X' should be uint8 of shape (32, 32, 3, N), got {got}")
    if (not isinstance(y, np.ndarray) or y.dtype.kind not in "iuf"
            or y.size != x.shape[3]):
        raise corrupt(path, f"{x.shape[3]} images but {getattr(y, 'size', 0)} labels in 'y'")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise corrupt(path, "labels in 'y' outside 1..10")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels
