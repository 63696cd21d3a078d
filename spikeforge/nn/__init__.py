"""ANN-side layers: activations designed for conversion to spiking networks.

These are ordinary (non-spiking) ``nn.Module`` s used while training the ANN; the converter
later replaces them by spiking neurons whose threshold comes from the layer's parameters.
:mod:`spikeforge.nn.pooling` and :mod:`spikeforge.nn.spike_conv` hold the average pool and
the convolution a directly trained SNN runs (an ``nn.AvgPool2d`` with a lighter backward, an
``nn.Conv2d`` whose weight gradient is summed over its input spikes only).
"""

from __future__ import annotations

from spikeforge.nn.activations import ClippedReLU
from spikeforge.nn.quantized import CSQCFS, QCFS

__all__ = ["CSQCFS", "QCFS", "ClippedReLU"]
