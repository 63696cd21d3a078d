"""Calibration: the activation scale λ of every ReLU-like layer, streamed over the data.

Threshold balancing (Diehl et al., IJCNN 2015; Rueckauer et al., Front. Neurosci. 2017) sets a
layer's threshold to λ_l, the p-th percentile (p = 99.9 by default; 100 is the maximum) of the
layer's *positive* activations over calibration data, layer-wise or per output channel.

The percentile is computed from a histogram whose range grows by doubling (when a batch
exceeds it, adjacent bin pairs are merged — exactly, because the edges stay aligned), so the
memory is ``channels × bins`` whatever the size of the calibration set, and one pass suffices.
The reported value is the upper edge of the bin holding the percentile, never above the exact
maximum (tracked separately): relative error ≤ 2/bins of the range (0.05% with the default
4096 bins), on the safe side (a slightly higher threshold).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from spikeforge.convert.graph import ConversionError, activation_nodes, describe

__all__ = ["Observer", "StreamingPercentile", "calibrate", "calibration_inputs"]


class StreamingPercentile:
    """Running percentile of the positive entries of a stream of tensors, per channel or
    for the whole tensor, in constant memory.

    Args:
        channels: number of channels (axis 1 of each update), or ``None`` for one value over
            all entries.
        bins: histogram bins per channel.

    Example:
        >>> sp = StreamingPercentile()
        >>> sp.update(torch.arange(1001.0))
        >>> round(float(sp.percentile(50.0)), 1), float(sp.percentile(100.0))
        (501.0, 1000.0)
    """

    def __init__(self, channels: int | None = None, bins: int = 4096) -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.channels, self.bins = channels, bins
        rows = channels or 1
        self.hist = torch.zeros(rows, bins, dtype=torch.float64)
        self.upper = torch.zeros(rows, dtype=torch.float64)  # histogram range, a power of two
        self.max = torch.zeros(rows, dtype=torch.float64)
        self.seen = 0  # entries seen, positive or not

    def _rows(self, x: Tensor) -> Tensor:
        x = x.detach().to(torch.float64)
        if self.channels is None:
            return x.reshape(1, -1)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels on axis 1, got shape "
                             f"{tuple(x.shape)}")
        return x.transpose(0, 1).reshape(self.channels, -1)

    def update(self, x: Tensor) -> None:
        """Add the positive entries of ``x`` to the histogram."""
        rows = self._rows(x).cpu()
        self.seen += rows.numel()
        positive = rows > 0
        rows = torch.where(positive, rows, torch.zeros_like(rows))
        batch_max = rows.amax(dim=1)
        self.max = torch.maximum(self.max, batch_max)
        self._grow(batch_max)
        width = self.upper / self.bins
        safe = torch.where(width > 0, width, torch.ones_like(width))
        index = torch.clamp(torch.ceil(rows / safe[:, None]) - 1, 0, self.bins - 1).long()
        index = index + torch.arange(rows.shape[0])[:, None] * self.bins
        counts = torch.bincount(index[positive], minlength=self.hist.numel())
        self.hist += counts.view_as(self.hist).to(self.hist.dtype)

    def _grow(self, needed: Tensor) -> None:
        """Double the range of rows whose maximum no longer fits, merging bin pairs."""
        fresh = (self.upper == 0) & (needed > 0)
        if fresh.any():
            self.upper[fresh] = torch.exp2(torch.ceil(torch.log2(needed[fresh])))
        grow = torch.zeros_like(self.upper, dtype=torch.long)
        over = (needed > self.upper) & (self.upper > 0)
        if over.any():
            grow[over] = torch.ceil(torch.log2(needed[over] / self.upper[over])).long()
        for k in torch.unique(grow[grow > 0]).tolist():
            rows = grow == k
            factor = 2 ** min(k, int(math.log2(self.bins)))
            merged = self.hist[rows].view(-1, self.bins // factor, factor).sum(-1)
            self.hist[rows] = torch.cat([merged, torch.zeros(merged.shape[0],
                                        self.bins - merged.shape[1], dtype=merged.dtype)], 1)
            self.upper[rows] *= 2.0 ** k

    @property
    def positive_counts(self) -> Tensor:
        """How many positive entries each row has seen."""
        return self.hist.sum(dim=1)

    def percentile(self, p: float) -> Tensor:
        """The p-th percentile (0 < p ≤ 100) of the positive entries, one per row
        (``NaN`` for a row that never saw a positive entry). A scalar when layer-wise."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        total = self.positive_counts
        if p == 100:
            value = self.max.clone()
        else:
            cumulative = self.hist.cumsum(dim=1)
            target = (p / 100.0 * total)[:, None]
            index = (cumulative < target).sum(dim=1).clamp(max=self.bins - 1)
            value = torch.minimum((index + 1) * self.upper / self.bins, self.max)
        value[total == 0] = float("nan")
        value = value.float()
        return value[0] if self.channels is None else value


class Observer(nn.Module):
    """Wraps an activation during calibration: computes it unchanged and records its output
    layer-wise and, with ``channelwise``, per channel (axis 1)."""

    def __init__(self, activation: Callable[[Tensor], Tensor], channelwise: bool = False,
                 bins: int = 4096) -> None:
        super().__init__()
        self.activation, self.channelwise, self.bins = activation, channelwise, bins
        self.layer = StreamingPercentile(None, bins)
        self.channel: StreamingPercentile | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(x)
        self.layer.update(out)
        if self.channelwise:
            if self.channel is None:
                self.channel = StreamingPercentile(out.shape[1] if out.ndim > 1 else 1,
                                                   self.bins)
            self.channel.update(out if out.ndim > 1 else out[:, None])
        return out


def _activation_callable(node: fx.Node, gm: fx.GraphModule) -> Callable[[Tensor], Tensor]:
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if node.op == "call_method":
        return lambda x: getattr(x, node.target)()
    return lambda x: node.target(x)


def calibration_inputs(calibration: Iterable[Any]) -> Iterable[Tensor]:
    """Inputs from an iterable of tensors or of ``(input, label, ...)`` tuples."""
    for item in calibration:
        yield item[0] if isinstance(item, list | tuple) else item


@torch.no_grad()
def calibrate(gm: fx.GraphModule, calibration: Iterable[Any], percentile: float = 99.9,
              channelwise: bool = False, bins: int = 4096, max_batches: int | None = None,
              modules: tuple[type[nn.Module], ...] = (), progress: bool = False,
              device: torch.device | None = None) -> dict[str, Tensor]:
    """λ for every activation node of the prepared graph ``gm``: node name → scalar tensor
    (layer-wise) or one value per channel.

    Args:
        gm: a prepared ANN graph (:func:`spikeforge.convert.graph.conversion_graph`); not modified.
        calibration: iterable of input batches or ``(input, label)`` batches.
        percentile: p in (0, 100]; 100 takes the maximum.
        channelwise: one λ per output channel (axis 1) instead of one per layer. A channel
            that never activates gets its layer's λ (it will rarely fire either way).
        bins: histogram resolution (see :class:`StreamingPercentile`).
        max_batches: stop after this many batches.
        modules: extra activation module types.

    Raises:
        ConversionError: no calibration data, non-finite inputs, or a layer that never
            produced a positive activation (its threshold would be zero).
    """
    if not 0 < percentile <= 100:
        raise ConversionError(f"percentile must be in (0, 100], got {percentile}")
    device = device or next((p.device for p in gm.parameters()), torch.device("cpu"))
    nodes = activation_nodes(gm, modules)
    observed = copy.deepcopy(gm)
    observers = _insert_observers(observed, nodes, channelwise, bins)
    batches = 0
    iterator = calibration_inputs(calibration)
    if max_batches is not None:
        iterator = (x for _, x in zip(range(max_batches), iterator, strict=False))
    for x in tqdm(iterator, desc="calibrate", unit="batch", disable=not progress,
                  leave=False, total=max_batches):
        x = torch.as_tensor(x).to(device)
        if not bool(torch.isfinite(x).all()):
            raise ConversionError(f"calibration batch {batches} contains NaN or Inf values")
        observed(x)
        batches += 1
    if batches == 0:
        raise ConversionError("the calibration data is empty: pass an iterable of input "
                              "batches (or (input, label) batches) from the training set")
    thresholds = {}
    for node in nodes:
        observer = observers[node.name]
        layer = observer.layer.percentile(percentile)
        if not bool(torch.isfinite(layer)) or float(layer) <= 0:
            raise ConversionError(
                f"activation {describe(node, gm)} produced no positive value on "
                f"{batches} calibration batches, so its threshold would be zero; check the "
                "calibration data (normalised like the training data?) and the weights")
        if channelwise:
            per_channel = observer.channel.percentile(percentile)
            thresholds[node.name] = torch.where(torch.isfinite(per_channel) & (per_channel > 0),
                                                per_channel, layer)
        else:
            thresholds[node.name] = layer
    return thresholds


def _insert_observers(observed: fx.GraphModule, nodes: list[fx.Node], channelwise: bool,
                      bins: int) -> dict[str, Observer]:
    """Route every activation of ``observed`` (a copy of the graph ``nodes`` belong to)
    through an :class:`Observer`; return them by activation node name."""
    by_name = {n.name: n for n in observed.graph.nodes}
    observers = {}
    for i, node in enumerate(nodes):
        target = by_name[node.name]
        observer = Observer(_activation_callable(target, observed), channelwise, bins)
        observed.add_submodule(f"observer_{i}", observer)
        with observed.graph.inserting_after(target):
            new = observed.graph.call_module(f"observer_{i}", (target.args[0],))
        target.replace_all_uses_with(new)
        observed.graph.erase_node(target)
        observers[node.name] = observer
    observed.recompile()
    return observers
