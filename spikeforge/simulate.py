"""Time-folded simulation of a converted network.

A converted network is the ANN's FX graph with every activation replaced by a
:class:`~spikeforge.neurons.SpikingNeuron` and an extra ``timesteps`` input. The encoded input
``(T, B, ...)`` is folded to ``(T·B, ...)``: every stateless layer (conv, linear, pooling,
flatten, residual add) runs **once** on all steps at the same time — one large batched call
instead of T small ones — and only the neurons unfold the time axis to scan over it. With
direct input (the same image at every step) the layers that see only the image run once on
``(B, ...)`` and their result is repeated over time (:func:`constant_input_graph`). The
graph runs channels-last on CPUs and GPUs (oneDNN's and cuDNN's fast layout), in float32,
with ``precision="bf16"`` with bfloat16 synaptic layers and float32 membranes, or with
``precision="int8"`` with the weights of 8-bit neuromorphic hardware
(:func:`quantize_weights_`), whose spike-fed layers run on integer kernels
(:mod:`spikeforge.int8`). ``precision="auto"`` is bf16 where the device has native
bfloat16, else float32 (:func:`resolve_precision`). In float32 on a CPU, convolutions are
summed over their nonzero inputs where few are nonzero
(:class:`~spikeforge.nn.spike_conv.SpikeConv2d`).

Max pooling, by policy (``max_pool=`` in :func:`spikeforge.convert`):

* ``"cumulative"`` (default): :class:`~spikeforge.neurons.SpikingMaxPool`, whose cumulative
  output is exactly the max-pool of its cumulative inputs (the rate-coded max).
* ``"error"``: conversion fails with a message recommending average pooling.

Memory and speed: a call splits the batch into chunks so that the activations of one chunk, T
steps at once, stay within ``memory_budget`` bytes (estimated from the layer sizes of one
sample). On a CPU the chunks are also kept near the size of the caches (``working_set``): one
huge time-folded call streams every intermediate through main memory, and cache-sized calls
ran a CIFAR VGG faster with the same result (``benchmarks/README.md``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import torch
from torch import Tensor, fx, nn

from spikeforge.encoding import ENCODERS, encode
from spikeforge.int8 import emit_spike_codes, use_int8_kernels
from spikeforge.models.spiking import replace_layers
from spikeforge.neurons import SpikingMaxPool, SpikingNeuron
from spikeforge.nn.spike_conv import SpikeConv2d
from spikeforge.registry import Registry
from spikeforge.runtime import exact_float32, native_bf16

#: precision name → dtype the synaptic layers compute in ("int8": the weights rounded to 8
#: bits, :func:`quantize_weights_`, with float32 results, see :mod:`spikeforge.int8`;
#: "auto": one of the others, chosen per device by :func:`resolve_precision`)
PRECISIONS: Registry[torch.dtype | None] = Registry("precision", {
    "float32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32, "auto": None})
#: precision name → bits of the weights, where they are quantized
WEIGHT_BITS: dict[str, int] = {"int8": 8}

__all__ = ["PRECISIONS", "SpikingMaxPool", "SpikingNetwork",
           "activation_bytes", "constant_input_graph", "quantize_weights_", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> tuple[str, str]:
    """The precision a network on ``device`` runs in, and why.

    ``"auto"`` is ``"bf16"`` where the device has native bfloat16 (a GPU that supports it; a
    CPU with AVX512-BF16 or AMX, :func:`spikeforge.runtime.native_bf16`), else
    ``"float32"``, the exact simulation — on a CPU its spike-fed convolutions are summed
    over their nonzero inputs (:class:`~spikeforge.nn.spike_conv.SpikeConv2d`), at SNN
    firing rates about as fast as int8's integer kernels (``benchmarks/compare.py``)
    without rounding the weights. bf16 moves the accuracy by up to about one point at any t
    (``benchmarks/precision.py``). Any other name is returned as asked; asking for
    ``"bf16"`` on a device that emulates it warns (``UserWarning``).

    Raises:
        ValueError: an unknown precision.
    """
    PRECISIONS.lookup(precision)
    device = torch.device(device)
    native = precision in ("auto", "bf16") and native_bf16(device)
    if device.type == "cpu":
        hardware = "AVX512-BF16/AMX" if native else "no AVX512-BF16/AMX: bf16 is emulated"
    else:
        hardware = "bf16 in hardware" if native else "no native bf16"
    auto = "bf16" if native else "float32"
    if precision == "auto":
        return auto, f"auto on {device.type} ({hardware}): {auto}"
    if precision == "bf16" and not native:
        warnings.warn(f"precision='bf16' on a {device.type} without native bfloat16 "
                      f"({hardware}): it runs several times slower than float32; "
                      f"precision='auto' chooses {auto} here", UserWarning, stacklevel=3)
        return precision, f"requested ({device.type}: {hardware})"
    return precision, "requested"


def quantize_weights_(module: nn.Module, bits: int = 8) -> dict[str, float]:
    """Round the weight of every convolution and linear layer in ``module``, in place, to a
    signed ``bits``-bit integer times one scale per output channel c (symmetric per-channel
    quantization, the weight format of 8-bit neuromorphic cores):

        s_c = max|W_c| / (2^(bits−1) − 1),      W_c ← s_c · round(W_c / s_c)

    Biases, thresholds and membranes keep their precision (on-chip they are wider than the
    weights, e.g. 24-bit membranes). Spikes times integer weights sum exactly in float32 up to
    2^24, so simulating in float32 with these weights is what the integer hardware computes.

    Returns:
        The largest |ΔW| / max|W| of each layer, by name (at most 1/(2(2^(bits−1) − 1))).
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    levels = 2 ** (bits - 1) - 1
    error = {}
    with torch.no_grad():
        for name, layer in module.named_modules():
            if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                continue
            w = layer.weight
            peak = w.abs().flatten(1).amax(1).view(-1, *[1] * (w.ndim - 1))
            scale = torch.where(peak > 0, peak / levels, torch.ones_like(peak))
            quantized = (w / scale).round_().clamp_(-levels, levels).mul_(scale)
            error[name] = float((quantized - w).abs().max() / w.abs().max().clamp_min(1e-30))
            w.copy_(quantized)
    return error


class _FunctionPool(nn.Module):
    """A pooling function with its arguments bound, as a module."""

    def __init__(self, function: Any, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.function, self.args, self.kwargs = function, args, kwargs

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x, *self.args, **self.kwargs)


def activation_bytes(gm: fx.GraphModule, *args: Any) -> int:
    """Bytes of all intermediate tensors of ``gm(*args)`` — for one sample and one step,
    the memory a sample costs per time step in the time-folded simulation (an upper
    bound)."""
    total = 0

    class Probe(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            return self.fetch_attr(target).forward(*args, **kwargs)  # no hooks: a probe

        def run_node(self, n: fx.Node) -> Any:
            nonlocal total
            out = super().run_node(n)
            if isinstance(out, Tensor):
                total += out.numel() * out.element_size()
            return out

    with torch.no_grad():
        Probe(gm).run(*args)
    return total


def repeat_over_time(x: Tensor, timesteps: int) -> Tensor:
    """``x (B, ...)``, the same at every step, as the time-folded ``(T·B, ...)`` (keeping its
    memory format)."""
    return torch.cat([x] * timesteps)


def _holds(gm: fx.GraphModule, user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` is a spiking neuron taking ``node`` as its input current only, so
    that it can hold it for all steps."""
    return (user.op == "call_module" and isinstance(gm.get_submodule(str(user.target)),
                                                    SpikingNeuron)
            and user.args[:1] == (node,) and node not in user.args[1:]
            and node not in user.kwargs.values())


def constant_input_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """The graph for an input that is the same at every step (direct encoding), called as
    ``graph(x (B, ...), T)``: the layers that see only that input (the first convolution,
    its batch norm, ...) run once on B rows instead of T·B, and their result is held for
    the T steps by the first neuron (its ``constant`` input, read once per step) or
    repeated over time for any other layer that needs it. Exact: a stateless layer acts on
    each step alone, so T equal steps give T equal results. Shares ``gm``'s modules."""
    graph = copy.deepcopy(gm.graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    x, timesteps = placeholders[0], placeholders[-1]
    constant = {x}
    for node in graph.nodes:  # modules that never see the time axis, fed only by constants
        if (node.op == "call_module" and timesteps not in node.all_input_nodes
                and node.all_input_nodes and set(node.all_input_nodes) <= constant):
            constant.add(node)
    for node in [n for n in graph.nodes if n in constant]:
        users = [u for u in node.users if u not in constant]
        for user in [u for u in users if _holds(gm, u, node)]:
            user.kwargs = {**user.kwargs, "constant": True}
            users.remove(user)
        if users:  # (after the last placeholder, which T is, when the input itself is used)
            with graph.inserting_after(timesteps if node.op == "placeholder" else node):
                repeated = graph.call_function(repeat_over_time, (node, timesteps))
            for user in users:
                user.replace_input_with(node, repeated)
    graph.lint()
    return fx.GraphModule(gm, graph)


class SpikingNetwork(nn.Module):
    """A converted spiking network: ``snn(x, timesteps=T) -> (T, B, classes)``.

    The readout (the last layer) does not spike: entry t of the output is its input current
    at step t, and class scores after t steps are the sum of the first t entries (the
    accumulated readout of Rueckauer et al. 2017). State is reset at the start of every
    call, so the same input gives the same output; Poisson input is drawn from a generator
    seeded with ``seed`` (or the one passed).

    Args:
        graph: the rewritten graph, called as ``graph(x_folded, timesteps)``.
        timesteps: default number of steps.
        encoder: ``"direct"`` or ``"poisson"`` (:mod:`spikeforge.encoding`).
        seed: seed of the Poisson encoder.
        memory_budget: bytes of activations one chunk of the batch may take (all T steps).
        working_set: on a CPU, the activation bytes one chunk aims at (at least one sample):
            calls near the cache size are faster than one large call.
        precision: ``"float32"``; ``"bf16"``: the synaptic layers (and the currents and
            θ·s they pass on) in bfloat16 — spikes stay exact, θ and the weights are rounded
            to 8 significant bits — while every neuron integrates its membrane in float32
            and the readout is summed over time in float32. Fast where the hardware has
            bf16 matrix units (recent GPUs, AVX-512-BF16/AMX CPUs); slower elsewhere.
            ``"int8"``: a model of 8-bit neuromorphic hardware, weights rounded to 8-bit
            integers per output channel (:func:`quantize_weights_`), everything else as in
            float32 (the layers' weights are changed in place: pass a graph you own); on a
            CPU the layers fed by spikes compute on 8-bit integers (:mod:`spikeforge.int8`,
            the same numbers up to float rounding of the output scale), and the binary
            neurons that feed only them write uint8 spike codes.
            ``"auto"``: ``"bf16"`` where the device computes it in hardware, else
            ``"float32"`` (:func:`resolve_precision`). ``info`` records ``precision`` (as
            run), ``precision_requested``, ``precision_reason`` and, for int8, each synaptic
            layer's kernel or why it stays float32 (``int8_kernels``) and the neurons that
            write uint8 codes (``spike_codes``).
        integer_kernels: with ``precision="int8"``, run the spike-fed layers on integer
            kernels where they apply (False: the float32 computation of the same model).
        bytes_per_sample_step: activation bytes of one sample at one step (0: measured on
            the first call).
        info: what the converter did (method, options, thresholds), for reports.
    """

    def __init__(self, graph: fx.GraphModule, timesteps: int = 32, encoder: str = "direct",
                 seed: int = 0, memory_budget: int = 2 << 30, bytes_per_sample_step: int = 0,
                 info: dict[str, Any] | None = None, working_set: int = 96 << 20,
                 precision: str = "float32", integer_kernels: bool = True) -> None:
        super().__init__()
        ENCODERS.lookup(encoder)
        requested = precision
        device = next((p.device for p in graph.parameters()), torch.device("cpu"))
        precision, reason = resolve_precision(precision, device)
        self.precision, self.dtype = precision, PRECISIONS[precision]
        rounding = (quantize_weights_(graph, WEIGHT_BITS[precision])
                    if precision in WEIGHT_BITS else {})
        kernels = (use_int8_kernels(graph) if precision == "int8" and integer_kernels
                   else None)
        codes = emit_spike_codes(graph) if kernels is not None else []
        if self.dtype == torch.float32:  # convolutions summed over their nonzero inputs
            replace_layers(graph, nn.Conv2d, SpikeConv2d.from_conv)
        else:
            graph = graph.to(self.dtype)
            for module in graph.modules():
                if isinstance(module, SpikingNeuron):
                    module.float()  # thresholds stay float32, like the membranes
        # oneDNN convolutions are markedly faster on channels-last tensors (1.3x for a CIFAR
        # VGG on this project's CPU); the results are identical
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in graph.modules())
        if self.channels_last:  # `view` needs contiguous strides; `reshape` is the same op
            for node in graph.graph.nodes:
                if node.op == "call_method" and node.target == "view":
                    node.target = "reshape"
            graph.recompile()
            graph = graph.to(memory_format=torch.channels_last)
        self.graph = graph
        # not a submodule (its modules are the graph's): kept out of state_dict
        object.__setattr__(self, "constant_graph", constant_input_graph(graph))
        self.timesteps, self.encoder, self.seed = _check_timesteps(timesteps), encoder, seed
        self.memory_budget, self.bytes_per_sample_step = memory_budget, bytes_per_sample_step
        self.working_set = working_set
        self.info = dict(info or {})
        self.info.update(precision=precision, precision_requested=requested,
                         precision_reason=reason)
        if kernels is not None:
            self.info.update(int8_kernels=kernels, spike_codes=codes)
        if rounding:  # the largest |ΔW| / max|W| of any layer
            self.info.update(weight_bits=WEIGHT_BITS[precision],
                             weight_rounding=max(rounding.values()))

    def layers(self, kinds: type | tuple[type, ...]) -> dict[str, nn.Module]:
        """The graph's modules of type ``kinds`` by name, in execution order."""
        return {n.target: self.graph.get_submodule(n.target) for n in self.graph.graph.nodes
                if n.op == "call_module"
                and isinstance(self.graph.get_submodule(n.target), kinds)}

    def neurons(self) -> dict[str, SpikingNeuron]:
        """The spiking layers by name, in execution order."""
        return self.layers(SpikingNeuron)

    def chunk_size(self, timesteps: int, device: torch.device | str = "cpu") -> int:
        """Samples per chunk that keep T steps of activations within the memory budget (and,
        on a CPU, near the working-set size)."""
        if self.bytes_per_sample_step <= 0:
            return 1 << 30
        per_sample = self.bytes_per_sample_step * timesteps
        if per_sample > self.memory_budget:
            raise MemoryError(
                f"one sample needs {per_sample / 2**20:.1f} MiB of activations for "
                f"{timesteps} steps ({self.bytes_per_sample_step / 2**20:.2f} MiB per step), "
                f"more than memory_budget = {self.memory_budget / 2**20:.1f} MiB; lower T or "
                "raise memory_budget")
        fit = self.memory_budget // per_sample
        if torch.device(device).type == "cpu":
            fit = min(fit, max(1, self.working_set // per_sample))
        return fit

    def forward(self, x: Tensor, timesteps: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Run ``timesteps`` steps on the static input ``x (B, ...)``; returns ``(T, B, C)``.

        Raises:
            ValueError: non-finite input or a bad number of steps.
        """
        steps = self.timesteps if timesteps is None else _check_timesteps(timesteps)
        if self.encoder == "direct":  # the same input at every step
            return self._run(x, steps, constant=True)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return self.simulate(encode(self.encoder, x, steps, generator))

    def simulate(self, sequence: Tensor) -> Tensor:
        """Run the network on an encoded input sequence ``(T, B, ...)``; returns
        ``(T, B, C)``. The batch is processed in chunks that fit the memory budget."""
        return self._run(sequence, sequence.shape[0], constant=False)

    def _run(self, inputs: Tensor, steps: int, constant: bool) -> Tensor:
        """``inputs`` is ``(T, B, ...)``, or ``(B, ...)`` held for ``steps`` steps when
        ``constant`` (:func:`constant_input_graph`)."""
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError("the SNN input contains NaN or Inf values")
        batch_dim = 0 if constant else 1
        if self.bytes_per_sample_step <= 0:
            sample = inputs[:1] if constant else inputs[0, :1]
            self.bytes_per_sample_step = activation_bytes(self.graph, self._cast(sample), 1)
        graph = self.constant_graph if constant else self.graph
        exact = exact_float32() if self.dtype != torch.bfloat16 else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            outs = []
            for chunk in inputs.split(self.chunk_size(steps, inputs.device), dim=batch_dim):
                rows = self._cast(chunk if constant else chunk.flatten(0, 1))
                if self.channels_last and rows.ndim == 4:
                    rows = rows.contiguous(memory_format=torch.channels_last)
                out = graph(rows, steps)
                out = out.to(torch.promote_types(out.dtype, torch.float32))  # summed in >= fp32
                outs.append(out.unflatten(0, (steps, chunk.shape[batch_dim])))
        return torch.cat(outs, dim=1)

    def _cast(self, x: Tensor) -> Tensor:
        """The input in the synaptic layers' dtype in bf16 mode (else as given: a float64
        network takes float64 input)."""
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def extra_repr(self) -> str:
        method = self.info.get("method", "?")
        return (f"method={method}, timesteps={self.timesteps}, encoder={self.encoder}, "
                f"neurons={len(self.neurons())}"
                + (f", precision={self.precision}" if self.precision != "float32" else ""))


def _check_timesteps(timesteps: int) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    return timesteps


def max_pool_module(node: fx.Node, gm: fx.GraphModule) -> nn.Module:
    """The ANN max-pool at ``node`` as a module (binding a functional call's arguments)."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        raise ValueError(f"max pool {node.name!r} has arguments computed at run time")
    return _FunctionPool(node.target, tuple(node.args[1:]), dict(node.kwargs))

