"""Bounded activations for conversion-friendly ANNs.

An ANN whose activations are bounded converts to an SNN with less error: the spiking neuron's
firing rate is bounded by its threshold, so an activation that never exceeds a known ceiling
has nothing for the SNN to clip. The layers here are plain, stateless ``nn.Module`` s built
only from element-wise torch operations, so they trace with ``torch.fx`` and run anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClippedReLU"]


class ClippedReLU(nn.Module):
    r"""ReLU clipped from above at a fixed ceiling.

    .. math::
        \mathrm{ClippedReLU}(x) = \min(\max(x, 0), c)

    The ceiling ``c`` is the natural threshold of the converted IF neuron: an SNN neuron with
    threshold ``c`` can emit at most ``c`` per step, so activations above it are exactly what
    rate coding cannot represent.

    Args:
        clip: the ceiling ``c`` (> 0). Default: 1.0.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, same shape as the input.

    Example:
        >>> act = ClippedReLU(clip=2.0)
        >>> act(torch.tensor([-1.0, 0.5, 3.0]))
        tensor([0.0000, 0.5000, 2.0000])
    """

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        clip = float(clip)
        if not clip > 0:
            raise ValueError(f"ClippedReLU needs clip > 0, got {clip!r}")
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"
