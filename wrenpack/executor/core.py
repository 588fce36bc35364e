"""The executor: turns calls into stored objects and invocations, and
invocation results back into resolved futures. ``Executor`` is a
``concurrent.futures.Executor`` (``submit``, ``map``, ``shutdown``).

::

    launch(fn, calls)
      1. a fresh per-job secret (wrenpack.auth); the owner record jobs/<job>/owner.json;
         pickle fn and every call's arguments in one by-value scope (nothing launches if one fails)
         -> fn sealed -> jobs/<job>/func.pkl; small arguments inline in the event,
         large ones sealed -> jobs/<job>/input/<call>.pkl
      2. backend.invoke(Invocation(protocol.Event(..., secret).to_dict(), limits, on_start, on_done))
    on_start (backend thread) -> the future turns RUNNING (PENDING before: cancel() may take it back)
    on_done (backend thread) -> completion queue -> collector thread -> _complete:
      status "ok"/"error"  -> the result object from the reply (result.data) or
                              jobs/<job>/result/<call>.res, verified before unpickling
      status "checkpointed" -> verify the segment record, launch the next segment
      backend error         -> TaskTimeout, MemoryLimitExceeded, ...
      an error in retry_on  -> launch the call again (attempts share ``retries``)
      -> _resolve: the one place a future is resolved; anything raised while
         completing fails that future with a wrenpack error naming the cause
      last call of a job    -> delete the job's objects (unless keep_objects, or a
                               pickled future may still read them: then at shutdown)

Shutdown drains: ``shutdown(wait=True)`` waits for every launched call, then
stops the backend; ``wait=False`` returns at once and the collector stops the
backend when the last call ends (``configure()`` retires the default executor
this way). At interpreter exit calls still running are stopped and their
jobs' objects removed; finished jobs' objects are already gone.
"""
from __future__ import annotations

import atexit
import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from wrenpack import auth, config as _config, keys, protocol, serialize
from wrenpack.backends import Backend, Capabilities, Invocation, InvocationResult, PrivateReply, backend_names, create_backend
from wrenpack.config import Config, current
from wrenpack.errors import (
    ConfigError,
    CorruptObject,
    ExecutorShutdown,
    ObjectNotFound,
    PayloadTooLarge,
    RemoteTraceback,
    StoreError,
    WrenpackError,
)
from wrenpack.executor.launch import LaunchState, launch_calls
from wrenpack.executor.options import CallOptions, resolve_options
from wrenpack.executor.owner import owner_record
from wrenpack.executor.prepared import Prepared
from wrenpack.futures import WrenFuture
from wrenpack.storage import Store, store_for_config
from wrenpack.worker import handoff, plain, refs

log = logging.getLogger(__name__)

#: results up to this size are completed on the backend's thread (no hand-off to the collector)
QUICK_RESULT_BYTES = 64 * 1024

#: a job's events carry its pickled function when all of them together hold at most this many bytes of it
INLINE_FUNCTION_BYTES = 64 * 1024

@dataclass
class _Job:
    job_id: str
    label: str
    futures: dict[str, WrenFuture]
    options: CallOptions
    #: The job's key (``wrenpack.auth``): only in memory and in its events, never in the store.
    secret: bytes = b""
    #: the latest invocation of each call (for cancel and retries)
    invocations: dict[str, Invocation] = field(default_factory=dict)
    #: calls already resolved or cancelled
    finished: set[str] = field(default_factory=set)
    #: a future of this job was pickled: keep its objects until shutdown
    pinned: bool = False
    #: the job may have objects in the store (else there is nothing to delete when it ends)
    stored: bool = True
    #: keeps the job's secret known here while the job runs (``refs.JobKey``)
    key: Any = None


_executors: "weakref.WeakSet[Executor]" = weakref.WeakSet()


class Executor(cf.Executor):
    """Runs calls on one backend with one store. Most users never create one:
    ``@wrenpack.remote`` uses a default built from the configuration.

    ``Executor(backend=...)`` takes a backend name or a ready ``Backend``."""

    def __init__(self, config: Config | None = None, /, *, backend: Backend | str | None = None, **overrides: Any) -> None:
        backend_obj = backend if isinstance(backend, Backend) else None
        if backend_obj is None and backend is not None:
            overrides["backend"] = backend
        elif backend_obj is not None and getattr(backend_obj, "name", None) in backend_names():
            overrides["backend"] = backend_obj.name
        self.config = config.replace(**overrides) if config is not None else current(**overrides)
        self.store: Store = store_for_config(self.config)
        self._backend: Backend | None = backend_obj
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._completions: "queue.SimpleQueue[tuple[Invocation, InvocationResult] | None]" = queue.SimpleQueue()
        self._collector: threading.Thread | None = None
        #: results handed off as memfds are read (copied out) here, in parallel, as they arrive
        self._reads: "queue.SimpleQueue[tuple[Invocation, InvocationResult] | None]" = queue.SimpleQueue()
        self._readers: list[threading.Thread] = []
        self._closed = False
        self._release_when_idle = False
        self._released = False
        self._stopping = False  # at exit: no retries, no new segments
        #: finished jobs whose objects a pickled future may still read (deleted at shutdown)
        self._kept_jobs: set[str] = set()
        self._kept_keys: list[Any] = []  # their secrets stay known while they are kept
        #: seconds a call of a function takes, by code hash (``executor.grouping`` learns them)
        self.call_seconds: dict[str, float] = {}
        #: maps whose later calls wait to be launched (``hold``)
        self._plans: set[Any] = set()
        _executors.add(self)
        if backend_obj is not None:
            _exit_first()

    # -- public -----------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                if self._released:
                    raise ExecutorShutdown("this executor was shut down; create a new one")
                self._backend = create_backend(self.config.backend, self.config)
                _exit_first()
            return self._backend

    @property
    def capabilities(self) -> Capabilities:
        """What this executor's backend can do (starts the backend; the launch
        strategies choose from these)."""
        self.check_open()
        return self.backend.capabilities

    def options(self, **given: Any) -> CallOptions:
        """The limits calls run under: ``given`` (checked), else this executor's settings."""
        return resolve_options(self.config, given)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> WrenFuture:
        """Run ``fn(*args, **kwargs)`` as one remote call (every keyword is the
        function's); ``fn`` may be a ``@wrenpack.remote`` function (its options apply)."""
        self.check_open()
        fn, given, state = _launchable(fn)
        return launch_calls(self, fn, [(args, kwargs)], given, None, state)[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: all calls launch now; the
        iterator yields results in order, raises a call's exception, and
        ``TimeoutError`` if a result is not there ``timeout`` s after this call.
        ``chunksize > 1`` runs that many calls per invocation."""
        self.check_open()
        end = None if timeout is None else time.monotonic() + timeout
        fn, given, state = _launchable(fn)
        futs = launch_calls(self, fn, [(args, {}) for args in zip(*iterables)], given, None if chunksize == 1 else chunksize, state)

        def results() -> Iterator[Any]:
            try:
                futs.reverse()
                while futs:
                    fut = futs.pop()
                    yield fut.result() if end is None else fut.result(end - time.monotonic())
            finally:
                for fut in futs:
                    fut.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this. ``cancel_futures`` cancels the calls that have
        not started. ``wait=True`` returns when every launched call has ended and
        the backend has stopped; with ``wait=False`` that happens in the background."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        if cancel_futures:
            for plan in list(self._plans):
                for fut in plan.items:
                    fut.cancel()
            for job in jobs:
                for fut in list(job.futures.values()):
                    fut.cancel()
        if wait and threading.current_thread() is not self._collector:
            # Calls a map holds back (wrenpack.executor.grouping) launch within moments; wait for them too.
            held = [f for plan in list(self._plans) for f in plan.items]
            cf.wait([f for job in jobs for f in job.futures.values()] + held)
            with self._lock:
                jobs = list(self._jobs.values())
            cf.wait([f for job in jobs for f in job.futures.values()])
            self._release()
            return
        with self._lock:
            idle = self._idle()
            if not idle:
                self._release_when_idle = True
        if idle:
            self._release()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)
        return None

    # -- what the launch strategies use (wrenpack.executor.feed, .grouping, ...) ----
    def check_open(self) -> None:
        """Raise ``ExecutorShutdown`` if no new calls may be launched."""
        if self._closed:
            raise ExecutorShutdown("cannot schedule new calls after shutdown; create a new Executor")

    def hold(self, plan: Any) -> None:
        """A map holds calls back to launch later (``plan.items``: their futures):
        ``shutdown`` waits for them, cancels them with ``cancel_futures``, and the
        executor is not idle while it holds them."""
        with self._lock:
            self._plans.add(plan)

    def unhold(self, plan: Any) -> None:
        """The map launched (or gave up) what it held."""
        with self._lock:
            self._plans.discard(plan)
        self._job_ended()  # a shutdown(wait=False) may have waited for these

    def launch(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        options: CallOptions,
        label: str | None = None,
        prepared: Prepared | None = None,
        futures: Sequence[WrenFuture] | None = None,
    ) -> list[WrenFuture]:
        """Launch one call per ``(args, kwargs)`` (or per payload of ``prepared``);
        return their futures in order. ``futures``: the futures to resolve, made
        before (a map's calls launched later: ``wrenpack.executor.grouping``); their map
        was accepted before any shutdown, so they launch after one too."""
        if futures is None:
            self.check_open()
        label = label or getattr(fn, "__qualname__", "function")
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}"  # (uuid4 costs 5x more)
        if prepared is None:
            prepared = self.prepare(fn, calls, options, label)
        fn_bytes, payloads, referenced = prepared.fn_bytes, prepared.payloads, prepared.referenced
        store = self.store
        secret, chain = refs.new_job_secret(job_id)
        job_key = refs.JobKey(job_id)  # the job's futures hold it: the secret is forgotten with the last
        spec = store.spec
        extra_event = dict(options.extra.get("event", {}))
        if chain:
            extra_event["chain"] = chain
        ref_secrets = {}
        for ref_job, ref_chain in referenced:
            ref_secret = refs.secret_for(ref_job, ref_chain)
            if ref_secret is not None:
                ref_secrets[ref_job] = auth.encode_secret(ref_secret)
        if ref_secrets:
            extra_event["ref_secrets"] = ref_secrets
        if options.env:
            extra_event["env"] = dict(options.env)
        if options.capture_logs:
            extra_event["capture_logs"] = options.capture_logs
        # The function is named by its content: a worker that already holds it
        # (from any job) does not load it again. A few small calls carry it in
        # their events, like small arguments; a map stores it once.
        inline_fn = len(fn_bytes) * len(payloads) <= INLINE_FUNCTION_BYTES and len(fn_bytes) <= self.config.inline_limit
        extra_event["func_hash"], func_text = _function_text(fn_bytes, inline_fn)
        if inline_fn:
            extra_event["func_inline"] = func_text
        inline_args = [_travels(data, self.config.inline_limit) for data in payloads]
        # A job that stores nothing at launch leaves its owner record to the
        # worker, written before the first object it stores (local backend,
        # which replies with results): a small call then touches no store at all.
        stored = (not inline_fn or not all(inline_args) or self.config.keep_objects
                  or not self.backend.capabilities.calls_end_with_driver)
        if not stored:
            extra_event["owner"] = owner_record(label)
        args_specs: list[dict[str, Any]] = []
        try:
            if stored:
                store.put(keys.owner_key(job_id), json.dumps(owner_record(label)).encode())
            if not inline_fn:
                store.put(keys.func_key(job_id), auth.seal(secret, keys.identity(job_id, "func"), fn_bytes))
            for i, data in enumerate(payloads):
                cid = keys.call_id(i)
                main = data.main if isinstance(data, handoff.Args) else data
                if isinstance(main, handoff.Sealed):
                    args_spec: dict[str, Any] = {"handoff": main.layout}  # local backend: the memfd goes with the call
                elif len(main) <= self.config.inline_limit:
                    args_spec = {"inline": base64.b64encode(main).decode("ascii")}
                else:
                    key = keys.input_key(job_id, cid)
                    store.put(key, auth.seal(secret, keys.identity(job_id, "input", cid), main))
                    args_spec = {"key": key}
                if isinstance(data, handoff.Args) and data.blobs:
                    args_spec["blobs"] = [blob.layout for blob in data.blobs]  # shared with other calls
                if isinstance(data, handoff.Args) and data.slab is not None and data.slab.fd is not None:
                    args_spec["slab"] = True  # a memfd for the result goes with the call, last
                args_specs.append(args_spec)
        except (OSError, StoreError) as exc:
            self._delete_job(job_id)
            _close_handoffs(payloads)
            self._drain_if_idle()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write the objects of {label} to {store.url}: {_os_reason(exc)}; "
                             "free space or fix the storage= location") from None
        given = futures
        futures: dict[str, WrenFuture] = {}
        invocations = []
        for i, args_spec in enumerate(args_specs):
            cid = keys.call_id(i)
            if given is None:
                call_label = f"{label}[{i}]" if len(payloads) > 1 else label
                fut = WrenFuture(job_id, cid, call_label)
            else:
                fut = given[i]
                call_label = fut.label
                fut.job_id, fut.call_id = job_id, cid
                refs.register(fut)
            fut._canceller = lambda job_id=job_id, cid=cid: self._cancel(job_id, cid)
            fut._pin = lambda job_id=job_id, cid=cid: self._pin(job_id, cid)
            fut._job_key = job_key
            fut._ref = {"job_id": job_id, "call_id": cid, "label": call_label, "store": spec, "chain": chain,
                        "result_job": job_id, "result_call": cid, "item": None}
            futures[cid] = fut
            event = protocol.event_dict(job_id=job_id, call_id=cid, store=spec, secret=secret, args=args_spec,
                                        timeout_s=options.timeout, function_name=call_label, extra=extra_event)
            invocations.append(
                Invocation(
                    event=event,
                    on_done=self._on_done,
                    on_start=self._on_start,
                    memory_mb=options.memory,
                    timeout_s=options.timeout,
                    ephemeral_storage_mb=options.ephemeral_storage,
                    retries=options.retries,
                    runtime=options.runtime,
                    extra={"label": call_label},
                    handoff=payloads[i] if isinstance(payloads[i], handoff.Args) else None,
                )
            )
        job = _Job(job_id, label, futures, options, secret, stored=stored, key=job_key)
        job.invocations = {inv.key[1]: inv for inv in invocations}
        with self._lock:
            self._jobs[job_id] = job
        self._ensure_collector()
        log.info("job %s: launching %d call(s) of %s on %s", job_id, len(invocations), label, self.backend.name)
        try:
            self.backend.invoke_many(invocations)
        except BaseException:
            with self._lock:
                self._jobs.pop(job_id, None)
            self._delete_job(job_id)
            _close_handoffs(payloads)
            self._drain_if_idle()
            raise
        return list(futures.values())

    def prepare(self, fn: Callable[..., Any], calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                options: CallOptions, label: str, *, packer: handoff.Packer | None = None,
                fn_bytes: bytes | None = None, first: int = 0) -> Prepared:
        """Pickle a launch's function and arguments (and check their size): a
        call that cannot be sent fails here, before anything is stored or runs.

        A map that pickles its calls a few at a time (``wrenpack.executor.feed``) passes
        its ``packer`` (kept open), the function pickled once, and the index of
        the first call given (for the messages)."""
        # Everything is pickled in one by-value scope: another thread's map
        # cannot change how it pickles.
        user_modules = serialize.user_modules_of(fn)
        # Futures inside the arguments pickle without their jobs' secrets
        # (those travel in the events, never in the store).
        own_packer = packer is None
        packer_made = not own_packer
        payloads: list[Any] = []
        try:
            with refs.sealing_scope() as referenced, serialize.by_value(user_modules):
                if fn_bytes is None:
                    fn_bytes = serialize.dumps_function_cached(fn, user_modules)
                for i, (args, kwargs) in enumerate(calls, first):
                    # Small builtin data: the standard pickler's bytes, cloudpickle's own (``plain``).
                    data = plain.dumps((args, kwargs))
                    if data is not None and len(data) <= self.config.inline_limit:
                        payloads.append(data)
                        continue
                    if not packer_made:
                        packer, packer_made = self.args_packer(calls), True  # (only for calls that may need it)
                    what = f"call {i} of {label}"
                    if packer is None:
                        payloads.append(serialize.dumps_call(args, kwargs, what, user_modules))
                    else:  # local backend: straight into sealed memfds as they are pickled
                        payloads.append(packer.pack(args, kwargs, lambda a, k, spill, what=what: serialize.dumps_call(a, k, what, user_modules, spill)))
            limit = options.memory * 1024 * 1024
            for i, data in enumerate(payloads, first):
                size = data.size if isinstance(data, handoff.Args) else len(data)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the arguments of call {i} of {label} pickle to {size / 2**20:.0f} MB, more than its "
                        f"memory={options.memory} MB; raise memory= or pass a path/URL and load the data inside the function"
                    )
        except BaseException:
            _close_handoffs(payloads)
            self._drain_if_idle()
            raise
        finally:
            if packer is not None and own_packer:
                packer.close()  # each call holds the shared blobs it refers to
        return Prepared(fn_bytes, payloads, set(referenced))

    def args_packer(self, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> handoff.Packer | None:
        """On a backend that takes hand-offs (local, not ``keep_objects``): arguments
        above ``inline_limit`` are pickled straight into sealed memfds, a large
        object several calls share once. None: pickled to bytes as before."""
        if self.config.keep_objects or not self.backend.capabilities.handoff or not handoff.available():
            return None
        return handoff.Packer(calls, self.config.inline_limit)

    # -- lifecycle hooks (backend threads) --------------------------------------
    def _on_start(self, inv: Invocation) -> None:
        job = self._jobs.get(inv.key[0])
        if job is not None and inv.key[1] in job.futures:
            job.futures[inv.key[1]]._mark_running()

    def _on_done(self, inv: Invocation, result: InvocationResult) -> None:
        if result.private is not None and result.private.slow and result.error is None:
            self._read_soon(inv, result)
            return
        if self._quick(inv, result):
            # A small result in the reply is verified, unpickled and resolved right
            # here: one thread hand-off fewer per call. Anything that may block
            # (store reads, retries, callbacks, deleting a job) goes to the collector.
            try:
                self._complete(inv, result)
            except BaseException as exc:  # noqa: BLE001 - fail this call, never the backend's thread
                self._fail_completion(inv, exc)
            return
        self._completions.put((inv, result))

    def _quick(self, inv: Invocation, result: InvocationResult) -> bool:
        size = len(result.data) if result.data is not None else result.private.size if result.private is not None else None
        if size is None or result.error is not None or size > QUICK_RESULT_BYTES:
            return False
        job = self._jobs.get(inv.key[0])
        if job is None or job.options.retry_on or self._stopping:
            return False
        fut = job.futures.get(inv.key[1])
        if fut is None or fut._done_callbacks:
            return False
        status = result.status or {}
        if status.get("exit") == "checkpointed" or status.get("stored"):
            return False
        # The job's last call deletes its objects: not on the backend's thread.
        return not job.stored or len(job.finished) < len(job.futures) - 1

    def _read_soon(self, inv: Invocation, result: InvocationResult) -> None:
        """Read a handed-off result in a reader thread now, not in its turn in the
        collector: the copies run in parallel (the GIL is released while the
        kernel copies) and the memfd, which the worker's cgroup is charged
        for, is closed as soon as possible."""
        with self._lock:
            if len(self._readers) < _READERS and self._reads.qsize() >= len(self._readers):
                reader = threading.Thread(target=self._read_loop, name="wrenpack-reader", daemon=True)
                self._readers.append(reader)
                reader.start()
        self._reads.put((inv, result))

    def _read_loop(self) -> None:
        while True:
            item = self._reads.get()
            if item is None:
                return
            inv, result = item
            reply = result.private
            try:
                read = _Read(reply.read())
            except BaseException as exc:  # noqa: BLE001 - the collector fails this call with it
                read = _Read(exc)
            finally:
                reply.close()
            result.private = read
            self._completions.put((inv, result))
            item = inv = result = reply = read = None  # (held while waiting, the last result outlived its future)

    def _cancel(self, job_id: str, cid: str) -> bool:
        """Take back a call that has not started (``WrenFuture.cancel``)."""
        with self._lock:
            job = self._jobs.get(job_id)
            backend = self._backend
            if job is None or cid in job.finished or backend is None:
                return False
            inv = job.invocations[cid]
        if not backend.cancel(inv):
            return False
        log.debug("%s: cancelled before it started", inv.label)
        self._resolve(job, cid, False, None, cancelled=True)
        return True

    def _pin(self, job_id: str, cid: str) -> bool:
        """A future of this job is being pickled: keep the job's objects (and
        write results that came in a reply to the store) so the reference
        resolves elsewhere. False if the call is done or about to be."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or cid in job.finished:
                return False
            job.pinned = True
            return True

    def _track(self, inv: Invocation) -> Invocation:
        with self._lock:
            job = self._jobs.get(inv.key[0])
            if job is not None:
                job.invocations[inv.key[1]] = inv
        return inv

    def _live_backend(self) -> Backend:
        if self._stopping:
            raise ExecutorShutdown("the program is exiting: wrenpack stopped its calls")
        return self.backend

    # -- completion (collector thread) ------------------------------------------
    def _ensure_collector(self) -> None:
        with self._lock:
            if self._collector is None or not self._collector.is_alive():
                self._collector = threading.Thread(target=self._collect, name="wrenpack-collector", daemon=True)
                self._collector.start()

    def _collect(self) -> None:
        while True:
            item = self._completions.get()
            if item is None:
                return
            inv, result = item
            try:
                self._complete(inv, result)
            except BaseException as exc:  # noqa: BLE001 - fail this call, never stop the others
                self._fail_completion(inv, exc)
            finally:
                if result.private is not None:
                    result.private.close()  # read or not: a memfd's pages are the worker's until closed
                # Not held while waiting for the next: the last result would outlive its future.
                item = inv = result = None

    def _fail_completion(self, inv: Invocation, exc: BaseException) -> None:
        job = self._jobs.get(inv.key[0])
        if job is None:
            return
        if isinstance(exc, WrenpackError):
            err: BaseException = exc
        elif isinstance(exc, OSError):
            err = StoreError(f"{inv.label}: could not complete the call: {_os_reason(exc)} ({self.store.url})")
        else:
            log.debug("completing %s failed", inv.label, exc_info=True)
            err = WrenpackError(f"{inv.label}: wrenpack could not complete the call: {type(exc).__name__}: {exc}")
        try:
            self._resolve(job, inv.key[1], False, err)
        except Exception:  # noqa: BLE001 - last resort: the future itself
            log.exception("wrenpack: could not fail %s", inv.label)
            job.futures[inv.key[1]]._resolve(False, err)

    def _complete(self, inv: Invocation, result: InvocationResult) -> None:
        job_id, cid = inv.key
        job = self._jobs.get(job_id)
        if job is None or cid in job.finished:
            return
        fut = job.futures[cid]
        fut.segments += 1
        status = result.status
        if (result.data is None and result.private is None) or (status is not None and status.get("stored")) \
                or result.error is not None:
            job.stored = True  # the worker wrote to the store (or may have, before it failed)
        if result.error is None and status is not None and status.get("exit") == "checkpointed":
            # Acted on only when authentic: a planted record must not relaunch the call.
            status = self._read_segment(job, cid, int(inv.event.get("segment", 0)))
            fut.segment_statuses.append(status)
            self._continue(inv, status)
            return
        data: Any = None
        if result.error is not None:
            ok, value, stored = False, result.error, status
        elif result.private is not None:
            # The backend's own channel (``Backend``'s ``PrivateReply``): its reader says what came.
            stored = status
            try:
                outcome, raw = result.private.read()
                ok = outcome.ok
                value = outcome.value if ok else outcome.rebuild(fut.label)
                # Only for a pinned job: the result as the sealed object a pickled future reads.
                if raw is not None:
                    data = lambda: protocol.seal_result(job.secret, job.job_id, cid, dict(status or {}), raw)  # noqa: E731
                elif ok:
                    data = lambda: self._sealed_copy(job, cid, status, value)  # noqa: E731
            except WrenpackError as exc:
                value, ok = exc, False
        else:
            data = result.data
            try:
                stored, value, ok = self._read_outcome(job, cid, fut.label, data)
            except WrenpackError as exc:
                stored, value, ok = None, exc, False
            stored = stored or status
        final = dict(stored or {})
        logs = final.pop("logs", None)
        final["attempt"] = inv.attempt
        retried = fut.__dict__.setdefault("_retried", [])
        if retried:
            final["retried"] = list(retried)
        if not ok and self._should_retry(job, inv, value):
            retried.append(f"{type(value).__name__}: {value}")
            self._retry(job, inv)
            return
        fut.status, fut.logs = final, logs
        if not ok and logs and isinstance(value, BaseException):
            cause = value.__cause__
            if isinstance(cause, RemoteTraceback):
                cause.logs = logs
            elif cause is None:
                value.__cause__ = RemoteTraceback("", logs)
        self._resolve(job, cid, ok, value, data=data)

    def _should_retry(self, job: _Job, inv: Invocation, exc: Any) -> bool:
        on = job.options.retry_on
        return bool(on) and not self._stopping and inv.attempt < inv.retries and isinstance(exc, on)

    def _retry(self, job: _Job, inv: Invocation) -> None:
        """Launch a call again after an error the user listed in ``retry_on``."""
        _job_id, cid = inv.key
        attempt = inv.attempt + 1
        log.warning("%s failed; retrying (attempt %d of %d) as retry_on asks", inv.label, attempt + 1, inv.retries + 1)
        # The failed attempt's result object would win the next write ("first wins").
        self.store.delete(keys.result_key(job.job_id, cid))
        again = dataclasses.replace(inv, attempt=attempt, event=dict(inv.event, attempt=attempt))
        self._live_backend().invoke(self._track(again))

    def _resolve(self, job: _Job, cid: str, ok: bool, value: Any, data: bytes | Callable[[], bytes] | None = None,
                 cancelled: bool = False) -> None:
        """The one place a call ends: bookkeeping, the job's objects, then the future."""
        with self._lock:
            if cid in job.finished:
                return
            job.finished.add(cid)
            persist = job.pinned and data is not None
            last = len(job.finished) == len(job.futures)
            if last:
                self._jobs.pop(job.job_id, None)
                if job.pinned:
                    self._kept_jobs.add(job.job_id)
                    self._kept_keys.append(job.key)
            idle = last and self._idle()
        inv = job.invocations.get(cid)
        if inv is not None and inv.handoff is not None:
            inv.handoff.close()  # no attempt or segment needs the arguments again
        if idle:
            handoff.drain_pool()  # the argument memfds kept for next calls: none are coming
        if persist:
            # A pickled reference reads the result from the store, not from our reply.
            try:
                self.store.put(keys.result_key(job.job_id, cid), data() if callable(data) else data, if_absent=True)
            except Exception:  # noqa: BLE001
                log.warning("could not store the result of %s for its pickled future", job.futures[cid].label, exc_info=True)
        if last and job.stored and not job.pinned and not self.config.keep_objects:
            self._delete_job(job.job_id)
        if not cancelled:
            job.futures[cid]._resolve(ok, value)
        if last:
            self._job_ended()

    def _idle(self) -> bool:
        """No job runs and no map holds calls back (lock held)."""
        return not self._jobs and not self._plans

    def _drain_if_idle(self) -> bool:
        """No call runs or waits: the argument memfds kept for the next calls go.
        True if so."""
        with self._lock:
            idle = self._idle()
        if idle:
            handoff.drain_pool()
        return idle

    def _job_ended(self) -> None:
        # (drains too: a map whose last calls were never launched, or a feed that finished after them)
        if self._drain_if_idle() and self._release_when_idle:
            self._release()

    def _delete_job(self, job_id: str) -> None:
        try:
            self.store.delete_prefix(keys.job_prefix(job_id))
        except Exception as exc:  # noqa: BLE001 - the results are already read
            log.warning("could not delete the objects of job %s from %s: %s", job_id, self.store.url, exc)

    def _release(self) -> None:
        """Every call has ended: stop the backend and the collector, remove
        jobs kept for pickled futures. Runs once."""
        with self._lock:
            if self._released:
                return
            self._released = True
            backend, self._backend = self._backend, None
            kept, self._kept_jobs = set(self._kept_jobs), set()
            self._kept_keys = []
            collector = self._collector
        if backend is not None:
            try:
                backend.shutdown(wait=not self._stopping)
            except Exception:  # noqa: BLE001
                log.warning("the %s backend did not shut down cleanly", self.config.backend, exc_info=True)
        if not self.config.keep_objects:
            for job_id in kept:
                self._delete_job(job_id)
        with self._lock:
            readers, self._readers = self._readers, []
        for _ in readers:
            self._reads.put(None)  # after the reads already queued
        for reader in readers:
            reader.join(timeout=5)
        if collector is not None:
            self._completions.put(None)
            if collector is not threading.current_thread():
                collector.join(timeout=5)

    def _exit(self) -> None:
        """Interpreter exit (or Ctrl-C): stop calls still running, remove what
        they left in the store (unless keep_objects), stop the backend."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for plan in list(self._plans):  # calls a map still held back never start
            for fut in plan.items:
                fut.cancel()
        running = [f for job in jobs for f in job.futures.values() if not f.done()]
        if running:
            self._stopping = True
            log.warning("wrenpack: %d call(s) still running at exit; stopping them%s", len(running),
                        "" if self.config.keep_objects else " and removing their objects from the store")
            for fut in running:
                fut.cancel()
            with self._lock:
                backend = self._backend
            if backend is not None:
                try:
                    backend.shutdown(wait=False)
                except Exception:  # noqa: BLE001
                    log.debug("backend shutdown at exit failed", exc_info=True)
            cf.wait(running, timeout=3)
            stopped = ExecutorShutdown("the program exited before the call finished; wrenpack stopped it")
            for job in jobs:
                job.stored = True  # a stopped call may have written before it was stopped
                for cid, fut in list(job.futures.items()):
                    if not fut.done():
                        self._resolve(job, cid, False, stopped)
        self._release()

    def _continue(self, inv: Invocation, status: dict[str, Any]) -> None:
        """Launch the next segment of a checkpointed call."""
        event = dict(inv.event, segment=int(inv.event.get("segment", 0)) + 1, attempt=0)
        if status.get("checkpoint"):
            # What this segment learned (step and save times) tunes the next one.
            event["checkpoint"] = {k: status["checkpoint"][k] for k in ("save_s", "step_s") if k in status["checkpoint"]}
        log.info("%s: segment %d saved a checkpoint; launching segment %d", inv.label, event["segment"] - 1, event["segment"])
        self._live_backend().invoke(self._track(dataclasses.replace(inv, event=event, attempt=0)))

    def _read_segment(self, job: _Job, cid: str, segment: int) -> dict[str, Any]:
        """The verified record of a segment that saved a checkpoint."""
        key = keys.segment_key(job.job_id, cid, segment)
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObject(f"{key}: the call reported a checkpointed segment but its record is missing; re-run the call") from None
        return protocol.open_segment(job.secret, job.job_id, cid, segment, blob)

    def _sealed_copy(self, job: _Job, cid: str, status: dict[str, Any] | None, value: Any) -> bytes:
        """A handed-off result as the sealed result object a pickled future reads from the store."""
        import cloudpickle

        with refs.sealing_scope():
            outcome = cloudpickle.dumps(("ok", value))
        return protocol.seal_result(job.secret, job.job_id, cid, dict(status or {}), outcome)

    def _read_outcome(self, job: _Job, cid: str, label: str, data: bytes | None = None) -> tuple[dict[str, Any] | None, Any, bool]:
        """Verify and read a call's result object, from the reply (``data``) or
        the store: (status, value or exception, ok). Nothing is unpickled
        unless it was sealed with this job's secret for this call."""
        job_id = job.job_id
        if data is None:
            try:
                data = self.store.get(keys.result_key(job_id, cid))
            except ObjectNotFound:
                raise CorruptObject(
                    f"{label}: the worker reported completion but its result object is missing from {self.store.url}; re-run the call"
                ) from None
        status, outcome = protocol.open_result(job.secret, job_id, cid, data, f"result object of {label}")
        if outcome.ok:
            return status, outcome.value, True
        return status, outcome.rebuild(label), False



#: threads reading handed-off results at once
_READERS = 2


class _Read(PrivateReply):
    """A private reply already read by a reader thread: what its reader gave, or what it raised."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def read(self) -> tuple[Any, bytes | None]:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


_last_function: tuple[bytes, str, str | None] | None = None


def _function_text(fn_bytes: bytes, inline: bool) -> tuple[str, str | None]:
    """A pickled function's sha256, and its base64 text when it travels inline;
    kept for the last one up to the pickle cache's size (that cache hands back
    the same bytes while the function is unchanged; a larger one is not kept
    alive here after the user dropped it)."""
    global _last_function
    last = _last_function
    if last is not None and last[0] is fn_bytes:
        digest, text = last[1], last[2]
    else:
        digest, text = hashlib.sha256(fn_bytes).hexdigest(), None
    if inline and text is None:
        text = base64.b64encode(fn_bytes).decode("ascii")
    if len(fn_bytes) <= serialize.MAX_PICKLED_BYTES:
        _last_function = (fn_bytes, digest, text)
    return digest, text if inline else None


def _close_handoffs(items: Iterable[Any]) -> None:
    for item in items:
        if isinstance(item, handoff.Args):
            item.close()


def _travels(data: Any, inline_limit: int) -> bool:
    """Whether a call's pickled arguments go with its invocation (inline, or a
    hand-off memfd) rather than into the store."""
    main = data.main if isinstance(data, handoff.Args) else data
    return isinstance(main, handoff.Sealed) or len(main) <= inline_limit


def _os_reason(exc: OSError) -> str:
    """An OSError as a short reason (``No space left on device: '/x'``)."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename!r}" if exc.filename else reason


def _launchable(fn: Any) -> tuple[Callable[..., Any], dict[str, Any], LaunchState | None]:
    """A function to launch, its options and its launch state: a
    ``@wrenpack.remote`` function brings its own (``launch_parts``)."""
    parts = getattr(fn, "launch_parts", None)
    if callable(parts):
        return parts()
    if not callable(fn):
        raise ConfigError(f"submit() and map() need a function, got {type(fn).__name__}")
    return fn, {}, None


_default: Executor | None = None
_default_lock = threading.Lock()


def default_executor() -> Executor:
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Executor()
        return _default


def reset_default_executor() -> None:
    """Retire the default executor (``configure``): it finishes the calls
    already launched, in the background; the next use builds a new one."""
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.shutdown(wait=False)


_config._on_configure.append(reset_default_executor)


def _exit_first() -> None:
    """(Re)register the exit hook after a backend module registered its own:
    atexit runs the last registered first, so the executor stops its calls
    (and says so, and removes their objects) before a backend stops workers."""
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    for ex in list(_executors):
        try:
            ex._exit()
        except Exception:  # noqa: BLE001 - exit anyway
            log.debug("wrenpack exit cleanup failed", exc_info=True)


atexit.register(_at_exit)
