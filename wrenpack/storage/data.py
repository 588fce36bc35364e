"""The user's data in the store: a storage handle and lazily read object ranges.

``wrenpack.store()`` is the same store the executor uses, seen under the
``data/`` prefix (wrenpack's own objects live under ``jobs/`` and
``shuffle/``). Inside a remote call it is the store the call was invoked
with (the handler binds it); in the client it is the default executor's. It
reads and writes bytes only: user bytes are the user's data and wrenpack
never unpickles them.

``wrenpack.objects(source, chunk_size=...)`` lists objects (an ``s3://``
prefix, a local path, or a prefix of ``wrenpack.store()``) and returns one
small picklable ``ObjectRange`` per object or per chunk of about
``chunk_size`` bytes. A chunk owns the records that *begin* inside its nominal
byte range, so no record is split or lost: with a delimiter (a newline by
default) the worker finds the record edges by reading a few bytes around the
range's ends; with ``record_size=n`` the edges are multiples of ``n`` and
nothing extra is read. Data is read in the worker, never through the driver.
Worker side: standard library (and boto3 for S3) only.
"""
from __future__ import annotations

import codecs
import io
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from wrenpack import keys
from wrenpack.errors import ConfigError, ConfigTypeError, ObjectNotFound, StoreError, TextDecodeError
from wrenpack.limits import integral
from wrenpack.storage import Store, open_store, parse_store_url, store_for_config
from wrenpack.storage.base import MAX_KEY_BYTES, MAX_PART_BYTES, Reader, key_bytes, long_part, shown
from wrenpack.storage.local import FileReader, _file_kind, file_version

#: Where the user's objects live in wrenpack's store.
USER_PREFIX = keys.DATA
#: How much a worker reads at a time when it looks for a record edge.
_SCAN = 64 * 1024
#: Read-ahead of a range stream (one GET per block on S3).
_BLOCK = 8 * 1024 * 1024
#: what ``lines()`` decodes at a time: large enough that the per-line work is C's, small
#: enough that its text and lines stay a few MB in a call held to 128 MB
_LINES_BLOCK = 1024 * 1024

_bound: Store | None = None
_opened: dict[str, Store] = {}


def bind(store: Store | None) -> None:
    """Called by the worker handler: the store of the call that is running."""
    global _bound
    _bound = store


def _token(spec: dict[str, Any]) -> str:
    return repr(sorted(spec.items()))


def _open(spec: dict[str, Any]) -> Store:
    """A store for ``spec``, reusing the call's own store (and its connections)."""
    if _bound is not None and _token(_bound.spec) == _token(spec):
        return _bound
    token = _token(spec)
    found = _opened.get(token)
    if found is None:
        found = _opened[token] = _Files(spec["root"]) if spec.get("type") == "files" else open_store(spec)
    return found


class _Files(Store):
    """Read-only access to a local directory of the user's files (``objects("/path")``).

    Not a ``LocalStore``: that one is wrenpack's private store and insists on a
    private directory; reading the user's own files needs none of that."""

    def __init__(self, root: str) -> None:
        self.root = root

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "files", "root": self.root}

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, _check_key(key))

    def get(self, key: str) -> bytes:
        return self.get_range(key, 0, self.size(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError:
            raise ObjectNotFound(f"file {self._path(key)} not found") from None

    def size(self, key: str) -> int:
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            raise ObjectNotFound(f"file {self._path(key)} not found") from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list(self, prefix: str) -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                # Regular files only (a symlink to one too): a dangling symlink failed the listing with
                # a bare FileNotFoundError, and a FIFO listed as empty blocked its reader for ever.
                if key.startswith(prefix) and os.path.isfile(os.path.join(dirpath, name)):
                    out.append(key)
        return sorted(out)

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        return [(k, os.path.getsize(self._path(k))) for k in self.list(prefix)]

    def list_versions(self, prefix: str) -> list[tuple[str, int, str | None]]:
        out = []
        for k in self.list(prefix):
            try:
                st = os.stat(self._path(k))
            except FileNotFoundError:
                continue  # (removed since the listing)
            out.append((k, st.st_size, file_version(st)))
        return out

    def reader(self, key: str, size: int | None = None, version: str | None = None) -> Reader:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(f"file {self._path(key)} not found") from None
        return FileReader(fd, f"file://{self._path(key)}", size, version)

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        raise StoreError(f"{self.url} is read-only here: write with wrenpack.store().put")

    def delete(self, key: str) -> None:
        raise StoreError(f"{self.url} is read-only here: delete with wrenpack.store().delete")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/"):
        raise StoreError(f"invalid data key {key!r}: use a relative path such as 'inputs/part-0' (no leading '/', no '..')")
    if "\0" in key:  # (a file name cannot hold one: the local store failed with a bare ValueError)
        raise StoreError(f"invalid data key {key!r}: a key cannot hold a NUL character ('\\0'); remove it")
    return key


def _check_text(text: str, what: str) -> None:
    """Refuse a key (or prefix) that is not text S3 can hold, on every store alike: a lone
    surrogate ('\\udcff', what ``os.listdir`` gives for a file name that is not UTF-8) is a file
    name to a local store but cannot be sent to S3 (it failed there with a UnicodeEncodeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"invalid data {what} {shown(text)}: character {exc.start} ({text[exc.start]!r}) is a lone "
                         "surrogate (what os.listdir gives for a file name that is not UTF-8), which an S3 key cannot "
                         "hold; make the key valid text, e.g. urllib.parse.quote(os.fsencode(name))") from None


class DataStore:
    """Bytes under a prefix (``data/``) of wrenpack's store: get/put/list/delete/open.

    Pickles as its store's spec, so a handle made in the client works inside
    a call (and the worker reuses its own store when the spec is the same)."""

    def __init__(self, store: Store, prefix: str = USER_PREFIX) -> None:
        self.store = store
        self.prefix = prefix

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.store.spec, self.prefix))

    def __repr__(self) -> str:
        return f"DataStore({self.url()})"

    def _full(self, key: str) -> str:
        _check_key(key)
        _check_text(key, "key")
        parts = key.split("/")
        if any(p in ("", ".") for p in parts):
            # (a local store would read 'a//b' as 'a/b', S3 as another key: refused alike)
            raise StoreError(f"invalid data key {key!r}: a key's parts between '/' are names, not empty or '.'; "
                             f"use {'/'.join(p for p in parts if p not in ('', '.')) or 'a name'!r}")
        if any(p.startswith(".tmp-") for p in parts):
            raise StoreError(f"invalid data key {key!r}: names starting with '.tmp-' are the store's half-written "
                             "files (never listed, removed once their writer is gone); choose another name")
        # Held to both stores' limits on either, so a key that works in a local run works on S3 and the other
        # way round: a part is a file name locally (S3 takes longer ones), a key at most 1024 bytes on S3,
        # counted with what precedes it there: an S3 store's prefix too, which a local store has not (so a
        # local refusal says it; reserving room for a prefix locally would refuse keys that work on S3).
        long = long_part(key)
        if long is not None:
            raise StoreError(f"invalid data key {shown(key)}: its part {shown(long[0])} is {long[1]} bytes: a key's "
                             f"parts between '/' hold at most {MAX_PART_BYTES} bytes (a local store's file names; "
                             "held to it on S3 too, so a key works on both); shorten it")
        before = self._before()
        if len(key) > (MAX_KEY_BYTES - len(before)) // 4 and key_bytes(before + key) > MAX_KEY_BYTES:
            prefixed = self.store.spec.get("type") == "s3" and self.store.spec.get("prefix")
            raise StoreError(f"invalid data key {shown(key)}: it is {key_bytes(key)} bytes: S3 keys hold at most "
                             f"{MAX_KEY_BYTES} bytes, {MAX_KEY_BYTES - key_bytes(before)} of them after {before!r} here"
                             + ("" if prefixed else " (fewer on S3 under a store prefix: s3://BUCKET/PREFIX counts PREFIX/ "
                                "too)") + "; shorten it")
        return self.prefix + key

    def _before(self) -> str:
        """What precedes a key in its store's key space (S3 counts it in its 1024 bytes)."""
        spec = self.store.spec
        return (f"{spec['prefix']}/" if spec.get("type") == "s3" and spec.get("prefix") else "") + self.prefix

    def url(self, key: str = "") -> str:
        """Where ``key`` is, for messages (``s3://bucket/prefix/data/key`` or a file URL)."""
        spec = self.store.spec
        if spec.get("type") == "s3":
            base = f"s3://{spec['bucket']}/" + (f"{spec['prefix']}/" if spec.get("prefix") else "")
            return base + self.prefix + key
        if spec.get("type") == "local":
            return "file://" + os.path.join(spec["root"], self.prefix + key)
        return f"{self.store.url}/{self.prefix}{key}"

    def put(self, key: str, data: bytes | bytearray | memoryview | io.IOBase) -> None:
        """Write ``data`` (bytes or any bytes-like object: a contiguous numpy array, array.array; or a binary
        file object) at ``key``, atomically."""
        if hasattr(data, "read"):
            data = data.read()  # type: ignore[union-attr]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            try:  # any other bytes-like object (a numpy array, array.array, mmap), as file.write takes them
                data = memoryview(data)  # type: ignore[arg-type]
            except TypeError:
                raise StoreError(f"put({key!r}, ...) needs bytes, got {type(data).__name__}; encode text (s.encode()) "
                                 "or pickle it yourself") from None
        if isinstance(data, bytes):
            self.store.put(self._full(key), data)
            return
        # A buffer (memoryview(array)) goes to the store as it is: written once locally, joined once for S3.
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            if memoryview(data).nbytes == 0:  # (an empty array of some shape: a cast refuses its zeros)
                self.store.put(self._full(key), b"")
                return
            raise StoreError(f"put({key!r}, ...) got a buffer that is not contiguous; pass bytes, or a contiguous "
                             "array's memoryview (numpy.ascontiguousarray)") from None
        self.store.put_chunks(self._full(key), [view])

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or bytes ``[start, end)`` of it, as ``data[start:end]``
        would give them (a negative offset counts from the end)."""
        if start is None and end is None:
            return self.store.get(self._full(key))
        full = self._full(key)
        start, end = _offsets("get", start, end)
        with self.store.reader(full) as reader:  # (the size, if needed, and the bytes: of one version)
            start, end = _span(reader, start, end)
            return reader.read(start, end)

    def open(self, key: str, start: int = 0, end: int | None = None) -> io.BufferedReader:
        """A binary stream over the object (or bytes ``[start, end)``, as ``get``
        takes them), read in blocks as it is consumed: all of one version of it
        (``ObjectChanged`` if it is replaced while it is read and the store cannot
        keep the old one, as S3 cannot)."""
        full = self._full(key)
        start, end = _offsets("open", start, end)
        reader = self.store.reader(full)
        try:
            start, end = _span(reader, start, end)
        except BaseException:
            reader.close()
            raise
        return _stream(reader, start, max(start, end))

    def size(self, key: str) -> int:
        return self.store.size(self._full(key))

    def exists(self, key: str) -> bool:
        return self.store.exists(self._full(key))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (relative to this handle), sorted."""
        _check_text(prefix, "prefix")
        n = len(self.prefix)
        return [k[n:] for k in self.store.list(self.prefix + prefix)]

    def delete(self, key: str) -> None:
        self.store.delete(self._full(key))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix``; returns how many."""
        if prefix:
            _check_key(prefix)
            _check_text(prefix, "prefix")
        return self.store.delete_prefix(self.prefix + prefix)

    def objects(self, prefix: str = "", *, chunk_size: int | None = None, delimiter: bytes | None = b"\n",
                record_size: int | None = None) -> list["ObjectRange"]:
        """``wrenpack.objects`` over this handle's keys under ``prefix``."""
        _check_text(prefix, "prefix")
        found = self.store.list_versions(self.prefix + prefix)
        return _ranges(self.store.spec, found, chunk_size, delimiter, record_size, source=self.url(prefix),
                       prefix=self.prefix)


def _offsets(what: str, start: Any, end: Any) -> tuple[int | None, int | None]:
    """``start`` and ``end`` as whole numbers (or None); ``ConfigTypeError`` for anything else."""
    offsets = []
    for name, value in (("start", start), ("end", end)):
        offset = None if value is None else integral(value)
        if value is not None and offset is None:
            raise ConfigTypeError(f"{what}(start={start!r}, end={end!r}): {name} must be a byte offset (a whole "
                                  "number, negative from the end) or None")
        offsets.append(offset)
    return offsets[0], offsets[1]


#: an end offset past any object (S3's largest is 5 TiB): clamped to the object's size, not sent on
#: (``data[0:10**30]`` is the whole object; the local store's read of that many bytes overflowed)
_FAR = 1 << 60


def _span(reader: Reader, start: int | None, end: int | None) -> tuple[int, int]:
    """``[start, end)`` as offsets in the object, as a slice's are resolved: None
    is its start or end, a negative offset counts from its end, and both are
    clamped to it. The size is asked for only when it is needed."""
    if end is None or (start or 0) < 0 or end < 0 or end >= _FAR or (start or 0) >= _FAR:
        return slice(start, end).indices(reader.size())[:2]
    return start or 0, end


def _reopen(spec: dict[str, Any], prefix: str) -> DataStore:
    return DataStore(_open(spec), prefix)


def store(executor: Any = None) -> DataStore:
    """The storage handle: inside a remote call, the call's store; in the client,
    ``executor``'s (default: the store the settings name, which the default
    executor uses). Keys live under ``data/``."""
    if executor is not None:
        return DataStore(executor.store)
    if _bound is not None:
        return DataStore(_bound)
    return DataStore(_configured_store())


#: (settings, their store): the client's default store, opened once per settings
_configured: tuple[Any, Store] | None = None


def _configured_store() -> Store:
    """The store the current settings name (client side: a worker always has
    its call's store bound)."""
    global _configured
    from wrenpack.config import current  # client side only: the worker never gets here

    config = current()
    kept = _configured
    if kept is None or kept[0] != config:
        kept = _configured = (config, store_for_config(config))
    return kept[1]


# -- object ranges --------------------------------------------------------------------
@dataclass
class ObjectRange:
    """One object, or one chunk of it, to read lazily where the call runs.

    ``start``/``end`` are the nominal byte range; the records it owns are those
    that begin inside it (``bounds()``). Small and picklable: it carries the
    store's spec and the key, never the data."""

    spec: dict[str, Any]
    key: str
    start: int
    end: int
    size: int
    delimiter: bytes | None = b"\n"
    record_size: int | None = None
    #: this chunk's number within its object, and how many chunks the object has
    part: int = 0
    parts: int = 1
    #: what the store puts before ``key`` (``data/`` for ``wrenpack.store()``'s objects, whose
    #: ``key`` is the one ``put`` was given and ``get`` takes)
    prefix: str = ""
    #: the object's version when it was listed (an S3 ETag, a local file's identity; None if the store
    #: has none): a read checks it, with ``size``, so a range never reads an object replaced since
    version: str | None = None
    _bounds: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bounds"} | {"_bounds": None}

    @property
    def stored_key(self) -> str:
        """The object's key in its store (``prefix`` + ``key``)."""
        return self.prefix + self.key

    @property
    def url(self) -> str:
        if self.spec.get("type") == "s3":
            return f"s3://{self.spec['bucket']}/" + (f"{self.spec['prefix']}/" if self.spec.get("prefix") else "") + self.stored_key
        if self.spec.get("type") in ("local", "files"):
            return os.path.join(self.spec["root"], self.stored_key)
        return self.stored_key

    @property
    def name(self) -> str:
        """The object's last path component (``a.txt`` of ``logs/a.txt``)."""
        return self.key.rsplit("/", 1)[-1]

    def _store(self) -> Store:
        return _open(self.spec)

    def _reader(self) -> Reader:
        """A reader of the version listed: the object as it was when this range was
        made, or ``ObjectChanged`` (its edges, its size, its records: all of that one)."""
        return self._store().reader(self.stored_key, self.size, self.version)

    def bounds(self, reader: Reader | None = None) -> tuple[int, int]:
        """The byte range of the whole records this range owns."""
        if self._bounds is None:
            if self.parts == 1 or self.record_size is not None or not self.delimiter:
                self._bounds = (self.start, self.end)
            elif reader is None:
                with self._reader() as own:
                    return self.bounds(own)
            else:
                a = _record_start(reader, self.start, self.size, self.delimiter)
                b = a if a >= self.end else _record_start(reader, self.end, self.size, self.delimiter)
                self._bounds = (a, max(a, b))
        return self._bounds

    def read(self) -> bytes:
        """The range's bytes (whole records only)."""
        with self._reader() as reader:
            a, b = self.bounds(reader)
            return reader.read(a, b)

    def buffer(self) -> Any:
        """The range's bytes (whole records only) as a read-only buffer: on the local
        store the object's file mapped, nothing copied (``numpy.frombuffer`` of it
        reads the store's pages); elsewhere the bytes ``read`` returns."""
        with self._reader() as reader:
            a, b = self.bounds(reader)
            return reader.buffer(a, b)

    def open(self) -> io.BufferedReader:
        """A binary stream over the range, read in blocks as it is consumed."""
        reader = self._reader()
        try:
            a, b = self.bounds(reader)
        except BaseException:
            reader.close()
            raise
        return _stream(reader, a, b)

    def records(self) -> Iterator[bytes]:
        """The range's records as bytes, without their delimiter (the last one may lack it)."""
        if self.record_size is not None:
            n = self.record_size
            with self.open() as f:
                while True:
                    block = f.read(max(n, (_BLOCK // n) * n))
                    if not block:
                        return
                    for i in range(0, len(block), n):
                        yield block[i : i + n]
        if not self.delimiter:
            yield self.read()  # raw byte ranges: the range is one record
            return
        delim = self.delimiter
        with self.open() as f:
            if delim == b"\n":
                for line in f:
                    yield line[:-1] if line.endswith(b"\n") else line
                return
            rest = b""
            while True:
                block = f.read(_BLOCK)
                if not block:
                    if rest:
                        yield rest
                    return
                pieces = (rest + block).split(delim)
                rest = pieces.pop()
                yield from pieces

    def lines(self, encoding: str = "utf-8", errors: str = "strict", raw: bool = False) -> Iterator[Any]:
        """The records decoded as text (``bytes.decode(encoding, errors)``), or as
        bytes with ``raw=True`` (``records()``). Lines end at newlines, without
        their ``\\r\\n`` or ``\\n`` as in Python's text files; unlike them, a lone
        ``\\r`` does not end a line (records are split at one byte).

        Stored text is whatever someone wrote: strict UTF-8 (the default) stops at
        the first byte that does not decode with a ``TextDecodeError`` naming the
        object, the byte's offset in it and the ways on: the text's own
        ``encoding=`` ("latin-1" decodes any byte), ``errors="replace"`` (U+FFFD for
        each bad byte) or ``"surrogateescape"`` (lossless), or ``raw=True``.
        A bad encoding or errors name fails here, before anything is read.

        Records are split at a byte (the delimiter), which is right for text
        whose newline is that one byte (UTF-8, Latin-1, Shift JIS, GB18030, Big5).
        ISO-2022 and HZ text keeps a state across newlines (a shifted run, a
        line joined to the next): only whole objects are read in them (one
        stream); a chunk, a record or a range of one is refused in one line.
        In UTF-16 or UTF-32 a newline is 2 or 4 bytes and the byte ``\\n`` also
        occurs inside other characters: a whole object is then decoded as one
        stream and split at its newlines; a chunk of one (``chunk_size``), or a
        delimiter that is not one of the text's characters, is refused here in
        one line, since its edges may cut a character in two. So is a chunk of raw
        byte ranges (``delimiter=None``): its edges fall at any byte."""
        if not isinstance(raw, bool):
            raise ConfigTypeError(f"lines(raw={raw!r}): must be True (bytes) or False (text)")
        for name, value in (("encoding", encoding), ("errors", errors)):
            if not isinstance(value, str):
                raise ConfigTypeError(f"lines({name}={value!r}): must be a str, e.g. encoding=\"latin-1\", "
                                      "errors=\"replace\"")
        try:  # (checked with raw=True too: the names are the caller's, and a misspelt one is said alike)
            if not getattr(codecs.lookup(encoding), "_is_text_encoding", True):  # (how bytes.decode tells them)
                raise LookupError(f"{encoding!r} is not a text encoding (bytes.decode refuses it)")
            codecs.lookup_error(errors)
            _check_decodes_with(errors)
        except LookupError as exc:
            raise ConfigError(f"lines(encoding={encoding!r}, errors={errors!r}): {exc}; give a Python codec name "
                              "(\"utf-8\", \"latin-1\", ...) and an error handler (\"strict\", \"replace\", \"ignore\", "
                              "\"surrogateescape\")") from None
        if raw:
            return self.records()
        whole = self.parts == 1 and self.record_size is None and self.delimiter in (b"\n", None)
        if codecs.lookup(encoding).name in _SHIFT_STATE_CODECS and not whole:
            cut = (f"this range is part {self.part + 1} of {self.parts} of the object" if self.parts > 1 else
                   f"its records are read one by one (record_size={self.record_size})" if self.record_size else
                   f"its records are split at the byte {self.delimiter!r}")
            raise ConfigError(f"lines(encoding={encoding!r}): {self.url}: {cut}, but {encoding} text keeps a shift "
                              "state from one line to the next (escape sequences switch character sets; HZ's '~' joins "
                              "lines), so a piece "
                              "decoded on its own can read differently from the whole; read whole objects "
                              "(wrenpack.objects(..., chunk_size=None), delimiter=b'\\n': lines() decodes each as one "
                              "stream) or lines(raw=True) for bytes")
        if self.record_size is None and self.delimiter:
            own = _char_bytes(self.delimiter.decode("latin-1"), encoding)
            if self.delimiter == b"\n" and (own == b"\n" or self.parts == 1):
                return self._decoded_stream(encoding, errors)
            if own != self.delimiter:
                what = "a newline" if self.delimiter == b"\n" else f"the character {self.delimiter.decode('latin-1')!r}"
                is_ = f"is {own!r}" if own is not None else "cannot be written"
                cut = (f"this range is part {self.part + 1} of {self.parts} of the object, cut at the byte "
                       f"{self.delimiter!r}" if self.parts > 1 else f"its records are split at the byte {self.delimiter!r}")
                raise ConfigError(f"lines(encoding={encoding!r}): {self.url}: {cut}, but in {encoding} {what} {is_}, so "
                                  "a split there can cut a character in two; read whole objects (wrenpack.objects(..., "
                                  "chunk_size=None), delimiter=b'\\n': lines() decodes each as one stream) or "
                                  "lines(raw=True) for bytes")
        if self.record_size is None and not self.delimiter and self.parts > 1:
            # (decoded, its edges gave U+FFFD or a TextDecodeError for text that is valid as a whole)
            raise ConfigError(f"lines(): {self.url}: this range is part {self.part + 1} of {self.parts} of the object, "
                              "cut at any byte (delimiter=None), so its edges can cut a character and a line in two; "
                              "make the ranges with wrenpack.objects(..., delimiter=b'\\n') for lines, or read bytes "
                              "(lines(raw=True), read())")
        return self._decoded(encoding, errors)

    def _decoded_stream(self, encoding: str, errors: str) -> Iterator[str]:
        """The range's lines: its bytes decoded as one stream (a byte order mark
        read once; a character cut by a read's edge joined), split at newlines,
        each without its ``\\r\\n`` or ``\\n``. A block at a time, in C: a
        strict decode stops at the block holding the first bad byte."""
        rest = ""
        with self.open() as f:
            at = self.bounds()[0]  # the offset in the object of the next block read (open found it)
            decoder = codecs.getincrementaldecoder(_past_start(encoding, at))(errors)
            while True:
                block = f.read(_LINES_BLOCK)
                held = decoder.getstate()[0]  # bytes of a character the last block ended inside
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    raise _decode_error(self, exc, at - len(held) + _skipped(held + block, exc)) from None
                except UnicodeError as exc:  # (UTF-16/32 without a byte order mark: the stream decoder's own)
                    raise _stream_error(self, exc, encoding, bytes(block[:4]), at) from None
                at += len(block)
                if rest:
                    text = rest + text
                pieces = text.split("\n")
                rest = pieces.pop()
                if "\r" in text:
                    yield from (p[:-1] if p.endswith("\r") else p for p in pieces)
                else:
                    yield from pieces
                if not block:
                    if rest:
                        yield rest[:-1] if rest.endswith("\r") else rest
                    return

    def _decoded(self, encoding: str, errors: str) -> Iterator[str]:
        """Records split at another delimiter, or of a fixed size, each decoded."""
        at = self.bounds()[0]  # the current record's offset in the object
        gap = 0 if self.record_size is not None or not self.delimiter else len(self.delimiter)
        for rec in self.records():
            try:
                text = rec.decode(_past_start(encoding, at), errors)
            except UnicodeDecodeError as exc:
                raise _decode_error(self, exc, at + _skipped(rec, exc)) from None
            yield text
            at += len(rec) + gap


def _check_decodes_with(errors: str) -> None:
    """``LookupError`` if ``errors`` names a handler for encoding only
    ("xmlcharrefreplace", "namereplace"): ``bytes.decode`` takes its name and
    fails only at the first byte that does not decode, in the worker, with a
    TypeError that names neither the object nor the fix."""
    try:
        b"\xff".decode("utf-8", errors)
    except TypeError as exc:  # "don't know how to handle UnicodeDecodeError in error callback"
        raise LookupError(f"{errors!r} is an error handler for encoding text, not for decoding it ({exc})") from None
    except Exception:  # noqa: BLE001 - strict, or a handler of the user's own that refuses this byte: it decodes
        pass


#: codecs whose decoder carries state across newlines: ISO-2022's escape sequences (text
#: Python's own encoder wrote returns to ASCII before each newline, but a decoder takes a
#: shifted run that goes on past one) and HZ's "~" before a newline, which joins two lines.
#: A piece that begins after a newline can decode differently on its own than inside the
#: whole (``lines`` refuses such pieces).
_SHIFT_STATE_CODECS = frozenset({"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3",
                                 "iso2022_jp_ext", "iso2022_kr", "hz"})


def _past_start(encoding: str, at: int) -> str:
    """The codec for text that begins at byte ``at`` of its object: only the object's
    first bytes can be its byte order mark, so past them "utf-8-sig" reads as
    "utf-8" (a U+FEFF there is a character, as a whole-object read keeps it: a
    chunk or record that began with one dropped it, so the lines depended on
    where the chunks were cut; ``cat a.txt b.txt`` of two files with BOMs has one)."""
    if at > 0 and codecs.lookup(encoding).name == "utf-8-sig":
        return "utf-8"
    return encoding


def _char_bytes(char: str, encoding: str) -> bytes | None:
    """How ``encoding`` writes ``char`` in the middle of a text (no byte order
    mark); None if it cannot."""
    encoder = codecs.getincrementalencoder(encoding)()
    try:
        encoder.encode(char)  # (the first carries a byte order mark, if the codec writes one)
        return encoder.encode(char)
    except UnicodeEncodeError:
        return None


def _skipped(data: bytes, exc: UnicodeDecodeError) -> int:
    """How many of ``data``'s first bytes the decoder that failed on it did not give
    the error's offsets from: "utf-8-sig" drops a byte order mark and decodes the
    rest, whose offsets ``exc.start`` counts (so the bad byte was named 3 bytes early)."""
    skipped = len(data) - len(exc.object)
    if 0 < skipped <= len(data) and data[skipped:] == exc.object:
        return skipped
    return 0


def _decode_error(r: ObjectRange, exc: UnicodeDecodeError, at: int) -> TextDecodeError:
    """The one-line error for a record that did not decode (``at``: its offset)."""
    bad = exc.object[exc.start : exc.end]
    lo = max(0, exc.start - 16)
    near = exc.object[lo : exc.end + 16]  # the bytes around it, not the whole record
    message = (f"{r.url}: byte {at + exc.start} ({bytes(bad[:8])!r}) is not valid {exc.encoding} ({exc.reason}); "
               "pass the text's encoding (lines(encoding=\"latin-1\") reads any byte), lines(errors=\"replace\") to "
               "replace what does not decode, or lines(raw=True) for bytes")
    return TextDecodeError(message, exc.encoding, bytes(near), exc.start - lo, exc.end - lo, exc.reason)


def _stream_error(r: ObjectRange, exc: UnicodeError, encoding: str, first: bytes, at: int) -> TextDecodeError:
    """The one-line error for a stream the decoder refuses as a whole: UTF-16 and
    UTF-32 text that does not start with a byte order mark (Python's text files
    refuse it too, where ``bytes.decode`` would guess this machine's byte order)."""
    name = codecs.lookup(encoding).name
    way = (f"pass its byte order: lines(encoding=\"{name}-le\") or lines(encoding=\"{name}-be\")"
           if name in ("utf-16", "utf-32") else "pass the text's encoding")
    message = f"{r.url}: byte {at} ({first!r}): {exc} in {encoding}; {way}, or lines(raw=True) for bytes"
    return TextDecodeError(message, encoding, first, 0, len(first), str(exc))


def _record_start(reader: Reader, x: int, size: int, delim: bytes) -> int:
    """The first record start at or after ``x``: 0, or just after a delimiter byte.

    Each read is twice the last (from 64 KB up to a read-ahead block), so a
    record of n bytes costs about log n requests, not n / 64 KB: every chunk
    that begins inside one long line reads on to the line's end (an empty
    chunk's bounds are where the next record starts, so the ranges tile the
    object), which in 64 KB reads was thousands of GETs per chunk on S3."""
    if x <= 0:
        return 0
    pos = x - 1  # a delimiter just before x makes x itself a record start
    step = _SCAN
    while pos < size:
        window = reader.read(pos, min(size, pos + step))
        if not window:
            break
        i = window.find(delim)
        if i >= 0:
            return min(size, pos + i + 1)
        pos += len(window)
        step = min(2 * step, _BLOCK)
    return size


class _RangeReader(io.RawIOBase):
    """Bytes ``[start, end)`` of one ``Reader`` (one version of the object), closed with it."""

    def __init__(self, reader: Reader, start: int, end: int) -> None:
        self._reader, self._pos, self._end = reader, start, end

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        got = self._reader.readinto(memoryview(buf)[:n], self._pos)
        self._pos += got
        return got

    def readall(self) -> bytes:
        """The rest in one read (``RawIOBase``'s reads 8 KB at a time)."""
        data = self._reader.read(self._pos, self._end) if self._end > self._pos else b""
        self._pos += len(data)
        return data

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            super().close()


def _stream(reader: Reader, start: int, end: int) -> io.BufferedReader:
    return io.BufferedReader(_RangeReader(reader, start, end), buffer_size=_BLOCK)


def _ranges(spec: dict[str, Any], found: list[tuple[str, int, str | None]], chunk_size: int | None,
            delimiter: bytes | None, record_size: int | None, source: str, prefix: str = "") -> list[ObjectRange]:
    """The ranges of the objects ``found`` (their stored keys, each under ``prefix``, sizes and versions)."""
    # (any whole-number type, numpy's too, as range() takes one: limits.integral; not True, a float or text)
    if chunk_size is not None:
        given, chunk_size = chunk_size, integral(chunk_size)
        if chunk_size is None or chunk_size < 1:
            raise ConfigError(f"chunk_size={given!r} must be a whole number of bytes, at least 1")
    if record_size is not None:
        given, record_size = record_size, integral(record_size)
        if record_size is None or record_size < 1:
            raise ConfigError(f"record_size={given!r} must be a whole number of bytes, at least 1")
    if delimiter is not None and (not isinstance(delimiter, bytes) or len(delimiter) != 1):
        # One byte: with longer ones, a range edge inside a run of delimiters is ambiguous.
        raise ConfigError(f"delimiter={delimiter!r} must be one byte (e.g. b'\\n', b'\\0') or None; "
                          "use record_size= for fixed-size records")
    if record_size is not None and delimiter not in (None, b"\n"):  # (b"\n" is the default: not asked for)
        raise ConfigError(f"delimiter={delimiter!r} and record_size={record_size} both say where records end; give "
                          "one (a delimiter would be ignored: records are record_size bytes each)")
    if not found:
        raise StoreError(f"no objects under {source}; check the path or prefix")
    step = chunk_size
    if step is not None and record_size is not None:
        step = max(record_size, step // record_size * record_size)
    out: list[ObjectRange] = []
    for stored, size, version in found:
        key = stored[len(prefix):]
        if step is None or size <= step:
            out.append(ObjectRange(spec, key, 0, size, size, delimiter, record_size, prefix=prefix, version=version))
            continue
        edges = list(range(0, size, step))
        if record_size is not None and size - edges[-1] < record_size and len(edges) > 1:
            edges.pop()  # a trailing partial record stays with the last chunk
        edges.append(size)
        parts = len(edges) - 1
        for i in range(parts):
            out.append(ObjectRange(spec, key, edges[i], edges[i + 1], size, delimiter, record_size, i, parts, prefix,
                                   version))
    return out


def objects(source: "str | os.PathLike[str] | DataStore", *, chunk_size: int | None = None, delimiter: bytes | None = b"\n",
            record_size: int | None = None, executor: Any = None) -> list[ObjectRange]:
    """One ``ObjectRange`` per object under ``source``, or per ~``chunk_size`` bytes.

    ``source``: ``s3://bucket/prefix`` (any bucket the workers can read), a
    local file or directory (``file:///...`` or a path; local backend only), or a
    ``DataStore`` (``wrenpack.store()``: all its keys; ``store.objects(prefix)``
    for some). Chunk edges follow records: ``delimiter`` (default newline) or
    fixed ``record_size`` bytes. Use with ``f.map(wrenpack.objects(...))``."""
    if isinstance(source, DataStore):
        return source.objects(chunk_size=chunk_size, delimiter=delimiter, record_size=record_size)
    if isinstance(source, os.PathLike):  # (a pathlib.Path, as open() takes one)
        source = os.fspath(source)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
    if not isinstance(source, str):
        raise ConfigError(f"objects() needs an s3:// URL, a path or wrenpack.store(), got {type(source).__name__}")
    if source.startswith("s3://"):
        parsed = parse_store_url(source)
        prefix = source[5:].partition("/")[2]
        from wrenpack.storage.s3 import S3Store

        if executor is not None:
            config = executor.config
        else:
            from wrenpack.config import current  # client side only

            config = current()
        s3 = S3Store(parsed["bucket"], "", region=config.aws_region, endpoint_url=config.s3_endpoint_url,
                     profile=config.aws_profile)
        found = [item for item in s3.list_versions(prefix) if not item[0].endswith("/")]
        exact = [item for item in found if item[0] == prefix]
        return _ranges(s3.spec, exact or found, chunk_size, delimiter, record_size, source)
    if "://" in source and not source.startswith("file://"):
        raise ConfigError(f"unsupported source {source!r}; use s3://bucket/prefix, a path, or wrenpack.store()")
    path = os.path.abspath(os.path.expanduser(source[7:] if source.startswith("file://") else source))
    if os.path.isfile(path):
        st = os.stat(path)
        root, found = os.path.dirname(path), [(os.path.basename(path), st.st_size, file_version(st))]
    elif os.path.isdir(path):
        root, found = path, _Files(path).list_versions("")
    elif os.path.exists(path):  # (a FIFO, socket or device: it was said not to exist)
        raise StoreError(f"{source} is not a regular file or a directory (a {_file_kind(os.stat(path).st_mode)}); "
                         "give a file, a directory, or an s3:// URL")
    else:
        raise StoreError(f"{source} does not exist; give an existing file or directory, or an s3:// URL")
    return _ranges({"type": "files", "root": root}, found, chunk_size, delimiter, record_size, source)
