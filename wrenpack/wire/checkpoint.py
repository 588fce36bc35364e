"""The checkpoint record: a call's saved state, for its next segment.

``b"WRCK2" + 4-byte big-endian segment that saved it + the state's pickle``,
sealed with the job's secret as that call's checkpoint of that segment
(``wrenpack.auth``), at ``keys.checkpoint_key``. Pickling the state is
``wrenpack.worker.checkpoint``'s (futures inside it carry no secret); this
module frames, seals and verifies the bytes. Standard library only: the
worker imports this.
"""
from __future__ import annotations

import struct

from wrenpack import auth, keys

#: The checkpoint's layout (the digit in its magic); a change of it is a new version (tests/test_wire_golden.py).
VERSION = 2
MAGIC = b"WRCK2"
_SEGMENT = struct.Struct(">I")
_HEAD = len(MAGIC) + _SEGMENT.size


def seal_checkpoint(secret: bytes, job_id: str, call_id: str, segment: int, state: bytes) -> bytes:
    """The sealed checkpoint of ``state`` (a pickle), saved in ``segment``."""
    head = MAGIC + _SEGMENT.pack(segment)
    return auth.seal_parts(secret, keys.identity(job_id, "checkpoint", call_id, segment), head, state)


def open_checkpoint(secret: bytes, job_id: str, call_id: str, segment: int, blob: bytes) -> memoryview:
    """The state's pickle, once verified. Only a checkpoint this call saved in
    ``segment`` or the one before (the latest save, whatever retries happened)
    is accepted; anything else is ``CorruptObject``, nothing unpickled."""
    saved_in = _SEGMENT.unpack(blob[len(MAGIC) : _HEAD])[0] if blob.startswith(MAGIC) and len(blob) >= _HEAD else -1
    if saved_in not in (segment, segment - 1):
        saved_in = segment  # fails the check below with the one-line message
    data = auth.unseal_view(secret, keys.identity(job_id, "checkpoint", call_id, saved_in), blob, keys.checkpoint_key(job_id, call_id))
    return data[_HEAD:]
