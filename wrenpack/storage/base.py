"""The object-store contract that every backend and the worker handler use.

A store maps string keys ("jobs/ab12/output/00003.pkl") to bytes. Writes are
atomic: a reader sees the whole old object, the whole new one, or none.
``put(..., if_absent=True)`` is the one conditional write: it lets the first
complete result win when a call is delivered twice. Standard library only:
the worker imports this.
"""
from __future__ import annotations

import abc
from typing import Any, Iterable, Iterator

from wrenpack.errors import ObjectChanged


#: The most bytes in one '/'-separated part of a key: a local store keeps each part as a
#: file name, and file systems hold names of at most 255 bytes (Linux's NAME_MAX). Keys of
#: ``wrenpack.store()`` are held to it on S3 too, so that a key works on both.
MAX_PART_BYTES = 255
#: The most bytes in a key, S3's limit (the whole key in the bucket, the store's prefix too).
MAX_KEY_BYTES = 1024


def key_bytes(text: str) -> int:
    """How many bytes ``text`` is in a key (UTF-8, as S3 counts, and as a local store's
    file names are written: ``os.fsencode``)."""
    return len(text.encode("utf-8", "surrogateescape"))


def long_part(key: str) -> tuple[str, int] | None:
    """The first '/'-separated part of ``key`` longer than ``MAX_PART_BYTES``, and its
    length in bytes; None if every part fits in a file name."""
    if len(key) <= MAX_PART_BYTES // 4:  # (no part of so few characters can be too long: the common case)
        return None
    for part in key.split("/"):
        if len(part) > MAX_PART_BYTES // 4 and key_bytes(part) > MAX_PART_BYTES:
            return part, key_bytes(part)
    return None


def shown(text: str, chars: int = 40) -> str:
    """``repr(text)``, cut after ``chars`` characters (a key of 300 in a message is noise)."""
    if len(text) <= chars:
        return repr(text)
    cut = repr(text[:chars])
    return f"{cut[:-1]}...{cut[-1]}"


def changed(where: str, *, listed: bool, why: str = "") -> ObjectChanged:
    """The one-line error for an object read while, or after, it was replaced."""
    if listed:
        return ObjectChanged(f"{where} changed since it was listed{f' ({why})' if why else ''}: it was replaced; "
                             "list it again (wrenpack.objects) and read it again")
    return ObjectChanged(f"{where} changed while it was read{f' ({why})' if why else ''}: it was replaced; read it again")


class Reader:
    """Reads of one version of one object: every read sees the version the first saw,
    or the one a listing saw (``size``, ``version``), or raises ``ObjectChanged``.

    A stream read block by block (``open``, ``ObjectRange``) asked the store for each
    block by key again, so an object replaced mid-read (a ``put`` is atomic, but only
    per request) gave the old version's first blocks and the new one's rest, with no
    error; a range listed before a replacement read the new object with the old size.
    This default is what a store without versions can do: each read asks again, and
    a listed ``size`` is taken as given (no check costs no request)."""

    def __init__(self, store: "Store", key: str, size: int | None = None, version: str | None = None) -> None:
        self.store, self.key = store, key
        self._size = size
        #: the version a listing gave, or (once read) the one the first read found; None if unknown
        self.version = version

    def size(self) -> int:
        """The object's size (the listed one, or asked for once)."""
        if self._size is None:
            self._size = self.store.size(self.key)
        return self._size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (fewer past the object's end)."""
        if end <= start:
            return b""
        if self._size is not None:
            end = min(end, self._size)
        return self.store.get_range(self.key, start, end) if end > start else b""

    def readinto(self, buf: Any, pos: int) -> int:
        """Bytes from ``pos`` into ``buf`` (a writable buffer); how many (0 at the end)."""
        data = self.read(pos, pos + len(buf))
        buf[: len(data)] = data
        return len(data)

    def buffer(self, start: int, end: int) -> Any:
        """``read`` as a read-only buffer: mapped where the store can (``get_range_buffer``)."""
        if self._size is not None:
            end = min(end, self._size)
        return self.store.get_range_buffer(self.key, start, end) if end > start else b""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Store(abc.ABC):
    """Abstract object store. Implementations: ``LocalStore``, ``S3Store``."""

    #: A JSON-able description that ``open_store`` turns back into an equal store
    #: (sent to workers inside each event).
    @property
    @abc.abstractmethod
    def spec(self) -> dict[str, Any]: ...

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Store":
        """The store a ``spec`` describes (``open_store``)."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a spec")

    @property
    def url(self) -> str:
        """A human-readable location, for messages."""
        return str(self.spec)

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store ``data`` at ``key`` atomically.

        With ``if_absent`` the write happens only if ``key`` does not exist yet;
        returns False when it already did (nothing written). Otherwise True.
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes at ``key``; raise ``ObjectNotFound`` if absent."""

    def put_chunks(self, key: str, chunks: Iterable[Any]) -> int:
        """Store the concatenation of ``chunks`` (buffers, consumed once in order) at
        ``key`` atomically; returns its size. A store that can write the pieces as
        they come (``LocalStore``) never joins them; the default joins them once."""
        data = b"".join(chunks)
        self.put(key, data)
        return len(data)

    def get_buffer(self, key: str) -> Any:
        """The object's bytes as a read-only buffer (``ObjectNotFound`` if absent).
        A store that can map the object (``LocalStore``: a file in /dev/shm) returns
        the mapping, so nothing is copied; the default is ``get``. The mapping shows
        the file, so a reader that parses part of it copies that part first."""
        return self.get(key)

    def get_range_buffer(self, key: str, start: int, end: int) -> Any:
        """``get_range`` as a read-only buffer: mapped where the store can (``get_buffer``)."""
        return self.get_range(key, start, end)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object (default: read all, slice)."""
        return self.get(key)[start:end]

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys that start with ``prefix``, sorted."""

    def list_folders(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (a folder, ending in "/") under
        which keys exist, sorted: the jobs of a store without listing every one
        of their objects (default: from ``list``; stores that can list a level
        alone override it)."""
        found = {key[len(prefix):].split("/", 1)[0] for key in self.list(prefix) if "/" in key[len(prefix):]}
        return sorted(found)

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix``; return how many."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def delete_prefixes(self, prefixes: Iterable[str]) -> int:
        """``delete_prefix`` of each of ``prefixes`` (a map_reduce's: one per shard it
        used, ``keys.shuffle_prefixes``); how many keys went. Every prefix is tried even
        when one fails, the first failure raised after. Stores whose requests wait on a
        network (S3) run them side by side."""
        removed, failed = 0, None
        for prefix in prefixes:
            try:
                removed += self.delete_prefix(prefix)
            except Exception as exc:  # noqa: BLE001 - raised below, once the others are gone
                failed = failed or exc
        if failed is not None:
            raise failed
        return removed

    def delete_prefix_except(self, prefix: str, kept: tuple[str, ...]) -> int:
        """Remove every key under ``prefix`` but those that start with one of ``kept``;
        return how many went."""
        keys = [key for key in self.list(prefix) if not key.startswith(kept)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def unchanged_for(self, prefix: str) -> float | None:
        """Seconds since anything under the folder ``prefix`` last changed (an object
        written or removed there); None if nothing is under it. ``wrenpack clean`` leaves
        a folder without its owner record until this is old enough: a writer that
        starts a job makes the folder first. A store that cannot tell (this default)
        says 0: as if it had just changed, so nothing is taken for a stopped writer's."""
        return 0.0 if self.list(prefix) else None

    def remove_stopped_writes(self, grace_s: float = 1.0) -> int:
        """Remove what writers stopped mid-write left (a call killed at its limit,
        cancelled, or stopped at the program's exit): a local store's temporary
        files of processes that are gone. How many went; a store whose unfinished
        writes leave nothing behind that can be seen (this default) does nothing."""
        return 0

    def iter_list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Keys under ``prefix`` in order; with ``start_after``, only those after it."""
        for key in self.list(prefix):
            if start_after is None or key > start_after:
                yield key

    def size(self, key: str) -> int:
        """The object's size in bytes; ``ObjectNotFound`` if absent (default: read it)."""
        return len(self.get(key))

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        """``(key, size)`` of every key under ``prefix``, sorted (for splitting objects into chunks)."""
        return [(key, self.size(key)) for key in self.list(prefix)]

    def list_versions(self, prefix: str) -> list[tuple[str, int, str | None]]:
        """``(key, size, version)`` of every key under ``prefix``, sorted: ``list_sizes``
        with what ``reader`` checks a later read against (an S3 ETag; a local file's
        identity), so a range listed before its object was replaced is not read in the
        new one. None where the store cannot tell (this default)."""
        return [(key, size, None) for key, size in self.list_sizes(prefix)]

    def reader(self, key: str, size: int | None = None, version: str | None = None) -> Reader:
        """A ``Reader`` of one version of ``key``: that of the listing (``size``,
        ``version`` from ``list_versions``) if given, else the one its first read finds."""
        return Reader(self, key, size, version)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"
