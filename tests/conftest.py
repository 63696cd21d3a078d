"""Shared fixtures: where the real data sets are, and small deterministic settings; the
``needs_compiler`` mark of the tests that build spikeforge's C++ kernels."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None,
                                    reason="no C++ compiler to build the kernels with")


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


@pytest.fixture
def two_threads():
    """Two torch threads for the test (the zoo's larger models), restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def kill_and_resume(epochs):
    """``kill_and_resume(cfg, epoch=2)``: run ``fit(cfg)``, interrupt it when epoch ``epoch``
    starts (as a kill would, after the previous epoch's checkpoint), check that it stopped,
    then resume it and return the resumed run's ``TrainResult``."""
    from spikeforge.train import fit

    def run(cfg, epoch: int = 2):
        epochs.kill_at = epochs.calls + epoch
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)
        epochs.kill_at = None
        return fit(cfg, resume=True)

    return run


TINY_MNIST = {
    "data": {"dataset": "mnist_demo"},
    "model": {"name": "cnn_small"},
    "run": {"threads": 1, "progress": False},
}


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied section by section (nested dicts merge, values
    replace); neither argument is modified."""
    out = {k: _merged(v, {}) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        out[key] = (_merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else _merged(value, {})
                    if isinstance(value, dict) else value)
    return out


class TrainConfigs:
    """The training runs of the tests: the shared tiny real-data run (``TINY_MNIST``: bundled
    MNIST, ``cnn_small``, one thread, no progress bar), a test file's ``changes`` (a nested
    dict) merged over it, ``run.out_dir``, then ``key=value`` overrides."""

    def data(self, out_dir, changes: dict | None = None, *overrides: str) -> dict:
        from spikeforge.config import apply_overrides

        return apply_overrides(_merged(TINY_MNIST, changes or {}),
                               [f"run.out_dir={out_dir}", *overrides])

    def __call__(self, out_dir, changes: dict | None = None, *overrides: str):
        from spikeforge.config import from_dict
        from spikeforge.train import TrainConfig

        return from_dict(TrainConfig, self.data(out_dir, changes, *overrides))

    def yaml(self, path: Path, out_dir, changes: dict | None = None, *overrides: str) -> Path:
        """The same config written to ``path`` as YAML (for the command line); returns it."""
        import yaml

        path.write_text(yaml.safe_dump(self.data(out_dir, changes, *overrides)))
        return path


@pytest.fixture(scope="session")
def train_config() -> TrainConfigs:
    """Builds the tests' training configs (:class:`TrainConfigs`)."""
    return TrainConfigs()
