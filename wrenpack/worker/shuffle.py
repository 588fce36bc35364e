"""What the tasks of ``map_reduce`` run in the worker: the shuffle through storage.

Layout of one map_reduce's objects (all removed when it ends; ``wrenpack.keys``)::

    shuffle/<shard>/<id>/m<mapper>-<n>       a mapper's n-th object: one sealed section per partition
    shuffle/<shard>/<id>/i<mapper>           where its sections are, written after them
    shuffle/<shard>/<id>/t<level>-<index>    a value waiting for the next reduce level
    shuffle/<id>/abort                       the driver's word to reducers waiting for mappers

(the shard first, so S3's splits of ``shuffle/`` serve every map_reduce: ``wrenpack.keys``).

Data goes worker -> store -> worker: a mapper writes each byte once (pickle
protocol 5 keeps arrays and bytes out of the pickle; the MAC and the write go
through the data together), a reducer reads its section by range, mapped
rather than copied on the local store. The driver only sees where each
partition's section is and the final results. On the local store a reducer
whose result has gone gives back the memory of the sections it read
(``_release_sections``), so the next task's writes reuse those pages; and a
shuffle task's process keeps the large blocks a task frees for the next task
(``reuse_freed_memory``). wrenpack pickles these objects itself, so each is sealed
with a secret the driver generated for this map_reduce; it reaches the tasks
inside their call arguments (never as a store object of its own) and an
object that fails verification is never unpickled. The tasks are closures
over the user's functions, made here and pickled by value with them.
Standard library and cloudpickle only.
"""
from __future__ import annotations

import array
import ctypes
import numbers
import os
import pickle
import struct
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import cloudpickle

from wrenpack import auth, keys
from wrenpack.errors import (ConfigError, ConfigTypeError, CorruptObject, ObjectNotFound, SerializationError,
                             WrenpackError, exc_text)
from wrenpack.storage import Store
from wrenpack.limits import integral
from wrenpack.storage import data as user_data
from wrenpack.worker import callscope
from wrenpack.wire.outcome import add_note

PREFIX = keys.SHUFFLE
#: Parallel reads/writes of one task's partition objects (S3 latency hides behind these).
IO_THREADS = 8
#: A mapper's partitions go into objects of up to about this size, each
#: partition a separately sealed section that its reducer reads by range: on S3
#: one PUT per object instead of one per partition (a 1,000 x 1,000 sort: 16
#: PUTs per mapper, not 1,000), and locally one file per mapper.
COMBINE_BYTES = 64 << 20


def prefixes(shuffle_id: str, indices: int = keys.SHUFFLE_SHARDS) -> list[str]:
    """Every prefix of a map_reduce's objects, its tasks' indices below ``indices`` (``keys.shuffle_prefixes``)."""
    return keys.shuffle_prefixes(shuffle_id, indices)


def part_key(shuffle_id: str, mapper: int, n: int = 0) -> str:
    return keys.shuffle_part_key(shuffle_id, mapper, n)


def tree_key(shuffle_id: str, level: int, index: int) -> str:
    return keys.shuffle_tree_key(shuffle_id, level, index)


def new_secret() -> bytes:
    return auth.new_secret()


def identity(key: str, section: int | None = None) -> str:
    """What a shuffle object's MAC covers besides its bytes: its key (which names
    the map_reduce and the mapper or the tree node) and, for a mapper's object,
    the partition of the section, so no section passes for another's."""
    return f"wrenpack-shuffle/2 key={key} partition={'' if section is None else section}"


#: The object format: ``WSF2 | n | header length | n buffer lengths | header |
#: (zeros to a multiple of 64) buffer | ... | seal trailer``, all lengths
#: little-endian u64. The pickle header is small; numpy arrays and bytes travel
#: as raw buffers after it (pickle protocol 5, out of band), each at an offset
#: that is a multiple of 64, so a reader's arrays point into the object (a
#: mapped file: no copy at all) with their alignment. Shuffle objects live only
#: while their map_reduce runs and are read by the same wrenpack that wrote
#: them, so the older ``WSF1`` format is refused, never read.
_FRAME = b"WSF2"
#: the same layout for a part that is bytes or a bytearray: its one buffer is the
#: part itself (no pickling at all) and the header is the type's name
_RAW = b"WSR2"
_RAW_TYPES = {b"bytes": bytes, b"bytearray": bytearray}
_ALIGN = 64
_ZEROS = bytes(_ALIGN)
#: a header larger than this is not one wrenpack wrote (a bound before anything is trusted)
_MAX_BUFFERS = 1 << 24


def _frames(obj: Any, what: str = "the value") -> list[Any]:
    """The object's pieces in the format above (buffers are the caller's memory, not copies).
    ``what`` names it in the ``SerializationError`` if it cannot be pickled."""
    magic = _FRAME
    if type(obj) in (bytes, bytearray):
        magic, header, raws = _RAW, type(obj).__name__.encode(), [memoryview(obj)]
    else:
        buffers: list[pickle.PickleBuffer] = []
        try:
            header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)  # the C pickler: records by the million
        except Exception:  # noqa: BLE001 - lambdas, local classes: cloudpickle can
            buffers = []
            try:
                header = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
            except Exception as exc:  # noqa: BLE001 - a lock, a socket, a generator: named, in one line
                raise SerializationError(f"map_reduce: {what} (a {type(obj).__name__}) could not be pickled: "
                                         f"{(exc_text(exc).splitlines() or [type(exc).__name__])[0]}; "
                                         "return plain data instead") from None
        raws = [b.raw() for b in buffers]
    prefix = magic + struct.pack(f"<{2 + len(raws)}Q", len(raws), len(header), *(r.nbytes for r in raws))
    pieces: list[Any] = [prefix, header]
    at = len(prefix) + len(header)
    for raw in raws:
        pad = -at % _ALIGN
        if pad:
            pieces.append(_ZEROS[:pad])
        pieces.append(raw)
        at += pad + raw.nbytes
    return pieces


def _corrupt(key: str, why: str) -> CorruptObject:
    return CorruptObject(f"{key} failed authentication ({why}); nothing was unpickled: re-run the job and check "
                         "who can write to the store")


def _open(blob: Any, key: str, secret: bytes, section: int | None = None) -> Any:
    """Check a sealed shuffle object and unpickle it.

    ``blob`` may be a mapping of a file another process could still write to
    (``Store.get_buffer``), so every byte the unpickler interprets (the frame and
    the pickle header) is copied first and the MAC checks those copies; the raw
    buffers are data only, left where they are for the arrays to point into."""
    view = memoryview(blob).cast("B")
    total = len(view) - auth.TRAILER_BYTES if auth._enabled else len(view)
    magic = bytes(view[: len(_FRAME)])
    if total < len(_FRAME) + 16 or magic not in (_FRAME, _RAW):
        raise _corrupt(key, "not a wrenpack shuffle object of this version")
    (n,) = struct.unpack_from("<Q", view, len(_FRAME))
    if n > _MAX_BUFFERS or len(_FRAME) + 8 * (n + 2) > total or (magic == _RAW and n != 1):
        raise _corrupt(key, "a bad frame")
    frame_end = len(_FRAME) + 8 * (n + 2)
    frame = bytes(view[:frame_end])
    lengths = struct.unpack_from(f"<{n + 1}Q", frame, len(_FRAME) + 8)
    header_end = frame_end + lengths[0]
    if header_end > total:
        raise _corrupt(key, "a bad frame")
    header = bytes(view[frame_end:header_end])
    spans = []
    at = header_end
    for size in lengths[1:]:
        at += -at % _ALIGN
        spans.append((at, at + size))
        at += size
    if at != total:
        raise _corrupt(key, "a bad frame")
    trailer = bytes(view[total:])
    auth.verify_parts(secret, identity(key, section), trailer, [frame, header, view[header_end:total]], key)
    if magic == _RAW:
        kind = _RAW_TYPES.get(header)
        if kind is None:
            raise _corrupt(key, "a bad frame")
        return kind(view[spans[0][0] : spans[0][1]])  # the one copy: out of the mapping, into the value
    return pickle.loads(header, buffers=[view[a:b] for a, b in spans])


def put(store: Store, key: str, secret: bytes, obj: Any, what: str = "the value") -> int:
    """Write ``obj`` sealed at ``key``; the MAC and the write go through it together,
    a piece at a time (keyed BLAKE3 when installed: ``auth``). Returns the size."""
    chunks = auth.seal_stream(secret, identity(key), _frames(obj, what), fast=True)
    return store.put_chunks(key, chunks)


def get(store: Store, key: str, secret: bytes) -> Any:
    """The object at ``key``, checked; mapped rather than copied where the store can."""
    return _open(store.get_buffer(key), key, secret)


def plan_objects(sizes: Sequence[int], target: int = COMBINE_BYTES) -> list[list[int]]:
    """The partitions (indices of non-zero ``sizes``) grouped into objects in order,
    each group up to ``target`` bytes (a larger partition is an object alone)."""
    groups: list[list[int]] = []
    total = 0
    for p, size in enumerate(sizes):
        if not size:
            continue
        if groups and total + size <= target:
            groups[-1].append(p)
            total += size
        else:
            groups.append([p])
            total = size
    return groups


def put_sections(store: Store, shuffle_id: str, mapper: int, secret: bytes, parts: Sequence[Any],
                 target: int = COMBINE_BYTES) -> list[tuple[int, int, int] | None]:
    """Write a mapper's parts as sealed sections of ``plan_objects``' objects (written in
    parallel); returns, per partition, ``(object number, start, end)`` or None (empty)."""
    framed = [None if _empty(part) else _frames(part, f"the mapper's output for partition {p}")
              for p, part in enumerate(parts)]
    sizes = [0 if f is None else sum(memoryview(x).nbytes for x in f) + auth.TRAILER_BYTES * auth._enabled
             for f in framed]
    groups = plan_objects(sizes, target)
    where: list[tuple[int, int, int] | None] = [None] * len(parts)
    for n, group in enumerate(groups):
        at = 0
        for p in group:
            at += -at % _ALIGN  # each section starts at a multiple of 64, so its buffers keep their alignment
            where[p] = (n, at, at + sizes[p])
            at += sizes[p]

    def write(n: int) -> None:
        key = part_key(shuffle_id, mapper, n)

        def chunks() -> Iterable[Any]:
            at = 0
            for p in groups[n]:
                _, start, end = where[p]  # type: ignore[misc]
                if start > at:
                    yield _ZEROS[: start - at]
                yield from auth.seal_stream(secret, identity(key, p), framed[p], fast=True)  # type: ignore[arg-type]
                at = end

        store.put_chunks(key, chunks())

    _parallel(write, list(range(len(groups))))
    return where


def get_section(store: Store, shuffle_id: str, mapper: int, partition: int, secret: bytes,
                where: tuple[int, int, int]) -> Any:
    """Partition ``partition``'s section of mapper ``mapper``'s object, checked (one ranged read)."""
    return _read_section(store, shuffle_id, mapper, partition, secret, where)[0]


def _read_section(store: Store, shuffle_id: str, mapper: int, partition: int, secret: bytes,
                  where: tuple[int, int, int]) -> tuple[Any, "weakref.ref[Any] | None"]:
    """``get_section``, and a weak reference to the mapping the value points into
    (None where the store copied the bytes): dead once nothing holds a view of it."""
    n, start, end = where
    key = part_key(shuffle_id, mapper, n)
    blob = store.get_range_buffer(key, start, end)
    try:
        mapping = weakref.ref(blob.obj) if isinstance(blob, memoryview) else None
    except TypeError:  # bytes and bytearrays take no weak references: nothing is mapped
        mapping = None
    return _open(blob, key, secret, partition), mapping


def _release_sections(store: Store, shuffle_id: str, read: Sequence[tuple[int, tuple[int, int, int]]],
                      mappings: Sequence["weakref.ref[Any] | None"]) -> int:
    """Give back the store's memory of the sections a reducer is done with
    (``LocalStore.release_range``: a section is read by its partition's reducer
    alone); returns the bytes released. Only sections whose mapping is gone:
    if the reducer's value (or anything it kept) still points into one, its
    bytes must stay. A store without ``release_range`` (S3) keeps everything."""
    release = getattr(store, "release_range", None)
    if release is None:
        return 0
    freed = 0
    for (m, (n, start, end)), mapping in zip(read, mappings):
        if mapping is not None and mapping() is not None:
            continue
        freed += release(part_key(shuffle_id, m, n), start, end)
    return freed


#: glibc's ``mallopt`` parameters (``<malloc.h>``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: a shuffle task's blocks below this come from the heap and are kept there when freed
REUSE_BELOW = 1 << 30
_reusing: bool | None = None


def reuse_freed_memory() -> bool:
    """Make this process's malloc keep the big blocks a task frees, for the next task to reuse.

    By default glibc gives every block over 32 MB its own mapping and unmaps it
    when it is freed (smaller ones it keeps only below a threshold that moves),
    so each of a shuffle task's large arrays (a mapper's grouped records, a
    reducer's concatenation and sorted output: tens of MB each) is memory the
    process has never touched. First touch costs system time for every page,
    and far more on a VM whose balloon was handed the free pages back (about
    2 ms per MB against 0.1). A shuffle's tasks run in a process of their own
    isolation domain (``isolation``: ended before another domain's call runs
    there; ``make_task``: the map_reduces of these same functions), so what one
    task freed is kept only for tasks of the same functions, whose mappers' and
    reducers' arrays are alike in size: the next task reuses the pages instead of
    faulting in new ones. What stays allocated is at most what one of those
    tasks used at its peak, which the same memory limit already allowed.
    Once per process; False where there is no glibc ``mallopt`` (musl, macOS)."""
    global _reusing
    if _reusing is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _reusing = (mallopt(_M_MMAP_THRESHOLD, REUSE_BELOW) == 1
                        and mallopt(_M_TRIM_THRESHOLD, REUSE_BELOW) == 1)
        except (OSError, AttributeError):
            _reusing = False
    return _reusing


def _keep_freed_memory() -> None:
    """``reuse_freed_memory`` where a task runs in an invocation (Lambda's, or a local
    worker's: both set ``AWS_LAMBDA_FUNCTION_NAME``); a task called in some other
    process (a test's) leaves that process's malloc as it was.

    A task whose process already holds more than half of this call's memory limit
    (what earlier tasks kept, when this map_reduce asks for less memory than one
    of the same functions before it) first hands the free heap back
    (``malloc_trim``): kept memory must never be what pushes a call over its limit."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or not reuse_freed_memory():
        return
    try:
        limit = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0")) << 20
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    if limit and resident > limit // 2:
        ctypes.CDLL(None).malloc_trim(0)


def _store() -> Store:
    store = user_data._bound
    if store is None:
        raise WrenpackError("map_reduce's tasks run only inside remote calls")
    return store


def _parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def default_partition(key: Any, partitions: int) -> int:
    """A hash that is the same in every process (``hash()`` of a str is not), and the
    same for keys that are equal, which a dict takes as one key (3, 3.0 and
    np.int64(3); ('a', 1) and ('a', 1.0)): so they meet in one reducer."""
    if partitions == 1:  # no stable hash needed: every key meets in the one reducer
        try:
            hash(key)  # (an unhashable key is still named here, in the mapper)
        except TypeError:
            raise _unhashable(key) from None
        return 0
    return _stable_hash(key) % partitions


def _stable_hash(key: Any) -> int:
    kind = type(key)
    if kind is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))  # (a lone surrogate, from surrogateescape, too)
    if kind is int:
        return key
    if isinstance(key, (bytes, bytearray)):
        return zlib.crc32(key)
    if isinstance(key, str):
        return zlib.crc32(str.encode(key, "utf-8", "surrogatepass"))
    if isinstance(key, numbers.Number):
        if isinstance(key, numbers.Integral):
            return int(key)
        try:
            if key == int(key):  # type: ignore[call-overload]
                return int(key)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):  # complex, inf, nan
            pass
        return hash(key)  # (numbers' hashes are the same in every process, and equal for equal numbers)
    if isinstance(key, tuple):
        return zlib.crc32(b"".join((_stable_hash(x) & _MASK).to_bytes(8, "little") for x in key), len(key))
    if isinstance(key, frozenset):
        return sum(_stable_hash(x) & _MASK for x in key) & _MASK
    try:
        hash(key)  # (here, in the mapper: its reducer groups values by key)
    except TypeError:
        raise _unhashable(key) from None
    if kind.__repr__ is object.__repr__ and kind.__hash__ is not object.__hash__:
        # Equal keys, by its own __eq__ and __hash__, but each repr names its address: they would
        # go to partitions by chance and be refused (as if a partition_fn had split them), or not.
        raise ConfigTypeError(f"map_reduce: the mapper's key {key!r:.60} (a {kind.__qualname__}) has no hash that is "
                              f"the same in every process: keys of other types are partitioned by their repr, and "
                              f"{kind.__qualname__}'s names its address; give it a __repr__ that shows its value (a "
                              "dataclass has one), use a tuple or str key, or pass partition_fn=")
    return zlib.crc32(repr(key).encode("utf-8", "backslashreplace"))


_MASK = (1 << 64) - 1


def _unhashable(key: Any) -> ConfigTypeError:
    return ConfigTypeError(f"map_reduce: the mapper's key {key!r:.40} (a {type(key).__name__}) is not hashable, and "
                           "each reducer groups values by key; make keys hashable: a tuple for a list, a frozenset for a set")


def _empty(part: Any) -> bool:
    try:
        return len(part) == 0
    except TypeError:
        return False


_PAIRS = "the mapper must yield (key, value) pairs (or return a list of them)"
_PAIRS_FIX = "make it return [(key, value), ...], or return one part per partition with partitioned=True"


def _output(out: Any, must: str, fix: str, dict_fix: str = "return list(d.items()) for a dict d of keys to values") -> Iterable[Any]:
    """A mapper's output, checked: output that cannot be iterated (None from a
    mapper that forgot to return, a number) is a ``ConfigTypeError`` saying what
    the mapper must return, not a bare "object is not iterable"; so is text (its
    characters) and a dict (its keys: a two-letter key would pass as a pair)."""
    if isinstance(out, dict):
        fix = dict_fix
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
        raise ConfigTypeError(f"{must}, it returned {type(out).__name__} {out!r:.60}; {fix}")
    return out


def _partition_number(p: Any, key: Any, partitions: int) -> int:
    """What ``partition_fn`` returned, as a partition number: any integer (numpy's
    too, as a list index takes it) in 0..R-1. A bool is refused as everywhere a
    number is asked for (``k > pivot`` means two partitions only by accident)."""
    number = integral(p)
    if number is None or not 0 <= number < partitions:
        kind = "" if type(p) is int else f" (not a {type(p).__name__})"
        raise ConfigError(f"partition_fn({key!r:.40}, {partitions}) returned {p!r:.40}, not 0..{partitions - 1}; make it "
                          f"return a partition number, an int in that range{kind}")
    return number


def make_mapper(fn: Callable[[Any], Any], shuffle_id: str, partitions: int,
                partition_fn: Callable[[Any, int], int] | None, partitioned: bool) -> Callable[..., dict[str, Any]]:
    """A mapper that writes its output as sealed partition sections (``put_sections``);
    returns where each partition is and how long each stage took."""
    where = partition_fn or default_partition

    def shuffle_map(item: Any, index: int, secret: bytes) -> dict[str, Any]:
        store = _store()
        _keep_freed_memory()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(item)
        if partitioned:
            parts = list(_output(out, f"with partitioned=True the mapper must return {partitions} parts (one per partition)",
                                 "return a list of one part per partition",
                                 f"return [d[i] for i in range({partitions})] for a dict d of partitions to parts"))
            if len(parts) != partitions:
                raise ConfigError(f"with partitioned=True the mapper must return {partitions} parts (one per "
                                  f"partition), it returned {len(parts)}")
        else:
            parts = [[] for _ in range(partitions)]
            for record in _output(out, _PAIRS, _PAIRS_FIX):
                try:
                    k, v = record
                except (TypeError, ValueError):
                    raise ConfigTypeError(f"{_PAIRS}, it yielded {type(record).__name__} {record!r:.60}; {_PAIRS_FIX}") from None
                p = where(k, partitions)
                if type(p) is not int or not 0 <= p < partitions:
                    p = _partition_number(p, k, partitions)
                parts[p].append((k, v))
        t1, c1 = time.perf_counter(), time.process_time()
        sections = put_sections(store, shuffle_id, index, secret, parts)
        put_index(store, shuffle_id, index, secret, sections)  # last: the sections are there
        t2, c2 = time.perf_counter(), time.process_time()
        return {"where": sections, "stages": _stages(("map (user code)", t1 - t0, c1 - c0),
                                                     ("map: pickle+seal+write", t2 - t1, c2 - c1))}

    return shuffle_map


def _stages(*stages: tuple[str, float, float]) -> dict[str, float]:
    """Each stage's wall seconds, and its CPU seconds (this process, all threads) as "<stage> [cpu]":
    on a shared machine the wall time says how busy it was, the CPU time what the stage costs."""
    out: dict[str, float] = {}
    for name, wall, cpu in stages:
        out[name] = wall
        out[f"{name} [cpu]"] = cpu
    return out


def _sorted_keys(groups: dict[Any, Any]) -> list[Any]:
    """The keys sorted; keys that do not all compare (str and int, None) sorted within
    their type: numbers first, then the other types by name (a type whose keys do not
    compare among themselves keeps them in the order they were first seen)."""
    try:
        return sorted(groups)
    except TypeError:
        pass
    by_type: dict[str, list[Any]] = {}
    for key in groups:
        by_type.setdefault("" if isinstance(key, numbers.Real) else type(key).__qualname__, []).append(key)
    out: list[Any] = []
    for name in sorted(by_type):
        same = by_type[name]
        try:
            same = sorted(same)
        except TypeError:  # (sorted, not sort: a failed sort leaves a list half sorted)
            pass
        out += same
    return out


#: how often a reducer started early looks for the index of a mapper it waits for (seconds, growing);
#: a store whose look-ups cost next to nothing caps the interval lower (its ``max_poll_s``)
_POLL = (0.01, 0.5)


def abort(store: Store, shuffle_id: str, secret: bytes) -> None:
    """Tell the reducers that wait for mappers to stop: a mapper failed (the driver writes this)."""
    put(store, keys.shuffle_abort_key(shuffle_id), secret, "abort")


def stop_waiting(store: Store, shuffle_id: str, secret: bytes) -> None:
    """Tell the reducers that wait for mappers to give up waiting, without failing: a
    mapper is run again (its worker died), and its run again may need a slot a waiting
    reducer holds. They end with ``{"again": True}``, and the driver runs their
    partitions once the map phase is over (the driver writes this)."""
    put(store, keys.shuffle_abort_key(shuffle_id), secret, "again")


def _wait_for(store: Store, shuffle_id: str, partition: int, secret: bytes, waiting: Sequence[int],
              budget: float) -> list[tuple[int, tuple[int, int, int]]] | None:
    """The sections of ``waiting`` mappers as each writes its index; None if ``budget``
    seconds pass first (the driver then runs this partition again, after the map phase).
    ``WrenpackError`` if the driver says a mapper failed, None at once if it says a mapper
    runs again (``stop_waiting``). One mapper is looked for at a time, so a waiting
    reducer costs one GET (and one HEAD) per poll, whatever it waits for."""
    left = list(waiting)
    found: list[tuple[int, tuple[int, int, int]]] = []
    deadline = time.monotonic() + budget
    delay = _POLL[0]
    while left:
        try:
            table = get(store, keys.shuffle_index_key(shuffle_id, left[0]), secret)
        except ObjectNotFound:
            if store.exists(keys.shuffle_abort_key(shuffle_id)):
                if get(store, keys.shuffle_abort_key(shuffle_id), secret) == "again":
                    return None
                raise WrenpackError("a mapper of this map_reduce failed, so this reducer stopped waiting for it") from None
            if time.monotonic() > deadline:
                return None
            time.sleep(delay)
            delay = min(getattr(store, "max_poll_s", _POLL[1]), delay * 1.5)
            continue
        m = left.pop(0)
        section = _index_entry(table, partition, keys.shuffle_index_key(shuffle_id, m))
        if section is not None:
            found.append((m, section))
    return found


def put_index(store: Store, shuffle_id: str, mapper: int, secret: bytes, sections: Sequence[Any]) -> None:
    """Write where a mapper's sections are (``put_sections``' list: ``(object, start,
    end)`` or None per partition), for the reducers started before the map phase ended
    (``_wait_for``), as one flat array of three int64 a partition (-1s for none): a
    reducer looks up its own entry, not R tuples unpickled, which made the reducers of
    a shuffle with many partitions quadratic in them (2.2 ms an index at R=20,000)."""
    table = array.array("q")
    for where in sections:
        table.extend(where if where is not None else (-1, -1, -1))
    put(store, keys.shuffle_index_key(shuffle_id, mapper), secret, table)


def _index_entry(table: Any, partition: int, key: str) -> tuple[int, int, int] | None:
    """Partition ``partition``'s entry in a mapper's index (``put_index``). The index passed
    its MAC (this map_reduce's secret), so one of another shape is a wrenpack bug."""
    if not isinstance(table, array.array) or table.typecode != "q" or len(table) <= 3 * partition + 2:
        raise CorruptObject(f"{key}: not a mapper's index of this version of wrenpack, though sealed for this "
                            "map_reduce; report it as a wrenpack bug")
    n, start, end = table[3 * partition: 3 * partition + 3]
    return None if n < 0 else (n, start, end)


def _shown(key: Any) -> str:
    """A key as an error names it: its repr, cut short."""
    try:
        text = repr(key)
    except Exception:  # noqa: BLE001 - a key whose repr fails is still named by its type
        return f"(a {type(key).__name__})"
    return text if len(text) <= 200 else text[:200] + "..."


def make_reducer(fn: Callable[..., Any], shuffle_id: str, partitioned: bool) -> Callable[..., Any]:
    """A reducer for one partition: reads its section from every mapper that wrote one.
    Returns the value and how long each stage took.

    Started before the map phase ended (``waiting``: mappers still running), it
    reads the sections already written first, then each waiting mapper's as its
    index appears; if that takes more than ``budget`` seconds it gives up and says
    so (``{"again": True}``), and the driver runs the partition again later."""

    def shuffle_reduce(partition: int, sections: list[tuple[int, tuple[int, int, int]]], secret: bytes,
                       waiting: Sequence[int] = (), budget: float = 0.0) -> dict[str, Any]:
        store = _store()
        _keep_freed_memory()
        t0, c0 = time.perf_counter(), time.process_time()
        read = list(sections)
        got = dict(zip((m for m, _ in read),
                       _parallel(lambda s: _read_section(store, shuffle_id, s[0], partition, secret, s[1]), read)))
        if waiting:
            more = _wait_for(store, shuffle_id, partition, secret, waiting, budget)
            if more is None:
                return {"again": True, "stages": {}}
            read += more
            got.update(zip((m for m, _ in more),
                           _parallel(lambda s: _read_section(store, shuffle_id, s[0], partition, secret, s[1]), more)))
        parts = [got[m][0] for m in sorted(got)]  # in mapper order
        mappings = [got[m][1] for m, _ in read]
        del got
        t1, c1 = time.perf_counter(), time.process_time()
        if partitioned:
            value = fn(partition, parts)
        else:
            groups: dict[Any, list[Any]] = {}
            for records in parts:
                for k, v in records:
                    try:
                        groups.setdefault(k, []).append(v)
                    except TypeError:
                        raise _unhashable(k) from None
            del parts
            value = {}
            for k in _sorted_keys(groups):
                try:
                    value[k] = fn(k, groups[k])
                except Exception as exc:
                    # (the error named the partition's call only: which of its keys is the user's to find)
                    add_note(exc, f"raised by the reducer for the key {_shown(k)}")
                    raise
            del groups
        t2, c2 = time.perf_counter(), time.process_time()
        parts = []  # (the user's function has returned: what it kept of the parts is in its value)
        # Released once the result is on its way (not before it is pickled and sent: a
        # worker that dies meanwhile has the partition run again, which reads them again).
        callscope.after_reply(lambda: _release_sections(store, shuffle_id, read, mappings))
        return {"value": value, "stages": _stages(("reduce: read+verify+unpickle", t1 - t0, c1 - c0),
                                                  ("reduce (user code)", t2 - t1, c2 - c1))}

    return shuffle_reduce


def make_task(mapper: Callable[[Any], Any], reducer: Callable[..., Any], partitions: int,
              partition_fn: Callable[[Any, int], int] | None, partitioned: bool) -> Callable[..., Any]:
    """One function for a shuffle's mappers (``("map", shuffle_id, item, index, secret)``)
    and reducers (``("reduce", shuffle_id, partition, ...)``), so the driver can launch
    them as one job: a warm worker then runs them in one process and the user's
    imports load once.

    The map_reduce's id comes with each call, not in the function: so every
    map_reduce of the same user functions (and partitioning) from one driver
    process is the same function, hence the same isolation domain
    (``wire.event.isolation_domain``), and runs in the job processes the one
    before warmed (its imports loaded, the memory its tasks freed kept:
    ``reuse_freed_memory``), as a second ``f.map`` of the same ``f`` does."""

    def shuffle_task(role: str, shuffle_id: str, *args: Any) -> Any:
        if role == "map":
            return make_mapper(mapper, shuffle_id, partitions, partition_fn, partitioned)(*args)
        return make_reducer(reducer, shuffle_id, partitioned)(*args)

    return shuffle_task


def make_leaf(fn: Callable[[Any], Any], shuffle_id: str) -> Callable[..., None]:
    """A mapper whose value stays in the store for a reduce level to read."""

    def tree_map(item: Any, index: int, secret: bytes) -> None:
        put(_store(), tree_key(shuffle_id, 0, index), secret, fn(item), "the mapper's value")

    return tree_map


def make_node(fn: Callable[[list[Any]], Any], shuffle_id: str) -> Callable[..., Any]:
    """``fn(values)`` over stored values (``(level, index)`` each); the last reduce returns its value."""

    def tree_reduce(level: int, index: int, children: Iterable[tuple[int, int]], secret: bytes, last: bool) -> Any:
        store = _store()
        values = _parallel(lambda c: get(store, tree_key(shuffle_id, c[0], c[1]), secret), list(children))
        value = fn(values)
        if last:
            return value
        put(store, tree_key(shuffle_id, level, index), secret, value, "the reducer's value")
        return None

    return tree_reduce
