"""A call's status record: what the worker says about one invocation, readable
without unpickling anything (pollers, ``wrenpack clean``, diagnostics).

It sits in front of the outcome in a result object (``wire.result``, encoded
by ``dumps``: compact JSON), in a segment record (``wire.segment``) and in a
local worker's reply header (``wire.worker_reply``). ``record`` builds the
fields every invocation has, in this order::

    job_id, call_id, attempt, segment, exit ("ok", "error", "timeout", "checkpointed"),
    start, end, duration_s (seconds; start and end on the worker's clock),
    peak_rss_mb, children_peak_rss_mb, host, pid, python, request_id

An invocation whose event came after its ``deadline`` runs nothing: the handler
replies ``{job_id, call_id, attempt, segment, exit: "expired", deadline, now}``
and writes no record.

The handler adds, when they apply: ``run_s`` (the function's own time),
``checkpoint`` (its saves), ``ckpt_last`` (``[segment, attempt, number]``: the
place of the invocation's last checkpoint save, ``wire.checkpoint.Saves``),
``logs`` (the captured output tail), ``stored``
(the job has objects in the store), ``botocore`` (the worker's botocore
version, when the store is S3), ``crashed`` (the call's process died under a
Lambda worker, "exit code 3", "signal SIGSEGV": the client may run it again,
as ``retries`` allow, after deleting this record's result object); the client adds ``retried``, and ``memory_mb``
and ``timeout_s`` (what the invocation ran with) to the copy its future holds.
Standard library only: the worker imports this.
"""
from __future__ import annotations

import json
from typing import Any

#: The record's fields and their encoding; a change of either is a new version (tests/test_wire_golden.py).
VERSION = 1


def record(job_id: str, call_id: str, attempt: int, segment: int, exit: str, start: float, end: float,
           peak_rss_mb: float | None, children_peak_rss_mb: float | None, host: str, pid: int, python: str,
           request_id: str | None) -> dict[str, Any]:
    """The fields every status record has (callers add the optional ones)."""
    return {
        "job_id": job_id,
        "call_id": call_id,
        "attempt": attempt,
        "segment": segment,
        "exit": exit,
        "start": start,
        "end": end,
        "duration_s": end - start,
        "peak_rss_mb": peak_rss_mb,
        "children_peak_rss_mb": children_peak_rss_mb,
        "host": host,
        "pid": pid,
        "python": python,
        "request_id": request_id,
    }


def dumps(status: dict[str, Any]) -> bytes:
    """The record as a result object holds it: compact JSON."""
    return json.dumps(status, separators=(",", ":")).encode()


def loads(data: bytes | memoryview) -> dict[str, Any]:
    """A record as ``dumps`` (or ``json.dumps``) wrote it; ValueError if it is not a JSON object.
    (Read before its MAC is checked, where it comes from the store: arrays nested
    too deep for the parser are a ValueError too, not a RecursionError.)"""
    try:
        status = json.loads(bytes(data))
    except RecursionError:
        raise ValueError("a status record nests too deep") from None
    if not isinstance(status, dict):
        raise ValueError(f"a status record is a JSON {type(status).__name__}, not an object")
    return status
