"""Conversion recipes: trace → fold BN → insert observers → calibrate → replace activations
by neurons → finalise. A method is only a choice of neuron (docs/design.md §1):

============================  ===========================================================
method                        neuron
============================  ===========================================================
``threshold_balancing``       binary IF, θ = λ, v(0) = 0 (Diehl 2015; Rueckauer 2017)
``termapping``                ternary: +θ and −θ, negative spikes gated by a positive net
                              count (the gate is our reading of the paper; ``symmetric=True``:
                              ungated) (Yu et al., TNNLS 2022)
``augmapping``                augmented: c(t) = ⌊m/θ⌋ unit spikes in one event with θ = λ
                              and TerMapping's gated negative side: the paper's form,
                              "AugMapping (Yu et al.)". ``levels=L`` > 1 selects our
                              extension "AugMapping, L levels": unit θ = λ/L. Both start
                              at v(0) = θ/2 (our reading; the paper does not say)
``qcfs`` / ``csqcfs``         binary IF, θ = the learned λ, v(0) = θ/2 (Bu et al. 2022;
                              Yang et al. 2025)
============================  ===========================================================

All use reset by subtraction and the direct encoder unless told otherwise; θ of each layer is
the calibrated λ (p-th percentile of its positive activations, layer-wise or per channel),
divided by ``levels`` for our multi-level augmented spikes. The graph keeps the ANN's weights
unchanged: a neuron emits θ·s(t), which is the same as normalising the weights by
λ_{l-1}/λ_l and emitting unit spikes.

Every default lives here (:data:`METHODS`, :func:`method_defaults`); the command line and the
experiment configs pass only what the user set, so that a method means the same everywhere.

Why our extension has levels: an augmented event carries how many unit spikes fire in one
step, so the unit can be a fraction of λ without costing more events (though more unit
spikes, which :mod:`spikeforge.metrics` charges). With θ = λ/L and v(0) = θ/2 the first step
already emits c = ⌊z·L/λ + 1/2⌋ units, the ANN activation rounded to L levels per λ
(uncapped: larger activations are not clipped), and later steps refine the residue — where
the paper's θ = λ rounds the first step to whole multiples of λ.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, fx, nn

from spikeforge.convert.calibrate import calibrate
from spikeforge.convert.graph import (
    ConversionError,
    activation_nodes,
    conversion_graph,
    describe,
    is_max_pool,
)
from spikeforge.models.spiking import SpikingModel
from spikeforge.neurons import SpikingNeuron
from spikeforge.neurons.functional import INITIALS, RESETS
from spikeforge.nn import CSQCFS, QCFS
from spikeforge.registry import Registry
from spikeforge.simulate import SpikingMaxPool, SpikingNetwork, max_pool_module

__all__ = ["MAX_POOL_POLICIES", "METHODS", "THRESHOLD_SOURCES", "convert",
           "learned_thresholds", "method_defaults", "method_name", "to_spiking"]

#: where thresholds come from: calibrated λ, or the λ learned by QCFS / CS-QCFS activations
THRESHOLD_SOURCES: tuple[str, ...] = ("calibrate", "learned")
#: what happens to max pooling (see :mod:`spikeforge.simulate`)
MAX_POOL_POLICIES: tuple[str, ...] = ("cumulative", "error")

#: method → its spike rule, default v(0), where its thresholds come from and (for the
#: learned ones) the activation type it expects. AugMapping's augmented neurons start at
#: v(0) = θ/2 in every form (the paper's θ = λ and our multi-level θ = λ/L), so that the
#: first step rounds ⌊m/θ + 1/2⌋ instead of truncating: at T = 1 truncation loses about half
#: a spike per neuron and, on a network calibrated to θ = λ, leaves most neurons silent.
METHODS: Registry[dict[str, Any]] = Registry("conversion method", {
    "threshold_balancing": {"rule": "binary", "initial": "zero", "thresholds": "calibrate"},
    "termapping": {"rule": "ternary", "initial": "zero", "thresholds": "calibrate"},
    "augmapping": {"rule": "augmented", "initial": "half", "thresholds": "calibrate"},
    "qcfs": {"rule": "binary", "initial": "half", "thresholds": "learned", "activation": QCFS},
    "csqcfs": {"rule": "binary", "initial": "half", "thresholds": "learned",
               "activation": CSQCFS},
    # a directly trained SNN (spikeforge.models.spiking): its neurons as they were trained
    "snn": {"rule": "binary", "initial": "zero", "thresholds": "learned",
            "activation": SpikingNeuron},
}, error=ConversionError)


def to_spiking(gm: fx.GraphModule, neurons: dict[str, SpikingNeuron],
               modules: tuple[type[nn.Module], ...] = ()) -> fx.GraphModule:
    """Rewrite the prepared ANN graph ``gm`` into a time-folded SNN graph (a new module):
    every activation node ``name`` becomes the neuron ``neurons[name]``, a submodule named
    ``spike_<name>``; max pools become :class:`SpikingMaxPool`; the graph takes
    ``(x_folded, timesteps)``."""
    snn = copy.deepcopy(gm)
    graph = snn.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConversionError(f"the model takes {len(placeholders)} inputs; the converter "
                              "supports models with exactly one input tensor")
    with graph.inserting_after(placeholders[0]):
        steps = graph.placeholder("timesteps")
    by_name = {n.name: n for n in graph.nodes}
    for node in activation_nodes(gm, modules):
        name = f"spike_{node.name}"
        snn.add_submodule(name, neurons[node.name])
        _replace(graph, by_name[node.name], name, steps)
    for node in [n for n in gm.graph.nodes if is_max_pool(n, gm)]:
        name = f"maxpool_{node.name}"
        snn.add_submodule(name, SpikingMaxPool(max_pool_module(node, gm)))
        _replace(graph, by_name[node.name], name, steps)
    graph.lint()
    snn.delete_all_unused_submodules()
    snn.recompile()
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    return snn.to(device)


def _replace(graph: fx.Graph, node: fx.Node, module: str, steps: fx.Node) -> None:
    with graph.inserting_after(node):
        new = graph.call_module(module, (node.args[0], steps))
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def convert(model: nn.Module, calibration: Iterable[Any] | None = None,
            method: str = "threshold_balancing", *, timesteps: int | None = None,
            thresholds: str | None = None, percentile: float = 99.9, channelwise: bool = False,
            reset: str = "subtract", initial: str | None = None, symmetric: bool = False,
            levels: int | None = None, cap: int | None = None, max_pool: str = "cumulative",
            encoder: str = "direct", seed: int = 0, calibration_batches: int | None = None,
            memory_budget: int = 2 << 30, activations: Iterable[type[nn.Module]] = (),
            precision: str = "float32", progress: bool = False) -> SpikingNetwork:
    """Convert a trained ANN into a spiking network.

    Args:
        model: any ``nn.Module`` torch.fx can trace, built from the operations listed in
            :mod:`spikeforge.convert.graph`. Not modified.
        calibration: iterable of input batches or ``(input, label)`` batches (training data,
            normalised like the model's inputs); ``None`` with learned thresholds.
        method: ``"threshold_balancing"``, ``"termapping"``, ``"augmapping"``, ``"qcfs"``
            or ``"csqcfs"``; ``"snn"`` for a directly trained SNN (a
            :class:`~spikeforge.models.spiking.SpikingModel` or a network of LIF layers):
            its neurons as trained (θ, leak, reset, v(0) = 0), unit spikes out.
        timesteps: default T of ``snn(x)`` (default 32; a SpikingModel's own T).
        thresholds: ``"calibrate"`` (λ from the activations on ``calibration``) or
            ``"learned"`` (λ of the QCFS / CS-QCFS activations); default: ``"learned"`` for
            ``qcfs``/``csqcfs``, else ``"calibrate"``. ``augmapping`` with ``"learned"``
            (ours, docs/design.md §1) gives each neuron θ = λ/L, v(0) = θ/2 and cap L, L its
            layer's QCFS levels: at T = 1 it equals the L-level ANN.
        percentile: p of the calibrated λ (100 = max).
        channelwise: one calibrated threshold per output channel.
        reset: ``"subtract"`` or ``"zero"``.
        initial: v(0) = 0 (``"zero"``) or θ/2 (``"half"``); default: the method's
            (:func:`method_defaults`).
        symmetric: ungated negative spikes (``termapping``/``augmapping``; ours: the gate is
            our reading of the paper, this shows what it does).
        levels: L, unit spikes per λ of an augmented neuron: θ = λ/L (``augmapping`` only).
            Default 1, the paper's θ = λ; L > 1 is our extension "AugMapping, L levels"
            (with v(0) = θ/2 unless ``initial`` says). With learned thresholds: each layer's
            QCFS L.
        cap: largest coefficient of an augmented spike (None = uncapped; with learned
            thresholds each layer's L).
        max_pool: ``"cumulative"`` or ``"error"`` (see :mod:`spikeforge.simulate`).
        encoder: a name of :data:`spikeforge.encoding.ENCODERS` (``"direct"``: the image as
            current every step; ``"poisson"``: spikes).
        seed: Poisson seed.
        calibration_batches: use at most this many calibration batches.
        memory_budget: activation bytes per chunk of a batch during simulation.
        activations: extra module types to treat as ReLU-like activations.
        precision: ``"float32"`` (exact), ``"bf16"`` (synaptic layers in bfloat16, membrane
            potentials and the readout's sum in float32), ``"int8"`` (weights rounded to
            8-bit integers per output channel, a model of neuromorphic hardware, computed
            on integer kernels where the CPU has them) or ``"auto"`` (bf16 where the
            device computes it in hardware, else float32:
            :func:`~spikeforge.simulate.resolve_precision`); see
            :class:`~spikeforge.simulate.SpikingNetwork`. The choice and its reason are in
            ``snn.info``.
        progress: show a progress bar while calibrating.

    Returns:
        A :class:`~spikeforge.simulate.SpikingNetwork` on the model's device, in eval mode.

    Raises:
        ConversionError: unknown method or option, unsupported operation (naming the node and
            its source line), empty calibration data, non-finite calibration inputs, a
            layer that never activates, a learned threshold that is not positive, or a
            model without ReLU-like activations.

    Example:
        >>> snn = convert(ann, calibration_batches, "augmapping", levels=16, timesteps=4)
        >>> snn(x).shape          # (T, B, classes)
        >>> snn.info["name"]
        'AugMapping, 16 levels'
    """
    started = time.perf_counter()
    defaults = METHODS.lookup(method)
    resolved = method_defaults(method, thresholds, levels)
    thresholds = resolved["thresholds"]
    initial = resolved["initial"] if initial is None else initial
    _check_choice("thresholds", thresholds, THRESHOLD_SOURCES)
    _check_choice("reset", reset, RESETS)
    _check_choice("initial", initial, INITIALS)
    _check_choice("max_pool", max_pool, MAX_POOL_POLICIES)
    augmented = defaults["rule"] == "augmented"
    if (cap is not None or levels is not None) and not augmented:
        raise ConversionError(f"cap and levels apply to augmented spikes "
                              f"(method='augmapping'), not to {method!r}")
    if levels is not None and (not isinstance(levels, int) or levels < 1):
        raise ConversionError(f"levels must be an integer >= 1, got {levels!r}")
    if isinstance(model, SpikingModel):  # simulate it as it was trained, unless told
        timesteps = timesteps or model.timesteps
        model, encoder = model.net, encoder if encoder != "direct" else model.encoder
    timesteps = timesteps or 32
    spiking = any(isinstance(m, SpikingNeuron) for m in model.modules())
    if spiking and method != "snn":
        raise ConversionError(f"this is a directly trained SNN (LIF neurons): simulate it with "
                              f"method='snn', not {method!r}")
    if method == "snn" and not spiking:
        raise ConversionError("method='snn' simulates a directly trained SNN (LIF neurons); "
                              "this model has none")
    modules = tuple(activations)
    gm = conversion_graph(model, modules, max_pool)
    if thresholds == "learned":
        lams, layer_levels = learned_thresholds(gm, modules, defaults.get("activation"))
    else:
        if calibration is None:
            raise ConversionError(f"method {method!r} calibrates its thresholds: pass "
                                  "calibration data (or thresholds='learned' for QCFS nets)")
        lams = calibrate(gm, calibration, percentile, channelwise,
                         max_batches=calibration_batches, modules=modules, progress=progress)
        layer_levels = dict.fromkeys(lams, 1)  # the paper's θ = λ unless levels says
    neurons = {}
    for name, lam in lams.items():
        units = (levels or layer_levels[name]) if augmented else 1
        layer_cap = cap
        if cap is None and augmented and thresholds == "learned":
            layer_cap = layer_levels[name]  # c·θ never exceeds λ: the QCFS clip
        if method == "snn":  # the trained neuron itself: its θ, leak, reset, v(0), emission
            neurons[name] = copy.deepcopy(
                gm.get_submodule(next(n.target for n in gm.graph.nodes if n.name == name)))
        else:
            neurons[name] = SpikingNeuron(lam / units, defaults["rule"], reset, initial=initial,
                                          symmetric=symmetric, cap=layer_cap)
    graph = to_spiking(gm, neurons, modules).eval()
    info = {"method": method, "thresholds_from": thresholds, "percentile": percentile,
            "channelwise": channelwise, "max_pool": max_pool, "encoder": encoder,
            "levels": (levels or _uniform(layer_levels)) if augmented else None,
            "rule": defaults["rule"],
            "reset": reset, "initial": initial,
            "symmetric": symmetric, "cap": cap,
            "thresholds": {k: n.threshold.tolist() for k, n in neurons.items()},
            "convert_seconds": time.perf_counter() - started}
    info["name"] = method_name(info)
    return SpikingNetwork(graph, timesteps, encoder, seed, memory_budget, info=info,
                          precision=precision).eval()


def method_defaults(method: str, thresholds: str | None = None,
                    levels: int | None = None) -> dict[str, Any]:
    """The options ``method`` gets when they are not given (the one place they are decided).

    ``thresholds``: the method's own source (``"learned"`` for ``qcfs`` / ``csqcfs``, else
    ``"calibrate"``). ``initial``: the method's v(0) — 0 for threshold balancing and
    TerMapping; θ/2 for QCFS / CS-QCFS, for AugMapping in every form (the first step rounds to
    the nearest unit) and for any network converted with learned thresholds (QCFS levels are
    centred), except a directly trained SNN's own neurons. ``levels``: the unit spikes per λ
    of augmented neurons — 1 (the paper's θ = λ) when calibrated; with learned thresholds
    each layer's QCFS L (``None`` here: read from the network).

    Example:
        >>> method_defaults("augmapping")
        {'thresholds': 'calibrate', 'initial': 'half', 'levels': 1}
        >>> method_defaults("termapping")["initial"]
        'zero'
    """
    own = METHODS[method]
    thresholds = own["thresholds"] if thresholds is None else thresholds
    augmented = own["rule"] == "augmented"
    borrowed = thresholds == "learned" and own["thresholds"] != "learned"
    if levels is None and augmented and thresholds != "learned":
        levels = 1
    initial = "half" if borrowed else own["initial"]
    return {"thresholds": thresholds, "initial": initial,
            "levels": levels if augmented else None}


def method_name(info: dict[str, Any]) -> str:
    """The name a converted network's method is published under, from ``snn.info`` (or a
    results entry's ``neuron`` record): the paper's forms by the paper's name, our extensions
    by what they add, and every option that differs from the form's default after a comma.

    Example:
        >>> method_name({"method": "augmapping", "levels": 1, "initial": "half"})
        'AugMapping (Yu et al.)'
        >>> method_name({"method": "augmapping", "levels": 16, "initial": "half"})
        'AugMapping, 16 levels'
    """
    method = info.get("method", "?")
    if method not in METHODS:
        return str(method)
    source = info.get("thresholds_from") or METHODS[method]["thresholds"]
    levels = info.get("levels")
    learned_form = source == "learned" and METHODS[method]["thresholds"] != "learned"
    if method == "augmapping":
        if learned_form:
            name = "AugMapping" + (f", {levels} levels" if levels else "") + ", learned λ"
        elif (levels or 1) == 1:
            name = "AugMapping (Yu et al.)"
        else:
            name = f"AugMapping, {levels} levels"
    else:
        name = {"threshold_balancing": "threshold balancing", "termapping": "TerMapping",
                "qcfs": "QCFS", "csqcfs": "CS-QCFS", "snn": "trained SNN"}[method]
        if learned_form:
            name += ", learned λ"
    default = method_defaults(method, source, levels if method == "augmapping" else None)
    extras = []
    if info.get("symmetric"):
        extras.append("symmetric")
    if info.get("initial") and method != "snn" and info["initial"] != default["initial"]:
        extras.append("v(0) = θ/2" if info["initial"] == "half" else "v(0) = 0")
    if info.get("channelwise") and source == "calibrate":
        extras.append("per channel")
    if source == "calibrate" and info.get("percentile", 99.9) != 99.9:
        extras.append(f"p = {info['percentile']:g}")
    if info.get("reset", "subtract") != "subtract" and method != "snn":
        extras.append(f"reset to {info['reset']}")
    if info.get("cap") is not None:
        extras.append(f"cap {info['cap']}")
    if info.get("encoder", "direct") != "direct":
        extras.append(f"{info['encoder']} input")
    return ", ".join([name, *extras])


def _uniform(layer_levels: dict[str, int]) -> int | None:
    """The one L shared by every layer, or None when layers differ."""
    values = set(layer_levels.values())
    return values.pop() if len(values) == 1 else None


def learned_thresholds(gm: fx.GraphModule, modules: tuple[type[nn.Module], ...] = (),
                       expected: type[nn.Module] | None = None
                       ) -> tuple[dict[str, Tensor], dict[str, int]]:
    """λ and L of every activation of ``gm`` from its QCFS / CS-QCFS module.

    Raises:
        ConversionError: an activation without a learned threshold (plain ReLU), of another
            type than ``expected``, or whose λ is not positive — naming the layer.
    """
    lams, layer_levels = {}, {}
    for node in activation_nodes(gm, modules):
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if module is None or not hasattr(module, "lam") or not hasattr(module, "levels"):
            raise ConversionError(
                f"activation {describe(node, gm)} has no learned threshold: learned thresholds "
                "need QCFS or CS-QCFS activations (train with activation='qcfs' or 'csqcfs'), "
                "or use thresholds='calibrate'")
        if expected is not None and not isinstance(module, expected):
            raise ConversionError(
                f"activation {describe(node, gm)} is not {expected.__name__}; use the method "
                f"named after the network's activation")
        lam = module.lam().detach().clone()
        if not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any()):
            raise ConversionError(
                f"activation {describe(node, gm)} learned a threshold λ = "
                f"{lam.min().item():.4g} <= 0, which no spiking neuron can have; retrain with "
                "CS-QCFS (softplus keeps λ > 0) or a lower learning rate / threshold decay")
        lams[node.name], layer_levels[node.name] = lam, int(module.levels)
    return lams, layer_levels


def _check_choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConversionError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
