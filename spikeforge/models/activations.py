"""The activation factory: one place that turns an activation spec into a module.

Every model in the zoo asks this factory for each of its activations, passing the number of
channels (or features) the activation sees. Built-in activations ignore it; per-channel ones
(CS-QCFS: one threshold per output channel) need it. Each call returns a new module, so every
layer owns its activation (and later its own threshold).

New activations plug in by name::

    register_activation("qcfs", lambda channels, levels=8, threshold=8.0: QCFS(levels, threshold))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from spikeforge.neurons import LIF
from spikeforge.nn import CSQCFS, QCFS, ClippedReLU
from spikeforge.registry import Registry

__all__ = ["ACTIVATIONS", "ActivationBuilder", "ActivationSpec", "activation_name",
           "make_activation", "register_activation"]

#: ``builder(channels, **options) -> nn.Module``
ActivationBuilder = Callable[..., nn.Module]
#: a registered name or a builder called as ``spec(channels, **options)``
ActivationSpec = str | ActivationBuilder


def _relu(channels: int) -> nn.Module:
    return nn.ReLU()


def _clipped_relu(channels: int, clip: float = 1.0) -> nn.Module:
    return ClippedReLU(clip)


def _qcfs(channels: int, levels: int = 8, threshold: float = 8.0) -> nn.Module:
    return QCFS(levels, threshold)


def _csqcfs(channels: int, levels: int = 8, threshold: float = 8.0) -> nn.Module:
    return CSQCFS(channels, levels, threshold)


def _lif(channels: int, threshold: float = 1.0, leak: float = 1.0, reset: str = "zero",
         surrogate: str = "atan", width: float | None = None,
         detach_reset: bool = False) -> nn.Module:
    return LIF(threshold, leak, reset, surrogate, width, detach_reset)


#: name -> builder(channels, **options). Extend with :func:`register_activation`.
ACTIVATIONS: Registry[ActivationBuilder] = Registry("activation", {
    "relu": _relu,
    "clipped_relu": _clipped_relu,
    "qcfs": _qcfs,
    "csqcfs": _csqcfs,
    "lif": _lif,  # spiking: for direct training inside a SpikingModel (time-folded input)
})


def register_activation(name: str, builder: ActivationBuilder) -> ActivationBuilder:
    """Make ``builder`` available as ``make_activation(name, channels, **options)``.

    Args:
        name: the spec string users pass (``activation="name"``).
        builder: ``builder(channels: int, **options) -> nn.Module``; must return a new,
            out-of-place module on every call.

    Returns:
        ``builder`` unchanged, so this also works as ``register_activation("x", fn)`` inline.

    Raises:
        ValueError: ``name`` is already registered to a different builder.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"activation name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"activation builder for {name!r} must be callable, got {builder!r}")
    return ACTIVATIONS.register(name)(builder)


def activation_name(spec: ActivationSpec) -> str:
    """A plain string naming ``spec``, for model specs and checkpoints.

    A string is returned as is; a callable registered in :data:`ACTIVATIONS` gives its
    registered name (so the model can be rebuilt); any other callable gives its qualified
    name ``module.qualname`` (informative only: it cannot be rebuilt from a checkpoint).
    """
    if isinstance(spec, str):
        return spec
    for name, builder in ACTIVATIONS.items():
        if builder is spec:
            return name
    module = getattr(spec, "__module__", None)
    qualname = getattr(spec, "__qualname__", None) or type(spec).__qualname__
    return f"{module}.{qualname}" if module else qualname


def make_activation(spec: ActivationSpec, channels: int, **options: Any) -> nn.Module:
    """Build one activation module.

    Args:
        spec: a registered name (``"relu"``, ``"clipped_relu"``, ... see
            :data:`ACTIVATIONS`) or a callable called as ``spec(channels, **options)``.
            A module class that takes no channel count (``nn.SiLU``) must be wrapped:
            ``lambda channels: nn.SiLU()``.
        channels: number of channels (conv) or features (linear) of the tensor activated.
        **options: activation hyper-parameters, e.g. ``clip`` for ``"clipped_relu"``.

    Returns:
        A new ``nn.Module``.

    Raises:
        ValueError: unknown name (the message lists the known ones), or the builder returned
            an in-place module (models must not modify tensors in place).
        TypeError: an option the activation does not accept, or a builder that does not
            return an ``nn.Module``.

    Example:
        >>> make_activation("clipped_relu", 64, clip=2.0)
        ClippedReLU(clip=2.0)
    """
    if isinstance(spec, str):
        builder = ACTIVATIONS.lookup(spec)
        label = repr(spec)
    elif callable(spec):
        builder, label = spec, activation_name(spec)
    else:
        raise TypeError(f"activation must be a name or a callable, got {spec!r}")
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # some builtins have no signature: just call
        signature = None
    if signature is not None:
        try:
            signature.bind(channels, **options)
        except TypeError as exc:
            raise TypeError(f"activation {label} cannot be built with channels={channels} and "
                            f"options {options}: {exc}") from None
    module = builder(channels, **options)
    if not isinstance(module, nn.Module):
        raise TypeError(f"activation {label} returned {type(module).__name__}, not an nn.Module")
    if getattr(module, "inplace", False):
        raise ValueError(f"activation {label} built an in-place module ({module!r}); spikeforge "
                         "models need out-of-place activations (did a module class receive "
                         "the channel count as `inplace`? wrap it: lambda channels: nn.ReLU())")
    return module
