"""`spikeforge train` with two airbench choices that spikeforge's converter does not take,
for ablations of the fast CIFAR recipe (docs/training.md):

* ``model.activation=gelu``: GELU activations (airbench's; not convertible to spikes);
* ``model.name=cifarnet_poolfirst``: cifarnet with airbench's block order
  conv → max-pool → BN → act instead of conv → BN → act → max-pool (after training the same
  function when the BN scales are positive and the activation is non-decreasing, but the
  batch statistics during training are those of the pooled maps).

    python scripts/cifarnet_ablation.py train configs/cifar10_fast.yaml model.activation=gelu
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikeforge.cli import main  # noqa: E402
from spikeforge.models import cifarnet as cifarnet_module  # noqa: E402
from spikeforge.models.activations import register_activation  # noqa: E402
from spikeforge.models.registry import register  # noqa: E402

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def gelu(channels: int) -> nn.Module:
    return nn.GELU()


def pool_first(model: nn.Module) -> nn.Module:
    """``model`` with each [conv, BN, act, pool] run of ``model.features`` reordered to
    [conv, pool, BN, act] (the same modules)."""
    layers, reordered, i = list(model.features), [], 0
    while i < len(layers):
        run = layers[i:i + 4]
        if (len(run) == 4 and isinstance(run[0], nn.Conv2d)
                and isinstance(run[1], nn.BatchNorm2d) and isinstance(run[3], POOLS)):
            reordered += [run[0], run[3], run[1], run[2]]
            i += 4
        else:
            reordered.append(layers[i])
            i += 1
    model.features = nn.Sequential(*reordered)
    return model


@functools.wraps(cifarnet_module.cifarnet)
def cifarnet_poolfirst(**options) -> nn.Module:
    """cifarnet in airbench's block order (:func:`pool_first`)."""
    return pool_first(cifarnet_module.cifarnet(**options))


if __name__ == "__main__":
    register_activation("gelu", gelu)
    register("cifarnet_poolfirst")(cifarnet_poolfirst)
    sys.exit(main(sys.argv[1:]))
