"""The worker handler: the one function Lambda (or a local worker) calls.

Flow of one call::

    event --> open store --> load function (cached per job) --> load arguments
          --> run --> write one result object: status + outcome (first complete write wins)

In a local worker and on Lambda the run happens in a process of the call's job
that holds no secret (``wrenpack.worker.isolation``): this process verifies
the function's and arguments' bytes, hands them over, answers what needs the
secret (``_Requests``: checkpoints, a sub-job's secret), watches the call's
cancel marker (``_CancelWatch``), and seals what comes back (``_finish``).
Called in-process without isolation (tests), it runs the call itself.

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
import copy
import errno
import hashlib
import itertools
import logging
import os
import _signal
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable, Iterable

import cloudpickle

from wrenpack import auth, keys
from wrenpack.errors import (
    CallCancelled, CorruptObject, EphemeralStorageExceeded, MemoryLimitExceeded, MissingDependency, ObjectNotFound,
    ProtocolError, RemoteError, SdkTooOld, SerializationError, StoreError, TaskTimeout, WorkerCrashed, WrenpackError,
    died_how, exc_text,
)
from wrenpack.storage import Store, data as user_data, open_store
from wrenpack.wire import owner as owner_record, segment, start as start_mark, status as status_record
from wrenpack.wire.checkpoint import Saves
from wrenpack.wire.event import _ID as _JOB_ID, Event
from wrenpack.wire.outcome import error_tuple, user_traceback
from wrenpack.wire.result import is_authentic_result, seal_result, to_reply
from wrenpack.worker import batch, callscope, checkpoint, handoff, isolation, memory, plain, refs, sdk, unpickling
from wrenpack.worker import cancel as cancel_marker
from wrenpack.worker.fds import close_quietly
from wrenpack.worker.context import LocalContext

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


def _store_for(spec: dict[str, Any], pinned: tuple[str | None, bool] | None = None) -> Store:
    """The event's store, once checked (``_check_store``); the same spec is not
    checked again while what the check depends on (the pinned store, whether
    this is Lambda) is the same. ``pinned``: those two as the caller knows them
    (a local worker's context: ``store_pin``), else read from the environment."""
    global _last_store
    if pinned is None:
        pinned = store_pin()
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


def store_pin() -> tuple[str | None, bool]:
    """What the event's store is checked against: the store the worker was
    deployed for (``WRENPACK_STORE_URL``), and whether this is Lambda."""
    return os.environ.get("WRENPACK_STORE_URL"), _on_lambda()


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
    else:
        root = os.path.normpath(str(spec.get("root", "")))
        ok = spec.get("type") == "local" and os.path.isabs(root) and _under(root.strip("/"), want["root"].strip("/"))
    if not ok:
        raise ProtocolError(f"the event names the store {_spec_location(spec)}, outside this worker's {pinned}; invoke "
                            "through wrenpack with storage set to that location (or redeploy with --storage)")


def _spec_location(spec: dict[str, Any]) -> str:
    """The store an event's spec names, as a message shows it: an S3 location as its URL, a
    local store as its folder (it read "s3://None/" when the worker served an S3 location)."""
    kind = spec.get("type")
    if kind == "s3":
        return f"s3://{spec.get('bucket')}/{spec.get('prefix', '')}"
    if kind == "local":
        return f"{spec.get('root')!r:.300} (a local folder)"
    return f"of type {kind!r:.60}"


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
        said = exc_text(exc)
        reason = f"unpickling it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
            said.splitlines()[0][:200] if said else ""
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
    cached, whether they came inline in the event or sealed from the store."""
    hit = _functions.get(cache_key)
    if hit is not None:
        _check_python(ev)
        return hit[0]
    data = _function_bytes(store, ev)
    fn = _loads(data, "the function")
    _functions[cache_key] = (fn, len(data))
    return fn


def _check_python(ev: Event) -> None:
    """A client on another Python minor version is refused first: 3.11 to 3.13
    unpickle each other's code objects, which then crash or misbehave when run."""
    python = ev.extra.get("python")
    if python is not None and python != _PYTHON:
        raise SerializationError(
            f"{ev.label}: the client runs Python {python} but this worker runs Python {_PYTHON}, and functions travel as bytecode "
            f"that only the same minor version runs; call from Python {_PYTHON}, or run the workers on Python {python} "
            f"(wrenpack deploy --python {python}, or an image built with it)"
        )


def _function_bytes(store: Store, ev: Event) -> Any:
    """The function's pickle, verified (inline: against ``func_hash``; from the
    store: its seal, then the hash); nothing is unpickled here."""
    _check_python(ev)
    digest = ev.extra.get("func_hash")
    inline = ev.extra.get("func_inline")
    if inline is not None:
        data: Any = base64.b64decode(inline)  # came inside the invocation, as inline arguments do
    else:
        # Verified before unpickling: a pickle someone else planted never runs.
        data = auth.unseal_view(ev.secret, keys.identity(ev.job_id, "func"), store.get(ev.func_key), ev.func_key)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CorruptObject(f"{ev.label}: the function's bytes do not match the event's func_hash; nothing was unpickled; re-run the call")
    return data


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
    set-up (``wrenpack.worker.plain``: the same bytes) and without a sealing
    scope (plain data holds no future); anything else inside one, so futures
    in the result carry no secret into the store."""
    if slab is None:
        data = plain.dumps(outcome)
        if data is not None and (handoff_min is None or len(data) <= handoff_min):
            return data
    with refs.sealing_scope():
        if handoff_min is None:
            if slab is not None:
                os.close(slab)
            return cloudpickle.dumps(outcome)
        return handoff.dump(outcome, handoff_min, slab=slab, room=room)


def _unpicklable_part(value: Any, depth: int = 4) -> tuple[str, Any] | None:
    """Where in a result that does not pickle the culprit is (``['key'][2]``, and it), looked
    for in its dicts, lists and tuples: a map_reduce's reducer values came as "the result (a
    dict)", the per-key dict the driver gets, whatever the value was. None: not found there
    (the container itself, or too deep). Only on the error path: each part is pickled again."""
    if depth <= 0:
        return None
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, part in items:
        try:
            cloudpickle.dumps(part)
        except Exception:  # noqa: BLE001 - this is the part that fails: look inside it
            inner = _unpicklable_part(part, depth - 1)
            here = f"[{key!r}]"
            return (here + inner[0], inner[1]) if inner is not None else (here, part)
    return None


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
    (``wrenpack.worker.sdk``) is answered with the worker's versions.

    In a worker that set up isolation (a local worker, a Lambda container:
    ``wrenpack.worker.isolation``) the user's code runs in a child process of
    its job that holds no secret; this process verifies, seals and writes."""
    if sdk.is_probe(event):
        return sdk.probe(event)
    start = time.time()
    callscope.run_after_reply()  # (what the last call here left, where no hook ran after its reply)
    ev = Event.from_dict(event)
    deadline = ev.extra.get("deadline")
    if deadline is not None and start > deadline:
        return _expired(ev, deadline, start)
    job_store = _JobStore(_store_for(ev.store, getattr(context, "store_pin", None)), ev.job_id, ev.extra.get("owner"))
    if isolation.active():
        try:
            return _handle_isolated(event, ev, job_store, context, start)
        finally:
            # On Lambda: the kept child stopped (or ended) before the runtime asks for the next event.
            isolation.freeze_child(ev.label)
    store: Any = job_store
    func_key = _function_key(ev)  # (before the peak mark: it may free earlier functions' memory)
    peak_mark = memory.start_peak()
    children_before = memory.children_peak_mb()
    user_data.bind(job_store._store)  # wrenpack.store() inside the call is this store
    refs.learn(ev.extra.get("ref_secrets"))  # futures among the arguments verify with these
    refs.enter_call(ev.job_id, ev.secret, ev.extra.get("chain") or ())
    _mark_start(store, event, start, ev.secret)
    try:
        ran = _execute(
            ev, event, context, start,
            load_fn=lambda: _load_function(store, ev, func_key),
            load_args=lambda: _load_args(store, ev, context),
            begin_checkpoint=lambda: checkpoint.begin(ev, store, lambda: soft_deadline),
            before=lambda: sdk.check(ev.store),  # an SDK that cannot write the result fails the call first
        )
    finally:
        user_data.bind(None)
        refs.enter_call(None)
    peak = memory.peak_since(peak_mark)
    children_after = memory.children_peak_mb()
    ran.extra["peak_rss_mb"] = round(peak, 2) if peak is not None else None
    ran.extra["children_peak_rss_mb"] = round(children_after, 2) if children_after > children_before else None
    if ran.ckpt is not None:
        ran.extra["ckpt_restored"] = ran.ckpt.restored
        ran.extra["ckpt_saves"] = ran.ckpt.saves
        if ran.ckpt.used:
            ran.extra["checkpoint"] = ran.ckpt.stats()
        _note_last_save(ran, ran.ckpt.last_save)
    return _finish(ev, event, store, job_store, context, start, ran)


def _note_last_save(ran: "_Ran", place: Any) -> None:
    """The place of the invocation's last save that was written (``wire.checkpoint.Saves``), in its
    status as ``ckpt_last``: the driver sends it with the call's next invocation (``ckpt_from``),
    which resumes from that save and no other. Counted where the saves are sealed (here, or a
    job's parent for its child), never taken from the call's own report."""
    if place is not None:
        ran.extra["ckpt_last"] = list(place)


class _Ran:
    """What running the user's code came to: the exit kind, the outcome's pickle
    (or a hand-off), the function's own time and what the status gains."""

    def __init__(self, kind: str, outcome: Any, run_s: float | None, extra: dict[str, Any], ckpt: Any = None) -> None:
        self.kind = kind
        self.outcome = outcome
        self.run_s = run_s
        self.extra = extra
        self.ckpt = ckpt
        #: the wait status of a job's child that died running the call: the worker ends so
        #: once the outcome is written (``_handle_isolated``)
        self.dies: int | None = None


def _execute(ev: Event, event: dict[str, Any], context: Any, start: float, *, load_fn: Callable[[], Any],
             load_args: Callable[[], Any], begin_checkpoint: Callable[[], Any], before: Callable[[], None] | None = None) -> _Ran:
    """Load the function and arguments, run the call, pickle its outcome: the part
    that runs the user's code (in the handler's process, or in a job's child).

    A fault while its outcome is made (wrenpack's, or an exception of the user's
    that defeats even ``error_tuple``) fails the call with a ``WrenpackError``
    naming it. Escaping, it ended the call's process without a reply: read as a
    crash in native code ("died (exit code 0)"), the call was run again."""
    try:
        return _execute_call(ev, event, context, start, load_fn=load_fn, load_args=load_args,
                             begin_checkpoint=begin_checkpoint, before=before)
    except Exception as exc:  # noqa: BLE001 - the call ran: its error, never a crash to retry
        log.warning("%s: its outcome could not be made", ev.label, exc_info=True)
        err = WrenpackError(f"its outcome could not be made ({type(exc).__name__}: {exc_text(exc)}); "
                            "this is a bug in wrenpack: report it with the remote traceback")
        return _Ran("error", error_outcome(err, "wrenpack", tb_text=traceback.format_exc()), None, {})


def _execute_call(ev: Event, event: dict[str, Any], context: Any, start: float, *, load_fn: Callable[[], Any],
                  load_args: Callable[[], Any], begin_checkpoint: Callable[[], Any],
                  before: Callable[[], None] | None = None) -> _Ran:
    """``_execute``'s work."""
    global soft_deadline
    kind = "ok"
    run_s: float | None = None  # the function's own time, without loading it and its arguments
    disarm = None
    ckpt = None
    scope = callscope.CallScope(event)  # the call's env= and captured output
    try:
        if before is not None:
            before()
        fn = load_fn()
        args, kwargs = load_args()
        disarm = _arm_deadline(context, ev.timeout_s, start)
        ckpt = begin_checkpoint()
        fn = _per_item(fn, ckpt)
        run_start = time.perf_counter()
        try:
            value = scope.run(fn, *args, **kwargs)
        finally:
            run_s = time.perf_counter() - run_start
        if ckpt.ended:
            _segment_ended("returned")
        if ckpt.late is not None:
            raise checkpoint.SaveTooLate(ckpt.late)  # (in another thread: ``Checkpoint.late``)
        try:
            slab = _take_slab(context)
            outcome: Any = _dump_outcome(("ok", value), ev.extra.get("handoff"), slab,
                                         _result_room(context) if slab is not None else None)
        except Exception as exc:  # noqa: BLE001
            where = _unpicklable_part(value)
            part = f"its {where[0]} (a {type(where[1]).__name__}): " if where is not None else ""
            raise SerializationError(
                f"the result (a {type(value).__name__}) could not be pickled: {part}{exc_text(exc)}; return plain data instead"
            ) from None
    except checkpoint.SegmentDone:
        kind, outcome = "checkpointed", b""
    except checkpoint.Refused as exc:
        kind = "error"
        outcome = error_outcome(exc.error, "wrenpack", tb_text="")
    except (MissingDependency, SerializationError, StoreError, SdkTooOld) as exc:
        kind = "error"
        outcome = error_outcome(exc, "wrenpack", tb_text="")
    except _DeadlineReached:
        if ckpt is not None and ckpt.saves:
            # Overran after saving: the next segment resumes from that save.
            kind, outcome = "checkpointed", b""
        else:
            kind = "timeout"
            outcome = _timeout_outcome(ev, ckpt is not None and ckpt.used, ckpt=ckpt)
    except checkpoint.SaveTooLate as exc:
        kind = "timeout"  # (a later segment runs once more from the save before it: ``checkpoint.LATE_RERUNS``)
        outcome = _timeout_outcome(ev, True, ckpt=ckpt, due_left=exc.left)
    except BaseException as exc:  # noqa: BLE001 - the user's exception, whatever it is
        kind = "error"
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # Re-raised on the client, a SystemExit would end the caller's program, and a
            # KeyboardInterrupt would read as the user's own ^C there. (Nothing interrupts a
            # call from outside with it: workers are not in the terminal's foreground group.)
            tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
                "raised KeyboardInterrupt (or got SIGINT)"
            exc = RemoteError(f"the function {what}; return a value or raise an exception instead")
            outcome = error_outcome(exc, "wrenpack", tb_text=tb_text)
        elif isinstance(exc, ModuleNotFoundError) and not isinstance(exc, MissingDependency):
            exc = _missing(exc)
            outcome = error_outcome(exc, "wrenpack", tb_text="")
        elif _on_lambda() and _disk_full(exc) is not None:
            # Lambda's /tmp is the only place a call can write, and a size-limited one: a full one
            # is the call's ephemeral storage, as the local backend, which measures it, says.
            tb_text = user_traceback(exc)
            exc = _tmp_full(ev, exc)
            outcome = error_outcome(exc, "wrenpack", tb_text=tb_text)
        else:
            # Without the handler's own frame: the user sees only their code.
            outcome = error_outcome(exc, "user", user_traceback(exc))
        if ckpt is not None and ckpt.ended:
            _segment_ended(f"raised {type(exc).__name__}")
            kind, outcome = "checkpointed", b""
        elif ckpt is not None and ckpt.late is not None:  # (the segment ran out of time in another thread)
            kind, outcome = "timeout", _timeout_outcome(ev, True, ckpt=ckpt, due_left=ckpt.late)
    finally:
        if disarm is not None:
            disarm()
        soft_deadline = None
        checkpoint.end()
    extra = scope.status()
    return _Ran(kind, outcome, run_s, extra, ckpt)


def _segment_ended(what: str) -> None:
    """A save ended the segment (``Checkpoint.ended``) in a thread whose ``SegmentDone``
    did not reach the call's own (a plain ``threading.Thread``: it ends that thread
    only), and the call's function then ``what`` (returned, or raised something).
    That is not the call's outcome: it ran on without the work the stopped thread was
    doing (a result taken from it was wrong, ``[]`` for ``[80]``). The segment ends
    checkpointed and the next one resumes from the save. (Raises ``SegmentDone``
    when it returned.)"""
    log.info("a checkpoint save ended this segment in another thread; the function then %s: "
             "not taken as the call's outcome, the next segment resumes from the save", what)
    if what == "returned":
        raise checkpoint.SegmentDone()


def _per_item(fn: Any, ckpt: Any) -> Any:
    """``fn``, or for a group of calls (``chunksize``: a ``worker.batch.Batch``) a
    copy that tells the checkpoint which of its calls runs (``Checkpoint.begin_item``):
    the group's calls share one checkpoint key, a call must resume only from a
    state it saved itself, and a call that returned or raised in an earlier
    segment is not run again (its outcome was saved with the group's checkpoint:
    a call runs once, its side effects too). The cached function is not changed."""
    if ckpt is None or not isinstance(fn, batch.Batch):
        return fn
    inner, indices = fn.fn, itertools.count()

    def one_call(*args: Any, **kwargs: Any) -> Any:
        index = next(indices)
        if ckpt.ended:
            raise checkpoint.SegmentDone()  # (the segment is over: the group's next segment runs this call)
        ckpt.begin_item(index)
        ended = ckpt.item_result(index)
        if ended is not None:  # (it ended in an earlier segment: not run again)
            if ended[0] == "ok":
                return ended[1]
            raise batch.Ended(ended)
        try:
            value = inner(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - kept per call, as ``Batch`` keeps it
            if ckpt.ended:  # (a save in another thread ended the segment: not this call's outcome)
                raise checkpoint.SegmentDone() from None
            outcome = error_tuple(exc, "user", user_traceback(exc))
            ckpt.item_failed(index, outcome)
            raise batch.Ended(outcome) from None
        if ckpt.ended:
            raise checkpoint.SegmentDone()
        ckpt.item_done(index, value)
        return value

    counted = copy.copy(fn)
    counted.fn = one_call
    return counted


def _disk_full(exc: BaseException) -> OSError | None:
    """``exc``, or the exception it was raised from or during, that says "no space left on device"."""
    seen = 0
    at: BaseException | None = exc
    while at is not None and seen < 16:
        if isinstance(at, OSError) and at.errno == errno.ENOSPC:
            return at
        at = at.__cause__ or at.__context__
        seen += 1
    return None


def _tmp_full(ev: Event, exc: BaseException) -> EphemeralStorageExceeded:
    """What the local backend says of a call past its /tmp, for one that filled Lambda's."""
    import tempfile

    try:
        st = os.statvfs(tempfile.gettempdir())
        size = f" ({st.f_blocks * st.f_frsize / (1024 * 1024):.0f} MB)"
    except OSError:
        size = ""
    full = _disk_full(exc)
    said = f"{type(exc).__name__}: {exc_text(exc)}"
    if full is not None and full is not exc:
        said += f", from {type(full).__name__}: {exc_text(full)}"
    return EphemeralStorageExceeded(
        f"{ev.label} filled its /tmp{size}, its ephemeral_storage ({said}); raise "
        "ephemeral_storage= (up to 10240 MB) or write less / stream to the store")


def _timeout_outcome(ev: Event, ckpt_used: bool, stopped: bool = False, ckpt: Any = None,
                     due_left: float | None = None) -> bytes:
    """The ``TaskTimeout`` of a call that ran out of time: what to change. A call that
    checkpoints is never told to checkpoint: when a save was the trouble (one under way
    at the deadline, or one due that would not have finished: ``due_left``, the time left
    then), it is told what a save takes of the timeout, and to raise it or save less."""
    timeout = ev.timeout_s
    limit = f"its {timeout:g} s timeout" if timeout else "its timeout"
    if stopped:
        limit += " and was stopped (it did not stop itself: signals could not reach it)"
    of = f" of the {timeout:g} s timeout" if timeout else ""
    saving = ckpt.saving_for() if ckpt is not None else None
    size = f", a {ckpt.state_bytes / 2**20:.0f} MB state" if ckpt is not None and ckpt.state_bytes >= 2**20 else ""
    if due_left is not None:
        fix = (f"a checkpoint save was due with {due_left:.2f} s left and the last one took {ckpt.save_s:.2f} s{of}{size}, "
               "so it could not finish; raise timeout= or save a smaller state")
    elif saving is not None:
        took = f"; the one before took {ckpt.save_s:.2f} s{size}" if ckpt.save_timed() else ""
        fix = (f"a checkpoint save was under way for {saving:.2f} s{of} when the time ran out{took}; "
               "raise timeout= or save a smaller state")
    elif ckpt_used:
        took = f" (a save takes {ckpt.save_s:.2f} s{of}{size})" if ckpt is not None and ckpt.save_timed() else ""
        fix = (f"the time between two checkpoint offers was longer than the time left to save{took}; "
               "offer more often or raise timeout=")
    else:
        fix = ("raise timeout= (at most 900 s on Lambda) or make it resumable with "
               "wrenpack.checkpoint so it is split across invocations")
    return error_outcome(TaskTimeout(f"ran past {limit}; {fix}"), "wrenpack", tb_text="")


def _finish(ev: Event, event: dict[str, Any], store: Any, job_store: _JobStore, context: Any, start: float, ran: _Ran) -> dict[str, Any]:
    """Status record, then the outcome: in the reply, as a hand-off, or sealed into the store."""
    job_id, call_id = ev.job_id, ev.call_id
    kind, outcome, extra = ran.kind, ran.outcome, ran.extra
    restored, saves = extra.pop("ckpt_restored", False), extra.pop("ckpt_saves", 0)
    kept = False
    if kind != "checkpointed" and (restored or saves):
        if kind == "timeout" and checkpoint.rerun_late(ev.segment, ev.attempt):
            pass  # (kept for the re-run)
        elif kind in ("error", "timeout") and _may_retry(ev):
            # The client may try the call again (``retry_on``): from the last save, not from scratch
            # (the work and side effects before it were done); it deletes the checkpoint if it does not.
            kept = True
        else:
            store.delete(keys.checkpoint_key(job_id, call_id))
    end = time.time()
    status = status_record.record(
        job_id, call_id, ev.attempt, ev.segment, kind, start, end,
        peak_rss_mb=extra.pop("peak_rss_mb", None), children_peak_rss_mb=extra.pop("children_peak_rss_mb", None),
        host=_HOST, pid=os.getpid(), python=_PYTHON, request_id=getattr(context, "aws_request_id", None),
    )
    if ran.run_s is not None:
        status["run_s"] = ran.run_s
    if kept:
        status["checkpoint_kept"] = True
    if ev.store.get("type") == "s3":
        status["botocore"] = sdk.checked()[0]  # the SDK that wrote it (`wrenpack doctor` shows it)
    status.update(extra)
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
    # (a worker that ends after this writes to the store: its reply would never go)
    limit = ev.extra.get("reply_limit") if ran.dies is None else None
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


# -- isolation: the parent's side ------------------------------------------------------
#: the exit kinds a job's child may report
_CHILD_KINDS = frozenset({"ok", "error", "timeout", "checkpointed"})
#: when a running call's cancel marker is first looked for (a GET each time on S3: a
#: call shorter than this costs none), and the longest gap between looks. Each gap is
#: as long as the call has run so far (looks at 2, 4, 8, 16, 32 s...): a call cancelled
#: t seconds in ends by about 2t, and a 60 s call looks 5 times, not 30 (every 2 s cost
#: $12 per million 60 s calls in GETs, twice the rest of an Event call's requests)
CANCEL_FIRST_S = 2.0
CANCEL_GAP_MAX_S = 60.0


def _may_retry(ev: Event) -> bool:
    """Whether the client may launch this call again after an error: it lists errors in
    ``retry_on`` and this attempt is not its last (``ckpt_retries``: its ``retries``)."""
    try:
        return int(ev.attempt or 0) < int(ev.extra.get("ckpt_retries") or 0)
    except (TypeError, ValueError):
        return False


def cancel_look_after(elapsed: float) -> float:
    """The gap before the next look for the cancel marker, after one ``elapsed`` s into the call."""
    return min(max(elapsed, CANCEL_FIRST_S), CANCEL_GAP_MAX_S)


def cancel_looks(run_s: float) -> int:
    """How many times a call that runs ``run_s`` seconds looks for its cancel marker."""
    looks, at = 0, CANCEL_FIRST_S
    while at <= run_s:
        looks += 1
        at += cancel_look_after(at)
    return looks

#: a child that dies this close to the deadline ran out of time
_CHILD_GRACE_S = 0.1


def _handle_isolated(event: dict[str, Any], ev: Event, job_store: _JobStore, context: Any, start: float) -> dict[str, Any]:
    """Run the call in its domain's child (``wrenpack.worker.isolation``): this
    process verifies the function and arguments, serves the child's requests
    that need the secret, watches the cancel marker, and seals the outcome."""
    store: Any = job_store
    _mark_start(store, event, start, ev.secret)
    fds: list[int] = list(getattr(context, "handoff_fds", None) or [])
    if context is not None and fds:
        context.handoff_fds = []  # ours now: given to the child (closed here after sending)
    saves = Saves.of(ev)
    try:
        ran = _run_in_child(ev, event, store, context, fds, start, saves)
        _note_last_save(ran, saves.last)
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        return _finish(ev, event, store, job_store, context, start, ran)
    finally:
        if ran.dies is not None:  # (written or not: the worker ends as the call's process did)
            isolation.die_like(ran.dies)


def _run_in_child(ev: Event, event: dict[str, Any], store: Any, context: Any, fds: list[int], start: float,
                  saves: Saves) -> _Ran:
    requests: _Requests | None = None
    try:
        sdk.check(ev.store)
        digest = ev.extra.get("func_hash")
        fkey = digest if digest is not None else "job:" + ev.job_id
        child = isolation.child_for(_domain_of(ev, fkey))
        func = b"" if fkey in child.funcs else _function_bytes(store, ev)
        if not func:
            _check_python(ev)
        args = ev.args
        if "key" in args and "handoff" not in args and "inline" not in args:
            arg_bytes: Any = auth.unseal_view(ev.secret, keys.identity(ev.job_id, "input", ev.call_id), store.get(args["key"]), args["key"])
            spec: dict[str, Any] = {k: v for k, v in args.items() if k != "key"}
        elif "inline" in args:
            arg_bytes = base64.b64decode(args["inline"])
            spec = {k: v for k, v in args.items() if k != "inline"}
        else:
            arg_bytes, spec = b"", dict(args)
        remaining = None
        get_remaining = getattr(context, "get_remaining_time_in_millis", None)
        if get_remaining is not None:
            remaining = get_remaining() / 1000.0
        deadline = None if remaining is None else time.time() + remaining
        head = {
            "t": "call", "job_id": ev.job_id, "call_id": ev.call_id, "attempt": ev.attempt, "segment": ev.segment,
            "timeout_s": ev.timeout_s, "function_name": ev.function_name, "checkpoint": ev.checkpoint, "start": start,
            "fkey": fkey, "func_len": len(func), "args": spec, "deadline": deadline,
            "memory_mb": getattr(context, "memory_limit_in_mb", None),
            "request_id": getattr(context, "aws_request_id", None),
            "store": ev.store, "extra": {k: ev.extra[k] for k in _CHILD_EXTRA if k in ev.extra},
        }
        call_env = getattr(context, "call_env", None)
        if call_env is None:
            call_env = {k: os.environ[k] for k in _CALL_ENV if k in os.environ}
        if call_env != child.env:
            head["env_set"] = child.env = call_env  # (the child keeps what it was given: sent when it changes)
        blob = bytes(func) + bytes(arg_bytes) if func else arg_bytes
        # The child stops itself just before the deadline; one stuck where signals
        # do not reach is given up on at the deadline (Lambda would end the invocation).
        wait_until = None if deadline is None else deadline - 0.02
        watch = _CancelWatch(store, ev) if ev.extra.get("cancel_key") else None
        requests = _Requests(store, ev, saves)
        got, data, got_fds = isolation.run_call(child, head, blob, fds, requests, wait_until, watch)
        if got.get("func_kept") is True:
            # (only a function the child loaded and keeps: one whose load failed, a module it
            # needs missing say, is sent again with the next call, which fails the same way;
            # before, that call came without it: "the function did not come with the call")
            child.funcs.add(fkey)
        if not isolation.spare_after_reply:
            isolation.request_spare()
        return _child_outcome(ev, got, data, got_fds)
    except (MissingDependency, SerializationError, StoreError, SdkTooOld, CorruptObject) as exc:
        return _Ran("error", error_outcome(exc, "wrenpack", tb_text=""), None, {})
    except isolation.Cancelled:
        isolation.end_child()
        log.info("%s: cancelled (its cancel marker appeared)", ev.label)
        return _Ran("error", error_outcome(CallCancelled(f"{ev.label} was cancelled (wrenpack.cancel) and stopped, with every "
                                                   "process it started"), "wrenpack", tb_text=""),
                    None, {"cancelled": True})
    except isolation.ChildGone as exc:
        child = isolation.current_child()
        status = child.exit_status(0.5) if child is not None and exc.died else None
        isolation.end_child()
        get_remaining = getattr(context, "get_remaining_time_in_millis", None)
        if get_remaining is not None and get_remaining() / 1000.0 <= _CHILD_GRACE_S:
            saves = requests.saves if requests is not None else 0
            if saves:
                # Stopped after saving (its reply came late, or it was stuck where the soft
                # deadline cannot reach): the next segment goes on from the save, as for a
                # segment that overran the soft deadline after one (``_execute``).
                log.info("%s: stopped at its deadline after a checkpoint save; the next segment resumes from it", ev.label)
                return _Ran("checkpointed", b"", None, {"ckpt_saves": saves})
            used = requests is not None and requests.used_checkpoint
            return _Ran("timeout", _timeout_outcome(ev, used, stopped=True), None, {})
        if not exc.died:
            # The job's own code broke its channel: its call fails, nothing else does.
            return _Ran("error", error_outcome(WrenpackError(f"{ev.label}: {exc}"), "wrenpack", tb_text=""), None, {})
        if not isolation.stopping:  # (stopped on purpose: the driver is gone, nobody is told of this call)
            # A local worker's driver tells the user itself (MemoryLimitExceeded for the kernel's
            # OOM kill, WorkerCrashed): at WARNING this line came on the user's terminal too.
            log.log(logging.INFO if isinstance(context, LocalContext) else logging.WARNING,
                    "%s: the process running the call died (wait status %s); this worker ends the same way", ev.label, status)
            if not isinstance(context, LocalContext):
                crash = _crash_error(ev, status, context)
                if crash is not None:
                    # Lambda: the call's outcome is written first (``_handle_isolated`` dies after
                    # ``_finish``), so an Event call fails now, as locally, not at its deadline.
                    # (``crashed``: the client may run it again, as ``retries`` allow; not one the
                    # memory limit stopped, which would be stopped again at the same memory)
                    ran = _Ran("error", error_outcome(crash, "wrenpack", tb_text=""), None,
                               {"crashed": died_how(_returncode(status))} if isinstance(crash, WorkerCrashed) else {})
                    ran.dies = status
                    return ran
        isolation.die_like(status)
        raise


#: the kernel's OOM kills in this worker's memory cgroup at its start (Lambda), then at each look
#: (``memory.oom_kills``; None: not readable here)
_oom_seen: int | None = None


def _returncode(status: int) -> int:
    """A wait status as ``subprocess`` gives a process's end (a signal's number negated), which
    ``errors.died_how`` names as the local backend does: "exit code 3", "signal SIGSEGV"."""
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:  # (neither an exit nor a signal)
        return status


def _crash_error(ev: Event, status: int | None, context: Any) -> WrenpackError | None:
    """What a Lambda worker whose job's child died under it (``status``: its wait status)
    writes as the call's outcome before it ends the same way: the local backend's error
    for that death (``backends.local.process.Worker.death_error``). The client retries a
    crash as ``retries`` allow (the status's ``crashed``), so the attempts are counted
    as locally. None, to write nothing: the status is unknown, or a SIGKILL not known
    to be the kernel's OOM killer's (the memory limit ends the whole sandbox on Lambda,
    which then writes nothing either: ``WorkerLost``, or the reply's memory error)."""
    global _oom_seen
    if status is None:
        return None
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        before, now = _oom_seen, memory.oom_kills()
        _oom_seen = now
        if before is None or now is None or now <= before:
            return None
        limit = getattr(context, "memory_limit_in_mb", None) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or "?"
        # (worded as the client words Lambda's own reply for a runtime its memory limit ended)
        return MemoryLimitExceeded(
            f"{ev.label} was killed at its function's {limit} MB memory limit (the kernel's OOM killer ended the "
            "process running the call); raise memory= (see `wrenpack profile`)")
    return WorkerCrashed.after(ev.label, _returncode(status), int(ev.attempt or 0) + 1)


def _domain_of(ev: Event, fkey: str) -> str:
    """Which job process may run the call: its event's isolation domain (an event
    without one, from an older client: its job) and its function. Calls of one
    function from one driver process share a process; a call of other code
    never runs where another function's calls ran, whatever domain it names."""
    domain = ev.extra.get("domain")
    return f"{domain}/{fkey}" if domain is not None else f"job:{ev.job_id}/{fkey}"


#: the event fields a child needs (never the secret, nor the domain)
_CHILD_EXTRA = ("ref_secrets", "chain", "handoff", "env", "capture_logs", "python")
#: environment variables the parent sets per call (a local worker's limits) that the child takes on
#: (a local worker names them in its context, ``call_env``, as it sets them: not read on every call)
_CALL_ENV = ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_TIMEOUT", "WRENPACK_EPHEMERAL_STORAGE_MB")


#: what a child's report may add to the call's status, and the types each may have (a bool is no number here)
_CHILD_FIELDS = (("run_s", (int, float)), ("logs", (str,)), ("checkpoint", (dict,)), ("peak_rss_mb", (int, float)),
                 ("children_peak_rss_mb", (int, float)), ("ckpt_restored", (bool,)), ("ckpt_saves", (int,)))


def _child_outcome(ev: Event, got: dict[str, Any], data: bytearray, got_fds: list[int]) -> _Ran:
    """The child's report, checked: it can say anything about its own call, nothing else."""
    kind = got.get("kind")
    if kind not in _CHILD_KINDS:
        for fd in got_fds:
            os.close(fd)
        raise isolation.ChildGone(f"the call's process reported the exit kind {kind!r}")
    extra: dict[str, Any] = {}
    for name, types in _CHILD_FIELDS:
        value = got.get(name)
        if value is None:
            continue
        if type(value) in types or (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
            extra[name] = value
    run_s = extra.pop("run_s", None)
    layout = got.get("handoff")
    if layout is not None:
        if ev.extra.get("handoff") is None:
            # (nothing asked for one: a descriptor its code passed this process is not held here)
            for fd in got_fds:
                os.close(fd)
            raise isolation.ChildGone("the call's process sent a hand-off its event did not ask for", died=False)
        if len(got_fds) != 1 or not isinstance(layout, dict) or not isinstance(layout.get("size"), int):
            for fd in got_fds:
                os.close(fd)
            raise isolation.ChildGone("the call's process sent a hand-off without its memory file")
        return _Ran(kind, handoff.Sealed(got_fds[0], layout), run_s, extra)
    for fd in got_fds:
        os.close(fd)
    return _Ran(kind, bytes(data), run_s, extra)


class _Requests:
    """What the job's child asks of the parent while a call runs: what needs the secret."""

    def __init__(self, store: Any, ev: Event, sealing: Saves) -> None:
        self.store = store
        self.ev = ev
        #: the places of the call's saves, and the save it may resume from
        self.sealing = sealing
        #: whether the call used its checkpoint (a restore or a save): its timeout then names that fix
        self.used_checkpoint = False

    @property
    def saves(self) -> int:
        """Checkpoints written in this segment (its saves are numbered 1, 2, ... as they are
        written: ``Saves``): a child given up on at the deadline after one goes on from it
        in the next segment (``_run_in_child``)."""
        last = self.sealing.last
        return last[2] if last is not None else 0

    def __call__(self, head: dict[str, Any], blob: bytearray) -> tuple[dict[str, Any], Any]:
        try:
            return self._answer(head, blob)
        except WrenpackError as exc:
            # Raised in the call as this type with this message (``isolation._Rpc.ask``),
            # which names the problem already: not prefixed with the type's name again.
            return {"error": str(exc), "kind": type(exc).__name__}, b""

    def _answer(self, head: dict[str, Any], blob: bytearray) -> tuple[dict[str, Any], Any]:
        ev = self.ev
        what = head.get("t")
        if what in ("ckpt_get", "ckpt_put"):
            self.used_checkpoint = True
        if what == "ckpt_get":
            key = keys.checkpoint_key(ev.job_id, ev.call_id)
            try:
                sealed = self.store.get(key)
            except ObjectNotFound:
                return {"none": True}, b""
            return {}, self.sealing.open(sealed)
        if what == "ckpt_put":
            place, sealed = self.sealing.seal(bytes(blob))
            self.store.put(keys.checkpoint_key(ev.job_id, ev.call_id), sealed)
            self.sealing.saved(place)
            return {"bytes": len(sealed)}, b""
        if what == "derive":
            job_id = head.get("job_id")
            if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
                raise ProtocolError(f"{job_id!r} is not a wrenpack job id")
            return {"secret": auth.encode_secret(refs.derive(ev.secret, job_id))}, b""
        raise ProtocolError(f"unknown request {what!r}")


class _CancelWatch:
    """Whether the call's cancel marker (``event["cancel_key"]``) is in the store:
    looked for ``CANCEL_FIRST_S`` into the call, then after gaps as long as it has
    run (``cancel_look_after``); only a marker sealed with the job's secret that
    names this call (or all of the job's) counts."""

    def __init__(self, store: Any, ev: Event) -> None:
        self.store = store
        self.ev = ev
        self.key = str(ev.extra["cancel_key"])
        self.start = time.monotonic()
        self.next = self.start + CANCEL_FIRST_S

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + cancel_look_after(now - self.start)
        try:
            blob = self.store.get(self.key)
        except (ObjectNotFound, StoreError):
            return False
        except Exception:  # noqa: BLE001 - a store hiccup never fails the call
            return False
        return cancel_marker.names_call(self.ev.secret, self.ev.job_id, self.key, blob, self.ev.call_id)


# -- isolation: the child's side ---------------------------------------------------------
_child_store: tuple[Any, Store] | None = None


#: Lambda's limit on a process's open file descriptors (soft and hard: a call cannot raise it there)
MAX_OPEN_FILES = 1024


def hold_open_files(limit: int = MAX_OPEN_FILES) -> None:
    """Hold this process (a job's child, which runs the user's code) and what it
    starts to ``limit`` open files, as Lambda does: an open past it fails with
    EMFILE there, and a call that worked under the machine's larger limit would
    fail only once deployed. Checked on every call (two system calls), since a
    call may raise its own limit where the worker runs as root."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft > limit or hard > limit or soft == resource.RLIM_INFINITY or hard == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (OSError, ValueError):
        log.debug("could not hold the call's process to %d open files", limit, exc_info=True)


def run_in_child(head: dict[str, Any], blob: bytearray, fds: list[int], rpc: Any) -> tuple[dict[str, Any], Any, list[int]]:
    """Run one call in a job's child (``isolation._child_main``): the outcome's
    pickle as raw bytes (or a hand-off memfd), and what the status gains."""
    global _child_store
    hold_open_files()
    start = float(head.get("start") or time.time())
    env_set = head.get("env_set")
    if env_set:  # (sent when it changes: the process keeps it)
        os.environ.update(env_set)
    extra = dict(head.get("extra") or {})
    ev = object.__new__(Event)
    ev.__dict__.update(job_id=head["job_id"], call_id=head["call_id"], store=head["store"], secret=b"",
                       args=head["args"], attempt=head["attempt"], segment=head["segment"], timeout_s=head["timeout_s"],
                       function_name=head["function_name"], checkpoint=head["checkpoint"], extra=extra)
    deadline = head.get("deadline")
    context = LocalContext(function_name=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "wrenpack"),
                           memory_mb=int(head.get("memory_mb") or 0),
                           deadline=deadline if deadline is not None else time.time() + 900.0,
                           request_id=head.get("request_id") or None)  # (the invocation's: none made here)
    if deadline is None:
        context.get_remaining_time_in_millis = None  # type: ignore[assignment]
    context.handoff_fds = list(fds)
    func_len = int(head.get("func_len") or 0)
    view = memoryview(blob)
    spec = head["store"]
    if _child_store is None or _child_store[0] != spec:
        _child_store = (dict(spec), _LazyStore(spec))
    store = _child_store[1]

    def load_fn() -> Any:
        fkey = head["fkey"]
        hit = _functions.get(fkey)
        if hit is not None:
            return hit[0]
        if not func_len:
            raise CorruptObject(f"{ev.label}: the function did not come with the call; re-run it")
        fn = _loads(view[:func_len], "the function")
        _functions.clear()  # one domain's process: its function, nothing else
        _functions[fkey] = (fn, func_len)
        return fn

    def load_args() -> Any:
        args = ev.args
        rest = view[func_len:]
        if context.handoff_fds or "handoff" in args:
            return _load_child_args(ev, args, rest, context)
        return _loads(rest, "the call's arguments")

    peak_mark, children_before = _call_marks()
    user_data.bind(store)
    refs.learn(extra.get("ref_secrets"))
    refs.enter_call(ev.job_id, b"", extra.get("chain") or (), derive=lambda job_id: _ask_secret(rpc, job_id))
    try:
        ran = _execute(ev, ev_dict(head, extra), context, start, load_fn=load_fn, load_args=load_args,
                       begin_checkpoint=lambda: checkpoint.begin_with(ChildCheckpoint(rpc, ev, lambda: soft_deadline)))
    finally:
        user_data.bind(None)
        refs.enter_call(None)
        close_quietly(*context.handoff_fds, context.result_slab)
    peak = memory.peak_since(peak_mark)
    children_after = memory.children_peak_mb()
    reply: dict[str, Any] = {"t": "done", "kind": ran.kind, "run_s": ran.run_s, **ran.extra,
                             "func_kept": head.get("fkey") in _functions,
                             "peak_rss_mb": round(peak, 2) if peak is not None else None,
                             "children_peak_rss_mb": round(children_after, 2) if children_after > children_before else None}
    if ran.ckpt is not None:
        reply["ckpt_restored"] = ran.ckpt.restored
        reply["ckpt_saves"] = ran.ckpt.saves
        if ran.ckpt.used:
            reply["checkpoint"] = ran.ckpt.stats()
    if isinstance(ran.outcome, handoff.Sealed):
        sealed = ran.outcome
        fd, sealed.fd = sealed.fd, None
        reply["handoff"] = sealed.layout
        return reply, b"", [fd] if fd is not None else []
    return reply, ran.outcome, []


#: (when, the peak meter's mark, the children's peak) taken after the last reply went (``after_reply``)
_marks: tuple[float, Any, float] | None = None
#: marks older than this are taken again when the call comes: memory a thread the
#: last call left running used between calls is not this call's beyond that long
MARKS_KEPT_S = 0.05


def after_reply() -> None:
    """In a job's process, once a call's reply has gone: what the call left for
    then (``callscope.after_reply``), and the next call's memory
    marks (the peak meter's reset, the children's peak) are taken now, while the
    parent and the driver handle the reply, not on the next call's clock."""
    global _marks
    callscope.run_after_reply()  # (first: what it frees is not the next call's memory)
    _marks = (time.monotonic(), memory.start_peak(), memory.children_peak_mb())


def _call_marks() -> tuple[Any, float]:
    """The call's memory marks: those ``after_reply`` took if they are recent,
    else taken now."""
    global _marks
    marks, _marks = _marks, None
    if marks is not None and marks[1] is not None and time.monotonic() - marks[0] <= MARKS_KEPT_S:
        return marks[1], marks[2]
    return memory.start_peak(), memory.children_peak_mb()


class _LazyStore:
    """The call's store in a job's child, opened on first use: most calls never
    touch it, and opening an S3 store imports boto3."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._store: Store | None = None

    def __getattr__(self, name: str) -> Any:
        if self._store is None:
            self._store = open_store(self.spec)
        return getattr(self._store, name)


def ev_dict(head: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What ``callscope.CallScope`` reads of the event."""
    return {"env": extra.get("env"), "capture_logs": extra.get("capture_logs")}


def _load_child_args(ev: Event, args: dict[str, Any], rest: memoryview, context: Any) -> Any:
    loads = lambda data, buffers=None: _loads(data, "the call's arguments", buffers)  # noqa: E731
    with handoff.call_blobs(context, args, loads) as sent:
        if "handoff" in args:
            return handoff.load(sent.take_main(), args["handoff"], "call's arguments", private=True, loads=loads)
        return loads(rest)


def _ask_secret(rpc: Any, job_id: str) -> bytes:
    answer, _ = rpc.ask({"t": "derive", "job_id": job_id})
    return auth.decode_secret(answer["secret"])


class ChildCheckpoint(checkpoint.Checkpoint):
    """A checkpoint in a job's child: the parent opens and seals it (it holds the secret)."""

    def __init__(self, rpc: Any, ev: Event, deadline_fn: Any) -> None:
        super().__init__(store=rpc, key=keys.checkpoint_key(ev.job_id, ev.call_id), deadline_fn=deadline_fn,
                         label=ev.label, learned=ev.checkpoint or {}, event=ev)
        self._rpc = rpc

    def _fetch(self) -> Any:
        answer, data = self._rpc.ask({"t": "ckpt_get"})
        return None if answer.get("none") else bytes(data)

    def _push(self, data: bytes) -> int:
        answer, _ = self._rpc.ask({"t": "ckpt_put"}, data)
        return int(answer.get("bytes") or len(data))


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
    except CorruptObject:  # (not even a file: a FIFO, a link planted there)
        existing = b""
    except StoreError:
        return
    if not is_authentic_result(ev.secret, ev.job_id, ev.call_id, existing):
        log.warning("%s: the result key %s held an object wrenpack did not write for this call; "
                    "the call will fail with CorruptObject", ev.label, rkey)


def warm_up() -> None:
    """Run a call of nothing through ``run_in_child``, in a job's process that waits
    for its first call (``isolation._child_main``): the modules, code and objects the
    call path touches are then copied from the zygote's pages (a fork shares them
    until written, and reference counts write) before a call waits for it. It sends
    nothing, opens no store and holds no secret; what it left is dropped."""
    global _child_store
    fn = cloudpickle.dumps(lambda x: x)
    args = cloudpickle.dumps(((b"",), {}))
    now = time.time()
    head = {"job_id": "warm-up", "call_id": "00000", "store": {"type": "local", "root": "/"}, "args": {"inline": ""},
            "attempt": 0, "segment": 0, "timeout_s": 60.0, "function_name": "warm-up", "checkpoint": None,
            "fkey": "warm-up", "func_len": len(fn), "start": now, "deadline": now + 60.0, "memory_mb": 128,
            "request_id": "warm-up", "extra": {"capture_logs": 1024}}
    try:
        run_in_child(head, bytearray(fn + args), [], rpc=None)
    finally:
        _functions.clear()
        _child_store = None


isolation.set_runner(run_in_child, warm_up, after_reply)

if _on_lambda():
    # Lambda loads this module at its init, before the first event: the zygote
    # forked now never held a secret (``wrenpack.worker.isolation``).
    isolation.prepare()
    _oom_seen = memory.oom_kills()
