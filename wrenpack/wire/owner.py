"""The owner record: who launched a job, next to its objects (``keys.owner_key``),
so ``wrenpack clean --stale`` can tell a live job's objects from a dead one's.

JSON ``{"host": name, "pid": n, "start": process start (clock ticks, text) or null,
"created": seconds, "label": text, "mac": hex}``. ``mac`` is HMAC-SHA256 under
the launching user's own key (``wrenpack.executor.owner.user_key``, a file only
that user can read; never the job's secret, never sent to a worker) of the
record's identity (``keys.identity(job, "owner")``) and its other fields as
canonical JSON (sorted keys, no spaces). Anyone who can write to the store
could otherwise name a dead pid for a running job and have ``clean --stale``
remove its objects: a record that does not verify, or that is bound to
another job, decides nothing. It never holds anything that is unpickled. The
client writes it at launch, or sends it (sealed) in the event (``owner``) for
the worker to write as it is before the job's first object. Standard library
only: the worker imports this.
"""
from __future__ import annotations

import hmac
import json
import struct
from typing import Any

from wrenpack import keys

#: The owner record's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 2


def dumps(record: dict[str, Any]) -> bytes:
    """The record's bytes."""
    return json.dumps(record).encode()


def loads(data: bytes) -> dict[str, Any]:
    """A record ``dumps`` wrote; ValueError if it is not a JSON object."""
    record = json.loads(data)
    if not isinstance(record, dict):
        raise ValueError(f"an owner record is a JSON {type(record).__name__}, not an object")
    return record


def _mac(key: bytes, job_id: str, record: dict[str, Any]) -> str:
    ident = keys.identity(job_id, "owner").encode("utf-8")
    fields = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    # (hmac.digest with a digest name: OpenSSL's one-shot HMAC, the same bytes as hmac.new, a fifth of its time)
    return hmac.digest(key, struct.pack(">I", len(ident)) + ident + fields.encode(), "sha256").hex()


def seal(key: bytes, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the ``mac`` that binds it to ``job_id`` under the user's ``key``."""
    return dict(record, mac=_mac(key, job_id, record))


def verify(key: bytes, job_id: str, record: dict[str, Any]) -> bool:
    """True only for a record ``seal`` made with ``key`` for ``job_id``, unchanged since."""
    mac = record.get("mac")
    return isinstance(mac, str) and hmac.compare_digest(mac, _mac(key, job_id, record))
