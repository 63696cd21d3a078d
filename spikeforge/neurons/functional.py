"""The neuron core: pure step functions with typed state (docs/design.md §1).

One neuron is a threshold θ (a scalar, or a tensor broadcastable to the input, e.g. one value
per channel), a spike rule, a reset, a leak and an initial potential. One step, for input
current z(t):

    m(t) = l · v(t−1) + z(t)                              (membrane before firing; l = leak)
    s(t) = rule(m(t), n(t−1))                             (n = net count emitted so far)
    v(t) = m(t) − θ s(t)          reset by subtraction    (charge conserving, conversion)
    v(t) = m(t) · [s(t) = 0]      reset to zero           (Lee et al. 2020 LIF)
    n(t) = n(t−1) + s(t)

Spike rules (s is a count of unit spikes, the emitted value is θ·s):

* ``binary``    s = 1 if m ≥ θ else 0 (IF / LIF; Diehl 2015, Rueckauer 2017).
* ``ternary``   s = +1 if m ≥ θ; −1 if m ≤ −θ and n > 0 (gated: a negative spike only retracts
  an earlier positive one, so the net output stays ≥ 0 like a ReLU) — or without the
  n > 0 condition when ``symmetric``; else 0 (TerMapping, Yu et al., TNNLS 2022).
* ``augmented`` s = ⌊m/θ⌋ for m ≥ θ (the number of unit spikes that would fire in this step,
  capped at ``cap``), and the gated negative mirror s = −min(⌊−m/θ⌋, n) for m ≤ −θ
  (AugMapping, Yu et al., TNNLS 2022).

Everything here is a pure function of tensors: no module state, no in-place updates of the
inputs, differentiable where the spike rule allows (training wraps the spike in a surrogate).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from spikeforge.neurons.native import (
    empty_steps,
    in_order,
    lif_kernels,
    memory_order,
    repeating,
    step_in_order,
)

SpikeRule = Literal["binary", "ternary", "augmented"]
Reset = Literal["subtract", "zero"]
Initial = Literal["zero", "half"]
SPIKE_RULES: tuple[str, ...] = ("binary", "ternary", "augmented")
RESETS: tuple[str, ...] = ("subtract", "zero")
INITIALS: tuple[str, ...] = ("zero", "half")


class NeuronParams(NamedTuple):
    """What a neuron is (see the module docstring for the equations).

    Attributes:
        threshold: θ > 0, a float or a tensor broadcastable to the input of one step.
        rule: ``"binary"``, ``"ternary"`` or ``"augmented"``.
        reset: ``"subtract"`` (default; conserves charge) or ``"zero"``.
        leak: l in m = l·v + z, in (0, 1]; 1.0 is the non-leaky IF neuron.
        symmetric: negative spikes (ternary / augmented) without the net-positive gate.
        cap: largest |s| per step of an augmented neuron (``None``: uncapped).
    """

    threshold: Tensor | float
    rule: SpikeRule = "binary"
    reset: Reset = "subtract"
    leak: float = 1.0
    symmetric: bool = False
    cap: int | None = None


class NeuronState(NamedTuple):
    """The state carried between steps.

    Attributes:
        v: membrane potential after the last reset.
        count: net number of unit spikes emitted so far (positive minus negative).
    """

    v: Tensor
    count: Tensor


def check_choice(key: str, value: object, valid: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``key``, the bad ``value`` and the ``valid`` choices."""
    if value not in valid:
        raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def check_params(params: NeuronParams) -> None:
    """Raise ``ValueError`` naming the bad field of ``params``."""
    check_choice("spike rule", params.rule, SPIKE_RULES)
    check_choice("reset", params.reset, RESETS)
    theta = torch.as_tensor(params.threshold)
    if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
        raise ValueError(f"neuron threshold must be finite and > 0, got {params.threshold}")
    if not 0 < params.leak <= 1:
        raise ValueError(f"leak must be in (0, 1], got {params.leak}")
    if params.cap is not None and params.cap < 1:
        raise ValueError(f"augmented spike cap must be >= 1 or None, got {params.cap}")


def init_state(like: Tensor, params: NeuronParams, initial: Initial = "zero") -> NeuronState:
    """The state before the first step, for inputs shaped like ``like`` (one step).

    Args:
        like: a tensor with the shape, dtype and device of one step's input current.
        params: the neuron.
        initial: v(0) = 0 (``"zero"``) or v(0) = θ/2 (``"half"``, which centres the
            quantisation error of rate coding; Bu et al., ICLR 2022).
    """
    check_choice("initial potential", initial, INITIALS)
    v = torch.zeros_like(like)
    if initial == "half":
        v = v + torch.as_tensor(params.threshold, dtype=like.dtype, device=like.device) / 2
    return NeuronState(v, torch.zeros_like(like))


def spike(m: Tensor, count: Tensor, params: NeuronParams) -> Tensor:
    """The spike rule: the signed number of unit spikes s(t) for membrane ``m`` and net count
    ``count`` so far (same dtype as ``m``)."""
    theta = params.threshold
    positive = m >= theta
    if params.rule == "binary":
        return positive.to(m.dtype)
    may_retract = torch.ones_like(positive) if params.symmetric else count > 0
    negative = (m <= -theta) & may_retract
    if params.rule == "ternary":
        return positive.to(m.dtype) - negative.to(m.dtype)
    units = torch.floor(m.abs() / theta)
    if params.cap is not None:
        units = units.clamp(max=params.cap)
    up = torch.where(positive, units, torch.zeros_like(units))
    down = torch.where(negative, units, torch.zeros_like(units))
    if not params.symmetric:
        down = torch.minimum(down, count.clamp(min=0))
    return up - down


def neuron_step(z: Tensor, state: NeuronState, params: NeuronParams
                ) -> tuple[Tensor, NeuronState]:
    """One time step: input current ``z`` and the previous state → (s(t), new state).

    ``s`` is the signed count of unit spikes; the value passed on is θ·s (or s with θ folded
    into the next layer's weights).
    """
    m = state.v * params.leak + z if params.leak != 1.0 else state.v + z
    s = spike(m, state.count, params)
    if params.reset == "subtract":
        v = m - s * params.threshold
    else:
        v = torch.where(s != 0, torch.zeros_like(m), m)
    count = state.count if params.rule == "binary" else state.count + s
    return s, NeuronState(v, count)


def neuron_scan(z: Tensor, params: NeuronParams, initial: Initial = "zero",
                state: NeuronState | None = None, values: bool = False, codes: bool = False
                ) -> tuple[Tensor, NeuronState]:
    """Run :func:`neuron_step` over the leading time axis of ``z`` (T, B, ...).

    Returns:
        The spike counts s (``values``: θ·s, what a neuron emitting values sends on;
        ``codes``: s as uint8, what integer kernels read — binary neurons without gradient
        only), shaped like ``z``, and the final state. (The net count of a binary neuron is
        not tracked — its rule never reads it — and stays at its initial value.)
    """
    if z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(f"expected a (T, ...) sequence with T >= 1, got shape {tuple(z.shape)}")
    if state is None:
        state = init_state(z[0], params, initial)
    in_place = not (torch.is_grad_enabled() and z.requires_grad)
    if codes and (values or not in_place or params.rule != "binary"):
        raise ValueError("uint8 spike codes are the spikes s of binary neurons without "
                         f"gradient (rule {params.rule!r}, values={values}, "
                         f"gradient={not in_place})")
    if in_place and params.rule == "binary":  # θ·s written by the scan itself
        return _binary_scan_inplace(z, state, params, values, codes)
    if in_place and params.rule == "ternary":
        out, state = _ternary_scan_inplace(z, state, params)
    else:
        out = empty_steps(z)
        for t in range(z.shape[0]):
            s, state = neuron_step(z[t], state, params)
            out[t] = s
    if values:  # θ·s, in place where s carries no gradient
        out = out.mul_(params.threshold) if not out.requires_grad else out * params.threshold
    return out, state


def _binary_scan_inplace(z: Tensor, state: NeuronState, params: NeuronParams, values: bool,
                         codes: bool = False) -> tuple[Tensor, NeuronState]:
    """:func:`neuron_scan` for binary neurons when no gradient is needed: the same equations,
    evaluated with in-place updates of one membrane buffer and one spike mask (no tensors
    allocated per step). Bit-identical to the step-function loop (tested)."""
    theta = torch.as_tensor(params.threshold, dtype=state.v.dtype, device=z.device)
    # in the state's dtype (float32 for bfloat16 currents), laid out as a step of z
    v = torch.empty_like(z[0], dtype=state.v.dtype).copy_(state.v.expand_as(z[0]))
    out = empty_steps(z, torch.uint8 if codes else None)
    binary_scan_into(z, v, theta, params.leak, params.reset, out, values=values)
    return out, NeuronState(v, state.count)


def _ternary_scan_inplace(z: Tensor, state: NeuronState, params: NeuronParams
                          ) -> tuple[Tensor, NeuronState]:
    """:func:`neuron_scan` for ternary neurons when no gradient is needed: the equations of
    :func:`neuron_step` on one membrane, one net-count and three mask buffers, updated in
    place (no tensor allocated per step). Bit-identical to the step-function loop (tested)."""
    theta = torch.as_tensor(params.threshold, dtype=state.v.dtype, device=z.device)
    v = state.v.expand_as(z[0]).clone()
    count = state.count.expand_as(z[0]).to(v.dtype, copy=True)
    out = empty_steps(z)
    step = None if out.dtype == v.dtype else torch.empty_like(v)  # s(t) in v's dtype
    up, down, gate = (torch.empty_like(v, dtype=torch.bool) for _ in range(3))
    for t in range(z.shape[0]):
        s = out[t] if step is None else step
        if params.leak != 1.0:
            v.mul_(params.leak)
        v.add_(z[t])  # m(t)
        torch.ge(v, theta, out=up)
        torch.le(v, -theta, out=down)
        if not params.symmetric:  # a negative spike only retracts an earlier positive one
            down.logical_and_(torch.gt(count, 0, out=gate))
        s.copy_(up).masked_fill_(down, -1.0)  # up and down exclude each other (θ > 0)
        if params.reset == "subtract":
            v.addcmul_(s, theta, value=-1)
        else:
            v.masked_fill_(up, 0.0).masked_fill_(down, 0.0)
        count.add_(s)
        if step is not None:
            out[t].copy_(step)
    return out, NeuronState(v, count)


def binary_scan_into(z: Tensor, v: Tensor, theta: Tensor, leak: float, reset: Reset,
                     out: Tensor, fired: Tensor | None = None,
                     membrane: Tensor | None = None, values: bool = False) -> None:
    """The binary neuron's equations over the time axis of ``z``, written into buffers:
    ``v`` (the membrane, updated in place) and ``out`` (T, ...) the spikes s (``values``:
    θ·s; a uint8 ``out``: s as codes); when given, ``fired`` (T, ...) the spike masks and
    ``membrane`` (T, ...) m(t) before firing (what BPTT keeps for backward). No tensor is
    allocated per step.

    Without ``fired`` and ``membrane``, on a CPU, the fused kernel
    (:mod:`spikeforge.neurons.native`) runs it when the tensors allow (float32 or bfloat16
    ``z`` and ``out`` with steps laid out alike, a float32 ``v`` laid out as a step of ``z``;
    ``z`` may be one step held for all, an expanded view read once per step): the same
    result bit for bit in one pass over memory."""
    if (fired is None and membrane is None
            and _scan_natively(z, v, theta, leak, reset, out, values)):
        return
    if out.dtype == torch.uint8:  # codes of the spikes, from a scan in v's dtype
        spikes = empty_steps(z, v.dtype)
        binary_scan_into(z, v, theta, leak, reset, spikes, fired, membrane)
        out.copy_(spikes)
        return
    for t in range(z.shape[0]):
        if leak != 1.0:
            v.mul_(leak)
        v.add_(z[t])  # m(t)
        if membrane is not None:
            membrane[t].copy_(v)
        # the comparison written straight into s(t): a bool mask copied into s, or a bool
        # factor in addcmul_, costs several times more
        torch.ge(v, theta, out=out[t])
        if fired is not None:  # copied from s(t): cheaper than comparing into booleans
            fired[t].copy_(out[t])
        # v − θ·s, or v − v·s (reset to zero): exact, and much faster than masked_fill_
        v.addcmul_(out[t], theta if reset == "subtract" else v, value=-1)
    if values:
        out.mul_(theta)


def _scan_natively(z: Tensor, v: Tensor, theta: Tensor, leak: float, reset: Reset,
                   out: Tensor, values: bool) -> bool:
    """:func:`binary_scan_into` by the fused kernel, if it runs these tensors; whether it ran."""
    if (z.device.type != "cpu" or z.dtype not in (torch.float32, torch.bfloat16)
            or out.dtype not in (z.dtype, torch.uint8) or v.dtype != torch.float32
            or theta.dtype != v.dtype
            or z.shape[0] == 0 or out.stride()[1:] != z.stride()[1:]
            or v.stride() != z.stride()[1:]):
        return False
    order = memory_order(z)
    dense = in_order(z, order).is_contiguous() and out.permute(order).is_contiguous()
    kernels = lif_kernels() if dense else None
    if kernels is None:
        return False
    kernels.scan_infer(in_order(z, order), repeating(theta, z, order),
                       step_in_order(v, z, order), float(leak), reset == "subtract", values,
                       out.permute(order))
    return True
