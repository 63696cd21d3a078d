"""spikeforge: accurate and efficient deep spiking neural networks in PyTorch.

Two routes to an SNN share one neuron core: ANN-to-SNN conversion (threshold balancing,
TerMapping, AugMapping, QCFS, CS-QCFS) and direct spike-based training (LIF, BPTT with
surrogate gradients). See ``docs/`` and ``DESIGN.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from spikeforge import data, models  # noqa: E402

__all__ = ["__version__", "data", "models"]
