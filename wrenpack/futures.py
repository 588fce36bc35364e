"""Futures for remote calls, and the helpers that wait on many of them.

``WrenFuture`` is a ``concurrent.futures.Future``, so ``concurrent.futures.wait``
and ``as_completed`` work on it unchanged. A user exception raised remotely is
re-raised by ``result()`` with its own type; the remote traceback is attached
as its ``__cause__`` (the way ``ProcessPoolExecutor`` does it).
"""
from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Any, Iterable, Iterator, Sequence

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

__all__ = ["WrenFuture", "get", "wait", "as_completed", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]


class RemoteTraceback(Exception):
    """Carries the worker's traceback text; shown as the cause of a remote error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\nRemote traceback (in the worker):\n{self.tb.rstrip()}\n"""'


class WrenFuture(cf.Future):
    """The future of one remote call."""

    def __init__(self, job_id: str, call_id: str, label: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.call_id = call_id
        self.label = label
        #: the status record the worker wrote (timings, peak memory, exit kind), once done
        self.status: dict[str, Any] | None = None
        #: how many invocations this call took (more than 1 when checkpointed)
        self.segments = 0
        #: how many invocations the function's saved profile predicts (1 without one)
        self.expected_segments = 1
        #: status records of the segments that ended in a checkpoint, in order
        self.segment_statuses: list[dict[str, Any]] = []
        self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        # A call already handed to a backend cannot be recalled (as on Lambda).
        return False

    def __repr__(self) -> str:
        return f"<WrenFuture {self.label} state={self._state.lower()}>"


def _as_list(futures: WrenFuture | Iterable[WrenFuture]) -> tuple[list[WrenFuture], bool]:
    if isinstance(futures, cf.Future):
        return [futures], True
    return list(futures), False


def get(futures: WrenFuture | Iterable[WrenFuture], timeout: float | None = None, progress: bool | None = None) -> Any:
    """Results in order (one result for one future); raises the first failure in order.

    Shows a progress bar on a terminal (``progress=None``), or when asked.
    """
    futs, single = _as_list(futures)
    if progress is None:
        from wrenpack.config import current

        progress = current().progress
        if progress is None:
            progress = sys.stderr.isatty() and len(futs) > 1
    if progress and futs:
        _wait_with_progress(futs, timeout)
    else:
        done, pending = cf.wait(futs, timeout=timeout)
        if pending:
            raise cf.TimeoutError(f"{len(pending)} of {len(futs)} calls not finished after {timeout} s")
    results = [f.result(timeout=0) for f in futs]
    return results[0] if single else results


def _wait_with_progress(futs: Sequence[WrenFuture], timeout: float | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]wrenpack"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task("calls", total=len(futs))
        try:
            for _ in cf.as_completed(futs, timeout=timeout):
                bar.advance(task)
        except cf.TimeoutError:
            pending = sum(1 for f in futs if not f.done())
            raise cf.TimeoutError(f"{pending} of {len(futs)} calls not finished after {timeout} s") from None


def wait(futures: Iterable[WrenFuture], timeout: float | None = None, return_when: str = ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures:  # type: ignore[name-defined]
    """Like ``concurrent.futures.wait``: returns ``(done, not_done)`` sets."""
    futs, _ = _as_list(futures)
    return cf.wait(futs, timeout=timeout, return_when=return_when)


def as_completed(futures: Iterable[WrenFuture], timeout: float | None = None) -> Iterator[WrenFuture]:
    """Like ``concurrent.futures.as_completed``."""
    futs, _ = _as_list(futures)
    return cf.as_completed(futs, timeout=timeout)
