"""The start mark: one small object saying when a call began, written by a
call that waited in Lambda's queue past ``mark_start_after`` (client clock),
so the client counts the call's deadline from there instead of reporting it lost.

JSON ``{"start": <worker clock, seconds>, "attempt": <n>}`` at
``keys.start_key``, sealed with the job's secret as that call's start mark
(``wrenpack.auth``). It moves the call's deadline, so it is sealed like every
other object: an unsealed mark with a start far ahead would otherwise hold a
lost call unresolved for ever. A mark that fails to open is ignored (the
client then judges the call by its first deadline), and so is a genuine one
whose start is later than the client's clock allows (``MAX_SKEW_S``).
Standard library only: the worker imports this.
"""
from __future__ import annotations

import json

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject

#: The start mark's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 2

#: How far ahead of the client's clock a worker's start may be (clock skew between
#: the machines); a mark with a later start is refused, so no mark can push a call's
#: deadline further than this past its own timeout.
MAX_SKEW_S = 30.0


def seal_start(secret: bytes, job_id: str, call_id: str, start: float, attempt: int) -> bytes:
    """The sealed mark of a call that began at ``start`` (its ``attempt``)."""
    data = json.dumps({"start": start, "attempt": attempt}).encode()
    return auth.seal(secret, keys.identity(job_id, "start", call_id), data)


def open_start(secret: bytes, job_id: str, call_id: str, blob: bytes, now: float) -> float:
    """When the call began, from a mark ``seal_start`` wrote for it; ``CorruptObject``
    (one line) if it is not one, or if its start is more than ``MAX_SKEW_S`` after ``now``."""
    key = keys.start_key(job_id, call_id)
    data = auth.unseal(secret, keys.identity(job_id, "start", call_id), blob, key)
    try:
        start = float(json.loads(data)["start"])
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"{key} is authentic but unreadable; its call is judged by its first deadline") from None
    if not start <= now + MAX_SKEW_S:  # (also refuses nan)
        raise CorruptObject(f"{key} says its call began {start - now:.0f} s from now, more than the {MAX_SKEW_S:g} s "
                            "of clock skew allowed; check the worker's clock")
    return start

