"""The segment record: what a call that ended in a checkpoint left for the
client, which then launches its next segment.

The call's status record (``wire.status``) as JSON (``json.dumps`` with its
default separators), sealed with the job's secret as that call's record of
that segment (``wrenpack.auth``), at ``keys.segment_key``. Standard library
only: the worker imports this.
"""
from __future__ import annotations

import json
from typing import Any

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject
from wrenpack.wire import status as status_record

#: The segment record's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1


def seal_segment(secret: bytes, job_id: str, call_id: str, segment: int, status: dict[str, Any]) -> bytes:
    """The sealed record of ``segment`` of a call, holding its status."""
    return auth.seal(secret, keys.identity(job_id, "segment", call_id, segment), json.dumps(status).encode())


def open_segment(secret: bytes, job_id: str, call_id: str, segment: int, blob: bytes) -> dict[str, Any]:
    """Verify and read a segment record (its status)."""
    key = keys.segment_key(job_id, call_id, segment)
    data = auth.unseal(secret, keys.identity(job_id, "segment", call_id, segment), blob, key)
    try:
        return status_record.loads(data)
    except ValueError:
        raise CorruptObject(f"{key} is authentic but unreadable; re-run the call") from None
