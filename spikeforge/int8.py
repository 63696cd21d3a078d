"""Integer kernels for ``precision="int8"``: spikes times 8-bit weights in 8-bit arithmetic.

In the int8 mode every convolution and linear weight is a signed 8-bit integer q times one
scale per output channel, ``W_c = s_c·q_c`` (:func:`spikeforge.simulate.quantize_weights_`).
A layer fed by spiking neurons receives integer multiples of one unit u: θ·s(t) with s
binary (0, 1), ternary (−1, 0, 1) or augmented (|c| ≤ cap), possibly summed over the window
of an average pool (u = θ/k²), reshaped or max-pooled by :class:`SpikingMaxPool` (whose
outputs are whole spikes of its input). Such a layer computes

    y_c = u·s_c·Σ_i q_ci·n_i + b_c,        n_i = x_i / u  (integers)

with an integer accumulator (oneDNN's ``qconv2d_pointwise`` / ``qlinear_pointwise`` on
uint8 spike codes and the int8 weights, rescaled to float32 once per output). This is the
same number the float32 simulation of the int8 model computes, up to the float rounding of
the final scale — and it is what 8-bit hardware computes.

Signed spikes use the zero-point trick: the code is ``n + z`` with ``z = −min n``, and the
kernel subtracts ``z·Σ_i q_ci`` exactly in int32. Codes stay ≤ :data:`MAX_CODE` (128): CPUs
without VNNI multiply uint8 by int8 in pairs summed in 16 bits (``vpmaddubsw``), which is
exact only while 2·code·127 ≤ 32767. Where the neurons' rule bounds the codes (binary,
ternary, augmented with a cap, times the pool's window) nothing is checked at run time;
otherwise (uncapped augmented spikes, or a cap too wide for one code range) each call
measures the range of its input, and signed spikes whose range is too wide for one code
range but within ±128 run as two kernels, on the positive and on the negative part.

A layer whose input is not a whole number of units of one scalar threshold (the analog
input, per-channel thresholds upstream, a residual sum of two spike trains, an adaptive
pool) keeps the float32 computation of the int8 model; so does a call whose spikes exceed
±128 units, a non-float32 input, autograd, or a device other than the CPU.
:func:`use_int8_kernels` records each layer's choice and the reason.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from spikeforge.neurons import SpikingMaxPool, SpikingNeuron
from spikeforge.runtime import compilable

__all__ = ["MAX_CODE", "Grid", "Int8AvgPool2d", "Int8Conv2d", "Int8Linear", "emit_spike_codes",
           "input_grid", "int8_kernels_available", "int8_weight", "spike_codes",
           "use_int8_kernels"]

#: the largest uint8 spike code fed to the kernels (exact 16-bit pair sums without VNNI)
MAX_CODE = 128
#: weight levels of the int8 model (symmetric: −127..127)
LEVELS = 127


class Grid(NamedTuple):
    """The values a layer's input can take: integer multiples n of ``unit`` with
    ``low ≤ n ≤ high``; ``low = high = None``: integers of unknown range (checked per call)."""

    unit: float
    low: int | None
    high: int | None


def int8_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``weight`` as int8 levels q and one float32 scale per output channel (dim 0) with
    ``weight ≈ scale·q``: s_c = max|W_c| / 127, q = round(W/s_c) — for a weight already
    rounded by :func:`~spikeforge.simulate.quantize_weights_`, its own levels (a zero channel
    gets scale 1 and q = 0)."""
    w = weight.detach().float()
    peak = w.abs().flatten(1).amax(1)
    scale = torch.where(peak > 0, peak / LEVELS, torch.ones_like(peak))
    q = (w / scale.view(-1, *[1] * (w.ndim - 1))).round_().clamp_(-LEVELS, LEVELS)
    return q.to(torch.int8).contiguous(), scale.contiguous()


@compilable
def _codes(x: Tensor, inverse: float, zero_point: int) -> Tensor:
    # n + z rounded half up (n is an integer up to float rounding; n + z >= 0 so the cast's
    # truncation is a floor)
    return torch.add(x.new_tensor(zero_point + 0.5), x, alpha=inverse).to(torch.uint8)


def spike_codes(x: Tensor, unit: float, zero_point: int) -> Tensor:
    """The uint8 codes ``x/unit + zero_point`` of a tensor of integer multiples of ``unit``
    (rounded to the nearest integer), in ``x``'s memory format. The caller guarantees
    ``0 ≤ x/unit + zero_point ≤ 255``."""
    return _codes(x, 1.0 / unit, zero_point)


def _zero_point(low: int, high: int) -> int | None:
    """The zero point that makes codes ``n + z`` of ``low ≤ n ≤ high`` non-negative, or None
    when they would exceed :data:`MAX_CODE`."""
    zero_point = max(0, -low)
    return zero_point if high + zero_point <= MAX_CODE else None


def route(x: Tensor, grid: Grid) -> tuple[str, int] | None:
    """How a layer on ``grid`` computes input ``x``: ``("codes", z)``, one integer kernel on
    the codes ``x/unit + z``; ``("split", 0)``, signed spikes too wide for one code range as
    two kernels, on the positive and on the negated negative part; or None, the float32
    path. uint8 ``x`` are codes already (zero point 0: :func:`emit_spike_codes`). The grid's
    static range decides when it fits; otherwise the range of ``x`` is measured (one
    pass)."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if x.dtype == torch.uint8:
        return "codes", 0
    if x.dtype != torch.float32:
        return None
    if grid.low is not None and grid.high is not None:
        zero_point = _zero_point(grid.low, grid.high)
        if zero_point is not None:
            return "codes", zero_point
    if x.numel() == 0:
        return "codes", 0
    lowest, highest = (float(v) / grid.unit for v in torch.aminmax(x))
    low, high = math.floor(lowest + 0.5), math.floor(highest + 0.5)
    zero_point = _zero_point(low, high)
    if zero_point is not None:
        return "codes", zero_point
    return ("split", 0) if max(-low, high) <= MAX_CODE else None


class _Packed:
    """A cache of oneDNN's prepacked weight, dropped on copy and pickling (the packed tensor
    is opaque) and rebuilt on the next call."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: tuple[Tensor, Tensor, Tensor] | None = None

    def __deepcopy__(self, memo: dict) -> _Packed:
        return _Packed()

    def __reduce__(self) -> tuple:
        return (_Packed, ())


class _Int8Layer:
    """What :class:`Int8Conv2d` and :class:`Int8Linear` share: the input grid, the cached
    packed weight and the count of calls that ran the float32 path."""

    grid: Grid
    weight: Tensor

    def _setup(self, grid: Grid) -> None:
        self.grid = grid
        self.float_calls = 0  # calls that fell back to the float32 computation
        self._packed = _Packed()

    def _weights(self, pack: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(packed weight, scales, zero points), rebuilt when the weight changed."""
        try:
            version = self.weight._version
        except RuntimeError:  # an inference tensor: changed only inside inference mode
            version = None
        key = (self.weight.data_ptr(), version, self.weight.shape)
        if self._packed.key != key:
            q, scale = int8_weight(self.weight)
            self._packed.value = (pack(q, scale), scale,
                                  torch.zeros(len(scale), dtype=torch.int64))
            self._packed.key = key
        return self._packed.value

    @classmethod
    def _adopt(cls, layer: nn.Module, grid: Grid) -> Any:
        """An instance of ``cls`` with ``layer``'s hyper-parameters and its parameter
        tensors (shared, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in layer.__dict__.items()
                             if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._modules = dict(layer._modules)
        new._setup(grid)
        return new

    def _kernel(self, codes: Tensor, zero_point: int, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _run(self, x: Tensor, applies: bool, float_forward: Any) -> Tensor:
        out = self._integer_forward(x) if applies else None
        if out is None:
            self.float_calls += 1
            if x.dtype == torch.uint8:  # codes n: the values n·unit
                x = x.to(self.weight.dtype).mul_(self.grid.unit)
            return float_forward(x)
        return out

    def _integer_forward(self, x: Tensor) -> Tensor | None:
        """The layer on integer kernels, or None where they do not apply to ``x``: float32
        values on the grid, or their uint8 codes n (zero point 0, from neurons writing
        codes, :func:`emit_spike_codes`)."""
        how = route(x, self.grid)
        if how is None:
            return None
        kind, zero_point = how
        unit = self.grid.unit
        bias = None if self.bias is None else self.bias.detach().float()
        if kind == "codes":
            if x.dtype != torch.uint8:  # values on the grid: their codes
                binary = (self.grid.low, self.grid.high) == (0, 1)  # n = [x ≥ u/2], one pass
                x = (torch.ge(x, 0.5 * unit).view(torch.uint8) if binary
                     else spike_codes(x, unit, zero_point))
            return self._kernel(x, zero_point, bias)
        positive = self._kernel(spike_codes(x.clamp(min=0), unit, 0), 0, bias)
        return positive.sub_(self._kernel(spike_codes(x.clamp(max=0).neg_(), unit, 0), 0,
                                          None))

    def _extra(self) -> str:
        return f"unit={self.grid.unit:g}, codes={self.grid.low}..{self.grid.high}"


class Int8Conv2d(_Int8Layer, nn.Conv2d):
    """A :class:`torch.nn.Conv2d` of the int8 model whose input lies on ``grid``: the
    convolution runs on uint8 spike codes and int8 weights with an int32 accumulator
    (oneDNN), ``y = unit·s_c·conv(codes − z, q) + b`` in float32. The weight stays the float
    weight of the model (what statistics, export and the float32 path read); its int8 form
    is derived and packed on the first call. Falls back to ``nn.Conv2d.forward`` (same
    numbers up to float rounding) where the kernel does not apply (see the module
    docstring); ``float_calls`` counts those calls.

    Build it with :meth:`from_conv`, which shares the layer's parameters.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, grid: Grid) -> Int8Conv2d:
        return cls._adopt(conv, grid)

    def _pack(self, q: Tensor, scale: Tensor) -> Tensor:
        return torch.ops.onednn.qconv_prepack(q, scale, self.grid.unit, 0, list(self.stride),
                                              list(self.padding), list(self.dilation),
                                              self.groups, None)

    def _kernel(self, codes: Tensor, zero_point: int, bias: Tensor | None) -> Tensor:
        packed, scale, zeros = self._weights(self._pack)
        return torch.ops.onednn.qconv2d_pointwise(
            codes, self.grid.unit, zero_point, packed, scale, zeros, bias, list(self.stride),
            list(self.padding), list(self.dilation), self.groups, 1.0, 0, torch.float32,
            "none", [], "")

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, x.ndim == 4, super().forward)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8, {self._extra()}"


class Int8Linear(_Int8Layer, nn.Linear):
    """:class:`Int8Conv2d` for a :class:`torch.nn.Linear` on ``(N, features)`` inputs
    (oneDNN's ``qlinear_pointwise``). Build it with :meth:`from_linear`."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: Grid) -> Int8Linear:
        return cls._adopt(linear, grid)

    @staticmethod
    def _pack(q: Tensor, scale: Tensor) -> Tensor:
        return torch.ops.onednn.qlinear_prepack(q, None)

    def _kernel(self, codes: Tensor, zero_point: int, bias: Tensor | None) -> Tensor:
        packed, scale, zeros = self._weights(self._pack)
        return torch.ops.onednn.qlinear_pointwise(
            codes, self.grid.unit, zero_point, packed, scale, zeros, bias, 1.0, 0,
            torch.float32, "none", [], "")

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, x.ndim == 2 and x.is_contiguous(), super().forward)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8, {self._extra()}"


class Int8AvgPool2d(nn.AvgPool2d):
    """An :class:`torch.nn.AvgPool2d` with non-overlapping windows (stride = kernel, no
    padding) that also pools uint8 spike codes: the window sums Σn, which are the codes of
    the average on the grid of unit u/k² (:func:`input_grid`). Float inputs are averaged as
    by ``nn.AvgPool2d``. Build it with :meth:`from_pool`."""

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d) -> Int8AvgPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                   pool.count_include_pad, pool.divisor_override)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            return super().forward(x)
        kh, kw = nn.modules.utils._pair(self.kernel_size)
        h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
        parts = [x[..., i:h:kh, j:w:kw] for i in range(kh) for j in range(kw)]
        out = parts[0].clone() if len(parts) == 1 else torch.add(parts[0], parts[1])
        for part in parts[2:]:
            out.add_(part)
        return out


def _sums_codes(pool: nn.Module) -> bool:
    """Whether ``pool`` is an average pool that :class:`Int8AvgPool2d` computes on codes:
    non-overlapping windows of at most :data:`MAX_CODE` inputs, no padding, a divisor of
    the window's size."""
    if type(pool) not in (nn.AvgPool2d, Int8AvgPool2d):
        return False
    kernel = nn.modules.utils._pair(pool.kernel_size)
    return (nn.modules.utils._pair(pool.stride) == kernel
            and nn.modules.utils._pair(pool.padding) == (0, 0) and not pool.ceil_mode
            and pool.divisor_override in (None, kernel[0] * kernel[1])
            and kernel[0] * kernel[1] <= MAX_CODE)


# --- which layers can run on integers -------------------------------------------------------

_PASS_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
_PASS_FUNCTIONS = (torch.flatten, torch.reshape, F.dropout)
_PASS_METHODS = ("view", "reshape", "flatten", "contiguous")


def _spike_range(neuron: SpikingNeuron) -> tuple[int | None, int | None]:
    """The signed unit-spike counts a neuron can emit in one step (None: unbounded)."""
    if neuron.rule == "binary":
        return 0, 1
    if neuron.rule == "ternary":
        return -1, 1
    if neuron.cap is None:
        return None, None
    return -int(neuron.cap), int(neuron.cap)  # the negative side may retract (gated or not)


def _pool_divisor(pool: nn.AvgPool2d) -> int | str:
    """The constant divisor of an average pool's windows, or why there is none."""
    if pool.divisor_override:
        return int(pool.divisor_override)
    kernel = nn.modules.utils._pair(pool.kernel_size)
    padding = nn.modules.utils._pair(pool.padding)
    if pool.ceil_mode or (any(padding) and not pool.count_include_pad):
        return "an average pool whose edge windows have fewer inputs"
    return kernel[0] * kernel[1]


def input_grid(gm: fx.GraphModule, node: fx.Node) -> Grid | str:
    """The grid of the values ``node`` (a node of a converted graph) produces, found by
    walking back through reshapes, dropout, spiking max pools and average pools to the
    spiking neurons that emit them; or a string saying why they are not on one grid."""
    scale, node_ = 1, node
    while True:
        if node_.op == "placeholder":
            return "analog input"
        if node_.op == "call_module":
            module = gm.get_submodule(node_.target)
            if isinstance(module, SpikingNeuron):
                if module.threshold.numel() != 1:
                    return "per-channel thresholds upstream"
                theta = 1.0 if module.emit == "count" else float(module.threshold)
                low, high = _spike_range(module)
                if low is None or high is None:
                    return Grid(theta / scale, None, None)
                return Grid(theta / scale, low * scale, high * scale)
            if isinstance(module, nn.AvgPool2d):
                divisor = _pool_divisor(module)
                if isinstance(divisor, str):
                    return divisor
                scale *= divisor
            elif not isinstance(module, (*_PASS_MODULES, SpikingMaxPool)):
                return f"input from {type(module).__name__}"
        elif node_.op == "call_function" and node_.target in _PASS_FUNCTIONS:
            pass
        elif node_.op == "call_method" and node_.target in _PASS_METHODS:
            pass
        else:
            return f"input from {node_.op} {getattr(node_.target, '__name__', node_.target)}"
        node_ = node_.args[0]
        if not isinstance(node_, fx.Node):
            return "constant input"


@functools.cache
def int8_kernels_available() -> str | None:
    """None when oneDNN's integer convolution and linear kernels run here; else why not."""
    try:
        q, scale = torch.ones(2, 1, 1, 1, dtype=torch.int8), torch.ones(2)
        zeros = torch.zeros(2, dtype=torch.int64)
        packed = torch.ops.onednn.qconv_prepack(q, scale, 1.0, 0, [1, 1], [0, 0], [1, 1], 1,
                                                None)
        x = torch.full((1, 1, 1, 1), 3, dtype=torch.uint8)
        out = torch.ops.onednn.qconv2d_pointwise(x, 1.0, 1, packed, scale, zeros, None,
                                                 [1, 1], [0, 0], [1, 1], 1, 1.0, 0,
                                                 torch.float32, "none", [], "")
        linear = torch.ops.onednn.qlinear_pointwise(
            x.view(1, 1), 1.0, 1, torch.ops.onednn.qlinear_prepack(q.view(2, 1), None), scale,
            zeros, None, 1.0, 0, torch.float32, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError) as err:
        return f"oneDNN integer kernels unavailable ({type(err).__name__}: {err})"
    if out.flatten().tolist() != [2.0, 2.0] or linear.flatten().tolist() != [2.0, 2.0]:
        return "oneDNN integer kernels gave wrong results in a self-test"
    return None


def use_int8_kernels(gm: fx.GraphModule) -> dict[str, str]:
    """Replace, in place, every ``nn.Conv2d`` and ``nn.Linear`` of the converted graph ``gm``
    whose input lies on a grid (:func:`input_grid`) by :class:`Int8Conv2d` /
    :class:`Int8Linear` sharing its parameters. Call it on the int8 model (weights already
    rounded to 8 bits): the kernels round each weight to 8 bits themselves.

    Returns:
        For every synaptic layer, by name: ``"int8"`` or why it stays float32.
    """
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    unavailable = (int8_kernels_available() if device.type == "cpu"
                   else f"integer kernels run on CPUs; this network is on {device.type}")
    choice = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if type(module) not in (nn.Conv2d, nn.Linear):
            if isinstance(module, (nn.Conv1d, nn.Conv3d)):
                choice[node.target] = f"{type(module).__name__} has no integer kernel here"
            continue
        grid = input_grid(gm, node.args[0]) if isinstance(node.args[0], fx.Node) else "constant"
        reason = grid if isinstance(grid, str) else unavailable
        if reason is None and isinstance(module, nn.Conv2d) and (
                isinstance(module.padding, str) or module.padding_mode != "zeros"):
            reason = f"padding {module.padding!r} ({module.padding_mode})"
        if reason is not None:
            choice[node.target] = reason
            continue
        new = (Int8Conv2d.from_conv(module, grid) if isinstance(module, nn.Conv2d)
               else Int8Linear.from_linear(module, grid))
        parent, _, name = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, new)
        choice[node.target] = "int8"
    return choice


def _only_input(user: fx.Node, node: fx.Node) -> bool:
    return user.args[:1] == (node,) and node not in (*user.args[1:], *user.kwargs.values())


def _reaches_only_kernels(gm: fx.GraphModule, node: fx.Node, pools: set[str]) -> bool:
    """Whether every use of ``node``'s output, through reshapes, dropout, spiking max pools
    and code-summing average pools (whose targets are added to ``pools``), is the input of
    an integer kernel."""
    if not node.users:
        return False
    for user in node.users:
        if not _only_input(user, node):
            return False
        if user.op == "call_module":
            module = gm.get_submodule(user.target)
            if isinstance(module, (Int8Conv2d, Int8Linear)):
                continue
            if _sums_codes(module):
                pools.add(user.target)
            elif not isinstance(module, (*_PASS_MODULES, SpikingMaxPool)):
                return False
        elif not ((user.op == "call_function" and user.target in _PASS_FUNCTIONS)
                  or (user.op == "call_method" and user.target in _PASS_METHODS)):
            return False
        if not _reaches_only_kernels(gm, user, pools):
            return False
    return True


def emit_spike_codes(gm: fx.GraphModule) -> list[str]:
    """After :func:`use_int8_kernels`: let every binary neuron of ``gm`` whose spikes reach
    only integer kernels (directly, or through reshapes, spiking max pools and average pools
    of non-overlapping windows) write them as uint8 codes (``codes``), one byte per spike
    that the kernels read as they are, instead of four bytes of θ·s converted by each
    kernel; those average pools become :class:`Int8AvgPool2d`, which sums codes. The
    numbers are unchanged: the codes are what the kernels computed from θ·s.

    Returns:
        The names of the neurons that write codes, in graph order.
    """
    uses: dict[str, list[bool]] = {}
    pools: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, SpikingNeuron):
            reached: set[str] = set()
            ok = module.rule == "binary" and _reaches_only_kernels(gm, node, reached)
            uses.setdefault(node.target, []).append(ok)
            if ok:
                pools |= reached
    codes = [name for name, ok in uses.items() if all(ok)]
    for name in codes:
        gm.get_submodule(name).codes = True
    for name in pools:
        parent, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr,
                Int8AvgPool2d.from_pool(gm.get_submodule(name)))
    return codes
