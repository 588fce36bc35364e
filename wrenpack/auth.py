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
against 14.3 ms (the CPU has SHA extensions). Standard library only: the
worker imports this.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from wrenpack.errors import CorruptObject

MAGIC = b"WPA1"
TAG_BYTES = 32
TRAILER_BYTES = len(MAGIC) + TAG_BYTES
SECRET_BYTES = 32

#: False only in benchmarks/bench_auth_overhead.py's baseline runs, to measure what
#: sealing costs: then ``seal``/``unseal`` pass bytes through unchanged. Its local
#: workers inherit the switch from this variable, which Lambda never honours.
_enabled = not (os.environ.get("_WRENPACK_BENCHMARK_NO_AUTH") == "1" and not os.environ.get("AWS_LAMBDA_RUNTIME_API"))


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


def seal(secret: bytes, identity: str, data: bytes) -> bytes:
    """``data`` with a trailer that authenticates it as ``identity``'s object."""
    return seal_parts(secret, identity, data)


def seal_parts(secret: bytes, identity: str, *parts: bytes) -> bytes:
    """``seal`` of the parts' concatenation, joined once (no extra copy of a
    large object whose format already concatenates parts)."""
    if not _enabled:
        return b"".join(parts)
    return b"".join((*parts, MAGIC, _tag(secret, identity, *parts)))


def unseal(secret: bytes, identity: str, blob: bytes, key: str) -> bytes:
    """The data of a sealed ``blob`` if it was sealed with ``secret`` as
    ``identity``; otherwise ``CorruptObject`` naming ``key`` (nothing unpickled)."""
    return bytes(unseal_view(secret, identity, blob, key))


def unseal_view(secret: bytes, identity: str, blob: bytes, key: str) -> memoryview:
    """``unseal`` without copying the data: a view into ``blob`` (for unpickling)."""
    if not _enabled:
        return memoryview(blob)
    view = memoryview(blob)
    if len(view) < TRAILER_BYTES or view[-TRAILER_BYTES:-TAG_BYTES] != MAGIC:
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
