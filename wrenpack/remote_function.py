"""``@wrenpack.remote``: a plain function that can also run as remote calls."""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Generic, Iterable, TypeVar, overload

from wrenpack.errors import ConfigError
from wrenpack.executor import CallOptions, Executor, check_options, default_executor
from wrenpack.futures import WrenFuture

T = TypeVar("T")
log = logging.getLogger("wrenpack")



class RemoteFunction(Generic[T]):
    """A function with ``.remote``, ``.map`` and ``.starmap``; calling it runs it here."""

    def __init__(self, fn: Callable[..., T], /, executor: Executor | None = None, _source: str = "@wrenpack.remote", **options: Any) -> None:
        if not callable(fn):
            raise ConfigError(f"@wrenpack.remote needs a function, got {type(fn).__name__}")
        options = check_options(options, _source)
        # Name, docstring and __wrapped__ of the function, but never its
        # attributes: they would overwrite this object's own (an attribute
        # named ``fn`` of a callable object, say).
        functools.update_wrapper(self, fn, updated=())
        self.fn = fn
        self._executor = executor
        self._options = options
        self._auto_lock = threading.Lock()

    # -- local ------------------------------------------------------------------
    def __call__(self, /, *args: Any, **kwargs: Any) -> T:
        return self.fn(*args, **kwargs)

    def local(self, /, *args: Any, **kwargs: Any) -> T:
        """Run here, in this process: no backend, no limits."""
        return self.fn(*args, **kwargs)

    # -- remote -----------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        return self._executor or default_executor()

    def options(self, /, **options: Any) -> "RemoteFunction[T]":
        """A copy with some options changed: ``f.options(memory=2048).map(...)``,
        ``f.options(env={"OMP_NUM_THREADS": "1"}, retry_on=(ConnectionError,))``."""
        executor = options.pop("executor", self._executor)
        return RemoteFunction(self.fn, executor=executor, _source="options()", **{**self._options, **options})

    def remote(self, /, *args: Any, **kwargs: Any) -> WrenFuture:
        """Run one call remotely; returns its future. Every keyword is the function's."""
        return self._launch([(args, kwargs)])[0]

    def map(self, items: Iterable[Any], /, *, chunksize: int | str | None = None, **kwargs: Any) -> list[WrenFuture]:
        """One call per item, ``fn(item, **kwargs)``; futures in the items' order.

        ``chunksize=k`` runs k consecutive calls per invocation (each keeps its
        own future); the limits then apply to the whole group. ``chunksize="auto"``
        groups calls that the function's saved profile says are short, so each
        invocation runs about a second (never more than half its timeout)."""
        return self._launch([((item,), kwargs) for item in items], chunksize)

    def starmap(self, items: Iterable[Iterable[Any]], /, *, chunksize: int | str | None = None, **kwargs: Any) -> list[WrenFuture]:
        """One call per argument tuple, ``fn(*item, **kwargs)``."""
        return self._launch([(tuple(item), kwargs) for item in items], chunksize)

    def _launch(self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], chunksize: int | str | None = None) -> list[WrenFuture]:
        if not calls:
            return []
        executor = self.executor
        given = dict(self._options)
        auto = given.get("memory") == "auto" or given.get("timeout") == "auto" or given.get("ephemeral_storage") == "auto"
        if auto:
            given.update(self._auto_settings(calls[0], given))
        # The same function, options and configuration resolve to the same limits
        # (``.remote()`` in a loop resolves them once).
        cached = getattr(self, "_resolved", None)
        if not auto and cached is not None and cached[0] is executor and cached[1] is executor.config:
            options: CallOptions = cached[2]
        else:
            options = executor.options(**given)
            if not auto:
                self._resolved = (executor, executor.config, options)
        label = getattr(self.fn, "__qualname__", None) or "function"
        expected = self._expected_segments(options, executor.capabilities.cpu_scales_with_memory, label)
        if chunksize == "auto":
            chunksize = self._auto_chunksize(len(calls), options, executor)
        futures = None
        if chunksize is not None and chunksize != 1:
            futures = _launch_batched(executor, self.fn, calls, options, label, chunksize)
        elif chunksize is None and len(calls) > 1:
            from wrenpack import feed, grouping

            # None: not for these calls
            futures = feed.launch_map(executor, self.fn, calls, options, label)  # large arguments, streamed
            if futures is None:
                futures = grouping.launch_map(executor, self.fn, calls, options, label)  # short calls, grouped
        if futures is None:
            futures = executor.launch(self.fn, calls, options, label=label)
        for fut in futures:
            fut.expected_segments = expected
        return futures

    def _auto_chunksize(self, n: int, options: CallOptions, executor: Executor) -> int:
        caps = executor.capabilities
        duration = _profiled_duration(self.fn, options.memory, caps.cpu_scales_with_memory)
        if not duration:
            return 1
        per_invocation = min(1.0, 0.5 * options.timeout)
        workers = caps.concurrency
        # Group short calls, but keep at least one group per worker.
        return max(1, min(int(per_invocation / duration), math.ceil(n / workers)))

    def _expected_segments(self, options: CallOptions, lambda_cpu: bool, label: str) -> int:
        """How many invocations a call should take, from the function's saved profile.

        A call that its profile says will outrun ``timeout`` is split across
        invocations if the function checkpoints (this says how many to expect),
        and is announced as a coming ``TaskTimeout`` if it does not.

        ``.remote()`` in a loop asks on every call: the answer is kept for
        ``_SEGMENTS_KEPT_S`` while the settings, the working directory, the
        function's code, defaults and cells and this process's saved profiles
        stay the same (a profile another process saves is seen within that time)."""
        fn = self.fn
        where = (options.memory, options.timeout, lambda_cpu, os.getcwd(), os.environ.get("WRENPACK_PROFILE_DIR"),
                 _profiler()[1].saves)
        code = (getattr(fn, "__code__", None), getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None),
                *(getattr(fn, "__closure__", None) or ()))
        now = time.monotonic()
        kept = self.__dict__.get("_segments")
        if kept is not None and now < kept[0] and kept[1] == where and len(kept[2]) == len(code) \
                and all(a is b for a, b in zip(kept[2], code)):
            return kept[3]
        segments = self._count_segments(options, lambda_cpu, label)
        self._segments = (now + _SEGMENTS_KEPT_S, where, code, segments)
        return segments

    def _count_segments(self, options: CallOptions, lambda_cpu: bool, label: str) -> int:
        duration = _profiled_duration(self.fn, options.memory, lambda_cpu, self)
        if duration is None:
            return 1
        usable = options.timeout * 0.85  # the soft deadline and the save leave the rest
        if duration <= usable:
            return 1
        segments = math.ceil(duration / usable)
        if _uses_checkpoint(self.fn):
            log.info("%s: its profile says ~%.0f s per call, more than timeout=%g s: expect about %d checkpointed "
                     "segments per call", label, duration, options.timeout, segments)
        else:
            log.warning("%s: its profile says ~%.0f s per call, more than timeout=%g s: calls will fail with "
                        "TaskTimeout; raise timeout= or offer the loop's state to wrenpack.checkpoint() so each "
                        "call is split into ~%d invocations", label, duration, options.timeout, segments)
        return segments

    def _auto_settings(self, sample: tuple[tuple[Any, ...], dict[str, Any]], given: dict[str, Any]) -> dict[str, Any]:
        try:
            from wrenpack.profiler import auto_settings
        except ImportError as exc:  # pragma: no cover - profiler is part of the package
            raise ConfigError(f"memory/timeout='auto' needs the profiler: {exc}") from None
        with self._auto_lock:
            found = auto_settings(self.fn, sample[0], sample[1])
        out = {}
        for name, key in (("memory", "memory_mb"), ("timeout", "timeout_s"), ("ephemeral_storage", "ephemeral_storage_mb")):
            if given.get(name) == "auto":
                out[name] = found[key]
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside a worker a remote function is called as a plain function: its
        # executor and lock stay behind.
        return (RemoteFunction, (self.fn,), {"_options": self._options})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._options = state.get("_options", {})

    def __repr__(self) -> str:
        return f"<RemoteFunction {getattr(self.fn, '__qualname__', self.fn)}>"


def _uses_checkpoint(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        if "checkpoint" in c.co_names:
            return True
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return False


_profiler_parts: tuple[Any, Any, Any] | None = None


def _profiler() -> tuple[Any, Any, Any]:
    """The profiler modules a launch asks (imported once: ``.remote()`` asks on every call)."""
    global _profiler_parts
    if _profiler_parts is None:
        from wrenpack.profiler import recommend, store
        from wrenpack.profiler.codehash import code_hash

        _profiler_parts = (recommend, store, code_hash)
    return _profiler_parts


#: how long a launch's reading of the saved profiles is kept (``_expected_segments``)
_SEGMENTS_KEPT_S = 1.0


def _profiled_duration(fn: Callable[..., Any], memory_mb: int, lambda_cpu: bool, owner: Any = None) -> float | None:
    """The saved profile's duration for ``fn`` at this memory (``lambda_cpu``: with
    Lambda's CPU share at that memory, on a backend that gives CPU by memory).

    ``owner`` (the RemoteFunction) keeps the code hash while the function's code,
    defaults and closure cells stay the same objects (it only picks a profile)."""
    try:
        recommend, store, code_hash = _profiler()

        def hashed() -> str:
            stamp = (getattr(fn, "__code__", None), getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None),
                     tuple(id(c) for c in getattr(fn, "__closure__", None) or ()))
            kept = getattr(owner, "_code_hash", None) if owner is not None else None
            if kept is not None and kept[0] == stamp and stamp[0] is not None:
                return kept[1]
            digest = code_hash(fn)
            if owner is not None:
                owner._code_hash = (stamp, digest)
            return digest

        data = store.load_cached(hashed)
    except Exception:  # noqa: BLE001 - no profile, no plan
        return None
    if not data or not data.get("duration_s"):
        return None
    wall = float(data["duration_s"])
    if not lambda_cpu:
        return wall
    cpu = float(data.get("cpu_user_s", 0.0)) + float(data.get("cpu_sys_s", 0.0))
    return recommend.lambda_duration(wall, cpu, memory_mb)


def _launch_batched(executor: Executor, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                    options: CallOptions, label: str, chunksize: int) -> list[WrenFuture]:
    from wrenpack.executor import rebuild_exception
    from wrenpack.worker.batch import Batch

    if not isinstance(chunksize, int) or chunksize < 1:
        raise ConfigError(f"chunksize={chunksize!r} must be a whole number of at least 1")
    groups = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
    group_futures = executor.launch(Batch(fn), [((group,), {}) for group in groups], options, label=label)
    out: list[WrenFuture] = []
    for g, (group, gfut) in enumerate(zip(groups, group_futures)):
        first = g * chunksize
        items = [WrenFuture(gfut.job_id, f"{gfut.call_id}.{j}", f"{label}[{first + j}]") for j in range(len(group))]
        for j, item in enumerate(items):
            # Cancelling an item takes back its whole group (they run as one invocation).
            item._canceller, item._pin = gfut.cancel, gfut._pin
            if gfut._ref is not None:
                item._ref = dict(gfut._ref, call_id=item.call_id, label=item.label, item=j)
                item._job_key = gfut._job_key

        def resolve(done: WrenFuture, items: list[WrenFuture] = items) -> None:
            if done.cancelled():
                for item in items:
                    item.cancel()
                return
            exc = done.exception()
            for j, item in enumerate(items):
                item.status, item.segments, item.logs = done.status, done.segments, done.logs
                if exc is not None:
                    item._resolve(False, exc)
                    continue
                outcome = done.result()[j]
                if outcome[0] == "ok":
                    item._resolve(True, outcome[1])
                else:
                    item._resolve(False, rebuild_exception(outcome, item.label))

        gfut.add_done_callback(resolve)
        out.extend(items)
    return out


@overload
def remote(fn: Callable[..., T], **options: Any) -> RemoteFunction[T]: ...
@overload
def remote(fn: None = None, **options: Any) -> Callable[[Callable[..., T]], RemoteFunction[T]]: ...


def remote(fn: Callable[..., T] | None = None, **options: Any) -> Any:
    """Decorate a function so it can run as remote calls.

    Options (all optional; Lambda units): ``memory`` (MB, or "auto" from its
    profile), ``timeout`` (s, or "auto"), ``retries`` (how often a call is tried
    again after a worker crash, or an exception listed in ``retry_on``),
    ``retry_on`` (exception types, e.g. ``(ConnectionError, wrenpack.TaskTimeout)``),
    ``env`` (environment variables for the calls), ``ephemeral_storage`` (MB of
    /tmp), ``runtime`` (a built runtime directory), ``executor`` (an
    ``Executor`` instead of the default one).
    """
    executor = options.pop("executor", None)
    if fn is None:
        return lambda f: RemoteFunction(f, executor=executor, **options)
    return RemoteFunction(fn, executor=executor, **options)


# map_reduce lives in its own module; this name is kept for existing imports.
from wrenpack.mapreduce import map_reduce  # noqa: E402,F401

