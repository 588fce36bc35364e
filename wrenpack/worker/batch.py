"""Several calls in one invocation (``f.map(items, chunksize=k)``).

Tiny calls cost more to launch than to run; grouping them amortizes the
invocation. Each call's outcome is kept apart, in the protocol's outcome
format (``wrenpack.protocol``), so one failing item fails only its own
future. Runs in the worker: standard library and cloudpickle only.
"""
from __future__ import annotations

from typing import Any, Callable

from wrenpack import protocol


class Batch:
    """Calls ``fn`` once per ``(args, kwargs)``; returns one outcome tuple each."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", "function")

    def __call__(self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for args, kwargs in calls:
            try:
                out.append(("ok", self.fn(*args, **kwargs)))
            except Exception as exc:  # noqa: BLE001 - kept per item; BaseExceptions end the batch
                out.append(protocol.error_tuple(exc, "user", protocol.user_traceback(exc)))
        return out
