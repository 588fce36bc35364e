"""The start mark: one small object saying when a call began, written by a
call that waited in Lambda's queue past ``mark_start_after`` (client clock),
so the client counts the call's deadline from there instead of reporting it lost.

JSON ``{"start": <worker clock, seconds>, "attempt": <n>}`` at
``keys.start_key``, unsealed: it only ever delays the client's verdict of a
lost call, and the call's result is still verified. Standard library only:
the worker imports this.
"""
from __future__ import annotations

import json

#: The start mark's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1


def dumps(start: float, attempt: int) -> bytes:
    """The mark of a call that began at ``start`` (its ``attempt``)."""
    return json.dumps({"start": start, "attempt": attempt}).encode()


def start_of(data: bytes) -> float | None:
    """When the call began, from a mark ``dumps`` wrote; None if unreadable."""
    try:
        return float(json.loads(data)["start"])
    except (ValueError, KeyError, TypeError):
        return None
