"""A small, fast, convertible CIFAR network after the airbench line of work (Page's ResNet,
hlb-CIFAR10, Jordan 2024, arXiv 2404.00498), built from the layers the converter maps.

Layout at 32x32 (widths ``(64, 256, 256)``)::

    whiten   Conv2d(C, 2·C·k², k = 2, no padding) - act         31x31, fixed after whitening
    block i  Conv3x3 - BN - act - pool 2 - Conv3x3 - BN - act   15x15, 7x7, 3x3
    head     AdaptiveAvgPool2d(1) (or max) - Flatten - Linear(no bias) - × head_scale

The first convolution is a patch-whitening layer: its filters are the eigenvectors of the
covariance of the training images' k×k patches, scaled by λ^(-1/2), and their negatives
(:func:`spikeforge.train.recipe.whiten_first_conv` computes them from data; the weights are
then frozen). airbench pools before its first BN and uses GELU; here the pool follows the
activation (conv - BN - act - pool, as every zoo model), so that the network converts with
any activation of the factory (ReLU, QCFS, CS-QCFS) and either pool.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spikeforge.models.layers import (
    ActFactory,
    ConvNet,
    Scale,
    conv_bn_act,
    init_weights,
    make_pool,
    scaled,
)
from spikeforge.models.registry import register

__all__ = ["CifarNet", "cifarnet"]


class CifarNet(ConvNet):
    """The airbench-style network: ``features`` (whitening conv, three conv blocks) and
    ``head`` (global pool, Flatten, bias-free Linear).

    =========  =================  ============  ======  =============
    widths     MACs / image 32²   params        notes
    =========  =================  ============  ======  =============
    64-256-256 118 M              1.97 M        airbench94's widths
    128-384-384 325 M             4.6 M         airbench95's widths
    =========  =================  ============  ======  =============

    Shape:
        - Input: ``(B, in_channels, H, W)``, H and W >= 17 (32x32: CIFAR, SVHN).
        - Output: ``(B, num_classes)``.

    Example:
        >>> model = create("cifarnet", num_classes=10, in_channels=3)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """


@register("cifarnet")
def cifarnet(*, num_classes: int, in_channels: int, act: ActFactory, pool: str,
             widths: Sequence[int] = (64, 256, 256), whiten_kernel: int = 2,
             head_pool: str = "avg", head_scale: float = 1.0, dropout: float = 0.0,
             width: float = 1.0, conv_init: str = "he") -> CifarNet:
    """Build :class:`CifarNet`.

    Args:
        num_classes, in_channels, act, pool: see :func:`spikeforge.models.create`.
        widths: output channels of the three blocks. Default ``(64, 256, 256)``.
        whiten_kernel: k of the k×k whitening convolution, which has 2·C·k² output channels
            (C = in_channels; 24 for RGB and k = 2). Default 2.
        head_pool: the global pool before the Linear, ``"avg"`` or ``"max"``. Default avg.
        head_scale: a constant the logits are multiplied by (airbench: 1/9; with a
            bias-free Linear it scales the classifier's gradients and effective learning
            rate). Default 1 (none).
        dropout: dropout probability before the Linear. Default 0.
        width: multiplier of the block widths. Default 1.
        conv_init: the convolutions' initial weights: ``"he"``, N(0, 2/fan_out) (He et al.
            2015, as every zoo model), or ``"uniform"``, PyTorch's default
            U(±1/√fan_in) (airbench): filter norms 1/√3 against √(2·fan_in/fan_out) — with
            batch norm after each conv, a smaller weight norm is a higher effective
            learning rate. Default ``"he"``.
    """
    if conv_init not in ("he", "uniform"):
        raise ValueError(f"unknown conv_init {conv_init!r}; choose one of: he, uniform")
    k = whiten_kernel
    whitened = 2 * in_channels * k * k
    layers: list[nn.Module] = [nn.Conv2d(in_channels, whitened, k, padding=0), act(whitened)]
    channels = whitened
    for block in widths:
        out = scaled(int(block), width)
        layers += conv_bn_act(channels, out, act)
        layers.append(make_pool(pool))
        layers += conv_bn_act(out, out, act)
        channels = out
    global_pool = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}
    if head_pool not in global_pool:
        raise ValueError(f"unknown head_pool {head_pool!r}; choose one of: avg, max")
    head = nn.Sequential(global_pool[head_pool](1), nn.Flatten(),
                         *([nn.Dropout(dropout)] if dropout > 0 else []),
                         nn.Linear(channels, num_classes, bias=False),
                         *([Scale(head_scale)] if head_scale != 1.0 else []))
    model = CifarNet(nn.Sequential(*layers), head)
    init_weights(model, layers=(nn.Conv2d,) if conv_init == "he" else ())
    return model
