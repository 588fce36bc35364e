"""The result object: a call's status record and its outcome in one sealed blob.

``b"WRP1" + 4-byte big-endian status length + status (wire.status, JSON) +
outcome bytes (wire.outcome)``, sealed with the job's secret as that call's
result (``wrenpack.auth``: a MAC trailer, so this header stays at the front).
The status is readable without unpickling anything (pollers, ``wrenpack
clean``, diagnostics); a status read without verifying it (``unpack`` of a
ranged read) only says "something is there"; the client acts on the verified
copy (``open_result``). It is stored at the call's result key, or travels in
the handler's reply when small (``reply_result``). Standard library and
cloudpickle only: the worker imports this.
"""
from __future__ import annotations

import base64
import struct
from typing import Any

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject
from wrenpack.wire import status as status_record
from wrenpack.wire.outcome import Outcome, loads_outcome

#: The result object's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1
MAGIC = b"WRP1"
_LENGTH = struct.Struct(">I")


def pack(status: dict[str, Any], outcome: bytes) -> bytes:
    """The unsealed object (``parts`` joined)."""
    return b"".join(parts(status, outcome))


def parts(status: dict[str, Any], outcome: bytes) -> tuple[bytes, ...]:
    """The pieces of a result object, in order (sealed and joined in one go)."""
    head = status_record.dumps(status)
    return MAGIC, _LENGTH.pack(len(head)), head, outcome


def unpack(data: bytes | memoryview, what: str = "result object") -> tuple[dict[str, Any], bytes | memoryview]:
    """(status, outcome bytes) of an object ``pack`` made; ``CorruptObject`` otherwise."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise CorruptObject(f"the {what} is corrupt (bad header); re-run the call")
    (n,) = _LENGTH.unpack(data[4:8])
    try:
        status = status_record.loads(data[8 : 8 + n])
    except ValueError:
        raise CorruptObject(f"the {what} is corrupt (unreadable status); re-run the call") from None
    if len(data) < 8 + n:
        raise CorruptObject(f"the {what} is corrupt (truncated); re-run the call")
    return status, data[8 + n :]


def seal_result(secret: bytes, job_id: str, call_id: str, status: dict[str, Any], outcome_bytes: bytes) -> bytes:
    """The sealed result object of one call."""
    return auth.seal_parts(secret, keys.identity(job_id, "result", call_id), *parts(status, outcome_bytes))


def open_result(secret: bytes, job_id: str, call_id: str, blob: bytes, what: str) -> tuple[dict[str, Any], Outcome]:
    """Verify and read a call's result object (from the store or a reply)."""
    data = auth.unseal_view(secret, keys.identity(job_id, "result", call_id), blob, keys.result_key(job_id, call_id))
    status, outcome_bytes = unpack(data, what)
    return status, loads_outcome(outcome_bytes, what)


def is_authentic_result(secret: bytes, job_id: str, call_id: str, blob: bytes) -> bool:
    try:
        auth.unseal_view(secret, keys.identity(job_id, "result", call_id), blob, keys.result_key(job_id, call_id))
        return True
    except CorruptObject:
        return False


def to_reply(blob: bytes, text: bool) -> bytes | str:
    """A sealed result object as the handler's reply carries it: base64 text in
    Lambda's JSON reply (``text``), bytes to a local worker (``reply_result`` reads either)."""
    return base64.b64encode(blob).decode("ascii") if text else blob


def reply_result(reply: dict[str, Any]) -> bytes | None:
    """The sealed result object a handler's reply carries (bytes from a local
    worker, base64 text from Lambda), removed from ``reply``; None if absent."""
    data = reply.pop("result", None)
    if data is None or isinstance(data, (bytes, bytearray)):
        return data
    try:
        return base64.b64decode(data, validate=True)
    except (TypeError, ValueError):
        raise CorruptObject("the result in the worker's reply is not base64; re-run the call") from None
