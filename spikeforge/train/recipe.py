"""Parts of the fast-training recipe (airbench: Jordan 2024, arXiv 2404.00498; hlb-CIFAR10;
Page 2018) that any model can use: patch-whitening and identity initialisation, an
exponential moving average of the weights, and test-time flip averaging.

Each is a small pure function or class; :mod:`spikeforge.train.loop` switches them on from the
config (``model.init``, ``optim.ema``, ``data.test_flip``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Lookahead", "WeightAverage", "dirac_init", "first_conv", "flip_averaged",
           "patch_whitening", "whiten_first_conv"]


def patch_whitening(images: Tensor, kernel: int, eps: float = 5e-4) -> Tensor:
    """Whitening filters for the k×k patches of ``images`` (N, C, H, W).

    With Σ = E[(p − p̄)(p − p̄)ᵀ] the covariance of the flattened patches p (d = C·k² values)
    and Σ = V diag(λ) Vᵀ, the filters are the rows of diag(λ + ε)^(−1/2) Vᵀ, followed by their
    negatives: a convolution with these 2d filters maps each patch to decorrelated unit-variance
    coordinates, and the negated copies keep both signs through a ReLU-like activation.

    Returns:
        Weight of shape (2d, C, k, k), float32, ordered by decreasing eigenvalue.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    c = images.shape[1]
    patches = F.unfold(images.double(), kernel).transpose(1, 2).reshape(-1, c * kernel ** 2)
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).flip(0)
    filters = filters.reshape(-1, c, kernel, kernel)
    return torch.cat([filters, -filters]).float()


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first ``nn.Conv2d`` in module order (the one that sees the image)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no Conv2d to whiten")


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: Tensor, eps: float = 5e-4) -> None:
    """Set the first convolution's weight to :func:`patch_whitening` of ``images`` (already
    normalised as the model sees them) and freeze it (``requires_grad = False``); its bias,
    if any, is zeroed and stays trainable. The conv must have stride 1 and
    2·C·k² output channels for C input channels and a k×k kernel."""
    conv = first_conv(model)
    k = conv.kernel_size[0]
    expected = 2 * conv.in_channels * k * k
    if conv.kernel_size != (k, k) or conv.out_channels != expected or conv.groups != 1:
        raise ValueError(
            f"cannot whiten {conv}: patch whitening needs a square kernel and 2·C·k² = "
            f"{expected} output channels")
    weight = patch_whitening(images.to(conv.weight.device), k, eps)
    conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.weight.requires_grad_(False)
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def dirac_init(model: nn.Module, skip: nn.Module | None = None) -> int:
    """Identity initialisation of convolutions (as in airbench): for every ``nn.Conv2d`` with
    an odd square kernel, stride 1, ``out ≥ in`` channels and no groups (except ``skip``),
    the first ``in`` filters become the identity (Dirac delta at the centre, weight 1 on their
    own input channel), so that at initialisation each such conv passes its input through on
    those channels; the other filters keep their initialisation. Returns how many convs
    changed."""
    changed = 0
    for module in model.modules():
        if not isinstance(module, nn.Conv2d) or module is skip:
            continue
        k = module.kernel_size
        if (k[0] != k[1] or k[0] % 2 == 0 or module.stride != (1, 1) or module.groups != 1
                or module.out_channels < module.in_channels):
            continue
        nn.init.dirac_(module.weight[:module.in_channels])
        changed += 1
    return changed


class WeightAverage:
    """An exponential moving average of a model's parameters and buffers (Polyak averaging):
    after each optimizer step, θ̄ ← d·θ̄ + (1 − d)·θ with d = min(decay, (1 + n)/(10 + n)) at
    update n, so the average forgets its start quickly. Integer buffers (BN's step counter)
    are copied; a module's extra state (a spiking layer's settings) is not averaged.
    :attr:`model` is the averaged copy, to evaluate and save.

    Args:
        model: the trained network (not modified).
        decay: d's limit, e.g. 0.999 for an average over about the last thousand steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        source = dict(_tensors(model))
        for name, target in _tensors(self.model):
            if target.is_floating_point():
                target.lerp_(source[name].detach(), 1.0 - d)
            else:
                target.copy_(source[name])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class Lookahead:
    """Lookahead (Zhang et al. 2019) as airbench uses it: slow weights θ̄ that every ``every``
    optimizer steps, from step ``start`` on, move towards the model's weights θ and pull them
    back, θ̄ ← d·θ̄ + (1 − d)·θ, θ ← θ̄, with a decay that grows over the run,
    d = decay^every · (n / total)^power at step n (averaging little early and strongly at the
    end); :meth:`sync` (after every epoch) sets θ ← θ̄ again, so the model that is evaluated
    and saved is the slow one. Parameters and floating-point buffers (BN statistics) take
    part.

    Args:
        total: the run's optimizer steps.
        every: steps between updates. Default 5.
        decay: per-step decay base. Default 0.95.
        power: exponent of the ramp. Default 3.
        start: the first step that may update (the slow weights are taken at the first
            update; earlier steps train θ alone). Default 0.
    """

    def __init__(self, total: int, every: int = 5, decay: float = 0.95, power: float = 3.0,
                 start: int = 0) -> None:
        if every < 1 or total < 1 or not 0.0 < decay <= 1.0:
            raise ValueError(f"Lookahead needs every >= 1, total >= 1 and decay in (0, 1], "
                             f"got every={every}, total={total}, decay={decay}")
        self.total, self.every, self.decay, self.power, self.start = (
            total, every, decay, power, start)
        self.steps = 0
        self.slow: dict[str, Tensor] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        if self.steps < self.start or self.steps % self.every:
            return
        current = _floating(model)
        if self.slow is None:
            self.slow = {name: value.detach().clone() for name, value in current.items()}
            return
        d = self.decay ** self.every * (self.steps / self.total) ** self.power
        for name, slow in self.slow.items():
            slow.lerp_(current[name], 1.0 - d)
            current[name].copy_(slow)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """θ ← θ̄ (nothing before the first update)."""
        if self.slow is not None:
            current = _floating(model)
            for name, slow in self.slow.items():
                current[name].copy_(slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.slow = int(state["steps"]), state["slow"]


def _floating(model: nn.Module) -> dict[str, Tensor]:
    return {name: value for name, value in _tensors(model) if value.is_floating_point()}


def _tensors(model: nn.Module):
    """``model``'s parameters and buffers by name: what a weight average averages."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def flip_averaged(model: nn.Module, x: Tensor) -> Tensor:
    """Test-time augmentation: the mean of ``model``'s outputs on ``x`` (B, C, H, W) and on
    its left-right mirror image. The output keeps ``model``'s shape: (B, classes) for an ANN,
    (T, B, classes) for a converted SNN, so both see the same two views."""
    return 0.5 * (model(x) + model(x.flip(-1)))
