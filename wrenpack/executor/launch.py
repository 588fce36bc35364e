"""The one launch path: every way of starting calls (``Executor.submit`` and
``map``, ``RemoteFunction.remote``/``map``/``starmap``, ``map_reduce``) comes
here with a function, its calls, its options and a chunk size.

::

    launch_calls(executor, fn, calls, given, chunksize, state)
      1. options: "auto" memory/timeout/ephemeral storage from the saved profile,
         then checked and resolved against the executor's settings
         (resolved once per function while nothing changes: ``.remote()`` in a loop)
      2. expected segments: a call its profile says outruns its timeout
      3. a strategy: batching (chunksize), feeding large arguments (feed),
         grouping short calls (grouping), or one invocation per call
         (``Executor.launch``); each uses only the executor's public methods

``LaunchState`` keeps what a function's launches learn (its resolved options,
its profile's reading, its code hash, its signature); a ``RemoteFunction`` keeps one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import operator
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from wrenpack.errors import ConfigError
from wrenpack.executor.batching import launch_batched
from wrenpack.executor.environ import getenv
from wrenpack.executor.feed import launch_map as feed_map
from wrenpack.executor.grouping import launch_map as grouped_map
from wrenpack.executor.options import CallOptions
from wrenpack.executor.profiled import profile_saves, profiled_duration, uses_checkpoint
from wrenpack.futures import WrenFuture

if TYPE_CHECKING:
    from wrenpack.executor.core import Executor

log = logging.getLogger("wrenpack")

Call = tuple[tuple[Any, ...], dict[str, Any]]

#: how long a launch's reading of the saved profiles is kept (``expected_run``)
SEGMENTS_KEPT_S = 1.0

_AUTO = ("memory", "timeout", "ephemeral_storage")


class LaunchState:
    """What a function's launches keep between calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (executor, its config, the options resolved for them)
        self.resolved: tuple[Any, Any, CallOptions] | None = None
        #: (valid until, settings, code objects, (segments, seconds)): ``expected_run``
        self.segments: tuple[float, Any, tuple[Any, ...], tuple[int, float | None]] | None = None
        #: (code stamp, code hash): ``profiled.profiled_duration``
        self.code_hash: tuple[Any, str] | None = None
        #: the next single call's shortcut (``_relaunch``): made with the last full one
        self.single: _Single | None = None
        #: what its signature says its calls may be (``arguments.shape_of``; ``arguments.UNREAD`` when unreadable)
        self.shape: Any = None


class _Single(NamedTuple):
    """What a single call's launch needs besides its arguments, while the
    function, its options (``given``), the executor and its configuration,
    and the profile's reading (``run``) stay the same."""

    given: dict[str, Any]
    executor: Any
    config: Any
    #: the options as resolved (before the profile's reading), and the backend's CPU by memory
    resolved: CallOptions
    lambda_cpu: bool
    label: str
    run: tuple[int, float | None]
    #: the executor's part (``core.SingleJob``)
    job: Any


def launch_calls(executor: Executor, fn: Callable[..., Any], calls: list[Call], given: dict[str, Any],
                 chunksize: int | str | None = None, state: LaunchState | None = None,
                 futures: list[WrenFuture] | None = None) -> list[WrenFuture]:
    """Launch ``fn`` once per ``(args, kwargs)`` of ``calls`` under the options
    ``given`` (already checked by ``check_options``); the futures in order.
    ``futures``: made before, for calls of work accepted before a shutdown
    (``map_reduce``'s reduce): they launch after one too (``Executor.launch``),
    one invocation per call."""
    if not calls:
        return []
    run = None
    if futures is not None:
        chunksize = None
    elif state is not None and chunksize is None and len(calls) == 1:
        single = state.single
        if single is not None:
            fut, run = _relaunch(executor, fn, calls[0], given, state, single)
            if fut is not None:
                return [fut]
    # (a state of this launch only, as submit() of a plain function makes: nothing to keep for the next call)
    keep = state is not None and chunksize is None and len(calls) == 1
    state = state or LaunchState()
    as_given, given = given, dict(given)
    size_fn = given.pop("auto_size", None)
    auto = any(given.get(name) == "auto" for name in _AUTO)
    if auto:
        return _launch_auto(executor, fn, calls, given, chunksize, state, size_fn, futures)
    # The same function, options and configuration resolve to the same limits.
    cached = state.resolved
    if cached is not None and cached[0] is executor and cached[1] is executor.config:
        options = cached[2]
    else:
        options = executor.options(**given)
        state.resolved = (executor, executor.config, options)
    if keep and futures is None:
        state.single = None
        return _launch_with(executor, fn, calls, options, chunksize, state, as_given, run)
    return _launch_with(executor, fn, calls, options, chunksize, state, futures=futures)


def _launch_auto(executor: Executor, fn: Callable[..., Any], calls: list[Call], given: dict[str, Any],
                 chunksize: int | str | None, state: LaunchState, size_fn: Callable[..., Any] | None,
                 made: list[WrenFuture] | None = None) -> list[WrenFuture]:
    """"auto" settings: each call's from the function's profile (a scaling
    profile sizes each call at its own input size), the calls launched in
    groups of equal settings, the futures back in the calls' order. What each
    call got and why is its future's ``auto`` (and ``status["auto"]``)."""
    plan = _auto_plan(fn, calls[0], size_fn, state)
    names = [name for name in _AUTO if given.get(name) == "auto"]
    label = getattr(fn, "__qualname__", None) or "function"
    groups: dict[tuple[Any, ...], tuple[dict[str, Any], list[int]]] = {}
    same = None if plan.per_call else plan.for_call(*calls[0])
    for i, call in enumerate(calls):
        got = same if same is not None else plan.for_call(*call)
        settings = tuple(got[_KEYS[name]] for name in names)
        if settings not in groups:
            record = {name: got[_KEYS[name]] for name in names}
            record.update(why=got["why"], profile=got["profile"])
            if got.get("n") is not None:
                record["n"] = got["n"]
            groups[settings] = (record, [])
        groups[settings][1].append(i)
    out: list[WrenFuture | None] = [None] * len(calls)
    for settings, (record, indices) in groups.items():
        log.info("%s: %s (%d call%s): %s", label, ", ".join(f"{k}={record[k]}" for k in names), len(indices),
                 "" if len(indices) == 1 else "s", record["why"])
        options = executor.options(**dict(given, **dict(zip(names, settings))))
        futures = _launch_with(executor, fn, [calls[i] for i in indices], options, chunksize, state,
                               futures=None if made is None else [made[i] for i in indices])
        for i, fut in zip(indices, futures):
            fut.set_auto(record if len(indices) == 1 else dict(record))
            out[i] = fut
    return out  # type: ignore[return-value]


def _relaunch(executor: Executor, fn: Callable[..., Any], call: Call, given: dict[str, Any], state: LaunchState,
              single: _Single) -> tuple[WrenFuture | None, tuple[int, float | None] | None]:
    """A single call launched from what the last one derived (``Executor.relaunch``),
    if the function, its options, the executor, its configuration and the
    profile's reading are the same: (its future, None). Else (None, the
    profile's reading if it was taken, for the full launch to use: it asks
    with the same function, options and backend)."""
    if single.executor is not executor or single.config is not executor.config or not (given is single.given
                                                                                       or given == single.given):
        return None, None
    resolved = state.resolved
    if resolved is None or resolved[2] is not single.resolved:
        return None, None
    data = executor.relaunch_payload(fn, call, single.job)
    if data is None:
        return None, None
    run = expected_run(fn, single.resolved, single.lambda_cpu, single.label, state)
    if run != single.run:
        return None, run
    fut = executor.relaunch(data, single.job)
    fut.expected_segments = run[0]
    return fut, None


def _launch_with(executor: Executor, fn: Callable[..., Any], calls: list[Call], options: CallOptions,
                 chunksize: int | str | None, state: LaunchState, given: dict[str, Any] | None = None,
                 run: tuple[int, float | None] | None = None, *,
                 futures: list[WrenFuture] | None = None) -> list[WrenFuture]:
    """Launch calls that share ``options`` by the strategy that fits them.
    ``given``: a single call's options as given (not "auto"), whose launch is
    kept for the next single call (``state.single``); ``run``: the profile's
    reading for them, if ``_relaunch`` just took it. ``futures``: made before
    (``launch_calls``): one invocation per call, even after a shutdown."""
    made = futures
    caps = executor.capabilities if made is None else executor.backend.capabilities
    label = getattr(fn, "__qualname__", None) or "function"
    resolved = options
    expected, seconds = run or expected_run(fn, options, caps.cpu_scales_with_memory, label, state)
    if chunksize == "auto":
        chunksize = _auto_chunksize(fn, len(calls), options, caps.cpu_scales_with_memory, caps.concurrency)
    if seconds is not None:
        # The backend's completion checks start from it (a Lambda poller checks a
        # 60 s call near its end, not every second from its start); a batch runs its calls in turn.
        per = seconds * (chunksize if isinstance(chunksize, int) and chunksize > 1 else 1)
        options = dataclasses.replace(options, expected_s=min(per, options.timeout))
    futures = None
    if made is not None:
        futures = executor.launch(fn, calls, options, label=label, futures=made)
    elif chunksize is not None and chunksize != 1:
        futures = launch_batched(executor, fn, calls, options, label, chunksize)
    elif chunksize is None and len(calls) > 1:
        # None: the strategy does not apply to these calls
        futures = feed_map(executor, fn, calls, options, label)  # large arguments, streamed
        if futures is None:
            futures = grouped_map(executor, fn, calls, options, label)  # short calls, grouped
    if futures is None and given is not None:
        kept: list[Any] = []
        futures = executor.launch(fn, calls, options, label=label, keep=kept)
        if kept:
            state.single = _Single(dict(given), executor, executor.config, resolved, caps.cpu_scales_with_memory,
                                   label, (expected, seconds), kept[0])
    elif futures is None:
        futures = executor.launch(fn, calls, options, label=label)
    for fut in futures:
        fut.expected_segments = expected
    return futures


def _auto_chunksize(fn: Callable[..., Any], n: int, options: CallOptions, lambda_cpu: bool, workers: int) -> int:
    duration = profiled_duration(fn, options.memory, lambda_cpu)
    if not duration:
        return 1
    per_invocation = min(1.0, 0.5 * options.timeout)
    # Group short calls, but keep at least one group per worker.
    return max(1, min(int(per_invocation / duration), math.ceil(n / workers)))


def expected_run(fn: Callable[..., Any], options: CallOptions, lambda_cpu: bool, label: str,
                 state: LaunchState) -> tuple[int, float | None]:
    """How many invocations a call should take, and how long each runs, from the
    function's saved profile ((1, None) without one).

    A call that its profile says will outrun ``timeout`` is split across
    invocations if the function checkpoints (this says how many to expect),
    and is announced as a coming ``TaskTimeout`` if it does not.

    ``.remote()`` in a loop asks on every call: the answer is kept for
    ``SEGMENTS_KEPT_S`` while the settings, the working directory, the
    function's code, defaults and cells and this process's saved profiles
    stay the same (a profile another process saves is seen within that time)."""
    where = (options.memory, options.timeout, lambda_cpu, os.getcwd(), getenv("WRENPACK_PROFILE_DIR"),
             profile_saves())
    code = (getattr(fn, "__code__", None), getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None),
            *(getattr(fn, "__closure__", None) or ()))
    now = time.monotonic()
    kept = state.segments
    if kept is not None and now < kept[0] and kept[1] == where and len(kept[2]) == len(code) \
            and all(map(operator.is_, kept[2], code)):
        return kept[3]
    run = _count_segments(fn, options, lambda_cpu, label, state)
    state.segments = (now + SEGMENTS_KEPT_S, where, code, run)
    return run


def _count_segments(fn: Callable[..., Any], options: CallOptions, lambda_cpu: bool, label: str,
                    state: LaunchState) -> tuple[int, float | None]:
    duration = profiled_duration(fn, options.memory, lambda_cpu, state)
    if duration is None:
        return 1, None
    usable = options.timeout * 0.85  # the soft deadline and the save leave the rest
    if duration <= usable:
        return 1, duration
    segments = math.ceil(duration / usable)
    if uses_checkpoint(fn):
        log.info("%s: its profile says ~%.0f s per call, more than timeout=%g s: expect about %d checkpointed "
                 "segments per call", label, duration, options.timeout, segments)
    else:
        log.warning("%s: its profile says ~%.0f s per call, more than timeout=%g s: calls will fail with "
                    "TaskTimeout; raise timeout= or offer the loop's state to wrenpack.checkpoint() so each "
                    "call is split into ~%d invocations", label, duration, options.timeout, segments)
    return segments, min(duration, options.timeout)


#: "auto" option -> the profile's key for it
_KEYS = {"memory": "memory_mb", "timeout": "timeout_s", "ephemeral_storage": "ephemeral_storage_mb"}


def _auto_plan(fn: Callable[..., Any], sample: Call, size_fn: Callable[..., Any] | None, state: LaunchState) -> Any:
    """The function's ``AutoPlan`` (profiling it once with ``sample`` if it has no profile)."""
    try:
        from wrenpack.profiler import auto_plan
    except ImportError as exc:  # pragma: no cover - profiler is part of the package
        raise ConfigError(f"memory/timeout='auto' needs the profiler: {exc}") from None
    with state.lock:
        return auto_plan(fn, sample[0], sample[1], size_fn)
