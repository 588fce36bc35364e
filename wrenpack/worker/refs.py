"""Futures that travel (issue 11): a pickled ``WrenFuture`` is a reference to
its call, so it can be passed into a remote function or returned from one.

::

    client: pickle(fut)  -> rebuild(ref)        ref = job, call, store spec, the job's secret
                         or finished(value)     (a future already done travels with its outcome)
    anywhere: unpickle   -> the live WrenFuture, if this process launched the call
                         -> else a CallRef that reads the call's sealed result
                            object from the store when asked (result()/done())

The secret travels inside the reference, which only ever travels inside a
pickled argument or result, itself sealed with its own job's secret. The
executor keeps a job's objects while a reference to one of its calls may be
read (until it shuts down). Worker side: standard library and cloudpickle only.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import weakref
from typing import Any

_live: "weakref.WeakValueDictionary[tuple[str, str], cf.Future]" = weakref.WeakValueDictionary()


def register(fut: Any) -> None:
    """Make ``fut`` the one an unpickled reference to its call resolves to, here."""
    _live[(fut.job_id, fut.call_id)] = fut


def rebuild(ref: dict[str, Any]) -> cf.Future:
    fut = _live.get((ref["job_id"], ref["call_id"]))
    return fut if fut is not None else CallRef(ref)


class DoneRef(cf.Future):
    """A future that was done when it was pickled (it travels with its outcome)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def __reduce__(self) -> tuple[Any, ...]:
        if self.cancelled():
            return (finished, (self.label, "cancelled", None))
        exc = self.exception(0)
        return (finished, (self.label, "ok", self.result(0)) if exc is None else (self.label, "error", exc))


def finished(label: str, state: str, value: Any) -> cf.Future:
    """A future that was done when it was pickled."""
    fut = DoneRef(label)
    if state == "ok":
        fut.set_result(value)
    elif state == "error":
        fut.set_exception(value)
    else:
        fut.cancel()
        fut.set_running_or_notify_cancel()
    return fut


_stores: dict[str, Any] = {}


def _store(spec: dict[str, Any]) -> Any:
    from wrenpack.storage import open_store

    token = repr(sorted(spec.items()))
    if token not in _stores:
        _stores[token] = open_store(spec)
    return _stores[token]


class CallRef(cf.Future):
    """The future of a call launched elsewhere; resolves by reading (and
    verifying) the call's result object from the store."""

    def __init__(self, ref: dict[str, Any]) -> None:
        super().__init__()
        self._ref = ref
        self.job_id: str = ref["job_id"]
        self.call_id: str = ref["call_id"]
        self.label: str = ref.get("label") or self.call_id
        self.status: dict[str, Any] | None = None
        self.logs: str | None = None
        self._fetching = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (self._ref,))

    def _poll(self) -> bool:
        """One look at the store; True once resolved."""
        if super().done():
            return True
        with self._fetching:
            if super().done():
                return True
            from wrenpack import auth, keys, protocol
            from wrenpack.errors import ObjectNotFound, WrenpackError

            ref = self._ref
            key = keys.result_key(ref["result_job"], ref["result_call"])
            try:
                blob = _store(ref["store"]).get(key)
            except ObjectNotFound:
                return False
            try:
                status, outcome = protocol.open_result(
                    auth.decode_secret(ref["secret"]), ref["result_job"], ref["result_call"], blob, f"result object of {self.label}"
                )
                if ref.get("item") is not None and outcome.ok:
                    outcome = protocol.Outcome.from_tuple(outcome.value[ref["item"]], f"result object of {self.label}")
            except WrenpackError as exc:
                self.set_exception(exc)
                return True
            self.status = status
            self.logs = status.pop("logs", None) if isinstance(status, dict) else None
            if outcome.ok:
                self.set_result(outcome.value)
            else:
                self.set_exception(outcome.rebuild(self.label))
            return True

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while not self._poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise cf.TimeoutError(f"{self.label} not finished after {timeout} s")
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, 0.5)

    def done(self) -> bool:
        return self._poll()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        return False  # only the executor that launched the call can take it back
