"""Backpropagation through time for a layer of binary LIF neurons, as one autograd function.

Forward, the binary rule of the neuron core (:mod:`spikeforge.neurons.functional`) over
the whole window, for input currents z (T, B, ...):

    m(t) = l · v(t−1) + z(t)
    s(t) = H(m(t) − θ)
    v(t) = m(t) − θ s(t)        (reset by subtraction)   or   m(t) (1 − s(t))   (to zero)

Backward, with δ(t) = ∂L/∂m(t), ε(t) = ∂L/∂v(t) = l · δ(t+1) (ε(T) = 0) and the surrogate
σ(t) ≈ ∂s/∂m (:mod:`spikeforge.neurons.surrogate`):

    ∂L/∂s(t) = ∂L/∂out(t) + ε(t) · ∂v/∂s       (∂v/∂s = −θ, or −m(t); 0 with detach_reset)
    δ(t)     = ∂L/∂s(t) · σ(t) + ε(t) · ∂v/∂m  (∂v/∂m = 1, or 1 − s(t))
    ∂L/∂z(t) = δ(t)

Only m (in bfloat16 for float32 inputs, see ``SAVED_MEMBRANE``) and s (one byte) are kept for
backward — autograd through a Python loop of step functions keeps several full-precision
tensors per step. With ``surrogate="lee"`` σ(t) is
s(t)·(1 + ln(l)·f/N)/θ (Lee et al., Front. Neurosci. 2020), computed from the whole window.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from spikeforge.neurons.surrogate import _DERIVATIVES, check_surrogate, lee_factor

__all__ = ["SAVED_MEMBRANE", "lif_scan"]

#: dtype in which the membrane potential is kept for backward, by input dtype: bfloat16 for
#: float32 halves what the scan keeps (the surrogate only needs m to about 1% near θ);
#: float64 stays exact (the gradient tests)
SAVED_MEMBRANE = {torch.float32: torch.bfloat16}


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, v0: Tensor, leak: float, reset: str,
                surrogate: str, width: float | None, detach_reset: bool) -> Tensor:
        steps = z.shape[0]
        out = torch.empty_like(z)
        membrane = torch.empty_like(z, dtype=SAVED_MEMBRANE.get(z.dtype, z.dtype))
        v = v0.expand_as(z[0])
        for t in range(steps):
            m = v * leak + z[t] if leak != 1.0 else v + z[t]
            s = (m >= theta).to(z.dtype)
            v = m - s * theta if reset == "subtract" else m * (1 - s)
            membrane[t], out[t] = m, s
        ctx.save_for_backward(membrane, out.to(torch.bool), theta)
        ctx.leak, ctx.reset, ctx.surrogate, ctx.width = leak, reset, surrogate, width
        ctx.detach_reset = detach_reset
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        membrane, fired, theta = ctx.saved_tensors
        membrane = membrane.to(grad_out.dtype)
        spikes = fired.to(membrane.dtype)
        if ctx.surrogate == "lee":
            sigma = spikes * (lee_factor(spikes, ctx.leak) / theta)
        else:
            sigma = _DERIVATIVES[ctx.surrogate]((membrane - theta) / theta, ctx.width) / theta
        grad_z = torch.empty_like(membrane)
        eps = torch.zeros_like(membrane[0])
        for t in range(membrane.shape[0] - 1, -1, -1):
            s, m = spikes[t], membrane[t]
            if ctx.reset == "subtract":
                dv_ds, dv_dm = -theta, 1.0
            else:
                dv_ds, dv_dm = -m, 1 - s
            grad_s = grad_out[t] if ctx.detach_reset else grad_out[t] + eps * dv_ds
            delta = grad_s * sigma[t] + eps * dv_dm
            grad_z[t] = delta
            eps = delta * ctx.leak
        return grad_z, None, None, None, None, None, None, None


def lif_scan(z: Tensor, threshold: Tensor | float = 1.0, leak: float = 1.0,
             reset: Literal["zero", "subtract"] = "zero", surrogate: str = "atan",
             width: float | None = None, detach_reset: bool = False,
             initial: Tensor | float = 0.0) -> Tensor:
    """Spikes s (T, B, ...) of LIF neurons driven by ``z`` (T, B, ...), differentiable by the
    surrogate rule (see the module docstring).

    Args:
        z: input currents, time first.
        threshold: θ > 0, a float or a tensor broadcastable to one step (per channel).
        leak: l in (0, 1]; 1 is the IF neuron.
        reset: ``"zero"`` (Lee et al. 2020) or ``"subtract"``.
        surrogate: ``sigmoid``, ``atan``, ``triangle``, ``rectangle`` or ``lee``.
        width: the surrogate's width w (default: its own, see ``SURROGATES``).
        detach_reset: no gradient through the reset (a common simplification).
        initial: v(0), a float or a tensor broadcastable to one step.
    """
    if z.ndim < 2 or z.shape[0] == 0:
        raise ValueError(f"expected a (T, B, ...) sequence with T >= 1, got shape "
                         f"{tuple(z.shape)}")
    if not 0 < leak <= 1:
        raise ValueError(f"leak must be in (0, 1], got {leak}")
    if reset not in ("zero", "subtract"):
        raise ValueError(f"unknown reset {reset!r}; valid: zero, subtract")
    w = check_surrogate(surrogate, width)
    theta = torch.as_tensor(threshold, dtype=z.dtype, device=z.device)
    if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
        raise ValueError(f"threshold must be finite and > 0, got {threshold}")
    v0 = torch.as_tensor(initial, dtype=z.dtype, device=z.device)
    return _LIFScan.apply(z, theta, v0, leak, reset, surrogate, w, detach_reset)
