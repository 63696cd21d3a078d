"""Spike functions for training: the Heaviside step forward, a surrogate derivative backward.

A binary neuron fires s(t) = H(m(t) − θ), whose derivative is zero almost everywhere. Training
replaces ds/dm by g(x)/θ, with x = (m − θ)/θ the distance to the threshold in units of θ and
g the derivative of a smooth stand-in for H of width w (Neftci, Mostafa & Zenke 2019). Every g
integrates to 1, so widths can be compared across shapes:

============  ==============================================  =======================  =====
name          stand-in for H(x)                                g(x)                     w
============  ==============================================  =======================  =====
sigmoid       σ(x / w)                                         σ(x/w)(1 − σ(x/w)) / w   0.25
atan          1/2 + arctan(π x / 2w) / π                       (1/2w) / (1 + (πx/2w)²)  0.5
triangle      piecewise quadratic                              max(0, 1 − |x|/w) / w    1.0
rectangle     clip(x / w + 1/2, 0, 1)                          [|x| < w/2] / w          1.0
============  ==============================================  =======================  =====

(``sigmoid`` with w = 0.25 and ``atan`` with w = 0.5 are SpikingJelly's defaults α = 4 and
α = 2.) The fifth rule, ``lee``, is not a function of m(t) alone: Lee et al. (Front. Neurosci.
2020, "Enabling spike-based backpropagation") pass the gradient 1/θ at the steps where the
neuron fired, scaled per neuron by the leak correction 1 + ln(l)·f/N (:func:`lee_factor`),
where N is its spike count over the window and f = Σ_k l^(T − t_k) its leaky spike trace; as
in their code, the reset is detached and the leak passes the gradient unchanged.
:func:`spikeforge.neurons.bptt.lif_scan` computes it over the whole window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from spikeforge.registry import Registry

__all__ = ["SURROGATES", "Surrogate", "lee_factor", "primitive", "spike_fn", "surrogate_grad"]

Surrogate = Literal["sigmoid", "atan", "triangle", "rectangle", "lee"]

#: surrogate name → default width w (``lee`` has none)
SURROGATES: Registry[float | None] = Registry("surrogate", {
    "sigmoid": 0.25, "atan": 0.5, "triangle": 1.0, "rectangle": 1.0, "lee": None,
})


# g(x) of the table, computed in place in x (a scratch tensor the caller gives up: the
# backward of a window evaluates them once per step into one reused buffer)

def _sigmoid(x: Tensor, w: float) -> Tensor:
    s = x.mul_(1 / w).sigmoid_()
    return torch.addcmul(s, s, s, value=-1, out=s).mul_(1 / w)  # s − s², then / w


def _atan(x: Tensor, w: float) -> Tensor:
    return x.mul_(math.pi / (2 * w)).square_().add_(1).reciprocal_().mul_(0.5 / w)


def _triangle(x: Tensor, w: float) -> Tensor:
    return x.abs_().mul_(-1 / w).add_(1).clamp_(min=0).mul_(1 / w)


def _rectangle(x: Tensor, w: float) -> Tensor:
    return x.abs_().lt_(w / 2).mul_(1 / w)  # lt_ writes 1.0 / 0.0 in x's dtype


_DERIVATIVES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sigmoid": _sigmoid, "atan": _atan, "triangle": _triangle, "rectangle": _rectangle,
}


def check_surrogate(name: str, width: float | None) -> float | None:
    """The width to use for ``name`` (its default when ``width`` is None); raises
    ``ValueError`` naming the bad value."""
    default = SURROGATES.lookup(name)
    if name == "lee":
        return None
    w = default if width is None else float(width)
    if not w > 0 or not math.isfinite(w):
        raise ValueError(f"surrogate width must be finite and > 0, got {width}")
    return w


def surrogate_grad(name: str, x: Tensor, width: float | None = None) -> Tensor:
    """g(x): the surrogate derivative of H at x = (m − θ)/θ (see the module table)."""
    w = check_surrogate(name, width)
    if w is None:
        raise ValueError("the 'lee' rule depends on the whole spike train; use lif_scan")
    return _DERIVATIVES[name](x.to(torch.result_type(x, 1.0), copy=True), w)


def primitive(name: str, x: Tensor, width: float | None = None) -> Tensor:
    """The smooth stand-in for H whose derivative is :func:`surrogate_grad` (used to check
    the surrogates against finite differences)."""
    w = check_surrogate(name, width)
    if name == "sigmoid":
        return torch.sigmoid(x / w)
    if name == "atan":
        return 0.5 + torch.atan(math.pi * x / (2 * w)) / math.pi
    if name == "rectangle":
        return (x / w + 0.5).clamp(0, 1)
    if name == "triangle":
        u = (x / w).clamp(-1, 1)
        return torch.where(u < 0, (1 + u) ** 2 / 2, 1 - (1 - u) ** 2 / 2)
    raise ValueError(f"the {name!r} rule has no primitive")


class _SpikeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m: Tensor, threshold: Tensor, name: str, width: float) -> Tensor:
        ctx.save_for_backward(m, threshold)
        ctx.name, ctx.width = name, width
        return (m >= threshold).to(m.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        m, threshold = ctx.saved_tensors
        g = _DERIVATIVES[ctx.name]((m - threshold) / threshold, ctx.width) / threshold
        return grad * g, None, None, None


def spike_fn(m: Tensor, threshold: Tensor | float, surrogate: str = "atan",
             width: float | None = None) -> Tensor:
    """s = H(m − θ) forward, ∂s/∂m = g((m − θ)/θ)/θ backward (θ gets no gradient)."""
    w = check_surrogate(surrogate, width)
    if w is None:
        raise ValueError("the 'lee' rule depends on the whole spike train; use lif_scan")
    theta = torch.as_tensor(threshold, dtype=m.dtype, device=m.device)
    return _SpikeFn.apply(m, theta, surrogate, w)


def lee_factor(spikes: Tensor, leak: float, dtype: torch.dtype | None = None) -> Tensor:
    """The per-neuron leak correction 1 + ln(l)·f/N of Lee et al. (2020) for a spike train
    ``spikes`` (T, ...) of 0/1 (or booleans): N = Σ_t s(t), f = Σ_t s(t)·l^(T − t)
    (t = 1..T), accumulated step by step as f ← l·f + s(t), so nothing of the size of the
    window is allocated. Neurons that never fired get 1 (their gradient is zero anyway).
    ``dtype``: of the result (default: the spikes' if floating point, else torch's default)."""
    if dtype is None:
        dtype = spikes.dtype if spikes.is_floating_point() else torch.get_default_dtype()
    count = torch.zeros_like(spikes[0], dtype=dtype)
    if leak == 1.0:
        return count.fill_(1)
    trace = torch.zeros_like(count)
    for s in spikes:
        count.add_(s)
        trace.mul_(leak).add_(s)
    return trace.mul_(math.log(leak)).div_(count.clamp_(min=1)).add_(1)
