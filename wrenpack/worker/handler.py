"""The worker handler: the one function Lambda (or a local worker) calls.

Flow of one call::

    event --> open store --> load function (cached per job) --> load arguments
          --> run --> write one result object: status + outcome (first complete write wins)

The event is a small JSON-able dict built by the client and validated here,
both through ``wrenpack.wire.event.Event`` (version, schema, keys under the job's
prefix, on Lambda the store the function was deployed for). It carries the
job's secret: every object read from the store (function, inputs, checkpoint)
is verified with it before anything is unpickled, and every object written
(result, segment record, checkpoint) is sealed with it (``wrenpack.auth``).

The result object (``wrenpack.wire.result``) holds the status record
(``wrenpack.wire.status``) and the outcome (``wrenpack.wire.outcome``:
``("ok", value)`` or the error 6-tuple, with ``kind`` "user" for the user's
own exceptions and "wrenpack" for ours).
Standard library and cloudpickle only.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import _signal
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable

import cloudpickle

from wrenpack import auth, keys
from wrenpack.errors import (
    CorruptObject, MissingDependency, ProtocolError, RemoteError, SdkTooOld, SerializationError, StoreError, TaskTimeout,
)
from wrenpack.storage import Store, data as user_data, open_store
from wrenpack.wire import owner as owner_record, segment, start as start_mark, status as status_record
from wrenpack.wire.event import Event
from wrenpack.wire.outcome import error_tuple, user_traceback
from wrenpack.wire.result import is_authentic_result, seal_result, to_reply
from wrenpack.worker import callscope, checkpoint, handoff, memory, plain, refs, sdk, unpickling

log = logging.getLogger(__name__)
_HOST = socket.gethostname()
_PYTHON = "%d.%d" % sys.version_info[:2]

_stores: dict[str, Store] = {}
#: functions loaded, by content hash, least recently used first: (function, its pickle's size)
_functions: "OrderedDict[Any, tuple[Callable[..., Any], int]]" = OrderedDict()
_MAX_CACHED_FUNCTIONS = 16
#: pickle bytes of the functions kept besides the last one used: a function's
#: pickle is about the memory its closure and globals hold, and an earlier job's
#: large data must not stay in a warm worker, counted against later calls' memory
_MAX_CACHED_FUNCTION_BYTES = 32 * 1024 * 1024


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
    # (_signal's getsignal: signal.getsignal's enum conversion costs more than the check)
    if not _alarm_installed or _signal.getsignal(signal.SIGALRM) is not _fire:
        signal.signal(signal.SIGALRM, _fire)
        _alarm_installed = True
    signal.setitimer(signal.ITIMER_REAL, max(0.001, remaining - _margin(remaining)))
    return _disarm


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


#: (spec, what the check depends on, store) of the last event: a warm worker's calls name one store
_last_store: tuple[dict[str, Any], tuple[Any, ...], Store] | None = None


def _store_for(spec: dict[str, Any]) -> Store:
    """The event's store, once checked (``_check_store``); the same spec is not
    checked again while what the check depends on (the pinned store, whether
    this is Lambda) is the same."""
    global _last_store
    pinned = (os.environ.get("WRENPACK_STORE_URL"), _on_lambda())
    last = _last_store
    if last is not None and last[0] == spec and last[1] == pinned:
        return last[2]
    _check_store(spec)
    token = repr(sorted(spec.items()))
    store = _stores.get(token)
    if store is None:
        store = _stores[token] = open_store(spec)
    _last_store = (dict(spec), pinned, store)
    return store


def _on_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and os.environ.get("WRENPACK_LOCAL_WORKER") != "1"


def _check_store(spec: dict[str, Any]) -> None:
    """On Lambda the deployed function knows its store (``WRENPACK_STORE_URL``,
    set by ``wrenpack deploy``): an event naming another bucket or a prefix
    outside it is refused, whoever sent it."""
    from wrenpack.storage import parse_store_url

    pinned = os.environ.get("WRENPACK_STORE_URL")
    if not pinned:
        if _on_lambda():
            raise ProtocolError(
                "this Lambda function was deployed without WRENPACK_STORE_URL, so it cannot check the event's store; "
                "redeploy it with `wrenpack deploy --storage s3://BUCKET/PREFIX`"
            )
        if spec.get("type") == "local" and not os.path.isabs(str(spec.get("root", ""))):
            raise ProtocolError(f"the event's local store root {spec.get('root')!r} is not an absolute path")
        return
    want = parse_store_url(pinned)
    if want["type"] == "s3":
        ok = spec.get("type") == "s3" and spec.get("bucket") == want["bucket"] and _under(str(spec.get("prefix", "")), want["prefix"])
        where = f"s3://{spec.get('bucket')}/{spec.get('prefix', '')}"
    else:
        root = os.path.normpath(str(spec.get("root", "")))
        ok = spec.get("type") == "local" and os.path.isabs(root) and _under(root.strip("/"), want["root"].strip("/"))
        where = str(spec.get("root"))
    if not ok:
        raise ProtocolError(f"the event names the store {where}, outside this worker's {pinned}; invoke through wrenpack "
                            "with storage set to that location (or redeploy with --storage)")


def _under(prefix: str, base: str) -> bool:
    prefix, base = prefix.strip("/"), base.strip("/")
    return not base or prefix == base or prefix.startswith(base + "/")


def _loads(data: Any, what: str, buffers: Any = None) -> Any:
    """Unpickle bytes, or a file (a hand-off's stream)."""
    try:
        if hasattr(data, "read"):
            return cloudpickle.load(data, buffers=buffers)
        return cloudpickle.loads(data, buffers=buffers)
    except ModuleNotFoundError as exc:
        raise _missing(exc) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any decode failure is reported the same way
        part = unpickling.culprit(data, buffers)
        reason = f"unpickling it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
            str(exc).splitlines()[0][:200] if str(exc) else ""
        err = SerializationError(
            f"{what} could not be unpickled in the worker ({type(exc).__name__}{': ' + reason if reason else ''})"
            f"{'; what failed: ' + part if part else ''}; an object tied to the client's process "
            "(a ctypes library, an open file, socket or lock, a multiprocessing.Manager proxy) cannot be rebuilt "
            "in another one: create it inside the function"
        )
        # The client compares these with its own: a version mismatch is named only when there is one.
        err.worker_versions = (_PYTHON, cloudpickle.__version__)
        raise err from None


def _missing(exc: ModuleNotFoundError) -> MissingDependency:
    dist = MissingDependency.distribution(exc.name)
    provides = f" (the distribution {dist} provides it)" if dist != (exc.name or "").split(".")[0] else ""
    err = MissingDependency(
        f"the function imports module {exc.name!r}, which this worker's runtime does not have{provides}; "
        f"add it to the runtime (wrenpack build-runtime {dist}) or install it where the workers run"
    )
    err.name = exc.name
    return err


def _function_key(ev: Event) -> Any:
    """The cache key of the call's function; called before the call's memory is
    measured, it makes room first: the functions kept from earlier calls are
    cut down to the budget, so their memory is neither in this call's peak
    nor counted against its limit."""
    digest = ev.extra.get("func_hash")
    key: Any = digest if digest is not None else (ev.func_key, ev.secret)
    if _functions and next(reversed(_functions)) != key:  # (a map's calls: already the last one used)
        if key in _functions:
            _functions.move_to_end(key)
        _make_room(_functions.get(key))
    return key


def _make_room(own: tuple[Callable[..., Any], int] | None) -> None:
    """Drop the least recently used functions while more than ``_MAX_CACHED_FUNCTIONS``
    are kept counting the call's own, or more than ``_MAX_CACHED_FUNCTION_BYTES`` of
    pickle besides it. ``own``: the call's cached function (the last one), or None
    when it is still to be loaded."""
    count = len(_functions) + (own is None)
    older = sum(size for _fn, size in _functions.values()) - (own[1] if own is not None else 0)
    keep = 0 if own is None else 1
    while len(_functions) > keep and (count > _MAX_CACHED_FUNCTIONS or older > _MAX_CACHED_FUNCTION_BYTES):
        _key, (_fn, size) = _functions.popitem(last=False)
        count -= 1
        older -= size


def _load_function(store: Store, ev: Event, cache_key: Any) -> Callable[..., Any]:
    """The call's function, cached by its content hash across jobs (a warm
    worker does not load the same function again for every ``.remote()``).

    The hash comes in the event, which is as trusted as the secret beside it;
    the bytes it names are checked against it before they are unpickled and
    cached, whether they came inline in the event or sealed from the store.
    A client on another Python minor version is refused first: 3.11 to 3.13
    unpickle each other's code objects, which then crash or misbehave when run."""
    python = ev.extra.get("python")
    if python is not None and python != _PYTHON:
        raise SerializationError(
            f"{ev.label}: the client runs Python {python} but this worker runs Python {_PYTHON}, and functions travel as bytecode "
            f"that only the same minor version runs; call from Python {_PYTHON}, or run the workers on Python {python} "
            f"(wrenpack deploy --python {python}, or an image built with it)"
        )
    hit = _functions.get(cache_key)
    if hit is not None:
        return hit[0]
    digest = ev.extra.get("func_hash")
    inline = ev.extra.get("func_inline")
    if inline is not None:
        data: Any = base64.b64decode(inline)  # came inside the invocation, as inline arguments do
    else:
        # Verified before unpickling: a pickle someone else planted never runs.
        data = auth.unseal_view(ev.secret, keys.identity(ev.job_id, "func"), store.get(ev.func_key), ev.func_key)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CorruptObject(f"{ev.label}: the function's bytes do not match the event's func_hash; nothing was unpickled; re-run the call")
    fn = _loads(data, "the function")
    _functions[cache_key] = (fn, len(data))
    return fn


class _JobStore:
    """The store as one call writes to it. A job that stored nothing at launch
    sends its owner record in the event (``wrenpack clean`` needs one next to
    any object of a job); it is written before the call's first object under
    the job's prefix, and the status then says the job has objects to remove."""

    def __init__(self, store: Store, job_id: str, owner: dict[str, Any] | None) -> None:
        self._store = store
        self._prefix = keys.job_prefix(job_id)
        self._owner_key = keys.owner_key(job_id)
        self._owner = owner
        self.wrote = False

    def put(self, key: str, data: Any, if_absent: bool = False) -> bool:
        if key.startswith(self._prefix):
            self.wrote = True
            if self._owner is not None:
                owner, self._owner = self._owner, None
                try:
                    self._store.put(self._owner_key, owner_record.dumps(owner), if_absent=True)
                except StoreError:
                    log.debug("could not write the owner record %s", self._owner_key, exc_info=True)
        return self._store.put(key, data, if_absent=if_absent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _load_args(store: Store, ev: Event, context: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(ev.args) == 1 and "inline" in ev.args and not getattr(context, "handoff_fds", None):
        # Inline arguments came inside the invocation itself, as the secret did.
        return _loads(base64.b64decode(ev.args["inline"]), "the call's arguments")
    loads = lambda data, buffers=None: _loads(data, "the call's arguments", buffers)  # noqa: E731
    # Local worker: sealed memfds that came with the call over the private socket (none on Lambda).
    with handoff.call_blobs(context, ev.args, loads) as sent:
        if "inline" in ev.args:
            # Inline arguments came inside the invocation itself, as the secret did.
            data = base64.b64decode(ev.args["inline"])
        elif "handoff" in ev.args:
            return handoff.load(sent.take_main(), ev.args["handoff"], "call's arguments", private=True, loads=loads)
        else:
            key = ev.args["key"]
            data = auth.unseal_view(ev.secret, keys.identity(ev.job_id, "input", ev.call_id), store.get(key), key)
        args, kwargs = loads(data)
    return args, kwargs


def _dump_outcome(outcome: tuple[Any, ...], handoff_min: int | None, slab: int | None = None,
                  room: int | None = None) -> "bytes | handoff.Sealed":
    """Pickle a success outcome: bytes, or on a local worker that takes hand-offs
    (``event["handoff"]``) a memfd when it is larger than that: the one the driver
    gave for it (``slab``) while the result fits in it and in ``room``, else a
    sealed one of our own. Small plain data is pickled without cloudpickle's
    set-up (``wrenpack.worker.plain``: the same bytes)."""
    if slab is None:
        data = plain.dumps(outcome)
        if data is not None and (handoff_min is None or len(data) <= handoff_min):
            return data
    if handoff_min is None:
        if slab is not None:
            os.close(slab)
        return cloudpickle.dumps(outcome)
    return handoff.dump(outcome, handoff_min, slab=slab, room=room)


def _result_room(context: Any) -> int | None:
    """Bytes of result pickle that fit in the call's memory beside what the
    worker holds now. The driver's memfd is not charged to the worker: a result
    larger than this leaves it for one that is, so the call's memory limit
    counts the pickle as it would on Lambda, where it is in the process."""
    try:
        limit = int(context.memory_limit_in_mb) * 1024 * 1024
    except (AttributeError, TypeError, ValueError):
        return None
    rss_kb = memory.proc_status(fields=(b"VmRSS:",)).get(b"VmRSS:")
    return None if rss_kb is None else max(0, limit - rss_kb * 1024)


def _take_slab(context: Any) -> int | None:
    """The memfd the driver gave this call for its result (local worker), now ours."""
    slab = getattr(context, "result_slab", None)
    if slab is not None:
        context.result_slab = None
    return slab


def error_outcome(exc: BaseException, kind: str, tb_text: str | None = None) -> bytes:
    """Pickle an exception outcome (``wire.outcome.error_tuple``)."""
    return cloudpickle.dumps(error_tuple(exc, kind, tb_text))


def _mark_start(store: Store, event: dict[str, Any], start: float, secret: bytes) -> None:
    """A call that begins after ``mark_start_after`` (client clock) waited in
    Lambda's queue: one small object says when it began, so the client counts
    its deadline from here instead of reporting it lost. On time: no write."""
    after = event.get("mark_start_after")
    if after is None or start <= float(after):
        return
    try:
        mark = start_mark.seal_start(secret, event["job_id"], event["call_id"], start, event.get("attempt", 0))
        store.put(keys.start_key(event["job_id"], event["call_id"]), mark)
    except StoreError:
        pass  # the client then reports it lost at its deadline, as before


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Run one call described by ``event``; return its status record (plus the
    sealed result object under ``"result"`` when ``reply_limit`` allows).

    A malformed event raises ``ProtocolError`` (nothing runs, nothing is written);
    an event past its ``deadline`` is refused (``_expired``). A probe
    (``wrenpack.worker.sdk``) is answered with the worker's versions."""
    global soft_deadline
    if sdk.is_probe(event):
        return sdk.probe(event)
    start = time.time()
    ev = Event.from_dict(event)
    deadline = ev.extra.get("deadline")
    if deadline is not None and start > deadline:
        return _expired(ev, deadline, start)
    job_store = _JobStore(_store_for(ev.store), ev.job_id, ev.extra.get("owner"))
    store: Any = job_store
    func_key = _function_key(ev)  # (before the peak mark: it may free earlier functions' memory)
    peak_mark = memory.start_peak()
    children_before = memory.children_peak_mb()
    job_id, call_id = ev.job_id, ev.call_id
    user_data.bind(job_store._store)  # wrenpack.store() inside the call is this store
    refs.learn(ev.extra.get("ref_secrets"))  # futures among the arguments verify with these
    refs.enter_call(job_id, ev.secret, ev.extra.get("chain") or ())
    kind = "ok"
    run_s: float | None = None  # the function's own time, without loading it and its arguments
    extra_status: dict[str, Any] = {}
    disarm = None
    ckpt = None
    scope = callscope.CallScope(event)  # the call's env= and captured output
    _mark_start(store, event, start, ev.secret)
    try:
        # An SDK that cannot write the result fails the call before the user's code runs.
        sdk.check(ev.store)
        fn = _load_function(store, ev, func_key)
        args, kwargs = _load_args(store, ev, context)
        disarm = _arm_deadline(context, ev.timeout_s, start)
        ckpt = checkpoint.begin(ev, store, lambda: soft_deadline)
        run_start = time.perf_counter()
        try:
            value = scope.run(fn, *args, **kwargs)
        finally:
            run_s = time.perf_counter() - run_start
        try:
            with refs.sealing_scope():  # futures in the result carry no secret into the store
                slab = _take_slab(context)
                outcome = _dump_outcome(("ok", value), ev.extra.get("handoff"), slab,
                                        _result_room(context) if slab is not None else None)
        except Exception as exc:  # noqa: BLE001
            raise SerializationError(
                f"the result (a {type(value).__name__}) could not be pickled: {exc}; return plain data instead"
            ) from None
    except checkpoint.SegmentDone:
        kind, outcome = "checkpointed", b""
    except (MissingDependency, SerializationError, StoreError, SdkTooOld) as exc:
        kind = "error"
        outcome = error_outcome(exc, "wrenpack", tb_text="")
    except _DeadlineReached:
        if ckpt is not None and ckpt.saves:
            # Overran after saving: the next segment resumes from that save.
            kind, outcome = "checkpointed", b""
        else:
            kind = "timeout"
            timeout = ev.timeout_s
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
            # Without the handler's own frame: the user sees only their code.
            outcome = error_outcome(exc, "user", user_traceback(exc))
    finally:
        if disarm is not None:
            disarm()
        soft_deadline = None
        checkpoint.end()
        user_data.bind(None)
        refs.enter_call(None)
    if ckpt is not None and ckpt.used:
        extra_status["checkpoint"] = ckpt.stats()
    if kind != "checkpointed" and ckpt is not None and (ckpt.restored or ckpt.saves):
        store.delete(keys.checkpoint_key(job_id, call_id))
    end = time.time()
    peak = memory.peak_since(peak_mark)
    children_after = memory.children_peak_mb()
    status = status_record.record(
        job_id, call_id, ev.attempt, ev.segment, kind, start, end,
        peak_rss_mb=round(peak, 2) if peak is not None else None,
        children_peak_rss_mb=round(children_after, 2) if children_after > children_before else None,
        host=_HOST, pid=os.getpid(), python=_PYTHON, request_id=getattr(context, "aws_request_id", None),
    )
    if run_s is not None:
        status["run_s"] = run_s
    if ev.store.get("type") == "s3":
        status["botocore"] = sdk.checked()[0]  # the SDK that wrote it (`wrenpack doctor` shows it)
    status.update(extra_status)
    status.update(scope.status())
    if job_store.wrote:
        status["stored"] = True
    if kind == "checkpointed":
        # The call goes on in a new invocation; the client launches it on seeing this.
        record = segment.seal_segment(ev.secret, job_id, call_id, ev.segment, status)
        # "If absent" like results: the worker's IAM policy lets it create, never overwrite, under result/.
        store.put(keys.segment_key(job_id, call_id, ev.segment), record, if_absent=True)
        return status
    if isinstance(outcome, handoff.Sealed):
        # Local worker: the result goes back as a sealed memfd (local_main sends it), no MAC pass.
        # Its pages were not in the resident set the peak was read from; on Lambda they would be.
        if status["peak_rss_mb"] is not None:
            status["peak_rss_mb"] = round(status["peak_rss_mb"] + outcome.size / 2**20, 2)
        return dict(status, first=True, handoff=outcome)
    limit = ev.extra.get("reply_limit")
    if limit is not None and getattr(context, "private_reply", False) and len(outcome) <= limit:
        # Local worker whose backend asked for replies: status and outcome go back over
        # its private socketpair, which authenticates them (``wrenpack.backends.local.replies``).
        return dict(status, first=True, outcome=outcome)
    blob = seal_result(ev.secret, job_id, call_id, status, outcome)
    within = ev.extra.get("reply_within_s")
    if limit is not None and len(blob) <= limit and (within is None or end - start <= within):
        # Contract 2: small results travel back in the reply, never through the store.
        reply: dict[str, Any] = dict(status, first=True)
        reply["result"] = to_reply(blob, text=os.environ.get("WRENPACK_LOCAL_WORKER") != "1")
        if _reply_fits(reply):
            return reply
    rkey = keys.result_key(job_id, call_id)
    status["first"] = store.put(rkey, blob, if_absent=True)
    if not status["first"]:
        _check_existing_result(store, ev, rkey)
    return status


#: Lambda's synchronous response limit, 6 MB and 100 bytes, less room for the runtime's JSON spacing.
_RESPONSE_LIMIT = 6 * 1024 * 1024 + 100 - 1024


def _reply_fits(reply: dict[str, Any]) -> bool:
    """Whether a reply with the result inside stays under Lambda's response limit: the
    status beside it can be large (a captured log tail, escaped as JSON)."""
    result = reply["result"]
    if not isinstance(result, str):
        return True  # a local worker's reply: no Lambda limit
    rest = status_record.dumps({k: v for k, v in reply.items() if k != "result"})
    return len(result) + len(rest) <= _RESPONSE_LIMIT


def _expired(ev: Event, deadline: float, now: float) -> dict[str, Any]:
    """The reply to an event that came after its deadline: the client no longer waits
    for this attempt (it sent another, or gave up), so nothing runs and nothing is written."""
    log.warning("%s (call %s of job %s, attempt %d) came %.1f s after its deadline; not run",
                ev.label, ev.call_id, ev.job_id, ev.attempt, now - deadline)
    return {"job_id": ev.job_id, "call_id": ev.call_id, "attempt": ev.attempt, "segment": ev.segment,
            "exit": "expired", "deadline": deadline, "now": now}


def _check_existing_result(store: Store, ev: Event, rkey: str) -> None:
    """A result was already at the key: another delivery of this call (fine),
    or an object someone planted. The planted one is left in place: the
    client reads it, fails its check and fails the call with CorruptObject,
    so a squatted key ends in an error, never in a value wrenpack did not compute."""
    try:
        existing = store.get(rkey)
    except StoreError:
        return
    if not is_authentic_result(ev.secret, ev.job_id, ev.call_id, existing):
        log.warning("%s: the result key %s held an object wrenpack did not write for this call; "
                    "the call will fail with CorruptObject", ev.label, rkey)
