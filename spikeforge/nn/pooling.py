"""Average pooling over non-overlapping windows with a backward that keeps nothing.

For windows that tile the input (``kernel_size == stride``, no padding), each input
element lies in exactly one window, so

    y = avg_pool(x),      ∂L/∂x[h, w] = ∂L/∂y[h // k, w // k] / k²

(and 0 for the rows and columns a floor-mode pooling leaves out). ATen's backward keeps x
for its shape and, on a CPU, runs several times slower when the incoming gradient is laid
out differently from x (an NCHW gradient from a flatten into a channels-last network);
this one spreads ∂L/∂y / k² over the windows in x's memory format, bit for bit ATen's
numbers, and keeps only the shape. In a time-folded SNN the pooled tensors are spikes of
T·B rows, so this is part of every BPTT step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeforge.neurons.modules import mark_sparse

__all__ = ["TiledAvgPool2d"]


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(nn.modules.utils._pair(value))


class _TiledAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int]) -> Tensor:
        ctx.kernel, ctx.shape = kernel, x.shape
        ctx.channels_last = (not x.is_contiguous()
                             and x.is_contiguous(memory_format=torch.channels_last))
        return F.avg_pool2d(x, kernel)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (kh, kw), (n, c, height, width) = ctx.kernel, ctx.shape
        grad = grad / (kh * kw)  # ATen divides by the window's size
        h, w = grad.shape[-2:]
        if ctx.channels_last:  # spread in (N, H, W, C) order: one pass, channels-last
            rows = grad.permute(0, 2, 3, 1)[:, :, None, :, None, :]
            spread = rows.expand(n, h, kh, w, kw, c).reshape(n, h * kh, w * kw, c)
            spread = spread.permute(0, 3, 1, 2)
        else:
            spread = grad[:, :, :, None, :, None].expand(n, c, h, kh, w, kw).reshape(
                n, c, h * kh, w * kw)
        if (h * kh, w * kw) != (height, width):  # floor mode left the last rows/columns out
            spread = F.pad(spread, (0, width - w * kw, 0, height - h * kh))
            if ctx.channels_last:
                spread = spread.contiguous(memory_format=torch.channels_last)
        return spread, None


class TiledAvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` whose backward, for windows that tile the input
    (``kernel_size == stride``, no padding, floor mode, no ``divisor_override``), is the
    spread of the module docstring: the same gradient, without keeping the input, in its
    memory format. Other settings, and calls without gradient, run ``nn.AvgPool2d``."""

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d) -> nn.AvgPool2d:
        """``pool`` as a :class:`TiledAvgPool2d` where its windows tile, else ``pool``."""
        tiles = (_pair(pool.kernel_size) == _pair(pool.stride) and _pair(pool.padding) == (0, 0)
                 and not pool.ceil_mode and pool.divisor_override is None)
        if not tiles or isinstance(pool, cls):
            return pool
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                   pool.count_include_pad, pool.divisor_override)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        y = _TiledAvgPool.apply(x, _pair(self.kernel_size))
        # the pool of a spiking layer's output is zero where no input of its window fired
        return mark_sparse(y) if getattr(x, "_spikeforge_sparse", False) else y
