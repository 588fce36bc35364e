"""``map_reduce``: a mapper over items, then reducers, with the data moving through the store.

Four forms, one function::

    map_reduce(f, items, sum)                       one reducer over all mapper results
    map_reduce(f, items, merge, fan_in=8)           tree reduce (associative reducer): levels of
                                                    8-way reduces, values kept in the store
    map_reduce(f, objects, merge, per_object=True)  one reducer per object over its chunks' values
    map_reduce(f, items, g, partitions=R)           shuffle: f yields (key, value) pairs, g(key, values);
                                                    or f returns R parts (partitioned=True), g(i, parts)

In the last three the mappers' output goes worker -> store -> worker
(``wrenpack.worker.shuffle``): the driver holds only object keys, partition
sizes and the final results, and removes every intermediate object when the
job ends, failed or not. The objects are pickled by wrenpack, so they are
sealed with a secret generated here for the job; it travels to the tasks in
their call arguments. On a warm pool (local workers) a shuffle's mappers and
reducers go out as one launch, so the reducers run in the processes the
mappers warmed and start as soon as the last sections are written; elsewhere
the reducers are launched as the map phase ends (a few early, on idle slots).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import inspect
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from wrenpack import keys, serialize
from wrenpack.errors import CallCancelled, ConfigError, ConfigTypeError, PayloadTooLarge, SerializationError
from wrenpack.executor.core import Executor, check_executor, default_executor
from wrenpack.executor.launch import LaunchState, launch_calls
from wrenpack.limits import integral
from wrenpack.executor.options import CallOptions, check_known, check_options
from wrenpack.executor.owner import owner_record
from wrenpack.futures import WrenFuture, cancel
from wrenpack.report import stands_for
from wrenpack.worker import shuffle

log = logging.getLogger(__name__)
#: the most reducers a shuffle is split into (each is one call, launched whether its partition
#: holds data or not; a 1 TB sort on 1,000 functions needs a few thousand)
MAX_PARTITIONS = 100_000

#: map_reduce's own keywords (the rest are call options), as an unknown keyword's message lists them
OWN_KEYWORDS = ("partitions", "partitioned", "partition_fn", "per_object", "fan_in", "executor")

#: The most mappers whose reducers are launched with them (``RunningJob._together``):
#: each of those reducers reads every mapper's index.
TOGETHER_MAPPERS = 64
#: how often the driver looks whether a mapper is being run again while reducers wait (seconds)
_RETRY_LOOK_S = 0.2


def map_reduce(
    mapper: Callable[..., Any],
    items: Iterable[Any],
    reducer: Callable[..., Any],
    *,
    partitions: int | None = None,
    partitioned: bool = False,
    partition_fn: Callable[[Any, int], int] | None = None,
    per_object: bool = False,
    fan_in: int | None = None,
    **options: Any,
) -> WrenFuture:
    """Map ``mapper`` over ``items`` remotely, then reduce remotely; returns one future at once.

    * default: ``reducer(results)`` as one more call; the future gives its value.
    * ``fan_in=k``: a tree of ``reducer(values)`` calls, k values each, until one value
      is left (``reducer`` must be associative; order is kept).
    * ``per_object=True``: items are ``wrenpack.objects(...)`` ranges; one
      ``reducer(values)`` per object over its chunks' values; the future gives
      ``{object key: value}``. With ``fan_in`` each object gets a tree.
    * ``partitions=R``: the shuffle. The mapper returns (key, value) pairs, sent to
      partition ``partition_fn(key, R)`` (default: a stable hash); reducer i gets
      partition i from every mapper and is called ``reducer(key, values)`` per key;
      the future gives ``{key: value}`` (keys sorted within each partition, partitions
      in order, so a range ``partition_fn`` gives sorted output; keys that do not all
      compare, str and int, are sorted within their type: numbers first, then the
      other types by name). With
      ``partitioned=True`` the mapper returns R parts itself and reducer i is called
      ``reducer(i, parts)`` with partition i's non-empty parts in mapper order; the
      future gives the R reducers' results in a list.

    No items are no data, not an error: the plain and ``fan_in`` forms call
    ``reducer([])``, ``partitions=R`` gives ``{}`` (with ``partitioned=True``, the R
    results of ``reducer(i, [])``), ``per_object`` gives ``{}``.

    Other keywords are call options (``memory``, ``timeout``, ..., ``executor``),
    for the mapper and the reducers. A failed call fails the future with its
    exception; the other calls still finish and nothing is left in the store."""
    # First: a misspelt keyword (partiton=4) lands in ``options``, and any later check
    # (the reducer's signature for a form the user did not mean) would blame something else.
    check_known(options, "map_reduce", OWN_KEYWORDS)
    check_executor(options.get("executor"), "map_reduce")
    for name, fn in (("mapper", mapper), ("reducer", reducer)):
        if not callable(fn):
            raise ConfigTypeError(f"map_reduce({name}={fn!r:.40}): must be a function (or a @wrenpack.remote one); "
                                  "the call is map_reduce(mapper, items, reducer, ...)")
    for name, flag in (("partitioned", partitioned), ("per_object", per_object)):
        if not isinstance(flag, bool):  # ('no' would be taken as True)
            raise ConfigTypeError(f"map_reduce({name}={flag!r}): must be True or False")
    if partition_fn is not None and not callable(partition_fn):
        raise ConfigTypeError(f"map_reduce(partition_fn={partition_fn!r}): must be a function (key, R) -> a partition "
                              "number 0..R-1, or None for a stable hash")
    try:
        items = list(items)
    except TypeError:
        if hasattr(items, "__iter__"):
            raise  # (an iterable whose own iteration failed: its error, as list() gives it)
        raise ConfigTypeError(f"map_reduce(items={items!r:.40}): must be an iterable of items (a list, a range, "
                              "wrenpack.objects(...)), one mapper call each") from None
    shuffled = partitions is not None or per_object or fan_in is not None
    if not shuffled:
        if partitioned or partition_fn is not None:
            raise ConfigError("partitioned= and partition_fn= need partitions=R (the number of reducers)")
        _check_signatures(mapper, reducer, None, False)
        return _single(mapper, items, reducer, options)
    if partitions is not None:
        given, partitions = partitions, integral(partitions)
        if partitions is None or partitions < 1:
            raise ConfigError(f"partitions={given!r} must be a whole number of reducers, at least 1")
        if partitions > MAX_PARTITIONS:  # (each is a reducer call: a typo of a few zeros would launch millions)
            raise ConfigError(f"partitions={given!r} is more reducers than one map_reduce runs (at most "
                              f"{MAX_PARTITIONS:,}); use fewer: a partition of 100 MB or more keeps each reducer busy")
    if fan_in is not None:
        given, fan_in = fan_in, integral(fan_in)
        if fan_in is None or fan_in < 2:
            raise ConfigError(f"fan_in={given!r} must be a whole number of values per reduce, at least 2")
    if partitions is not None and (per_object or fan_in is not None):
        raise ConfigError("partitions= (a shuffle) does not combine with per_object= or fan_in=; choose one form")
    if partitions is None and (partitioned or partition_fn is not None):
        raise ConfigError("partitioned= and partition_fn= need partitions=R (the number of reducers)")
    if partitioned and partition_fn is not None:  # (it was ignored without a word)
        raise ConfigError("partition_fn= sends (key, value) pairs to partitions; with partitioned=True the mapper "
                          "returns its R parts itself and partition_fn would never be called: give one or the other")
    if per_object and any(not hasattr(item, "key") for item in items):
        raise ConfigError("per_object=True needs wrenpack.objects(...) ranges as items (each has a .key)")
    if per_object:
        _check_one_source_per_key(items)
    _check_signatures(mapper, reducer, partitions, partitioned, partition_fn)

    executor = options.pop("executor", None)
    m_fn, m_exec, m_opts, _m_state = _unwrap(mapper)
    r_fn, _r_exec, r_opts, _r_state = _unwrap(reducer)
    executor = executor or m_exec or default_executor()
    m_options = _options(executor, {**m_opts, **options})
    r_options = _options(executor, {**r_opts, **options})
    label = f"map_reduce({_name(m_fn)}, {_name(r_fn)})"
    executor.check_open()
    job = RunningJob(executor, m_fn, r_fn, m_options, r_options, label)
    # The first phase launches here: what cannot be launched (an executor shut
    # down, an item or a function that does not pickle) is raised to the caller
    # as submit() raises it, before anything runs. The rest runs on a thread.
    # Refused, it leaves nothing: its owner record is already in the store.
    try:
        with job.follow.starting():
            if partitions is not None:
                finish = job.shuffle(items, partitions, partitioned, partition_fn)
            elif per_object:
                finish = job.per_object(items, fan_in)
            else:
                finish = job.tree(items, fan_in or 2)
    except SerializationError as exc:
        job.cleanup()
        functions = {"mapper": m_fn, "reducer": r_fn, "partition_fn": partition_fn}
        raise _unsendable({k: f for k, f in functions.items() if f is not None}, items, label, exc) from None
    except PayloadTooLarge as exc:
        job.cleanup()
        raise _item_too_large(exc, items, label) from None
    except BaseException:
        job.cleanup()
        raise

    def run() -> None:
        # The intermediate objects are gone before the future resolves.
        try:
            value = finish()
        except BaseException as exc:  # noqa: BLE001 - propagated to the caller's future
            job.cleanup()
            job.follow.fail(exc)
            return
        job.cleanup()
        job.follow.succeed(value)

    threading.Thread(target=run, name="wrenpack-map-reduce", daemon=True).start()
    return job.follow.outer


def _split_key(results: list[dict[Any, Any]], own_partition_fn: bool = True) -> ConfigError:
    """Two reducers gave a value for one key: equal keys went to two partitions.

    Without a partition_fn of the user's, the default one split them: it hashes
    str, bytes, numbers, tuples and frozensets by value and other keys by their
    repr, so equal keys whose reprs differ (a dataclass's P(x=1) and P(x=1.0))
    can part; the message says so instead of blaming a partition_fn never given."""
    seen: dict[Any, tuple[int, Any]] = {}
    for p, part in enumerate(results):
        for key in part:
            if key in seen:
                first, other = seen[key]
                if own_partition_fn:
                    return ConfigError(f"map_reduce: key {key!r:.40} was reduced in partitions {first} and {p}, so "
                                       "the result would keep one of its values; make partition_fn send equal keys to "
                                       "one partition")
                return ConfigError(f"map_reduce: the equal keys {other!r:.40} and {key!r:.40} were reduced in "
                                   f"partitions {first} and {p}: the default partition_fn hashes str, bytes, numbers, "
                                   "tuples and frozensets by value and other keys by their repr, and these reprs "
                                   "differ; give keys of those types (a tuple of the fields), or a partition_fn that "
                                   "sends equal keys to one partition")
            seen[key] = (p, key)
    return ConfigError("map_reduce: a key was reduced in two partitions; make partition_fn send equal keys to one partition")


def _unsendable(functions: dict[str, Any], items: list[Any], label: str, exc: SerializationError) -> SerializationError:
    """What could not be sent, in the user's terms. The shuffle and tree forms send the
    user's functions inside wrappers of their own (``shuffle.make_task``...), and a
    mapper call's arguments are an internal task tuple (item, index, secret...), so the
    launch's own message said "closure variable 'reducer' of function 'make_task.<locals>
    .shuffle_task'" or "argument 2 of call 3"; this one names the reducer, or ``items[3]``
    (and the part of it that does not pickle). ``exc`` itself if each of them pickles."""
    inner = [_unwrap(fn)[0] for fn in functions.values()]
    candidates = [(f, f"the {role} {_name(f)} of {label}", serialize.user_modules_of(f)) for role, f in zip(functions, inner)]
    candidates += [(item, f"items[{i}] of {label}", set()) for i, item in enumerate(items)]
    for obj, what, modules in candidates:
        try:
            with serialize.by_value(modules):  # (the functions' modules by value, as the launch pickles them)
                serialize.dumps(obj)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - (as the launch's own pickling catches them)
            if serialize.raised_by_a_signal(err):
                raise
            where = serialize.describe_unpicklable(obj, what)
            return SerializationError(f"cannot send {where}: {serialize._short(err)}; {serialize._FIX}")
    return exc


def _item_too_large(exc: PayloadTooLarge, items: list[Any], label: str) -> PayloadTooLarge:
    """A mapper call's arguments too large, in the user's terms: the launch's own
    message says "call 3 of m (map)", and the mapper's call ``i`` is ``items[i]``
    (the calls after the items, launched with them, are reducers: ``exc`` itself)."""
    i = exc.call_index
    if i is None or exc.size is None or not 0 <= i < len(items):
        return exc
    named = PayloadTooLarge(
        f"items[{i}] of {label} pickles to {exc.size / 2**20:.0f} MB, more than the mapper's memory={exc.limit_mb} MB; "
        "raise memory=, or pass the data as a wrenpack.store() object or a path/URL and load it inside the mapper")
    named.call_index, named.size, named.limit_mb = i, exc.size, exc.limit_mb
    return named


def _check_one_source_per_key(items: list[Any]) -> None:
    """per_object=True groups the chunks by object key: two objects of one key in two
    sources (``objects("day1/") + objects("day2/")`` of local directories, two
    buckets) would be reduced as one, their values summed together without a word;
    and one object's bytes in two of its items would be counted twice."""
    first: dict[str, Any] = {}
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    for i, item in enumerate(items):
        where = getattr(item, "url", None)
        seen = first.setdefault(item.key, where)
        if seen != where:
            raise ConfigError(f"per_object=True: {seen} and {where} have the same key {item.key!r}, so they would be "
                              "reduced as one object; run one map_reduce per source (or give them other names)")
        start, end = getattr(item, "start", None), getattr(item, "end", None)
        if isinstance(start, int) and isinstance(end, int):
            ranges.setdefault(item.key, []).append((start, end, i))
    # The same bytes of an object twice (its ranges listed twice, or a chunked listing beside a
    # whole one) were counted twice: its reducer summed both, without a word.
    for key, spans in ranges.items():
        spans.sort()
        for (_s0, e0, i0), (s1, _e1, i1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise ConfigError(f"per_object=True: items[{min(i0, i1)}] and items[{max(i0, i1)}] both hold bytes "
                                  f"from {s1} of {key!r}, which would be counted twice; give each object's ranges once "
                                  "(one wrenpack.objects(...) listing per source)")


def _check_signatures(mapper: Any, reducer: Any, partitions: int | None, partitioned: bool,
                      partition_fn: Any = None) -> None:
    """The mapper, the reducer and a partition_fn each take what the form calls them with
    (``_check_signature``)."""
    _check_signature(mapper, "mapper(item)", 1)
    if partition_fn is not None:
        _check_signature(partition_fn, "partition_fn(key, R) for each pair a mapper returns", 2)
    if partitions is not None:
        _check_signature(reducer, "reducer(i, parts) with partitioned=True" if partitioned else
                         "reducer(key, values) once per key with partitions=R", 2)
    else:
        _check_signature(reducer, "reducer(values), values a list of mapper results", 1)


def _check_signature(fn: Any, call: str, args: int) -> None:
    """Refuse, before anything launches, a function that cannot take the arguments its
    part of the job is called with (a one-argument reducer given partitions=R, say):
    otherwise every mapper runs first, and each reducer fails with a TypeError."""
    inner = _unwrap(fn)[0]
    try:
        signature = inspect.signature(inner)
    except (TypeError, ValueError):  # (a builtin without one: called as given)
        return
    try:
        signature.bind(*range(args))
    except TypeError as exc:
        role = call.partition("(")[0]
        raise ConfigTypeError(f"map_reduce: the {role} {_name(inner)}{signature} is called {call}: {exc}; give a "
                              f"{role} that takes {args} argument{'s' if args > 1 else ''}") from None


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _unwrap(fn: Any) -> tuple[Callable[..., Any], Executor | None, dict[str, Any], LaunchState | None]:
    """A function, the executor it is bound to, its options and launch state
    (a ``@wrenpack.remote`` function brings its own: ``launch_parts``)."""
    parts = getattr(fn, "launch_parts", None)
    if callable(parts):
        inner, options, state = parts()
        return inner, getattr(fn, "bound_executor", None), options, state
    if not callable(fn):
        raise ConfigError(f"map_reduce needs functions, got {type(fn).__name__}")
    return fn, None, {}, None


def _options(executor: Executor, given: dict[str, Any]) -> CallOptions:
    auto = [k for k, v in given.items() if v == "auto"]
    if auto:
        raise ConfigError(f"{', '.join(auto)}='auto' is not supported by map_reduce's shuffle forms; give numbers "
                          "(wrenpack profile recommends them)")
    return executor.options(**check_options(given, "map_reduce"))  # (checked here: errors name map_reduce)


class _Follow:
    """A running map_reduce as its executors and its caller see it: the outer
    future, the calls launched so far, and whether it was stopped.

    Its later phases are calls accepted with the map_reduce, not new work, so
    the executors hold it (``Executor.hold``, ``items``): ``shutdown(wait=True)``
    (a ``with`` block's end) waits for the future and lets those phases launch
    (their futures are made first: ``Executor.launch(futures=...)``);
    ``shutdown(cancel_futures=True)`` cancels ``later``, the calls not launched
    yet, and so the job: its pending calls are cancelled, its running ones end,
    and its future fails with ``CallCancelled``. ``wrenpack.cancel`` of the
    future stops the running calls too (the future's ``_stopper``). The
    future's report (``wrenpack.job_report``) is that of every call launched,
    mappers and reducers (``wrenpack.report.Parts``)."""

    def __init__(self, executors: Iterable[Executor], label: str, job_id: str) -> None:
        self.executors = list({id(e): e for e in executors}.values())
        self.label = label
        self.outer = WrenFuture("map_reduce", job_id, label)
        self.later = WrenFuture("", "", f"{label}: calls not launched yet")
        self.items = [self.later, self.outer]  # what shutdown waits for (or cancels)
        self.launched: list[WrenFuture] = []
        #: what the outer future's report shows: every call launched, both phases
        self.parts = stands_for(self.outer)
        self.lock = threading.Lock()
        self.stopped: str | None = None  # why, once stopped
        self.outer.set_running_or_notify_cancel()  # it runs from now on: cancel() cannot take it back (as a pool's future)
        self.outer._stopper = self._stop_outer
        self.later.add_done_callback(self._later_done)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Held by the executors while the first phase launches; let go if that fails."""
        for executor in self.executors:
            executor.hold(self)
        try:
            yield
        except BaseException:
            self.stop("its first phase could not be launched", running_too=True)
            self._end()
            raise

    def add(self, futures: list[WrenFuture]) -> None:
        """Calls just launched; stopped at once if the job was stopped meanwhile."""
        with self.lock:
            self.launched.extend(futures)
            self.parts.add(futures)
            stopped = self.stopped
        if stopped is not None:
            cancel(futures)
            raise self.cancelled()

    def check(self) -> None:
        """Before a launch: nothing more is launched once the job was stopped."""
        if self.stopped is not None:
            raise self.cancelled()

    def cancelled(self) -> CallCancelled:
        return CallCancelled(f"{self.label} was cancelled ({self.stopped}); the calls it had not started never ran "
                             "and its intermediate objects are removed")

    def stop(self, why: str, running_too: bool) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = why
            launched = [f for f in self.launched if not f.done()]
        if running_too:
            cancel(launched)
        else:
            for fut in reversed(launched):  # (the last first, as shutdown cancels a job's calls)
                fut.cancel()

    def _later_done(self, fut: WrenFuture) -> None:
        if fut.cancelled():  # shutdown(cancel_futures=True), or the interpreter's exit
            fut.set_running_or_notify_cancel()  # (its owner's part, as a pool's: now wait() counts it done)
            self.stop("its executor was shut down with cancel_futures=True", running_too=False)

    def _stop_outer(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """``wrenpack.cancel(outer)``: stop every call, running or not."""
        if self.outer.done():
            return set()
        self.stop("wrenpack.cancel() stopped it", running_too=True)
        return {(self.outer.job_id, self.outer.call_id)}

    def _end(self) -> None:
        self.parts.settle()  # (their records stay for the report; the futures, and their results, go)
        try:
            self.later.set_result(None)
        except cf.InvalidStateError:  # (cancelled)
            pass
        for executor in self.executors:
            executor.unhold(self)

    def succeed(self, value: Any) -> None:
        self._end()
        if self.stopped is not None:  # (wrenpack.cancel said it would end cancelled)
            self.outer.set_exception(self.cancelled())
        else:
            self.outer.set_result(value)

    def fail(self, exc: BaseException) -> None:
        self._end()
        self.outer.set_exception(self.cancelled() if self.stopped is not None else exc)


class RunningJob:
    """One shuffle/tree/per-object map_reduce: its secret, its tasks, its cleanup."""

    def __init__(self, executor: Executor, mapper: Callable[..., Any], reducer: Callable[..., Any],
                 m_options: CallOptions, r_options: CallOptions, label: str) -> None:
        self.executor = executor
        self.mapper, self.reducer = mapper, reducer
        self.m_options, self.r_options = m_options, r_options
        self.shuffle_id = uuid.uuid4().hex[:12]
        self.secret = shuffle.new_secret()
        self._indices = 0  # tasks of indices below this were launched: their shards' prefixes are owned
        # (removed by the executor if the program exits first; the shards as tasks are launched, ``_uses``)
        executor.own_prefix(keys.shuffle_prefix(self.shuffle_id))
        # Who runs it: `wrenpack clean --stale` removes the intermediates of a program killed before it could.
        record = owner_record(f"map_reduce {self.shuffle_id}", keys.shuffle_owner_id(self.shuffle_id),
                              executor.backend.capabilities.late_writes_s)
        executor.store.put(keys.shuffle_owner_key(self.shuffle_id), json.dumps(record).encode())
        self.follow = _Follow([executor], label, self.shuffle_id)
        self._lock = threading.Lock()
        self._nodes = 0  # tree nodes get unique indices across every tree of this job
        self.partition_fn: Callable[[Any, int], int] | None = None  # (a shuffle's, if the user gave one)
        #: a shuffle's bytes, requests (objects written, sections read) and seconds per stage
        self.stats: dict[str, Any] = {}

    def _map(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], options: CallOptions, label: str) -> list[WrenFuture]:
        if not calls:  # (a job of no calls would never end, and its executor never be idle again)
            return []
        self.follow.check()
        made = [WrenFuture(label=f"{label}[{i}]" if len(calls) > 1 else label) for i in range(len(calls))]
        futures = self.executor.launch(fn, [(args, {}) for args in calls], options, label=label, futures=made)
        self.follow.add(futures)
        return futures

    def _pickles(self, fn: Callable[..., Any], label: str) -> None:
        """Raise now, before the mappers run, if a later phase's function cannot be sent."""
        self.executor.prepare(fn, [], self.r_options, label)

    def _results(self, futures: list[WrenFuture]) -> list[Any]:
        """Results in order; on a failure, wait for the rest (their objects must land before cleanup), then raise."""
        cf.wait(futures)
        return [f.result() for f in futures]

    def cleanup(self) -> None:
        with self.follow.lock:
            launched = list(self.follow.launched)
        cf.wait(launched)  # nothing may write after the delete
        if self.executor.config.keep_objects:
            return
        # One prefix per shard the tasks used, side by side on S3 (``delete_prefixes``), then
        # the map_reduce's own (its owner record: a cleanup that fails leaves it for `clean`).
        *shards, own = prefixes = shuffle.prefixes(self.shuffle_id, self._indices)
        try:
            n = self.executor.store.delete_prefixes(shards) + self.executor.store.delete_prefix(own)
            log.debug("map_reduce %s: removed %d intermediate object(s)", self.shuffle_id, n)
        except Exception:  # noqa: BLE001
            log.warning("could not delete map_reduce %s's objects under %s and %d shard prefix(es) of shuffle/",
                        self.shuffle_id, own, len(shards), exc_info=True)
            return
        for prefix in prefixes:
            self.executor.disown_prefix(prefix)

    def _uses(self, indices: int) -> None:
        """Tasks of indices below ``indices`` (mappers, tree nodes) are about to be launched:
        the prefixes of the shards they write to are the executor's to remove if the program
        exits before ``cleanup``."""
        with self._lock:
            start, self._indices = self._indices, max(self._indices, indices)
            end = self._indices
        for n in range(start, min(end, keys.SHUFFLE_SHARDS)):
            self.executor.own_prefix(keys.shuffle_shard_prefix(self.shuffle_id, n))

    # -- the forms -----------------------------------------------------------------
    def shuffle(self, items: list[Any], partitions: int, partitioned: bool,
                partition_fn: Callable[[Any, int], int] | None) -> Callable[[], Any]:
        """Launch the mappers (and, on a warm pool, the reducers with them); returns
        what waits for them and runs the rest (``_shuffled``)."""
        self.partition_fn = partition_fn
        self._uses(len(items))
        task = shuffle.make_mapper(self.mapper, self.shuffle_id, partitions, partition_fn, partitioned)
        reducer = shuffle.make_reducer(self.reducer, self.shuffle_id, partitioned)
        m_label, r_label = f"{_name(self.mapper)} (map)", f"{_name(self.reducer)} (reduce)"
        together = self._together(len(items))
        if together:
            both = shuffle.make_task(self.mapper, self.reducer, partitions, partition_fn, partitioned)
            maps, early = self._launch_together(both, items, partitions, m_label, r_label)
        else:
            self._pickles(reducer, r_label)
            maps = self._map(task, [(item, i, self.secret) for i, item in enumerate(items)], self.m_options, m_label)
        t0 = time.perf_counter()
        return lambda: self._shuffled(maps, early if together else None, t0, reducer, partitions, partitioned, r_label)

    def _shuffled(self, maps: list[WrenFuture], early: dict[int, WrenFuture] | None, t0: float,
                  reducer: Callable[..., Any], partitions: int, partitioned: bool, r_label: str) -> Any:
        """The rest of a shuffle, once its mappers (and, launched together, its reducers) are out."""
        if early is not None:
            mapped = self._mapped(maps, aborting=True)
        else:
            mapped, early = self._map_phase(maps, reducer, partitions, r_label)
        t_map = time.perf_counter() - t0

        def sections(p: int) -> list[tuple[int, Any]]:
            return [(m, out["where"][p]) for m, out in enumerate(mapped) if out["where"][p] is not None]

        objects = {(m, w[0]) for m, out in enumerate(mapped) for w in out["where"] if w is not None}
        n_sections = sum(len(sections(p)) for p in range(partitions))
        nbytes = sum(w[2] - w[1] for out in mapped for w in out["where"] if w is not None)
        log.info("map_reduce %s: %d mappers wrote %.1f MB in %d objects (%d partition sections); %d reducers started "
                 "early, launching %d", self.shuffle_id, len(maps), nbytes / 1e6, len(objects), n_sections, len(early),
                 partitions - len(early))
        t0 = time.perf_counter()
        futures = dict(early)
        rest = [p for p in range(partitions) if p not in futures]
        futures.update(zip(rest, self._map(reducer, [(p, sections(p), self.secret) for p in rest], self.r_options, r_label)))
        reduced = dict(zip(futures, self._results(list(futures.values()))))
        again = [p for p, out in reduced.items() if out.get("again")]
        if again:  # started early and gave up waiting: once more, with every section known
            log.info("map_reduce %s: %d early reducer(s) ran out of waiting time; running them again", self.shuffle_id, len(again))
            reduced.update(zip(again, self._results(self._map(reducer, [(p, sections(p), self.secret) for p in again],
                                                              self.r_options, r_label))))
        t_reduce = time.perf_counter() - t0
        stages: dict[str, float] = {"map phase (wall)": t_map, "reduce phase (wall, after the map phase)": t_reduce}
        for out in (*mapped, *reduced.values()):
            for name, seconds in out["stages"].items():
                stages[name] = stages.get(name, 0.0) + seconds
        puts = len(objects) + len(mapped)  # the section objects and each mapper's index
        self.stats = {"bytes": nbytes, "puts": puts, "gets": n_sections, "early_reducers": len(early), "stages": stages}
        log.debug("map_reduce %s: %d PUTs, %d section GETs, %d reducers started early; seconds per stage (task stages "
                  "summed over tasks): %s", self.shuffle_id, puts, n_sections, len(early), stages,
                  extra={"wrenpack_shuffle": self.stats})
        results = [reduced[p]["value"] for p in range(partitions)]
        if partitioned:
            return results
        merged: dict[Any, Any] = {}
        for part in results:
            merged.update(part)
        if len(merged) != sum(len(part) for part in results):
            raise _split_key(results, self.partition_fn is not None)
        return merged

    def _together(self, mappers: int) -> bool:
        """Whether the mappers and reducers go out as one launch (``_launch_together``).

        On a warm pool (local workers) each launch is a job, and a worker runs a job's
        calls in a process of that job's own, started when the job's first call
        arrives there: the user's imports (numpy, ...) load again, on the critical
        path of every worker at the start of the reduce phase. One launch keeps the
        process the mappers warmed. The pool runs calls in the order they were
        launched, so a reducer gets a slot only when every mapper has one: it never
        holds a slot a mapper needs. It needs the mappers and reducers to have the
        same options, and each reducer reads every mapper's index (a small object),
        hence a bound on the mappers."""
        caps = self.executor.backend.capabilities
        return (bool(getattr(caps, "warm_pool", False)) and mappers <= TOGETHER_MAPPERS
                and self.m_options == self.r_options)

    def _launch_together(self, both: Callable[..., Any], items: list[Any], partitions: int, m_label: str,
                         r_label: str) -> tuple[list[WrenFuture], dict[int, WrenFuture]]:
        """The mappers, then every reducer, in one launch (one job) of ``both``
        (``shuffle.make_task``); returns their futures. Each reducer waits for the
        mappers' indexes as an early reducer does (up to a quarter of its timeout;
        after that the driver runs it again, ``shuffle``)."""
        budget = self._budget()
        waiting = list(range(len(items)))
        sid = self.shuffle_id
        calls = [("map", sid, item, i, self.secret) for i, item in enumerate(items)]
        calls += [("reduce", sid, p, [], self.secret, waiting, budget) for p in range(partitions)]
        labels = [f"{m_label}[{i}]" for i in range(len(items))] + [f"{r_label}[{p}]" for p in range(partitions)]
        futures = [WrenFuture(label=label) for label in labels]
        self.follow.check()
        launched = self.executor.launch(both, [(args, {}) for args in calls], self.m_options,
                                        label=f"{m_label} and {r_label}", futures=futures)
        self.follow.add(launched)
        log.debug("map_reduce %s: %d mappers and %d reducers launched together (one job)", self.shuffle_id,
                  len(items), partitions)
        maps = launched[: len(items)]
        return maps, dict(enumerate(launched[len(items):]))

    def _budget(self) -> float:
        """How long a reducer started before the map phase ended waits for the mappers."""
        return max(1.0, 0.25 * float(getattr(self.r_options, "timeout", 0) or 0))

    def _mapped(self, maps: list[WrenFuture], aborting: bool) -> list[Any]:
        """The mappers' outputs; if one failed, the waiting reducers are told to stop
        (an abort object) before its exception is raised here."""
        if aborting:
            self._wait_for_mappers(maps)
        else:
            cf.wait(maps, return_when=cf.FIRST_EXCEPTION)
        if aborting and any(f.done() and (f.cancelled() or f.exception() is not None) for f in maps):
            try:
                self._tell_reducers(shuffle.abort)
            except Exception:  # noqa: BLE001 - the reducers then wait out their budget
                log.warning("map_reduce %s: could not tell the waiting reducers to stop", self.shuffle_id,
                            exc_info=True)
        return self._results(maps)

    def _tell_reducers(self, tell: Callable[[Any, str, bytes], None]) -> None:
        """Write the object that tells waiting reducers to stop or to give up waiting
        (``shuffle.abort``, ``shuffle.stop_waiting``), unless this map_reduce's objects
        are gone already: the executor's exit (SIGTERM, interpreter exit, ``stop``)
        removes them once it waited a while for this thread, which may come later
        (``Executor.while_owned`` orders the two)."""
        written = self.executor.while_owned(keys.shuffle_prefix(self.shuffle_id),
                                            lambda: tell(self.executor.store, self.shuffle_id, self.secret))
        if not written:
            log.debug("map_reduce %s: its objects were removed already; the reducers are not told", self.shuffle_id)

    def _wait_for_mappers(self, maps: list[WrenFuture]) -> None:
        """Wait until every mapper is done or one failed, while reducers wait for them.

        A mapper run again (its worker died, or ``retry_on``) goes to the back of the
        pool's queue, behind reducers launched with it (``_launch_together``) that may
        hold every slot while they wait for that very mapper, each for its whole
        budget. So once a mapper is run again, the waiting reducers are told to give
        up waiting (``shuffle.stop_waiting``): their partitions run once the map phase
        is over, as early reducers' that ran out of time do."""
        told = False
        while True:
            _done, pending = cf.wait(maps, timeout=None if told else _RETRY_LOOK_S, return_when=cf.FIRST_EXCEPTION)
            if not pending or any(f.done() and (f.cancelled() or f.exception() is not None) for f in maps):
                return
            if not told and any(f._retried for f in pending):
                log.info("map_reduce %s: a mapper runs again; the reducers waiting for it give up their slots",
                         self.shuffle_id)
                try:
                    self._tell_reducers(shuffle.stop_waiting)
                except Exception:  # noqa: BLE001 - the reducers then wait out their budget
                    log.warning("map_reduce %s: could not tell the waiting reducers to give up", self.shuffle_id,
                                exc_info=True)
                told = True

    def _map_phase(self, maps: list[WrenFuture], reducer: Callable[..., Any], partitions: int,
                   label: str) -> tuple[list[Any], dict[int, WrenFuture]]:
        """Wait for the mappers; returns their outputs and the reducers started meanwhile.

        When only stragglers are left (a tenth of the mappers, at least one) and
        the backend has slots they leave idle, a reducer starts in each (up to a
        tenth of the reducers, or as many as there are stragglers): it reads
        the sections already written, then waits for the stragglers' (up to a
        quarter of its timeout). Only idle slots are used, so a reducer never
        holds a slot a mapper needs; where the backend's concurrency is unknown
        nothing starts early. A failed mapper makes the waiting reducers stop (an
        abort object) before its exception is raised here."""
        slots = getattr(self.executor.backend.capabilities, "concurrency", 0) or 0
        stragglers = max(1, len(maps) // 10)
        budget = self._budget()
        index = {id(f): i for i, f in enumerate(maps)}
        done: dict[int, Any] = {}
        early: dict[int, WrenFuture] = {}
        for fut in cf.as_completed(maps):
            if fut.cancelled() or fut.exception() is not None:
                self._mapped(maps, aborting=bool(early))  # waits for the other mappers, raises the first failure
            done[index[id(fut)]] = fut.result()
            left = len(maps) - len(done)
            if not left or left > stragglers:  # (counted: listing them at every end was quadratic in the mappers)
                continue
            waiting = [i for i in range(len(maps)) if i not in done]
            free = slots - len(waiting) - sum(1 for f in early.values() if not f.done())
            while free > 0 and len(early) < min(partitions, max(stragglers, partitions // 10)):
                p = len(early)
                known = [(m, out["where"][p]) for m, out in sorted(done.items()) if out["where"][p] is not None]
                (early[p],) = self._map(reducer, [(p, known, self.secret, waiting, budget)], self.r_options, label)
                log.debug("map_reduce %s: reducer %d started early, on %d section(s) written, waiting for %d mapper(s)",
                          self.shuffle_id, p, len(known), len(waiting))
                free -= 1
        return [done[i] for i in range(len(maps))], early

    def _reduce_tree(self, leaves: list[tuple[tuple[int, int], WrenFuture | None]], fan_in: int | None,
                     label: str) -> WrenFuture:
        """Reduce stored values, ``(level, index)`` each, ``fan_in`` at a time until one is left.

        Returns the future of the last reduce (which returns its value instead of storing it).
        A group of one value that is not the last is carried up without a call."""
        node = shuffle.make_node(self.reducer, self.shuffle_id)
        level_items = leaves
        level = 1
        while True:
            width = max(1, len(level_items) if fan_in is None else fan_in)
            # (no items at all: one reduce of no values, ``reducer([])``, as the plain form calls it)
            groups = [level_items[i : i + width] for i in range(0, len(level_items), width)] or [[]]
            last = len(groups) == 1
            out: list[tuple[tuple[int, int], WrenFuture | None]] = []
            for group in groups:
                self._results([f for _, f in group if f is not None])
                if len(group) == 1 and not last:
                    out.append(group[0])
                    continue
                with self._lock:
                    idx = self._nodes
                    self._nodes += 1
                self._uses(idx + 1)
                (fut,) = self._map(node, [(level, idx, [where for where, _ in group], self.secret, last)],
                                   self.r_options, label)
                out.append(((level, idx), fut))
            if last:
                return out[0][1]  # type: ignore[return-value]
            level_items, level = out, level + 1

    def _leaves(self, items: list[Any]) -> list[tuple[tuple[int, int], WrenFuture | None]]:
        leaf = shuffle.make_leaf(self.mapper, self.shuffle_id)
        self._uses(len(items))
        maps = self._map(leaf, [(item, i, self.secret) for i, item in enumerate(items)], self.m_options,
                         f"{_name(self.mapper)} (map)")
        return [((0, i), fut) for i, fut in enumerate(maps)]

    def tree(self, items: list[Any], fan_in: int) -> Callable[[], Any]:
        """Launch the mappers; returns what runs the reduce levels."""
        label = f"{_name(self.reducer)} (reduce)"
        self._pickles(shuffle.make_node(self.reducer, self.shuffle_id), label)
        leaves = self._leaves(items)
        return lambda: self._reduce_tree(leaves, fan_in, label).result()

    def per_object(self, items: list[Any], fan_in: int | None) -> Callable[[], dict[str, Any]]:
        """Launch the mappers; returns what runs each object's reduces."""
        self._pickles(shuffle.make_node(self.reducer, self.shuffle_id), f"{_name(self.reducer)} (reduce)")
        leaves = self._leaves(items)
        return lambda: self._per_object(items, leaves, fan_in)

    def _per_object(self, items: list[Any], leaves: list[tuple[tuple[int, int], WrenFuture | None]],
                    fan_in: int | None) -> dict[str, Any]:
        by_object: dict[str, list[tuple[tuple[int, int], WrenFuture | None]]] = {}
        for item, leaf in zip(items, leaves):
            by_object.setdefault(item.key, []).append(leaf)
        if not by_object:
            return {}  # (an empty listing: no object, no reduce)
        # Each object's reduces start as soon as its own chunks are done.
        with cf.ThreadPoolExecutor(min(32, len(by_object)), thread_name_prefix="wrenpack-reduce") as pool:
            finals = {key: pool.submit(self._reduce_tree, leaves, fan_in, f"{_name(self.reducer)} (reduce {key})")
                      for key, leaves in by_object.items()}
            cf.wait(list(finals.values()))
        reduces = {key: f.result() for key, f in finals.items()}
        self._results(list(reduces.values()))
        return {key: fut.result() for key, fut in reduces.items()}


def _single(mapper: Callable[..., Any], items: list[Any], reducer: Callable[[list[Any]], Any],
            options: dict[str, Any]) -> WrenFuture:
    """The original form: mapper results come back here, one more call reduces them.
    A ``@wrenpack.remote`` mapper or reducer runs with its own options and
    executor; a plain one with the options given here."""
    executor = options.pop("executor", None)
    plain = check_options(options, "map_reduce")

    def parts(fn: Any) -> tuple[Executor, Callable[..., Any], dict[str, Any], LaunchState | None]:
        inner, bound, own, state = _unwrap(fn)
        if state is None:
            return executor or default_executor(), inner, plain, None
        return bound or default_executor(), inner, own, state

    m_exec, m_fn, m_opts, m_state = parts(mapper)
    r_exec, r_fn, r_opts, r_state = parts(reducer)
    r_name = getattr(r_fn, "__qualname__", "reducer")
    # The reducer launches once the mappers are done: what would keep it from
    # launching then is raised now, before anything runs.
    label = f"map_reduce({_name(m_fn)}, {_name(r_fn)})"
    r_exec.check_open()
    try:
        r_exec.prepare(r_fn, [], r_exec.options(), r_name)
    except SerializationError as exc:
        raise _unsendable({"reducer": r_fn}, [], label, exc) from None
    follow = _Follow([m_exec, r_exec], f"map_reduce({r_name})", "reduce")
    try:
        with follow.starting():
            map_futures = launch_calls(m_exec, m_fn, [((item,), {}) for item in items], m_opts, None, m_state)
            follow.add(map_futures)
    except SerializationError as exc:
        raise _unsendable({"mapper": m_fn}, items, label, exc) from None
    except PayloadTooLarge as exc:
        raise _item_too_large(exc, items, label) from None

    def chain() -> None:
        try:
            results = [f.result() for f in map_futures]
            follow.check()
            inner = launch_calls(r_exec, r_fn, [((results,), {})], r_opts, None, r_state,
                                 futures=[WrenFuture(label=r_name)])[0]
            follow.add([inner])
            value = inner.result()
            follow.outer.status = inner.status
        except BaseException as exc:  # noqa: BLE001 - propagated to the caller's future
            follow.fail(exc)
            return
        follow.succeed(value)

    threading.Thread(target=chain, name="wrenpack-map-reduce", daemon=True).start()
    return follow.outer
