"""The AWS Lambda backend: invoke the deployed worker function, learn of each
call's end from the result object its handler writes.

::

    invoke(inv) -> send queue -> sender threads (at most `concurrency` calls in flight)
        -> lambda.invoke(InvocationType="Event")      202: the call is queued in Lambda
           (backoff on TooManyRequestsException/429/5xx)
    poller thread, every `poll_interval` s, per job with calls in flight:
        many pending: LIST jobs/<job>/result/ and segment/;  few: GET each call's keys
        result (or segment) record found -> on_done(status read from its header)
        deadline + margin past  -> retry (if retries remain) or on_done(WorkerLost)

With ``invocation_type="RequestResponse"`` the sender thread waits for the
call's reply instead, and a reply that carries no status (Lambda's own
"Task timed out", a crashed runtime) is reported at once. The tests run
both types through the AWS Runtime Interface Emulator (see docs/aws.md).

Duplicates are harmless: the handler writes its one result object with
``if_absent``, so whichever delivery finishes first wins, and ``on_done`` is
called once per invocation no matter how many deliveries report.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wrenpack import auth, keys, protocol
from wrenpack.backends.base import Backend, Invocation, InvocationResult
from wrenpack.errors import (
    ConfigError,
    CorruptObject,
    ObjectNotFound,
    PayloadTooLarge,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
    WrenpackError,
)
from wrenpack.storage import Store
from wrenpack.worker import result as result_format
from wrenpack.storage.s3 import _code

log = logging.getLogger(__name__)

#: Lambda's request payload limits (bytes).
EVENT_PAYLOAD_LIMIT = 1024 * 1024
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
_THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException", "429"}
_RETRYABLE_CODES = _THROTTLE_CODES | {
    "ServiceException", "ResourceNotReadyException", "ResourceConflictException", "500", "502", "503", "504",
}
#: A ranged read of this many bytes holds a result object's status header.
RESULT_HEAD_BYTES = 16 * 1024
#: Above this many pending calls in a job, one LIST beats one GET per call.
STRAGGLER_GETS = 8


@dataclass
class _Call:
    inv: Invocation
    sent_at: float = 0.0
    deadline: float = 0.0
    in_flight: bool = False
    done: bool = False


class LambdaBackend(Backend):
    name = "lambda"

    def __init__(
        self,
        store: Store,
        *,
        function_name: str = "wrenpack-worker",
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        concurrency: int = 100,
        invocation_type: str = "Event",
        poll_interval: float = 0.5,
        deadline_margin_s: float = 30.0,
        throttle_give_up_s: float = 600.0,
        client: Any = None,
    ) -> None:
        if invocation_type not in ("Event", "RequestResponse"):
            raise ConfigError(f"invocation_type {invocation_type!r} is not valid; use 'Event' or 'RequestResponse'")
        if concurrency < 1:
            raise ConfigError(f"lambda_concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.function_name = function_name
        self.region = region
        self.profile = profile
        self.endpoint_url = endpoint_url
        self.concurrency = concurrency
        self.invocation_type = invocation_type
        self.poll_interval = poll_interval
        self.deadline_margin_s = deadline_margin_s
        self.throttle_give_up_s = throttle_give_up_s
        self._client = client
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], _Call] = {}
        self._slots = threading.BoundedSemaphore(concurrency)
        # Event sends return in milliseconds: a few threads suffice. A
        # synchronous send holds its thread for the whole call.
        workers = concurrency if invocation_type == "RequestResponse" else min(concurrency, 32)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wrenpack-lambda")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poller: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any) -> "LambdaBackend":
        """Build from a ``wrenpack.config.Config`` (read defensively: any object with
        these attributes works)."""
        from wrenpack.storage import store_for_config

        store = getattr(config, "store", None)
        if not isinstance(store, Store):
            store = store_for_config(config)
        return cls(
            store,
            function_name=getattr(config, "function_name", None) or "wrenpack-worker",
            region=getattr(config, "aws_region", None),
            profile=getattr(config, "aws_profile", None),
            endpoint_url=getattr(config, "lambda_endpoint_url", None),
            concurrency=int(getattr(config, "lambda_concurrency", None) or getattr(config, "concurrency", None) or 100),
            invocation_type=getattr(config, "invocation_type", None) or "Event",
            poll_interval=float(getattr(config, "poll_interval", None) or 0.5),
            deadline_margin_s=float(getattr(config, "lambda_deadline_margin_s", None) or 30.0),
        )

    # -- boto3 ------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:  # sender threads race here on first use
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        sync = self.invocation_type == "RequestResponse"
        cfg = Config(
            # Throttling is retried by our own, longer backoff loop below.
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=max(10, min(self.concurrency, 256)),
            connect_timeout=10,
            read_timeout=960 if sync else 60,  # a synchronous call may run 900 s
        )
        return session.client("lambda", endpoint_url=self.endpoint_url, config=cfg)

    # -- Backend interface --------------------------------------------------
    def invoke(self, invocation: Invocation) -> None:
        if self._stop.is_set():
            raise WrenpackError("the Lambda backend was shut down; create a new executor")
        call = _Call(invocation)
        with self._lock:
            self._calls[invocation.key] = call
            if self._poller is None and self.invocation_type == "Event":
                self._poller = threading.Thread(target=self._poll_loop, name="wrenpack-lambda-poll", daemon=True)
                self._poller.start()
        self._pool.submit(self._send, call)

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            pending = [c for c in self._calls.values() if not c.done]
        for call in pending:
            self._finish(call, InvocationResult(error=WorkerLost(
                f"call {call.inv.key[1]} of job {call.inv.key[0]} was still running when the Lambda backend shut down"
            )))
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if wait and self._poller is not None:
            self._poller.join(timeout=10)

    # -- sending ------------------------------------------------------------
    def _send(self, call: _Call) -> None:
        inv = call.inv
        self._slots.acquire()
        released = False
        try:
            if call.done or self._stop.is_set():
                return
            inv.event["attempt"] = inv.attempt
            payload = json.dumps(inv.event, separators=(",", ":")).encode()
            limit = EVENT_PAYLOAD_LIMIT if self.invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
            if len(payload) > limit:
                self._finish(call, InvocationResult(error=PayloadTooLarge(
                    f"the event for call {inv.key[1]} is {len(payload)} bytes, over Lambda's {limit}-byte limit; "
                    "lower max_inline_args so large arguments travel through the store"
                )))
                return
            try:
                resp = self._invoke_with_backoff(payload)
            except WrenpackError as exc:
                self._finish(call, InvocationResult(error=exc))
                return
            if self.invocation_type == "Event":
                with self._lock:
                    call.sent_at = time.time()
                    call.deadline = call.sent_at + inv.timeout_s + self.deadline_margin_s
                    call.in_flight = True
                released = True  # the slot is released when the call finishes
                self._wake.set()
                return
            self._finish_sync(call, resp)
        finally:
            if not released:
                # Sync calls and failed sends free their slot here; Event calls in _finish.
                call.in_flight = False
                self._slots.release()

    def _invoke_with_backoff(self, payload: bytes) -> dict[str, Any]:
        start = time.monotonic()
        delay = 0.2
        while True:
            try:
                return self.client.invoke(FunctionName=self.function_name, InvocationType=self.invocation_type, Payload=payload)
            except Exception as exc:  # botocore ClientError and connection errors
                code = _code(exc)
                if code == "ResourceNotFoundException":
                    raise ConfigError(
                        f"Lambda function {self.function_name!r} not found; run `wrenpack deploy` "
                        "or set function_name/aws_region"
                    ) from None
                if code in ("AccessDeniedException", "AccessDenied"):
                    raise ConfigError(
                        f"not allowed to invoke Lambda function {self.function_name!r}; see `wrenpack iam-policy`"
                    ) from None
                connection = type(exc).__name__ in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError")
                if code not in _RETRYABLE_CODES and not connection:
                    raise TaskError(f"invoking Lambda function {self.function_name!r} failed: {code or type(exc).__name__}: {exc}") from None
                waited = time.monotonic() - start
                if waited > self.throttle_give_up_s or self._stop.is_set():
                    raise TaskError(
                        f"Lambda kept refusing invocations of {self.function_name!r} ({code or type(exc).__name__}) "
                        f"for {waited:.0f} s; lower lambda_concurrency or raise the account's concurrency quota"
                    ) from None
                log.debug("invoke throttled (%s); retrying in %.2f s", code, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 20.0)

    def _finish_sync(self, call: _Call, resp: dict[str, Any]) -> None:
        """A RequestResponse reply: the status in the store is the truth; the
        reply explains a call that left none."""
        body = resp["Payload"].read() if resp.get("Payload") is not None else b""
        status = self._read_status(call.inv)
        if status is not None:
            self._finish(call, InvocationResult(status=status))
            return
        error = _reply_error(body, resp.get("FunctionError"), call.inv, self.function_name)
        if isinstance(error, WorkerCrashed) and call.inv.attempt < call.inv.retries:
            call.inv.attempt += 1
            log.info("call %s crashed (%s); retry %d", call.inv.key, error, call.inv.attempt)
            self._pool.submit(self._send, call)
            return
        self._finish(call, InvocationResult(error=error))

    # -- polling --------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._poll_once()
            except Exception:  # noqa: BLE001 - one failed poll must not stop the poller
                log.warning("polling the store for call status failed; retrying", exc_info=True)
                time.sleep(self.poll_interval)

    def _poll_once(self) -> None:
        with self._lock:
            in_flight = [c for c in self._calls.values() if c.in_flight and not c.done]
        by_job: dict[str, list[_Call]] = {}
        for call in in_flight:
            by_job.setdefault(call.inv.key[0], []).append(call)
        now = time.time()
        for job_id, calls in by_job.items():
            if len(calls) > STRAGGLER_GETS:
                # One LIST per prefix finds every finished call of the job.
                listed = self.store.list(keys.result_prefix(job_id))
                results = {keys.call_id_from_key(k) for k in listed if k.endswith(".res")}
                segments = {k.rsplit("/", 1)[-1] for k in listed if k.endswith(".seg")}
                found = [
                    c for c in calls
                    if c.inv.key[1] in results or _segment_name(c.inv) in segments
                ]
                for call in found:
                    status = self._read_status(call.inv)
                    if status is not None:
                        self._finish(call, InvocationResult(status=status))
            else:
                # A few stragglers: direct reads are cheaper than listing a big job.
                for call in calls:
                    status = self._read_status(call.inv)
                    if status is not None:
                        self._finish(call, InvocationResult(status=status))
            for call in calls:
                if not call.done and now > call.deadline:
                    self._deadline_passed(call)

    def _deadline_passed(self, call: _Call) -> None:
        status = self._read_status(call.inv)  # one last direct look
        if status is not None:
            self._finish(call, InvocationResult(status=status))
            return
        inv = call.inv
        if inv.attempt < inv.retries:
            inv.attempt += 1
            log.warning("call %s of job %s sent no status by its deadline; retry %d", inv.key[1], inv.key[0], inv.attempt)
            with self._lock:
                call.in_flight = False
            self._slots.release()
            self._pool.submit(self._send, call)
            return
        self._finish(call, InvocationResult(error=WorkerLost(
            f"call {inv.key[1]} of job {inv.key[0]} wrote no status within its {inv.timeout_s:g} s timeout "
            f"plus {self.deadline_margin_s:g} s; the worker was likely killed by Lambda's timeout or memory limit: "
            f"see CloudWatch log group /aws/lambda/{self.function_name} and raise timeout or memory"
        )))

    def _read_status(self, inv: Invocation) -> dict[str, Any] | None:
        """The status record of ``inv`` if its handler has finished: from the
        result object's header (one ranged GET), or from the segment record
        of a call that saved a checkpoint and goes on in a new invocation."""
        job_id, cid = inv.key
        rkey = keys.result_key(job_id, cid)
        try:
            head = self.store.get_range(rkey, 0, RESULT_HEAD_BYTES)
            try:
                return result_format.unpack(head, f"result object of call {cid}")[0]
            except CorruptObject:
                # A status longer than the ranged read: read it all.
                return result_format.unpack(self.store.get(rkey), f"result object of call {cid}")[0]
        except ObjectNotFound:
            pass
        segment = int(inv.event.get("segment", 0))
        try:
            data = self.store.get(keys.segment_key(job_id, cid, segment))
        except ObjectNotFound:
            return None
        # Sealed (wrenpack.auth): verified with the job's secret, which the event carries.
        return protocol.open_segment(auth.decode_secret(inv.event["secret"]), job_id, cid, segment, data)

    # -- completion -----------------------------------------------------------
    def _finish(self, call: _Call, result: InvocationResult) -> None:
        with self._lock:
            if call.done:
                return
            call.done = True
            release = call.in_flight
            call.in_flight = False
            self._calls.pop(call.inv.key, None)
        if release:
            self._slots.release()
        try:
            call.inv.on_done(call.inv, result)
        except Exception:  # noqa: BLE001 - a failing callback must not kill our threads
            log.exception("on_done callback failed for call %s", call.inv.key)


def _segment_name(inv: Invocation) -> str:
    return keys.segment_key(inv.key[0], inv.key[1], int(inv.event.get("segment", 0))).rsplit("/", 1)[-1]


def _reply_error(body: bytes, function_error: str | None, inv: Invocation, function_name: str) -> WrenpackError:
    """Explain a synchronous reply that came without a status object."""
    text = body.decode("utf-8", "replace").strip()
    message = text
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        message = str(doc.get("errorMessage") or doc.get("errorType") or text)
    where = f"call {inv.key[1]} of job {inv.key[0]}"
    if "timed out" in message.lower():
        return TaskTimeout(f"{where} exceeded its {inv.timeout_s:g} s timeout on Lambda ({message}); raise timeout or split the work")
    if "memory" in message.lower() or "signal: killed" in message.lower():
        return WorkerCrashed(
            f"{where}: the Lambda runtime was killed ({message}), most likely by the {inv.memory_mb} MB memory limit; "
            "raise memory (see `wrenpack profile`)"
        )
    return WorkerCrashed(
        f"{where}: the Lambda runtime failed without writing a result ({function_error or 'no status'}: {message[:300]}); "
        f"see CloudWatch log group /aws/lambda/{function_name}"
    )
