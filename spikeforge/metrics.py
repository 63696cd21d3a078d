"""Accuracy over time, firing rates, synaptic operations and energy of a spiking network.

Conventions (docs/design.md §1; stated in every results file under ``"conventions"``):

* **Fan-out** of a spike source (a neuron, a spiking max-pool, or the input for Poisson
  encoding) is, per element, the number of synapses it drives: the connections of the
  conv/linear layers it reaches through stateless layers (pooling, flatten, residual add)
  before the next neurons. It is computed exactly, padding and strides included, as the
  gradient of the summed outputs of a copy of the network whose weights are all one and
  whose average pools sum (:func:`connectivity`).
* **SOPs** (synaptic operations) of a source = Σ_t Σ_i e_i(t) · fanout_i, with e_i(t) = 1
  for an event (any non-zero output). For augmented spikes the unit count |c_i(t)| gives
  the second figure, ``unit_sops`` = Σ_t Σ_i |c_i(t)| · fanout_i (equal to SOPs for binary
  and ternary neurons; for a spiking max-pool the events are used for both).
* **MACs** of the ANN: Σ over conv/linear layers of outputs × inputs per output.
* **Energy** per sample (45 nm, Horowitz 2014): 0.9 pJ per accumulate (AC), 4.6 pJ per MAC.
  With direct input the first layer(s) receive analog currents: their MACs are counted at
  4.6 pJ at every step; with Poisson input the input spikes are SOPs like any other. An
  augmented event with coefficient c adds c·w at each synapse, so two figures:

  - ``energy_per_sample["snn"]`` charges |c| ACs per event and synapse (0.9 pJ ×
    ``unit_sops``): hardware that delivers c unit spikes, or adds w |c| times — the
    conservative figure, and the one every ratio in our reports uses;
  - ``energy_per_sample["snn_events"]`` charges one AC per event and synapse (0.9 pJ ×
    ``sops``): hardware whose synapse multiplies w by a small integer c at the cost of one
    addition (a shift-and-add or a lookup), as the AugMapping paper assumes.

  They are equal for binary and ternary spikes.
* **Firing rate** of a layer: unit spikes per neuron per step, Σ|c| / (neurons · T).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from spikeforge.encoding import encode
from spikeforge.neurons import SpikingNeuron
from spikeforge.neurons.modules import broadcast_threshold
from spikeforge.runtime import exact_float32
from spikeforge.simulate import SpikingMaxPool, SpikingNetwork

__all__ = ["ENERGY_PER_MAC", "ENERGY_PER_SOP", "Connectivity", "EvaluationResult",
           "connectivity", "evaluate", "rederive_energy"]

ENERGY_PER_SOP = 0.9e-12  # J per accumulate, 45 nm CMOS (Horowitz, ISSCC 2014)
ENERGY_PER_MAC = 4.6e-12  # J per multiply-accumulate, 45 nm CMOS (Horowitz, ISSCC 2014)
CONVENTIONS = ("SOPs = events x fan-out (fan-out: synapses driven through stateless layers "
               "up to the next neurons); unit_sops count |c| unit spikes of augmented events; "
               "energy (Horowitz 2014): 0.9 pJ per accumulate + 4.6 pJ/MAC, 'snn' charging |c| "
               "accumulates per augmented event and synapse (0.9 pJ x unit_sops), "
               "'snn_events' one per event (0.9 pJ x sops); with direct input the first "
               "layer's MACs are counted at every step; firing rate = unit spikes per neuron "
               "per step")

_SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class Connectivity:
    """Fan-out maps and MACs of a spiking network, for one sample.

    Attributes:
        fan_out: source name → fan-out per element (shape of one sample's output of the
            source, batch axis of size 1); the key ``"input"`` is the encoded input.
        macs: synaptic layer name → MACs per sample (the ANN's cost; padding included, the
            usual convention).
        neurons: source name → number of elements (neurons) per sample.
        analog: synaptic layers fed by the input without a spike source in between (with
            direct input they multiply-accumulate at every step).
    """

    fan_out: dict[str, Tensor]
    macs: dict[str, int]
    neurons: dict[str, int]
    analog: tuple[str, ...] = ()

    @property
    def input_macs(self) -> int:
        """MACs per step of the layers that receive the analog input."""
        return sum(self.macs[name] for name in self.analog)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


class _ConnectivityPass(fx.Interpreter):
    """Runs the graph with unit weights, summing pools and a fresh leaf after every spike
    source, so that d(Σ synaptic outputs)/d(leaf) is each source's fan-out."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.leaves: dict[str, Tensor] = {}
        self.outputs: list[Tensor] = []
        self.macs: dict[str, int] = {}
        self.analog: set[str] = set()  # nodes whose value derives from the input directly

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        inputs = {a.name for a in n.all_input_nodes}
        is_source = n.op == "call_module" and isinstance(
            self.fetch_attr(n.target), SpikingNeuron | SpikingMaxPool)
        if n.op == "placeholder" or (inputs & self.analog and not is_source):
            self.analog.add(n.name)
        return out

    def _leaf(self, name: str, like: Tensor) -> Tensor:
        leaf = torch.zeros_like(like).requires_grad_()
        self.leaves[name] = leaf
        return leaf

    def placeholder(self, target: Any, args: Any, kwargs: Any) -> Any:
        value = super().placeholder(target, args, kwargs)
        return self._leaf("input", value) if isinstance(value, Tensor) else value

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.fetch_attr(target)
        x = args[0]
        if isinstance(module, SpikingNeuron):
            return self._leaf(target, x)
        if isinstance(module, SpikingMaxPool):
            return self._leaf(target, _sum_pool(module.pool, x))
        if isinstance(module, _SYNAPTIC):
            weight = torch.ones_like(module.weight, dtype=x.dtype)  # counts in float32
            if isinstance(module, nn.Linear):
                out = F.linear(x, weight)
            else:
                out = module._conv_forward(x, weight, None)
            self.macs[target] = out.numel() * module.weight[0].numel()
            self.outputs.append(out)
            return out
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return x
        if isinstance(module, nn.AvgPool1d | nn.AvgPool2d | nn.AdaptiveAvgPool1d
                      | nn.AdaptiveAvgPool2d):
            return _sum_pool(module, x)
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                      F.adaptive_avg_pool2d):
            return _sum_pool(lambda t: target(t, *args[1:], **kwargs), args[0])
        return super().call_function(target, args, kwargs)


def _sum_pool(pool: Any, x: Tensor) -> Tensor:
    """A pool that adds instead of averaging (or passes everything, for a max-pool): each
    input reaches its window's output with weight one. Built as the average pool times the
    window size, ``prod(in) / prod(out)`` for adaptive and non-overlapping windows."""
    if isinstance(pool, nn.MaxPool1d | nn.MaxPool2d):
        avg = (F.avg_pool2d if isinstance(pool, nn.MaxPool2d) else F.avg_pool1d)
        y = avg(x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    else:
        y = pool(x)
    return y * (x[0, 0].numel() / y[0, 0].numel())


def connectivity(snn: SpikingNetwork, example: Tensor) -> Connectivity:
    """Fan-out maps and MACs of ``snn`` for inputs shaped like ``example`` (one sample used)."""
    interp = _ConnectivityPass(snn.graph)
    with torch.enable_grad():
        interp.run(torch.zeros_like(example[:1]).float(), 1)
        total = sum(out.sum() for out in interp.outputs)
        leaves = list(interp.leaves.values())
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    fan_out = {name: (g if g is not None else torch.zeros_like(leaf)).detach()
               for (name, leaf), g in zip(interp.leaves.items(), grads, strict=True)}
    neurons = {name: leaf[0].numel() for name, leaf in interp.leaves.items()}
    analog = tuple(n.target for n in snn.graph.graph.nodes
                   if n.name in interp.analog and n.target in interp.macs)
    return Connectivity(fan_out, interp.macs, neurons, analog)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured (per sample unless said otherwise).

    Attributes:
        timesteps: ``[1, ..., T]``.
        accuracy: SNN test accuracy (%) after each t.
        ann_accuracy: the ANN's accuracy (%) when an ANN was given.
        agreement: % of samples where the SNN after t steps predicts the ANN's class.
        sops_per_sample: SOPs over all T steps (events × fan-out).
        unit_sops_per_sample: the same counting unit spikes |c|.
        sops_per_step: cumulative SOPs per sample after each t.
        unit_sops_per_step: cumulative unit SOPs per sample after each t.
        ann_macs_per_sample: MACs of the ANN.
        energy_per_sample: joules, ``{"snn": ..., "snn_events": ..., "ann": ...}`` (SNN at
            T steps; ``snn`` charges |c| accumulates per augmented event, ``snn_events``
            one — see the module docstring).
        energy_per_step: the SNN's joules per sample after each t (cumulative, |c| per
            event).
        energy_events_per_step: the same with one accumulate per event.
        firing_rates: layer → unit spikes per neuron per step.
        layer_sops: layer → SOPs per sample over T.
        layer_unit_sops: layer → unit SOPs per sample over T.
        samples: test samples evaluated.
        seconds: wall time of the evaluation.
        accuracy_flip: with ``flip=True``, the accuracy (%) after each t of the outputs
            summed over each image and its mirror image (test-time augmentation, the views
            a flip-averaged ANN sees); every count above is of the first view alone.
        ann_accuracy_flip: the ANN's accuracy averaged over the same two views.
    """

    timesteps: list[int]
    accuracy: list[float]
    ann_accuracy: float | None
    agreement: list[float] | None
    sops_per_sample: float
    unit_sops_per_sample: float
    sops_per_step: list[float]
    unit_sops_per_step: list[float]
    ann_macs_per_sample: int
    energy_per_sample: dict[str, float]
    energy_per_step: list[float]
    energy_events_per_step: list[float]
    firing_rates: dict[str, float]
    layer_sops: dict[str, float]
    layer_unit_sops: dict[str, float]
    samples: int
    seconds: float
    conventions: str = field(default=CONVENTIONS)
    accuracy_flip: list[float] | None = None
    ann_accuracy_flip: float | None = None

    def at(self, t: int) -> float:
        """Accuracy after ``t`` steps."""
        return self.accuracy[t - 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Monitor:
    """Forward hooks that count events and unit spikes of every spike source."""

    def __init__(self, snn: SpikingNetwork, conn: Connectivity, steps: int) -> None:
        self.conn, self.steps = conn, steps
        self.events = torch.zeros(steps, dtype=torch.float64)  # fan-out weighted, per step
        self.units = torch.zeros(steps, dtype=torch.float64)  # the same counting |c|
        self.layer_events: dict[str, float] = {}
        self.layer_units: dict[str, float] = {}
        self.unit_spikes: dict[str, float] = {}
        self.handles = []
        self.paused = False  # True while a view that is not counted runs
        for name, module in snn.layers((SpikingNeuron, SpikingMaxPool)).items():
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        fan_out = self.conn.fan_out[name]

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not self.paused:
                self.count(name, output, module, fan_out.to(output.device))
        return hook

    def count(self, name: str, output: Tensor, module: nn.Module | None, fan_out: Tensor
              ) -> None:
        """Add one batch of a source's output ``(T·B, ...)``: fan-out-weighted events and
        unit spikes per step (|value|/θ for augmented neurons; events otherwise)."""
        dtype = torch.promote_types(output.dtype, torch.float32)  # counts in >= float32
        augmented = isinstance(module, SpikingNeuron) and module.rule == "augmented"
        per_neuron = [fan_out.expand_as(output[:1])]  # and 1/θ of augmented neurons
        if augmented:
            theta = broadcast_threshold(module.threshold.to(dtype), output[:1],
                                        module.channel_dim)
            per_neuron.append((1.0 / theta).expand_as(output[:1]))
        if output.ndim == 4 and not output.is_contiguous() and output.is_contiguous(
                memory_format=torch.channels_last):  # neurons in memory order: no copy
            output = output.permute(0, 2, 3, 1)
            per_neuron = [x.permute(0, 2, 3, 1) for x in per_neuron]
        out = output.reshape(self.steps, -1, output[0].numel())  # (T, B, N)
        fan = per_neuron[0].reshape(-1).to(dtype)
        events = (out != 0).to(dtype)
        per_step = (events @ fan).sum(1).double().cpu()  # one pass + a matrix-vector product
        n_events = float(events.sum())
        if augmented:
            inverse = per_neuron[1].reshape(-1)
            magnitude = out.abs().to(dtype)
            units_per_step = (magnitude @ (fan * inverse)).sum(1).double().cpu()
            units = float((magnitude @ inverse).sum())
        else:  # binary and ternary spikes carry |s| = 1: units are events
            units_per_step, units = per_step, n_events
        units_sops = float(units_per_step.sum())
        self.events += per_step
        self.units += units_per_step
        self.layer_events[name] = self.layer_events.get(name, 0.0) + float(per_step.sum())
        self.layer_units[name] = self.layer_units.get(name, 0.0) + units_sops
        self.unit_spikes[name] = self.unit_spikes.get(name, 0.0) + units

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def evaluate(snn: SpikingNetwork, loader: Iterable[tuple[Tensor, Tensor]],
             timesteps: int | None = None, ann: nn.Module | None = None,
             max_batches: int | None = None, progress: bool = False,
             flip: bool = False) -> EvaluationResult:
    """Accuracy at every t = 1..T in one run, with firing rates, SOPs and energy.

    Args:
        snn: a converted network.
        loader: ``(x, y)`` batches (test data).
        timesteps: T (default: ``snn.timesteps``).
        ann: the source ANN, to report its accuracy and the SNN's agreement with it.
        max_batches: stop after this many batches.
        progress: show a progress bar.
        flip: also simulate each image's mirror image and report the accuracy of the two
            views together (``accuracy_flip``, ``ann_accuracy_flip``) beside the one-view
            figures.
    """
    steps = snn.timesteps if timesteps is None else timesteps
    started = time.perf_counter()
    device = next((b.device for b in snn.buffers()), torch.device("cpu"))
    correct = torch.zeros(steps, dtype=torch.long)
    correct_flip = torch.zeros(steps, dtype=torch.long)
    agree = torch.zeros(steps, dtype=torch.long)
    ann_correct, ann_correct_flip, samples = 0, 0, 0
    generator = None
    conn: Connectivity | None = None
    monitor: _Monitor | None = None
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    try:
        for i, (x, y) in enumerate(tqdm(loader, desc=f"simulate T={steps}", unit="batch",
                                        disable=not progress, leave=False, total=total)):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            if conn is None:
                conn = connectivity(snn, x)
                monitor = _Monitor(snn, conn, steps)
                if snn.encoder == "poisson":
                    generator = torch.Generator(device=x.device).manual_seed(snn.seed)
            sequence = encode(snn.encoder, x, steps, generator)
            if snn.encoder != "direct":
                monitor.count("input", sequence.flatten(0, 1), None, conn.fan_out["input"])
            out = snn.simulate(sequence).cumsum(dim=0)
            predictions = out.argmax(dim=-1)  # (T, B)
            correct += (predictions == y).sum(dim=1).cpu()
            if flip:
                monitor.paused = True
                try:
                    out += snn.simulate(encode(snn.encoder, x.flip(-1), steps, generator)
                                        ).cumsum(dim=0)
                finally:
                    monitor.paused = False
                correct_flip += (out.argmax(dim=-1) == y).sum(dim=1).cpu()
            if ann is not None:
                with torch.inference_mode(), exact_float32():  # as the SNN computes
                    logits = ann.eval()(x)
                    reference = logits.argmax(dim=-1)
                    if flip:
                        both = (logits + ann(x.flip(-1))).argmax(dim=-1)
                        ann_correct_flip += int((both == y).sum())
                ann_correct += int((reference == y).sum())
                agree += (predictions == reference).sum(dim=1).cpu()
            samples += y.numel()
    finally:
        if monitor is not None:
            monitor.close()
    if samples == 0 or conn is None or monitor is None:
        raise ValueError("evaluate() got no test batches")
    result = _result(snn, steps, correct, agree if ann is not None else None,
                     ann_correct if ann is not None else None, samples, conn, monitor,
                     time.perf_counter() - started)
    if flip:
        result.accuracy_flip = (100.0 * correct_flip.double() / samples).tolist()
        if ann is not None:
            result.ann_accuracy_flip = 100.0 * ann_correct_flip / samples
    return result


def _result(snn: SpikingNetwork, steps: int, correct: Tensor, agree: Tensor | None,
            ann_correct: int | None, samples: int, conn: Connectivity, monitor: _Monitor,
            seconds: float) -> EvaluationResult:
    sops = float(monitor.events.sum()) / samples
    units = float(monitor.units.sum()) / samples
    macs = conn.total_macs
    # with direct input, the layers fed by the input do MACs at every step
    input_macs = conn.input_macs if snn.encoder == "direct" else 0
    sops_per_step = monitor.events.cumsum(0) / samples
    units_per_step = monitor.units.cumsum(0) / samples
    analog = ENERGY_PER_MAC * input_macs * torch.arange(1, steps + 1)
    energy_per_step = (ENERGY_PER_SOP * units_per_step + analog).tolist()
    energy_events_per_step = (ENERGY_PER_SOP * sops_per_step + analog).tolist()
    rates = {name: monitor.unit_spikes[name] / (samples * steps * conn.neurons[name])
             for name in monitor.unit_spikes if name != "input"}
    return EvaluationResult(
        timesteps=list(range(1, steps + 1)),
        accuracy=(100.0 * correct.double() / samples).tolist(),
        ann_accuracy=None if ann_correct is None else 100.0 * ann_correct / samples,
        agreement=None if agree is None else (100.0 * agree.double() / samples).tolist(),
        sops_per_sample=sops, unit_sops_per_sample=units,
        sops_per_step=sops_per_step.tolist(), unit_sops_per_step=units_per_step.tolist(),
        ann_macs_per_sample=macs,
        energy_per_sample={"snn": energy_per_step[-1], "snn_events": energy_events_per_step[-1],
                           "ann": ENERGY_PER_MAC * macs},
        energy_per_step=energy_per_step, energy_events_per_step=energy_events_per_step,
        firing_rates=rates,
        layer_sops={k: v / samples for k, v in monitor.layer_events.items()},
        layer_unit_sops={k: v / samples for k, v in monitor.layer_units.items()},
        samples=samples, seconds=seconds)


def rederive_energy(entry: dict[str, Any]) -> dict[str, Any]:
    """A results entry written before ``energy_per_sample["snn"]`` charged |c| accumulates
    per augmented event, brought to the current conventions (a new dict; current entries are
    returned unchanged).

    Such an entry charged one accumulate per event: that figure becomes ``snn_events`` (and
    ``energy_events_per_step``). The |c| figure follows exactly at T from the stored totals,
    E_snn(T) = E_events(T) + 0.9 pJ × (unit_sops − sops); per step it is known only where the
    two agree (binary and ternary spikes), else ``energy_per_step`` is ``None`` and
    ``energy_note`` says so.
    """
    energy = entry.get("energy_per_sample") or {}
    if "snn_events" in energy or "snn" not in energy:
        return entry
    out = dict(entry)
    sops = entry.get("sops_per_sample")
    units = entry.get("unit_sops_per_sample", sops)
    extra = ENERGY_PER_SOP * (units - sops) if sops is not None and units is not None else 0.0
    out["energy_per_sample"] = {**energy, "snn": energy["snn"] + extra,
                                "snn_events": energy["snn"]}
    out["energy_events_per_step"] = entry.get("energy_per_step")
    if extra:
        out["energy_per_step"] = None
        out["energy_note"] = ("re-derived: the run charged one accumulate per event; "
                              "energy_per_sample['snn'] adds 0.9 pJ x (unit_sops - sops) at "
                              "T; per-step unit counts were not recorded")
    return out
