"""spikeforge: accurate and efficient deep spiking neural networks in PyTorch.

Two routes to an SNN share one neuron core: ANN-to-SNN conversion (threshold balancing,
TerMapping, AugMapping, QCFS, CS-QCFS) and direct spike-based training (LIF, BPTT with
surrogate gradients). See ``docs/``; the equations and conventions are in ``docs/design.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from spikeforge import data, models, neurons  # noqa: E402
from spikeforge.convert import ConversionError, convert  # noqa: E402  (sf.convert is the function)
from spikeforge.metrics import EvaluationResult, evaluate  # noqa: E402
from spikeforge.simulate import SpikingNetwork  # noqa: E402

__all__ = ["ConversionError", "EvaluationResult", "SpikingNetwork", "__version__", "convert",
           "data", "evaluate", "export", "models", "neurons"]


def __getattr__(name: str) -> object:
    """``sf.export`` (NIR) is imported on first use: it needs the optional ``nir`` package
    only when a function of it is called, and costs nothing to programs that never export."""
    if name == "export":
        import importlib

        return importlib.import_module("spikeforge.export")
    raise AttributeError(f"module 'spikeforge' has no attribute {name!r}")
