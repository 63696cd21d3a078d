"""The model zoo: a registry of conversion-friendly ANNs.

>>> import spikeforge as sf
>>> sf.models.available()[:4]
['cnn_small', 'lenet', 'resnet11', 'resnet18']
>>> model = sf.models.create("resnet20", num_classes=10, in_channels=3, activation="relu")

Every model is built only from Conv2d, Linear, BatchNorm, the factory's activation modules,
AvgPool2d / MaxPool2d (``pool=``), AdaptiveAvgPool2d, Flatten, Dropout and residual additions
followed by an activation: no in-place ops, no functional activations, no data-dependent
control flow, so ``torch.fx.symbolic_trace`` sees every operation the converter must map.
"""

from __future__ import annotations

# importing the families registers their models
from spikeforge.models import cifarnet, cnn, resnet, vgg  # noqa: F401
from spikeforge.models.activations import ACTIVATIONS, make_activation, register_activation
from spikeforge.models.registry import MODELS, available, create, register

__all__ = ["ACTIVATIONS", "MODELS", "available", "create", "make_activation", "register",
           "register_activation"]
