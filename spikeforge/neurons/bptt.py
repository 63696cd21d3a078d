"""Backpropagation through time for a layer of binary LIF neurons, as one autograd function.

Forward, the binary rule of the neuron core (:mod:`spikeforge.neurons.functional`) over
the whole window, for input currents z (T, B, ...):

    m(t) = l · v(t−1) + z(t)
    s(t) = H(m(t) − θ)
    v(t) = m(t) − θ s(t)        (reset by subtraction)   or   m(t) (1 − s(t))   (to zero)

Backward, with δ(t) = ∂L/∂m(t), ε(t) = ∂L/∂v(t) = c · δ(t+1) (ε(T) = 0) and the surrogate
σ(t) ≈ ∂s/∂m (:mod:`spikeforge.neurons.surrogate`):

    ∂L/∂s(t) = ∂L/∂out(t) + ε(t) · ∂v/∂s       (∂v/∂s = −θ, or −m(t); 0 with detach_reset)
    δ(t)     = ∂L/∂s(t) · σ(t) + ε(t) · ∂v/∂m  (∂v/∂m = 1, or 1 − s(t))
    ∂L/∂z(t) = δ(t)

For the smooth surrogates c = l, the derivative of the forward leak, and σ(t) = g((m − θ)/θ)/θ.

``surrogate="lee"`` is the backward of Lee et al. (Front. Neurosci. 2020) as their code
computes it (``LIF_sNeuron``, ``LF_Unit`` and ``grad_cal`` in ``mnist_LeNet.py`` of
``Enabling_Spikebased_Backpropagation``), whatever ``detach_reset`` says: the reset is detached
(∂v/∂s = 0), the leak passes the gradient unchanged (c = 1: their ``l·V.detach() + V −
V.detach()``), and the spike passes 1/θ at the steps where it fired, times the neuron's leak
correction NG = 1 + ln(l)·f/N (N its spike count over the window, f = Σ_k l^(T − t_k) its
leaky spike trace):

    σ(t) = s(t) · NG / θ,     δ(t) = ∂L/∂out(t) · σ(t) + δ(t+1) · ∂v/∂m

(Their neurons fire at m > θ, ours at m ≥ θ: the same except on exact ties. Their NG is
1[f > 10⁻³] + ln(l)·f/N; the indicator differs from 1 only for a neuron whose
every spike lies more than ln(10⁻³)/ln(l) steps before the end, 687 steps at l = 0.99.)
``grad_scale="unit"`` drops the 1/θ from σ (their pooling neurons pass the gradient
unscaled).

Only m (in bfloat16 for float32 inputs, see ``SAVED_MEMBRANE``) and s (one byte) are kept for
backward — autograd through a Python loop of step functions keeps several full-precision
tensors per step. For float32 and bfloat16 currents on a CPU both directions run as fused
C++ loops with float32 arithmetic (:mod:`spikeforge.neurons.native`; the ``sigmoid``
backward excepted), one pass over memory where the eager scan below makes several per
step; elsewhere the eager scan runs, or with
``SPIKEFORGE_COMPILE=1`` its backward through ``torch.compile`` (Triton on a GPU).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from spikeforge.neurons.functional import (
    NeuronParams,
    binary_scan_into,
    check_choice,
    check_params,
)
from spikeforge.neurons.native import (
    empty_steps,
    held,
    in_order,
    lif_kernels,
    memory_order,
    repeating,
    step_in_order,
)
from spikeforge.neurons.surrogate import _DERIVATIVES, check_surrogate, lee_factor
from spikeforge.runtime import compilable, compile_enabled

__all__ = ["GRAD_SCALES", "SAVED_MEMBRANE", "bptt_scan", "check_training", "lif_scan"]

#: what the spike's derivative σ is scaled by: 1/θ, or nothing (Lee et al.'s pooling neurons)
GRAD_SCALES: tuple[str, ...] = ("threshold", "unit")

#: dtype in which the membrane potential is kept for backward, by input dtype: bfloat16 for
#: float32 halves what the scan keeps (the surrogate only needs m to about 1% near θ);
#: float64 stays exact (the gradient tests)
SAVED_MEMBRANE = {torch.float32: torch.bfloat16}


class _LIFScan(torch.autograd.Function):
    """The scan with in-place updates of preallocated buffers: one membrane buffer forward,
    one gradient buffer per step backward, no tensors allocated per step. With ``steps``,
    ``z`` is one step (B, ...) held for that many steps, read once per step, and its
    gradient is the sum over them (the kernels run it; :func:`bptt_scan` sees to that)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, v0: Tensor, leak: float, reset: str,
                surrogate: str, width: float | None, detach_reset: bool,
                unit_grad: bool, steps: int | None) -> Tensor:
        if steps is not None:
            z = z.expand(steps, *z.shape)  # time stride 0: no copies
        kernels = _kernels_for(z)
        if kernels is not None and not in_order(z, memory_order(z)).is_contiguous():
            # not dense in any order (a slice): the kernels need it dense
            z = z[0].contiguous().expand_as(z) if held(z) else z.contiguous()
        out = empty_steps(z)
        fired = empty_steps(z, torch.bool)  # steps laid out as z's (channels-last)
        membrane = empty_steps(z, SAVED_MEMBRANE.get(z.dtype, z.dtype))
        if kernels is not None:
            order = memory_order(z)
            kernels.scan_forward(in_order(z, order), repeating(theta, z, order),
                                 repeating(v0, z, order), leak, reset == "subtract",
                                 out.permute(order), fired.permute(order),
                                 membrane.permute(order))
        else:
            v = torch.empty_like(z[0]).copy_(v0.expand_as(z[0]))
            binary_scan_into(z, v, theta, leak, reset, out, fired, membrane)
        ctx.save_for_backward(membrane, fired, theta)
        ctx.leak, ctx.reset, ctx.surrogate, ctx.width = leak, reset, surrogate, width
        ctx.detach_reset, ctx.unit_grad = detach_reset, unit_grad
        ctx.summed = steps is not None  # the gradient of one step held for all: Σ_t
        ctx.mark_non_differentiable(fired)
        return out, fired

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_fired: Tensor | None = None):
        membrane, fired, theta = ctx.saved_tensors
        options = (ctx.leak, ctx.reset == "subtract", ctx.surrogate, ctx.width,
                   ctx.detach_reset, ctx.unit_grad)
        kernels = _kernels_for(grad_out)
        if (kernels is not None and membrane.dtype == torch.bfloat16
                and ctx.surrogate in _KERNEL_SURROGATES):
            return _lif_backward_native(kernels, grad_out, membrane, fired, theta,
                                        *options, summed=ctx.summed), *(None,) * 9
        dtype = grad_out.dtype  # bfloat16 from the kernels' scan: float32 arithmetic here too
        grad_out = grad_out.to(theta.dtype)
        if not compile_enabled():
            grad_z = _lif_backward(grad_out, membrane, fired, theta, *options)
            return (grad_z.sum(0) if ctx.summed else grad_z).to(dtype), *(None,) * 9
        # the compiled loop runs on every tensor viewed in memory order (contiguous, as a
        # channels-last layer's are as (T, B, H, W, C)): inductor vectorises that, not the
        # strided (T, B, C, H, W) view
        order = memory_order(membrane)
        back = [order.index(d) for d in range(membrane.ndim)]
        theta = step_in_order(theta, membrane, order)
        grad_z = _lif_backward_fused(grad_out.permute(order).contiguous(),
                                     membrane.permute(order), fired.permute(order), theta,
                                     *options).permute(back)
        return (grad_z.sum(0) if ctx.summed else grad_z).to(dtype), *(None,) * 9


def _kernels_for(x: Tensor) -> ModuleType | None:
    """The fused kernels (:mod:`spikeforge.neurons.native`) if they run ``x``: float32 or
    bfloat16 on a CPU, where they are built."""
    if x.dtype not in (torch.float32, torch.bfloat16) or x.device.type != "cpu":
        return None
    return lif_kernels()


def _lee_scale(fired: Tensor, theta: Tensor, leak: float, surrogate: str, unit_grad: bool,
               dtype: torch.dtype) -> Tensor | None:
    """NG/θ (or NG with ``unit_grad``) per neuron for the ``lee`` rule (one step's size),
    else None."""
    if surrogate != "lee":
        return None
    factor = lee_factor(fired, leak, dtype)
    return factor if unit_grad else factor.mul_(1 / theta)


def _surrogate_into(m: Tensor, theta: Tensor, surrogate: str, width: float | None,
                    unit_grad: bool) -> Tensor:
    """σ(t) = g((m(t) − θ)/θ)/θ (without the last 1/θ with ``unit_grad``), computed in place
    in ``m``, a scratch copy of one step's membrane in the gradient's dtype."""
    inverse = 1 / theta
    g = _DERIVATIVES[surrogate](m.sub_(theta).mul_(inverse), width)
    return g if unit_grad else g.mul_(inverse)


def _backward_options(leak: float, surrogate: str, detach_reset: bool) -> tuple[float, bool]:
    """(c, detach_reset) of the recurrence: c = l and the caller's choice, or for ``lee``
    c = 1 (the leak straight through) and the reset detached, as Lee et al.'s code."""
    if surrogate == "lee":
        return 1.0, True
    return leak, detach_reset


def _lif_backward(grad_out: Tensor, membrane: Tensor, fired: Tensor, theta: Tensor,
                  leak: float, subtract: bool, surrogate: str, width: float | None,
                  detach_reset: bool, unit_grad: bool = False) -> Tensor:
    """∂L/∂z (T, ...) from ∂L/∂s by the reverse recurrence of the module docstring.

    Each step runs in place on three buffers of one step's size in the gradient's dtype: ε,
    m(t) (then σ(t) in the same buffer) and s(t); the membrane (bfloat16) and the spikes
    (bool) are converted into them once per step, so that every other operation has operands
    of one dtype (mixed-dtype elementwise kernels are several times slower on a CPU)."""
    lee_scale = _lee_scale(fired, theta, leak, surrogate, unit_grad, grad_out.dtype)
    carry, detach_reset = _backward_options(leak, surrogate, detach_reset)
    grad_z = torch.empty_like(grad_out)
    eps = torch.zeros_like(grad_out[0])  # ∂L/∂v(t)
    scratch = torch.empty_like(eps)  # m(t), then σ(t)
    spikes = torch.empty_like(eps) if lee_scale is not None or not subtract else None
    for t in range(grad_out.shape[0] - 1, -1, -1):
        delta = grad_z[t]
        if spikes is not None:
            spikes.copy_(fired[t])
        if lee_scale is not None:
            sigma = torch.mul(spikes, lee_scale, out=scratch)
        else:
            m = scratch.copy_(membrane[t])
            if not (detach_reset or subtract):  # ∂L/∂s = ∂L/∂out − ε m(t), before σ
                torch.addcmul(grad_out[t], eps, m, value=-1, out=delta)
            sigma = _surrogate_into(m, theta, surrogate, width, unit_grad)
        if detach_reset:
            torch.mul(grad_out[t], sigma, out=delta)
        elif subtract:  # ∂L/∂s = ∂L/∂out − ε θ
            torch.addcmul(grad_out[t], eps, theta, value=-1, out=delta).mul_(sigma)
        else:
            delta.mul_(sigma)
        if not subtract:  # ∂v/∂m = 1 − s
            eps.addcmul_(spikes, eps, value=-1)
        delta.add_(eps)
        torch.mul(delta, carry, out=eps)
    return grad_z


#: the surrogates the backward kernel computes, by its numbering (``enum Kind`` in
#: ``lif_kernels.cpp``); ``sigmoid`` runs the eager backward
_KERNEL_SURROGATES = {"atan": 0, "triangle": 1, "rectangle": 2, "lee": 3}


def _lif_backward_native(kernels: ModuleType, grad_out: Tensor, membrane: Tensor,
                         fired: Tensor, theta: Tensor, leak: float, subtract: bool,
                         surrogate: str, width: float | None, detach_reset: bool,
                         unit_grad: bool = False, summed: bool = False) -> Tensor:
    """:func:`_lif_backward` by the fused kernel (float32 or bfloat16 gradients on a CPU,
    the membrane in bfloat16, the arithmetic in float32): the same arithmetic in one pass
    over memory, equal to float rounding. ``summed``: Σ_t ∂L/∂z(t), one step's gradient."""
    order = memory_order(membrane)
    carry, detach_reset = _backward_options(leak, surrogate, detach_reset)
    scale = _lee_scale(fired, theta, leak, surrogate, unit_grad, theta.dtype)
    scale = theta.new_empty(0) if scale is None else repeating(scale, membrane, order)
    # Σ_t: one step, laid out as the membrane's steps
    grad_z = torch.empty_like(membrane[0] if summed else membrane, dtype=grad_out.dtype)
    target = grad_z.expand_as(membrane) if summed else grad_z
    kernels.scan_backward(grad_out.permute(order).contiguous(), membrane.permute(order),
                          fired.permute(order), repeating(theta, membrane, order), scale,
                          carry, subtract, detach_reset, unit_grad,
                          _KERNEL_SURROGATES[surrogate], width or 1.0, in_order(target, order))
    return grad_z


@compilable
def _lif_backward_fused(grad_out: Tensor, membrane: Tensor, fired: Tensor, theta: Tensor,
                        leak: float, subtract: bool, surrogate: str, width: float | None,
                        detach_reset: bool, unit_grad: bool = False) -> Tensor:
    """:func:`_lif_backward` written out of place, the form ``torch.compile`` fuses into one
    loop over the neurons (writes into views of a buffer compile badly). Used with
    ``SPIKEFORGE_COMPILE=1`` where the fused kernels do not run (a GPU, float64, the
    ``sigmoid`` surrogate); equal to float rounding (tested). ``benchmarks/compile_gain.py``
    measures what it gains."""
    lee_scale = _lee_scale(fired, theta, leak, surrogate, unit_grad, grad_out.dtype)
    carry, detach_reset = _backward_options(leak, surrogate, detach_reset)
    eps = torch.zeros_like(grad_out[0])
    deltas = []
    for t in range(grad_out.shape[0] - 1, -1, -1):
        delta = grad_out[t]
        if not detach_reset:
            delta = delta - eps * (theta if subtract else membrane[t])
        sigma = (fired[t].to(grad_out.dtype) * lee_scale if lee_scale is not None else
                 _surrogate_into(membrane[t].to(grad_out.dtype, copy=True), theta, surrogate, width,
                                 unit_grad))
        delta = delta * sigma
        if not subtract:
            eps = eps - fired[t] * eps
        delta = delta + eps
        eps = delta * carry
        deltas.append(delta)
    return torch.stack(deltas[::-1])


def check_training(params: NeuronParams, surrogate: str | None, width: float | None,
                   grad_scale: str = "threshold") -> float | None:
    """Validate a neuron and its training settings; raise ``ValueError`` naming the bad one.

    Returns the surrogate's width (its default when ``width`` is None; None for ``lee`` and for
    a neuron without a ``surrogate``, which is never trained by this scan).
    """
    check_params(params)
    check_choice("grad_scale", grad_scale, GRAD_SCALES)
    if surrogate is None:
        return None
    if params.rule != "binary":
        raise ValueError(f"surrogate gradients train binary spikes, not {params.rule!r} ones; "
                         "use surrogate=None")
    return check_surrogate(surrogate, width)


def lif_scan(z: Tensor, threshold: Tensor | float = 1.0, leak: float = 1.0,
             reset: Literal["zero", "subtract"] = "zero", surrogate: str = "atan",
             width: float | None = None, detach_reset: bool = False,
             initial: Tensor | float = 0.0,
             grad_scale: Literal["threshold", "unit"] = "threshold") -> Tensor:
    """Spikes s (T, B, ...) of LIF neurons driven by ``z`` (T, B, ...), differentiable by the
    surrogate rule (see the module docstring).

    Args:
        z: input currents, time first.
        threshold: θ > 0, a float or a tensor broadcastable to one step (per channel).
        leak: l in (0, 1]; 1 is the IF neuron.
        reset: ``"zero"`` (Lee et al. 2020) or ``"subtract"``.
        surrogate: ``sigmoid``, ``atan``, ``triangle``, ``rectangle`` or ``lee`` (Lee et
            al.'s backward as their code computes it, see the module docstring).
        width: the surrogate's width w (default: its own, see ``SURROGATES``).
        detach_reset: no gradient through the reset (a common simplification); ``lee``
            always detaches it.
        initial: v(0), a float or a tensor broadcastable to one step.
        grad_scale: ``"threshold"`` (default): σ carries the factor 1/θ; ``"unit"``: it does
            not (Lee et al.'s pooling neurons).
    """
    if z.ndim < 2 or z.shape[0] == 0:
        raise ValueError(f"expected a (T, B, ...) sequence with T >= 1, got shape "
                         f"{tuple(z.shape)}")
    w = check_training(NeuronParams(threshold, "binary", reset, leak), surrogate, width,
                       grad_scale)
    acc = torch.promote_types(z.dtype, torch.float32)  # membranes at least float32
    theta = torch.as_tensor(threshold, dtype=acc, device=z.device)
    v0 = torch.as_tensor(initial, dtype=acc, device=z.device)
    return bptt_scan(z, theta, v0, leak, reset, surrogate, w, detach_reset, grad_scale)


def bptt_scan(z: Tensor, theta: Tensor, v0: Tensor, leak: float, reset: str, surrogate: str,
              width: float | None, detach_reset: bool, grad_scale: str = "threshold",
              steps: int | None = None) -> Tensor:
    """:func:`lif_scan` for settings validated already (:func:`check_training`, as
    :class:`~spikeforge.neurons.SpikingNeuron` does once at construction): ``theta`` and
    ``v0`` are tensors in float32 or wider, ``width`` the resolved one. The spikes carry
    their booleans for :func:`~spikeforge.neurons.modules.mark_spikes`.

    bfloat16 currents (autocast) run in the fused kernels as they are, with float32
    membranes, and give bfloat16 spikes and gradients: the float32 scan of the same currents
    with its outputs rounded to bfloat16, without the float32 copies. Elsewhere, and for a
    surrogate without a kernel, the scan runs on ``z`` converted to θ's dtype, its spikes
    converted back (exact).

    ``steps``: ``z`` is one step (B, ...), the current of each of ``steps`` steps (a direct
    input's): the kernels read it once per step instead of from T copies, and its gradient
    is the sum over the steps, formed in the backward pass itself."""
    dtype = z.dtype
    native = surrogate in _KERNEL_SURROGATES and _kernels_for(z) is not None
    if dtype != theta.dtype and not (dtype == torch.bfloat16 and theta.dtype == torch.float32
                                     and native):
        z = z.to(theta.dtype)
    if steps is not None and not native:  # the eager scan: T views of the one step
        z, steps = z.expand(steps, *z.shape), None
    spikes, fired = _LIFScan.apply(z, theta, v0, leak, reset, surrogate, width, detach_reset,
                                   grad_scale == "unit", steps)
    spikes = spikes.to(dtype)
    spikes._spikeforge_bits = fired  # the same spikes as booleans (see mark_spikes)
    return spikes
