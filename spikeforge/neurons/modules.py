"""Thin ``nn.Module`` shells over :mod:`spikeforge.neurons.functional` for ``(T, B, ...)``
sequences. A module holds only the neuron's parameters; the state lives in the call, so two
calls with the same input give the same output."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from spikeforge.neurons.functional import (
    Initial,
    NeuronParams,
    Reset,
    SpikeRule,
    check_params,
    init_state,
    neuron_scan,
)


class SpikingNeuron(nn.Module):
    """A layer of IF/LIF neurons with a binary, ternary or augmented spike rule.

    Args:
        threshold: θ, a float or a 1-D tensor with one value per channel (see
            ``channel_dim``).
        rule: ``"binary"``, ``"ternary"`` or ``"augmented"``.
        reset: ``"subtract"`` (default) or ``"zero"``.
        leak: membrane leak l (1.0: IF).
        initial: v(0) = 0 (``"zero"``) or θ/2 (``"half"``).
        symmetric: ungated negative spikes (ternary / augmented).
        cap: largest |s| per step for augmented spikes (None: uncapped).
        channel_dim: the channel axis of one step's input (1 for ``(B, C, ...)``); used only
            with a per-channel threshold.
        emit: ``"value"`` returns θ·s(t) (what the next layer receives), ``"count"`` returns
            the signed unit-spike count s(t).

    Shape:
        - Input: ``(T, B, ...)`` input currents, or the time-folded ``(T·B, ...)`` when
          ``timesteps=T`` is given (how :mod:`spikeforge.simulate` runs a whole network).
        - Output: same shape as the input.

    Example:
        >>> neuron = SpikingNeuron(threshold=1.0, initial="half")
        >>> neuron(torch.full((4, 1), 0.5)).flatten().tolist()
        [1.0, 0.0, 1.0, 0.0]
    """

    def __init__(self, threshold: float | Tensor = 1.0, rule: SpikeRule = "binary",
                 reset: Reset = "subtract", leak: float = 1.0, initial: Initial = "zero",
                 symmetric: bool = False, cap: int | None = None, channel_dim: int = 1,
                 emit: Literal["value", "count"] = "value") -> None:
        super().__init__()
        if emit not in ("value", "count"):
            raise ValueError(f"emit must be 'value' or 'count', got {emit!r}")
        theta = torch.as_tensor(threshold).detach().clone()
        self.register_buffer("threshold", theta if theta.is_floating_point() else theta.float())
        if self.threshold.ndim > 1:
            raise ValueError("threshold must be a scalar or one value per channel (1-D), got "
                             f"shape {tuple(self.threshold.shape)}")
        self.rule, self.reset, self.leak, self.initial = rule, reset, leak, initial
        self.symmetric, self.cap, self.channel_dim, self.emit = symmetric, cap, channel_dim, emit
        check_params(self.params(self.threshold))

    def params(self, theta: Tensor) -> NeuronParams:
        return NeuronParams(theta, self.rule, self.reset, self.leak, self.symmetric, self.cap)

    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        folded = timesteps is not None
        if folded:
            x = unfold_time(x, timesteps)
        # membranes integrate in at least float32 (bfloat16 currents: the bf16 mode)
        acc = torch.promote_types(x.dtype, torch.float32)
        theta = broadcast_threshold(self.threshold.to(acc), x[0], self.channel_dim)
        params = self.params(theta)
        state = init_state(torch.empty_like(x[0], dtype=acc), params, self.initial)
        s, _ = neuron_scan(x, params, state=state)
        if self.emit == "value":
            s = s.mul_(theta) if not s.requires_grad else s * theta
        return s.flatten(0, 1) if folded else s

    def extra_repr(self) -> str:
        theta = (f"{self.threshold.item():g}" if self.threshold.ndim == 0
                 else f"per-channel[{self.threshold.numel()}]")
        parts = [f"threshold={theta}", f"rule={self.rule}", f"reset={self.reset}",
                 f"initial={self.initial}"]
        if self.leak != 1.0:
            parts.append(f"leak={self.leak}")
        if self.symmetric:
            parts.append("symmetric=True")
        if self.cap is not None:
            parts.append(f"cap={self.cap}")
        return ", ".join(parts)


class LIF(nn.Module):
    """A trainable layer of binary LIF neurons: spikes forward, a surrogate gradient backward
    (:func:`spikeforge.neurons.bptt.lif_scan`; Lee et al. 2020 and the standard surrogates).

    Args:
        threshold: θ (Lee et al.: 1.0), a float or one value per channel (1-D tensor).
        leak: l in (0, 1] (Lee et al.: 0.99; 1.0 is IF).
        reset: ``"zero"`` (Lee et al.) or ``"subtract"``.
        surrogate: ``sigmoid``, ``atan``, ``triangle``, ``rectangle`` or ``lee`` (Lee et al.'s
            backward as their code computes it: detached reset, leak straight through).
        width: the surrogate's width (default: its own).
        detach_reset: no gradient through the reset (``lee`` always detaches it).
        initial: v(0) = 0 (``"zero"``) or θ/2 (``"half"``).
        emit: ``"count"`` passes the spikes s on (direct training), ``"value"`` passes θ·s
            (an SNN initialised from a converted ANN, whose next layer expects θ·s).
        channel_dim: the channel axis of one step's input, for a per-channel threshold.
        grad_scale: ``"threshold"``: the spike's derivative carries 1/θ; ``"unit"``: it does
            not (Lee et al.'s pooling neurons).

    Shape:
        ``(T, B, ...)`` → spikes of the same shape, or time-folded ``(T·B, ...)`` when
        ``timesteps`` is given (or set on the module, as :class:`~spikeforge.models.spiking.
        SpikingModel` does).
    """

    #: one unit spike per threshold crossing (read by the converter like a QCFS level count)
    levels = 1

    def __init__(self, threshold: float | Tensor = 1.0, leak: float = 1.0,
                 reset: Literal["zero", "subtract"] = "zero", surrogate: str = "atan",
                 width: float | None = None, detach_reset: bool = False,
                 initial: Initial = "zero", emit: Literal["count", "value"] = "count",
                 channel_dim: int = 1,
                 grad_scale: Literal["threshold", "unit"] = "threshold") -> None:
        super().__init__()
        from spikeforge.neurons.surrogate import check_surrogate

        self.width = check_surrogate(surrogate, width)
        theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if theta.ndim > 1 or not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
            raise ValueError(f"threshold must be finite and > 0, a scalar or one value per "
                             f"channel, got {threshold}")
        if not 0 < leak <= 1:
            raise ValueError(f"leak must be in (0, 1], got {leak}")
        for key, value, valid in (("reset", reset, ("zero", "subtract")),
                                  ("initial", initial, ("zero", "half")),
                                  ("emit", emit, ("count", "value")),
                                  ("grad_scale", grad_scale, ("threshold", "unit"))):
            if value not in valid:
                raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
        self.register_buffer("threshold", theta)
        self.leak, self.reset, self.initial, self.emit = float(leak), reset, initial, emit
        self.surrogate, self.detach_reset, self.channel_dim = surrogate, detach_reset, channel_dim
        self.grad_scale = grad_scale
        self.timesteps: int | None = None

    def lam(self) -> Tensor:
        """The threshold (what ``sf.convert(method="snn")`` gives the neuron)."""
        return self.threshold.detach().clone()

    def get_extra_state(self) -> dict[str, Any]:
        """Saved with the weights, so a checkpoint restores neurons set after construction
        (:func:`spikeforge.train.hybrid.snn_from_ann`)."""
        return {"leak": self.leak, "reset": self.reset, "initial": self.initial,
                "emit": self.emit}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.leak, self.reset = float(state["leak"]), state["reset"]
        self.initial, self.emit = state["initial"], state["emit"]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        theta = state_dict.get(prefix + "threshold")
        if isinstance(theta, Tensor) and theta.shape != self.threshold.shape:
            self.threshold = torch.empty_like(theta, device=self.threshold.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        from spikeforge.neurons.bptt import lif_scan

        steps = timesteps or self.timesteps
        seq = x if steps is None else unfold_time(x, steps)
        theta = broadcast_threshold(self.threshold.to(seq.dtype), seq[0], self.channel_dim)
        v0 = theta / 2 if self.initial == "half" else 0.0
        s = lif_scan(seq, theta, self.leak, self.reset, self.surrogate, self.width,
                     self.detach_reset, v0, self.grad_scale)
        if self.emit == "value":
            out = s * theta
            return out if steps is None else out.flatten(0, 1)
        bits = s._spikeforge_bits
        if steps is not None:
            s, bits = s.flatten(0, 1), bits.flatten(0, 1)
        return mark_spikes(s, bits)

    def extra_repr(self) -> str:
        theta = (f"{self.threshold.item():g}" if self.threshold.ndim == 0
                 else f"per-channel[{self.threshold.numel()}]")
        return (f"threshold={theta}, leak={self.leak:g}, reset={self.reset}, "
                f"surrogate={self.surrogate}" + (f"({self.width:g})" if self.width else "")
                + (", detach_reset=True" if self.detach_reset else "")
                + (f", initial={self.initial}" if self.initial != "zero" else "")
                + (f", emit={self.emit}" if self.emit != "count" else "")
                + (f", grad_scale={self.grad_scale}" if self.grad_scale != "threshold" else ""))


def broadcast_threshold(theta: Tensor, step: Tensor, channel_dim: int = 1) -> Tensor:
    """θ (a scalar or one value per channel) shaped to broadcast against one step's input
    ``step`` (B, C, ...), with an error naming both sizes when the channels differ."""
    if theta.ndim == 0:
        return theta
    if step.shape[channel_dim] != theta.numel():
        raise ValueError(f"per-channel threshold has {theta.numel()} values but the input has "
                         f"{step.shape[channel_dim]} channels (dim {channel_dim})")
    return theta.view(-1, *([1] * (step.ndim - channel_dim - 1)))


class TimeDropout(nn.Module):
    """Dropout whose mask is drawn once per sample and held over all T steps (Lee et al.
    2020): a dropped neuron is silent for the whole window, not at random steps.

    Shape: time-folded ``(T·B, ...)`` with ``timesteps`` set (or given), else ``(T, B, ...)``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.timesteps: int | None = None

    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        if not self.training or self.p == 0:
            return x
        steps = timesteps or self.timesteps
        seq = x if steps is None else unfold_time(x, steps)
        keep = torch.empty_like(seq[0]).bernoulli_(1 - self.p) / (1 - self.p)
        out = seq * keep
        return out if steps is None else out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def unfold_time(x: Tensor, timesteps: int) -> Tensor:
    """``(T·B, ...)`` → ``(T, B, ...)``, with a clear error when the rows do not divide."""
    if x.shape[0] % timesteps:
        raise ValueError(f"a time-folded input of {x.shape[0]} rows cannot hold {timesteps} "
                         "time steps")
    return x.unflatten(0, (timesteps, -1))


def mark_spikes(spikes: Tensor, bits: Tensor | None = None) -> Tensor:
    """Tag a tensor of 0/1 spikes so that :func:`compact_saved_spikes` may keep it for
    backward as one byte per value instead of four (the next layer's saved input); ``bits``,
    the same spikes as booleans when the neuron has them already, is then kept as is."""
    spikes._spikeforge_spikes = True  # Python attributes on this tensor object only
    spikes._spikeforge_bits = bits
    return spikes


def _pack(t: Tensor) -> Any:
    if getattr(t, "_spikeforge_spikes", False):
        bits = t._spikeforge_bits
        if bits is None or bits.shape != t.shape:
            bits = t.to(torch.bool)
        return _Spikes(bits, t.dtype)
    return t


def _unpack(saved: Any) -> Tensor:
    return saved.bits.to(saved.dtype) if isinstance(saved, _Spikes) else saved


class _Spikes(NamedTuple):
    bits: Tensor
    dtype: torch.dtype


def compact_saved_spikes() -> torch.autograd.graph.saved_tensors_hooks:
    """A context in which tensors tagged by :func:`mark_spikes` that autograd saves (a conv's
    or linear's input) are stored as booleans and expanded again in backward: exact, 4× less
    memory for every spiking layer's input."""
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)

