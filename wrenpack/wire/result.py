"""The result object format: a status record and an outcome in one blob.

``b"WRP1" + 4-byte big-endian JSON length + JSON status + outcome bytes``.
The status is readable without unpickling anything (pollers, ``wrenpack
clean``, diagnostics); the outcome is cloudpickle. The whole object is sealed
(``wrenpack.auth``: a MAC trailer, so this header stays at the front): a
status read without verifying it (``unpack`` of a ranged read) only says
"something is there"; the client acts on the verified copy
(``wrenpack.protocol.open_result``). Standard library only.
"""
from __future__ import annotations

import json
import struct
from typing import Any

from wrenpack.errors import CorruptObject

MAGIC = b"WRP1"


def pack(status: dict[str, Any], outcome: bytes) -> bytes:
    return b"".join(parts(status, outcome))


def parts(status: dict[str, Any], outcome: bytes) -> tuple[bytes, ...]:
    """The pieces of a result object, in order (sealed and joined in one go)."""
    head = json.dumps(status, separators=(",", ":")).encode()
    return MAGIC, struct.pack(">I", len(head)), head, outcome


def unpack(data: bytes | memoryview, what: str = "result object") -> tuple[dict[str, Any], bytes | memoryview]:
    if len(data) < 8 or data[:4] != MAGIC:
        raise CorruptObject(f"the {what} is corrupt (bad header); re-run the call")
    (n,) = struct.unpack(">I", data[4:8])
    try:
        status = json.loads(bytes(data[8 : 8 + n]))
    except ValueError:
        raise CorruptObject(f"the {what} is corrupt (unreadable status); re-run the call") from None
    if not isinstance(status, dict) or len(data) < 8 + n:
        raise CorruptObject(f"the {what} is corrupt (truncated); re-run the call")
    return status, data[8 + n :]
