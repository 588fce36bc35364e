"""Authenticated, call-bound objects: nothing is unpickled unless wrenpack wrote it for that call.

Anyone who can write to the store (the bucket prefix, the local directory)
could otherwise plant a pickle that runs in the client and in every worker.
So every object wrenpack writes and later unpickles carries a MAC::

    sealed = data + b"WPA1" + HMAC-SHA256(secret, len(identity) + identity + data)

* ``secret`` is random per job (``new_secret``), made by the executor and
  sent only inside the invocation (the local worker's socket, Lambda's Invoke
  payload: ``event["secret"]``, base64). It is never written to the store.
* ``identity`` (``wrenpack.keys.identity``) names the job, the call, the kind
  of object and the segment, so an object copied to another call's or another
  job's key, or swapped between two calls, fails too.
* The tag is a trailer, so a sealed result object still starts with its
  readable status header (pollers peek at it; only the verified copy counts).

HMAC-SHA256 rather than keyed BLAKE2b: measured here on 10 MiB, 7.3 ms
against 14.3 ms (the CPU has SHA extensions); on 64 MiB, 1.15 GB/s against
0.88 GB/s. Standard library only: the worker imports this.

Bulk data (map_reduce's shuffle objects, ``seal_stream(fast=True)``) may be
sealed with keyed BLAKE3 instead, when the optional ``blake3`` package is
installed where the object is written: 4.6 to 5 GB/s on one core here, four
times HMAC-SHA256. Its trailer says so (``WPB3`` instead of ``WPA1``, same
length); its key is HMAC-SHA256(secret, a fixed label), so the two MACs never
share a key. A shuffle reader (``verify_parts``) accepts both; one without ``blake3``
refuses a ``WPB3`` object with a ``CorruptObject`` that says to install it (nothing
unpickled). Every other object stays ``WPA1``, and ``unseal``/``unseal_view`` refuse
``WPB3`` outright (a planted trailer would otherwise make any reader import
``blake3``): the driver and a Lambda runtime need not have the same optional
packages, while a shuffle's writer and reader are tasks of one job on one runtime.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
from typing import Any, Iterable, Iterator

from wrenpack.errors import CorruptObject

log = logging.getLogger(__name__)


def _load_blake3() -> Any:
    """The optional ``blake3`` module (a faster MAC for bulk data), or None: imported
    here, not at the top, because the worker may import only the standard library
    and cloudpickle unconditionally."""
    try:
        import blake3
    except ImportError:  # pragma: no cover - depends on what is installed
        return None
    return blake3


_UNSET: Any = object()
#: the blake3 module, None where it is not installed; looked up the first time bulk data is sealed
_blake3: Any = _UNSET


def _fast() -> Any:
    global _blake3
    if _blake3 is _UNSET:
        _blake3 = _load_blake3()
    return _blake3

MAGIC = b"WPA1"
#: The trailer of an object sealed with keyed BLAKE3 (``seal_stream(fast=True)``).
MAGIC_B3 = b"WPB3"
_B3_LABEL = b"wrenpack keyed-BLAKE3 key/1"
TAG_BYTES = 32
TRAILER_BYTES = len(MAGIC) + TAG_BYTES
SECRET_BYTES = 32

#: Whether ``_WRENPACK_BENCHMARK_NO_AUTH=1`` turned sealing off in this process (never on
#: Lambda): said once, in a WARNING, the first time it takes effect (``_off_by_env``).
_OFF_BY_ENV = os.environ.get("_WRENPACK_BENCHMARK_NO_AUTH") == "1" and not os.environ.get("AWS_LAMBDA_RUNTIME_API")
#: False only in benchmarks/bench_auth_overhead.py's baseline runs, to measure what
#: sealing costs: then ``seal``/``unseal`` pass bytes through unchanged. Its local
#: workers inherit the switch from this variable, which Lambda never honours.
_enabled = not _OFF_BY_ENV
#: whether this process has logged ``_off_by_env``'s warning (a forked child inherits it)
_warned = False


def _off_by_env() -> None:
    """Called where sealing is skipped: the first time in a process that the benchmark's
    variable is why, one WARNING. Left set (an ``export`` in a shell), it would otherwise
    silently undo every MAC: a changed store object would give a wrong result, not
    ``CorruptObject``. (Not when a benchmark sets ``_enabled`` itself: it knows.)"""
    global _warned
    if _OFF_BY_ENV and not _warned:
        _warned = True
        log.warning("_WRENPACK_BENCHMARK_NO_AUTH=1 is set: store objects are NOT authenticated (no MAC is written or "
                    "checked), so a changed object can give a wrong result instead of CorruptObject. The variable is "
                    "for benchmarks only (benchmarks/bench_auth_overhead.py): unset it")


def new_secret() -> bytes:
    """A fresh random per-job key."""
    return os.urandom(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """The secret as event text (base64)."""
    return base64.b64encode(secret).decode("ascii")


def decode_secret(text: object) -> bytes:
    """The secret from an event; ValueError if it is not a proper one."""
    if not isinstance(text, str):
        raise ValueError("secret must be base64 text")
    secret = base64.b64decode(text.encode("ascii"), validate=True)
    if len(secret) < 16:
        raise ValueError("secret is too short")
    return secret


#: Objects up to this size are MACed in one call (faster for the many small ones).
_ONE_SHOT = 64 * 1024


def _tag(secret: bytes, identity: str, *parts: bytes | memoryview) -> bytes:
    ident = identity.encode("utf-8")
    head = struct.pack(">I", len(ident)) + ident
    if sum(len(p) for p in parts) <= _ONE_SHOT:
        return hmac.digest(secret, b"".join((head, *parts)), "sha256")
    mac = hmac.new(secret, head, hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def have_fast_mac() -> bool:
    """Whether ``seal_stream(fast=True)`` can use BLAKE3 here (the ``blake3`` package)."""
    return _fast() is not None


def _b3_key(secret: bytes) -> bytes:
    return hmac.digest(secret, _B3_LABEL, "sha256")


def _head(identity: str) -> bytes:
    ident = identity.encode("utf-8")
    return struct.pack(">I", len(ident)) + ident


def _mac(secret: bytes, identity: str, magic: bytes) -> Any:
    """An incremental MAC (``update``/``digest``) of the given kind, fed the identity."""
    if magic == MAGIC_B3:
        blake3 = _fast()
        if blake3 is None:
            raise CorruptObject("object sealed with keyed BLAKE3, which this Python cannot check (no blake3 "
                                "package); pip install blake3 where the job's tasks run")
        mac = blake3.blake3(key=_b3_key(secret))
    else:
        mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(_head(identity))
    return mac


#: How much of an object ``seal_stream`` MACs and hands on at a time: small
#: enough to stay in the CPU's cache between the MAC and the write that follows.
STREAM_CHUNK = 1 << 20


def seal_stream(secret: bytes, identity: str, parts: Iterable[Any], *, fast: bool = False,
                chunk: int = STREAM_CHUNK) -> Iterator[memoryview | bytes]:
    """``seal_parts`` as a stream: the parts' bytes in pieces of ``chunk``, each
    MACed just before it is handed on, then the trailer. A writer that writes
    the pieces as they come reads each byte from memory once (no joined copy).
    ``fast``: keyed BLAKE3 when installed (``have_fast_mac``), else HMAC-SHA256."""
    if not _enabled:
        _off_by_env()
        for part in parts:
            yield memoryview(part).cast("B")
        return
    magic = MAGIC_B3 if fast and _fast() is not None else MAGIC
    mac = _mac(secret, identity, magic)
    for part in parts:
        view = memoryview(part).cast("B")
        for i in range(0, len(view), chunk):
            piece = view[i : i + chunk]
            mac.update(piece)
            yield piece
    yield magic + mac.digest()


def verify_parts(secret: bytes, identity: str, trailer: bytes, parts: Iterable[Any], key: str) -> None:
    """Check a trailer (``TRAILER_BYTES``, either MAC) against the parts' concatenation;
    ``CorruptObject`` naming ``key`` otherwise. For a reader that copies the part a
    parser interprets out of a shared mapping before checking it, so what is checked
    is what is parsed."""
    if not _enabled:
        _off_by_env()
        return
    magic = bytes(trailer[:len(MAGIC)])
    if len(trailer) != TRAILER_BYTES or magic not in (MAGIC, MAGIC_B3):
        raise CorruptObject(
            f"{key} failed authentication (not a sealed wrenpack object); nothing was unpickled: "
            "something other than wrenpack wrote it, re-run the job"
        )
    try:
        mac = _mac(secret, identity, magic)
    except CorruptObject as exc:
        raise CorruptObject(f"{key}: {exc}") from None
    for part in parts:
        mac.update(part)
    if not hmac.compare_digest(mac.digest(), bytes(trailer[len(MAGIC):])):
        raise CorruptObject(
            f"{key} failed authentication (altered, or written for another call or job); nothing was unpickled: "
            "re-run the job and check who can write to the store"
        )


def seal(secret: bytes, identity: str, data: bytes) -> bytes:
    """``data`` with a trailer that authenticates it as ``identity``'s object."""
    return seal_parts(secret, identity, data)


def seal_parts(secret: bytes, identity: str, *parts: bytes) -> bytes:
    """``seal`` of the parts' concatenation, joined once (no extra copy of a
    large object whose format already concatenates parts)."""
    if not _enabled:
        _off_by_env()
        return b"".join(parts)
    return b"".join((*parts, MAGIC, _tag(secret, identity, *parts)))


def unseal(secret: bytes, identity: str, blob: bytes, key: str) -> bytes:
    """The data of a sealed ``blob`` if it was sealed with ``secret`` as
    ``identity``; otherwise ``CorruptObject`` naming ``key`` (nothing unpickled)."""
    return bytes(unseal_view(secret, identity, blob, key))


def unseal_view(secret: bytes, identity: str, blob: bytes, key: str) -> memoryview:
    """``unseal`` without copying the data: a view into ``blob`` (for unpickling).

    Only ``WPA1`` (HMAC-SHA256): wrenpack seals nothing but map_reduce's shuffle
    objects with keyed BLAKE3, and those are checked by ``verify_parts``. A ``WPB3``
    trailer here is refused before anything else happens: accepting it would make
    whoever can write to the store able to have any reader (a worker's secret-holding
    process, the driver) import ``blake3`` on demand, from wherever ``sys.path`` finds
    it first (on Lambda, a runtime archive's tree in /tmp, which every job's code on
    the container can write to)."""
    if not _enabled:
        _off_by_env()
        return memoryview(blob)
    view = memoryview(blob)
    magic = view[-TRAILER_BYTES:-TAG_BYTES] if len(view) >= TRAILER_BYTES else b""
    if magic == MAGIC_B3:
        raise CorruptObject(
            f"{key} failed authentication (it carries a keyed-BLAKE3 trailer, which wrenpack writes only on "
            "map_reduce's shuffle objects); nothing was unpickled: re-run the job and check who can write to the store"
        )
    if magic != MAGIC:
        raise CorruptObject(
            f"{key} failed authentication (not a sealed wrenpack object); nothing was unpickled: "
            "something other than wrenpack wrote it, re-run the job"
        )
    data = view[:-TRAILER_BYTES]
    if not hmac.compare_digest(_tag(secret, identity, data), view[-TAG_BYTES:]):
        raise CorruptObject(
            f"{key} failed authentication (altered, or written for another call or job); nothing was unpickled: "
            "re-run the job and check who can write to the store"
        )
    return data
