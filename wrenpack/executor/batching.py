"""``chunksize=k``: k consecutive calls of a map run in one invocation
(``worker.batch.Batch``), each keeping its own future. The group's future is
the executor's; each item's future is resolved from it here, with the item's
own outcome (an exception rebuilt under the item's label)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from wrenpack.errors import ConfigError, ConfigTypeError
from wrenpack.limits import integral
from wrenpack.futures import CallOwner, WrenFuture, stop_running
from wrenpack.wire.outcome import rebuild_exception
from wrenpack.worker.batch import Batch

if TYPE_CHECKING:
    from wrenpack.executor.core import Executor
    from wrenpack.executor.options import CallOptions

Call = tuple[tuple[Any, ...], dict[str, Any]]


def check_chunksize(chunksize: Any, what: str) -> Any:
    """A map's ``chunksize`` (``what`` names the map), checked where the map is
    called, before the backend starts: a whole number of at least 1 (any
    integer type, as ``concurrent.futures`` takes), "auto", or None. A type that
    is no whole number (text, a float, a bool) is a ``ConfigTypeError``, a
    number below 1 a ``ConfigError`` (``ValueError``), as the process pool's."""
    if chunksize is None or (type(chunksize) is str and chunksize == "auto"):
        return chunksize
    fix = "the number of calls each invocation runs, or 'auto'"
    n = integral(chunksize)
    if n is None:
        raise ConfigTypeError(f"{what}: chunksize={chunksize!r:.40} must be a whole number of at least 1 ({fix}), "
                              f"not {type(chunksize).__name__}")
    if n < 1:
        raise ConfigError(f"{what}: chunksize={chunksize!r} must be a whole number of at least 1 ({fix})")
    return n


def launch_batched(executor: Executor, fn: Callable[..., Any], calls: list[Call], options: CallOptions, label: str,
                   chunksize: int) -> list[WrenFuture]:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ConfigError(f"chunksize={chunksize!r} must be a whole number of at least 1")
    groups = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
    # Each invocation is named by the items it runs ("f[3:6]"), not by its own index
    # ("f[1]"): that is another item's name, and a chunk's error, which each of its
    # items raises, and the worker's log named it so.
    made = [WrenFuture("", "", _chunk_label(label, g * chunksize, len(group))) for g, group in enumerate(groups)]
    executor.check_open()  # (given futures, ``launch`` does not check: it launches held calls after a shutdown)
    group_futures = executor.launch(Batch(fn), [((group,), {}) for group in groups], options, label=label, futures=made)
    out: list[WrenFuture] = []
    for g, (group, gfut) in enumerate(zip(groups, group_futures)):
        first = g * chunksize
        owner = _Batch(gfut)
        items = [WrenFuture(gfut.job_id, f"{gfut.call_id}.{j}", f"{label}[{first + j}]", created_at=gfut.created_at,
                            register=False)
                 for j in range(len(group))]
        for item in items:
            item._owner, item._where, item._job_key = owner, gfut._where, gfut._job_key
        # The items run while their chunk does: RUNNING with it (``_mark_running``), as any
        # call's future is; they stayed PENDING until done. A chunk that began meanwhile is
        # told here (marking twice is harmless).
        if not gfut.done():
            gfut._members = items
            if gfut.running():
                for item in items:
                    item._mark_running()

        def resolve(done: WrenFuture, items: list[WrenFuture] = items) -> None:
            if done.cancelled():
                for item in items:
                    item.cancel()
                return
            exc = done.exception()
            for j, item in enumerate(items):
                item.segments, item.logs = done.segments, done.logs
                if item.auto is None:
                    item._status = done._status  # (the batch's record, shared)
                else:
                    item.status = done.status
                if exc is not None:
                    item._resolve(False, exc)
                    continue
                outcome = done.result()[j]
                if outcome[0] == "ok":
                    item._resolve(True, outcome[1])
                else:
                    item._resolve(False, rebuild_exception(outcome, item.label, item.job_id))

        gfut.add_done_callback(resolve)
        out.extend(items)
    return out


def _chunk_label(label: str, first: int, size: int) -> str:
    """A chunk's name: its items' indices as a slice of the map."""
    return f"{label}[{first}]" if size == 1 else f"{label}[{first}:{first + size}]"


class _Batch(CallOwner):
    """Acts for the calls of one batch: they run as one invocation, so
    cancelling one takes back the whole batch."""

    __slots__ = ("gfut",)

    def __init__(self, gfut: WrenFuture) -> None:
        self.gfut = gfut

    def cancel_call(self, fut: WrenFuture) -> bool:
        return self.gfut.cancel()

    def stop_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """``wrenpack.cancel`` of running items: their chunk is one invocation, so
        it is stopped, and all its items end cancelled (as cancelling a waiting
        item takes the whole chunk back)."""
        return set(calls) if stop_running(self.gfut) else set()

    def pin_call(self, fut: WrenFuture) -> bool:
        return self.gfut._pin_call()
