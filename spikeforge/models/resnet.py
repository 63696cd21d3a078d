"""CIFAR-style residual networks (He et al., CVPR 2016), one builder for the family.

A :class:`BasicBlock` is ``act(BN(conv3x3(act(BN(conv3x3(x))))) + shortcut(x))`` with a
``conv1x1 - BN`` shortcut where the shape changes (projection shortcut, He et al.'s option B)
and the identity otherwise: an addition followed by the activation, which the converter maps
to a spiking neuron receiving both currents.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import Tensor, nn

from spikeforge.models.layers import (
    ActFactory,
    classifier,
    conv_bn_act,
    init_weights,
    make_pool,
    scaled,
)
from spikeforge.models.registry import register

__all__ = ["RESNET_CONFIGS", "BasicBlock", "ResNet", "build_resnet"]


class BasicBlock(nn.Module):
    """Residual block: ``out = act(residual(x) + shortcut(x))``.

    ``residual`` is ``conv3x3(stride) - BN - act - conv3x3 - BN``; ``shortcut`` is
    ``conv1x1(stride) - BN`` when the stride or the channel count changes, else ``None``
    (identity).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        act: activation factory, ``act(channels) -> nn.Module``.
        stride: stride of the first conv (and of the projection shortcut).
        batch_norm: use BatchNorm2d (without it the convs have biases).

    Shape:
        - Input: ``(B, in_channels, H, W)``.
        - Output: ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.

    Example:
        >>> block = BasicBlock(16, 32, lambda c: nn.ReLU(), stride=2)
        >>> block(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, act: ActFactory, stride: int = 1,
                 batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        layers = conv_bn_act(in_channels, out_channels, act, stride=stride,
                             batch_norm=batch_norm)
        layers.append(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        self.residual = nn.Sequential(*layers)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            projection: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                     bias=not batch_norm)]
            if batch_norm:
                projection.append(nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(*projection)
        self.act = act(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.residual(x)
        out = out + shortcut
        return self.act(out)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


#: name -> (stem channels, stem pool?, stages as (channels, blocks, first stride),
#:          classifier hidden widths)
RESNET_CONFIGS: dict[str, tuple[int, bool, tuple[tuple[int, int, int], ...], tuple[int, ...]]] = {
    # Lee et al. 2020 ResNet-7 (SVHN): stem conv64 + pool, 2 single blocks, fc1024 — 7 weight
    # layers; the channel plan is their ResNet-11's first two stages.
    "resnet7": (64, True, ((128, 1, 1), (256, 1, 2)), (1024,)),
    # Lee et al. 2020 ResNet-11: stem conv64 + pool, 4 single blocks, fc1024.
    "resnet11": (64, True, ((128, 1, 1), (256, 1, 2), (512, 1, 1), (512, 1, 2)), (1024,)),
    # He et al. 2016 / the usual CIFAR ResNet-18 (3x3 stem, no stem pool).
    "resnet18": (64, False, ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)), ()),
    # Zheng et al. 2021 (tdBN) ResNet-19: stem 128, 128x3, 256x3, 512x2, fc256.
    "resnet19": (128, False, ((128, 3, 1), (256, 3, 2), (512, 2, 2)), (256,)),
    # He et al. 2016 CIFAR ResNet-20: 16/32/64 x 3 blocks.
    "resnet20": (16, False, ((16, 3, 1), (32, 3, 2), (64, 3, 2)), ()),
}


class ResNet(nn.Module):
    """A CIFAR-style ResNet: ``stem`` (conv3x3 - BN - act [- pool]), ``layers`` (stages of
    :class:`BasicBlock`), ``head`` (``AdaptiveAvgPool2d(1)``, Flatten, classifier).

    Configurations (:data:`RESNET_CONFIGS`), params at 32x32 with 10 classes:

    ========  ==========================================================  ========
    name      architecture                                                params
    ========  ==========================================================  ========
    resnet11  stem 64 + pool; blocks 128, 256/2, 512, 512/2; GAP-1024-fc  10.34 M
    resnet18  stem 64; 64x2, 128x2 /2, 256x2 /2, 512x2 /2; GAP-fc         11.17 M
    resnet19  stem 128; 128x3, 256x3 /2, 512x2 /2; GAP-256-fc            12.70 M
    resnet20  stem 16; 16x3, 32x3 /2, 64x3 /2; GAP-fc                     0.27 M
    ========  ==========================================================  ========

    Sources: resnet18 and resnet20 are He et al., "Deep Residual Learning for Image
    Recognition", CVPR 2016 (resnet18 in its common CIFAR form with a 3x3 stem and no stem
    pool; resnet20 is the paper's CIFAR ResNet-20 with 16/32/64 channels, with projection
    instead of zero-padding shortcuts where the shape changes). Some SNN papers (e.g. QCFS)
    call a much wider network "ResNet-20"; ours is He et al.'s. resnet19 is the ResNet-19 of
    Zheng et al., "Going Deeper With Directly-Trained Larger Spiking Neural Networks"
    (tdBN), AAAI 2021. resnet11 is the ResNet-11 of Lee et al., Front. Neurosci. 2020
    (conv64 - pool, then residual blocks 64->128, 128->256 /2, 256->512, 512->512 /2), with
    batch norm, a projection shortcut in its last block (theirs subsamples) and a global
    average pool before its fc1024 (theirs flattens 512x4x4). Only resnet11 has a pool that
    ``pool`` selects; the others downsample with strided convolutions.

    Shape:
        - Input: ``(B, in_channels, H, W)``.
        - Output: ``(B, num_classes)``.

    Example:
        >>> model = create("resnet20", num_classes=10, in_channels=3)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, stem: nn.Sequential, layers: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.stem = stem
        self.layers = layers
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


def build_resnet(stem_channels: int, stem_pool: bool, stages: Sequence[tuple[int, int, int]],
                 hidden: Sequence[int], *, num_classes: int, in_channels: int, act: ActFactory,
                 pool: str, dropout: float = 0.0, batch_norm: bool = True,
                 width: float = 1.0) -> ResNet:
    """Build a :class:`ResNet`.

    Args:
        stem_channels: output channels of the 3x3 stem conv.
        stem_pool: follow the stem by a 2x2 pool (``pool`` picks avg or max).
        stages: ``(channels, blocks, stride of the first block)`` per stage.
        hidden: widths of the classifier's hidden Linear layers.
        num_classes, in_channels, act, pool: see :func:`spikeforge.models.create`.
        dropout: dropout probability before each Linear of the classifier.
        batch_norm: BatchNorm2d after each conv.
        width: multiplier of every conv channel count.
    """
    channels = scaled(stem_channels, width)
    stem = nn.Sequential(*conv_bn_act(in_channels, channels, act, batch_norm=batch_norm))
    if stem_pool:
        stem.append(make_pool(pool))
    blocks: list[nn.Module] = []
    for stage_channels, count, stride in stages:
        out = scaled(stage_channels, width)
        for i in range(count):
            blocks.append(BasicBlock(channels, out, act, stride if i == 0 else 1, batch_norm))
            channels = out
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *classifier(channels, hidden, num_classes, act, dropout))
    model = ResNet(stem, nn.Sequential(*blocks), head)
    init_weights(model)
    return model


for _name, _spec in RESNET_CONFIGS.items():  # one registered builder per table entry
    register(_name)(functools.partial(build_resnet, *_spec))
del _name, _spec
