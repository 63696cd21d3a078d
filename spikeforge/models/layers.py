"""Small building blocks shared by the model families.

Everything here returns standard layers only (Conv2d, BatchNorm, the factory's activation,
AvgPool2d / MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Linear) and :class:`Scale`, flat
in ``nn.Sequential`` where possible, so that the converter's FX pass sees a plain chain of
known operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from spikeforge.registry import Registry

__all__ = ["ActFactory", "ConvNet", "POOLS", "Scale", "classifier", "conv_bn_act", "init_weights",
           "make_pool", "scaled"]

#: ``act(channels) -> nn.Module``: the model's activation, bound to its spec and options.
ActFactory = Callable[[int], nn.Module]

#: the downsampling pools selectable with ``pool=``
POOLS: Registry[type[nn.Module]] = Registry("pool", {"avg": nn.AvgPool2d,
                                                     "max": nn.MaxPool2d})


def make_pool(pool: str, kernel_size: int = 2) -> nn.Module:
    """A downsampling pool (stride = kernel size): ``"avg"`` (converts exactly to an SNN) or
    ``"max"``."""
    return POOLS.lookup(pool)(kernel_size)


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def conv_bn_act(in_channels: int, out_channels: int, act: ActFactory, *, kernel_size: int = 3,
                stride: int = 1, padding: int | None = None, batch_norm: bool = True
                ) -> list[nn.Module]:
    """``[Conv2d, BatchNorm2d, act]`` (the conv has a bias only without batch norm)."""
    if padding is None:
        padding = kernel_size // 2
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=padding, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(act(out_channels))
    return layers


def classifier(in_features: int, hidden: Sequence[int], num_classes: int, act: ActFactory,
               dropout: float = 0.0) -> list[nn.Module]:
    """``[Dropout, Linear, act] * len(hidden) + [Dropout, Linear(num_classes)]``; the dropouts
    are left out when ``dropout == 0``. The last Linear is the readout: no activation."""
    layers: list[nn.Module] = []
    features = in_features
    for width in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(features, width), act(width)]
        features = width
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(features, num_classes))
    return layers


def init_weights(model: nn.Module, mode: str = "fan_out",
                 layers: tuple[type[nn.Module], ...] = (nn.Conv2d,)) -> None:
    """He-normal weights N(0, 2/fan) for ``layers`` (default: convolutions with fan-out, as
    torchvision; Linear layers keep PyTorch's default), zero biases, unit/zero batch norm."""
    for module in model.modules():
        if isinstance(module, layers):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class Scale(nn.Module):
    """y = c·x for a constant c: a network's output scale (airbench's logits × 1/9, which
    sets the classifier's effective learning rate). The converter folds it into the layer
    before it (:func:`spikeforge.convert.graph.fold_scaling`)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class ConvNet(nn.Module):
    """A feed-forward network: ``head(features(x))``, both flat ``nn.Sequential`` s.

    The base of the plain (non-residual) families; subclasses only document the architecture.

    Args:
        features: the convolutional body.
        head: global/adaptive pooling, Flatten and the classifier.
    """

    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
