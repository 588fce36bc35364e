"""A spawned job's records: the job record, its progress record and its cancel
marker, and how the job's secret comes from the user's key.

* The job record (``keys.job_record_key``), JSON ``{"job_id", "function",
  "calls", "created", "owner": {"user", "host"}, "backend", "spawned",
  "retention_s", "settings": {"memory", "timeout", "ephemeral_storage",
  "retries", "architecture"}, "mac"}``. ``mac`` is HMAC-SHA256 under the
  launching user's own key (``wrenpack.executor.owner.user_key``, the key of the
  owner records) over the record's identity (``keys.identity(job, "job")``) and
  its other fields as canonical JSON, as in ``wire.owner``: anyone who can
  write to the store could otherwise plant a job that ``wrenpack.attach``
  opens or that ``wrenpack clean`` judges by. It is never unpickled.
* The job's secret (``wrenpack.auth``) is derived from the same key and the
  job's id (``derive_secret``), so another process of the same user, on any
  machine that holds the key, can verify the job's results; someone with only
  store access cannot. It is never written anywhere.
* The progress record (``keys.progress_key``), JSON ``{"state", "done",
  "failed", "running", "queued", "cancelled", "invocations", "billed_ms",
  "updated", "ended", "outlive", "in_flight"}``, sealed with the job's secret
  as the job's "progress" object: what the process running the job's calls
  counted (``state``: "running", then "done", "failed" or "cancelled");
  ``outlive``: its backend's calls go on without it (Lambda), and then
  ``in_flight`` names the calls sent and not ended.
* The cancel marker (``keys.cancel_key``), JSON ``{"at", "host", "pid"}``,
  sealed with the job's secret as its "cancel" object: only someone who holds
  the secret can cancel a job. Workers find its key in their event (``cancel_key``).

Standard library only (with ``wrenpack.auth``): the worker may read the marker.
"""
from __future__ import annotations

import hmac
import json
import struct
from typing import Any

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject

#: The layout of the three records and of the secret's derivation; a change is a new version (tests/test_wire_golden.py).
VERSION = 1

#: what a job's secret is derived under (never the label of any other MAC made with the user's key)
_SECRET_LABEL = b"wrenpack-job-secret/1\x00"
#: states of a job whose calls all ended
FINAL_STATES = ("done", "failed", "cancelled")


def derive_secret(user_key: bytes, job_id: str) -> bytes:
    """The job's secret: HMAC-SHA256 of its id under the user's key."""
    return hmac.digest(user_key, _SECRET_LABEL + job_id.encode("utf-8"), "sha256")


def _mac(key: bytes, job_id: str, record: dict[str, Any]) -> str:
    ident = keys.identity(job_id, "job").encode("utf-8")
    fields = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    return hmac.digest(key, struct.pack(">I", len(ident)) + ident + fields.encode(), "sha256").hex()


def seal_job(user_key: bytes, job_id: str, record: dict[str, Any]) -> bytes:
    """The job record's bytes, with the ``mac`` that binds it to ``job_id`` under ``user_key``."""
    return json.dumps(dict(record, mac=_mac(user_key, job_id, record)), sort_keys=True).encode()


def open_job(user_key: bytes | None, job_id: str, data: bytes) -> dict[str, Any]:
    """The job record in ``data`` if ``seal_job`` made it with ``user_key`` for
    ``job_id``; ``CorruptObject`` (one line) otherwise."""
    where = keys.job_record_key(job_id)
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # (read before its MAC is checked: nested too deep is no record either)
        record = None
    if not isinstance(record, dict):
        raise CorruptObject(f"{where} is not a job record; it was not written by wrenpack: remove the job "
                            "(wrenpack clean --force JOB_ID) and check who can write to the store")
    mac = record.get("mac")
    if user_key is None or not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(user_key, job_id, record)):
        why = "there is no owner key here to check it with" if user_key is None else \
            "it is not sealed with your owner key (another user's job, or forged)"
        raise CorruptObject(f"{where} cannot be trusted: {why}; nothing of the job was read. Attach from the "
                            "account that spawned it, or check who can write to the store")
    record.pop("mac")
    return record


def _seal_json(secret: bytes, job_id: str, kind: str, record: dict[str, Any]) -> bytes:
    data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return auth.seal(secret, keys.identity(job_id, kind), data)


def _open_json(secret: bytes, job_id: str, kind: str, key: str, blob: bytes, fix: str) -> dict[str, Any]:
    """The JSON object sealed in ``blob`` as the job's ``kind``; ``CorruptObject`` otherwise."""
    data = auth.unseal(secret, keys.identity(job_id, kind), blob, key)
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise CorruptObject(f"{key} is authentic but unreadable{fix}")
    return record


def seal_progress(secret: bytes, job_id: str, progress: dict[str, Any]) -> bytes:
    """The sealed progress record."""
    return _seal_json(secret, job_id, "progress", progress)


def open_progress(secret: bytes, job_id: str, blob: bytes) -> dict[str, Any]:
    """A progress record ``seal_progress`` made for the job; ``CorruptObject`` otherwise."""
    return _open_json(secret, job_id, "progress", keys.progress_key(job_id), blob, "; re-run the job")


def seal_cancel(secret: bytes, job_id: str, marker: dict[str, Any]) -> bytes:
    """The sealed cancel marker."""
    return _seal_json(secret, job_id, "cancel", marker)


def open_cancel(secret: bytes, job_id: str, blob: bytes) -> dict[str, Any]:
    """A cancel marker ``seal_cancel`` made for the job; ``CorruptObject`` for anything else
    (a marker a stranger planted cancels nothing)."""
    return _open_json(secret, job_id, "cancel", keys.cancel_key(job_id), blob, "")
