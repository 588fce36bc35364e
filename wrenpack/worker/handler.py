"""The worker handler: the one function Lambda (or a local worker) calls.

Flow of one call::

    event --> open store --> load function (cached per job) --> load arguments
          --> run --> write one result object: status + outcome (first complete write wins)

The event is a small JSON-able dict built by the client (``wrenpack.executor``)::

    {"wrenpack": 1, "store": {...}, "job_id": "...", "call_id": "00003",
     "func_key": "jobs/.../func.pkl", "args": {"inline": "<base64>"} | {"key": "..."},
     "attempt": 0, "segment": 0, "timeout_s": 60.0, "function_name": "...",
     "checkpoint": {"save_s": ..., "step_s": ...}}   # (what earlier segments learned)

The result object (``wrenpack.worker.result``) holds the status record and the
outcome. Outcomes are cloudpickled tuples: ``("ok", value)`` or
``("error", exc_bytes_or_None, type_name, message, traceback_text, kind)``,
with ``kind`` "user" for the user's own exceptions and "wrenpack" for ours.
Standard library and cloudpickle only.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable

import cloudpickle

from wrenpack import keys
from wrenpack.errors import MissingDependency, RemoteError, SerializationError, StoreError, TaskTimeout
from wrenpack.storage import Store, data as user_data, open_store
from wrenpack.worker import checkpoint, memory, result

_HOST = socket.gethostname()

_stores: dict[str, Store] = {}
_functions: "OrderedDict[str, Callable[..., Any]]" = OrderedDict()
_MAX_CACHED_FUNCTIONS = 16


class _DeadlineReached(BaseException):
    """Raised inside the user's code just before the invocation's deadline."""


#: Wall-clock time (time.time()) at which the current call is stopped; None outside a call.
soft_deadline: float | None = None


def _margin(remaining: float) -> float:
    return min(0.5, 0.1 * remaining)


def _fire(signum: int, frame: Any) -> None:
    raise _DeadlineReached()


_alarm_installed = False


def _arm_deadline(context: Any, timeout_s: float | None, started: float) -> Callable[[], None] | None:
    """Stop the call a little before Lambda would, so a timeout is reported as one.

    The deadline is the sooner of the invocation's (the context) and the call's
    own ``timeout`` (a Lambda function's timeout may be longer than the call's)."""
    global soft_deadline, _alarm_installed
    get_remaining = getattr(context, "get_remaining_time_in_millis", None)
    candidates = []
    if get_remaining is not None:
        candidates.append(get_remaining() / 1000.0)
    if timeout_s:
        candidates.append(float(timeout_s) - (time.time() - started))
    if not candidates:
        return None
    remaining = min(candidates)
    soft_deadline = time.time() + remaining - _margin(remaining)
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return None
    if not _alarm_installed or signal.getsignal(signal.SIGALRM) is not _fire:
        signal.signal(signal.SIGALRM, _fire)
        _alarm_installed = True
    signal.setitimer(signal.ITIMER_REAL, max(0.001, remaining - _margin(remaining)))
    return _disarm


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def _store_for(spec: dict[str, Any]) -> Store:
    token = repr(sorted(spec.items()))
    store = _stores.get(token)
    if store is None:
        store = _stores[token] = open_store(spec)
    return store


def _loads(data: bytes, what: str) -> Any:
    try:
        return cloudpickle.loads(data)
    except ModuleNotFoundError as exc:
        raise _missing(exc) from None
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported the same way
        raise SerializationError(
            f"{what} could not be unpickled ({type(exc).__name__}: {exc}); "
            "client and worker must run the same Python minor version and cloudpickle"
        ) from None


def _missing(exc: ModuleNotFoundError) -> MissingDependency:
    err = MissingDependency(
        f"the function imports module {exc.name!r}, which this worker's runtime does not have; "
        f"add it to the runtime (wrenpack build-runtime {exc.name}) or install it where the workers run"
    )
    err.name = exc.name
    return err


def _load_function(store: Store, key: str) -> Callable[..., Any]:
    fn = _functions.get(key)
    if fn is None:
        fn = _loads(store.get(key), "the function")
        _functions[key] = fn
        if len(_functions) > _MAX_CACHED_FUNCTIONS:
            _functions.popitem(last=False)
    else:
        _functions.move_to_end(key)
    return fn


def _load_args(store: Store, spec: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if "inline" in spec:
        data = base64.b64decode(spec["inline"])
    else:
        data = store.get(spec["key"])
    args, kwargs = _loads(data, "the call's arguments")
    return args, kwargs


def error_outcome(exc: BaseException, kind: str, tb_text: str | None = None) -> bytes:
    """Pickle an exception outcome; fall back to type name and message only."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception is still reported
        exc_bytes = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return cloudpickle.dumps(("error", exc_bytes, name, str(exc), tb_text, kind))


def _mark_start(store: Store, event: dict[str, Any], start: float) -> None:
    """A call that begins after ``mark_start_after`` (client clock) waited in
    Lambda's queue: one small object says when it began, so the client counts
    its deadline from here instead of reporting it lost. On time: no write."""
    after = event.get("mark_start_after")
    if after is None or start <= float(after):
        return
    try:
        store.put(keys.start_key(event["job_id"], event["call_id"]),
                  json.dumps({"start": start, "attempt": event.get("attempt", 0)}).encode())
    except StoreError:
        pass  # the client then reports it lost at its deadline, as before


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Run one call described by ``event``; return its status record."""
    global soft_deadline
    start = time.time()
    memory.reset_peak()
    children_before = memory.children_peak_mb()
    job_id, call_id = event["job_id"], event["call_id"]
    store = _store_for(event["store"])
    user_data.bind(store)  # wrenpack.store() inside the call is this store
    kind = "ok"
    extra_status: dict[str, Any] = {}
    disarm = None
    ckpt = None
    _mark_start(store, event, start)
    try:
        fn = _load_function(store, event["func_key"])
        args, kwargs = _load_args(store, event["args"])
        disarm = _arm_deadline(context, event.get("timeout_s"), start)
        ckpt = checkpoint.begin(event, store, lambda: soft_deadline)
        value = fn(*args, **kwargs)
        try:
            outcome = cloudpickle.dumps(("ok", value))
        except Exception as exc:  # noqa: BLE001
            raise SerializationError(
                f"the result (a {type(value).__name__}) could not be pickled: {exc}; return plain data instead"
            ) from None
    except checkpoint.SegmentDone:
        kind, outcome = "checkpointed", b""
    except (MissingDependency, SerializationError, StoreError) as exc:
        kind = "error"
        outcome = error_outcome(exc, "wrenpack", tb_text="")
    except _DeadlineReached:
        if ckpt is not None and ckpt.saves:
            # Overran after saving: the next segment resumes from that save.
            kind, outcome = "checkpointed", b""
        else:
            kind = "timeout"
            timeout = event.get("timeout_s")
            limit = f"its {timeout:g} s timeout" if timeout else "its timeout"
            if ckpt is not None and ckpt.used:
                fix = ("the time between two checkpoint offers was longer than the time left to save; "
                       "offer more often or raise timeout=")
            else:
                fix = ("raise timeout= (at most 900 s on Lambda) or make it resumable with "
                       "wrenpack.checkpoint so it is split across invocations")
            outcome = error_outcome(TaskTimeout(f"ran past {limit}; {fix}"), "wrenpack", tb_text="")
    except BaseException as exc:  # noqa: BLE001 - the user's exception, whatever it is
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "error"
        if isinstance(exc, SystemExit):
            # Re-raised on the client, a SystemExit would end the caller's program.
            tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            exc = RemoteError(f"the function called sys.exit({exc.code!r}); return a value or raise an exception instead")
            outcome = error_outcome(exc, "wrenpack", tb_text=tb_text)
        elif isinstance(exc, ModuleNotFoundError) and not isinstance(exc, MissingDependency):
            exc = _missing(exc)
            outcome = error_outcome(exc, "wrenpack", tb_text="")
        else:
            tb = exc.__traceback__
            # Drop the handler's own frame: the user sees only their code.
            tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
            outcome = error_outcome(exc, "user", "".join(traceback.format_exception(type(exc), exc, tb)))
    finally:
        if disarm is not None:
            disarm()
        soft_deadline = None
        checkpoint.end()
        user_data.bind(None)
    if ckpt is not None and ckpt.used:
        extra_status["checkpoint"] = ckpt.stats()
    if kind != "checkpointed" and ckpt is not None and (ckpt.restored or ckpt.saves):
        store.delete(keys.checkpoint_key(job_id, call_id))
    end = time.time()
    peak = memory.peak_rss_mb()
    children_after = memory.children_peak_mb()
    status = {
        "job_id": job_id,
        "call_id": call_id,
        "attempt": event.get("attempt", 0),
        "segment": event.get("segment", 0),
        "exit": kind,
        "start": start,
        "end": end,
        "duration_s": end - start,
        "peak_rss_mb": round(peak, 2) if peak is not None else None,
        "children_peak_rss_mb": round(children_after, 2) if children_after > children_before else None,
        "host": _HOST,
        "pid": os.getpid(),
        "python": "%d.%d" % sys.version_info[:2],
        "request_id": getattr(context, "aws_request_id", None),
    }
    status.update(extra_status)
    if kind == "checkpointed":
        # The call goes on in a new invocation; the client launches it on seeing this.
        store.put(keys.segment_key(job_id, call_id, int(event.get("segment", 0))), json.dumps(status).encode())
    else:
        status["first"] = store.put(keys.result_key(job_id, call_id), result.pack(status, outcome), if_absent=True)
    return status
