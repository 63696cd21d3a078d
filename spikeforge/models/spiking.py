"""Directly trained spiking networks from the same registry and layers as the ANNs.

:func:`create_snn` builds a zoo model with LIF neurons (:func:`~spikeforge.neurons.LIF`, a
:class:`~spikeforge.neurons.SpikingNeuron` set for training) and wraps it in a
:class:`SpikingModel`, which maps images to class scores like an ANN — so the ANN training
loop, checkpoints and evaluation serve it unchanged:

    x (B, ...) → encode → (T, B, ...) → fold → (T·B, ...) → network → (T·B, C)
      → unfold → (T, B, C) → mean over t → (B, C)

Every stateless layer (conv, linear, pooling, BN) runs once on all T·B rows; only the LIF
neurons scan over time (the BPTT scan, :func:`spikeforge.neurons.bptt.lif_scan`). Spikes
that a layer keeps for backward are stored as one byte each
(:func:`~spikeforge.neurons.modules.compact_saved_spikes`). BatchNorm over the folded rows
normalises over time and batch together (tdBN, Zheng et al. 2021). The readout y(t) of
the last layer is integrated without spikes (:func:`readout_scores`): ``"mean"`` (default)
gives Σ_t y(t) / T; ``"leaky"`` is Lee et al.'s (2020) leaky integrator divided by V_th·T,
Σ_t l^(T−t+1) y(t) / (V_th·T), whose backward, as in their code, passes the leak straight
through (∂/∂y(t) = 1/(V_th·T)). Dropout is replaced by :class:`~spikeforge.neurons.TimeDropout`
(one mask per sample for all T), and average pools whose windows tile the input by
:class:`~spikeforge.nn.pooling.TiledAvgPool2d` (the same numbers; its backward keeps
nothing and follows the spikes' memory format), and convolutions by
:class:`~spikeforge.nn.spike_conv.SpikeConv2d` (the same numbers to float rounding; fed by
spikes, their weight gradient is summed over the spikes only).

With direct input every step sees the same image, so the layers before the first neuron
(conv, BN, pooling: the input current) run once on the B images and the neuron holds their
output for the T steps, as inference does (:func:`input_neuron`; the neuron's ``constant``
input, read once per step, its gradient summed over the steps). The result is the same: a
layer that treats rows independently gives T equal copies, and BN's batch statistics over
T copies of each image are those over the images (only its running variance's n/(n − 1)
correction counts B·H·W values instead of T·B·H·W, a relative difference below
1/(B·H·W)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn

from spikeforge.encoding import ENCODERS, encode
from spikeforge.models.registry import create
from spikeforge.neurons.modules import (
    LIF,
    TRAINING_SETTINGS,
    SpikingMaxPool,
    TimeDropout,
    compact_saved_spikes,
)
from spikeforge.nn.pooling import TiledAvgPool2d
from spikeforge.nn.spike_conv import SpikeConv2d

__all__ = ["READOUTS", "SpikingModel", "create_snn", "input_neuron", "readout_scores"]

#: the readouts of :func:`readout_scores`
READOUTS = ("mean", "leaky")
#: the max-pools of :func:`create_snn`
MAX_POOLS = ("step", "cumulative")


def readout_scores(y: Tensor, kind: str = "mean", leak: float = 1.0,
                   threshold: float = 1.0) -> Tensor:
    """Class scores (B, C) from the readout layer's per-step output ``y`` (T, B, C).

    * ``"mean"``: Σ_t y(t) / T.
    * ``"leaky"`` (Lee et al., Front. Neurosci. 2020): a non-spiking leaky integrator
      V(t) = l·(V(t−1) + y(t)) (their code leaks after each step's input, the last one
      included), read out as V(T)/(V_th·T) = Σ_t l^(T−t+1) y(t) / (V_th·T). The backward
      passes the leak straight through, ∂/∂y(t) = 1/(V_th·T), as their code does.
    """
    if kind == "mean":
        return y.mean(0)
    if kind != "leaky":
        raise ValueError(f"unknown readout {kind!r}; valid: {', '.join(READOUTS)}")
    steps = y.shape[0]
    decay = leak ** torch.arange(steps, 0, -1, dtype=y.dtype, device=y.device)
    decay = decay.view(-1, *([1] * (y.ndim - 1)))
    scale = 1 / (threshold * steps)
    through = y.sum(0) * scale  # the gradient's path
    return through + ((y * (decay - 1)).sum(0) * scale).detach()


def replace_layers(net: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...],
                   make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace, in place, every submodule of ``net`` that is a ``kind`` by ``make(it)`` (the
    replacements themselves are not searched)."""
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, kind):
                setattr(module, child_name, make(child))


#: layers that treat each row (image) on its own, up to BN's batch statistics, which T
#: copies of every image leave unchanged
_PER_IMAGE = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d,
              nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


def input_neuron(net: nn.Module) -> str | None:
    """The name of ``net``'s first spiking neuron when all that comes before it is
    per-image layers (:data:`_PER_IMAGE`) whose outputs reach only each other and that
    neuron (no skip connection around it); else None. Its input current is the same at
    every step of a direct input."""
    from spikeforge.convert.graph import trace
    from spikeforge.neurons import SpikingNeuron

    try:
        graph = trace(net).graph
    except ValueError:  # not traceable: every layer runs on all T·B rows
        return None
    before: set[fx.Node] = set()
    for node in graph.nodes:
        module = (net.get_submodule(str(node.target)) if node.op == "call_module" else None)
        if node.op == "placeholder" or isinstance(module, _PER_IMAGE):
            before.add(node)
            continue
        if isinstance(module, SpikingNeuron) and all(
                user in before or user is node for b in before for user in b.users):
            return str(node.target)
        return None
    return None


class SpikingModel(nn.Module):
    """A network of LIF layers (time-folded) as an images → scores module.

    Args:
        net: a network whose spiking layers accept time-folded input and have a
            ``timesteps`` attribute (as zoo models built with ``activation="lif"``).
        timesteps: T.
        encoder: ``"direct"`` (the image is the input current at every step) or
            ``"poisson"`` (signed Bernoulli spikes with mean x, drawn from the global RNG so
            that training is reproducible and resumable), or ``"poisson_lee"`` (Lee et al.'s
            unit spikes, probability min(|x|, 1)); see :mod:`spikeforge.encoding`.
        readout: ``"mean"`` or ``"leaky"`` (see :func:`readout_scores`).
        readout_leak, readout_threshold: l and V_th of the ``"leaky"`` readout.
    """

    def __init__(self, net: nn.Module, timesteps: int, encoder: str = "direct",
                 readout: Literal["mean", "leaky"] = "mean", readout_leak: float = 1.0,
                 readout_threshold: float = 1.0) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        ENCODERS.lookup(encoder)
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
        self.readout, self.readout_leak = readout, float(readout_leak)
        self.readout_threshold = float(readout_threshold)
        replace_layers(net, nn.Dropout, lambda dropout: TimeDropout(dropout.p))
        replace_layers(net, nn.AvgPool2d, TiledAvgPool2d.from_pool)
        replace_layers(net, nn.Conv2d, SpikeConv2d.from_conv)
        self.net, self.encoder = net, encoder
        self._input_neuron = input_neuron(net) if encoder == "direct" else None
        if self._input_neuron is not None:
            self.net.get_submodule(self._input_neuron).register_forward_pre_hook(
                self._hold_input_current, with_kwargs=True)
        self._images: int | None = None  # B while forward runs on B images, not T·B rows
        self.set_timesteps(timesteps)

    def set_timesteps(self, timesteps: int) -> None:
        """Simulate ``timesteps`` steps from now on (e.g. evaluate at another T)."""
        self.timesteps = timesteps
        for module in self.net.modules():
            if hasattr(module, "timesteps"):
                module.timesteps = timesteps

    def _hold_input_current(self, module: nn.Module, args: tuple[Any, ...],
                            kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        """The first neuron's input, computed once per image, held for the T steps (the
        neuron's ``constant`` input: read once per step, no T copies)."""
        z = args[0]
        if self._images is None or z.shape[0] != self._images:
            return None  # not called from forward (e.g. a copy being converted)
        self._images = None
        return args, {**kwargs, "constant": True}

    def _time_folded(self, x: Tensor, encoder: str) -> Tensor:
        """``x`` (B, ...) encoded for T steps and folded to (T·B, ...), in ``x``'s memory
        format."""
        seq = encode(encoder, x, self.timesteps)
        if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # folded as (T·B, H, W, C) rows: channels-last, at most one copy (flatten alone
            # would copy an expanded input into NCHW rows, and then again into channels-last)
            return seq.permute(0, 1, 3, 4, 2).flatten(0, 1).permute(0, 3, 1, 2)
        return seq.flatten(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        once = self._input_neuron is not None and self.encoder == "direct"
        seq = x if once else self._time_folded(x, self.encoder)
        self._images = x.shape[0] if once else None
        try:
            with compact_saved_spikes():
                out = self.net(seq)
        finally:
            missed, self._images = self._images is not None, None
        if missed:
            raise RuntimeError(f"neuron {self._input_neuron!r} did not receive the input "
                               "current: the network's forward does not match its trace")
        return readout_scores(out.unflatten(0, (self.timesteps, -1)), self.readout,
                              self.readout_leak, self.readout_threshold)

    def extra_repr(self) -> str:
        text = f"timesteps={self.timesteps}, encoder={self.encoder}"
        if self.readout != "mean":
            text += (f", readout={self.readout}(leak={self.readout_leak:g}, "
                     f"threshold={self.readout_threshold:g})")
        return text


def create_snn(name: str, timesteps: int, encoder: str = "direct", num_classes: int = 10,
               in_channels: int = 3, pool: str = "avg",
               neuron: dict[str, Any] | None = None, pool_threshold: float | None = None,
               readout: Literal["mean", "leaky"] = "mean",
               pool_grad: Literal["threshold", "unit"] = "threshold",
               max_pool: Literal["step", "cumulative"] = "step",
               **options: Any) -> SpikingModel:
    """A zoo model (``name``) with LIF neurons, wrapped for direct training.

    Args:
        timesteps, encoder: see :class:`SpikingModel`.
        neuron: LIF options (``threshold``, ``leak``, ``reset``, ``surrogate``, ``width``,
            ``detach_reset``; see :func:`~spikeforge.neurons.LIF`).
        pool_threshold: spiking average pooling (Lee et al. 2020 use 0.75): every
            AvgPool2d is followed by non-leaky neurons with this threshold, so that pooled
            spikes stay spikes; ``None`` passes the pooled rates on.
        readout: ``"mean"`` or ``"leaky"`` (Lee et al.; with the neurons' leak and threshold,
            see :func:`readout_scores`).
        pool_grad: the pooling neurons' spike derivative: ``"threshold"`` (with 1/θ, as every
            LIF) or ``"unit"`` (unscaled, as Lee et al.'s code).
        max_pool: ``"step"`` (default) max-pools each step's spikes on their own;
            ``"cumulative"`` uses the converter's rate-coded
            :class:`~spikeforge.neurons.SpikingMaxPool` (a hybrid SNN's, so that it starts as
            the converted network).
        options: the model's own options (``dropout``, ...).

    The result carries ``spikeforge_spec`` (the zoo spec plus ``snn``), so checkpoints
    rebuild it with :func:`spikeforge.train.load_model`.
    """
    if max_pool not in MAX_POOLS:
        raise ValueError(f"unknown max_pool {max_pool!r}; valid: {', '.join(MAX_POOLS)}")
    neuron = dict(neuron or {})
    net = create(name, num_classes=num_classes, in_channels=in_channels, activation="lif",
                 pool=pool, activation_options=neuron, **options)
    if pool_threshold is not None:
        pool_neuron = {k: v for k, v in neuron.items()
                       if k in TRAINING_SETTINGS and k != "grad_scale"}
        replace_layers(net, nn.AvgPool2d, lambda pool: nn.Sequential(
            pool, LIF(pool_threshold, leak=1.0, reset="zero", grad_scale=pool_grad,
                      **pool_neuron)))
    if max_pool == "cumulative":
        from spikeforge.convert.graph import MAX_POOL_MODULES  # the pools the converter replaces

        replace_layers(net, MAX_POOL_MODULES, SpikingMaxPool)
    model = SpikingModel(net, timesteps, encoder, readout, neuron.get("leak", 1.0),
                         neuron.get("threshold", 1.0))
    model.spikeforge_spec = {**net.spikeforge_spec, "snn": {
        "timesteps": timesteps, "encoder": encoder, "pool_threshold": pool_threshold,
        "readout": readout, "pool_grad": pool_grad, "max_pool": max_pool}}
    return model
