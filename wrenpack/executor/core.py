"""The executor: turns calls into stored objects and invocations, and
invocation results back into resolved futures. ``Executor`` is a
``concurrent.futures.Executor`` (``submit``, ``map``, ``shutdown``).

::

    launch(fn, calls)
      1. a fresh per-job secret (wrenpack.auth); the owner record jobs/<job>/owner.json;
         pickle fn and every call's arguments in one by-value scope (nothing launches if one fails)
         -> fn sealed -> jobs/<job>/func.pkl; small arguments inline in the event,
         large ones sealed -> jobs/<job>/input/<call>.pkl
      2. every call's future at once; its invocation (the job's event with its id and arguments)
         made and handed to the backend a window at a time (twice its concurrency, at least 256),
         the next ones as calls end (``CallTable._fill``): backend.invoke_many([Invocation(...)])
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
import binascii
import concurrent.futures as cf
import hashlib
import hmac
import json
import logging
import os
import queue
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from wrenpack import auth, config as _config, keys, serialize
from wrenpack.backends import Backend, Capabilities, Invocation, InvocationResult, backend_class, backend_names, create_backend
from wrenpack.backends.base import ImageAnswer, ImageAsker
from wrenpack.config import Config, current
from wrenpack.errors import (
    ConfigTypeError,
    ExecutorShutdown,
    ObjectNotFound,
    PayloadTooLarge,
    StoreError,
)
from wrenpack.executor.batching import check_chunksize
from wrenpack.executor.calls import MIN_WINDOW, WINDOW_PER_SLOT, CallTable, RunningJob, os_reason
from wrenpack.executor.launch import LaunchState, launch_calls
from wrenpack.executor.options import CallOptions, resolve_options
from wrenpack.executor import own_modules
from wrenpack.executor.owner import launch_proof, mark_still_running, owner_record, user_key
from wrenpack.executor.prepared import Prepared
from wrenpack.executor.termination import ctrl_c_in_exit_cleanup, exit_on_sigterm
from wrenpack.futures import WrenFuture, _check_timeout, _wait_sliced, as_list, let_go_for_good
from wrenpack.wire import event as event_format, owner as owner_wire
from wrenpack.wire.event import event_dict, isolation_domain
from wrenpack.wire import result as result_format
from wrenpack.storage import Store, open_store, store_for_config
from wrenpack.worker import checkpoint, handoff, plain, refs

log = logging.getLogger(__name__)

#: This client's Python X.Y, in every event: a worker on another refuses the call
#: (its bytecode would crash or misbehave there rather than fail to unpickle).
PYTHON = "%d.%d" % sys.version_info[:2]
#: a job's events carry its pickled function when all of them together hold at most this many bytes of it
INLINE_FUNCTION_BYTES = 64 * 1024
#: Room a call's event may take beyond the one a launch measures (``Executor._inline_limit``):
#: a later segment's checkpoint fields, a retry's, a call label longer than the sample's (bytes).
EVENT_SLACK = 2048
#: how long the release of a map_reduce's prefixes waits for a write ``while_owned`` let
#: through (one store PUT) before it removes them anyway
_OWNED_WRITE_WAIT_S = 10

_executors: "weakref.WeakSet[Executor]" = weakref.WeakSet()


class Executor(CallTable, cf.Executor):
    """Runs calls on one backend with one store. Most users never create one:
    ``@wrenpack.remote`` uses a default built from the configuration.

    ``Executor(backend=...)`` takes a backend name or a ready ``Backend``."""

    def __init__(self, config: Config | None = None, /, *, backend: Backend | str | None = None, **overrides: Any) -> None:
        if config is not None and not isinstance(config, Config):
            # (``ProcessPoolExecutor(4)``'s habit: the pool size is a setting here, not the first argument)
            hint = f"the number of calls at once is concurrency=: Executor(concurrency={config!r})" \
                if isinstance(config, int) and not isinstance(config, bool) else "settings are keywords: Executor(concurrency=4, memory=1024)"
            raise ConfigTypeError(f"Executor({config!r:.40}): the first argument is a wrenpack.Config, not "
                                  f"{type(config).__name__}; {hint}")
        backend_obj = backend if isinstance(backend, Backend) else None
        if backend_obj is None and backend is not None:
            overrides["backend"] = backend
        elif backend_obj is not None and getattr(backend_obj, "name", None) in backend_names():
            overrides["backend"] = backend_obj.name
        self.config = config.replace(**overrides) if config is not None else current(**overrides)
        self.store: Store = store_for_config(self.config)
        self._backend: Backend | None = backend_obj
        #: ``Backend.image_asker``, while no backend is made (``_image_of``)
        self._image_asker: ImageAsker | None = None
        self._lock = threading.RLock()
        #: the process that made it: a fork of it (os.fork, multiprocessing's fork) is another driver (``_forked``)
        self._pid = os.getpid()
        self._jobs: dict[str, RunningJob] = {}
        self._completions: "queue.SimpleQueue[tuple[Invocation, InvocationResult] | None]" = queue.SimpleQueue()
        self._collector: threading.Thread | None = None
        self._collector_finalizer: weakref.finalize | None = None
        #: results handed off as memfds are read (copied out) here, in parallel, as they arrive
        self._reads: "queue.SimpleQueue[tuple[Invocation, InvocationResult] | None]" = queue.SimpleQueue()
        self._readers: list[threading.Thread] = []
        self._closed = False
        self._release_when_idle = False
        self._released = False
        self._stopping = False  # at exit: no retries, no new segments
        #: a call's process may have been stopped mid-write (killed at a limit, crashed, cancelled,
        #: stopped at exit): the store's ``remove_stopped_writes`` runs when the executor is released
        self.stopped_writes = False
        #: prefixes of objects made for calls of this executor outside their jobs' folders (a
        #: map_reduce's intermediates), removed when it is released if nothing removed them first
        self._owned_prefixes: set[str] = set()
        #: guards ``_owned_prefixes`` and the writes ``while_owned`` let through (not ``_lock``:
        #: such a write, a store PUT, would hold every launch and completion behind it)
        self._owned_lock = threading.Condition()
        self._owned_writing = 0
        self._exited = False  # the interpreter is exiting (``_exit`` ran)
        #: jobs whose calls run on after this program exits (sent to a backend whose calls outlive
        #: their driver, stopped only by a cancel marker): their objects go at exit but the markers
        #: and the owner record, which `wrenpack clean --stale` removes with what the calls write late
        self._outliving: set[str] = set()
        #: finished jobs whose objects a pickled future may still read (deleted at shutdown)
        self._kept_jobs: set[str] = set()
        self._kept_keys: list[Any] = []  # their secrets stay known while they are kept
        #: jobs launched inside a call of this executor's that the call returned a future of
        #: (``CallTable._adopt``): (store spec, job id, call id, the job's derived secret), removed
        #: at shutdown if that call's result verifies with it
        self._adopted: list[refs.Adopted] = []
        #: seconds a call of a function takes, by code hash (``executor.grouping`` learns them)
        self.call_seconds: dict[str, float] = {}
        #: maps whose later calls wait to be launched (``hold``)
        self._plans: set[Any] = set()
        #: the next single call's job identity, made while the last one ran (``_make_identity``): one at most
        self._ahead: list[_Identity] = []
        #: whether this executor's backend bills calls as Lambda does (known once it has one): ``report``
        self._billed_per_call: bool | None = None
        _executors.add(self)
        exit_on_sigterm(_at_exit, let_go_for_good)
        _exit_in_multiprocessing_child()
        if backend_obj is not None:
            self._billed_per_call = backend_obj.capabilities.billed_per_call
            self._release_when_dropped(backend_obj)
            _exit_first()

    # -- public -----------------------------------------------------------------
    def stop_starting(self, reason: str) -> None:
        """``Backend.stop_starting`` on this executor's backend, if it was made (none made: no
        worker to lose). Safe from a signal handler: no lock taken, nothing created."""
        backend = self._backend
        if backend is not None:
            backend.stop_starting(reason)

    @property
    def backend(self) -> Backend:
        backend = self._backend
        if backend is not None:  # (made already: asked a few times per launch, no lock needed to read it)
            return backend
        with self._lock:
            if self._backend is None:
                if self._released:
                    raise ExecutorShutdown("this executor was shut down; create a new one")
                self._backend = create_backend(self.config.backend, self.config)
                self._billed_per_call = self._backend.capabilities.billed_per_call
                self._release_when_dropped(self._backend)
                _exit_first()
            return self._backend

    def _release_when_dropped(self, backend: Backend) -> None:
        """An executor the program dropped without ``shutdown`` (collected once its
        calls ended, as a process pool is) stops its backend's warm workers then,
        not at the program's exit. (At exit, the exit handler does it.)"""
        weakref.finalize(self, _stop_dropped_backend, backend).atexit = False

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
        """Like ``concurrent.futures.Executor.map``: all calls are accepted now
        (and handed to the backend as it has room); the iterator yields
        results in order, raises a call's exception, and ``TimeoutError`` if a
        result is not there ``timeout`` s after this call.
        ``chunksize > 1`` runs that many calls per invocation."""
        self.check_open()
        _check_timeout(timeout, "map")  # (a bad one would fail only at the first result, after the launch)
        chunksize = check_chunksize(chunksize, "map()")
        fn, given, state = _launchable(fn)
        iters = []
        for i, iterable in enumerate(iterables, 1):
            try:
                iters.append(iter(iterable))
            except TypeError:
                raise ConfigTypeError(f"map(): iterable {i} is {type(iterable).__name__}, not an iterable; pass a list, "
                                      "a range or a generator of the function's arguments (one per call)") from None
        end = None if timeout is None else time.monotonic() + timeout
        futs = launch_calls(self, fn, [(args, {}) for args in zip(*iters)], given, None if chunksize == 1 else chunksize, state)

        def results() -> Iterator[Any]:
            # No local names the yielded result or its future: while the caller
            # holds the next result, this frame keeps nothing of the last one
            # (concurrent.futures' own map, CPython issue 14406).
            try:
                futs.reverse()
                while futs:
                    yield _result_or_cancel(futs.pop(), None if end is None else end - time.monotonic())
            finally:
                for left in futs:
                    left.cancel()

        return results()

    def report(self, futures: Iterable[cf.Future], **settings: Any) -> Any:
        """A ``wrenpack.report.JobReport`` of calls this executor launched (running
        or done): their timeline, the settings each ran with, and their cost.
        ``settings`` add to or override the job's (``JobReport``'s docstring lists them)."""
        from wrenpack.report import JobReport

        c = self.config
        billed = self._billed_per_call
        if billed is None:  # (its backend has not started: the class says it without starting one)
            from wrenpack.backends import backend_class

            billed = bool(getattr(backend_class(c.backend), "bills_per_call", False))
        base: dict[str, Any] = {"backend": c.backend, "architecture": c.architecture, "billed": billed,
                                "memory_mb": c.memory, "timeout_s": c.timeout, "ephemeral_storage_mb": c.ephemeral_storage,
                                "retries": c.retries}
        futs, _single = as_list(futures, "report()")  # (one line for what is not a future)
        return JobReport.from_futures(futs, settings, defaults=base)  # (a spawned job's futures bring its own)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this. ``cancel_futures`` cancels the calls that have
        not started. ``wait=True`` returns when every launched call has ended and
        the backend has stopped; with ``wait=False`` that happens in the background.
        In a fork of the process that made it, it only closes it here: the calls and the
        backend are that process's."""
        if self._pid != os.getpid():
            self._closed = True
            return
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        if cancel_futures:
            for plan in list(self._plans):
                for fut in plan.items:
                    fut.cancel()
            for job in jobs:
                # The last first: those not launched yet go before a launched one's end
                # makes room in the window for them.
                for fut in reversed(list(job.futures.values())):
                    fut.cancel()
        if wait and threading.current_thread() is not self._collector:
            # Calls a map holds back (wrenpack.executor.grouping) launch within moments; wait for them too.
            held = [f for plan in list(self._plans) for f in plan.items]
            _wait_out([f for job in jobs for f in list(job.futures.values())] + held)
            with self._lock:
                jobs = list(self._jobs.values())
            _wait_out([f for job in jobs for f in list(job.futures.values())])
            self._release()
            return
        with self._lock:
            idle = self._idle()
            if not idle:
                self._release_when_idle = True
        if idle:
            self._release()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C in the block (in a ``result()``, say): the calls still running are stopped,
            # as Ctrl-C anywhere else stops them, not waited for. (ProcessPoolExecutor waits for
            # every one; here the program stopped 57 s after Ctrl-C, with calls of 30 s.)
            self._exit(interrupted=True)
            return None
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            # Ctrl-C while the exit waits for the calls (where it is pressed most): stopped as
            # well, then the interrupt goes on (a program that catches it had them run to the end)
            self._exit(interrupted=True)
            raise
        return None

    # -- what the launch strategies use (wrenpack.executor.feed, .grouping, ...) ----
    def own_prefix(self, prefix: str) -> None:
        """Objects under ``prefix`` (a folder, ending in "/") are made for this
        executor's calls outside their jobs' folders (a map_reduce's
        intermediates): removed when the executor is released unless
        ``disown_prefix`` came first (their maker removed them)."""
        with self._owned_lock:
            self._owned_prefixes.add(prefix)

    def disown_prefix(self, prefix: str) -> None:
        with self._owned_lock:
            self._owned_prefixes.discard(prefix)

    def while_owned(self, prefix: str, write: Callable[[], None]) -> bool:
        """Run ``write`` (a write under ``prefix``, from this process) only while the
        prefix is still owned, under the lock ``_release`` takes them with; False if
        it ran not. So the write lands before the release removes the prefix, or
        never: a map_reduce's thread telling its reducers to stop (``shuffle.abort``)
        after the exit had removed its objects left that object in the store once the
        process ended (the thread, late, had not reached its own cleanup). The write
        itself runs outside the lock; the release waits for it (``_OWNED_WRITE_WAIT_S``)."""
        with self._owned_lock:
            if prefix not in self._owned_prefixes:
                return False
            self._owned_writing += 1
        try:
            write()
        finally:
            with self._owned_lock:
                self._owned_writing -= 1
                self._owned_lock.notify_all()
        return True

    def check_open(self) -> None:
        """Raise ``ExecutorShutdown`` if no new calls may be launched."""
        if self._pid != os.getpid():
            raise ExecutorShutdown(self.forked_here())
        if self._closed:
            if self._exited:
                raise ExecutorShutdown("cannot schedule new calls after interpreter shutdown: wrenpack stopped its "
                                       "executors at exit; launch calls before the program ends")
            raise ExecutorShutdown("cannot schedule new calls after shutdown; create a new Executor")

    def forked_here(self) -> str:
        """Why this executor, made by the process this one is a fork of, launches nothing here."""
        return (f"this executor was made by process {self._pid}, and this process ({os.getpid()}) is a fork of it: "
                "its calls, workers and futures are that process's; make a new wrenpack.Executor() here (the default "
                "one is made afresh in a fork)")

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
        *,
        spawned: tuple[str, bytes] | None = None,
        keep: list[SingleJob] | None = None,
    ) -> list[WrenFuture]:
        """Launch one call per ``(args, kwargs)`` (or per payload of ``prepared``);
        return their futures in order. ``futures``: the futures to resolve, made
        before (a map's calls launched later: ``wrenpack.executor.grouping``); their map
        was accepted before any shutdown, so they launch after one too.

        ``spawned``: (id, secret) of a spawned job (``wrenpack.job``), whose id and
        secret were made by the process that spawned it: its results stay in
        the store for whoever attaches to it (the job is pinned).

        ``keep``: given (empty) for a single call: what this launch derived
        from the function, its options and this executor is added to it (a
        ``SingleJob``, for ``relaunch``) where that applies."""
        if futures is None:
            self.check_open()
        checkpoint.max_segments()  # (a module setting: a bad value is refused before anything of the job is made)
        label = label or getattr(fn, "__qualname__", "function")
        ahead = self._identity_made(label) if spawned is None else None
        job_id = ahead.job_id if ahead is not None else new_job_id() if spawned is None else spawned[0]
        prepared_here = prepared is None
        if prepared is None:
            prepared = self.prepare(fn, calls, options, label)
        fn_bytes, payloads, referenced = prepared.fn_bytes, prepared.payloads, prepared.referenced
        store = self.store
        if ahead is not None:
            secret, chain = ahead.secret, []
        elif spawned is None:
            secret, chain = refs.new_job_secret(job_id)
        else:
            secret, chain = spawned[1], []
            refs.remember(job_id, secret)
        # the job's futures hold it: the secret is forgotten with the last
        job_key = ahead.key if ahead is not None else refs.JobKey(job_id)
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
        extra_event["python"] = PYTHON
        extra_event["domain"] = isolation_domain(extra_event["func_hash"])  # calls of fn from this process share a warm job process
        if inline_fn:
            extra_event["func_inline"] = func_text
        # (the backend first: one that cannot be made, a Lambda backend without a region say, is
        # said before anything of the job is stored)
        capabilities = self.backend.capabilities
        inline_limit = self._inline_limit(capabilities, job_id, secret, label, options, extra_event, len(payloads))
        inline_args = [_travels(data, inline_limit) for data in payloads]
        # A job that stores nothing at launch leaves its owner record to the
        # worker, written before the first object it stores (local backend,
        # which replies with results): a small call then touches no store at all.
        stored = (not inline_fn or not all(inline_args) or self.config.keep_objects
                  or not capabilities.calls_end_with_driver)
        del inline_args
        if keep is not None and not stored and not chain and not ref_secrets and spawned is None and futures is None \
                and len(payloads) == 1 and prepared_here and serialize.is_cached_pickle(fn, fn_bytes):
            keep.append(SingleJob(os.getpid(), self._backend, fn_bytes, options, label,
                                  min(inline_limit, options.memory * 1024 * 1024), dict(extra_event)))
        if not stored:
            extra_event["owner"] = ahead.owner if ahead is not None else owner_record(
                label, job_id, launched_in_call=secret if chain else None)
        ahead = None
        # The launch takes the payloads over: each is let go of once its call is
        # launched (large arguments once they are in the store, now).
        payloads = prepared.payloads
        wrote = False  # an object of the job is in the store (else there is nothing to delete)
        try:
            if stored:
                store.put(keys.owner_key(job_id), json.dumps(owner_record(
                    label, job_id, capabilities.late_writes_s, launched_in_call=secret if chain else None)).encode())
                wrote = True
            if not inline_fn:
                store.put(keys.func_key(job_id), auth.seal(secret, keys.identity(job_id, "func"), fn_bytes))
                wrote = True
            for i, data in enumerate(payloads):
                if _travels(data, inline_limit):
                    continue
                cid = keys.call_id(i)
                main = data.main if isinstance(data, handoff.Args) else data
                store.put(keys.input_key(job_id, cid), auth.seal(secret, keys.identity(job_id, "input", cid), main))
                wrote = True
                if not isinstance(data, handoff.Args):
                    payloads[i] = _STORED
        except (OSError, StoreError) as exc:
            if wrote:
                self._delete_job(job_id)
            else:
                # The store refused the job's first object (no such bucket, no access, no
                # credentials): deleting would fail the same way, a second line for one error.
                log.debug("job %s: nothing of it was stored, so nothing is deleted", job_id)
            _close_handoffs(payloads)
            self._drain_if_idle()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write the objects of {label} to {store.url}: {os_reason(exc)}; "
                             "free space or fix the storage= location") from None
        return self._start(job_id, label, options, secret, job_key, payloads, extra_event, stored=stored,
                           chain=chain, spawned=spawned, futures=futures, inline_limit=inline_limit)

    def _inline_limit(self, capabilities: Capabilities, job_id: str, secret: bytes, label: str, options: CallOptions,
                      extra_event: dict[str, Any], calls: int) -> int:
        """The largest argument pickle a launch's calls carry in their events: ``inline_limit``,
        or less where the backend's events hold less (``Capabilities.event_limit``, Lambda's
        1 MiB for an Event): an argument travels there in base64 (4/3 its size) beside the
        job's other fields, and one whose event would not fit goes through the store, as a
        larger one does, instead of failing every call at send."""
        limit = self.config.inline_limit
        if capabilities.event_limit is None:
            return limit
        extra = dict(extra_event)
        if capabilities.calls_end_with_driver:
            extra["owner"] = owner_record(label, job_id)  # (a job that stores nothing sends it in its events)
        last = max(calls - 1, 0)
        sample = event_dict(job_id=job_id, call_id=keys.call_id(last), store=self.store.spec, secret=secret,
                            args={"inline": ""}, timeout_s=options.timeout, function_name=f"{label}[{last}]", extra=extra)
        room = capabilities.event_limit - len(event_format.dumps(sample)) - EVENT_SLACK
        return max(0, min(limit, room // 4 * 3))

    def relaunch_payload(self, fn: Callable[..., Any], call: tuple[tuple[Any, ...], dict[str, Any]],
                         kept: "SingleJob") -> bytes | None:
        """A single call's pickled arguments if it can be launched from ``kept``
        (what the last single call's ``launch`` derived from the function, its
        options and this executor: ``relaunch``); None where that cannot be
        vouched for (then the call takes the full launch). Nothing is launched,
        stored or pickled but the arguments.

        It applies while this executor is open, in the process and on the
        backend that made ``kept``, outside a call (where a job's secret is
        derived from the call's), to arguments of builtin types that pickle
        small enough to travel in the event, and while the function's pickle
        cache vouches for the very bytes ``kept`` holds (its checks cover the
        code, globals, defaults, closure cells and names: a change to any of
        them pickles the function again, and the call takes the full launch)."""
        if self._closed or self._backend is not kept.backend or kept.pid != os.getpid() or refs.in_call():
            return None
        args, kwargs = call
        data = plain.dumps((args, kwargs))
        if data is None or len(data) > kept.limit:
            return None
        user_modules = serialize.user_modules_of(fn)
        with serialize.by_value(user_modules):
            if serialize.cached_pickle(fn, user_modules) is not kept.fn_bytes:
                return None
        return data

    def relaunch(self, data: bytes, kept: "SingleJob") -> WrenFuture:
        """Launch one more single call, its arguments ``data`` from
        ``relaunch_payload``, as ``launch`` would, without deriving again what
        cannot have changed (the caller checked that the function's options,
        their resolution and its profile's reading are the ones ``kept`` was
        made with). Each call is its own job, with its own id, secret and
        owner record."""
        checkpoint.max_segments()  # (as ``launch`` checks it)
        label = kept.label
        # (outside a call, which ``relaunch_payload`` checked: a new identity has no chain)
        ident = self._identity_made(label) or _new_identity(label)
        assert ident is not None
        extra_event = dict(kept.extra)
        if "env" in extra_event:
            extra_event["env"] = dict(extra_event["env"])  # (each event its own, as a full launch makes it)
        # (this process's domain key, asked as a full launch asks it: a forked process has its own)
        extra_event["domain"] = isolation_domain(extra_event["func_hash"])
        extra_event["owner"] = ident.owner
        return self._start(ident.job_id, label, kept.options, ident.secret, ident.key, [data], extra_event, stored=False,
                           chain=[], spawned=None, futures=None, inline_limit=kept.limit)[0]

    def _start(self, job_id: str, label: str, options: CallOptions, secret: bytes, job_key: Any, payloads: list[Any],
               extra_event: dict[str, Any], *, stored: bool, chain: list[str], spawned: tuple[str, bytes] | None,
               futures: Sequence[WrenFuture] | None, inline_limit: int) -> list[WrenFuture]:
        """A launch's job, once its objects are stored: its futures, its place in
        the call table, its first calls handed to the backend. Its calls' arguments up to
        ``inline_limit`` bytes travel in their events (``launch`` stored the others)."""
        spec = self.store.spec
        given = futures
        n = len(payloads)
        job = RunningJob(job_id, label, {}, options, secret, stored=stored, key=job_key, pinned=spawned is not None,
                         calls=n, table=self, payloads=payloads, ahead=self._window(), inline_limit=inline_limit)
        # Every call's event is this one with its call id, arguments and label (made when it is launched).
        job.template = event_dict(job_id=job_id, call_id="", store=spec, secret=secret, args={},
                                  timeout_s=options.timeout, function_name=label, extra=extra_event)
        if options.retry_on and options.retries:
            # A call that fails may be tried again (``retry_on``): its worker keeps the checkpoint
            # on an error, so that the retry resumes from the last save (``handler._finish``).
            job.template["ckpt_retries"] = options.retries
        where = (spec, chain)  # (shared by the futures: a reference to a call is made from it)
        created = time.time()
        out: list[WrenFuture] = []
        for i in range(n):
            cid = keys.call_id(i)
            if given is None:
                fut = WrenFuture(job_id, cid, f"{label}[{i}]" if n > 1 else label, created_at=created, register=False)
            else:
                fut = given[i]
                fut.job_id, fut.call_id = job_id, cid
            fut._owner, fut._where, fut._job_key = job, where, job_key
            out.append(fut)
        # (its own dict: the job lets go of each future as its call ends, maybe before the launch returns)
        job.futures = {fut.call_id: fut for fut in out}
        with self._lock:
            exited = self._exited
            if not exited:
                self._jobs[job_id] = job
        if exited:
            # The exit's cleanup (SIGTERM's runs while this thread runs on out of library code)
            # listed the jobs before this one: registered now, it would escape it, its calls run
            # and its objects stay. (A shutdown still lets a map's held calls launch.)
            self._delete_job(job_id)
            _close_handoffs(payloads)
            self.check_open()
        self._ensure_collector()
        if log.isEnabledFor(logging.INFO):
            # (the calls that may run at once, not the window handed to the backend: "256 at a time" ran 2)
            log.info("job %s: launching %d call(s) of %s on %s (%d at a time at most)", job_id, n, label, self.backend.name,
                     min(job.ahead, self.backend.capabilities.concurrency))
        try:
            if n == 1 and given is None:
                self._send_single(job)
            else:
                self._fill(job, raising=True)
        except BaseException:
            with self._lock:
                self._jobs.pop(job_id, None)
            self._delete_job(job_id)
            _close_handoffs(payloads)
            _close_handoffs(inv.handoff for inv in list(job.invocations.values()))
            self._drain_if_idle()
            raise
        if spawned is None and n == 1 and given is None:
            self._make_identity(label)
        return out

    def _make_identity(self, label: str) -> None:
        """A single call was just sent (``.remote()``, ``submit``): the next job's
        identity (id, secret, sealed owner record) is made now, while the worker
        runs this one, rather than on the next call's clock. Not inside a call,
        where a new job's secret is derived from the running call's."""
        if refs.in_call():
            return
        ident = _new_identity(label)
        if ident is not None:
            self._ahead = [ident]

    def _identity_made(self, label: str) -> "_Identity | None":
        """The identity ``_make_identity`` made for a job of ``label``, if it is
        fresh (``IDENTITY_KEPT_S``; made by this process, not inside a call);
        taken once (another one is dropped, and its secret with its key)."""
        try:
            ahead = self._ahead.pop()
        except IndexError:
            return None
        if ahead.label != label or ahead.pid != os.getpid() or time.monotonic() - ahead.made > IDENTITY_KEPT_S \
                or refs.in_call():
            return None
        return ahead

    def _window(self) -> int:
        """How many of a launch's calls are handed to the backend and not ended
        at a time: a few per call the backend runs at once, so it never waits
        for the next while the driver holds only that many events."""
        return max(MIN_WINDOW, WINDOW_PER_SLOT * self.backend.capabilities.concurrency)

    def _invocation(self, job: RunningJob, i: int, data: Any) -> Invocation:
        """Call ``i``'s invocation, made when it is launched: its event (the job's
        template with its id, arguments and label), its limits, its hand-off."""
        cid = keys.call_id(i)
        options = job.options
        is_args = type(data) is not bytes and isinstance(data, handoff.Args)  # (bytes: a single call's, mostly)
        main = data.main if is_args else data
        if data is _STORED or (not isinstance(main, handoff.Sealed) and len(main) > job.inline_limit):  # type: ignore[arg-type]
            args_spec: dict[str, Any] = {"key": keys.input_key(job.job_id, cid)}
        elif isinstance(main, handoff.Sealed):
            args_spec = {"handoff": main.layout}  # local backend: the memfd goes with the call
        else:
            args_spec = {"inline": binascii.b2a_base64(main, newline=False).decode("ascii")}  # (base64.b64encode's own)
        if is_args and data.blobs:
            args_spec["blobs"] = [blob.layout for blob in data.blobs]  # shared with other calls
        if is_args and data.slab is not None and data.slab.fd is not None:
            args_spec["slab"] = True  # a memfd for the result goes with the call, last
        fut = job.futures.get(cid)
        call_label = fut.label if fut is not None else f"{job.label}[{i}]"
        event = dict(job.template, call_id=cid, args=args_spec, function_name=call_label)
        return Invocation(
            event=event,
            on_done=self._on_done,
            on_start=self._on_start,
            memory_mb=options.memory,
            timeout_s=options.timeout,
            ephemeral_storage_mb=options.ephemeral_storage,
            retries=options.retries,
            runtime=options.runtime,
            extra=_invocation_extra(call_label, options),
            handoff=data if is_args else None,
        )

    def prepare(self, fn: Callable[..., Any], calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                options: CallOptions, label: str, *, packer: handoff.Packer | None = None,
                fn_bytes: bytes | None = None, first: int = 0, handoffs: bool = True) -> Prepared:
        """Pickle a launch's function and arguments (and check their size): a
        call that cannot be sent fails here, before anything is stored or runs.

        A map that pickles its calls a few at a time (``wrenpack.executor.feed``) passes
        its ``packer`` (kept open), the function pickled once, and the index of
        the first call given (for the messages). ``handoffs=False``: every
        payload is bytes (a spawned job's go to another process), never a memfd."""
        # Everything is pickled in one by-value scope: another thread's map
        # cannot change how it pickles.
        user_modules = serialize.user_modules_of(fn)
        # Futures inside the arguments pickle without their jobs' secrets
        # (those travel in the events, never in the store).
        own_packer = packer is None
        packer_made = not own_packer or not handoffs
        payloads: list[Any] = []
        try:
            with refs.sealing_scope() as referenced, serialize.by_value(user_modules):
                if fn_bytes is None:
                    fn_bytes = serialize.dumps_function_cached(fn, user_modules)
                # (the calls' isolation domain, as their events name it: an argument memfd is written again only for it)
                domain = isolation_domain(_function_text(fn_bytes, False)[0])
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
                        payloads.append(packer.pack(args, kwargs, lambda a, k, spill, what=what: serialize.dumps_call(a, k, what, user_modules, spill),
                                                    domain))
            if self._separate_files():
                # (workers without this machine's files: a module of the user's own code that the
                # pickles name, not carry, is refused now, as it would fail in every call there,
                # unless the function is a container image, which may hold it: asked only then)
                own_modules.check(fn_bytes, payloads, options.runtime, label, self.config.backend, first,
                                  image=lambda: self._image_of(options))
            limit = options.memory * 1024 * 1024
            for i, data in enumerate(payloads, first):
                size = data.size if isinstance(data, handoff.Args) else len(data)
                if size > limit:
                    too_large = PayloadTooLarge(
                        f"the arguments of call {i} of {label} pickle to {size / 2**20:.0f} MB, more than its "
                        f"memory={options.memory} MB; raise memory= or pass a path/URL and load the data inside the function"
                    )
                    too_large.call_index, too_large.size, too_large.limit_mb = i, size, options.memory
                    raise too_large
        except BaseException:
            _close_handoffs(payloads)
            self._drain_if_idle()
            raise
        finally:
            if packer is not None and own_packer:
                packer.close()  # each call holds the shared blobs it refers to
        return Prepared(fn_bytes, payloads, set(referenced))

    def _separate_files(self) -> bool:
        """Whether this executor's workers lack this machine's files (``Capabilities.separate_files``),
        asked without making the backend when there is none yet (a spawn's driver makes none)."""
        backend = self._backend
        if backend is not None:
            return backend.capabilities.separate_files
        return bool(getattr(backend_class(self.config.backend), "separate_files", False))

    def _image_of(self, options: CallOptions) -> ImageAnswer | None:
        """Whether calls of ``options`` would run in a container image (``Backend.image_of``), asked of
        the backend, or without making one when there is none yet (a spawn's driver makes none, and its
        job's supervisor makes one of the same settings): then through the backend class's
        ``image_asker``, kept for this executor's life as a backend keeps its answers."""
        memory, timeout, ephemeral, runtime = options.memory, options.timeout, options.ephemeral_storage, options.runtime
        backend = self._backend
        if backend is not None:
            return backend.image_of(memory, timeout, ephemeral, runtime)
        with self._lock:
            if self._image_asker is None:
                make = getattr(backend_class(self.config.backend), "image_asker", None)
                asker = make(self.config) if make is not None else None
                self._image_asker = asker or _no_image
            asker = self._image_asker
        return asker(memory, timeout, ephemeral, runtime)

    def args_packer(self, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> handoff.Packer | None:
        """On a backend that takes hand-offs (local, not ``keep_objects``): arguments
        above ``inline_limit`` are pickled straight into sealed memfds, a large
        object several calls share once. None: pickled to bytes as before."""
        if self.config.keep_objects or not self.backend.capabilities.handoff or not handoff.available():
            return None
        return handoff.Packer(calls, self.config.inline_limit)

    def _release(self) -> None:
        """Every call has ended: stop the backend and the collector, remove
        jobs kept for pickled futures. Runs once."""
        with self._lock:
            if self._released:
                return
            self._released = True
            backend, self._backend = self._backend, None
            kept, self._kept_jobs = set(self._kept_jobs), set()
            adopted, self._adopted = [*self._adopted, *refs.take_adopted()], []
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
            for spec, job_id, call_id, secret in adopted:
                _delete_adopted(spec, job_id, call_id, secret)
        with self._owned_lock:
            owned, self._owned_prefixes = set(self._owned_prefixes), set()
            # (a write ``while_owned`` let through lands before the removal: one PUT, waited for)
            if not self._owned_lock.wait_for(lambda: not self._owned_writing, timeout=_OWNED_WRITE_WAIT_S):
                log.warning("a write under a prefix being removed did not end in %d s: removing it anyway",
                            _OWNED_WRITE_WAIT_S)
        if owned and not self.config.keep_objects:
            # (a map_reduce the program's exit stopped: its own cleanup never ran.) Its shards'
            # prefixes first, side by side; its own, with the owner record, only once they are
            # gone: a removal that fails leaves the record saying whose the rest is (`clean --stale`)
            own = {p for p in owned if keys.is_shuffle_own_prefix(p)}
            try:
                self.store.delete_prefixes(sorted(owned - own))
                self.store.delete_prefixes(sorted(own))
            except Exception:  # noqa: BLE001
                log.warning("could not delete every object under %d prefix(es), such as %s", len(owned), min(owned),
                            exc_info=True)
        if self.stopped_writes:
            # (after the backend stopped: the processes it ended are gone, and with them their writes)
            try:
                self.store.remove_stopped_writes()
            except Exception:  # noqa: BLE001 - what is left is `wrenpack clean`'s then
                log.debug("could not remove unfinished writes from %s", self.store.url, exc_info=True)
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

    def stop(self) -> None:
        """Stop every call now: queued ones never start, running ones are
        stopped where the backend can stop them, then the backend is shut down
        (what happens at interpreter exit; a cancelled spawned job's supervisor
        uses it)."""
        self._exit()

    def _stop_outliving_calls(self, backend: Any, running: list[WrenFuture]) -> set[tuple[str, str]]:
        """At exit, on a backend whose calls outlive their driver (Lambda): the running
        calls that were sent get their cancel markers (``Backend.cancel_calls``), since
        taking back a pending future stops nothing already sent. Their jobs are marked
        so that the markers and owner records survive the removal of their objects
        (``_delete_job``). The calls so stopped."""
        if backend is None or backend.capabilities.calls_end_with_driver or not backend.capabilities.cancel_running:
            return set()
        sent = [(f.job_id, f.call_id) for f in running if not f.done()]
        if not sent:
            return set()
        try:
            stopped = self.cancel_calls(sent)
        except Exception:  # noqa: BLE001 - the store may be what failed: the calls then run to their end
            log.warning("could not write the cancel markers of the calls still running", exc_info=True)
            stopped = set(sent)
        with self._lock:
            self._outliving.update(job_id for job_id, _cid in sent)
        by_job: dict[str, list[str]] = {}
        for job_id, cid in sent:
            by_job.setdefault(job_id, []).append(cid)
        for job_id, cids in by_job.items():
            try:
                mark_still_running(self.store, job_id, cids)
            except Exception:  # noqa: BLE001 - `clean --stale` then keeps the record for its late_s
                log.debug("could not name the calls of job %s still running in its owner record", job_id, exc_info=True)
        return stopped

    def _exit(self, interrupted: bool = False) -> None:
        """Interpreter exit (or Ctrl-C: ``interrupted``, in a ``with`` block): stop calls
        still running, remove what they left in the store (unless keep_objects), stop
        the backend."""
        when = "when Ctrl-C ended the executor's `with` block" if interrupted else "at exit"
        if self._pid != os.getpid():
            return  # (a fork's exit: the calls and their objects are the process's that made it)
        with self._lock:
            self._closed = self._exited = True
            jobs = list(self._jobs.values())
        held_back = 0  # (counted in the line below: "2 not finished" of a 50-call map, its 48 held back unsaid)
        for plan in list(self._plans):  # calls a map still held back never start
            for fut in plan.items:
                held_back += not fut.done() and fut.cancel()
        running = [f for job in jobs for f in list(job.futures.values()) if not f.done()]
        if held_back and not running:
            log.warning("wrenpack: %d call(s) not finished %s; they had not started, and never will", held_back, when)
        if running:
            self._stopping = True
            self.stopped_writes = True
            for fut in reversed(running):  # (the last first: see ``shutdown``)
                fut.cancel()
            with self._lock:
                backend = self._backend
            outliving = self._stop_outliving_calls(backend, running)
            if outliving:
                log.warning("wrenpack: %d call(s) not finished %s; those already sent (%d) run on where they "
                            "are until they next look for the cancel marker written for them now%s", len(running) + held_back, when,
                            len(outliving), "" if self.config.keep_objects else
                            "; their jobs' objects are removed, and what they write afterwards goes with "
                            "`wrenpack clean --stale`")
            else:
                log.warning("wrenpack: %d call(s) not finished %s; stopping them%s", len(running) + held_back, when,
                            "" if self.config.keep_objects else " and removing their objects from the store")
            if backend is not None:
                try:
                    backend.shutdown(wait=False)
                except Exception:  # noqa: BLE001
                    log.debug("backend shutdown at exit failed", exc_info=True)
            cf.wait(running, timeout=3)
            stopped = ExecutorShutdown("Ctrl-C ended the executor's `with` block before the call finished; wrenpack "
                                       "stopped it" if interrupted else
                                       "the program exited before the call finished; wrenpack stopped it")
            for job in jobs:
                job.stored = True  # a stopped call may have written before it was stopped
                for cid, fut in list(job.futures.items()):
                    if not fut.done():
                        self._resolve(job, cid, False, stopped)
        held = [f for plan in list(self._plans) for f in plan.items]
        if held:  # (a map_reduce ends moments after its calls: it removes its intermediate objects then)
            cf.wait(held, timeout=3)
        self._release()


#: how long an identity made ahead for the next single call (``Executor._make_identity``) is used:
#: a job's id and owner record say when it was made, to the second
IDENTITY_KEPT_S = 0.5


class _Identity(NamedTuple):
    """A job's identity, made before its launch (``Executor._make_identity``)."""

    label: str
    pid: int
    made: float
    job_id: str
    secret: bytes
    key: Any  # refs.JobKey: the secret is forgotten when the identity (unused) or the job's futures go
    owner: dict[str, Any]


def _new_identity(label: str) -> _Identity | None:
    """A new job's identity: id, secret, key and sealed owner record; None inside a
    call, where the secret is derived from the call's and has a chain (the launch makes it then)."""
    job_id = new_job_id()
    secret, chain = refs.new_job_secret(job_id)
    if chain:
        return None
    return _Identity(label, os.getpid(), time.monotonic(), job_id, secret, refs.JobKey(job_id), owner_record(label, job_id))


#: (a second since the epoch, its local time as a job id's stamp): ids made within a second share it
_stamp: tuple[int, str] = (-1, "")


def new_job_id() -> str:
    """A fresh job id: when it was made (local time, to the second), and 32 random bits."""
    global _stamp
    now = int(time.time())
    stamp = _stamp
    if stamp[0] != now:
        stamp = _stamp = (now, time.strftime("%Y%m%d-%H%M%S", time.localtime(now)))
    return f"{stamp[1]}-{os.urandom(4).hex()}"  # (uuid4 costs 5x more)


class SingleJob(NamedTuple):
    """What a single call's full launch derived from its function, its options
    and the executor, kept in the function's ``LaunchState`` for the next
    single call (``Executor.relaunch``)."""

    pid: int
    backend: Any
    #: the function's pickle (``serialize.cached_pickle`` must still give this very object)
    fn_bytes: bytes
    options: CallOptions
    label: str
    #: arguments that pickle to more bytes than this take the full launch (inline, and within memory=)
    limit: int
    #: the event's fields beyond the call's own (function, python, domain, env, ...), but the owner record
    extra: dict[str, Any]


_last_function: tuple[bytes, str, str | None] | None = None


def _invocation_extra(label: str, options: CallOptions) -> dict[str, Any]:
    """What a backend learns of a call beyond its event: its label, the profile's
    run time (``expected_s``: where a backend's completion checks start) and,
    when running calls cannot be stopped (``cancellable=False``), that its
    invocation need not look for a cancel marker."""
    extra: dict[str, Any] = {"label": label}
    if options.expected_s is not None:
        extra["expected_s"] = options.expected_s
    if not options.cancellable:
        extra["cancellable"] = False
    return extra


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


def _result_or_cancel(fut: WrenFuture, timeout: float | None) -> Any:
    """``fut``'s result; cancelled if it is not there in time (``map``'s timeout)."""
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut  # the exception's traceback keeps this frame: it must not keep the future


def _close_handoffs(items: Iterable[Any]) -> None:
    for item in items:
        if isinstance(item, handoff.Args):
            item.close()


class _Stored:
    """A call's arguments that were written to the store at launch (``Executor.launch``)."""

    __slots__ = ()


_STORED = _Stored()


def _travels(data: Any, inline_limit: int) -> bool:
    """Whether a call's pickled arguments go with its invocation (inline, or a
    hand-off memfd) rather than into the store."""
    if data is _STORED:
        return False
    main = data.main if isinstance(data, handoff.Args) else data
    return isinstance(main, handoff.Sealed) or len(main) <= inline_limit


def _launchable(fn: Any) -> tuple[Callable[..., Any], dict[str, Any], LaunchState | None]:
    """A function to launch, its options and its launch state: a
    ``@wrenpack.remote`` function brings its own (``launch_parts``)."""
    parts = getattr(fn, "launch_parts", None)
    if callable(parts):
        return parts()
    if not callable(fn):
        raise ConfigTypeError(f"submit() and map() need a function, got {type(fn).__name__}")
    return fn, {}, None


def check_executor(executor: Any, source: str) -> None:
    """``executor=`` is a wrenpack ``Executor``, or None for the default one: a
    launch uses its store, backend and call table, which nothing else has."""
    if executor is not None and not isinstance(executor, Executor):
        raise ConfigTypeError(f"executor={executor!r:.60} (from {source}) must be a wrenpack.Executor, not "
                              f"{type(executor).__name__}; leave it out to use the default one")


_default: Executor | None = None
_default_lock = threading.Lock()


def _no_image(memory_mb: int, timeout_s: float, ephemeral_mb: int, runtime: str | None) -> None:
    """``Backend.image_asker`` of a backend that has nothing to ask."""
    return None


def _stop_dropped_backend(backend: Backend) -> None:
    try:
        backend.shutdown(wait=False)
    except Exception:  # noqa: BLE001 - a finalizer must not raise; nothing waits on it
        log.debug("stopping a dropped executor's backend failed", exc_info=True)


def default_executor() -> Executor:
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Executor()
        return _default


def job_report(futures: Iterable[cf.Future], executor: Executor | None = None, **settings: Any) -> Any:
    """``wrenpack.job_report(futs)``: the report of calls launched by ``executor``
    (the default one, which ``@wrenpack.remote`` uses, when None): see ``Executor.report``."""
    check_executor(executor, "job_report()")
    return (executor or default_executor()).report(futures, **settings)


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


def _delete_adopted(spec: dict[str, Any], job_id: str, call_id: str, secret: bytes) -> None:
    """Remove a job a call launched and returned a future of (``CallTable._adopt``), in
    this executor's store or another, once its result there verifies with the secret
    derived for it: the reference came from the call, and only a job launched inside
    this executor's job has objects that do. Nothing is made (a local store's missing
    folder is not created) and nothing else is removed."""
    try:
        if spec.get("type") == "local" and not os.path.isdir(str(spec.get("root"))):
            return
        store = open_store(spec)
        try:
            authentic = result_format.is_authentic_result(secret, job_id, call_id, store.get(keys.result_key(job_id, call_id)))
        except ObjectNotFound:
            # No result: the job never finished (its launcher ended with it). Its owner record,
            # sealed with the user's key, proves it was launched inside the call (``launch_proof``).
            key = user_key(create=False)
            record = owner_wire.loads(store.get(keys.owner_key(job_id)))
            authentic = key is not None and owner_wire.verify(key, job_id, record) \
                and hmac.compare_digest(str(record.get("proof", "")), launch_proof(secret, job_id))
        if authentic:
            store.delete_prefix(keys.job_prefix(job_id))
    except Exception:  # noqa: BLE001 - left for `wrenpack clean --stale` (its owner is gone)
        log.debug("could not remove job %s, launched in a call, from its store", job_id, exc_info=True)


#: the process that registered ``_at_exit`` with multiprocessing's finalizers
_finalized_in: int | None = None


def _exit_in_multiprocessing_child() -> None:
    """A ``multiprocessing`` child ends with ``os._exit``, which runs no atexit hook, only
    multiprocessing's finalizers: there the exit hook runs as one (a pool's worker that
    launched calls left its local backend's work folder, and its calls' objects)."""
    global _finalized_in
    mp = sys.modules.get("multiprocessing")
    if _finalized_in == os.getpid() or mp is None or mp.parent_process() is None:
        return
    from multiprocessing import util

    util.Finalize(None, _at_exit, exitpriority=0)
    _finalized_in = os.getpid()


def _forked() -> None:
    """In a fork of a driver (``os.fork``, multiprocessing's fork start method), which is
    another driver: the executors it inherited are the parent's, with their calls, workers
    and store objects. Its default executor is made afresh, and its exit stops none of
    the parent's (``_at_exit``): a fork that used the parent's executor sent calls over the
    parent's worker sockets, and the replies went to whichever process read first (calls of
    both failed, and a child's future got another child's result); one that exited
    normally cancelled the parent's running calls and removed their objects. The
    inherited ones refuse new calls (``check_open``), and their pending futures fail at
    once (``RunningJob.wait_here``)."""
    global _default, _default_lock, _exiting
    _default = None
    _default_lock = threading.Lock()  # (a thread of the parent may have held it)
    _exiting = threading.RLock()
    _executors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def calls_running() -> bool:
    """Whether calls of this process's executors are still running (``wrenpack.scratch``)."""
    return any(ex._jobs for ex in list(_executors))


def _wait_out(futures: list[cf.Future]) -> None:
    """Wait until ``futures`` are done: in the main thread in slices, each its signals'
    chance to run (``interrupts.sliced``: a stopped driver's SIGTERM that another thread took)."""
    if futures:
        _wait_sliced(futures, None, cf.ALL_COMPLETED)


#: held while the exit cleanup runs: SIGTERM's cleanup thread and a multiprocessing child's
#: finalizers (its main thread, which then ends the process with os._exit) may both run it
_exiting = threading.RLock()


def _at_exit() -> None:
    with _exiting:  # (the second waits for the first to end: its os._exit cut it short, a work folder left)
        try:
            with ctrl_c_in_exit_cleanup():
                _exit_all()
        except KeyboardInterrupt:
            log.warning("wrenpack: exit cleanup stopped by Ctrl-C: the objects of calls it had not stopped yet, and of "
                        "scratch areas, stay in the store; `wrenpack clean --stale` removes them")


def _exit_all() -> None:
    executors = list(_executors)
    # (calls Lambda runs go on after their program: what they write into a scratch area then is
    # left for `wrenpack clean --stale`, as a job's objects are)
    late = any(ex._jobs and ex.backend.capabilities.late_writes_s > 0 for ex in executors if not ex._closed)
    for ex in executors:
        try:
            ex._exit()
        except Exception:  # noqa: BLE001 - exit anyway
            log.debug("wrenpack exit cleanup failed", exc_info=True)
    scratch = sys.modules.get("wrenpack.storage.scratch")
    if scratch is not None:  # (the program's scratch areas, once the calls that might write to them stopped)
        scratch.close_all(late_writes=late)


atexit.register(_at_exit)
