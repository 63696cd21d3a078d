"""Quantized clip-floor-shift activations for ultra-low-latency conversion.

QCFS (Bu et al., "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency Spiking
Neural Networks", ICLR 2022) replaces ReLU while training the ANN by

.. math::
    a(z) = \\lambda \\cdot \\mathrm{clip}\\Big(\\frac{1}{L}\\Big\\lfloor \\frac{z L}{\\lambda}
           + \\frac{1}{2} \\Big\\rfloor, 0, 1\\Big)

with L quantization levels and a learnable threshold λ (one per layer, initially 8). The floor
passes its gradient straight through; λ gets its gradient by autograd. An IF neuron with
threshold θ = λ, v(0) = θ/2 and soft reset then has zero expected conversion error.

CS-QCFS (Yang et al., Neural Networks 2025) learns one threshold per output channel,
λ_c = softplus(ρ_c) > 0, so no threshold can be driven negative by training.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeforge.runtime import compilable

__all__ = ["CSQCFS", "QCFS", "qcfs"]


@compilable
def _qcfs_forward(x: Tensor, lam: Tensor, levels: int) -> Tensor:
    out = x / lam
    out.mul_(levels).add_(0.5).floor_().div_(levels).clamp_(0.0, 1.0)
    return out.mul_(lam)


@compilable
def _qcfs_backward(x: Tensor, lam: Tensor, grad: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    u = x / lam
    q = (u * levels).add_(0.5).floor_()  # the forward's arithmetic, so the same q
    inside = (q >= 0) & (q <= levels)
    term = q.clamp_(0, levels).div_(levels).sub_(u.mul_(inside)).mul_(grad)
    return grad * inside, term.sum_to_size(lam.shape)


class _QCFSFunction(torch.autograd.Function):
    """QCFS with a hand-written backward over the saved ``x`` and ``λ`` only.

    With ``q = floor(x·L/λ + 1/2)`` and ``m = [0 ≤ q ≤ L]`` (where the clip passes the
    gradient), the straight-through gradients are

    .. math::
        \\frac{\\partial a}{\\partial x} = m, \\qquad
        \\frac{\\partial a}{\\partial \\lambda} = \\frac{\\mathrm{clip}(q, 0, L)}{L}
            - m \\frac{x}{\\lambda}.

    The function runs in ``x``'s dtype, as ReLU does (bfloat16 under autocast: each
    operation one pass in one dtype, not a mixed-precision one; ∂a/∂λ is summed with a
    float32 accumulator). ``q`` is recomputed in backward (the composition of elementwise
    autograd ops this replaces kept three tensors of the activations' size per layer). With
    ``SPIKEFORGE_COMPILE=1`` forward and backward each run as one fused loop
    (:func:`spikeforge.runtime.compilable`; what it gains per training step:
    ``benchmarks/compile_gain.py``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, lam: Tensor, levels: int) -> Tensor:  # noqa: D102
        ctx.lam_dtype, lam = lam.dtype, lam.to(x.dtype)
        ctx.save_for_backward(x, lam)
        ctx.levels = levels
        return _qcfs_forward(x, lam, levels)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: D102
        x, lam = ctx.saved_tensors
        grad_x, grad_lam = _qcfs_backward(x, lam, grad.to(x.dtype), ctx.levels)
        return grad_x, grad_lam.to(ctx.lam_dtype), None


def qcfs(x: Tensor, threshold: Tensor, levels: int) -> Tensor:
    """The QCFS function ``λ·clip(floor(x·L/λ + 1/2)/L, 0, 1)``; ``threshold`` (λ) broadcasts
    against ``x`` (a scalar, or shaped ``(C, 1, ...)`` for per-channel thresholds). The floor
    passes its gradient straight through."""
    return _QCFSFunction.apply(x, threshold, levels)


class QCFS(nn.Module):
    """Quantized clip-floor-shift activation with one learnable threshold (Bu et al. 2022).

    Args:
        levels: L ≥ 1, quantization levels (the SNN needs about L steps for exactness on
            arbitrary inputs; T = L = 1 is exact).
        threshold: initial λ. Default: 8.0 (as in the paper).

    Shape:
        - Input: ``(B, *)``. Output: same shape.

    Example:
        >>> act = QCFS(levels=4, threshold=1.0)
        >>> act(torch.tensor([-1.0, 0.1, 0.2, 0.6, 2.0])).tolist()
        [0.0, 0.0, 0.25, 0.5, 1.0]
    """

    def __init__(self, levels: int = 8, threshold: float = 8.0) -> None:
        super().__init__()
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"QCFS levels must be an integer >= 1, got {levels!r}")
        if not threshold > 0:
            raise ValueError(f"QCFS threshold must be > 0, got {threshold!r}")
        self.levels = levels
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def lam(self) -> Tensor:
        """λ (a scalar tensor)."""
        return self.threshold

    def forward(self, x: Tensor) -> Tensor:
        if self.training and float(self.threshold.detach()) <= 0:
            warnings.warn(f"QCFS threshold became {float(self.threshold.detach()):.4g} <= 0 "
                          "during "
                          "training; this layer cannot be converted (use CSQCFS, whose "
                          "thresholds stay positive, or a lower learning rate)", stacklevel=2)
        return qcfs(x, self.threshold, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}"


def _softplus_inverse(y: float) -> float:
    """ρ with softplus(ρ) = y (y > 0), computed without overflow."""
    return y + math.log(-math.expm1(-y))


class CSQCFS(nn.Module):
    """Channel-wise QCFS with thresholds kept positive by softplus (Yang et al. 2025).

    ``λ_c = softplus(ρ_c)``, one per channel of axis 1; ρ is initialised so that every λ_c
    starts at ``threshold``.

    Args:
        channels: number of channels (axis 1 of the input).
        levels: L ≥ 1.
        threshold: initial λ for every channel. Default: 8.0.

    Shape:
        - Input: ``(B, C, *)`` or ``(B, C)``. Output: same shape.

    Example:
        >>> act = CSQCFS(2, levels=2, threshold=1.0)
        >>> [round(v, 4) for v in act(torch.tensor([[0.3, 0.8]]))[0].tolist()]
        [0.5, 1.0]
    """

    def __init__(self, channels: int, levels: int = 8, threshold: float = 8.0) -> None:
        super().__init__()
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"CSQCFS levels must be an integer >= 1, got {levels!r}")
        if not threshold > 0:
            raise ValueError(f"CSQCFS threshold must be > 0, got {threshold!r}")
        self.channels, self.levels = channels, levels
        self.rho = nn.Parameter(torch.full((channels,), _softplus_inverse(float(threshold))))

    def lam(self) -> Tensor:
        """λ, one per channel (always > 0)."""
        return F.softplus(self.rho)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"CSQCFS expects {self.channels} channels on axis 1, got shape "
                             f"{tuple(x.shape)}")
        lam = self.lam().view(-1, *([1] * (x.ndim - 2)))
        return qcfs(x, lam, self.levels)

    def extra_repr(self) -> str:
        return f"{self.channels}, levels={self.levels}"
