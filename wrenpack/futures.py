"""Futures for remote calls, and the helpers that wait on many of them.

``WrenFuture`` is a ``concurrent.futures.Future``, so ``concurrent.futures.wait``
and ``as_completed`` work on it unchanged. A user exception raised remotely is
re-raised by ``result()`` with its own type; the remote traceback is attached
as its ``__cause__`` (the way ``ProcessPoolExecutor`` does it).
"""
from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, _base
from typing import Any, Callable, Iterable, Iterator, Sequence

from wrenpack.errors import ConfigTypeError, RemoteTraceback  # noqa: F401 - re-exported
from wrenpack.worker import refs

__all__ = ["WrenFuture", "get", "wait", "as_completed", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]


class WrenFuture(cf.Future):
    """The future of one remote call: PENDING until the call starts running,
    RUNNING while it runs, then finished (or cancelled, if taken back before
    it started). Pickles to a reference to its call (``wrenpack.worker.refs``)."""

    def __init__(self, job_id: str = "", call_id: str = "", label: str = "future") -> None:
        super().__init__()
        self.job_id = job_id
        self.call_id = call_id
        self.label = label
        #: the status record the worker wrote (timings, peak memory, exit kind,
        #: ``attempt``; ``retried``: what earlier attempts raised), once done
        self.status: dict[str, Any] | None = None
        #: the tail (last 64 KB) of what the call printed to stdout/stderr, once done
        self.logs: str | None = None
        #: how many invocations this call took (more than 1 when checkpointed)
        self.segments = 0
        #: how many invocations the function's saved profile predicts (1 without one)
        self.expected_segments = 1
        #: status records of the segments that ended in a checkpoint, in order
        self.segment_statuses: list[dict[str, Any]] = []
        # Set by the executor: take the call back if it has not started; keep
        # its job's objects for a pickled reference; what the reference holds.
        self._canceller: Callable[[], bool] | None = None
        self._pin: Callable[[], bool] | None = None
        self._ref: dict[str, Any] | None = None
        #: keeps its job's secret known in this process while the future lives (``refs.JobKey``)
        self._job_key: Any = None
        #: set once the call is launched, for a call whose launch waits (automatic grouping)
        self._launched: threading.Event | None = None
        #: futures that start running when this one does (the calls of a group)
        self._members: list[WrenFuture] = []
        #: launches the call now, for a call whose launch waits
        self._launch_now: Callable[[], None] | None = None
        #: the list (and index) of a map's plan that holds this future while the map
        #: runs; it holds ``ENDED`` instead once this future is done (``hold_in``)
        self._slot: tuple[list[Any], int] | None = None
        refs.register(self)

    def hold_in(self, items: list[Any], index: int) -> None:
        """``items[index]`` is this future until it is done, then ``ENDED``: a map's
        plan (``wrenpack.executor.grouping``, ``.feed``) lives while any of its calls
        is pending, and must not keep the results its caller already let go of
        (``concurrent.futures`` keeps no finished future either)."""
        self._slot = (items, index)

    def cancel(self) -> bool:
        """Cancel a call that has not started (its callbacks then run); False
        once it runs or is done, as ``concurrent.futures`` defines it. A future
        no executor launched (one made by hand) cancels as a plain
        ``concurrent.futures.Future`` does: its owner calls
        ``set_running_or_notify_cancel``."""
        with self._condition:
            if self._state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED):
                return True
            if self._state != _base.PENDING:
                return False
        canceller = self._canceller
        if canceller is None:
            return super().cancel()
        if not canceller():
            return False
        if not super().cancel():
            return False
        # Nobody will pick it up later (as a pool worker would): wake waiters now.
        self.set_running_or_notify_cancel()
        return True

    def _invoke_callbacks(self) -> None:
        """Run the callbacks (``concurrent.futures`` calls this once the future is
        done or cancelled), then let go of everything only a pending call needs.

        The callbacks and cancellers of a map's calls refer to the map's plan,
        which holds every future of the map: kept after the call ended, they
        made each map a reference cycle, so its results (and its arguments'
        pickles) stayed in memory until the garbage collector happened to run,
        and one future the user kept held all of its siblings' results."""
        try:
            super()._invoke_callbacks()
        finally:
            self._done_callbacks = []
            self._canceller = None
            self._pin = _gone  # (a reference taken now travels with the outcome)
            self._launch_now = None
            self._members = []
            slot, self._slot = self._slot, None
            if slot is not None and slot[0][slot[1]] is self:
                slot[0][slot[1]] = ENDED

    def _mark_running(self) -> None:
        """The call began running (the backend's ``on_start``)."""
        with self._condition:
            if self._state == _base.PENDING:
                self.set_running_or_notify_cancel()
        for member in self._members:
            member._mark_running()

    def _resolve(self, ok: bool, value: Any) -> bool:
        """Set the outcome unless already done or cancelled; True if it was set."""
        try:  # (callbacks must not run under our lock: no outer lock here)
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except cf.InvalidStateError:
            return False
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.done():
            if self._ref is None and self._launched is not None:
                if self._launch_now is not None:
                    self._launch_now()  # a call its map holds back goes now
                self._launched.wait(10)
            if self._ref is None:
                raise TypeError(f"the future of {self.label} is not a remote call's own; it can be pickled once it is done")
            if self._pin is None or self._pin():
                return refs.reduce_ref(self._ref)
        # Done (or its job is being removed right now, so done in a moment):
        # the future travels with its outcome.
        if self.cancelled():
            return (refs.finished, (self.label, "cancelled", None))
        exc = self.exception()
        return (refs.finished, (self.label, "ok", self.result()) if exc is None else (self.label, "error", exc))


def _gone() -> bool:
    """A done future's pin: its outcome travels instead of a reference to its call."""
    return False


#: what a map's plan holds in place of a future that is done (``WrenFuture.hold_in``)
ENDED = WrenFuture("", "", "ended")
ENDED.set_result(None)


def _as_list(futures: WrenFuture | Iterable[WrenFuture], what: str = "wrenpack.get()") -> tuple[list[WrenFuture], bool]:
    """The futures given (one, or an iterable of them), checked: anything else
    is a ``ConfigTypeError`` naming it, not an AttributeError from inside."""
    if isinstance(futures, cf.Future):
        return [futures], True
    try:
        futs = list(futures)
    except TypeError:
        raise ConfigTypeError(f"{what} takes a future or an iterable of futures, not {type(futures).__name__}; "
                              "pass what .remote(), .map() or submit() returned") from None
    for i, f in enumerate(futs):
        if not isinstance(f, cf.Future):
            raise ConfigTypeError(f"{what} takes futures, but item {i} is {type(f).__name__} {f!r:.40}; "
                                  "pass what .remote(), .map() or submit() returned")
    return futs, False


def get(
    futures: cf.Future | Iterable[cf.Future],
    timeout: float | None = None,
    progress: bool | None = None,
    return_exceptions: bool = False,
) -> Any:
    """Results in order (one result for one future); raises the first failure
    in order, or with ``return_exceptions=True`` puts each failure (exception
    object) in its place. A result that is itself a future (or a list of them:
    a call that returned futures) is resolved to its result too.

    Shows a progress bar on a terminal (``progress=None``), or when asked.
    """
    futs, single = _as_list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    if progress is None:
        from wrenpack.config import current

        progress = current().progress
        if progress is None:
            progress = sys.stderr.isatty() and len(futs) > 1
    waitable = [f for f in futs if not isinstance(f, refs.CallRef)]
    if progress and waitable:
        _wait_with_progress(waitable, timeout)
    else:
        done, pending = cf.wait(waitable, timeout=timeout)
        if pending:
            raise cf.TimeoutError(f"{len(pending)} of {len(futs)} calls not finished after {timeout} s")
    results = []
    try:
        for f in futs:
            results.append(_value(f, return_exceptions, deadline, 0))
    except BaseException:
        # The exception's traceback keeps this frame; the futures must not stay
        # in it, or a future holding that exception is in a reference cycle and
        # every result of the call is kept until the garbage collector runs.
        futures = futs = waitable = done = pending = f = results = None  # type: ignore[assignment]  # noqa: F841
        raise
    return results[0] if single else results


def _value(fut: cf.Future, return_exceptions: bool, deadline: float | None, depth: int) -> Any:
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        value = fut.result(timeout=left)
    except cf.TimeoutError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the call's own exception (or CancelledError)
        fut = None  # (kept by the exception's traceback, it would make a cycle: see ``get``)
        if not return_exceptions or not isinstance(exc, Exception):
            raise
        # Returned, not raised: without the frames it was just raised through
        # (they hold the caller's futures; the remote traceback is its __cause__).
        return exc.with_traceback(None)
    if depth >= 8 or not isinstance(value, (cf.Future, list)):
        return value
    try:
        if isinstance(value, cf.Future):
            return _value(value, return_exceptions, deadline, depth + 1)
        if value and all(isinstance(v, cf.Future) for v in value):
            values = []
            for v in value:
                values.append(_value(v, return_exceptions, deadline, depth + 1))
            return values
    except BaseException:
        fut = value = v = values = None  # type: ignore[assignment]
        raise
    return value


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
    """Like ``concurrent.futures.wait``: returns ``(done, not_done)`` sets.

    An unpickled future whose call this process did not launch (``refs.CallRef``)
    resolves only by looking at the store, which ``concurrent.futures.wait`` never
    does (it waited forever): such futures are looked at here while waiting."""
    futs, _ = _as_list(futures, "wrenpack.wait()")
    polled = [f for f in futs if isinstance(f, refs.CallRef)]
    if not polled:
        return cf.wait(futs, timeout=timeout, return_when=return_when)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while True:
        for f in polled:
            f.done()  # (one look at the store; resolves it once its result is there)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, not_done = cf.wait(futs, timeout=delay if left is None else min(delay, left), return_when=return_when)
        if (not not_done or left == 0.0 or (return_when == FIRST_COMPLETED and done)
                or (return_when == FIRST_EXCEPTION and any(not f.cancelled() and f.exception() is not None for f in done))):
            return cf._base.DoneAndNotDoneFutures(done, not_done)  # type: ignore[attr-defined]
        delay = min(delay * 1.5, 0.5)


def as_completed(futures: Iterable[WrenFuture], timeout: float | None = None) -> Iterator[WrenFuture]:
    """Like ``concurrent.futures.as_completed`` (unpickled futures of calls launched
    elsewhere included: see ``wait``)."""
    futs, _ = _as_list(futures, "wrenpack.as_completed()")
    if not any(isinstance(f, refs.CallRef) for f in futs):
        return cf.as_completed(futs, timeout=timeout)
    return _as_completed_polling(futs, timeout)


def _as_completed_polling(futs: list[WrenFuture], timeout: float | None) -> Iterator[WrenFuture]:
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(futs)  # (a future given twice is yielded once, as concurrent.futures does)
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise cf.TimeoutError(f"{len(pending)} (of {len(futs)}) futures unfinished")
        done, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        for f in done:
            pending.discard(f)
            yield f
