"""ANN-side layers: activations designed for conversion to spiking networks.

These are ordinary (non-spiking) ``nn.Module`` s used while training the ANN; the converter
later replaces them by spiking neurons whose threshold comes from the layer's parameters.
:mod:`spikeforge.nn.pooling` and :mod:`spikeforge.nn.spike_conv` hold the average pool and
the convolution SNNs run (an ``nn.AvgPool2d`` with a lighter backward for a directly trained
SNN; an ``nn.Conv2d`` whose forward and weight gradient are summed over its nonzero inputs,
for converted and directly trained SNNs alike).
"""

from __future__ import annotations

from spikeforge.nn.activations import ClippedReLU
from spikeforge.nn.quantized import CSQCFS, QCFS

__all__ = ["CSQCFS", "QCFS", "ClippedReLU"]
