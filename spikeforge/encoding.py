"""Input encoders: a static batch ``x (B, ...)`` → a time-first sequence ``(T, B, ...)``.

* ``direct`` (default for conversion; Rueckauer et al. 2017): the analog input is the input
  current at every step, ``x(t) = x``. The first layer then does real multiply-accumulates
  every step (counted as MACs by :mod:`spikeforge.metrics`).
* ``poisson`` (ours, after Diehl et al. 2015): at each step every input element spikes
  independently with probability ``|x| / s`` and carries the value ``sign(x)·s``, where
  ``s = max |x|`` over the sample — so ``E[x(t)] = x`` exactly, also for normalised (signed,
  > 1) images, and the first layer only accumulates.
* ``poisson_lee`` (Lee et al., Front. Neurosci. 2020): every element spikes with probability
  ``min(|x|, 1)`` and carries the unit value ``sign(x)``, so ``E[x(t)] = x`` for ``|x| ≤ 1``
  (pixel intensities in [0, 1]: ``data.normalize: false``) and inputs beyond 1 saturate. The
  authors' published scripts draw with probability ``|x|/2`` (MNIST on [0, 1] pixels, CIFAR-10
  normalised): ``gain=0.5`` of :func:`poisson_lee`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spikeforge.registry import Registry

__all__ = ["ENCODERS", "Encoder", "direct", "encode", "poisson", "poisson_lee"]

#: ``encoder(x, timesteps, generator) -> (T, B, ...)``
Encoder = Callable[[Tensor, int, "torch.Generator | None"], Tensor]


def direct(x: Tensor, timesteps: int, generator: torch.Generator | None = None) -> Tensor:
    """``x`` repeated as the input current of every step: ``(T, B, ...)`` (a broadcast view,
    no copy)."""
    return x.unsqueeze(0).expand(timesteps, *x.shape)


def poisson(x: Tensor, timesteps: int, generator: torch.Generator | None = None) -> Tensor:
    """Signed Bernoulli spikes whose mean is ``x``: value ``sign(x)·s`` with probability
    ``|x|/s`` at each step, ``s = max|x|`` per sample. Reproducible with ``generator``."""
    scale = x.detach().abs().flatten(1).amax(dim=1).clamp(min=torch.finfo(x.dtype).tiny)
    scale = scale.view(-1, *([1] * (x.ndim - 1)))
    rate = x.abs() / scale
    noise = torch.rand((timesteps, *x.shape), generator=generator, device=x.device,
                       dtype=x.dtype)
    return (noise < rate).to(x.dtype) * torch.sign(x) * scale


def poisson_lee(x: Tensor, timesteps: int, generator: torch.Generator | None = None,
                gain: float = 1.0) -> Tensor:
    """Signed unit spikes (Lee et al. 2020): ``sign(x)`` with probability
    ``min(gain·|x|, 1)`` at each step, else 0. Reproducible with ``generator``."""
    rate = (x.detach().abs() * gain).clamp_(max=1)
    noise = torch.rand((timesteps, *x.shape), generator=generator, device=x.device,
                       dtype=x.dtype)
    return (noise < rate).to(x.dtype) * torch.sign(x)


#: encoder name → function
ENCODERS: Registry[Encoder] = Registry("encoder", {"direct": direct, "poisson": poisson,
                                                   "poisson_lee": poisson_lee})


def encode(name: str, x: Tensor, timesteps: int, generator: torch.Generator | None = None
           ) -> Tensor:
    """Encode ``x`` with the encoder called ``name``."""
    return ENCODERS.lookup(name)(x, timesteps, generator)
