"""Several calls in one invocation (``f.map(items, chunksize=k)``).

Tiny calls cost more to launch than to run; grouping them amortizes the
invocation. Each call's outcome is kept apart, in the outcome format
(``wrenpack.wire.outcome``), so one failing item fails only its own
future. Runs in the worker: standard library and cloudpickle only.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import cloudpickle

from wrenpack.wire.outcome import error_tuple, user_traceback


class Outcomes(list):  # type: ignore[type-arg]
    """A batch's outcome tuples, in order, how long each call took (s), and how
    long of that the worker waited for a CPU (s; None where the kernel does not say)."""

    seconds: list[float]
    waited: float | None = None


def _run_queue_wait() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU
    (``/proc/thread-self/schedstat``): time a busy machine took, not the calls."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Ended(Exception):
    """Raised by a group's call to give its outcome tuple as it is (a call of a
    checkpointed group that raised, in this segment or an earlier one: the
    outcome its checkpoint keeps, ``worker.handler._per_item``)."""

    def __init__(self, outcome: tuple[Any, ...]) -> None:
        super().__init__(outcome[3] if len(outcome) > 3 else "")
        self.outcome = outcome


class Batch:
    """Calls ``fn`` once per ``(args, kwargs)``; returns one outcome tuple each.

    ``pickled=True``: each call comes as its own pickled ``(args, kwargs)``
    (automatic grouping pickles calls before it knows their groups)."""

    def __init__(self, fn: Callable[..., Any], pickled: bool = False) -> None:
        self.fn = fn
        self.pickled = pickled
        self.__qualname__ = getattr(fn, "__qualname__", "function")

    def __call__(self, calls: list[Any]) -> list[tuple[Any, ...]]:
        out = Outcomes()
        out.seconds = []
        clock = time.perf_counter
        waited = _run_queue_wait()
        for call in calls:
            t0 = clock()
            try:
                args, kwargs = cloudpickle.loads(call) if self.pickled else call
                out.append(("ok", self.fn(*args, **kwargs)))
            except Ended as ended:
                out.append(ended.outcome)
            except Exception as exc:  # noqa: BLE001 - kept per item; BaseExceptions end the batch
                out.append(error_tuple(exc, "user", user_traceback(exc)))
            out.seconds.append(clock() - t0)
        end = _run_queue_wait()
        if waited is not None and end is not None:
            out.waited = max(0.0, end - waited)
        return out
