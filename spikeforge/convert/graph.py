"""The FX side of conversion: trace any ``nn.Module``, check that every operation has a spiking
meaning, fold batch norm, drop dropout, and find the activations to replace by neurons.

What converts, and why (the SNN runs every stateless layer once on the time-folded
``(T·B, ...)`` tensor, so an operation is allowed when it acts on each time step separately
and linearly, or is an activation):

* synaptic layers: ``Conv1d/2d``, ``Linear`` (with or without bias; the bias is a constant
  current every step);
* linear, per-step layers: ``BatchNorm`` (folded into the preceding conv/linear when it is
  that layer's only user, otherwise kept as a per-channel affine map), ``AvgPool``,
  ``AdaptiveAvgPool``, ``Flatten``/``flatten``/``view``/``reshape``, residual ``+``,
  ``torch.cat``, ``mean`` over non-batch dimensions, multiplication by a constant;
* removed: ``Dropout`` (identity at inference), ``Identity``;
* activations, replaced by spiking neurons: ``nn.ReLU``, ``torch.relu``, ``F.relu``,
  ``Tensor.relu``, :class:`~spikeforge.nn.ClippedReLU` (and any module type passed in
  ``activations``);
* max pooling: by policy, see :mod:`spikeforge.simulate`.

Anything else raises :class:`ConversionError` naming the FX node and the source line it came
from — nothing is left silently unconverted.
"""

from __future__ import annotations

import copy
import functools
import operator
import re
import traceback
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

from spikeforge.neurons.modules import SpikingMaxPool, TimeDropout

__all__ = ["ACTIVATION_FUNCTIONS", "ACTIVATION_MODULES", "ConversionError", "activation_nodes",
           "check_supported", "conversion_graph", "describe", "fold_batch_norm",
           "fold_scaling", "remove_identities", "trace"]


class ConversionError(ValueError):
    """The model cannot be converted as asked; the message names the node or setting."""


#: module types replaced by spiking neurons (extend per call with ``activations=``)
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU,)
#: functions / tensor methods replaced by spiking neurons
ACTIVATION_FUNCTIONS: tuple[object, ...] = (torch.relu, F.relu)
ACTIVATION_METHODS = ("relu",)

SYNAPTIC_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
MAX_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
                     TimeDropout)
_IDENTITY_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)
_LINEAR_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten)
_LINEAR_FUNCTIONS = (operator.add, torch.add, operator.neg, torch.flatten, torch.cat,
                     F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                     getattr)
_SHAPE_METHODS = ("view", "reshape", "flatten", "contiguous", "size", "unsqueeze", "squeeze")


@functools.cache
def _spikeforge_leaf_types() -> tuple[type[nn.Module], ...]:
    """spikeforge's ANN layers (``spikeforge.nn``) stay whole in the trace so that the
    converter sees a ClippedReLU (or QCFS) and not the clamp it is made of; so do the
    layers that see time, and the average pool and convolution of a directly trained SNN
    (an ``nn.AvgPool2d`` and an ``nn.Conv2d`` to the converter)."""
    from spikeforge.nn.pooling import TiledAvgPool2d
    from spikeforge.nn.spike_conv import SpikeConv2d

    return (*_spikeforge_activation_types(), TimeDropout, SpikingMaxPool, TiledAvgPool2d,
            SpikeConv2d)


@functools.cache
def _spikeforge_activation_types() -> tuple[type[nn.Module], ...]:
    """spikeforge's activations: the ANN layers of ``spikeforge.nn`` and the neurons of a
    directly trained SNN."""
    import spikeforge.nn as sfnn
    from spikeforge.neurons.modules import SpikingNeuron

    return (*(obj for obj in vars(sfnn).values()
              if isinstance(obj, type) and issubclass(obj, nn.Module)), SpikingNeuron)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaves = leaves
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: Iterable[type[nn.Module]] = ()) -> fx.GraphModule:
    """Symbolically trace a copy of ``model`` (in eval mode), keeping spikeforge layers and
    ``leaves`` as single nodes."""
    model = copy.deepcopy(model).eval()
    tracer = _Tracer((*_spikeforge_leaf_types(), *leaves))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; all mean the same to a user
        user = [f for f in traceback.extract_tb(exc.__traceback__)
                if not f.filename.startswith(_TORCH_DIR)]
        where = f" at {user[-1].filename}:{user[-1].lineno} in {user[-1].name}" if user else ""
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}{where}: {exc}. The converter "
            "needs a forward without data-dependent Python control flow or in-place "
            "assignment into tensors") from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


_TORCH_DIR = str(Path(torch.__file__).parent)


def source_line(node: fx.Node) -> str | None:
    """``file:line in function`` of the user code that created ``node``, if known (a layer
    called from a torch container such as ``nn.Sequential`` has no user frame)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', node.stack_trace or "")
    user = [f for f in frames if "/torch/" not in f[0]]
    if not user:
        return None
    file, line, func = user[-1]
    return f"{file}:{line} in {func}"


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """A human description of ``node``: what it calls and where it comes from."""
    if node.op == "call_module":
        what = f"module {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    elif node.op == "call_function":
        what = f"function {getattr(node.target, '__name__', node.target)}"
    else:
        what = f"{node.op} {node.target!r}"
    source = source_line(node)
    return f"node {node.name!r} = {what}" + (f" at {source}" if source else "")


def is_activation(node: fx.Node, gm: fx.GraphModule,
                  modules: tuple[type[nn.Module], ...] = ()) -> bool:
    """Whether ``node`` is a ReLU-like activation that becomes a spiking neuron."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target),
                          (*ACTIVATION_MODULES, *_spikeforge_activation_types(), *modules))
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def is_max_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), MAX_POOL_MODULES)
    return node.op == "call_function" and node.target in MAX_POOL_FUNCTIONS


def activation_nodes(gm: fx.GraphModule, modules: tuple[type[nn.Module], ...] = ()
                     ) -> list[fx.Node]:
    """The activation nodes of ``gm`` in execution order."""
    return [n for n in gm.graph.nodes if is_activation(n, gm, modules)]


def _is_linear_step(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` acts on every time step separately and (affinely) linearly."""
    if node.op in ("placeholder", "output", "get_attr"):
        return True
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target),
                          (*SYNAPTIC_MODULES, *_LINEAR_MODULES, *_IDENTITY_MODULES))
    if node.op == "call_function":
        if node.target in (*_LINEAR_FUNCTIONS, *_IDENTITY_FUNCTIONS):
            return True
        if node.target is operator.getitem:  # shape arithmetic only: x.size()[1], x.shape[0]
            src = node.args[0]
            return isinstance(src, fx.Node) and (src.target in ("size", getattr))
        if node.target in (operator.mul, torch.mul, operator.truediv):
            # scaling by a constant is linear; a product of two signals is not
            return sum(isinstance(a, fx.Node) for a in node.args) == 1
        return node.target is torch.mean and _mean_keeps_batch(node)
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS or (node.target == "mean"
                                                 and _mean_keeps_batch(node))
    return False


def _mean_keeps_batch(node: fx.Node) -> bool:
    """``x.mean(dims)`` is linear per step unless it averages over dimension 0 (time x batch)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return False
    dims = dims if isinstance(dims, list | tuple) else (dims,)
    return all(isinstance(d, int) and d != 0 for d in dims)


def check_supported(gm: fx.GraphModule, modules: tuple[type[nn.Module], ...] = (),
                    max_pool: str = "cumulative") -> None:
    """Raise :class:`ConversionError` for the first node that has no spiking equivalent."""
    for node in gm.graph.nodes:
        if is_activation(node, gm, modules) or _is_linear_step(node, gm):
            continue
        if is_max_pool(node, gm):
            if max_pool == "error":
                raise ConversionError(
                    f"max pooling at {describe(node, gm)}: with max_pool='error' it is not "
                    "converted. Use average pooling (pool='avg' in the model zoo), or "
                    "max_pool='cumulative' for a spiking max-pool whose cumulative output is "
                    "the max of its cumulative inputs")
            continue
        raise ConversionError(
            f"unsupported operation {describe(node, gm)}: it has no spiking equivalent. "
            "Supported: Conv/Linear, BatchNorm, ReLU (module, torch.relu, F.relu), "
            "ClippedReLU, AvgPool, MaxPool, Flatten/view/reshape, Dropout, residual add, cat")
    if not activation_nodes(gm, modules):
        raise ConversionError(
            f"{gm.__class__.__name__} has no ReLU-like activation (nn.ReLU, F.relu, "
            "torch.relu, ClippedReLU, QCFS): there is nothing to turn into spiking neurons")


def remove_identities(gm: fx.GraphModule) -> None:
    """Drop dropout and identity nodes (they do nothing at inference)."""
    for node in list(gm.graph.nodes):
        is_identity = (
            (node.op == "call_module"
             and isinstance(gm.get_submodule(node.target), _IDENTITY_MODULES))
            or (node.op == "call_function" and node.target in _IDENTITY_FUNCTIONS))
        if is_identity:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    r"""A copy of ``layer`` (conv or linear) with the eval-mode ``bn`` after it folded in:

    .. math::
        W' = W \cdot \gamma / \sqrt{\sigma^2 + \epsilon}, \qquad
        b' = (b - \mu) \gamma / \sqrt{\sigma^2 + \epsilon} + \beta
    """
    folded = copy.deepcopy(layer)
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = scale / torch.sqrt(bn.running_var + bn.eps)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.mul_(scale.view(-1, *([1] * (layer.weight.ndim - 1))))
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return folded


def _sole_layer(gm: fx.GraphModule, src: object) -> nn.Module | None:
    """The conv/linear that node ``src`` calls, when its output has no other user."""
    if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
            and isinstance(gm.get_submodule(src.target), SYNAPTIC_MODULES)):
        return gm.get_submodule(src.target)
    return None


def _fold_into(gm: fx.GraphModule, node: fx.Node, src: fx.Node, folded: nn.Module) -> None:
    """Replace the layer ``src`` calls by ``folded`` and drop ``node``, now inside it."""
    gm.add_submodule(src.target, folded)
    node.replace_all_uses_with(src)
    gm.graph.erase_node(node)


def fold_batch_norm(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm whose input is a conv/linear used only by it; return how many."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) or bn.running_var is None:
            continue
        layer = _sole_layer(gm, node.args[0])
        if layer is None or layer.weight.shape[0] != bn.num_features:
            continue
        _fold_into(gm, node, node.args[0], _fold(layer, bn))
        folded += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def fold_scaling(gm: fx.GraphModule) -> int:
    """Fold every multiplication (or division) by a constant c whose input is a conv/linear
    used only by it into that layer, W' = c·W, b' = c·b; return how many."""
    folded = 0
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and len(node.args) == 2
                and node.target in (operator.mul, torch.mul, operator.truediv)):
            continue
        src, factor = node.args
        if node.target is not operator.truediv and not isinstance(src, fx.Node):
            src, factor = factor, src
        layer = _sole_layer(gm, src) if isinstance(factor, int | float) else None
        if layer is None:
            continue
        scale = 1.0 / factor if node.target is operator.truediv else float(factor)
        layer = copy.deepcopy(layer)
        with torch.no_grad():
            layer.weight.mul_(scale)
            if layer.bias is not None:
                layer.bias.mul_(scale)
        _fold_into(gm, node, src, layer)
        folded += 1
    gm.recompile()
    return folded


def conversion_graph(model: nn.Module, activations: Iterable[type[nn.Module]] = (),
                     max_pool: str = "cumulative") -> fx.GraphModule:
    """Trace ``model``, check it, drop dropout, fold batch norm and constant output scales
    into the layers before them: the ANN graph that is calibrated and then turned into an
    SNN. Computes the same function as ``model.eval()``."""
    modules = tuple(activations)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConversionError(f"layer {name.rsplit('.', 1)[0]!r} has non-finite values in "
                                  f"{name!r} (NaN or inf): the model cannot be converted")
    gm = trace(model, modules)
    check_supported(gm, modules, max_pool)
    remove_identities(gm)
    fold_batch_norm(gm)
    fold_scaling(gm)
    return gm
