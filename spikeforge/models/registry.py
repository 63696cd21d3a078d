"""The model registry: name -> builder, and :func:`create`.

A builder is a function ``builder(*, num_classes, in_channels, act, pool, **options)`` that
returns a new ``nn.Module``; ``act`` is the activation factory bound to the requested spec
(``act(channels) -> nn.Module``), ``pool`` is ``"avg"`` or ``"max"``. Builders are registered
with the :func:`register` decorator and looked up by :func:`create`, which validates the
arguments and records a plain-JSON ``spikeforge_spec`` on the model so checkpoints can rebuild
it with ``create(**spec)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from spikeforge.models.activations import ActivationSpec, activation_name, make_activation
from spikeforge.models.layers import POOLS
from spikeforge.registry import Registry

__all__ = ["MODELS", "ModelBuilder", "available", "create", "register"]

ModelBuilder = Callable[..., nn.Module]

#: model name -> builder (functions, not instances)
MODELS: Registry[ModelBuilder] = Registry("model")

# arguments create() always passes; everything else a builder takes is a model option
_FIXED = ("num_classes", "in_channels", "act", "pool")


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a model builder under ``name``.

    Example:
        >>> @register("tiny")
        ... def tiny(*, num_classes, in_channels, act, pool, hidden=32):
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden),
        ...                          act(hidden), nn.Linear(hidden, num_classes))
    """
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        parameters = inspect.signature(builder).parameters
        missing = [arg for arg in _FIXED if arg not in parameters]
        if missing:
            raise TypeError(f"model builder {name!r} must accept {', '.join(missing)}")
        return MODELS.register(name)(builder)
    return decorator


def available() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(MODELS)


def _options_of(builder: ModelBuilder) -> dict[str, Any]:
    """The builder's model options and their defaults (``inspect.Parameter.empty`` if none)."""
    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if name not in _FIXED and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so the spec is plain JSON."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def create(name: str, num_classes: int = 10, in_channels: int = 3,
           activation: ActivationSpec = "relu", pool: str = "avg", **options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered model name, see :func:`available`.
        num_classes: size of the output (the readout Linear).
        in_channels: channels of the input images (1 for MNIST, 3 for CIFAR).
        activation: an activation name (``"relu"``, ``"clipped_relu"``, ...) or a callable
            ``spec(channels, **activation_options) -> nn.Module``, see
            :func:`~spikeforge.models.activations.make_activation`.
        pool: ``"avg"`` (default; converts exactly to an SNN) or ``"max"`` for every
            downsampling pool of the model.
        **options: model options (``dropout``, ``width``, ``batch_norm``, ...; each builder's
            signature lists its own) and ``activation_options``: a dict of activation
            hyper-parameters (``{"clip": 2.0}``, ``{"levels": 8}``) passed to every
            activation.

    Returns:
        The model, in training mode, with ``model.spikeforge_spec``: a plain-JSON dict
        ``{"name", "num_classes", "in_channels", "activation", "pool", **options}`` (options
        include the builder's defaults) such that ``create(**spec)`` rebuilds the same
        architecture. For a callable activation the spec holds its registered name, or its
        qualified name (informative; register the callable to make it rebuildable).

    Raises:
        ValueError: unknown model name, pool or activation name (the messages list the valid
            ones), or a non-positive ``num_classes`` / ``in_channels``.
        TypeError: an option the model (or the activation) does not accept.

    Example:
        >>> model = create("vgg9", num_classes=10, in_channels=3, activation="clipped_relu",
        ...                activation_options={"clip": 2.0}, dropout=0.1)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    builder = MODELS.lookup(name)
    POOLS.lookup(pool, f"for model {name!r}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    activation_options = dict(options.pop("activation_options", None) or {})
    accepted = _options_of(builder)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(sorted(accepted)) or 'none'}, "
                        "activation_options")
    act = functools.partial(make_activation, activation, **activation_options)
    model = builder(num_classes=num_classes, in_channels=in_channels, act=act, pool=pool,
                    **options)
    resolved = {k: v for k, v in accepted.items() if v is not inspect.Parameter.empty}
    resolved.update(options)
    model.spikeforge_spec = _plain({
        "name": name, "num_classes": num_classes, "in_channels": in_channels,
        "activation": activation_name(activation), "pool": pool, **resolved,
        "activation_options": activation_options,
    })
    return model
