"""Futures for remote calls, and the helpers that wait on many of them.

``WrenFuture`` is a ``concurrent.futures.Future``, so ``concurrent.futures.wait``
and ``as_completed`` work on it unchanged; it is awaitable too, and
``as_completed`` here also iterates with ``async for``. A user exception raised
remotely is re-raised by ``result()`` with its own type; the remote traceback is
attached as its ``__cause__`` (the way ``ProcessPoolExecutor`` does it).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, _base
from typing import Any, AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence

from wrenpack import interrupts, progress as progress_display
from wrenpack.errors import ConfigError, ConfigTypeError, RemoteTraceback  # noqa: F401 - re-exported
from wrenpack.worker import refs

__all__ = ["WrenFuture", "AsCompleted", "get", "wait", "as_completed", "cancel", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]


#: The lock of every ``WrenFuture``, and the condition of those nobody waits on
#: (``concurrent.futures`` gives each future a ``threading.Condition`` of its own:
#: 1.4 KB, most of a pending future's memory, for 100,000 calls 140 MB). A state
#: change holds the lock for a few instructions. A thread about to block in
#: ``result()``/``exception()`` gives that future a condition of its own on the
#: same lock (``_wait_done``), so a change of another future never wakes it: with
#: many threads each waiting on its own call, one condition for all would wake
#: every one of them at every call's end. (The standard library's waiters, ``wait``
#: and ``as_completed``, are woken through ``_waiters``, as for any future.)
_LOCK = threading.RLock()


class _Condition(threading.Condition):
    """A condition on ``_LOCK`` whose ``with`` is the lock's own, in C.

    ``threading.Condition.__enter__`` is Python code: Python runs a signal's
    handler right after the call that took the lock returns, so a Ctrl-C (or a
    SIGTERM handler's ``SystemExit``) that came while the main thread waited for
    the lock was raised inside ``__enter__``, with the lock taken and no ``with``
    entered to give it back. Every future's lock stayed held by a main thread
    that had moved on, and the collector, completing the next call, waited for
    it for good (``shutdown(wait=True)`` hung: one Ctrl-C in ~30 to a loop of
    5,000-call maps). The lock's own ``__enter__``/``__exit__`` run no bytecode,
    so the ``with`` is entered once the lock is taken, and left through
    ``__exit__`` whatever is raised inside. (Bound methods of a C object, not
    functions: looked up on the class, they are called as they are.)"""

    __enter__ = _LOCK.__enter__  # type: ignore[assignment]
    __exit__ = _LOCK.__exit__  # type: ignore[assignment]


_CONDITION = _Condition(_LOCK)


def _forked() -> None:
    """A fork (``os.fork``, multiprocessing's fork start method) gets its own lock: a thread
    of the parent that held the shared one at the fork (the collector completing a call) is
    not in the child, and every future there, a new one too, waited for it for good. The
    futures the child inherited were the parent's (their calls fail there at once:
    ``RunningJob.wait_here``)."""
    global _LOCK, _CONDITION
    _LOCK = threading.RLock()
    _Condition.__enter__ = _LOCK.__enter__  # type: ignore[method-assign]
    _Condition.__exit__ = _LOCK.__exit__  # type: ignore[method-assign]
    _CONDITION = _Condition(_LOCK)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _own_condition() -> threading.Condition:
    """A waited-on future's own condition, on the shared lock."""
    return _Condition(_LOCK)


def let_go_for_good() -> None:
    """The calling thread gives up the futures' lock, however deeply it holds it,
    never to take it back: for a SIGTERM handler that ends the process
    (``wrenpack.executor.termination``). The handler runs in the main thread
    between two bytecodes, and ``result()``, ``wait()`` and every state change
    hold this lock across several (``with _CONDITION`` up to the wait that lets it
    go): a SIGTERM landing there had the handler wait for its cleanup thread while
    holding the lock that thread needs to cancel a single call, so the cleanup
    stood still until ``CLEANUP_S`` ran out and the process ended with every
    object of its jobs and map_reduces left in the store."""
    while _LOCK._is_owned():  # type: ignore[attr-defined]
        _LOCK.release()


_DONE_STATES = frozenset({_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED})
_CANCELLED_STATES = frozenset({_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED})
#: a future's callbacks before the first is added (a list is made then)
_NO_CALLBACKS: tuple[Any, ...] = ()
#: set by the driver's SIGTERM handler (``wrenpack.executor.termination``): whether a done-callback
#: is to be skipped, being anything but wrenpack's own. Once the signal came nothing of the program
#: runs (its main thread is stopped): a callback of its own that the cleanup's cancels would run took
#: a lock its main thread held there (the cleanup waited 30 s), or launched a pipeline's next stage.
_program_callback: Callable[[Any], bool] | None = None


class CallOwner:
    """What launched calls and acts on them while they are pending (an
    executor's job, a map's plan, a group of calls): one object for a map's
    futures, where each future had closures of its own."""

    __slots__ = ()

    def cancel_call(self, fut: "WrenFuture") -> bool:
        """Take back ``fut``'s call if it has not started; True if it never will."""
        return False

    def pin_call(self, fut: "WrenFuture") -> bool:
        """``fut`` is being pickled as a reference: keep its job's objects; False if it is done (or about to be)."""
        return True

    def stop_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Stop these calls even if they run (``wrenpack.cancel``); the ones that will end so."""
        return set()

    def launch_call(self, fut: "WrenFuture") -> None:
        """Launch ``fut``'s call now if it waits to be launched (pickling it needs a reference)."""

    def launched(self, fut: "WrenFuture", timeout: float) -> None:
        """Wait up to ``timeout`` s for ``fut``'s call to be launched."""

    def wait_here(self, fut: "WrenFuture", timeout: float | None) -> None:
        """A thread blocks on ``fut`` (up to ``timeout`` s): its call's outcome
        may be read on that thread (``Backend.wait_here``); returns at once if not."""


class WrenFuture(cf.Future):
    """The future of one remote call: PENDING until the call starts running,
    RUNNING while it runs, then finished (or cancelled, if taken back before
    it started). Pickles to a reference to its call (``wrenpack.worker.refs``).

    A map of 100,000 calls has 100,000 of these alive at once, so each is
    small: its fields in slots, one lock shared by all and a condition of its
    own only once a thread waits on it (``_CONDITION``), no per-future closures
    (its ``_owner`` acts for it), a status record kept packed until it is read,
    and no entry in the table of live futures (``refs.register``) until it is
    pickled."""

    # (the base class's fields too: its __init__, which makes a Condition per future, is not called)
    __slots__ = ("_state", "_result", "_exception", "_waiters", "_done_callbacks",
                 "job_id", "call_id", "label", "auto", "_status", "logs", "segments", "expected_segments",
                 "_segment_statuses", "_retried_statuses", "_retried", "created_at", "started_at",
                 "_owner", "_where", "_canceller", "_stopper", "_pin", "_ref", "_job_key",
                 "_launched", "_members", "_launch_now", "_slot", "_condition")

    def __init__(self, job_id: str = "", call_id: str = "", label: str = "future", *,
                 created_at: float | None = None, register: bool = True) -> None:
        #: ``_CONDITION``, or a condition of its own on the same lock once a thread waits on it
        self._condition = _CONDITION
        self._state = _base.PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: Any = _NO_CALLBACKS
        self.job_id = job_id
        self.call_id = call_id
        self.label = label
        #: what memory/timeout="auto" chose for this call and why (``{"memory": 512,
        #: "timeout": 30, "why": ...}``); None without "auto". Also ``status["auto"]``.
        self.auto: dict[str, Any] | None = None
        #: the status record: a dict, or packed (``_pack_status``) until it is read
        self._status: Any = None
        #: the tail (last 64 KB) of what the call printed to stdout/stderr, once done
        self.logs: str | None = None
        #: how many invocations this call took (more than 1 when checkpointed)
        self.segments = 0
        #: how many invocations the function's saved profile predicts (1 without one)
        self.expected_segments = 1
        self._segment_statuses: list[dict[str, Any]] | None = None
        self._retried_statuses: list[dict[str, Any]] | None = None
        #: what earlier attempts raised (``retry_on``), for the status record
        self._retried: list[str] | None = None
        #: when the call was made (this process's clock; a map's calls share one
        #: reading), and when a worker took it: how long it waited (``wrenpack.report``)
        self.created_at = time.time() if created_at is None else created_at
        self.started_at: float | None = None
        #: what acts for this pending call (``CallOwner``): cancel, pin, stop, launch now
        self._owner: CallOwner | None = None
        #: (store spec, chain) of its job, shared by the job's futures: a reference is made from it
        self._where: tuple[dict[str, Any], Any] | None = None
        # Set by whoever resolves a future without an owner (``wrenpack.job``'s
        # attached futures): take the call back, keep its job's objects for a
        # pickled reference, what the reference holds.
        self._canceller: Callable[[], bool] | None = None
        #: stops the call even once it runs (``wrenpack.cancel``)
        self._stopper: Callable[[list[tuple[str, str]]], set[tuple[str, str]]] | None = None
        self._pin: Callable[[], bool] | None = None
        self._ref: dict[str, Any] | None = None
        #: keeps its job's secret known in this process while the future lives (``refs.JobKey``)
        self._job_key: Any = None
        #: set once the call is launched, for a call whose launch waits (``wrenpack.executor.feed``)
        self._launched: threading.Event | None = None
        #: futures that start running when this one does (the calls of a group)
        self._members: list[WrenFuture] | None = None
        #: launches the call now, for a call whose launch waits
        self._launch_now: Callable[[], None] | None = None
        #: the list (and index) of a map's plan that holds this future while the map
        #: runs; it holds ``ENDED`` instead once this future is done (``hold_in``)
        self._slot: tuple[list[Any], int] | None = None
        if register and job_id and call_id:
            # (the executor's futures are registered when they are pickled: a
            # reference to one can only come back after that, and an entry costs
            # 200 bytes a call)
            refs.register(self)

    @property
    def segment_statuses(self) -> list[dict[str, Any]]:
        """Status records of the segments that ended in a checkpoint, in order."""
        if self._segment_statuses is None:
            self._segment_statuses = []
        return self._segment_statuses

    @property
    def retried_statuses(self) -> list[dict[str, Any]]:
        """Status records of the attempts that failed and were tried again (``retry_on``), in order."""
        if self._retried_statuses is None:
            self._retried_statuses = []
        return self._retried_statuses

    def reference(self) -> dict[str, Any] | None:
        """What a pickled reference to this call holds (``refs.reduce_ref``), or
        None while the call is not launched (or was never a launched call's)."""
        if self._ref is not None:
            return self._ref
        where = self._where
        if where is None or not self.job_id:
            return None
        # A call of a group (``<call>.<index>``) reads its group's result object, at its index.
        cid, _, item = self.call_id.partition(".")
        return {"job_id": self.job_id, "call_id": self.call_id, "label": self.label, "store": where[0],
                "chain": where[1], "result_job": self.job_id, "result_call": cid, "item": int(item) if item else None}

    @property
    def status(self) -> dict[str, Any] | None:
        """The status record the worker wrote (timings, peak memory, exit kind,
        ``attempt``; ``retried``: what earlier attempts raised; ``auto``: what
        "auto" settings chose and why), once done."""
        status = self._status
        if status is None or type(status) is dict:
            return status
        with _CONDITION:  # unpacked once: from then on it is this dict (which a caller may change)
            status = self._status
            if type(status) is not dict:
                status = self._status = status.unpack()
        return status

    @status.setter
    def status(self, value: dict[str, Any] | None) -> None:
        # Own field first, then the other's (as in ``set_auto``): whichever runs
        # second sees the first's write, so the record is never lost to a race.
        if value is not None and self.auto is not None:
            value = dict(value, auto=self.auto)  # a copy: a batch's calls share their batch's record
        self._status = value if value is None or self.auto is not None else pack_status(value, self.call_id)
        auto = self.auto
        if value is not None and auto is not None:
            status = self.status
            if status is not None and status.get("auto") is not auto:
                status["auto"] = auto

    def set_group_status(self, group: "WrenFuture", size: int, index: int, seconds: float | None) -> None:
        """This call ran as ``index`` of a group of ``size`` (``group``'s status
        record, the call's own duration): kept as a reference to the group's
        record, made into the call's own when read."""
        base = group._status
        if self.auto is not None or base is None:
            extra: dict[str, Any] = {"group": {"size": size, "index": index}}
            if seconds is not None:
                extra["duration_s"] = seconds
            self.status = dict(group.status or {}, **extra)
        else:
            self._status = _MemberStatus(base, size, index, seconds)

    def set_auto(self, record: dict[str, Any]) -> None:
        """Record what "auto" settings chose for this call (the launch's side)."""
        self.auto = record
        status = self.status
        if status is not None:
            status["auto"] = record

    def hold_in(self, items: list[Any], index: int) -> None:
        """``items[index]`` is this future until it is done, then ``ENDED``: a map's
        plan (``wrenpack.executor.grouping``, ``.feed``) lives while any of its calls
        is pending, and must not keep the results its caller already let go of
        (``concurrent.futures`` keeps no finished future either)."""
        self._slot = (items, index)

    # -- the concurrent.futures.Future face, on the shared condition ----------------
    def add_done_callback(self, fn: Callable[[cf.Future], Any]) -> None:
        with _CONDITION:
            if self._state not in _DONE_STATES:
                if self._done_callbacks is _NO_CALLBACKS:
                    self._done_callbacks = [fn]
                else:
                    self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:  # noqa: BLE001 - as concurrent.futures does
            _base.LOGGER.exception("exception calling callback for %r", self)

    def _wait_done(self, timeout: float | None) -> None:
        """Wait (the lock held) until done, or ``timeout`` s, on a condition of this
        future's own: made on the shared lock the first time a thread waits, so
        locking stays the same and only this future's changes wake the waiter."""
        if self._state in _DONE_STATES:
            return
        cond = self._condition
        if cond is _CONDITION:
            cond = self._condition = _own_condition()
        # (in slices: signals another thread took, ``interrupts.sliced``)
        interrupts.wait_sliced(cond.wait, lambda: self._state in _DONE_STATES, timeout)

    def _wait_here(self, timeout: float | None, what: str = "result") -> float | None:
        """Let the owner read this call's outcome on this thread (``CallOwner.wait_here``)
        before it waits on the condition; the timeout left (checked: ``what`` names the call)."""
        _check_timeout(timeout, what)
        owner = self._owner
        if owner is None or self._state in _DONE_STATES:
            return timeout
        start = time.monotonic()
        owner.wait_here(self, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))

    def result(self, timeout: float | None = None) -> Any:
        try:
            timeout = self._wait_here(timeout)
            with _CONDITION:
                self._wait_done(timeout)
                if self._state in _CANCELLED_STATES:
                    raise cf.CancelledError()
                if self._state == _base.FINISHED:
                    return self._Future__get_result()  # type: ignore[attr-defined]
                raise cf.TimeoutError()
        finally:
            self = None  # noqa: PLW0642 - (as concurrent.futures: the traceback must not hold the future)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        _check_timeout(timeout, "exception")
        with _CONDITION:
            self._wait_done(timeout)
            if self._state in _CANCELLED_STATES:
                raise cf.CancelledError()
            if self._state == _base.FINISHED:
                return self._exception
            raise cf.TimeoutError()

    def cancel(self) -> bool:
        """Cancel a call that has not started (its callbacks then run); False
        once it runs or is done, as ``concurrent.futures`` defines it. A future
        no executor launched (one made by hand) cancels as a plain
        ``concurrent.futures.Future`` does: its owner calls
        ``set_running_or_notify_cancel``."""
        with _CONDITION:
            if self._state in _CANCELLED_STATES:
                return True
            if self._state != _base.PENDING:
                return False
        owner, canceller = self._owner, self._canceller
        if owner is not None:
            taken = owner.cancel_call(self)
        elif canceller is not None:
            taken = canceller()
        else:
            return super().cancel()
        if not taken:
            return False
        return self._taken_back()

    def _taken_back(self) -> bool:
        """Its call was taken back (it will never run): CANCELLED, and its waiters
        and callbacks told; False if it is not pending (then it is not changed)."""
        if not super().cancel():
            return False
        with _CONDITION:
            # Nobody will pick it up later (as a pool worker would): wake waiters now,
            # unless taking the call back did (a batch's members are told of its cancel).
            if self._state == _base.CANCELLED:
                self.set_running_or_notify_cancel()
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        """``await fut`` in a coroutine: the result, or the call's exception.

        Through ``asyncio.wrap_future``, so asyncio's rules hold: an awaiting
        task that is cancelled (``asyncio.wait_for`` running out, say) cancels
        the call if it has not started; one that runs finishes unobserved."""
        return asyncio.wrap_future(self).__await__()

    def _invoke_callbacks(self) -> None:
        """Run the callbacks (``concurrent.futures`` calls this once the future is
        done or cancelled), then let go of everything only a pending call needs.

        The callbacks and owners of a map's calls refer to the map's plan,
        which holds every future of the map: kept after the call ended, they
        made each map a reference cycle, so its results (and its arguments'
        pickles) stayed in memory until the garbage collector happened to run,
        and one future the user kept held all of its siblings' results."""
        skip = _program_callback
        if skip is not None and self._done_callbacks is not _NO_CALLBACKS:
            # (a SIGTERM's cleanup is ending the program: its own callbacks run no more)
            self._done_callbacks = [fn for fn in self._done_callbacks if not skip(fn)]
        try:
            super()._invoke_callbacks()
        finally:
            self._done_callbacks = _NO_CALLBACKS
            self._owner = None
            self._canceller = None
            self._stopper = None
            self._pin = _gone  # (a reference taken now travels with the outcome)
            self._launch_now = None
            self._members = None
            slot, self._slot = self._slot, None
            if slot is not None and slot[0][slot[1]] is self:
                slot[0][slot[1]] = ENDED

    def _mark_running(self) -> None:
        """The call began running (the backend's ``on_start``)."""
        with _CONDITION:
            if self._state == _base.PENDING:
                self.started_at = time.time()
                self.set_running_or_notify_cancel()
        for member in self._members or ():
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

    def _stop_calls(self) -> Callable[[list[tuple[str, str]]], set[tuple[str, str]]] | None:
        """What stops this call even once it runs (``wrenpack.cancel``), if anything."""
        owner = self._owner
        return owner.stop_calls if owner is not None else self._stopper

    def _pin_call(self) -> bool:
        owner, pin = self._owner, self._pin
        if pin is _gone:
            return False
        if owner is not None:
            return owner.pin_call(self)
        return pin is None or pin()

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.done():
            owner = self._owner
            if owner is not None:
                # Launched now if it waits to be: the call that will read it must
                # not be behind that call in the backend's queue.
                owner.launch_call(self)
                if self.reference() is None:
                    owner.launched(self, 10)
                now = self._owner
                if now is not None and now is not owner:
                    now.launch_call(self)  # (a map's plan handed it to a job, whose window may hold it)
            elif self._launched is not None and self.reference() is None:
                if self._launch_now is not None:
                    self._launch_now()
                self._launched.wait(10)
            ref = self.reference()
            if ref is None:
                raise TypeError(f"the future of {self.label} is not a remote call's own; it can be pickled once it is done")
            if self._pin_call():
                refs.register(self)  # an unpickled reference to it here is this future again
                return refs.reduce_ref(ref)
        # Done (or its job is being removed right now, so done in a moment):
        # the future travels with its outcome.
        if self.cancelled():
            return (refs.finished, (self.label, "cancelled", None))
        exc = self.exception()
        return (refs.finished, (self.label, "ok", self.result()) if exc is None else (self.label, "error", exc))


class _PackedStatus(tuple):
    """A status record of scalars as ``(keys, *values)``: the keys shared by
    every record of the same shape, short strings interned. A third of the
    dict's memory: 100,000 done calls of a map held 130 MB of status dicts."""

    __slots__ = ()

    def unpack(self) -> dict[str, Any]:
        return dict(zip(self[0], self[1:]))


class _MemberStatus:
    """A grouped call's status record: its group's, with its place and duration."""

    __slots__ = ("base", "size", "index", "seconds")

    def __init__(self, base: Any, size: int, index: int, seconds: float | None) -> None:
        self.base, self.size, self.index, self.seconds = base, size, index, seconds

    def unpack(self) -> dict[str, Any]:
        base = self.base
        out = dict(base if type(base) is dict else base.unpack())
        out["group"] = {"size": self.size, "index": self.index}
        if self.seconds is not None:
            out["duration_s"] = self.seconds
        return out


#: the key tuples of the packed records seen (one per shape of record), at most ``_MAX_SHAPES``
_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_SHAPES = 512
_SCALARS = frozenset({int, float, bool, type(None)})


#: strings seen lately in status records (a host name, a job id, "ok"), each kept once
_STRINGS: dict[str, str] = {}
_MAX_STRINGS = 256


def _shared_str(text: str) -> str:
    """``text``, or the equal string a record seen lately had: what repeats in
    every record (the host, the job id) is kept once. Unique ones (a request
    id) pass through; a few hundred are remembered at most."""
    if len(text) > 64:
        return text
    seen = _STRINGS.get(text)
    if seen is None:
        if len(_STRINGS) >= _MAX_STRINGS:
            _STRINGS.clear()
        seen = _STRINGS.setdefault(text, text)
    return seen


def pack_status(value: Any, own: str = "") -> Any:
    """``value`` packed (``_PackedStatus``) if it is a dict of scalars; else as
    it is. ``own``: a string the record likely holds (its call's id), kept once."""
    if type(value) is not dict or len(value) < 4:
        return value
    values: list[Any] = []
    for v in value.values():
        t = type(v)
        if t is str:
            v = own if v == own else _shared_str(v)
        elif t not in _SCALARS:
            return value
        values.append(v)
    keys = tuple(value)
    shape = _SHAPES.get(keys)
    if shape is None:
        if len(_SHAPES) >= _MAX_SHAPES:
            return value
        shape = _SHAPES.setdefault(keys, keys)
    return _PackedStatus((shape, *values))


def _gone() -> bool:
    """A done future's pin: its outcome travels instead of a reference to its call."""
    return False


#: what a map's plan holds in place of a future that is done (``WrenFuture.hold_in``)
ENDED = WrenFuture("", "", "ended")
ENDED.set_result(None)


def cancel(futures: WrenFuture | Iterable[WrenFuture]) -> list[bool]:
    """Cancel calls, whether they wait or run: one that has not started is taken
    back (as ``fut.cancel()`` does, and its future is cancelled); one that runs is
    stopped (locally its processes are ended, every one it started; on Lambda
    the handler ends it within a few seconds of a sealed cancel marker) and its
    future fails with ``concurrent.futures.CancelledError`` (``CallCancelled``).
    ``fut.cancel()`` keeps the standard library's contract: only pending calls.

    A future wrenpack did not make (a ``ThreadPoolExecutor``'s: ``get``, ``wait`` and
    ``as_completed`` take those too) is cancelled as its own ``cancel()`` does it.

    Returns, per future, whether it was cancelled or will end cancelled (False:
    it was done already, its backend cannot stop a running call, or the call
    was launched with ``cancellable=False``)."""
    futs, _single = as_list(futures, "wrenpack.cancel()")
    out: list[bool | None] = [None] * len(futs)
    by_stopper: dict[int, tuple[Callable[..., Any], list[int]]] = {}
    for i, fut in enumerate(futs):
        if fut.done():
            out[i] = fut.cancelled()
            continue
        # (the class's cancel, not an instance's: a wrapper that maps its own cancel() here must not recurse;
        # a future wrenpack did not make, a ThreadPoolExecutor's, cancels as its own cancel() does)
        if WrenFuture.cancel(fut) if isinstance(fut, WrenFuture) else fut.cancel():
            out[i] = True
            continue
        stopper = fut._stop_calls() if isinstance(fut, WrenFuture) else getattr(fut, "_stopper", None)
        if stopper is None or not getattr(fut, "job_id", ""):
            out[i] = False
            continue
        by_stopper.setdefault(id(stopper.__self__) if hasattr(stopper, "__self__") else id(stopper), (stopper, []))[1].append(i)
    for stopper, indexes in by_stopper.values():
        stopped = stopper([(futs[i].job_id, futs[i].call_id) for i in indexes])
        for i in indexes:
            out[i] = (futs[i].job_id, futs[i].call_id) in stopped
    return [bool(x) for x in out]


def stop_running(fut: WrenFuture) -> bool:
    """Stop ``fut``'s call while it runs (what ``cancel`` does to a running call):
    the invocation of a group of calls, for its members' ``stop_calls``. True if
    it will end so."""
    stopper = fut._stop_calls()
    if stopper is None or not fut.job_id or fut.done():
        return False
    return (fut.job_id, fut.call_id) in stopper([(fut.job_id, fut.call_id)])


def as_list(futures: WrenFuture | Iterable[WrenFuture], what: str = "wrenpack.get()") -> tuple[list[WrenFuture], bool]:
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
    progress: bool | str | None = None,
    return_exceptions: bool = False,
) -> Any:
    """Results in order (one result for one future); raises the first failure
    in order, or with ``return_exceptions=True`` puts each failure (exception
    object) in its place. A result that is itself a future (or a list of them:
    a call that returned futures) is resolved to its result too.

    ``progress`` (``wrenpack.progress``): None shows a bar on a terminal and a
    widget in a notebook; True also prints a line every few seconds to stderr
    where it is not a terminal; False shows nothing; "bar", "notebook" or
    "log" choose one display.
    """
    futs, single = as_list(futures)
    _check_timeout(timeout, "wrenpack.get")
    deadline = None if timeout is None else time.monotonic() + timeout
    waitable = [f for f in futs if not isinstance(f, refs.CallRef)]
    mode = progress_display.choose(progress, len(futs))
    if mode is not None and waitable:
        progress_display.wait(waitable, timeout, mode)
    else:
        left = timeout
        if len(waitable) == 1 and isinstance(waitable[0], WrenFuture):
            left = waitable[0]._wait_here(timeout, "wrenpack.get")  # (one call: its reply may be read on this thread)
        pending = _wait_all(waitable, left)
        if pending:
            raise cf.TimeoutError(f"{pending} of {len(futs)} calls not finished after {timeout} s")
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


class _CountDown:
    """A ``concurrent.futures`` waiter (what ``wait`` installs in each future)
    that only counts the futures left: ``wait``'s own keeps three sets and a
    list of them, 15 MB for a map of 100,000 calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.left = 1  # (one for the installing: nothing ends the wait before every future has it)

    def add_result(self, future: cf.Future) -> None:
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.event.set()

    add_exception = add_cancelled = add_result

    def add(self) -> None:
        with self.lock:
            self.left += 1


def _check_timeout(timeout: Any, what: str) -> None:
    """A wait's ``timeout``: seconds (a number) or None; anything else is one line naming it."""
    if timeout is not None and (type(timeout) is bool or not isinstance(timeout, (int, float))):
        raise ConfigTypeError(f"{what}(timeout={timeout!r}): timeout must be a number of seconds, or None to wait "
                              "until the calls end")


def _wait_all(futures: Sequence[cf.Future], timeout: float | None) -> int:
    """Wait until every future is done, or ``timeout`` s; how many are not."""
    waiter = _CountDown()
    waiting = []
    for f in futures:
        with f._condition:  # type: ignore[attr-defined]
            if f._state not in _DONE_STATES:  # type: ignore[attr-defined]
                waiter.add()
                f._waiters.append(waiter)  # type: ignore[attr-defined]
                waiting.append(f)
    waiter.add_result(futures[0] if futures else cf.Future())  # (the installing is over)
    try:
        interrupts.wait_sliced(waiter.event.wait, waiter.event.is_set, timeout)  # (signals another thread took)
    finally:
        for f in waiting:
            with f._condition:  # type: ignore[attr-defined]
                try:
                    f._waiters.remove(waiter)  # type: ignore[attr-defined]
                except ValueError:
                    pass
    with waiter.lock:
        return max(0, waiter.left)


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


#: what ``wait``'s return_when may be (the standard library's own strings)
_RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


def wait(futures: Iterable[WrenFuture], timeout: float | None = None, return_when: str = ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures:  # type: ignore[name-defined]
    """Like ``concurrent.futures.wait``: returns ``(done, not_done)`` sets.

    An unpickled future whose call this process did not launch (``refs.CallRef``)
    resolves only by looking at the store, which ``concurrent.futures.wait`` never
    does (it waited forever): such futures are looked at here while waiting."""
    futs, _ = as_list(futures, "wrenpack.wait()")
    _check_timeout(timeout, "wrenpack.wait")
    if return_when not in _RETURN_WHEN:  # (the stdlib checks only once a future is pending, and in a bare line)
        raise ConfigError(f"wrenpack.wait(return_when={return_when!r}): must be one of FIRST_COMPLETED, FIRST_EXCEPTION "
                          "or ALL_COMPLETED (wrenpack.FIRST_COMPLETED, ..., as concurrent.futures names them)")
    polled = [f for f in futs if isinstance(f, refs.CallRef)]
    if not polled:
        return _wait_sliced(futs, timeout, return_when)
    # (in slices: the unpickled futures looked at, and in the main thread the signals another
    # thread took given their chance to run, ``interrupts.sliced``)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while True:
        for f in polled:
            f.done()  # (one look at the store; resolves it once its result is there)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, not_done = cf.wait(futs, timeout=interrupts.sliced(delay if left is None else min(delay, left)),
                                 return_when=return_when)
        if (not not_done or left == 0.0 or (return_when == FIRST_COMPLETED and done)
                or (return_when == FIRST_EXCEPTION and any(not f.cancelled() and f.exception() is not None for f in done))):
            return cf._base.DoneAndNotDoneFutures(done, not_done)  # type: ignore[attr-defined]
        delay = min(delay * 1.5, 0.5)


_DONE = (_base.CANCELLED_AND_NOTIFIED, _base.FINISHED)


def _wait_sliced(futures: Sequence[cf.Future], timeout: float | None, return_when: str) -> Any:
    """``concurrent.futures.wait``, its one wait cut into ``interrupts.sliced`` slices in the main
    thread (the signals another thread took then run: a stopped driver's SIGTERM), with its
    waiter installed once (waited again each slice, 100,000 futures cost seconds of CPU)."""
    fs = set(futures)
    with _base._AcquireFutures(fs):
        done = {f for f in fs if f._state in _DONE}
        not_done = fs - done
        if (return_when == FIRST_COMPLETED and done) or len(done) == len(fs) or (
                return_when == FIRST_EXCEPTION and any(not f.cancelled() and f.exception() is not None for f in done)):
            return _base.DoneAndNotDoneFutures(done, not_done)
        waiter = _base._create_and_install_waiters(fs, return_when)
    try:
        interrupts.wait_sliced(waiter.event.wait, waiter.event.is_set, timeout)
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)
    done.update(waiter.finished_futures)
    return _base.DoneAndNotDoneFutures(done, fs - done)


def _as_completed_sliced(futures: Sequence[cf.Future], timeout: float | None) -> Iterator[cf.Future]:
    """``concurrent.futures.as_completed``, its waits cut into ``interrupts.sliced`` slices in the
    main thread (``_wait_sliced``: a ``for`` loop over a stopped driver's calls ran them to
    their end before its SIGTERM did anything)."""
    end = None if timeout is None else time.monotonic() + timeout
    fs = set(futures)
    total = len(fs)
    with _base._AcquireFutures(fs):
        finished = {f for f in fs if f._state in _DONE}
        pending = fs - finished
        waiter = _base._create_and_install_waiters(fs, _base._AS_COMPLETED)
    try:
        yield from _base._yield_finished_futures(list(finished), waiter, ref_collect=(fs,))
        while pending:
            left = None if end is None else end - time.monotonic()
            if left is not None and left < 0:
                raise cf.TimeoutError(f"{len(pending)} (of {total}) futures unfinished")
            if not interrupts.wait_sliced(waiter.event.wait, waiter.event.is_set, left):
                continue  # (the timeout ran out: raised above)
            with waiter.lock:
                finished_now = waiter.finished_futures
                waiter.finished_futures = []
                waiter.event.clear()
            finished_now.reverse()  # (their finishing order)
            yield from _base._yield_finished_futures(finished_now, waiter, ref_collect=(fs, pending))
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)


def as_completed(futures: Iterable[WrenFuture], timeout: float | None = None) -> "AsCompleted":
    """The futures as they finish: ``for`` (like ``concurrent.futures.as_completed``)
    or ``async for`` (like ``asyncio.as_completed``), with each one's timeout rule."""
    futs, _ = as_list(futures, "wrenpack.as_completed()")
    _check_timeout(timeout, "wrenpack.as_completed")  # (here, not at the first next(): nothing is lost by then)
    return AsCompleted(futs, timeout)


class AsCompleted:
    """What ``as_completed`` returns: an iterator and an async iterator over the
    same futures, each yielded once, finished ones first.

    ``for``: ``concurrent.futures.as_completed``'s generator, unchanged (it
    raises ``concurrent.futures.TimeoutError`` once ``timeout`` has passed
    since the iteration began). ``async for``: waits without blocking the event
    loop and, as ``asyncio.as_completed`` does, counts ``timeout`` from the call
    to ``as_completed`` and then raises ``asyncio.TimeoutError``; what finished
    in time is yielded first, and no call is cancelled by the timeout or by
    leaving the loop early."""

    def __init__(self, futures: Sequence[cf.Future], timeout: float | None) -> None:
        self._futures = list(dict.fromkeys(futures))  # once each, in order
        self._given = len(self._futures)
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._sync: Iterator[cf.Future] | None = None

    def _left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def __iter__(self) -> "AsCompleted":
        return self

    def __next__(self) -> cf.Future:
        if self._sync is None:
            # (the futures are handed over once: the generator keeps only those not yet yielded)
            futures, self._futures = self._futures, []
            if any(isinstance(f, refs.CallRef) for f in futures):  # unpickled futures: see ``wait``
                self._sync = _as_completed_polling(futures, self._timeout)
            else:
                self._sync = _as_completed_sliced(futures, self._timeout)
        return next(self._sync)

    def __aiter__(self) -> AsyncIterator[cf.Future]:
        futures, self._futures = self._futures, []
        return self._iterate(futures)

    async def _iterate(self, futures: list[cf.Future]) -> AsyncIterator[cf.Future]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[cf.Future] = asyncio.Queue()
        sink = _LoopSink(loop, ready)
        todo = len(futures)
        # Unpickled futures whose calls this process did not launch resolve only when looked at
        # (``wait``): looked at while waiting, from a thread (each look may read the store).
        polled: list[cf.Future] = []
        futures.reverse()
        while futures:  # (emptied: the iteration holds only what the queue holds)
            fut = futures.pop()
            if fut.done():
                ready.put_nowait(fut)
            else:
                fut.add_done_callback(sink.put)  # (from the thread that finishes it)
                if isinstance(fut, refs.CallRef):
                    polled.append(fut)
            fut = None
        delay = 0.01
        try:
            while todo:
                if ready.empty():
                    left = self._left()
                    if left is not None and left <= 0:
                        await asyncio.sleep(0)  # what finished in time may still be on its way
                        if ready.empty():
                            raise self._timed_out(todo)
                    else:
                        look = polled and (left is None or delay < left)
                        try:
                            await asyncio.wait_for(_wait_not_empty(ready), delay if look else left)
                        except asyncio.TimeoutError:
                            if not look:
                                raise self._timed_out(todo) from None
                            polled = await asyncio.to_thread(_still_running, polled)
                            delay = min(delay * 1.5, 0.5)
                            continue
                todo -= 1
                yield ready.get_nowait()
        finally:
            sink.close()

    def _timed_out(self, todo: int) -> asyncio.TimeoutError:
        return asyncio.TimeoutError(f"{todo} of {self._given} calls not finished after {self._timeout} s")


def _still_running(futures: list[cf.Future]) -> list[cf.Future]:
    """Those of ``futures`` not done, each looked at once (a ``CallRef`` reads the store,
    and resolves, running its done-callbacks, once its result is there)."""
    return [f for f in futures if not f.done()]


async def _wait_not_empty(queue: "asyncio.Queue[Any]") -> None:
    """Return once ``queue`` holds an item, taking none: a wait that times out
    then loses nothing (``queue.get()`` cancelled just as it got one would)."""
    item = await queue.get()
    queue.put_nowait(item)


class _LoopSink:
    """Hands finished futures to an event loop's queue from whatever thread
    finishes them; after ``close`` (the iteration ended) it drops them, so a
    future that finishes later never touches a loop that may be gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: "asyncio.Queue[cf.Future]") -> None:
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._queue: asyncio.Queue[cf.Future] | None = queue

    def put(self, fut: cf.Future) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, fut)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting
            pass

    def close(self) -> None:
        self._loop = self._queue = None


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
