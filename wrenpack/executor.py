"""The executor: turns calls into stored objects and invocations, and
invocation results back into resolved futures.

::

    map(fn, calls)
      1. a fresh per-job secret (wrenpack.auth); pickle fn once -> sealed -> jobs/<job>/func.pkl
      2. pickle every call's arguments first (nothing launches if one fails);
         small ones go inline in the event, large ones sealed -> jobs/<job>/input/<call>.pkl
      3. backend.invoke(Invocation(protocol.Event(..., secret).to_dict(), limits, on_done))
    on_done (backend thread) -> completion queue -> collector thread:
      status "ok"/"error"  -> the result object from the reply (result.data) or
                              jobs/<job>/result/<call>.res, verified before unpickling
                              -> set_result / set_exception
      status "checkpointed" -> verify the segment record, launch the next segment
      backend error         -> set_exception(TaskTimeout, MemoryLimitExceeded, ...)
      last call of a job    -> delete the job's objects (unless keep_objects)
"""
from __future__ import annotations

import atexit
import dataclasses
import base64
import os
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from wrenpack import auth, config as _config, keys, limits, protocol, serialize
from wrenpack.backends import Backend, Invocation, InvocationResult, create_backend
from wrenpack.config import Config, current
from wrenpack.errors import ConfigError, CorruptObject, ObjectNotFound, PayloadTooLarge, RemoteError, WrenpackError
from wrenpack.futures import WrenFuture
from wrenpack.protocol import rebuild_exception  # noqa: F401 - re-exported (remote_function, tests)
from wrenpack.storage import Store, store_for_config

log = logging.getLogger(__name__)


@dataclass
class CallOptions:
    """The limits one map's calls run under (already resolved from config)."""

    memory: int
    timeout: float
    ephemeral_storage: int
    retries: int
    runtime: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    job_id: str
    label: str
    futures: dict[str, WrenFuture]
    options: CallOptions
    remaining: int
    #: The job's key (``wrenpack.auth``): only in memory and in its events, never in the store.
    secret: bytes = b""


class Executor:
    """Runs calls on one backend with one store. Most users never create one:
    ``@wrenpack.remote`` uses a default built from the configuration."""

    def __init__(self, config: Config | None = None, /, *, backend: Backend | str | None = None, **overrides: Any) -> None:
        # ``backend`` is a name ("local", "lambda") or a ready Backend object (tests, custom backends).
        backend_obj = backend if isinstance(backend, Backend) else None
        if backend_obj is None and backend is not None:
            overrides["backend"] = backend
        elif backend_obj is not None and getattr(backend_obj, "name", None) in ("local", "lambda"):
            overrides["backend"] = backend_obj.name
        self.config = config.replace(**overrides) if config is not None else current(**overrides)
        self.store: Store = store_for_config(self.config)
        self._backend: Backend | None = backend_obj
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._completions: "queue.SimpleQueue[tuple[Invocation, InvocationResult] | None]" = queue.SimpleQueue()
        self._collector: threading.Thread | None = None
        self._closed = False

    # -- public -----------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                self._backend = create_backend(self.config.backend, self.config)
            return self._backend

    def options(self, **given: Any) -> CallOptions:
        c = self.config
        pick = lambda name, default: given[name] if given.get(name) is not None else default  # noqa: E731
        opts = CallOptions(
            memory=limits.check_memory(pick("memory", c.memory), "options"),
            timeout=limits.check_timeout(pick("timeout", c.timeout), "options"),
            ephemeral_storage=limits.check_ephemeral(pick("ephemeral_storage", c.ephemeral_storage), "options"),
            retries=limits.whole_number("retries", pick("retries", c.retries), "options", "a whole number >= 0"),
            runtime=pick("runtime", c.runtime),
        )
        if opts.retries < 0:
            raise ConfigError(f"retries={opts.retries} (from options) must be a whole number >= 0")
        if opts.runtime is not None:
            # Fail here, before anything launches, if it is not a built runtime.
            from wrenpack.backends.runtime_paths import site_dir

            opts.runtime = os.path.dirname(site_dir(opts.runtime))
        return opts

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        options: CallOptions,
        label: str | None = None,
    ) -> list[WrenFuture]:
        """Launch one call per ``(args, kwargs)``; return their futures in order."""
        if self._closed:
            raise WrenpackError("this executor was shut down; create a new one")
        label = label or getattr(fn, "__qualname__", "function")
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        # Everything is pickled before anything is stored or launched.
        user_modules = serialize.user_modules_of(fn)
        fn_bytes = serialize.dumps_function(fn, user_modules)
        payloads = [
            serialize.dumps_call(args, kwargs, f"call {i} of {label}", user_modules) for i, (args, kwargs) in enumerate(calls)
        ]
        limit = options.memory * 1024 * 1024
        for i, data in enumerate(payloads):
            if len(data) > limit:
                raise PayloadTooLarge(
                    f"the arguments of call {i} of {label} pickle to {len(data) / 2**20:.0f} MB, more than its "
                    f"memory={options.memory} MB; raise memory= or pass a path/URL and load the data inside the function"
                )
        store = self.store
        secret = auth.new_secret()
        store.put(keys.func_key(job_id), auth.seal(secret, keys.identity(job_id, "func"), fn_bytes))
        futures: dict[str, WrenFuture] = {}
        invocations = []
        spec = store.spec
        extra_event = dict(options.extra.get("event", {}))
        for i, data in enumerate(payloads):
            cid = keys.call_id(i)
            if len(data) <= self.config.inline_limit:
                args_spec: dict[str, Any] = {"inline": base64.b64encode(data).decode("ascii")}
            else:
                key = keys.input_key(job_id, cid)
                store.put(key, auth.seal(secret, keys.identity(job_id, "input", cid), data))
                args_spec = {"key": key}
            call_label = f"{label}[{i}]" if len(payloads) > 1 else label
            futures[cid] = WrenFuture(job_id, cid, call_label)
            event = protocol.Event(
                job_id=job_id, call_id=cid, store=spec, secret=secret, args=args_spec,
                timeout_s=options.timeout, function_name=call_label, extra=extra_event,
            ).to_dict()
            invocations.append(
                Invocation(
                    event=event,
                    on_done=self._on_done,
                    memory_mb=options.memory,
                    timeout_s=options.timeout,
                    ephemeral_storage_mb=options.ephemeral_storage,
                    retries=options.retries,
                    runtime=options.runtime,
                    extra={"label": call_label},
                )
            )
        with self._lock:
            self._jobs[job_id] = _Job(job_id, label, futures, options, len(futures), secret)
        self._ensure_collector()
        log.info("job %s: launching %d call(s) of %s on %s", job_id, len(invocations), label, self.config.backend)
        self.backend.invoke_many(invocations)
        return list(futures.values())

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.shutdown(wait=wait)
        if self._collector is not None:
            self._completions.put(None)
            if wait and self._collector is not threading.current_thread():
                self._collector.join(timeout=5)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- completion -------------------------------------------------------------
    def _on_done(self, inv: Invocation, result: InvocationResult) -> None:
        self._completions.put((inv, result))

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
            except Exception:  # noqa: BLE001 - never let one bad call stop the others
                log.exception("wrenpack: internal error completing %s", inv.key)

    def _complete(self, inv: Invocation, result: InvocationResult) -> None:
        job_id, cid = inv.key
        job = self._jobs.get(job_id)
        if job is None:
            return
        fut = job.futures[cid]
        fut.segments += 1
        if fut.done():
            return
        status = result.status
        if result.error is None and status is not None and status.get("exit") == "checkpointed":
            try:
                # Acted on only when authentic: a planted record must not relaunch the call.
                status = self._read_segment(job, cid, int(inv.event.get("segment", 0)))
            except WrenpackError as exc:
                fut.set_exception(exc)
                self._finish_call(job)
                return
            fut.segment_statuses.append(status)
            self._continue(inv, status)
            return
        fut.status = status
        if result.error is not None:
            fut.set_exception(result.error)
        else:
            try:
                stored_status, value_or_exc, ok = self._read_outcome(job, cid, fut.label, result.data)
                fut.status = stored_status or status
            except WrenpackError as exc:
                value_or_exc, ok = exc, False
            if ok:
                fut.set_result(value_or_exc)
            else:
                fut.set_exception(value_or_exc)
        self._finish_call(job)

    def _continue(self, inv: Invocation, status: dict[str, Any]) -> None:
        """Launch the next segment of a checkpointed call."""
        event = dict(inv.event, segment=int(inv.event.get("segment", 0)) + 1, attempt=0)
        if status.get("checkpoint"):
            # What this segment learned (step and save times) tunes the next one.
            event["checkpoint"] = {k: status["checkpoint"][k] for k in ("save_s", "step_s") if k in status["checkpoint"]}
        log.info("%s: segment %d saved a checkpoint; launching segment %d", inv.label, event["segment"] - 1, event["segment"])
        self.backend.invoke(dataclasses.replace(inv, event=event, attempt=0))

    def _finish_call(self, job: _Job) -> None:
        with self._lock:
            job.remaining -= 1
            finished = job.remaining == 0
            if finished:
                self._jobs.pop(job.job_id, None)
        if finished and not self.config.keep_objects:
            try:
                self.store.delete_prefix(keys.job_prefix(job.job_id))
            except Exception:  # noqa: BLE001
                log.warning("could not delete the objects of job %s", job.job_id, exc_info=True)

    def _read_segment(self, job: _Job, cid: str, segment: int) -> dict[str, Any]:
        """The verified record of a segment that saved a checkpoint."""
        key = keys.segment_key(job.job_id, cid, segment)
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObject(f"{key}: the call reported a checkpointed segment but its record is missing; re-run the call") from None
        return protocol.open_segment(job.secret, job.job_id, cid, segment, blob)

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


_default: Executor | None = None
_default_lock = threading.Lock()


def default_executor() -> Executor:
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Executor()
        return _default


def reset_default_executor() -> None:
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.shutdown(wait=False)


_config._on_configure.append(reset_default_executor)


@atexit.register
def _shutdown_default() -> None:
    if _default is not None:
        _default.shutdown(wait=False)
