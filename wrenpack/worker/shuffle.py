"""What the tasks of ``map_reduce`` run in the worker: the shuffle through storage.

Layout of one map_reduce's objects (all removed when it ends)::

    shuffle/<id>/map/<mapper>/<partition>.pkl    one mapper's records for one reducer
    shuffle/<id>/tree/<level>/<index>.pkl        a value waiting for the next reduce level

Data goes worker -> store -> worker; the driver only sees partition sizes and
the final results. wrenpack pickles these objects itself, so each is sealed
with a secret the driver generated for this map_reduce; it reaches the tasks
inside their call arguments (never as a store object of its own) and an
object that fails verification is never unpickled. The tasks are closures
over the user's functions, made here and pickled by value with them.
Standard library and cloudpickle only.
"""
from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import cloudpickle

from wrenpack.errors import ConfigError, ConfigTypeError, CorruptObject, WrenpackError
from wrenpack.storage import Store
from wrenpack.storage import data as user_data

PREFIX = "shuffle/"
#: Parallel reads/writes of one task's partition objects (S3 latency hides behind these).
IO_THREADS = 8
_MAGIC = b"WRSH1"


def prefix(shuffle_id: str) -> str:
    return f"{PREFIX}{shuffle_id}/"


def part_key(shuffle_id: str, mapper: int, partition: int) -> str:
    return f"{PREFIX}{shuffle_id}/map/{mapper:05d}/{partition:05d}.pkl"


def tree_key(shuffle_id: str, level: int, index: int) -> str:
    return f"{PREFIX}{shuffle_id}/tree/{level}/{index:05d}.pkl"


def new_secret() -> bytes:
    try:
        from wrenpack import auth
    except ImportError:  # pragma: no cover - until wrenpack.auth lands
        import os

        return os.urandom(32)
    return auth.new_secret()


def seal(secret: bytes, identity: str, data: bytes) -> bytes:
    try:
        from wrenpack import auth
    except ImportError:  # pragma: no cover - until wrenpack.auth lands
        return _MAGIC + hmac.new(secret, identity.encode() + b"\0" + data, hashlib.sha256).digest() + data
    return auth.seal(secret, identity, data)


def unseal(secret: bytes, identity: str, blob: bytes, key: str) -> bytes:
    try:
        from wrenpack import auth
    except ImportError:  # pragma: no cover - until wrenpack.auth lands
        n = len(_MAGIC) + 32
        data = blob[n:]
        tag = hmac.new(secret, identity.encode() + b"\0" + data, hashlib.sha256).digest()
        if not blob.startswith(_MAGIC) or not hmac.compare_digest(blob[len(_MAGIC) : n], tag):
            raise CorruptObject(f"{key} failed authentication (not written by this map_reduce, or altered); nothing was unpickled")
        return data
    return auth.unseal(secret, identity, blob, key)


_FRAME = b"WSF1"


def _dumps(obj: Any) -> bytes:
    """Pickle protocol 5 with large buffers (numpy arrays, bytes) out of band, framed
    as ``WSF1 | n | header length | buffer lengths... | header | buffers``: the
    reader's arrays then point into the object's bytes instead of being copied."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)  # the C pickler: records by the million
    except Exception:  # noqa: BLE001 - lambdas, local classes: cloudpickle can
        buffers = []
        header = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    sizes = struct.pack(f"<{2 + len(raws)}Q", len(raws), len(header), *(r.nbytes for r in raws))
    return b"".join([_FRAME, sizes, header, *raws])


def _loads(data: bytes) -> Any:
    if not data.startswith(_FRAME):
        raise CorruptObject("a shuffle object has an unknown format; re-run the job")
    view = memoryview(data)
    pos = len(_FRAME)
    (n,) = struct.unpack_from("<Q", view, pos)
    lengths = struct.unpack_from(f"<{n + 1}Q", view, pos + 8)
    pos += 8 * (n + 2)
    header = view[pos : pos + lengths[0]]
    pos += lengths[0]
    buffers = []
    for size in lengths[1:]:
        buffers.append(view[pos : pos + size])
        pos += size
    return pickle.loads(header, buffers=buffers)


def put(store: Store, key: str, secret: bytes, obj: Any) -> int:
    blob = seal(secret, key, _dumps(obj))
    store.put(key, blob)
    return len(blob)


def get(store: Store, key: str, secret: bytes) -> Any:
    return _loads(unseal(secret, key, store.get(key), key))


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
    """A hash that is the same in every process (``hash()`` of a str is not)."""
    if isinstance(key, int):
        return key % partitions
    if isinstance(key, str):
        return zlib.crc32(key.encode()) % partitions
    if isinstance(key, (bytes, bytearray)):
        return zlib.crc32(key) % partitions
    return zlib.crc32(repr(key).encode()) % partitions


def _empty(part: Any) -> bool:
    try:
        return len(part) == 0
    except TypeError:
        return False


_PAIRS = "the mapper must yield (key, value) pairs (or return a list of them)"
_PAIRS_FIX = "make it return [(key, value), ...], or return one part per partition with partitioned=True"


def _output(out: Any, must: str, fix: str) -> Iterable[Any]:
    """A mapper's output, checked: output that cannot be iterated (None from a
    mapper that forgot to return, a number) is a ``ConfigTypeError`` saying what
    the mapper must return, not a bare "object is not iterable"; so is text (its
    characters) and a dict (its keys: a two-letter key would pass as a pair)."""
    if isinstance(out, dict):
        fix = "return list(d.items()) for a dict d of keys to values"
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
        raise ConfigTypeError(f"{must}, it returned {type(out).__name__} {out!r:.60}; {fix}")
    return out


def make_mapper(fn: Callable[[Any], Any], shuffle_id: str, partitions: int,
                partition_fn: Callable[[Any, int], int] | None, partitioned: bool) -> Callable[..., list[int]]:
    """A mapper that writes its output as ``partitions`` sealed objects; returns their sizes (0: none written)."""
    where = partition_fn or default_partition

    def shuffle_map(item: Any, index: int, secret: bytes) -> list[int]:
        store = _store()
        out = fn(item)
        if partitioned:
            parts = list(_output(out, f"with partitioned=True the mapper must return {partitions} parts (one per partition)",
                                 "return a list of one part per partition"))
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
                if not (isinstance(p, int) and 0 <= p < partitions):
                    raise ConfigError(f"partition_fn({k!r:.40}, {partitions}) returned {p!r}, not 0..{partitions - 1}; "
                                      "make it return a partition number")
                parts[p].append((k, v))

        def write(p: int) -> int:
            if _empty(parts[p]):
                return 0
            return put(store, part_key(shuffle_id, index, p), secret, parts[p])

        return _parallel(write, list(range(partitions)))

    return shuffle_map


def _sorted_keys(groups: dict[Any, Any]) -> list[Any]:
    try:
        return sorted(groups)
    except TypeError:  # keys of mixed types: first-seen order
        return list(groups)


def make_reducer(fn: Callable[..., Any], shuffle_id: str, partitioned: bool) -> Callable[..., Any]:
    """A reducer for one partition: reads it from every mapper that wrote one."""

    def shuffle_reduce(partition: int, mappers: list[int], secret: bytes) -> Any:
        store = _store()
        parts = _parallel(lambda m: get(store, part_key(shuffle_id, m, partition), secret), mappers)
        if partitioned:
            return fn(partition, parts)
        groups: dict[Any, list[Any]] = {}
        for records in parts:
            for k, v in records:
                groups.setdefault(k, []).append(v)
        del parts
        return {k: fn(k, groups[k]) for k in _sorted_keys(groups)}

    return shuffle_reduce


def make_leaf(fn: Callable[[Any], Any], shuffle_id: str) -> Callable[..., None]:
    """A mapper whose value stays in the store for a reduce level to read."""

    def tree_map(item: Any, index: int, secret: bytes) -> None:
        put(_store(), tree_key(shuffle_id, 0, index), secret, fn(item))

    return tree_map


def make_node(fn: Callable[[list[Any]], Any], shuffle_id: str) -> Callable[..., Any]:
    """``fn(values)`` over stored values (``(level, index)`` each); the last reduce returns its value."""

    def tree_reduce(level: int, index: int, children: Iterable[tuple[int, int]], secret: bytes, last: bool) -> Any:
        store = _store()
        values = _parallel(lambda c: get(store, tree_key(shuffle_id, c[0], c[1]), secret), list(children))
        value = fn(values)
        if last:
            return value
        put(store, tree_key(shuffle_id, level, index), secret, value)
        return None

    return tree_reduce
