"""A table of plug-ins by name: how backends and stores are chosen.

Each entry is a class or its ``"module:Class"`` path, imported the first time
it is asked for, so a plug-in's dependencies (boto3 for S3, say) load only
when it is used. Standard library only: the worker ships it (stores)."""
from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

from wrenpack.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> plug-in classes; ``what`` and ``hint`` make the one-line error
    for a name that is not there."""

    def __init__(self, what: str, entries: dict[str, str | type[T]], hint: str = "") -> None:
        self.what, self.hint = what, hint
        self._entries: dict[str, Any] = dict(entries)

    def register(self, name: str, target: str | type[T]) -> None:
        self._entries[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def load(self, name: Any) -> type[T]:
        """The class registered as ``name`` (imported now if given as a path)."""
        target = self._entries.get(name) if isinstance(name, str) else None
        if target is None:
            hint = self.hint or f"use one of {', '.join(map(repr, self._entries))}"
            raise ConfigError(f"unknown {self.what} {name!r}; {hint}")
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = self._entries[name] = getattr(importlib.import_module(module), attr)
        return target
