"""The AWS Lambda backend: invoke a worker function configured for each call's
settings, learn of each call's end from its reply or from the store.
Which function runs which settings, and creating a missing one
(``lambda_auto_deploy``), is ``deploy``'s job: this module only sends calls to
them and reads what the calls left.

::

    invoke_many(invs) -> for each distinct settings set (memory, timeout, /tmp,
        architecture, runtime, Python): the function <function_name>-<hash>
        (looked up once; created on first use if lambda_auto_deploy; otherwise
        every call of that set fails at once with the `wrenpack deploy` command)
        -> one concurrency budget per backend (``concurrency``) across all its
           functions; within it, the functions without reserved concurrency
           share one budget of the account's unreserved concurrency, and a
           function with reserved concurrency has its own (read once, logged)
        -> sender threads: lambda.invoke (backoff on throttling/5xx)
    RequestResponse: the reply carries the handler's status and, when it fits
        (``reply_limit``) and the call was short (``reply_within_s``), the sealed
        result object itself: no S3 request. Longer calls store their result: if
        an idle connection is dropped while one runs, the client waits for that
        object instead of invoking the call again (botocore retries nothing here).
    Event (202: queued in Lambda): poller thread every `poll_interval` s, per job:
        per shard with many calls in flight: LIST (StartAfter = below the lowest
        pending call), else a direct GET per call; each ended call's object is
        read once, by a small pool, and handed to the executor (``data``).
        deadline = send + timeout + margin; a call that starts later than half
        the margin after its send (it waited in Lambda's queue) marks its start
        in the store, and its deadline then counts from that start. A call with
        neither result nor mark at its deadline is waited for while the
        function's other calls keep ending or starting (the queue moves), and
        reported lost once nothing of that function has moved for
        timeout + margin.

Duplicates are harmless: the handler writes its one result object with
``if_absent``, so whichever delivery finishes first wins, and ``on_done`` is
called once per invocation no matter how many deliveries report. Each event
carries a ``deadline`` (client clock) after which the client no longer waits
for that attempt to start; the handler refuses it then without running anything.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wrenpack import auth, keys
import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.deploy as deploy
from wrenpack.backends.aws.deploy import FunctionSettings
from wrenpack.backends.base import Backend, Capabilities, Invocation, InvocationResult
from wrenpack.errors import (
    CallCancelled,
    ConfigError,
    CorruptObject,
    MemoryLimitExceeded,
    ObjectNotFound,
    PayloadTooLarge,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
    WrenpackError,
)
from wrenpack.storage import Store, store_for_config
from wrenpack.storage.s3 import _code
from wrenpack.wire import event as event_format, result as result_format, start as start_mark
from wrenpack.wire.segment import open_segment
from wrenpack.worker import cancel as cancel_marker

log = logging.getLogger(__name__)

#: Lambda's request payload limits (bytes).
EVENT_PAYLOAD_LIMIT = 1024 * 1024
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
#: Lambda's synchronous response limit (bytes): 6 MB and 100 bytes.
RESPONSE_LIMIT = SYNC_PAYLOAD_LIMIT + 100
#: A result object at most this big returns in a RequestResponse reply: 6 MB
#: response limit, less room for the JSON status, less base64's 4/3 growth.
REPLY_LIMIT = (SYNC_PAYLOAD_LIMIT - 64 * 1024) * 3 // 4
#: RequestResponse: a call that runs longer than this stores its result instead of
#: replying with it (s). Routers drop connections idle for minutes (a NAT gateway
#: after 350 s); a stored result outlives the connection, and costs one PUT and one
#: GET, nothing beside a minute of Lambda.
REPLY_WITHIN_S = 60.0
#: Room the event's deadline and start mark add to its size when it is sent (bytes).
_SEND_FIELDS = 128
#: Lambda's Invoke error codes for a request payload over its limit.
_TOO_LARGE_CODES = {"RequestEntityTooLargeException", "RequestTooLargeException", "413"}
#: A RequestResponse invocation that failed with these was not sent: sending it again is safe.
_NOT_SENT = {"EndpointConnectionError", "ConnectTimeoutError"}
#: A RequestResponse invocation that failed with these was sent and may be running.
_DROPPED = {"ConnectionClosedError", "ReadTimeoutError", "ResponseStreamingError", "ProtocolError",
            "IncompleteRead", "ConnectionResetError", "RemoteDisconnected"}
#: How Lambda says that a runtime was killed at its memory limit: error types, and
#: words of the error message (signal: killed is the kernel's OOM kill; exit status
#: 137 is a wrapper's report of it; older runtimes said "Process exited before
#: completing request").
_OOM_TYPES = {"Runtime.OutOfMemory", "MemoryError"}
_OOM_WORDS = ("signal: killed", "exit status 137", "process exited before completing request", "out of memory",
              "memory")
_THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException", "429"}
_RETRYABLE_CODES = _THROTTLE_CODES | {
    "ServiceException", "ResourceNotReadyException", "ResourceConflictException", "500", "502", "503", "504",
}
#: the longest gap between two probes of one straggler (s)
PROBE_GAP_MAX = 5.0


def _probe_gap(poll_interval: float, probes: int) -> float:
    """Seconds from a straggler's ``probes``-th probe to its next: doubling from
    ``poll_interval``, then every ``PROBE_GAP_MAX`` (the old sum grew by one
    poll interval a probe, so a minute-long call was probed every 0.5 s)."""
    return min(poll_interval * 2 ** min(probes - 1, 30), max(PROBE_GAP_MAX, poll_interval))


#: Per shard, up to this many calls in flight are probed with direct GETs
#: (two 404s while running); more are found with one LIST (~12 GETs' price).
STRAGGLER_GETS = 6
#: Threads that read ended calls' objects.
READERS = 8


@dataclass
class _Function:
    name: str
    settings: FunctionSettings
    memory: int  # what Lambda says the function has
    slots: threading.Semaphore
    cap: int
    #: when a call of this function last showed it ran (a result, a segment, a start mark)
    last_progress: float = 0.0


class _Dropped(Exception):
    """A RequestResponse invocation's connection broke after it was sent: the call may be running."""


@dataclass
class _Call:
    inv: Invocation
    fn: _Function | None = None
    sent_at: float = 0.0
    deadline: float = 0.0
    in_flight: bool = False
    #: direct reads of a few calls back off: the next one not before this time
    next_probe: float = 0.0
    probes: int = 0
    reading: bool = False
    extended: bool = False
    cancelled: bool = False
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
        architecture: str = "x86_64",
        auto_deploy: bool = False,
        poll_interval: float = 0.5,
        deadline_margin_s: float = 30.0,
        throttle_give_up_s: float = 600.0,
        reply_within_s: float = REPLY_WITHIN_S,
        client: Any = None,
    ) -> None:
        if invocation_type not in ("Event", "RequestResponse"):
            raise ConfigError(f"invocation_type {invocation_type!r} is not valid; use 'Event' or 'RequestResponse'")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.function_name = function_name
        self.region = region
        self.profile = profile
        self.endpoint_url = endpoint_url
        self.concurrency = concurrency
        self.invocation_type = invocation_type
        self.architecture = architecture
        self.auto_deploy = auto_deploy
        self.poll_interval = poll_interval
        self.deadline_margin_s = deadline_margin_s
        self.throttle_give_up_s = throttle_give_up_s
        self.reply_within_s = reply_within_s
        self._client = client
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()
        self._fn_lock = threading.Lock()
        self._functions: dict[str, _Function] = {}
        self._account_cap: int | None | bool = False  # False: not read yet
        #: the budget every function without reserved concurrency draws from (made on first use)
        self._unreserved: tuple[threading.BoundedSemaphore, int] | None = None
        self._calls: dict[tuple[str, str], _Call] = {}
        self._slots = threading.BoundedSemaphore(concurrency)
        # Event sends return in milliseconds: a few threads suffice. A
        # synchronous send holds its thread for the whole call.
        workers = concurrency if invocation_type == "RequestResponse" else min(concurrency, 32)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wrenpack-lambda")
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="wrenpack-lambda-read")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._poller: threading.Thread | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            reply_results=self.invocation_type == "RequestResponse",
            cpu_scales_with_memory=True,
            enforces=frozenset({"memory", "timeout", "ephemeral_storage"}),
            concurrency=self.concurrency,
            cancel_running=True,
        )

    @classmethod
    def from_config(cls, config: Any) -> "LambdaBackend":
        """Build from a ``wrenpack.config.Config`` (read defensively: any object with
        these attributes works)."""
        store = getattr(config, "store", None)
        if not isinstance(store, Store):
            store = store_for_config(config)
        return cls(
            store,
            function_name=getattr(config, "function_name", None) or "wrenpack-worker",
            region=getattr(config, "aws_region", None),
            profile=getattr(config, "aws_profile", None),
            endpoint_url=getattr(config, "lambda_endpoint_url", None),
            concurrency=int(getattr(config, "concurrency", None) or 100),
            invocation_type=getattr(config, "invocation_type", None) or "Event",
            architecture=getattr(config, "architecture", None) or "x86_64",
            auto_deploy=bool(getattr(config, "lambda_auto_deploy", False)),
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

        session = clients.checked_session(boto3.session.Session(profile_name=self.profile, region_name=self.region),
                                          self.profile)
        sync = self.invocation_type == "RequestResponse"
        cfg = Config(
            # Throttling is retried by our own, longer backoff loop below. A synchronous
            # Invoke is never retried by botocore: after a read timeout or a dropped
            # connection it would send the call again while the first may still run
            # (``_after_drop`` decides instead, from the store).
            retries={"mode": "standard", "total_max_attempts": 1} if sync else {"mode": "standard", "max_attempts": 3},
            max_pool_connections=max(10, min(self.concurrency, 256)),
            connect_timeout=10,
            # above the longest function timeout (900 s): a synchronous call's reply comes at its end
            read_timeout=960 if sync else 60,
            # the connection of a long synchronous call is idle for its whole run
            tcp_keepalive=sync,
        )
        return session.client("lambda", endpoint_url=self.endpoint_url, config=cfg)

    # -- functions ----------------------------------------------------------
    def settings_for(self, inv: Invocation) -> FunctionSettings:
        return FunctionSettings.for_call(inv.memory_mb, inv.timeout_s, inv.ephemeral_storage_mb,
                                         self.architecture, inv.runtime)

    def function_for(self, inv: Invocation) -> _Function:
        """The function configured for ``inv``'s settings (looked up once per backend)."""
        settings = self.settings_for(inv)
        name = settings.function_name(self.function_name)
        with self._fn_lock:
            fn = self._functions.get(name)
            if fn is not None:
                return fn
            conf = self._get_configuration(name)
            if conf is None:
                if not self.auto_deploy:
                    hint, deployable = deploy.missing_function_help(self.client, settings, self.function_name,
                                                                    inv.runtime, self._where())
                    raise ConfigError(
                        f"no Lambda function is deployed for {settings.describe()} (it would be {name!r}); {hint}"
                        + (", or set lambda_auto_deploy=true to create functions on first use" if deployable else "")
                    )
                conf = deploy.auto_deploy(self.client, name, settings, self.function_name,
                                          store_url=getattr(self.store, "url", None), runtime_dir=inv.runtime,
                                          where=self._where())
            slots, cap = self._slots_for(name)
            fn = _Function(name, settings, int(conf.get("MemorySize") or settings.memory), slots, cap)
            self._functions[name] = fn
            return fn

    def _where(self) -> dict[str, str | None]:
        """Where this backend's functions live and serve, as `wrenpack deploy` options
        (``FunctionSettings.deploy_command``): a printed command then runs as printed."""
        bucket = getattr(self.store, "bucket", None)
        storage = f"s3://{bucket}/{getattr(self.store, 'prefix', '')}".rstrip("/") if bucket else None
        region = getattr(getattr(self.client, "meta", None), "region_name", None) or self.region
        return {"region": region, "storage": storage, "profile": self.profile,
                "lambda_endpoint_url": self.endpoint_url, "s3_endpoint_url": getattr(self.store, "endpoint_url", None)}

    def _get_configuration(self, name: str) -> dict[str, Any] | None:
        client = self.client  # no region or credentials: its one-line error, as it is
        try:
            return client.get_function_configuration(FunctionName=name)
        except Exception as exc:
            code = _code(exc)
            if code in ("ResourceNotFoundException", "404"):
                return None
            if code in ("AccessDeniedException", "AccessDenied", "403"):
                # Allowed to invoke but not to read the configuration: assume it exists.
                log.info("cannot read the configuration of %s (%s); assuming it is deployed", name, code)
                return {}
            raise ConfigError(f"reading Lambda function {name!r} failed: {code or type(exc).__name__}: {exc}") from None

    def _slots_for(self, name: str) -> tuple[threading.BoundedSemaphore, int]:
        """The budget ``name``'s calls draw from, besides the backend's own
        ``concurrency``: its reserved concurrency if it has one (Lambda runs it
        from that reservation), else the one budget that every function of this
        backend without a reservation shares, the account's unreserved
        concurrency. Per function it would be exceeded as soon as a map ran at
        two memory sizes."""
        reserved = None
        try:
            reserved = self.client.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except Exception as exc:  # noqa: BLE001 - not allowed to read it: no cap from it
            log.debug("cannot read the reserved concurrency of %s: %s", name, exc)
        if reserved == 0:
            raise ConfigError(f"Lambda function {name!r} has reserved concurrency 0, so it cannot run; "
                              f"raise it (aws lambda put-function-concurrency) or redeploy with --reserved-concurrency")
        if reserved is not None:
            cap = self._lowered(int(reserved), f"for {name}: it has reserved concurrency {reserved}")
            return threading.BoundedSemaphore(cap), cap
        if self._unreserved is None:
            if self._account_cap is False:
                self._account_cap = None
                try:
                    limits = self.client.get_account_settings().get("AccountLimit", {})
                    self._account_cap = limits.get("UnreservedConcurrentExecutions") or limits.get("ConcurrentExecutions")
                except Exception as exc:  # noqa: BLE001
                    log.debug("cannot read the account's Lambda concurrency: %s", exc)
            account = int(self._account_cap) if self._account_cap else None
            cap = self.concurrency if account is None else self._lowered(
                account, f"across all functions without reserved concurrency: the account's unreserved Lambda "
                         f"concurrency is {account}")
            self._unreserved = (threading.BoundedSemaphore(cap), cap)
        return self._unreserved

    def _lowered(self, limit: int, why: str) -> int:
        """``concurrency``, or ``limit`` when lower (logged: more would only wait in Lambda's queue)."""
        if limit < self.concurrency:
            log.warning("concurrency=%d lowered to %d %s (more would only wait in Lambda's queue)",
                        self.concurrency, limit, why)
            return limit
        return self.concurrency

    # -- Backend interface --------------------------------------------------
    def invoke(self, invocation: Invocation) -> None:
        self.invoke_many([invocation])

    def invoke_many(self, invocations: list[Invocation]) -> None:
        if self._stop.is_set():
            raise WrenpackError("the Lambda backend was shut down; create a new executor")
        resolved: dict[FunctionSettings, _Function | WrenpackError] = {}
        for inv in invocations:
            settings = self.settings_for(inv)
            if settings not in resolved:
                try:
                    resolved[settings] = self.function_for(inv)
                except WrenpackError as exc:
                    resolved[settings] = exc
            fn = resolved[settings]
            call = _Call(inv)
            if isinstance(fn, WrenpackError):
                # Nothing was launched for these settings: every call says how to fix it.
                call.done = True
                self._report(inv, InvocationResult(error=fn))
                continue
            call.fn = fn
            # The handler ends the call early when a sealed marker appears there (``cancel_calls``);
            # a job-wide key (a job's own cancel) may be there already.
            if not inv.event.get("cancel_key"):
                inv.event["cancel_key"] = keys.call_cancel_key(*inv.key)
            too_large = self._too_large(inv, len(event_format.dumps(inv.event)) + _SEND_FIELDS)
            if too_large is not None:
                call.done = True  # nothing is sent: the call fails before it is launched
                self._report(inv, InvocationResult(error=too_large))
                continue
            with self._lock:
                self._calls[inv.key] = call
                if self._poller is None and self.invocation_type == "Event":
                    self._poller = threading.Thread(target=self._poll_loop, name="wrenpack-lambda-poll", daemon=True)
                    self._poller.start()
            self._pool.submit(self._send, call)

    def cancel(self, invocation: Invocation) -> bool:
        with self._lock:
            call = self._calls.get(invocation.key)
            if call is None or call.inv is not invocation or call.done or call.in_flight or call.sent_at:
                return False
            call.cancelled = call.done = True
            self._calls.pop(invocation.key, None)
            self._idle.notify_all()
        return True

    def cancel_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Stop these calls: one not sent yet ends now; one sent gets a cancel marker
        at its event's ``cancel_key``, sealed with its job's secret
        (``wrenpack.worker.cancel``), which the handler looks for every few seconds
        while the call runs; it then ends the call's code and reports ``CallCancelled``.
        A call whose event watches its job's marker instead (a spawned job's) is not
        stopped alone: it stops with its job."""
        stopped: set[tuple[str, str]] = set()
        unsent: list[Invocation] = []
        markers: dict[str, list[Invocation]] = {}
        with self._lock:
            for key in calls:
                call = self._calls.get(tuple(key))  # type: ignore[arg-type]
                if call is None or call.done:
                    continue
                if not call.in_flight and not call.sent_at:
                    call.cancelled = call.done = True
                    self._calls.pop(call.inv.key, None)
                    unsent.append(call.inv)
                    continue
                cancel_key = call.inv.event.get("cancel_key")
                if cancel_key and cancel_key == keys.call_cancel_key(*call.inv.key):
                    # (a call that watches its job's marker stops with its job: ``Job.cancel``)
                    markers.setdefault(str(cancel_key), []).append(call.inv)
            if unsent:
                self._idle.notify_all()
        for inv in unsent:
            stopped.add(inv.key)
            self._report(inv, InvocationResult(error=CallCancelled(f"{inv.label} was cancelled (wrenpack.cancel) before it ran")))
        for cancel_key, invs in markers.items():
            job_id = invs[0].event["job_id"]
            secret = auth.decode_secret(invs[0].event["secret"])
            names: set[str] | None = {inv.event["call_id"] for inv in invs}
            try:
                names = _merged(names, cancel_marker.open_marker(secret, job_id, cancel_key, self.store.get(cancel_key)))
            except ObjectNotFound:
                pass
            except CorruptObject:
                log.warning("the cancel marker %s was not written by wrenpack for job %s; replacing it", cancel_key, job_id)
            self.store.put(cancel_key, cancel_marker.seal_marker(secret, job_id, cancel_key, names))
            stopped |= {inv.key for inv in invs}
        return stopped

    def shutdown(self, wait: bool = True) -> None:
        if wait:
            # Drain: what was sent still reports (bounded by each call's deadline).
            with self._lock:
                self._idle.wait_for(lambda: not any(not c.done for c in self._calls.values()),
                                    timeout=self._drain_limit())
        self._stop.set()
        self._wake.set()
        with self._lock:
            pending = [c for c in self._calls.values() if not c.done]
        for call in pending:
            self._finish(call, InvocationResult(error=WorkerLost(
                f"{call.inv.label} (call {call.inv.key[1]} of job {call.inv.key[0]}) was still running when the "
                "Lambda backend shut down"
            )))
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._readers.shutdown(wait=wait, cancel_futures=True)
        if wait and self._poller is not None:
            self._poller.join(timeout=10)

    def _drain_limit(self) -> float:
        with_deadline = [c.deadline for c in self._calls.values() if c.deadline]
        longest = max((c.inv.timeout_s for c in self._calls.values()), default=0.0)
        horizon = max(with_deadline, default=time.time() + longest + self.deadline_margin_s)
        return max(0.0, horizon - time.time()) + 2 * self.deadline_margin_s + 5

    # -- sending ------------------------------------------------------------
    def _too_large(self, inv: Invocation, size: int) -> PayloadTooLarge | None:
        """The one-line error for an event of ``size`` bytes over Lambda's request limit, else None."""
        event_type = self.invocation_type == "Event"
        limit = EVENT_PAYLOAD_LIMIT if event_type else SYNC_PAYLOAD_LIMIT
        if size <= limit:
            return None
        return PayloadTooLarge(
            f"the event for {inv.label} is {size} bytes, over Lambda's {limit}-byte limit for "
            f"{self.invocation_type} invocations; lower inline_limit so large arguments travel through the store"
        )

    def _send(self, call: _Call) -> None:
        inv, fn = call.inv, call.fn
        assert fn is not None
        fn.slots.acquire()
        self._slots.acquire()
        released = False
        try:
            if call.done or self._stop.is_set():
                return
            inv.event["attempt"] = inv.attempt
            event_type = self.invocation_type == "Event"
            if event_type:
                inv.event.pop("reply_limit", None)
                inv.event.pop("reply_within_s", None)
            else:
                inv.event["reply_limit"] = REPLY_LIMIT
                inv.event["reply_within_s"] = self.reply_within_s
            if not event_type:
                with self._lock:
                    call.sent_at = time.time()
                self.started(inv)
            try:
                resp = self._invoke_with_backoff(fn.name, inv)
            except _Dropped as exc:
                self._after_drop(call, exc)
                return
            except WrenpackError as exc:
                self._finish(call, InvocationResult(error=exc))
                return
            if event_type:
                with self._lock:
                    call.sent_at = time.time()
                    call.next_probe, call.probes = call.sent_at + self.poll_interval, 0
                    call.deadline = call.sent_at + inv.timeout_s + self.deadline_margin_s
                    call.extended = False
                    call.in_flight = True
                released = True  # the slots are released when the call finishes
                self.started(inv)
                self._wake.set()
                return
            try:
                body = resp["Payload"].read() if resp.get("Payload") is not None else b""
            except Exception as exc:  # noqa: BLE001 - the reply broke off: the call ran, or runs
                if type(exc).__name__ not in _DROPPED:
                    raise
                self._after_drop(call, exc)
                return
            self._finish_sync(call, resp, body)
        finally:
            if not released:
                # Sync calls and failed sends free their slots here; Event calls in _finish.
                call.in_flight = False
                self._slots.release()
                fn.slots.release()

    def _payload(self, inv: Invocation) -> bytes:
        """The event as sent now: its deadline (and an Event's start mark) counted from this send."""
        now = time.time()
        if self.invocation_type == "Event":
            inv.event["mark_start_after"] = now + self.deadline_margin_s / 2
            # Lambda may hold an Event in its queue; the client waits for it to start as long
            # as it waits out refusals. A synchronous call starts at once or is refused (429).
            inv.event["deadline"] = round(now + self.throttle_give_up_s, 3)
        else:
            inv.event["deadline"] = round(now + self.deadline_margin_s, 3)
        payload = event_format.dumps(inv.event)
        too_large = self._too_large(inv, len(payload))
        if too_large is not None:
            raise too_large
        return payload

    def _invoke_with_backoff(self, name: str, inv: Invocation) -> dict[str, Any]:
        start = time.monotonic()
        delay = 0.2
        while True:
            payload = self._payload(inv)
            try:
                return self.client.invoke(FunctionName=name, InvocationType=self.invocation_type, Payload=payload)
            except Exception as exc:  # botocore ClientError and connection errors
                code = _code(exc)
                kind = type(exc).__name__
                if code == "ResourceNotFoundException":
                    raise ConfigError(
                        f"Lambda function {name!r} not found (it was deleted?); run `wrenpack deploy` for its settings "
                        "or set function_name/aws_region"
                    ) from None
                if code in ("AccessDeniedException", "AccessDenied"):
                    raise ConfigError(
                        f"not allowed to invoke Lambda function {name!r}; see `wrenpack iam-policy`"
                    ) from None
                if code in _TOO_LARGE_CODES:
                    raise PayloadTooLarge(
                        f"Lambda refused the {len(payload)}-byte event for {inv.label} as too large ({code}); "
                        "lower inline_limit so large arguments travel through the store"
                    ) from None
                if self.invocation_type == "RequestResponse" and kind in _DROPPED:
                    raise _Dropped(f"{kind}: {exc}") from None
                connection = kind in _NOT_SENT or kind in _DROPPED  # an Event sent twice is a duplicate: harmless
                if code not in _RETRYABLE_CODES and not connection:
                    raise TaskError(f"invoking Lambda function {name!r} failed: {code or kind}: {exc}") from None
                waited = time.monotonic() - start
                if waited > self.throttle_give_up_s or self._stop.is_set():
                    raise TaskError(
                        f"Lambda kept refusing invocations of {name!r} ({code or kind}) "
                        f"for {waited:.0f} s; lower concurrency or raise the account's concurrency quota"
                    ) from None
                log.debug("invoke throttled (%s); retrying in %.2f s", code, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 20.0)

    def _after_drop(self, call: _Call, exc: BaseException) -> None:
        """A RequestResponse call's connection broke after the Invoke was sent. The call
        may run to its end on Lambda, so it is not invoked again: a call that ran past
        ``reply_within_s`` stores its result, which is waited for until the call's
        latest possible end (its deadline to start, plus its timeout, plus the margin)."""
        inv = call.inv
        where = f"{inv.label} (call {inv.key[1]} of job {inv.key[0]})"
        latest = float(inv.event.get("deadline") or time.time()) + inv.timeout_s + self.deadline_margin_s
        log.warning("%s: the connection to Lambda broke while the call ran (%s); waiting for its result in the store "
                    "instead of invoking it again", where, exc)
        probes = 0
        while not self._stop.is_set():
            found = self._read_result(inv)
            if found is not None:
                self._finish(call, found)
                return
            now = time.time()
            if now > latest:
                break
            probes += 1
            self._stop.wait(min(_probe_gap(self.poll_interval, probes), latest - now + 0.05))
        if self._stop.is_set():
            return  # shutdown reports it
        self._finish(call, InvocationResult(error=WorkerLost(
            f"{where}: the connection to Lambda broke while it ran and no result reached the store by its latest end; "
            "it was not invoked again (it may have run once); use invocation_type='Event' where connections drop"
        )))

    def _finish_sync(self, call: _Call, resp: dict[str, Any], body: bytes) -> None:
        """A RequestResponse reply: the handler's status, with the result object
        itself when it fit; otherwise the store holds it (one GET)."""
        inv = call.inv
        function_error = resp.get("FunctionError")
        doc: Any = None
        if body:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
        if not function_error and isinstance(doc, dict) and doc.get("exit"):
            if doc.get("result") is not None:
                try:
                    data = base64.b64decode(doc["result"], validate=True)
                except ValueError:
                    self._finish(call, InvocationResult(error=CorruptObject(
                        f"{inv.label}: the reply's result is not valid base64; re-run the call")))
                    return
                self._finish(call, self._result_from(inv, data))
                return
            if doc["exit"] == "checkpointed":
                self._finish(call, InvocationResult(status=doc))
                return
            if doc["exit"] == "expired":
                self._expired(call, doc)
                return
            self._finish(call, self._read_result(inv) or InvocationResult(error=CorruptObject(
                f"{inv.label}: the worker reported completion but its result object is missing from "
                f"{self.store.url}; re-run the call")))
            return
        # No status in the reply: the runtime failed. A result in the store still wins.
        found = self._read_result(inv)
        if found is not None:
            self._finish(call, found)
            return
        fn = call.fn
        error = _reply_error(body, function_error, inv, fn.name if fn else self.function_name,
                             fn.memory if fn else inv.memory_mb)
        if isinstance(error, WorkerCrashed) and inv.attempt < inv.retries:
            inv.attempt += 1
            log.info("%s crashed (%s); retry %d", inv.label, error, inv.attempt)
            self._pool.submit(self._send, call)
            return
        self._finish(call, InvocationResult(error=error))

    def _expired(self, call: _Call, doc: dict[str, Any]) -> None:
        """The handler refused the attempt as past its deadline: nothing ran, so it may be sent again."""
        inv = call.inv
        skew = float(doc.get("now") or 0.0) - time.time()
        if inv.attempt < inv.retries:
            inv.attempt += 1
            log.warning("%s reached Lambda after its deadline and did not run; retry %d", inv.label, inv.attempt)
            self._pool.submit(self._send, call)
            return
        self._finish(call, InvocationResult(error=WorkerLost(
            f"{inv.label} (call {inv.key[1]} of job {inv.key[0]}) reached Lambda after its deadline and did not run; "
            f"Lambda's clock reads {skew:+.0f} s from this machine's: synchronise this clock (NTP) if that is large"
        )))

    # -- reading what a call left --------------------------------------------------
    def _result_from(self, inv: Invocation, data: bytes) -> InvocationResult:
        """The result object's bytes -> its status (a bad object fails its call)."""
        try:
            status = result_format.unpack(data, f"result object of {inv.label}")[0]
        except CorruptObject as exc:
            return InvocationResult(error=exc)
        return InvocationResult(status=status, data=data)

    def _read_result(self, inv: Invocation, segments: bool = True) -> InvocationResult | None:
        """One GET for the result object (a second for the segment record if
        none): None while the call is still running."""
        job_id, cid = inv.key
        try:
            return self._result_from(inv, self.store.get(keys.result_key(job_id, cid)))
        except ObjectNotFound:
            pass
        if not segments:
            return None
        segment = int(inv.event.get("segment", 0))
        try:
            data = self.store.get(keys.segment_key(job_id, cid, segment))
        except ObjectNotFound:
            return None
        try:
            # Sealed (wrenpack.auth): verified with the job's secret, which the event carries.
            status = open_segment(auth.decode_secret(inv.event["secret"]), job_id, cid, segment, data)
        except CorruptObject as exc:
            return InvocationResult(error=exc)
        return InvocationResult(status=status)

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
            pending = [c for c in self._calls.values() if not c.done]
        by_shard: dict[tuple[str, int], list[_Call]] = {}
        for call in pending:
            by_shard.setdefault((call.inv.key[0], keys.shard_of(call.inv.key[1])), []).append(call)
        now = time.time()
        for (job_id, shard), calls in by_shard.items():
            ready = [c for c in calls if c.in_flight and not c.reading]
            late = [c for c in ready if now > c.deadline]
            for call in late:
                call.reading = True
                self._readers.submit(self._guard, call, self._deadline_passed)
            ready = [c for c in ready if not c.reading]
            if not ready:
                continue
            if len(ready) <= STRAGGLER_GETS:
                for call in ready:
                    if now >= call.next_probe:
                        # 0.5, 1, 2, 4, 8 s after the send, then every 5 s: a 404 costs a GET
                        call.probes += 1
                        call.next_probe = now + _probe_gap(self.poll_interval, call.probes)
                        self._read_later(call, probe=True)
            else:
                for call in self._listed(job_id, shard, calls, ready):
                    self._read_later(call, probe=False)

    def _listed(self, job_id: str, shard: int, calls: list[_Call], ready: list[_Call]) -> list[_Call]:
        """The calls of one shard whose result or segment record exists: one
        LIST that starts just below the shard's lowest unfinished call."""
        lowest = min(int(c.inv.key[1]) for c in calls if c.inv.key[1].isdigit()) if calls else 0
        start_after = keys.result_key(job_id, keys.call_id(lowest - keys.RESULT_SHARDS)) if lowest >= keys.RESULT_SHARDS else None
        names = {k.rsplit("/", 1)[-1] for k in self.store.iter_list(keys.shard_prefix(job_id, shard), start_after=start_after)}
        return [c for c in ready if f"{c.inv.key[1]}.res" in names or _segment_name(c.inv) in names]

    def _read_later(self, call: _Call, probe: bool) -> None:
        with self._lock:
            if call.done or call.reading:
                return
            call.reading = True
        self._readers.submit(self._guard, call, lambda c: self._read_and_finish(c, probe))

    def _guard(self, call: _Call, work: Any) -> None:
        """Run one call's read; whatever goes wrong fails or retries that call only."""
        try:
            work(call)
        except WrenpackError as exc:
            if time.time() > call.deadline:
                self._finish(call, InvocationResult(error=exc))
            else:
                log.info("reading the outcome of %s failed (%s); trying again", call.inv.label, exc)
        except Exception as exc:  # noqa: BLE001
            log.warning("reading the outcome of %s failed", call.inv.label, exc_info=True)
            if time.time() > call.deadline:
                self._finish(call, InvocationResult(error=WorkerLost(f"{call.inv.label}: reading its outcome failed: {exc}")))
        finally:
            call.reading = False

    def _read_and_finish(self, call: _Call, probe: bool) -> None:
        # A segment record appears only near the call's timeout (a checkpointed call
        # goes on when its time is nearly up): before that a probe reads only the result.
        inv = call.inv
        segments = not probe or time.time() >= call.sent_at + 0.8 * inv.timeout_s
        found = self._read_result(inv, segments=segments)
        if found is not None:
            self._finish(call, found)
        elif not probe:
            log.debug("%s was listed but not found; trying again", call.inv.label)

    def _deadline_passed(self, call: _Call) -> None:
        found = self._read_result(call.inv)  # one last direct look
        if found is not None:
            self._finish(call, found)
            return
        inv, fn = call.inv, call.fn
        window = inv.timeout_s + self.deadline_margin_s
        started = self._started_late(inv)
        now = time.time()
        if started is not None:
            if fn is not None:
                fn.last_progress = max(fn.last_progress, now)
            if not call.extended and started + window > call.deadline:
                log.info("%s waited %.1f s in Lambda's queue; its deadline counts from its start",
                         inv.label, started - call.sent_at)
                call.deadline, call.extended = started + window, True
                return
        elif _past(inv.event.get("deadline"), now - self.deadline_margin_s):
            # Not started by its event's deadline: the handler refuses it if Lambda
            # delivers it now, so waiting longer for it gains nothing.
            if inv.attempt < inv.retries:
                inv.attempt += 1
                log.warning("%s was not started by Lambda before its deadline; retry %d", inv.label, inv.attempt)
                self._resend(call)
                return
            self._finish(call, InvocationResult(error=WorkerLost(
                f"{inv.label} (call {inv.key[1]} of job {inv.key[0]}) was not started by Lambda within "
                f"{self.throttle_give_up_s:g} s of its send: Lambda throttled or queued it that long; lower concurrency "
                f"or raise the function's reserved or the account's concurrency"
            )))
            return
        elif fn is not None and now - fn.last_progress < window:
            # No start mark yet, but the function's other calls keep starting and
            # ending: Lambda's queue is moving and this call may still wait in it
            # (it marks its start when it begins). Look again a little later.
            log.debug("%s has not started yet; Lambda's queue for %s is moving", inv.label, fn.name)
            call.deadline = now + max(4 * self.poll_interval, window / 4)
            return
        if inv.attempt < inv.retries:
            inv.attempt += 1
            log.warning("%s sent no status by its deadline; retry %d", inv.label, inv.attempt)
            self._resend(call)
            return
        fn = call.fn
        name = fn.name if fn else self.function_name
        memory = fn.memory if fn else inv.memory_mb
        self._finish(call, InvocationResult(error=WorkerLost(
            f"{inv.label} (call {inv.key[1]} of job {inv.key[0]}) wrote no status within its {inv.timeout_s:g} s "
            f"timeout plus {self.deadline_margin_s:g} s after it started; the worker was likely killed by Lambda's "
            f"timeout or its {memory} MB memory limit: see CloudWatch log group /aws/lambda/{name} and raise timeout or memory"
        )))

    def _resend(self, call: _Call) -> None:
        """Send an Event call again (a new attempt): its slots are free until then."""
        with self._lock:
            call.in_flight = False
        self._slots.release()
        if call.fn is not None:
            call.fn.slots.release()
        self._pool.submit(self._send, call)

    def _started_late(self, inv: Invocation) -> float | None:
        try:
            blob = self.store.get(keys.start_key(*inv.key))
            return start_mark.open_start(auth.decode_secret(inv.event["secret"]), *inv.key, blob, time.time())
        except ObjectNotFound:
            return None
        except CorruptObject as exc:  # not the call's own mark: never trusted with its deadline
            log.warning("%s: %s; ignored", inv.label, exc)
            return None

    # -- completion -----------------------------------------------------------
    def _finish(self, call: _Call, result: InvocationResult) -> None:
        with self._lock:
            if call.done:
                return
            call.done = True
            release = call.in_flight
            call.in_flight = False
            self._calls.pop(call.inv.key, None)
            self._idle.notify_all()
        if release:
            self._slots.release()
            if call.fn is not None:
                call.fn.slots.release()
        if call.fn is not None and result.status is not None:
            call.fn.last_progress = time.time()
        self._report(call.inv, result)

    @staticmethod
    def _report(inv: Invocation, result: InvocationResult) -> None:
        try:
            inv.on_done(inv, result)
        except Exception:  # noqa: BLE001 - a failing callback must not kill our threads
            log.exception("on_done callback failed for call %s", inv.key)


def _merged(names: set[str] | None, existing: set[str] | None) -> set[str] | None:
    """The calls two markers name together (None: all of the job's)."""
    if names is None or existing is None:
        return None
    return names | existing


def _past(deadline: Any, now: float) -> bool:
    return isinstance(deadline, (int, float)) and now > deadline


def _segment_name(inv: Invocation) -> str:
    return keys.segment_key(inv.key[0], inv.key[1], int(inv.event.get("segment", 0))).rsplit("/", 1)[-1]


def _reply_error(body: bytes, function_error: str | None, inv: Invocation, function_name: str,
                 memory_mb: int) -> WrenpackError:
    """Explain a synchronous reply that came without a status."""
    text = body.decode("utf-8", "replace").strip()
    message, error_type = text, ""
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error_type = str(doc.get("errorType") or "")
        message = str(doc.get("errorMessage") or error_type or text)
    message = (message.splitlines() or [""])[0][:300]
    shown = f"{error_type}: {message}" if error_type and error_type not in message else message
    where = f"{inv.label} (call {inv.key[1]} of job {inv.key[0]})"
    low = message.lower()
    if error_type == "Function.ResponseSizeTooLarge" or "exceeded maximum allowed payload size" in low:
        return PayloadTooLarge(
            f"{where}: its reply was over Lambda's {RESPONSE_LIMIT}-byte response limit ({shown}); return a path, "
            "or write the data with wrenpack.store() and return its key"
        )
    if "timed out" in low:
        return TaskTimeout(f"{where} exceeded its {inv.timeout_s:g} s timeout on Lambda ({message}); raise timeout or split the work")
    if error_type in _OOM_TYPES or any(word in low for word in _OOM_WORDS):
        return MemoryLimitExceeded(
            f"{where} was killed by Lambda at its function's {memory_mb} MB memory limit ({shown}); "
            "raise memory= (see `wrenpack profile`)"
        )
    return WorkerCrashed(
        f"{where}: the Lambda runtime failed without writing a result ({function_error or 'no status'}: {shown}); "
        f"see CloudWatch log group /aws/lambda/{function_name}"
    )
