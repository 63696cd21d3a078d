"""Typed configuration: dataclasses read from YAML plus ``key=value`` overrides.

One small mechanism serves every config in spikeforge (training, experiments): a config is a
tree of dataclasses whose field annotations say what each key accepts. :func:`from_dict`
walks a plain mapping against that tree and fails *before any work starts* with a message that
names the offending key (``optim.lr``) and, for a bad key or choice, lists the valid ones.

Example::

    cfg = load_config(TrainConfig, "configs/mnist_cnn.yaml", ["optim.lr=0.05", "seed=1"])
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

C = TypeVar("C")


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` / ``1e12`` as numbers (YAML 1.1, and so
    plain PyYAML, demands a dot and a signed exponent: ``1.0e-3``), as users write them."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)\.?[0-9_]*(?:[eE][-+]?[0-9]+)$""", re.X),
    list("-+0123456789"))


def safe_load(text: str) -> Any:
    """Parse YAML without executing tags (``yaml.safe_load`` semantics, plus ``1e-3``)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration key is unknown, missing or of the wrong type."""


def check_name(key: str, value: Any, names: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` is not one of ``names`` (a
    :class:`~spikeforge.registry.Registry`), listing the valid ones."""
    if not isinstance(value, str) or value not in names:
        raise ConfigError(f"config key {key!r} is {value!r}; valid choices: "
                          + ", ".join(names))


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (converted where lossless)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping of {sorted(_fields(tp))}, "
                              f"got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own, more precise, error
            return _coerce(value, real[0], key)
        for option in real:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r} is {value!r}; valid choices: "
                              + ", ".join(repr(c) for c in choices))
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key {key!r} must be null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        args = get_args(tp)
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        args = get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported annotation {tp!r} for config key {key!r}")


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, checking every key and type.

    Raises:
        ConfigError: naming the full dotted key, for an unknown key (with the valid keys), a
            missing required key, a wrong type or a value outside a ``Literal`` choice.
    """
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}; valid keys"
                          f"{' under ' + repr(prefix[:-1]) if prefix else ''}: "
                          + ", ".join(sorted(fields)))
    kwargs = {name: _coerce(data[name], tp, prefix + name)
              for name, tp in fields.items() if name in data}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without a default is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"missing config key(s): {', '.join(prefix + m for m in missing)}") \
            from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain (YAML/JSON-able) form of a config dataclass."""
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML: ``lr=0.1`` is a
    number, ``name=vgg9`` a string, ``augment.hflip=true`` a bool, ``root=null`` None)."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        value = safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (never executes tags), naming the file on
    any error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(cls: type[C], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> C:
    """Read ``path`` (optional), apply ``overrides``, and check it all against ``cls``."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))
