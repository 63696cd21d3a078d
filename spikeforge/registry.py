"""Name → thing tables (models, activations, conversion methods, surrogates, encoders, data
sets, precisions, pools): one mechanism, so that a lookup, a command-line choice and a config
check all take their valid names, and their error message, from the same place.

A :class:`Registry` is a ``dict`` (lookups, ``in``, iteration in insertion order) with a
kind and an error type. It holds builders, functions or plain records, never instances that
carry state between calls.

Example:
    >>> pools = Registry("pool", {"avg": "AvgPool2d", "max": "MaxPool2d"})
    >>> pools.lookup("avg")
    'AvgPool2d'
    >>> pools.lookup("min")
    Traceback (most recent call last):
    ...
    ValueError: unknown pool 'min'; valid: avg, max
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A named table: ``kind`` says what its entries are in error messages, ``error`` is the
    exception an unknown name raises (``ValueError`` unless the caller's domain has its
    own, e.g. :class:`~spikeforge.convert.ConversionError`)."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *,
                 error: type[Exception] = ValueError) -> None:
        super().__init__(entries or {})
        self.kind = kind
        self.error = error

    def names(self) -> list[str]:
        """The valid names, in the order they were added."""
        return list(self)

    def unknown(self, name: object, where: str = "") -> str:
        """The message for a name that is not here: ``where`` (e.g. ``"for model 'vgg9'"``)
        says what asked for it."""
        return (f"unknown {self.kind} {name!r}{' ' + where if where else ''}; valid: "
                + ", ".join(self.names()))

    def lookup(self, name: str, where: str = "") -> T:
        """The entry called ``name``; raises ``self.error`` listing the valid names."""
        try:
            return self[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            raise self.error(self.unknown(name, where)) from None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; a different entry already there is an
        error (re-registering the same one, e.g. on a module reload, is not)."""
        def decorator(entry: T) -> T:
            existing = self.get(name)
            if existing is not None and existing is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing!r})")
            self[name] = entry
            return entry
        return decorator
