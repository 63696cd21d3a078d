"""CIFAR-style VGG networks (Simonyan & Zisserman, ICLR 2015), one builder for the family.

Every conv is ``conv3x3 - BatchNorm2d - act``; ``"P"`` in a config is a 2x2 downsampling pool
(``pool="avg"`` or ``"max"``). The body ends in ``AdaptiveAvgPool2d(1)`` so any input of at
least 16x16 (28x28, 32x32, ...) works; the classifier is
``[dropout - Linear - act] x len(hidden) - dropout - Linear(num_classes)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import nn

from spikeforge.models.layers import (
    ActFactory,
    ConvNet,
    classifier,
    conv_bn_act,
    init_weights,
    make_pool,
    scaled,
)
from spikeforge.models.registry import register

__all__ = ["VGG", "VGG_CONFIGS", "build_vgg"]

#: name -> (conv body: channel counts and "P" pools, default hidden Linear widths)
VGG_CONFIGS: dict[str, tuple[tuple[int | str, ...], tuple[int, ...]]] = {
    # 6 conv + 1 fc: a small CIFAR VGG.
    "vgg7": ((64, 64, "P", 128, 128, "P", 256, 256, "P"), ()),
    # 7 conv + 2 fc: the VGG-9 of Lee et al. 2020 (their flatten of 256x4x4 -> GAP).
    "vgg9": ((64, 64, "P", 128, 128, "P", 256, 256, 256, "P"), (1024,)),
    # 8 conv + 3 fc: config 'A'; the fifth pool (2x2 -> 1x1 at 32x32) is the global pool.
    "vgg11": ((64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512), (4096, 4096)),
    # 13 conv + 3 fc: config 'D', classifier 512-4096-4096-classes as in the QCFS code.
    "vgg16": ((64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P",
               512, 512, 512), (4096, 4096)),
}


class VGG(ConvNet):
    """A VGG network: ``features`` (conv-BN-act blocks and pools), then ``head``
    (``AdaptiveAvgPool2d(1)``, Flatten, classifier).

    Configurations (:data:`VGG_CONFIGS`), at 32x32 with 10 classes:

    =====  =======================================  ================  ======
    name   body (P = 2x2 pool)                      classifier        params
    =====  =======================================  ================  ======
    vgg7   64 64 P 128 128 P 256 256 P              GAP-fc            1.15 M
    vgg9   64 64 P 128 128 P 256 256 256 P          GAP-1024-fc       2.01 M
    vgg11  64 P 128 P 256 256 P 512 512 P 512 512   GAP-4096-4096-fc  28.1 M
    vgg16  64 64 P 128 128 P 256x3 P 512x3 P 512x3  GAP-4096-4096-fc  33.6 M
    =====  =======================================  ================  ======

    vgg11 / vgg16 are the ImageNet configs 'A' / 'D' adapted to 32x32 as usual in CIFAR and
    SNN-conversion work (QCFS, Bu et al. ICLR 2022): the fifth 2x2 pool becomes the global
    average pool (identical at 32x32 with ``pool="avg"``), so 28x28 inputs also work.
    vgg9 follows Lee et al., Front. Neurosci. 2020 (their 256x4x4 flatten replaced by the
    global pool). ``hidden=()`` gives the lean single-Linear classifier (vgg16: 14.7 M).

    Shape:
        - Input: ``(B, in_channels, H, W)``, H and W >= 2 ** (number of pools).
        - Output: ``(B, num_classes)``.

    Example:
        >>> model = create("vgg16", num_classes=100, in_channels=3, dropout=0.1)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """


def build_vgg(spec: tuple[Sequence[int | str], Sequence[int]], *, num_classes: int,
              in_channels: int, act: ActFactory, pool: str, dropout: float = 0.0,
              batch_norm: bool = True, width: float = 1.0,
              hidden: Sequence[int] | None = None) -> VGG:
    """Build a :class:`VGG` from a body config (channel counts and ``"P"`` pools).

    Args:
        spec: ``(body, default hidden widths)``, an entry of :data:`VGG_CONFIGS`; the body
            lists channel counts and ``"P"`` pools, e.g. ``(64, 64, "P", 128, "P")``.
        num_classes, in_channels, act, pool: see :func:`spikeforge.models.create`.
        dropout: dropout probability before each Linear of the classifier.
        batch_norm: BatchNorm2d after each conv.
        width: multiplier of every conv channel count.
        hidden: widths of the classifier's hidden Linear layers (default: the spec's).
    """
    config, default_hidden = spec
    hidden = default_hidden if hidden is None else tuple(hidden)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "P":
            layers.append(make_pool(pool))
        else:
            out = scaled(int(item), width)
            layers += conv_bn_act(channels, out, act, batch_norm=batch_norm)
            channels = out
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *classifier(channels, hidden, num_classes, act, dropout))
    model = VGG(nn.Sequential(*layers), head)
    init_weights(model)
    return model


for _name, _spec in VGG_CONFIGS.items():  # one registered builder per table entry
    register(_name)(functools.partial(build_vgg, _spec))
del _name, _spec
