"""A convolution computed from its nonzero inputs: for spike input, most of them.

A convolution y = W ⋆ x and its weight gradient,

    y[n, o, h, w] = b[o] + Σ_{c, i, j} x[n, c, h·s − p_h + i, w·s − p_w + j] · W[o, c, i, j],
    ∂L/∂W[o, c, i, j] = Σ_n Σ_{h, w} x[n, c, h, w] · ∂L/∂y[n, o, h + p_h − i, w + p_w − j],

have one term per input value; when x is a spiking layer's output (0/1 spikes, or θ·s) most
are zero (an SNN fires a few to 20% of its neurons per step), and dense kernels compute them
all. :class:`SpikeConv2d` computes both sums from the nonzero inputs only
(``conv_kernels.cpp``, built like the LIF kernels by
:func:`spikeforge.neurons.native.build_kernels`) where at most a fraction
:func:`dense_above` of them are nonzero: without autograd, the forward of a channels-last
float32 input; under autograd, for an input tagged as spikes
(:func:`~spikeforge.neurons.modules.mark_sparse`), the weight gradient (the forward and
∂L/∂x stay ATen's, so that a training step fires the spikes of the dense one).
The results equal the dense kernels' to float rounding (the sums run in another order). In a
time-folded SNN the inputs are the spikes of T·B rows, so this is most of the work of a
converted network's simulation and part of every BPTT step.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeforge.neurons.native import build_kernels

__all__ = ["DENSE_ABOVE", "SpikeConv2d", "dense_above"]

_SOURCE = Path(__file__).with_name("conv_kernels.cpp")

#: torch's vector ISA (``torch.backends.cpu.get_cpu_capability()``) → the fraction of
#: nonzero inputs above which the dense kernels run instead (``"default"``: any other ISA).
#: On random spikes a 64-channel 3×3 layer's weight gradient breaks even near 22% on an
#: AVX-512 CPU and above 40% with AVX2, its forward near 26% and 37%
#: (``benchmarks/sparse_weight_grad.py --sweep``); the spikes of a trained network are
#: clustered, and on AVX-512 its 64-channel layer at 24% ran faster sparse
#: (``benchmarks/sparse_weight_grad.py`` on a checkpoint). SNNs fire a few to 20% of their
#: neurons per step.
DENSE_ABOVE: dict[str, float] = {"AVX512": 0.25, "AVX2": 0.4, "default": 0.25}


def dense_above() -> float:
    """The entry of :data:`DENSE_ABOVE` for the ISA torch runs at."""
    return DENSE_ABOVE.get(torch.backends.cpu.get_cpu_capability(), DENSE_ABOVE["default"])


def _kernels():
    """``conv_kernels.cpp`` built (fused multiply-adds allowed: its sums are not the dense
    convolution's to the last bit anyway), or None."""
    return build_kernels(_SOURCE, fused_multiply_add=True)


def _sparse_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None,
                   padding: tuple[int, int]) -> Tensor:
    """``F.conv2d(x, weight, bias, 1, padding)`` summed over the nonzero values of the
    channels-last float32 ``x`` (no autograd), channels-last."""
    out_channels, kh, kw = weight.shape[0], *weight.shape[2:]
    padded = -(-out_channels // 16) * 16  # the kernel's weight rows: whole vectors
    rows = weight.new_zeros(kh, kw, weight.shape[1], padded)
    rows[..., :out_channels] = weight.detach().permute(2, 3, 1, 0)
    shift = weight.new_zeros(padded)
    if bias is not None:
        shift[:out_channels] = bias.detach()
    return _kernels().sparse_input_conv2d(x, rows, shift, out_channels, 1, 1, *padding)


def _few_nonzero(x: Tensor) -> bool:
    """Whether the sparse kernels pay off on ``x``: at most :func:`dense_above` nonzero."""
    return _nonzero_fraction(x) <= dense_above()


class _SpikeInputConv(torch.autograd.Function):
    """``F.conv2d`` with stride 1, no dilation, one group; its weight gradient from the
    nonzero inputs where few are nonzero. The forward stays ATen's: a training step fires
    the dense step's spikes. ``x`` is saved as the layer would save it (0/1 spikes as one
    byte each under :func:`~spikeforge.neurons.modules.compact_saved_spikes`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,
                padding: tuple[int, int]) -> Tensor:
        ctx.padding = padding
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        sparse = need_w and _few_nonzero(x)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
            [need_x, need_w and not sparse, False])
        # the bias gradient as a sum (ATen's backward runs its whole weight gradient for it)
        grad_b = grad.sum((0, 2, 3)) if need_b else None
        if sparse:
            channels_last = torch.channels_last
            grad_w = _kernels().sparse_input_grad_weight(
                x.contiguous(memory_format=channels_last),
                grad.contiguous(memory_format=channels_last), *weight.shape[2:], *ctx.padding)
            grad_w = torch.empty_like(weight).copy_(grad_w)  # in the weight's layout
        return grad_x, grad_w, grad_b, None


def _nonzero_fraction(x: Tensor) -> float:
    """The fraction of nonzero values in ``x``, counted on at most 16 of its rows (images at
    one step) spread over it: enough to choose a kernel, at a small part of a full count's
    time."""
    sample = x[:: max(1, x.shape[0] // 16)]
    return int(torch.count_nonzero(sample)) / max(1, sample.numel())


class SpikeConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` summed over its nonzero inputs where at most
    :func:`dense_above` of them are nonzero (see the module docstring): its forward without
    autograd, for a channels-last input, and its weight gradient, for an input tagged as a
    spiking layer's output (:func:`~spikeforge.neurons.modules.mark_sparse`); float32 on a
    CPU, stride 1, no dilation, one group, zero padding given as numbers, and outside
    autocast. Otherwise, and where the kernels cannot be built, it is ``nn.Conv2d``.
    ``sparse_forward = False`` or ``sparse_weight_grad = False`` (on the class or on one
    layer) keeps ATen's kernel, to measure what the sparse one gains. The forward lays the
    weight out for its kernel on every call: a cached copy would miss in-place edits through
    ``weight.data``, which bump no version counter."""

    sparse_forward = True
    sparse_weight_grad = True

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> nn.Conv2d:
        """``conv`` as a :class:`SpikeConv2d` with the same parameters (no new ones are drawn,
        so the random state is untouched), where its settings allow the sparse weight
        gradient; else ``conv`` itself."""
        fits = (type(conv) is nn.Conv2d and conv.stride == (1, 1) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str))
        if not fits:
            return conv
        spike_conv = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                         padding=conv.padding, bias=conv.bias is not None, device="meta")
        spike_conv.weight, spike_conv.bias = conv.weight, conv.bias
        return spike_conv.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:
        if not (x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"
                and x.ndim == 4 and not torch.is_autocast_enabled("cpu")
                and _kernels() is not None):
            return super().forward(x)
        graph = torch.is_grad_enabled() and (x.requires_grad or any(
            p is not None and p.requires_grad for p in (self.weight, self.bias)))
        if not graph:
            if (self.sparse_forward and x.is_contiguous(memory_format=torch.channels_last)
                    and _few_nonzero(x)):
                return _sparse_conv2d(x, self.weight, self.bias, self.padding)
            return super().forward(x)
        if (self.sparse_weight_grad and getattr(x, "_spikeforge_sparse", False)
                and self.weight.requires_grad):
            return _SpikeInputConv.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)
