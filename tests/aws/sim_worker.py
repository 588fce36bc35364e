"""What a wrenpack worker leaves behind, for the simulated Lambda (``sim_service``).

``WrenpackFunction`` does per invocation what ``wrenpack.worker.handler`` does
to the store and the reply, built with wrenpack's own wire modules, so the
client verifies genuine sealed objects: a sealed start mark when the call
began after ``mark_start_after``; the refusal of an event past its
``deadline``; at the end a status record and a sealed result object, in the
RequestResponse reply when it fits (``reply_limit``, ``reply_within_s``),
else written "if absent" at the call's result key. It runs no user code: the
value is ``compute(*args, **kwargs)`` of the call's inline arguments
(cloudpickled by this very client, so unpickling them here is unpickling our
own test data), and ``duration(event)`` says how long the call takes.

The GETs with which the real handler looks for the call's cancel marker
while it runs (``handler.CANCEL_FIRST_S`` after its start, then after gaps
as long as it has run: ``handler.cancel_looks``) are counted, as kind
``WATCH`` on the worker's side, but not made one by one (no rate limit, no effect: no marker is ever there here).

Not simulated: loading the function (a real worker GETs ``func.pkl`` once per
fresh execution environment unless it travels inline), checkpoints and
segments, arguments stored in S3 (``args.key``), logs.
"""
from __future__ import annotations

import base64
import os
from typing import Any, Callable

import cloudpickle

from tests.aws.sim_service import CallContext, NoSuchKey, SimFunction, SlowDown
from wrenpack import auth, keys
from wrenpack.wire import result as result_format, start as start_mark, status as status_record
from wrenpack.wire.outcome import Outcome


class WrenpackFunction(SimFunction):
    """A simulated wrenpack worker: ``compute`` gives each call's value, ``duration`` its run time."""

    def __init__(self, compute: Callable[..., Any] = lambda x: x, duration: float | Callable[[dict[str, Any]], float] = 0.0,
                 watch_cancel: bool = True) -> None:
        self.compute = compute
        self._duration = duration
        #: count the cancel marker's GETs the real handler makes while a call runs
        self.watch_cancel = watch_cancel
        #: a call whose write the simulated S3 refused (SlowDown) after the worker's retries
        self.lost_writes = 0
        #: start marks written: a queued Event call that starts after ``mark_start_after`` writes one
        self.start_marks = 0

    def duration(self, event: dict[str, Any]) -> float:
        return self._duration(event) if callable(self._duration) else float(self._duration)

    @staticmethod
    def _where(event: dict[str, Any], key: str) -> tuple[str, str]:
        store = event["store"]
        prefix = (store.get("prefix") or "").strip("/")
        return store["bucket"], f"{prefix}/{key}" if prefix else key

    def _put(self, ctx: CallContext, event: dict[str, Any], key: str, data: bytes, if_absent: bool = False) -> bool:
        """One PUT as the worker's S3 client makes it: SlowDown is retried (botocore's
        retries, ``max_attempts`` 10), each attempt counted."""
        bucket, full = self._where(event, key)
        for attempt in range(10):
            try:
                return ctx.s3.put(bucket, full, data, if_absent=if_absent)
            except SlowDown:
                ctx.clock.sleep(min(20.0, 0.05 * 2 ** attempt))
        self.lost_writes += 1
        return False

    def start(self, event: dict[str, Any], ctx: CallContext) -> None:
        after = event.get("mark_start_after")
        deadline = event.get("deadline")
        if deadline is not None and ctx.start > float(deadline):
            return  # refused at finish
        if after is not None and ctx.start > float(after):
            secret = auth.decode_secret(event["secret"])
            mark = start_mark.seal_start(secret, event["job_id"], event["call_id"], ctx.start, event.get("attempt", 0))
            self.start_marks += 1
            self._put(ctx, event, keys.start_key(event["job_id"], event["call_id"]), mark)

    def finish(self, event: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        job_id, call_id = event["job_id"], event["call_id"]
        attempt, segment = int(event.get("attempt", 0)), int(event.get("segment", 0))
        deadline = event.get("deadline")
        if deadline is not None and ctx.start > float(deadline):
            return {"job_id": job_id, "call_id": call_id, "attempt": attempt, "segment": segment, "exit": "expired",
                    "deadline": deadline, "now": ctx.start}
        try:
            args, kwargs = cloudpickle.loads(base64.b64decode(event["args"]["inline"]))
            outcome = Outcome.success(self.compute(*args, **kwargs)).dumps()
            kind = "ok"
        except Exception as exc:  # noqa: BLE001 - the call's own error, as a worker reports it
            outcome = Outcome.from_exception(exc).dumps()
            kind = "error"
        if self.watch_cancel and event.get("cancel_key"):
            looks = _cancel_looks(ctx.end - ctx.start)
            if looks:
                ctx.s3.count("WATCH", looks)
        status = status_record.record(job_id, call_id, attempt, segment, kind, ctx.start, ctx.end, peak_rss_mb=60.0,
                                      children_peak_rss_mb=None, host="sim", pid=os.getpid(), python="3.12",
                                      request_id=ctx.request_id)
        status["run_s"] = ctx.end - ctx.start
        blob = result_format.seal_result(auth.decode_secret(event["secret"]), job_id, call_id, status, outcome)
        limit, within = event.get("reply_limit"), event.get("reply_within_s")
        if ctx.invocation_type == "RequestResponse" and limit is not None and len(blob) <= limit \
                and (within is None or ctx.end - ctx.start <= within):
            return dict(status, first=True, result=result_format.to_reply(blob, text=True))
        status["first"] = self._put(ctx, event, keys.result_key(job_id, call_id), blob, if_absent=True)
        return status


def _cancel_looks(run_s: float) -> int:
    """How many times the real handler looks for a call's cancel marker (a GET each on S3) in ``run_s`` seconds."""
    from wrenpack.worker.handler import cancel_looks

    return cancel_looks(run_s)


__all__ = ["WrenpackFunction", "NoSuchKey"]
