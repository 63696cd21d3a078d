"""NIR export and import (the Neuromorphic Intermediate Representation, Pedersen et al.,
Nature Communications 2024) for spiking networks made by :func:`spikeforge.convert`.

Mapping (NIR shapes carry no batch axis):

=====================================  ==============================================
spikeforge (a SpikingNetwork's graph)  NIR
=====================================  ==============================================
input                                  ``Input``
Conv2d / Linear                        ``Conv2d`` / ``Affine`` (``Linear`` without bias)
AvgPool2d (AdaptiveAvgPool2d)          ``AvgPool2d`` (adaptive: when the size divides)
Flatten / flatten / view to (B, -1)    ``Flatten`` (all non-batch axes)
residual ``+``                         two edges into the next node (NIR sums inputs)
binary neuron, leak 1                  ``IF`` (r = 1, v_reset = 0)
binary neuron, leak l < 1              ``LIF`` (τ = dt / (1 − l), r = τ / dt, v_leak = 0)
emitted value θ·s                      the neuron, then ``Scale(θ)``
readout                                ``Output`` (the currents; sum them over steps)
=====================================  ==============================================

What NIR cannot say is written into each neuron's ``metadata`` and restored by
:func:`from_nir`: the reset (``"subtract"`` — NIR's IF/LIF reset *to* ``v_reset``, i.e. our
``"zero"``), the initial potential and the spike rule. Export refuses what a third-party
reader would simulate differently — ternary or augmented spikes, v(0) = θ/2, a spiking
max-pool — unless ``approximate=True``; then the graph's ``metadata["approximations"]``
lists every such layer (and a warning says so); an approximated max-pool is written as the
average pool of the same window.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from spikeforge.convert.graph import ConversionError
from spikeforge.neurons import SpikingNeuron
from spikeforge.simulate import SpikingMaxPool, SpikingNetwork

__all__ = ["ExportError", "from_nir", "read_nir", "to_nir", "write_nir"]

#: the time step NIR's continuous LIF is discretised with (snnTorch and Norse use 1e-4)
DT = 1e-4


class ExportError(ConversionError):
    """The network (or NIR graph) has something the other side cannot represent."""


def _nir():
    try:
        import nir
    except ImportError as exc:  # an optional extra
        raise ExportError("NIR export needs the 'nir' package: pip install "
                          "'spikeforge[nir]'") from exc
    return nir


def write_nir(graph: Any, path: str | os.PathLike) -> None:
    """Write an NIR graph to ``path`` (NIR's HDF5 file format)."""
    _nir().write(path, graph)


def read_nir(path: str | os.PathLike) -> Any:
    """Read an NIR graph from ``path`` (NIR's HDF5 file format)."""
    return _nir().read(path)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().astype(np.float32)


def _neuron_arrays(module: SpikingNeuron, shape: tuple[int, ...]) -> np.ndarray:
    theta = module.threshold.detach().float()
    if theta.ndim == 1:
        theta = theta.view(-1, *([1] * (len(shape) - 1)))
    return _np(theta.expand(shape).contiguous())


def to_nir(snn: SpikingNetwork, sample: Tensor, approximate: bool = False,
           dt: float = DT) -> Any:
    """The NIR graph of a converted network (``nir.NIRGraph``; save it with :func:`write_nir`).

    Args:
        snn: a network from :func:`spikeforge.convert`.
        sample: one input batch ``(B, ...)`` (only its shape is used).
        approximate: export layers NIR cannot represent exactly as plain IF neurons and
            list them in ``metadata["approximations"]`` instead of refusing.
        dt: the time step recorded for LIF time constants.

    Raises:
        ExportError: an operation without a NIR node, or (without ``approximate``) ternary /
            augmented spikes, v(0) = θ/2 or a spiking max-pool — naming the layer.
    """
    nir = _nir()
    gm = snn.graph
    ShapeProp(gm).propagate(sample[:1], 1)
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    sources: dict[fx.Node, list[str]] = {}  # fx node -> the NIR nodes whose sum it is
    approximations: list[str] = []

    def shape(node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape[1:])

    def emit(name: str, nir_node: Any, inputs: Iterable[str]) -> list[str]:
        nodes[name] = nir_node
        edges.extend((src, name) for src in inputs)
        return [name]

    def refuse(node: fx.Node, what: str) -> None:
        if not approximate:
            raise ExportError(f"layer {node.name!r}: {what} cannot be written in NIR; export "
                              "with approximate=True (--approximate) to write a plain IF "
                              "neuron instead, reported in metadata['approximations']")
        approximations.append(f"{node.name}: {what}")

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node is not first:
                continue  # the timesteps argument
            sources[node] = emit("input", nir.Input(np.array(shape(node))), [])
            continue
        if node.op == "output":
            result = node.args[0]
            emit("output", nir.Output(np.array(shape(result))), sources[result])
            continue
        args = [a for a in node.args if isinstance(a, fx.Node) and a in sources]
        inputs = sources[args[0]] if args else []
        if node.op == "call_function" and node.target in (operator.add, torch.add):
            sources[node] = [s for a in args for s in sources[a]]
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            sources[node] = emit(node.name, nir.Conv2d(
                input_shape=tuple(shape(args[0])[1:]), weight=_np(module.weight),
                stride=module.stride, padding=module.padding, dilation=module.dilation,
                groups=module.groups,
                bias=_np(module.bias) if module.bias is not None
                else np.zeros(module.out_channels, np.float32)), inputs)
        elif isinstance(module, nn.Linear):
            node_type = (nir.Affine(_np(module.weight), _np(module.bias))
                         if module.bias is not None else nir.Linear(_np(module.weight)))
            sources[node] = emit(node.name, node_type, inputs)
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            sources[node] = _pool(node, module, shape(args[0]), shape(node), inputs, emit, nir)
        elif isinstance(module, nn.Flatten) or (
                node.op in ("call_method", "call_function")
                and getattr(node.target, "__name__", node.target) in ("flatten", "view",
                                                                      "reshape")):
            if len(shape(node)) != 1:
                raise ExportError(f"layer {node.name!r}: only a flatten of all non-batch axes "
                                  f"maps to NIR (output shape {shape(node)})")
            sources[node] = emit(node.name, nir.Flatten(np.array(shape(args[0])), 0, -1),
                                 inputs)
        elif isinstance(module, SpikingNeuron):
            sources[node] = _neuron(node, module, shape(node), inputs, emit, refuse, nir, dt)
        elif isinstance(module, SpikingMaxPool):
            refuse(node, "a spiking max-pool")  # written as the average of its window
            sources[node] = _pool(node, module.pool, shape(args[0]), shape(node), inputs,
                                  emit, nir)
        else:
            raise ExportError(f"node {node.name!r} ({node.op} {node.target}) has no NIR node")
    metadata = {"producer": "spikeforge", "timesteps": snn.timesteps, "encoder": snn.encoder,
                "readout": "sum the Output over time steps", "approximations": approximations}
    if approximations:
        warnings.warn("NIR export approximated: " + "; ".join(approximations), stacklevel=2)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _pool(node: fx.Node, module: nn.Module, in_shape: tuple[int, ...],
          out_shape: tuple[int, ...], inputs: list[str], emit: Any, nir: Any) -> list[str]:
    """An average pool as NIR's ``AvgPool2d``; a max pool (only ever reached under
    ``approximate=True``) as the average pool of the same window."""
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        (h, w), (oh, ow) = in_shape[-2:], out_shape[-2:]
        if (h, w) == (oh, ow):
            return inputs  # nothing to pool
        if h % oh or w % ow:
            raise ExportError(f"layer {node.name!r}: adaptive pooling {h}x{w} -> {oh}x{ow} "
                              "is not a fixed average pool")
        kernel = stride = np.array([h // oh, w // ow])
        padding = np.array([0, 0])
    elif isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        pair = lambda v: np.array(v if isinstance(v, tuple | list) else (v, v))  # noqa: E731
        if getattr(module, "dilation", 1) not in (1, (1, 1)) or module.ceil_mode:
            raise ExportError(f"layer {node.name!r}: a pool with dilation or ceil_mode has "
                              "no NIR node")
        kernel = pair(module.kernel_size)
        stride = pair(module.stride if module.stride is not None else module.kernel_size)
        padding = pair(module.padding)
    else:
        what = getattr(module, "function", type(module)).__name__  # a bound pool function
        raise ExportError(f"layer {node.name!r}: {what} has no NIR node")
    return emit(node.name, nir.AvgPool2d(kernel, stride, padding), inputs)


def _neuron(node: fx.Node, module: SpikingNeuron, shape: tuple[int, ...], inputs: list[str],
            emit: Any, refuse: Any, nir: Any, dt: float) -> list[str]:
    if module.rule != "binary":
        refuse(node, f"{module.rule} spikes")
    if module.initial != "zero":
        refuse(node, "an initial potential v(0) = θ/2")
    theta = _neuron_arrays(module, shape)
    zeros = np.zeros(shape, np.float32)
    metadata = {"reset": module.reset, "initial": module.initial, "rule": module.rule,
                "leak": module.leak,
                "note": "spikeforge: reset 'subtract' means v -= v_threshold at a spike"}
    if module.leak == 1.0:
        neuron = nir.IF(r=np.ones(shape, np.float32), v_threshold=theta, v_reset=zeros,
                        metadata=metadata)
    else:
        tau = np.full(shape, dt / (1 - module.leak), np.float32)
        neuron = nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=theta, v_reset=zeros,
                         metadata=metadata)
    out = emit(node.name, neuron, inputs)
    if module.emit == "value":  # the next layer receives θ·s
        out = emit(f"{node.name}_theta", nir.Scale(theta), out)
    return out


class _Scale(nn.Module):
    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class _Neuron(nn.Module):
    """A neuron read from NIR, called like the converter's (input, timesteps)."""

    def __init__(self, neuron: SpikingNeuron) -> None:
        super().__init__()
        self.neuron = neuron

    def forward(self, x: Tensor, timesteps: int) -> Tensor:
        return self.neuron(x, timesteps)


def _per_channel(values: np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(values, np.float32))
    if t.ndim == 0 or bool((t == t.flatten()[0]).all()):
        return t.flatten()[0].clone() if t.ndim else t
    per_channel = t.reshape(t.shape[0], -1)
    if not bool((per_channel == per_channel[:, :1]).all()):
        raise ExportError(f"NIR node {name!r}: thresholds vary within a channel; spikeforge "
                          "neurons take one threshold per layer or per channel")
    return per_channel[:, 0].clone()


def from_nir(graph: Any, timesteps: int | None = None) -> SpikingNetwork:
    """A :class:`~spikeforge.simulate.SpikingNetwork` from a NIR graph (:func:`read_nir`):
    IF / LIF neurons (with spikeforge's metadata when present: reset, v(0), θ·s), Conv2d,
    Affine / Linear, AvgPool2d / SumPool2d, Flatten, Scale; several inputs to a node are
    summed. ``timesteps`` defaults to the graph's recorded T (else 32)."""
    nir = _nir()
    fxg = fx.Graph()
    root = nn.Module()
    x = fxg.placeholder("x")
    steps = fxg.placeholder("timesteps")
    values: dict[str, fx.Node] = {}
    incoming: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        incoming[dst].append(src)
    for name in _topological(graph.nodes, graph.edges):
        node = graph.nodes[name]
        safe = "n_" + "".join(c if c.isalnum() else "_" for c in name)
        ins = [values[s] for s in incoming[name]]
        total = ins[0] if ins else None
        for extra in ins[1:]:
            total = fxg.call_function(operator.add, (total, extra))
        if isinstance(node, nir.Input):
            values[name] = x
            continue
        if isinstance(node, nir.Output):
            fxg.output(total)
            continue
        module: nn.Module
        if isinstance(node, nir.Conv2d):
            weight = torch.as_tensor(np.asarray(node.weight, np.float32))
            module = nn.Conv2d(weight.shape[1] * node.groups, weight.shape[0],
                               tuple(weight.shape[-2:]), stride=tuple(np.atleast_1d(node.stride)),
                               padding=node.padding if isinstance(node.padding, str)
                               else tuple(np.atleast_1d(node.padding)),
                               dilation=tuple(np.atleast_1d(node.dilation)), groups=node.groups)
            module.weight.data.copy_(weight)
            module.bias.data.copy_(torch.as_tensor(np.asarray(node.bias, np.float32)))
        elif isinstance(node, nir.Affine | nir.Linear):
            weight = torch.as_tensor(np.asarray(node.weight, np.float32))
            module = nn.Linear(weight.shape[1], weight.shape[0],
                               bias=isinstance(node, nir.Affine))
            module.weight.data.copy_(weight)
            if isinstance(node, nir.Affine):
                module.bias.data.copy_(torch.as_tensor(np.asarray(node.bias, np.float32)))
        elif isinstance(node, nir.AvgPool2d | nir.SumPool2d):
            kernel = tuple(int(k) for k in np.atleast_1d(node.kernel_size))
            module = nn.AvgPool2d(kernel, tuple(int(s) for s in np.atleast_1d(node.stride)),
                                  tuple(int(p) for p in np.atleast_1d(node.padding)))
            if isinstance(node, nir.SumPool2d):
                module = nn.Sequential(module, _Scale(torch.tensor(float(np.prod(kernel)))))
        elif isinstance(node, nir.Flatten):
            start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
            end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
            module = nn.Flatten(start, end)
        elif isinstance(node, nir.Scale):
            module = _Scale(torch.as_tensor(np.asarray(node.scale, np.float32)))
        elif isinstance(node, nir.IF | nir.LIF):
            module = _Neuron(_read_neuron(node, name, nir))
            root.add_module(safe, module)
            values[name] = fxg.call_module(safe, (total, steps))
            continue
        else:
            raise ExportError(f"NIR node {name!r} of type {type(node).__name__} is not "
                              "supported by spikeforge's reader")
        root.add_module(safe, module)
        values[name] = fxg.call_module(safe, (total,))
    meta = dict(getattr(graph, "metadata", None) or {})
    gm = fx.GraphModule(root, fxg, "NIRNetwork")
    return SpikingNetwork(gm, int(timesteps or meta.get("timesteps") or 32),
                          str(meta.get("encoder", "direct")),
                          info={"method": "nir", "source": meta.get("producer")}).eval()


def _read_neuron(node: Any, name: str, nir: Any) -> SpikingNeuron:
    meta = dict(node.metadata or {})
    r = np.asarray(node.r, np.float64)
    leak = 1.0
    if isinstance(node, nir.LIF):
        tau = np.asarray(node.tau, np.float64)
        if not np.allclose(node.v_leak, 0):
            raise ExportError(f"NIR node {name!r}: a non-zero v_leak is not supported")
        dt = float(np.unique(tau / r)[0]) if np.allclose(tau / r, (tau / r).flat[0]) else None
        if dt is None or not np.allclose(tau, tau.flat[0]):
            raise ExportError(f"NIR node {name!r}: LIF needs one τ and r = τ/dt per layer")
        leak, r = 1 - dt / float(tau.flat[0]), r * dt / tau
    if not np.allclose(r, 1):
        raise ExportError(f"NIR node {name!r}: input resistance r must be 1 (after dt/τ)")
    if node.v_reset is not None and not np.allclose(node.v_reset, 0):
        raise ExportError(f"NIR node {name!r}: spikeforge resets to 0 or by subtraction, "
                          "not to another v_reset")
    return SpikingNeuron(_per_channel(node.v_threshold, name), rule="binary",
                         reset=meta.get("reset", "zero"), leak=float(meta.get("leak", leak)),
                         initial=meta.get("initial", "zero"), emit="count")  # θ·s: a Scale


def _topological(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> list[str]:
    indegree = {n: 0 for n in nodes}
    for _, dst in edges:
        indegree[dst] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for src, dst in edges:
            if src == name:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    if len(order) != len(nodes):
        raise ExportError("the NIR graph has a cycle (recurrent connections are not "
                          "supported by spikeforge's reader)")
    return order
