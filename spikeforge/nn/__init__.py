"""ANN-side layers: activations designed for conversion to spiking networks.

These are ordinary (non-spiking) ``nn.Module`` s used while training the ANN; the converter
later replaces them by spiking neurons whose threshold comes from the layer's parameters.
:mod:`spikeforge.nn.pooling` holds the average pool a directly trained SNN runs (an
``nn.AvgPool2d`` with a lighter backward).
"""

from __future__ import annotations

from spikeforge.nn.activations import ClippedReLU
from spikeforge.nn.quantized import CSQCFS, QCFS

__all__ = ["CSQCFS", "QCFS", "ClippedReLU"]
