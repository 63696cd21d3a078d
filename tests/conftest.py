"""Shared fixtures: where the real data sets are, and small deterministic settings."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _real_data_root() -> Path | None:
    for candidate in (os.environ.get("SPIKEFORGE_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """Root holding the published MNIST / Fashion-MNIST / CIFAR-10 files (``make test`` points
    ``SPIKEFORGE_DATA`` at ``../shared/data``)."""
    root = _real_data_root()
    if root is None:
        pytest.skip("real data sets not found: set SPIKEFORGE_DATA to a folder with MNIST/raw")
    return root


@pytest.fixture
def no_compile_fallback():
    """Fails the test if a :func:`spikeforge.runtime.compilable` function fell back to running
    uncompiled: with ``SPIKEFORGE_COMPILE=1`` the compiled kernels must really be used."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if "uncompiled" in str(w.message)]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


class EpochSpy:
    """Counts the training epochs that run; the ``kill_at``-th raises KeyboardInterrupt, as
    a kill or Ctrl-C would, after the previous epoch's checkpoint was written."""

    def __init__(self, real):
        self.real, self.calls, self.kill_at = real, 0, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


@pytest.fixture
def epochs(monkeypatch) -> EpochSpy:
    import spikeforge.train.loop as loop

    spy = EpochSpy(loop._train_epoch)
    monkeypatch.setattr(loop, "_train_epoch", spy)
    return spy
