"""Several calls in one invocation (``f.map(items, chunksize=k)``).

Tiny calls cost more to launch than to run; grouping them amortizes the
invocation. Each call's outcome is kept apart, in the handler's outcome
format, so one failing item fails only its own future. Runs in the worker:
standard library and cloudpickle only.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

import cloudpickle


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
                tb = exc.__traceback__
                tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
                tb_text = "".join(traceback.format_exception(type(exc), exc, tb))
                try:
                    exc_bytes: bytes | None = cloudpickle.dumps(exc)
                except Exception:  # noqa: BLE001
                    exc_bytes = None
                name = f"{type(exc).__module__}.{type(exc).__qualname__}"
                out.append(("error", exc_bytes, name, str(exc), tb_text, "user"))
        return out
