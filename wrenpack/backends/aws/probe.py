"""Probe invocations: ask a deployed worker function what it runs.

The handler answers ``{"wrenpack_probe": 1}`` with its Python, botocore and
boto3 versions and whether that botocore is new enough
(``wrenpack.worker.sdk``), touching no store. ``wrenpack doctor`` shows the
answer; the acceptance run also uses probes to time cold starts (Lambda's
``Init Duration`` from the log tail) and to fill execution environments.
"""
from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from wrenpack.errors import WrenpackError
from wrenpack.storage.s3 import _code
from wrenpack.worker.sdk import PROBE_KEY

_INIT = re.compile(r"Init Duration:\s*([0-9.]+)\s*ms")
_DURATION = re.compile(r"\bDuration:\s*([0-9.]+)\s*ms")


@dataclass
class ProbeReply:
    """What one probe invocation answered."""

    #: the worker's answer (``wrenpack.worker.sdk.probe``)
    doc: dict[str, Any]
    #: the round trip as the client saw it (s)
    seconds: float
    #: Lambda's own report from the log tail (ms), when it sent one
    init_ms: float | None = None
    duration_ms: float | None = None


def probe(lam: Any, name: str, log_tail: bool = False, **extra: Any) -> ProbeReply:
    """Invoke ``name`` synchronously with a probe event (plus ``extra`` fields);
    a reply that is not a probe's answer raises a one-line ``WrenpackError``."""
    request: dict[str, Any] = dict(FunctionName=name, InvocationType="RequestResponse",
                                   Payload=json.dumps({PROBE_KEY: 1, **extra}).encode())
    if log_tail:
        request["LogType"] = "Tail"
    started = time.monotonic()
    try:
        resp = lam.invoke(**request)
    except Exception as exc:
        raise WrenpackError(f"probing Lambda function {name!r} failed: {_code(exc) or type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    seconds = time.monotonic() - started
    body = resp["Payload"].read() if resp.get("Payload") is not None else b""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if resp.get("FunctionError") or not isinstance(doc, dict) or PROBE_KEY not in doc:
        why = (doc.get("errorMessage") if isinstance(doc, dict) else None) or text
        raise WrenpackError(f"Lambda function {name!r} gave no probe answer ({resp.get('FunctionError') or 'reply'}: "
                            f"{' '.join(str(why).split())[:200]}); redeploy it with this wrenpack (`wrenpack deploy`)")
    reply = ProbeReply(doc, seconds)
    tail = resp.get("LogResult")
    if tail:
        log = base64.b64decode(tail).decode("utf-8", "replace")
        init, duration = _INIT.search(log), _DURATION.search(log)
        reply.init_ms = float(init.group(1)) if init else None
        reply.duration_ms = float(duration.group(1)) if duration else None
    return reply


def describe(doc: dict[str, Any]) -> str:
    """One line: the worker's botocore, boto3 and Python."""
    where = doc.get("botocore_path") or ""
    origin = " from a layer" if where.startswith("/opt/") else " from the runtime archive" if where.startswith("/tmp/") else ""
    return (f"botocore {doc.get('botocore') or 'none'}{origin} (boto3 {doc.get('boto3') or 'none'}), "
            f"Python {doc.get('python')}; wrenpack needs botocore >= {doc.get('botocore_needed')}")
