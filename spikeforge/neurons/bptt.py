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

from spikeforge.neurons.functional import binary_scan_into
from spikeforge.neurons.surrogate import _DERIVATIVES, check_surrogate, lee_factor
from spikeforge.runtime import compilable, compile_enabled

__all__ = ["SAVED_MEMBRANE", "lif_scan"]

#: dtype in which the membrane potential is kept for backward, by input dtype: bfloat16 for
#: float32 halves what the scan keeps (the surrogate only needs m to about 1% near θ);
#: float64 stays exact (the gradient tests)
SAVED_MEMBRANE = {torch.float32: torch.bfloat16}


class _LIFScan(torch.autograd.Function):
    """The scan with in-place updates of preallocated buffers: one membrane buffer forward,
    one gradient buffer per step backward, no tensors allocated per step."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, v0: Tensor, leak: float, reset: str,
                surrogate: str, width: float | None, detach_reset: bool) -> Tensor:
        out = torch.empty_like(z)
        fired = torch.empty_like(z, dtype=torch.bool)  # same strides as z (channels-last)
        membrane = torch.empty_like(z, dtype=SAVED_MEMBRANE.get(z.dtype, z.dtype))
        v = torch.empty_like(z[0]).copy_(v0.expand_as(z[0]))
        binary_scan_into(z, v, theta, leak, reset, out, fired, membrane)
        ctx.save_for_backward(membrane, fired, theta)
        ctx.leak, ctx.reset, ctx.surrogate, ctx.width = leak, reset, surrogate, width
        ctx.detach_reset = detach_reset
        ctx.mark_non_differentiable(fired)
        return out, fired

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_fired: Tensor | None = None):
        membrane, fired, theta = ctx.saved_tensors
        backward = _lif_backward_fused if compile_enabled() else _lif_backward
        grad_z = backward(grad_out, membrane, fired, theta, ctx.leak, ctx.reset == "subtract",
                          ctx.surrogate, ctx.width, ctx.detach_reset)
        return grad_z, None, None, None, None, None, None, None


def _lee_scale(fired: Tensor, theta: Tensor, leak: float, surrogate: str,
               dtype: torch.dtype) -> Tensor | None:
    """(1 + ln(l)·f/N)/θ per neuron for the ``lee`` rule (one step's size), else None."""
    if surrogate != "lee":
        return None
    return lee_factor(fired, leak, dtype).mul_(1 / theta)


def _sigma(membrane: Tensor, fired: Tensor, theta: Tensor, surrogate: str,
           width: float | None, lee_scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """σ(t) ≈ ∂s/∂m at one step, in ``dtype``: s(t)·lee_scale for ``lee``, else
    g((m(t) − θ)/θ)/θ. Computed step by step inside the reverse loop, so that the
    backward allocates nothing of the size of the window."""
    if lee_scale is not None:
        return fired.to(dtype).mul_(lee_scale)
    inverse = 1 / theta
    x = membrane.to(dtype, copy=True).sub_(theta).mul_(inverse)  # (m − θ)/θ
    return _DERIVATIVES[surrogate](x, width).mul_(inverse)


def _lif_backward(grad_out: Tensor, membrane: Tensor, fired: Tensor, theta: Tensor,
                  leak: float, subtract: bool, surrogate: str, width: float | None,
                  detach_reset: bool) -> Tensor:
    """∂L/∂z (T, ...) from ∂L/∂s by the reverse recurrence of the module docstring, with
    in-place updates of one gradient buffer per step."""
    lee_scale = _lee_scale(fired, theta, leak, surrogate, grad_out.dtype)
    grad_z = torch.empty_like(grad_out)
    eps = torch.zeros_like(grad_out[0])  # ∂L/∂v(t)
    for t in range(grad_out.shape[0] - 1, -1, -1):
        delta = grad_z[t]
        sigma = _sigma(membrane[t], fired[t], theta, surrogate, width, lee_scale,
                       grad_out.dtype)
        if detach_reset:
            torch.mul(grad_out[t], sigma, out=delta)
        else:  # ∂L/∂s = ∂L/∂out + ε ∂v/∂s,  ∂v/∂s = −θ or −m
            torch.addcmul(grad_out[t], eps, theta if subtract else membrane[t], value=-1,
                          out=delta)
            delta.mul_(sigma)
        if not subtract:  # ∂v/∂m = 1 − s
            eps.addcmul_(fired[t].to(eps.dtype), eps, value=-1)
        delta.add_(eps)
        torch.mul(delta, leak, out=eps)
    return grad_z


@compilable
def _lif_backward_fused(grad_out: Tensor, membrane: Tensor, fired: Tensor, theta: Tensor,
                        leak: float, subtract: bool, surrogate: str, width: float | None,
                        detach_reset: bool) -> Tensor:
    """:func:`_lif_backward` written out of place, the form ``torch.compile`` fuses into one
    loop over the neurons (writes into views of a buffer compile badly). Used with
    ``SPIKEFORGE_COMPILE=1``; equal to float rounding (tested). A LIF LeNet training step at
    T = 20 is 1.18x faster with it, VGG-7 at T = 8 1.05x (``benchmarks/compile_gain.py``)."""
    lee_scale = _lee_scale(fired, theta, leak, surrogate, grad_out.dtype)
    eps = torch.zeros_like(grad_out[0])
    deltas = []
    for t in range(grad_out.shape[0] - 1, -1, -1):
        delta = grad_out[t]
        if not detach_reset:
            delta = delta - eps * (theta if subtract else membrane[t])
        delta = delta * _sigma(membrane[t], fired[t], theta, surrogate, width, lee_scale,
                               grad_out.dtype)
        if not subtract:
            eps = eps - fired[t] * eps
        delta = delta + eps
        eps = delta * leak
        deltas.append(delta)
    return torch.stack(deltas[::-1])


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
    spikes, fired = _LIFScan.apply(z, theta, v0, leak, reset, surrogate, w, detach_reset)
    spikes._spikeforge_bits = fired  # the same spikes as booleans (see mark_spikes)
    return spikes
