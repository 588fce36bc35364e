"""Cancel markers: how a client stops calls that are already running on Lambda.

A marker is a small object at the key an event names as its ``cancel_key``:
the job's (``keys.cancel_key``: every call of the job stops; what a job's
``cancel`` writes) or one call's (``keys.call_cancel_key``: what
``wrenpack.cancel`` of a running call writes). The handler's parent process looks
for it while the call runs (``handler._CancelWatch``); when an authentic one
names the call, the job's child is ended, everything it started with it, and
the call ends with a ``CallCancelled`` outcome.

A marker is sealed with the job's secret (``wrenpack.auth``) as the job's
"cancel" object: the job's marker under the job's identity (its payload is the
canceller's JSON record, whatever it holds), a call's under an identity that
also covers its key (its payload names the calls: ``{"v": 1, "calls": [...]}``).
Only the client that launched the job can make one: a stranger who can write
to the bucket cannot stop a call with a marker (it fails its check and is
ignored; such a stranger could delete the job's objects anyway), and a
marker moved to another key or job fails too. Standard library only: the
worker imports this.
"""
from __future__ import annotations

import json
from typing import Iterable

from wrenpack import auth, keys

#: the payload's version
VERSION = 1


def identity(job_id: str, key: str) -> str:
    """What a marker's MAC covers: the job and kind, and for a call's marker its key."""
    if key == keys.cancel_key(job_id):
        return keys.identity(job_id, "cancel")
    return keys.identity(job_id, "cancel", call_id=key)


def seal_marker(secret: bytes, job_id: str, key: str, calls: Iterable[str] | None = None) -> bytes:
    """A marker at ``key`` that cancels ``calls`` of job ``job_id`` (None: all of them;
    at the job's key, always all of them)."""
    body = {"v": VERSION, "calls": "*" if calls is None else sorted(set(calls))}
    return auth.seal(secret, identity(job_id, key), json.dumps(body, separators=(",", ":")).encode())


def open_marker(secret: bytes, job_id: str, key: str, blob: bytes) -> set[str] | None:
    """The calls a marker names (None: all), or raise ``CorruptObject`` if it is not authentic."""
    data = auth.unseal(secret, identity(job_id, key), blob, key)
    body = json.loads(bytes(data))
    if key == keys.cancel_key(job_id):
        return None  # the job's marker: every call, whatever record it holds
    calls = body.get("calls") if isinstance(body, dict) else None
    if calls == "*":
        return None
    if not isinstance(calls, list):
        return set()
    return {c for c in calls if isinstance(c, str)}


def names_call(secret: bytes, job_id: str, key: str, blob: bytes, call_id: str) -> bool:
    """Whether an authentic marker at ``key`` cancels ``call_id`` (a forged or malformed one: no)."""
    try:
        calls = open_marker(secret, job_id, key, blob)
    except Exception:  # noqa: BLE001 - not authentic, or not a marker: ignored
        return False
    return calls is None or call_id in calls
