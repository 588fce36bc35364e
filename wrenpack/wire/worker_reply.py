"""A local worker's reply to its driver (the header of a ``wire.frames`` message).

::

    {"ready": pid}                                          once, when the worker can take calls
    {"status": {...}, "peak_rss_mb": mb, "elapsed": s,      once per call, in the order they came
     "outcome": n | "result": n,    the blob: the outcome's pickle (the status is whole), or the sealed
                                    result object (the status inside it; here only exit and stored)
     "handoff": layout,             the result as a memfd: the next descriptor the driver received
     "children": true,              a child process ended during the call (look for OOM kills)
     "tmp_bytes": n}                what the call left in its /tmp
    {"error": text, "peak_rss_mb": mb, "elapsed": s, ...}   the handler itself failed
    {"withdrawn": true}                                     a call sent ahead that the driver took back
                                                            (``wire.driver_message``): not run, no outcome

The header is ``marshal``: the driver already unpickles the outcomes this
worker sends on the same private socketpair (``Executor._read_private``),
which is more than a header can do, so reading it with marshal exposes
nothing new; what the store or Lambda brings is still verified, and never
marshal. Headers hold only JSON's values, so a status is what a stored result's
JSON would say (tests/test_worker_wire.py holds every reply to that).
Standard library only: the worker imports this.
"""
from __future__ import annotations

import marshal
from typing import Any

#: The reply header's fields and encoding; a change of either is a new version (tests/test_wire_golden.py).
VERSION = 2


def ready(pid: int) -> dict[str, Any]:
    """The worker's first message."""
    return {"ready": pid}


def of_call(returned: dict[str, Any]) -> tuple[dict[str, Any], bytes, Any]:
    """What the handler returned (its status, with ``result``, ``outcome`` or
    ``handoff`` when the result travels with the reply; taken out of it) ->
    (the reply header, its blob, the hand-off whose descriptor goes with it or None)."""
    data = returned.pop("result", None)
    blob = bytes(data) if isinstance(data, (bytes, bytearray)) else b""
    private = returned.pop("outcome", None)
    out = returned.pop("handoff", None)
    status = returned
    peak = max(status.get("peak_rss_mb") or 0.0, status.get("children_peak_rss_mb") or 0.0)
    if blob:
        # The whole status travels sealed inside the result object; the
        # header carries only what the scheduler acts on.
        status = {k: status[k] for k in ("exit", "stored") if k in status}
    reply: dict[str, Any] = {"status": status, "peak_rss_mb": peak}
    if private is not None:
        blob = private
        reply["outcome"] = len(blob)  # the blob is the outcome itself, the status is whole
    elif blob:
        reply["result"] = len(blob)
    if out is not None:
        reply["handoff"] = out.layout
    return reply, blob, out


def failed(error: str, peak_rss_mb: float) -> dict[str, Any]:
    """The reply of a call whose handler raised (the worker goes on serving)."""
    return {"error": error, "peak_rss_mb": peak_rss_mb}


def withdrawn() -> dict[str, Any]:
    """The reply to a call sent ahead that the driver took back before it started."""
    return {"withdrawn": True}


def measured(reply: dict[str, Any], elapsed: float, children: bool, tmp_bytes: int) -> dict[str, Any]:
    """``reply`` with the worker's meters of the call."""
    reply["elapsed"] = elapsed
    if children:
        reply["children"] = True
    if tmp_bytes:
        reply["tmp_bytes"] = tmp_bytes
    return reply


def payload(head: dict[str, Any], blob: bytes) -> tuple[bytes | None, bytes | None]:
    """(the sealed result object, the outcome's pickle) a reply's blob is; None for what it is not."""
    if "outcome" in head:
        return None, blob
    return blob or None, None


def dumps(reply: dict[str, Any]) -> bytes:
    """The header's bytes."""
    return marshal.dumps(reply)


def loads(data: bytes) -> dict[str, Any]:
    """A worker's reply header; ValueError if it is not a dict."""
    head = marshal.loads(data)
    if type(head) is not dict:
        raise ValueError(f"a worker's reply header is a {type(head).__name__}, not a dict")
    return head
