"""Cancel markers: how a client stops calls that are already running on Lambda.

A marker is a small object at the key an event names as its ``cancel_key``
(``wrenpack.keys.cancel_key``: one call's, or a job's). The handler's parent
process looks for it while the call runs (``handler._CancelWatch``); when it
appears and names the call, the job's child is ended, everything it started
with it, and the call ends with a ``CallCancelled`` outcome.

A marker is sealed with the job's secret (``wrenpack.auth``) under an identity
that covers the job and the marker's key, so only the client that launched the
job (or a call of it, which can ask nothing of the secret but a sub-job's) can
make one: a stranger who can write to the bucket can delete objects anyway,
but cannot stop a call by writing a marker, and a marker moved to another
key or job fails its check and is ignored.

The payload is JSON: ``{"calls": ["00003", ...]}`` or ``{"calls": "*"}`` (every
call of the job). Standard library only: the worker imports this.
"""
from __future__ import annotations

import json
from typing import Iterable

from wrenpack import auth, keys

#: the payload's version
VERSION = 1


def identity(job_id: str, key: str) -> str:
    """What a marker's MAC covers: the job, the kind and the key it sits at."""
    return keys.identity(job_id, "cancel", call_id=key)


def seal_marker(secret: bytes, job_id: str, key: str, calls: Iterable[str] | None = None) -> bytes:
    """A marker at ``key`` that cancels ``calls`` of job ``job_id`` (None: all of them)."""
    body = {"v": VERSION, "calls": "*" if calls is None else sorted(set(calls))}
    return auth.seal(secret, identity(job_id, key), json.dumps(body, separators=(",", ":")).encode())


def open_marker(secret: bytes, job_id: str, key: str, blob: bytes) -> set[str] | None:
    """The calls a marker names (None: all), or raise ``CorruptObject`` if it is not authentic."""
    data = auth.unseal(secret, identity(job_id, key), blob, key)
    body = json.loads(bytes(data))
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
