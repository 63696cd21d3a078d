"""Thin ``nn.Module`` shells over :mod:`spikeforge.neurons.functional` for ``(T, B, ...)``
sequences. A module holds only the neuron's parameters; the state lives in the call, so two
calls with the same input give the same output.

One module, :class:`SpikingNeuron`, is the neuron of every network spikeforge builds: the
converter's IF neurons, the LIF neurons of direct training (:func:`LIF` gives it their
settings) and a hybrid SNN's neurons, which are the converter's given a surrogate gradient.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from spikeforge.neurons.bptt import bptt_scan, check_training
from spikeforge.neurons.functional import (
    INITIALS,
    Initial,
    NeuronParams,
    Reset,
    SpikeRule,
    check_choice,
    init_state,
    neuron_scan,
)

#: what a neuron passes on: θ·s(t) (``"value"``) or the unit-spike count s(t) (``"count"``)
EMITS: tuple[str, ...] = ("value", "count")
#: the settings only training reads (a converted neuron has none; a hybrid SNN's neurons are
#: the converter's with these added)
TRAINING_SETTINGS: tuple[str, ...] = ("surrogate", "width", "detach_reset", "grad_scale")
#: the settings a checkpoint keeps beside the threshold (``_extra_state``), so that neurons
#: set after construction (a hybrid SNN's, :func:`spikeforge.train.hybrid.snn_from_ann`)
#: come back as saved
SAVED_SETTINGS: tuple[str, ...] = ("leak", "reset", "initial", "emit", "rule", "symmetric",
                                   "cap")


class SpikingNeuron(nn.Module):
    """A layer of IF/LIF neurons: a :class:`~spikeforge.neurons.functional.NeuronParams`
    (threshold, spike rule, reset, leak), v(0), what it emits and, for training, a surrogate
    gradient.

    Forward, every neuron runs the equations of :mod:`spikeforge.neurons.functional`
    (docs/design.md §1), in one of two scans with the same spikes (tested):

    * the BPTT scan (:func:`spikeforge.neurons.bptt.lif_scan`) when the neuron has a
      ``surrogate`` and a gradient is needed: spikes forward, the surrogate derivative
      backward (Lee et al. 2020 and the standard surrogates, :mod:`~spikeforge.neurons.
      surrogate`);
    * otherwise the inference scan (:func:`~spikeforge.neurons.functional.neuron_scan`):
      in place, nothing kept for backward (without a surrogate, autograd runs through the
      step function, whose spike has derivative zero).

    Membranes integrate in the input's dtype, at least float32 (bfloat16 currents: the bf16
    simulation, autocast).

    Args:
        threshold: θ, a float or a 1-D tensor with one value per channel (see
            ``channel_dim``).
        rule: ``"binary"``, ``"ternary"`` or ``"augmented"``.
        reset: ``"subtract"`` (default) or ``"zero"`` (Lee et al.).
        leak: membrane leak l in (0, 1] (1.0: IF; Lee et al.: 0.99).
        initial: v(0) = 0 (``"zero"``) or θ/2 (``"half"``).
        symmetric: ungated negative spikes (ternary / augmented).
        cap: largest |s| per step for augmented spikes (None: uncapped).
        channel_dim: the channel axis of one step's input (1 for ``(B, C, ...)``); used only
            with a per-channel threshold.
        emit: ``"value"`` returns θ·s(t) (what the next layer of a converted network
            receives), ``"count"`` returns the signed unit-spike count s(t) (direct training;
            binary counts are marked for :func:`compact_saved_spikes`).
        surrogate: None (an inference neuron), or the spike's surrogate derivative for
            training: ``sigmoid``, ``atan``, ``triangle``, ``rectangle`` or ``lee`` (Lee et
            al.'s backward as their code computes it: detached reset, leak straight
            through). Binary spikes only.
        width: the surrogate's width (default: its own).
        detach_reset: no gradient through the reset (``lee`` always detaches it).
        grad_scale: ``"threshold"``: the spike's derivative carries 1/θ; ``"unit"``: it does
            not (Lee et al.'s pooling neurons).

    Every setting is validated here, once (:func:`~spikeforge.neurons.bptt.check_training`).

    ``codes`` (an attribute, False by default, not saved): when no gradient is needed, a
    binary neuron returns its spikes s(t) as uint8 codes, whatever it emits — set by
    :func:`spikeforge.int8.emit_spike_codes` on the neurons whose spikes reach only integer
    kernels, which then read one byte per spike instead of four.

    Shape:
        - Input: ``(T, B, ...)`` input currents, or the time-folded ``(T·B, ...)`` when
          ``timesteps=T`` is given, or set on the module (:mod:`spikeforge.simulate` passes
          it; :class:`~spikeforge.models.spiking.SpikingModel` sets it).
        - Output: same shape as the input.

    Example:
        >>> neuron = SpikingNeuron(threshold=1.0, initial="half")
        >>> neuron(torch.full((4, 1), 0.5)).flatten().tolist()
        [1.0, 0.0, 1.0, 0.0]
        >>> LIF(leak=0.99, surrogate="lee").emit  # the same module, set for direct training
        'count'
    """

    #: one unit spike per threshold crossing (read by the converter like a QCFS level count)
    levels = 1
    #: whether the spikes come out as uint8 codes (see above; per instance)
    codes = False

    def __init__(self, threshold: float | Tensor = 1.0, rule: SpikeRule = "binary",
                 reset: Reset = "subtract", leak: float = 1.0, initial: Initial = "zero",
                 symmetric: bool = False, cap: int | None = None, channel_dim: int = 1,
                 emit: Literal["value", "count"] = "value", *, surrogate: str | None = None,
                 width: float | None = None, detach_reset: bool = False,
                 grad_scale: Literal["threshold", "unit"] = "threshold") -> None:
        super().__init__()
        theta = torch.as_tensor(threshold).detach().clone()
        self.register_buffer("threshold", theta if theta.is_floating_point() else theta.float())
        self.rule, self.reset, self.leak, self.initial = rule, reset, float(leak), initial
        self.symmetric, self.cap, self.channel_dim, self.emit = symmetric, cap, channel_dim, emit
        self.surrogate, self.width, self.detach_reset = surrogate, width, detach_reset
        self.grad_scale = grad_scale
        self.timesteps: int | None = None
        self._validate()

    def _validate(self) -> None:
        """Raise ``ValueError`` naming a bad setting (at construction, and when a checkpoint
        sets them); resolve the surrogate's default width."""
        if self.threshold.ndim > 1:
            raise ValueError("threshold must be a scalar or one value per channel (1-D), got "
                             f"shape {tuple(self.threshold.shape)}")
        check_choice("initial potential", self.initial, INITIALS)
        check_choice("emit", self.emit, EMITS)
        self.width = check_training(self.params(self.threshold), self.surrogate, self.width,
                                    self.grad_scale)

    def params(self, theta: Tensor) -> NeuronParams:
        """The neuron's :class:`~spikeforge.neurons.functional.NeuronParams` with threshold
        ``theta`` (θ cast and shaped for one step's input)."""
        return NeuronParams(theta, self.rule, self.reset, self.leak, self.symmetric, self.cap)

    def lam(self) -> Tensor:
        """The threshold, as ``sf.convert(method="snn")`` reads a trained neuron's λ."""
        return self.threshold.detach().clone()

    def forward(self, x: Tensor, timesteps: int | None = None, constant: bool = False
                ) -> Tensor:
        """Spikes for the input current ``x``: time-folded (T·B, ...) with ``timesteps`` (or
        the module's), else time-first (T, B, ...); with ``constant``, ``x`` (B, ...) is the
        current of every one of the T steps (a direct input's, read once per step instead
        of from T copies). Returns the spikes in the input's time layout (folded for a
        ``constant`` input)."""
        steps = timesteps or self.timesteps
        if constant and steps is None:
            raise ValueError("a constant input current needs the number of time steps")
        seq = (x.expand(steps, *x.shape) if constant
               else x if steps is None else unfold_time(x, steps))
        acc = torch.promote_types(seq.dtype, torch.float32)
        theta = broadcast_threshold(self.threshold.to(acc), seq[0], self.channel_dim)
        params = self.params(theta)
        state = init_state(torch.empty_like(seq[0], dtype=acc), params, self.initial)
        gradient = torch.is_grad_enabled() and seq.requires_grad
        codes = self.codes and self.rule == "binary" and not gradient
        if self.surrogate is not None and gradient:
            s = bptt_scan(x if constant else seq, theta, state.v, self.leak, self.reset,
                          self.surrogate, self.width, self.detach_reset, self.grad_scale,
                          steps if constant else None)
            bits = s._spikeforge_bits
            if self.emit == "value":
                s = s * theta
        else:  # θ·s written by the scan itself where it emits values
            s, _ = neuron_scan(seq, params, state=state,
                               values=self.emit == "value" and not codes, codes=codes)
            bits = None
        if steps is not None:
            s = s.flatten(0, 1)
            bits = None if bits is None else bits.flatten(0, 1)
        if self.emit == "count" and self.rule == "binary" and not codes:
            s = mark_spikes(s, bits)
        elif bits is not None:  # θ·s of binary spikes under BPTT: zero where none fired
            s = mark_sparse(s)
        return s

    def get_extra_state(self) -> dict[str, Any]:
        """The settings of :data:`SAVED_SETTINGS`, saved with the threshold."""
        return {key: getattr(self, key) for key in SAVED_SETTINGS}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore saved settings (a checkpoint may hold only some of them: those it lacks
        keep their values)."""
        for key in SAVED_SETTINGS:
            if key in state:
                setattr(self, key, state[key])
        self.leak = float(self.leak)
        self._validate()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # a per-channel threshold loads into a module built with a scalar one (and back);
        # a state without settings (saved before they were kept) keeps the module's own
        theta = state_dict.get(prefix + "threshold")
        if isinstance(theta, Tensor):
            if theta.shape != self.threshold.shape:
                self.threshold = torch.empty_like(theta, dtype=self.threshold.dtype,
                                                  device=self.threshold.device)
            state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        theta = (f"{self.threshold.item():g}" if self.threshold.ndim == 0
                 else f"per-channel[{self.threshold.numel()}]")
        parts = [f"threshold={theta}", f"rule={self.rule}", f"reset={self.reset}",
                 f"initial={self.initial}"]
        if self.leak != 1.0:
            parts.append(f"leak={self.leak:g}")
        if self.symmetric:
            parts.append("symmetric=True")
        if self.cap is not None:
            parts.append(f"cap={self.cap}")
        if self.emit != "value":
            parts.append(f"emit={self.emit}")
        if self.codes:
            parts.append("codes=uint8")
        if self.surrogate is not None:
            parts.append(f"surrogate={self.surrogate}" + (f"({self.width:g})" if self.width
                                                          else ""))
            if self.detach_reset:
                parts.append("detach_reset=True")
            if self.grad_scale != "threshold":
                parts.append(f"grad_scale={self.grad_scale}")
        return ", ".join(parts)


def LIF(threshold: float | Tensor = 1.0, leak: float = 1.0, reset: Reset = "zero",
        surrogate: str = "atan", width: float | None = None, detach_reset: bool = False,
        **options: Any) -> SpikingNeuron:
    """A :class:`SpikingNeuron` set for direct training: binary LIF neurons that reset to
    zero (Lee et al., Front. Neurosci. 2020), pass their unit spikes on (``emit="count"``) and
    learn through a surrogate gradient (``atan`` unless told).

    Args:
        threshold, leak, reset, surrogate, width, detach_reset: see :class:`SpikingNeuron`.
        options: any other :class:`SpikingNeuron` setting (``initial``, ``emit``,
            ``channel_dim``, ``grad_scale``).
    """
    options.setdefault("emit", "count")
    return SpikingNeuron(threshold, reset=reset, leak=leak, surrogate=surrogate, width=width,
                         detach_reset=detach_reset, **options)


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


class SpikingMaxPool(nn.Module):
    """Max pooling of rate-coded spike trains: at step t it emits the increase of the
    window's largest cumulative input, ``o(t) = M(t) − M(t−1)`` with
    ``M(t) = pool(Σ_{τ≤t} x(τ))``, so that Σ_t o(t) is exactly the max-pool of Σ_t x(t) (the
    max of the rates, as the ANN's max-pool of the activations). Its outputs are integer
    multiples of the upstream threshold and may be several unit spikes in one step. Every
    operation is differentiable, so a trained SNN can keep it (a hybrid SNN does).

    Args:
        pool: the ANN's max-pool, a module or a function of one tensor.

    Shape: time-folded ``(T·B, C, ...)`` with ``timesteps`` set (or given); output pooled.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.timesteps: int | None = None

    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        steps = timesteps or self.timesteps
        if steps is None:
            raise ValueError("SpikingMaxPool needs timesteps (given, or set on the module)")
        exact = torch.promote_types(x.dtype, torch.float32)  # bfloat16 sums would round
        cumulative = unfold_time(x, steps).cumsum(dim=0, dtype=exact)
        pooled = self.pool(cumulative.flatten(0, 1)).unflatten(0, (steps, -1))
        return (torch.diff(pooled, dim=0, prepend=torch.zeros_like(pooled[:1]))
                .flatten(0, 1).to(x.dtype))


def unfold_time(x: Tensor, timesteps: int) -> Tensor:
    """``(T·B, ...)`` → ``(T, B, ...)``, with a clear error when the rows do not divide."""
    if x.shape[0] % timesteps:
        raise ValueError(f"a time-folded input of {x.shape[0]} rows cannot hold {timesteps} "
                         "time steps")
    return x.unflatten(0, (timesteps, -1))


def mark_spikes(spikes: Tensor, bits: Tensor | None = None) -> Tensor:
    """Tag a tensor of 0/1 spikes so that :func:`compact_saved_spikes` may keep it for
    backward as one byte per value instead of four (the next layer's saved input); ``bits``,
    the same spikes as booleans when the neuron has them already, is then kept as is. Spikes
    are also :func:`mark_sparse`."""
    spikes._spikeforge_spikes = True  # Python attributes on this tensor object only
    spikes._spikeforge_bits = bits
    return mark_sparse(spikes)


def mark_sparse(x: Tensor) -> Tensor:
    """Tag a spiking layer's output (0/1 spikes, or θ·s) as mostly zeros, for the layers
    that exploit it (:class:`~spikeforge.nn.spike_conv.SpikeConv2d`'s weight gradient)."""
    x._spikeforge_sparse = True
    return x


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

