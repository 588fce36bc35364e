"""The owner record: who launched a job, next to its objects (``keys.owner_key``),
so ``wrenpack clean --stale`` can tell a live job's objects from a dead one's.

JSON ``{"host": name, "pid": n, "start": process start (clock ticks, text) or null,
"created": seconds, "label": text}``, unsealed: it only decides whether objects
are removed, and never holds anything that is unpickled. The client writes it
at launch, or sends it in the event (``owner``) for the worker to write before
the job's first object. Standard library only: the worker imports this.
"""
from __future__ import annotations

import json
from typing import Any

#: The owner record's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1


def dumps(record: dict[str, Any]) -> bytes:
    """The record's bytes."""
    return json.dumps(record).encode()


def loads(data: bytes) -> dict[str, Any]:
    """A record ``dumps`` wrote; ValueError if it is not a JSON object."""
    record = json.loads(data)
    if not isinstance(record, dict):
        raise ValueError(f"an owner record is a JSON {type(record).__name__}, not an object")
    return record
