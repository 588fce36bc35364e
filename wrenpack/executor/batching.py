"""``chunksize=k``: k consecutive calls of a map run in one invocation
(``worker.batch.Batch``), each keeping its own future. The group's future is
the executor's; each item's future is resolved from it here, with the item's
own outcome (an exception rebuilt under the item's label)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from wrenpack.errors import ConfigError
from wrenpack.futures import WrenFuture
from wrenpack.wire.outcome import rebuild_exception
from wrenpack.worker.batch import Batch

if TYPE_CHECKING:
    from wrenpack.executor.core import Executor
    from wrenpack.executor.options import CallOptions

Call = tuple[tuple[Any, ...], dict[str, Any]]


def launch_batched(executor: Executor, fn: Callable[..., Any], calls: list[Call], options: CallOptions, label: str,
                   chunksize: int) -> list[WrenFuture]:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ConfigError(f"chunksize={chunksize!r} must be a whole number of at least 1")
    groups = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
    group_futures = executor.launch(Batch(fn), [((group,), {}) for group in groups], options, label=label)
    out: list[WrenFuture] = []
    for g, (group, gfut) in enumerate(zip(groups, group_futures)):
        first = g * chunksize
        items = [WrenFuture(gfut.job_id, f"{gfut.call_id}.{j}", f"{label}[{first + j}]") for j in range(len(group))]
        for j, item in enumerate(items):
            # Cancelling an item takes back its whole group (they run as one invocation).
            item._canceller, item._pin = gfut.cancel, gfut._pin
            if gfut._ref is not None:
                item._ref = dict(gfut._ref, call_id=item.call_id, label=item.label, item=j)
                item._job_key = gfut._job_key

        def resolve(done: WrenFuture, items: list[WrenFuture] = items) -> None:
            if done.cancelled():
                for item in items:
                    item.cancel()
                return
            exc = done.exception()
            for j, item in enumerate(items):
                item.status, item.segments, item.logs = done.status, done.segments, done.logs
                if exc is not None:
                    item._resolve(False, exc)
                    continue
                outcome = done.result()[j]
                if outcome[0] == "ok":
                    item._resolve(True, outcome[1])
                else:
                    item._resolve(False, rebuild_exception(outcome, item.label))

        gfut.add_done_callback(resolve)
        out.extend(items)
    return out
