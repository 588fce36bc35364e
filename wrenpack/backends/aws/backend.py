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
        -> sender threads: lambda.invoke (backoff on throttling/5xx); with
           ``send_processes``, the request itself (and an Event result's GET) is
           made by boto3 in a sender process (``sender``), off this process's GIL
    RequestResponse: the reply carries the handler's status and, when it fits
        (``reply_limit``), the sealed result object itself: no S3 request, for a
        call of any length up to its timeout. The connection is held that long
        (read timeout above the function's timeout, TCP keepalive probes every
        ``KEEPALIVE_IDLE_S`` so a NAT does not drop it idle). A result too large
        for the reply is stored; if a connection breaks while a call runs, the
        client waits for that object instead of invoking the call again (botocore
        retries nothing here).
    Event (202: queued in Lambda): a poller thread checks each call in flight
        when it is due: just after its expected end (send-to-start delay and
        run time of the job's ended calls, else the profile's duration), then
        at gaps proportional to its elapsed time (0.1..30 s); without any
        estimate at gaps of half its elapsed time (from ``poll_interval``).
        The calls due in one round, per shard: one LIST (StartAfter = below
        the lowest due call) when that saves more GETs that would find nothing
        than a LIST costs (12.5 GETs' price), else a direct GET per call, which
        reads the result when it is there. No shard is listed with no call
        due, and with nothing in flight the poller sleeps. Each ended call's
        object is read once, by a small pool, and handed to the executor (``data``).
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
import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from wrenpack import auth, keys
import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.deploy as deploy
from wrenpack.backends.aws.sender import SenderLost, SenderProcesses
from wrenpack.backends.aws.deploy import FunctionSettings
from wrenpack.backends.base import Backend, Capabilities, ImageAnswer, ImageAsker, Invocation, InvocationResult
from wrenpack.config import default_storage
from wrenpack.errors import (
    CallCancelled,
    ConfigError,
    CorruptObject,
    MemoryLimitExceeded,
    ObjectNotFound,
    PayloadTooLarge,
    ProtocolError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
    WrenpackError,
)
from wrenpack.limits import MAX_TIMEOUT_S
from wrenpack.storage import Store, store_for_config
from wrenpack.storage.s3 import S3Store, _code
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
#: RequestResponse, where the connection's keepalive probes could not be set (an
#: unknown botocore): a call that runs longer than this stores its result instead
#: of replying with it (s), since routers drop connections idle for minutes (a NAT
#: gateway after 350 s) and a stored result outlives the connection (a PUT and a
#: GET, $5.40 per million calls).
REPLY_WITHIN_S = 60.0
#: TCP keepalive of a RequestResponse connection (``clients.keepalive_probes``).
KEEPALIVE_IDLE_S = clients.KEEPALIVE_IDLE_S
KEEPALIVE_INTERVAL_S = clients.KEEPALIVE_INTERVAL_S
KEEPALIVE_PROBES = clients.KEEPALIVE_PROBES
#: Room the event's deadline and start mark add to its size when it is sent (bytes).
_SEND_FIELDS = 128
#: Room the ``cancel_key`` field ``invoke_many`` adds to an event takes (``"cancel_key":"jobs/<job>/cancel.<call>"``).
_CANCEL_FIELD = 256
#: Lambda's Invoke error codes for a request payload over its limit.
_TOO_LARGE_CODES = {"RequestEntityTooLargeException", "RequestTooLargeException", "413"}
#: A RequestResponse invocation that failed with these was not sent: sending it again is safe.
_NOT_SENT = {"EndpointConnectionError", "ConnectTimeoutError"}
#: A RequestResponse invocation that failed with these was sent and may be running.
_DROPPED = {"ConnectionClosedError", "ReadTimeoutError", "ResponseStreamingError", "ProtocolError",
            "IncompleteRead", "ConnectionResetError", "RemoteDisconnected", "SenderLost"}
#: How Lambda says that a runtime was killed at its memory limit: error types, and
#: words of the error message (signal: killed is the kernel's OOM kill; exit status
#: 137 is a wrapper's report of it; older runtimes said "Process exited before
#: completing request").
_OOM_TYPES = {"Runtime.OutOfMemory", "MemoryError"}
_OOM_WORDS = ("signal: killed", "exit status 137", "process exited before completing request", "out of memory",
              "memory")
_THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException", "429"}
#: A request the caller's policy does not allow.
_DENIED_CODES = {"AccessDeniedException", "AccessDenied", "403"}
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


#: S3's prices of a LIST and a GET (us-east-1, per million): a LIST is worth it
#: when it saves more than this many GETs that would find nothing.
LIST_OVER_GET = 5.00 / 0.40
#: Threads that read ended calls' objects.
READERS = 8
#: Event calls' checks: the shortest and the longest gap between two checks of
#: one call (s). Without an estimate of its duration a call is checked in its
#: job's rounds, at gaps of ``UNKNOWN_RATIO`` of the time since the job's first
#: send (so it is found at most about that fraction of its duration late); with
#: one, at its typical end, at the slowest twentieth's end, then at gaps of
#: ``OVERDUE_RATIO`` of its elapsed time.
CHECK_GAP_MIN = 0.1
CHECK_GAP_MAX = 30.0
UNKNOWN_RATIO = 0.5
OVERDUE_RATIO = 0.1
#: the quantile of a job's durations its calls are first checked at (a check
#: that comes too early costs a GET; one that comes late, the delay)
TYPICAL_Q = 0.75
#: checks due within this much of each other are made in one round (s)
ROUND_S = 0.02
#: the durations of a job's latest calls kept for its estimate
DURATIONS_KEPT = 128


class _RealClock:
    """Wall-clock time (a test or benchmark passes a faster clock with the same methods)."""

    @staticmethod
    def time() -> float:
        return time.time()

    @staticmethod
    def wait(event: Any, seconds: float | None) -> Any:
        return event.wait(seconds)


class _JobTimes:
    """What a job's ended calls say about how long its running ones take: the
    durations the workers report, how long a call took from its send to its
    start, and how often a check found a result (whether a LIST would pay)."""

    def __init__(self, first_sent: float, expected_s: float | None = None) -> None:
        #: when the job's first call was sent: the rounds of checks before any estimate count from it
        self.first_sent = first_sent
        self.prior = expected_s
        self.durations: list[float] = []
        self.delays: list[float] = []
        self.hit_rate = 0.5
        self.changed = False  # the estimate went from none to one: rescheduled once
        #: ``expected()`` as last worked out, and the calls recorded since (it is
        #: worked out again once they are an eighth of the kept ones: each check asks)
        self._expected: tuple[float, float, float] | None = None
        self._since = 0

    def record(self, status: dict[str, Any] | None, sent_at: float) -> None:
        if not status:
            return
        try:
            start, end = float(status["start"]), float(status["end"])
        except (KeyError, TypeError, ValueError):
            return
        if not self.durations and self.prior is None:
            self.changed = True
        self.durations.append(max(0.0, end - start))
        self.delays.append(min(max(0.0, start - sent_at), 30.0))
        self._since += 1
        if len(self.durations) > DURATIONS_KEPT:
            del self.durations[: len(self.durations) - DURATIONS_KEPT]
            del self.delays[: len(self.delays) - DURATIONS_KEPT]

    def checked(self, found: bool) -> None:
        self.hit_rate = 0.9 * self.hit_rate + (0.1 if found else 0.0)

    def expected(self) -> tuple[float, float, float] | None:
        """(seconds from send to start, run time, spread) of the job's calls: the
        median delay and the TYPICAL_Q run time of its latest ended calls and
        how far the slowest twentieth of them ran past that; before any has ended,
        the profile's duration."""
        if self.durations:
            if self._expected is None or self._since * 8 >= len(self.durations):
                self._expected, self._since = self._work_out(), 0
            return self._expected
        if self.prior is not None:
            return 0.0, self.prior, max(0.1 * self.prior, CHECK_GAP_MIN)
        return None

    def _work_out(self) -> tuple[float, float, float]:
        run = _quantile(self.durations, TYPICAL_Q)
        # A few ended calls are the job's shortest so far: until there are more,
        # the gap after the typical end is wider (fewer checks that find nothing).
        floor = (0.05 if len(self.durations) >= 16 else 0.1) * run
        return (_quantile(self.delays, 0.5), run,
                max(_quantile(self.durations, 0.95) - run, floor, CHECK_GAP_MIN))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Senders:
    """The threads that send invocations, fed from one queue. A call waiting for
    its turn is a queue entry, not a thread pool's work item and future (~1 KB
    each with its lock and condition: a 100,000-call map queues all its calls
    at once). Each thread takes the next call and sends it (``send`` waits for
    the call's concurrency slots)."""

    def __init__(self, send: Any, workers: int, name: str) -> None:
        self._send = send
        self._workers = workers
        self._name = name
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._waiting = 0
        self._closed = False

    def submit(self, call: "_Call") -> None:
        with self._cond:
            if self._closed:
                return  # shut down: the backend reports every unfinished call
            self._queue.append(call)
            if self._waiting:
                self._cond.notify()
            # A waiting thread counts as waiting until it runs again: while calls are
            # queued faster than the woken threads take them (a map queues all its calls
            # at once), it is not one per queued call. More calls queued than threads
            # waiting get more threads, up to ``workers`` (else a map after a small one
            # was sent by the small one's few threads: 4 synchronous calls at a time).
            if len(self._queue) <= self._waiting or len(self._threads) >= self._workers:
                return
            thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._waiting -= 1
                if not self._queue:
                    return
                call = self._queue.popleft()
            try:
                self._send(call)
            except Exception:  # noqa: BLE001 - one call's failure must not stop its thread
                log.exception("sending %s failed", call.inv.label)
            call = None  # (not held while waiting for the next)

    def shutdown(self, wait: bool) -> None:
        """No more sends: the queued calls are dropped (the backend has reported them)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


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


class _ReadersClosed(Exception):
    """The reader pool takes no more reads: the backend or the interpreter is shutting down (``LambdaBackend._read``)."""


@dataclass
class _Call:
    inv: Invocation
    fn: _Function | None = None
    sent_at: float = 0.0
    deadline: float = 0.0
    in_flight: bool = False
    #: checks of an Event call for its result: how many found nothing, and which
    #: of its entries in the poller's schedule is current
    checks: int = 0
    token: int = 0
    #: when the call began, from its start mark (it waited in Lambda's queue)
    began: float = 0.0
    reading: bool = False
    extended: bool = False
    cancelled: bool = False
    done: bool = False


def check_storage(storage: Any) -> None:
    """Refuse a store that is not on S3, before anything of a job is stored or sent: the
    worker opens the event's store from its spec, in Lambda, and a deployed function
    serves one S3 location (``WRENPACK_STORE_URL``). The default storage is a folder on
    this machine whatever the backend, so ``WRENPACK_BACKEND=lambda`` alone named one:
    every call was then sent and failed late and misleadingly (an Event call as
    WorkerLost after its timeout + 30 s, blamed on timeout or memory; a
    RequestResponse call refused by the handler)."""
    shown = clients.non_s3_storage(storage, default_storage())
    if shown is not None:
        raise ConfigError(f"the lambda backend needs storage s3://BUCKET/PREFIX, and storage is {shown}, which "
                          f"Lambda's workers cannot reach; {clients.SET_S3_STORAGE}")


def _check_region(region: str | None, profile: str | None, endpoint_url: str | None) -> None:
    """A region AWS does not have names a host that does not exist: said now, before the
    store's first request would spend botocore's retries on it (~40 s); none anywhere is
    said now too, before anything of a job is stored, not by its first invocation (with a
    profile that cannot be read, its client says why when it is made)."""
    found = clients.configured_region(region, profile)
    if found is None and profile is None:
        raise ConfigError(clients.NO_REGION)
    clients.check_region(found, (endpoint_url, "lambda"), profile=profile)


def lambda_client_config(invocation_type: str, concurrency: int) -> dict[str, Any]:
    """The Lambda client's botocore ``Config`` arguments for a backend of ``invocation_type`` and
    ``concurrency`` (its own client's, each sender process's, and ``LambdaBackend.image_asker``'s)."""
    sync = invocation_type == "RequestResponse"
    return dict(
        # Throttling is retried by our own, longer backoff loop (``_invoke_with_backoff``). A synchronous
        # Invoke is never retried by botocore: after a read timeout or a dropped
        # connection it would send the call again while the first may still run
        # (``_after_drop`` decides instead, from the store).
        retries={"mode": "standard", "total_max_attempts": 1} if sync else {"mode": "standard", "max_attempts": 3},
        # A synchronous call holds its connection for its whole run: one per call in
        # flight, else urllib3 opens (and discards) a connection per call beyond the pool.
        max_pool_connections=max(10, concurrency if sync else min(concurrency, 256)),
        # The parameters are wrenpack's own (FunctionName, InvocationType, Payload bytes).
        parameter_validation=False,
        connect_timeout=10,
        # above the longest function timeout (900 s): a synchronous call's reply comes at its end
        read_timeout=960 if sync else 60,
        # the connection of a long synchronous call is idle for its whole run
        tcp_keepalive=sync,
    )


def _make_lambda_client(profile: str | None, region: str | None, endpoint_url: str | None,
                        config: dict[str, Any]) -> Any:
    """A Lambda client of ``profile`` in ``region`` at ``endpoint_url`` with botocore ``Config(**config)``;
    no region or credentials: the one-line error naming the fix."""
    import boto3
    from botocore.config import Config

    made = boto3.session.Session(profile_name=profile, region_name=region)
    clients.check_region(made.region_name, (endpoint_url, "lambda"), profile=profile)  # (the profile's: here)
    session = clients.checked_session(made, profile)
    return session.client("lambda", endpoint_url=endpoint_url, config=Config(**config))


class _Images:
    """Which functions of a family are container images (``Backend.image_of``).

    Asked only where a launch would otherwise be refused for naming a module of the
    user's own code (``wrenpack.executor.own_modules``), so a launch that names none
    costs nothing: then once per function (``GetFunctionConfiguration``, which the
    client's policy allows), kept for the life of whoever holds this (the backend,
    or a spawn's driver). What is not kept: a function not deployed yet (deployed
    meanwhile, it is asked again), and a failure that may pass (the network,
    throttling); a refusal (AccessDenied) is kept, asking again would only be
    refused again. A function not deployed that ``lambda_auto_deploy`` would create
    is a copy of a deployed one of its family (``deploy.find_template``): an image
    when that one is (kept: the copy will be what it is)."""

    def __init__(self, client: Callable[[], Any], base: str, architecture: str, auto_deploy: bool) -> None:
        self._client = client
        self._base = base
        self._architecture = architecture
        self._auto_deploy = auto_deploy
        self._known: dict[str, bool | None] = {}
        #: held while asking: concurrent launches ask Lambda once (only launches about to be refused wait here)
        self._lock = threading.Lock()

    def ask(self, memory_mb: int, timeout_s: float, ephemeral_mb: int, runtime: str | None) -> ImageAnswer:
        settings = FunctionSettings.for_call(memory_mb, timeout_s, ephemeral_mb, self._architecture, runtime)
        name = settings.function_name(self._base)
        with self._lock:
            if name in self._known:
                return ImageAnswer(name, self._known[name])
            image, lasting = self._read(name, settings)
            if lasting:
                self._known[name] = image
        return ImageAnswer(name, image)

    def _read(self, name: str, settings: FunctionSettings) -> tuple[bool | None, bool]:
        """(whether ``name`` is an image, None when that cannot be read; whether the answer lasts)."""
        try:
            conf = self._client().get_function_configuration(FunctionName=name)
        except Exception as exc:  # noqa: BLE001 - not known: the launch is refused as it would be without asking
            code = _code(exc)
            if code in ("ResourceNotFoundException", "404"):
                return self._template(name, settings)
            log.info("cannot read whether Lambda function %s is a container image (%s); a launch that names a module "
                     "of your own code is refused", name, code or f"{type(exc).__name__}: {exc}")
            return None, code in _DENIED_CODES
        return conf.get("PackageType") == "Image", True

    def _template(self, name: str, settings: FunctionSettings) -> tuple[bool | None, bool]:
        """The answer for ``name``, not deployed: that of the function ``lambda_auto_deploy`` would copy."""
        if not self._auto_deploy:
            return False, False
        try:
            template = deploy.find_template(self._client(), self._base, settings)
        except Exception as exc:  # noqa: BLE001 - as above
            log.info("cannot read whether Lambda function %s would be a container image (%s); a launch that names a "
                     "module of your own code is refused", name, exc)
            return None, False
        if template is None:
            return False, False  # (nothing to copy: its launch fails; a function deployed meanwhile is asked again)
        return template.get("PackageType") == "Image", True  # (the copy will be what it is)


class LambdaBackend(Backend):
    name = "lambda"
    bills_per_call = True
    separate_files = True  # (the workers have the handler package and the runtime, not this machine's files)

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
        reply_within_s: float | None = None,
        send_processes: int = 0,
        client: Any = None,
        clock: Any = None,
    ) -> None:
        if invocation_type not in ("Event", "RequestResponse"):
            raise ConfigError(f"invocation_type {invocation_type!r} is not valid; use 'Event' or 'RequestResponse'")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        check_storage(store)
        if client is None:
            _check_region(region, profile, endpoint_url)
        if isinstance(store, S3Store):
            clients.check_region(clients.configured_region(getattr(store, "region", None), getattr(store, "profile", None)),
                                 (getattr(store, "endpoint_url", None), "s3"), profile=getattr(store, "profile", None))
        self.store = store
        remember = getattr(store, "remember_job_keys", None)
        if remember is not None:
            # The job's cleanup deletes the keys this driver wrote and read without listing them.
            remember()
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
        #: RequestResponse: a call that runs longer than this (s) stores its result
        #: instead of replying; None: no call does (a reply waits up to the call's
        #: timeout), unless the connection's keepalive cannot be set (REPLY_WITHIN_S)
        self.reply_within_s = reply_within_s
        #: processes that make the Invoke requests (and the result GETs of an S3 store)
        #: with boto3 clients of their own (``sender``): 0, this process's threads do
        self.send_processes = max(0, int(send_processes))
        self._senders: SenderProcesses | None = None
        self._senders_failed = False
        self._client = client
        #: the synchronous client's connections probe while idle (``clients.keepalive_probes``;
        #: a client handed in is tuned here, one made later in ``_make_client``)
        self._keepalive_set = client is not None and invocation_type == "RequestResponse" and clients.keepalive_probes(client)
        #: the time and timed waits (``time()``, ``wait(event, s)``): wall-clock time unless a simulation passes its own
        self._clock = clock or _RealClock()
        self._now = self._clock.time
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()
        self._fn_lock = threading.Lock()
        self._functions: dict[str, _Function] = {}
        #: which functions are container images: asked only for a launch about to be refused (``image_of``)
        self._images = _Images(lambda: self.client, function_name, architecture, auto_deploy)
        self._account_cap: int | None | bool = False  # False: not read yet
        #: the budget every function without reserved concurrency draws from (made on first use)
        self._unreserved: tuple[threading.BoundedSemaphore, int] | None = None
        self._calls: dict[tuple[str, str], _Call] = {}
        self._slots = threading.BoundedSemaphore(concurrency)
        # An Event send holds its thread for one round trip (~25 ms): 64 threads
        # send ~2,500 a second. A synchronous send holds its thread for the whole call.
        workers = concurrency if invocation_type == "RequestResponse" else min(concurrency, 64)
        self._pool = _Senders(self._send, workers, "wrenpack-lambda")
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="wrenpack-lambda-read")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._poller: threading.Thread | None = None
        #: Event calls in flight by when they are next checked: (due, token, call)
        self._schedule: list[tuple[float, int, _Call]] = []
        self._tokens = itertools.count(1)
        #: when the poller wakes next (a sooner check wakes it)
        self._next_round = float("inf")
        self._job_times: dict[str, _JobTimes] = {}
        #: a job got its first estimate: the poller reschedules its calls at once
        self._replan = False
        #: requests the poller made, by kind (LIST, GET that found nothing, GET that found the result)
        self.poll_requests: dict[str, int] = {"LIST": 0, "GET_MISS": 0, "GET_HIT": 0}

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            reply_results=self.invocation_type == "RequestResponse",
            cpu_scales_with_memory=True,
            billed_per_call=self.bills_per_call,
            separate_files=self.separate_files,
            enforces=frozenset({"memory", "timeout", "ephemeral_storage"}),
            concurrency=self.concurrency,
            cancel_running=True,
            # (read at call time: a test may change the limits)
            event_limit=(EVENT_PAYLOAD_LIMIT if self.invocation_type == "Event" else SYNC_PAYLOAD_LIMIT)
            - _SEND_FIELDS - _CANCEL_FIELD,
            # (an event may wait in Lambda's queue until its deadline, then run up to Lambda's
            # longest timeout; a checkpointed call's next segment is launched by the driver only)
            late_writes_s=(self.throttle_give_up_s if self.invocation_type == "Event" else self.deadline_margin_s)
            + MAX_TIMEOUT_S + 2 * self.deadline_margin_s,
        )

    @classmethod
    def check_config(cls, config: Any) -> None:
        check_storage(getattr(config, "storage", None))
        _check_region(getattr(config, "aws_region", None), getattr(config, "aws_profile", None),
                      getattr(config, "lambda_endpoint_url", None))

    @classmethod
    def from_config(cls, config: Any) -> "LambdaBackend":
        """Build from a ``wrenpack.config.Config`` (read defensively: any object with
        these attributes works)."""
        store = getattr(config, "store", None)
        if not isinstance(store, Store):
            check_storage(getattr(config, "storage", None))  # (before a local store's folder is made)
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
            send_processes=int(getattr(config, "lambda_send_processes", 0) or 0),
        )

    def image_of(self, memory_mb: int, timeout_s: float, ephemeral_mb: int, runtime: str | None) -> ImageAnswer:
        """Whether the function for these settings is a container image (``PackageType`` "Image"),
        asked of Lambda with this backend's client once per function (``_Images``)."""
        return self._images.ask(memory_mb, timeout_s, ephemeral_mb, runtime)

    @classmethod
    def image_asker(cls, config: Any) -> ImageAsker:
        """``image_of`` for a spawn's driver, which makes no backend: a client of the same
        profile, region, endpoint and botocore settings as the backend ``from_config`` would
        make (that of the job's supervisor), made when first asked."""
        made: list[Any] = []

        def client() -> Any:
            if not made:
                made.append(_make_lambda_client(
                    getattr(config, "aws_profile", None), getattr(config, "aws_region", None),
                    getattr(config, "lambda_endpoint_url", None),
                    lambda_client_config(getattr(config, "invocation_type", None) or "Event",
                                         int(getattr(config, "concurrency", None) or 100))))
            return made[0]

        images = _Images(client, getattr(config, "function_name", None) or "wrenpack-worker",
                         getattr(config, "architecture", None) or "x86_64", bool(getattr(config, "lambda_auto_deploy", False)))
        return images.ask

    # -- boto3 ------------------------------------------------------------
    @property
    def client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._client_lock:  # sender threads race here on first use
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _lambda_config(self) -> dict[str, Any]:
        """The Lambda client's botocore ``Config`` arguments (this process's, and each sender process's)."""
        return lambda_client_config(self.invocation_type, self.concurrency)

    def _make_client(self) -> Any:
        client = _make_lambda_client(self.profile, self.region, self.endpoint_url, self._lambda_config())
        if self.invocation_type == "RequestResponse":
            self._keepalive_set = clients.keepalive_probes(client)
            if not self._keepalive_set:
                log.info("cannot set TCP keepalive probes on the Lambda client's connections; RequestResponse calls "
                         "longer than %g s store their results (a PUT and a GET each)", REPLY_WITHIN_S)
        return client

    def _sender_processes(self) -> SenderProcesses | None:
        """The sender processes (started on first use), None when this process sends
        (``send_processes`` 0, or they could not start: logged, and then it does)."""
        senders = self._senders
        if senders is not None and senders.alive:
            return senders
        if not self.send_processes or self._senders_failed or self._stop.is_set():
            return None
        with self._client_lock:
            if self._senders is None and not self._senders_failed:
                store = self.store
                s3 = isinstance(store, S3Store) and hasattr(store, "remember_key")
                try:
                    self._senders = SenderProcesses(
                        self.send_processes, profile=self.profile, region=self.region, endpoint_url=self.endpoint_url,
                        lambda_config=self._lambda_config(), keepalive=self.invocation_type == "RequestResponse",
                        store=store.spec if s3 else None, store_profile=getattr(store, "profile", None) if s3 else None,
                        # a synchronous call holds its request for its whole run
                        threads=self.concurrency + 16 if self.invocation_type == "RequestResponse" else 64 + READERS)
                except ConfigError:
                    raise  # no region or credentials: the same one-line error as this process's client
                except Exception as exc:  # noqa: BLE001 - no child process here: this process sends
                    self._senders_failed = True
                    log.warning("the Lambda backend's sender processes did not start (%s); sending from this process", exc)
                    return None
                if self.invocation_type == "RequestResponse":
                    self._keepalive_set = self._senders.keepalive_set
            senders = self._senders
        if senders is not None and not senders.alive:
            with self._client_lock:
                first, self._senders_failed = not self._senders_failed, True
            if first:
                log.warning("the Lambda backend's sender processes have ended; sending from this process")
            return None
        return senders

    def _reply_within(self, inv: Invocation) -> float:
        """How long a RequestResponse call may run and still reply with its result (s)."""
        if self.reply_within_s is not None:
            return self.reply_within_s
        if not self._keepalive_set:
            return REPLY_WITHIN_S
        # The connection waits for the reply up to the call's end, which its timeout bounds.
        return float(inv.timeout_s) + self.deadline_margin_s

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
                                          store_url=self._store_url(), runtime_dir=inv.runtime,
                                          where=self._where())
            stale = deploy.protocol_refusal(conf)
            if stale:
                variables = (conf.get("Environment") or {}).get("Variables") or {}
                redeploy = settings.deploy_command(self.function_name, inv.runtime,
                                                   archive=bool(variables.get("WRENPACK_RUNTIME_ARCHIVE")), **self._where())
                raise ConfigError(f"Lambda function {name!r} cannot run this executor's calls: {stale}; redeploy it "
                                  f"with this wrenpack: `{redeploy}`")
            store_url = self._store_url()
            why = deploy.store_refusal(conf, store_url)
            if why:
                raise ConfigError(
                    f"Lambda function {name!r} cannot run this executor's calls: {why} ({store_url} here); set storage "
                    f"to a location inside the function's store, or deploy a family of functions for this one "
                    f"(`wrenpack deploy --function-name NAME --storage {store_url}`, then function_name=NAME)")
            slots, cap = self._slots_for(name)
            fn = _Function(name, settings, int(conf.get("MemorySize") or settings.memory), slots, cap)
            self._functions[name] = fn
            return fn

    def _store_url(self) -> str | None:
        """``s3://BUCKET/PREFIX`` of this backend's store (its ``url`` names the endpoint too), None off S3."""
        bucket = getattr(self.store, "bucket", None)
        return f"s3://{bucket}/{getattr(self.store, 'prefix', '')}".rstrip("/") if bucket else None

    def _where(self) -> dict[str, str | None]:
        """Where this backend's functions live and serve, as `wrenpack deploy` options
        (``FunctionSettings.deploy_command``): a printed command then runs as printed."""
        storage = self._store_url()
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
            if code in _DENIED_CODES:
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
            # a job-wide key (a job's own cancel) may be there already. A call that cannot be
            # stopped (``cancellable=False``) names none: its invocation never looks.
            if not inv.event.get("cancel_key") and inv.extra.get("cancellable", True):
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
            self._pool.submit(call)

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
        self._pool.shutdown(wait=wait)
        self._readers.shutdown(wait=wait, cancel_futures=True)
        if wait and self._poller is not None:
            self._poller.join(timeout=10)
        with self._client_lock:
            senders, self._senders = self._senders, None
            self._senders_failed = True  # (shut down: none started again)
        if senders is not None:
            senders.close(wait)

    def _drain_limit(self) -> float:
        with_deadline = [c.deadline for c in self._calls.values() if c.deadline]
        longest = max((c.inv.timeout_s for c in self._calls.values()), default=0.0)
        horizon = max(with_deadline, default=self._now() + longest + self.deadline_margin_s)
        return max(0.0, horizon - self._now()) + 2 * self.deadline_margin_s + 5

    # -- sending ------------------------------------------------------------
    def _too_large(self, inv: Invocation, size: int) -> PayloadTooLarge | None:
        """The one-line error for an event of ``size`` bytes over Lambda's request limit, else None."""
        event_type = self.invocation_type == "Event"
        limit = EVENT_PAYLOAD_LIMIT if event_type else SYNC_PAYLOAD_LIMIT
        if size <= limit:
            return None
        return PayloadTooLarge(
            f"the event for {inv.label} is {size} bytes, over Lambda's {limit}-byte limit for "
            f"{self.invocation_type} invocations; {_event_fix(inv)}"
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
                try:
                    # made first (this process's client or the senders'): whether their connections keep alive decides
                    if self._sender_processes() is None:
                        _ = self.client
                except WrenpackError as exc:
                    self._finish(call, InvocationResult(error=exc))
                    return
                inv.event["reply_within_s"] = self._reply_within(inv)
            if not event_type:
                with self._lock:
                    call.sent_at = self._now()
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
                    call.sent_at = self._now()
                    call.checks = 0
                    call.deadline = call.sent_at + inv.timeout_s + self.deadline_margin_s
                    call.extended = False
                    call.in_flight = True
                    self._plan(call, call.sent_at)
                released = True  # the slots are released when the call finishes
                self.started(inv)
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
        now = self._now()
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
                senders = self._sender_processes()
                if senders is not None:
                    return senders.invoke(name, self.invocation_type, payload)
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
                        f"{_event_fix(inv)}"
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
        may run to its end on Lambda, so it is not invoked again. A call whose result the
        reply could not carry (over ``reply_limit``, or past ``reply_within_s`` where one
        is set) stores it, and that object is waited for until the call's latest possible
        end (its deadline to start, plus its timeout, plus the margin); a result that was
        to come in the reply is lost with the connection, and the call fails ``WorkerLost``."""
        inv = call.inv
        where = f"{inv.label} (call {inv.key[1]} of job {inv.key[0]})"
        latest = float(inv.event.get("deadline") or self._now()) + inv.timeout_s + self.deadline_margin_s
        log.warning("%s: the connection to Lambda broke while the call ran (%s); waiting for its result in the store "
                    "instead of invoking it again", where, exc)
        probes = 0
        while not self._stop.is_set():
            found = self._read_result(inv)
            if found is not None:
                self._finish(call, found)
                return
            now = self._now()
            if now > latest:
                break
            probes += 1
            self._clock.wait(self._stop, min(_probe_gap(self.poll_interval, probes), latest - now + 0.05))
        if self._stop.is_set():
            return  # shutdown reports it
        self._finish(call, InvocationResult(error=WorkerLost(
            f"{where}: the connection to Lambda broke while it ran and no result reached the store by its latest end "
            "(a result that fits the reply travels only in it); it was not invoked again (it may have run once); "
            "use invocation_type='Event' where connections drop"
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
            self._pool.submit(call)
            return
        self._finish(call, InvocationResult(error=error))

    def _expired(self, call: _Call, doc: dict[str, Any]) -> None:
        """The handler refused the attempt as past its deadline: nothing ran, so it may be sent again."""
        inv = call.inv
        skew = float(doc.get("now") or 0.0) - self._now()
        if inv.attempt < inv.retries:
            inv.attempt += 1
            log.warning("%s reached Lambda after its deadline and did not run; retry %d", inv.label, inv.attempt)
            self._pool.submit(call)
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

    def _get(self, key: str) -> bytes:
        """The store's object ``key``: read by a sender process when there are any (the
        store then records the key as read here, for the job's cleanup), else by the store."""
        senders = self._sender_processes()
        if senders is None or not senders.has_store:
            return self.store.get(key)
        try:
            data = senders.get(key)
        except SenderLost:
            return self.store.get(key)
        self.store.remember_key(key)  # type: ignore[attr-defined]
        return data

    def _read_result(self, inv: Invocation, segments: bool = True) -> InvocationResult | None:
        """One GET for the result object (a second for the segment record if
        none): None while the call is still running."""
        job_id, cid = inv.key
        try:
            return self._result_from(inv, self._get(keys.result_key(job_id, cid)))
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
    # Each Event call in flight has one entry in ``_schedule``: when it is next
    # checked. A call is checked just after its expected end (its job's ended
    # calls say how long calls take: send-to-start delay and run time, 75th
    # percentiles; before any has ended, the profile's duration when the
    # executor passes one as ``extra["expected_s"]``), and after that, or
    # without any estimate, at gaps proportional to its elapsed time (bounded
    # by CHECK_GAP_MIN..CHECK_GAP_MAX). The checks due in one round are made
    # per shard: one LIST when it saves more GETs that would find nothing than
    # a LIST costs (LIST_OVER_GET, with the job's recent hit rate), else a
    # direct GET per call, which reads the result when it is there. A shard
    # with no call due is not listed, and with nothing in flight the poller
    # sleeps until a call is sent.
    def _times(self, inv: Invocation) -> _JobTimes:
        job_id = inv.key[0]
        times = self._job_times.get(job_id)
        if times is None:
            expected = inv.extra.get("expected_s")
            times = _JobTimes(self._now(), float(expected) if isinstance(expected, (int, float)) and expected > 0 else None)
            if len(self._job_times) >= 256:  # the oldest job's figures go
                self._job_times.pop(next(iter(self._job_times)))
            self._job_times[job_id] = times
        return times

    def _next_check(self, call: _Call, now: float) -> float:
        """When to check ``call`` next (lock held): with its job's estimate, at the
        typical end, then a spread later (the slowest twentieth's end), then at gaps
        of OVERDUE_RATIO of its elapsed time; without one, in its job's rounds."""
        times = self._times(call.inv)
        base = call.began or call.sent_at
        elapsed = max(0.0, now - base)
        expected = times.expected()
        if expected is None:
            # The job's rounds: its calls sent together are due together, so one
            # LIST of the job can answer for all of them.
            t0, due = times.first_sent, times.first_sent + self.poll_interval
            while due <= now or due - call.sent_at < self.poll_interval / 2:
                due += min(max(UNKNOWN_RATIO * (due - t0), self.poll_interval), CHECK_GAP_MAX)
        else:
            delay, run, spread = expected
            typical = base + (0.0 if call.began else delay) + run + 0.05
            if now < typical:
                due = typical
            elif now < typical + spread:
                due = now + spread
            else:
                due = now + min(max(OVERDUE_RATIO * elapsed, spread, CHECK_GAP_MIN), CHECK_GAP_MAX)
        return min(due, max(call.deadline, now + CHECK_GAP_MIN))

    def _plan(self, call: _Call, now: float) -> None:
        """Put ``call`` in the schedule at its next check (lock held); wake the poller if that is sooner."""
        if call.done or not call.in_flight:
            return
        due = self._next_check(call, now)
        call.token = next(self._tokens)
        heapq.heappush(self._schedule, (due, call.token, call))
        if due < self._next_round:
            self._next_round = due
            self._wake.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                nxt = self._schedule[0][0] if self._schedule else float("inf")
                self._next_round = nxt
                self._wake.clear()
            now = self._now()
            if nxt > now and not self._replan:
                self._clock.wait(self._wake, None if nxt == float("inf") else nxt - now + ROUND_S / 2)
                continue
            if self._stop.is_set():
                return
            try:
                self._poll_once()
            except _ReadersClosed as exc:
                # Nothing failed: the program is ending (see ``_read``), and whoever ends it
                # (``shutdown``, the executor's exit) reports the calls still running.
                log.debug("the poller stops: %s", exc)
                return
            except Exception:  # noqa: BLE001 - one failed poll must not stop the poller
                if self._stop.is_set():
                    log.debug("the poller stops: the backend shut down during a round", exc_info=True)
                    return
                log.warning("polling the store for call status failed; retrying", exc_info=True)
                self._clock.wait(self._stop, self.poll_interval)

    def _poll_once(self) -> None:
        now = self._now()
        due: dict[tuple[str, int], list[_Call]] = {}
        late: list[_Call] = []
        with self._lock:
            self._replan = False
            for job_id, times in self._job_times.items():
                if times.changed:
                    # The job's first estimate: its calls waiting far out are checked at their expected end.
                    times.changed = False
                    for call in self._calls.values():
                        if call.inv.key[0] == job_id and call.in_flight and not call.reading and not call.done:
                            self._plan(call, now)
            while self._schedule and self._schedule[0][0] <= now + ROUND_S:
                _, token, call = heapq.heappop(self._schedule)
                if token != call.token or call.done or not call.in_flight or call.reading:
                    continue  # a stale entry: the call was rescheduled, read, resent or ended
                call.token = 0
                call.reading = True
                if now > call.deadline:
                    late.append(call)
                else:
                    due.setdefault((call.inv.key[0], keys.shard_of(call.inv.key[1])), []).append(call)
        for call in late:
            self._read(call, self._deadline_passed)
        unknown: dict[str, list[_Call]] = {}
        for (job_id, shard), calls in due.items():
            times = self._times(calls[0].inv)
            if times.expected() is None:
                unknown.setdefault(job_id, []).extend(calls)
            elif len(calls) * (1.0 - times.hit_rate) > LIST_OVER_GET:
                self._list_shard(job_id, shard, calls, times)
            else:
                self._probe(calls)
        for job_id, calls in unknown.items():
            # Nothing of the job has ended yet, so nothing is in its result prefix but
            # what ended since: one LIST of all its shards finds it (the first result
            # then times every call's checks).
            times = self._times(calls[0].inv)
            if len(calls) * (1.0 - times.hit_rate) > LIST_OVER_GET:
                self._list_shard(job_id, None, calls, times)
            else:
                self._probe(calls)

    def _read(self, call: _Call, work: Any) -> None:
        """Hand ``call``'s read (``work``) to the reader pool. A pool that takes no
        more raises ``_ReadersClosed``, which ends the poller quietly: it was shut
        down by ``shutdown``, or by the interpreter at exit (concurrent.futures' own
        exit hook marks every pool shut down before the executor's, which reports
        the calls still running, runs). The poller logged that as a failed poll,
        with a "cannot schedule new futures after shutdown" traceback."""
        try:
            self._readers.submit(self._guard, call, work)
        except RuntimeError as exc:
            raise _ReadersClosed(f"the reader pool takes no more reads ({exc})") from None

    def _probe(self, calls: list[_Call]) -> None:
        for call in calls:
            self._read(call, lambda c: self._read_and_finish(c, probe=True))

    def _list_shard(self, job_id: str, shard: int | None, calls: list[_Call], times: _JobTimes) -> None:
        """One LIST of the shard (``None``: of all the job's shards), from just
        below its lowest due call: the due calls listed are read, the others
        checked again later, and calls that ended before they were due are read too."""
        start_after = None
        if shard is not None:
            lowest = min((int(c.inv.key[1]) for c in calls if c.inv.key[1].isdigit()), default=0)
            if lowest >= keys.RESULT_SHARDS:
                start_after = keys.result_key(job_id, keys.call_id(lowest - keys.RESULT_SHARDS))
        prefix = keys.result_prefix(job_id) if shard is None else keys.shard_prefix(job_id, shard)
        try:
            self.poll_requests["LIST"] += 1
            names = {k.rsplit("/", 1)[-1] for k in self.store.iter_list(prefix, start_after=start_after)}
        except Exception:
            with self._lock:
                for call in calls:
                    call.reading = False
                    self._plan(call, self._now())
            raise
        found_ids = {name.split(".", 1)[0] for name in names}
        for call in calls:
            listed = call.inv.key[1] in found_ids
            times.checked(listed)
            if listed:
                self._read(call, lambda c: self._read_and_finish(c, probe=False))
            else:
                with self._lock:
                    call.checks += 1
                    call.reading = False
                    self._plan(call, self._now())
        due_ids = {c.inv.key[1] for c in calls}
        for cid in found_ids - due_ids:
            with self._lock:
                call = self._calls.get((job_id, cid))
                if call is None or call.done or not call.in_flight or call.reading:
                    continue
                call.reading = True
                call.token = 0
            self._read(call, lambda c: self._read_and_finish(c, probe=False))

    def _guard(self, call: _Call, work: Any) -> None:
        """Run one call's read; whatever goes wrong fails or retries that call only.
        A call still running afterwards goes back in the schedule."""
        try:
            work(call)
        except WrenpackError as exc:
            if self._now() > call.deadline:
                self._finish(call, InvocationResult(error=exc))
            else:
                log.info("reading the outcome of %s failed (%s); trying again", call.inv.label, exc)
        except Exception as exc:  # noqa: BLE001
            log.warning("reading the outcome of %s failed", call.inv.label, exc_info=True)
            if self._now() > call.deadline:
                self._finish(call, InvocationResult(error=WorkerLost(f"{call.inv.label}: reading its outcome failed: {exc}")))
        finally:
            with self._lock:
                call.reading = False
                if not call.done and call.in_flight and not call.token:
                    self._plan(call, self._now())

    def _read_and_finish(self, call: _Call, probe: bool) -> None:
        # A segment record appears only near the call's timeout (a checkpointed call
        # goes on when its time is nearly up): before that a probe reads only the result.
        inv = call.inv
        segments = not probe or self._now() >= call.sent_at + 0.8 * inv.timeout_s
        found = self._read_result(inv, segments=segments)
        if probe:
            self.poll_requests["GET_HIT" if found is not None else "GET_MISS"] += 1
            self._times(inv).checked(found is not None)
        if found is not None:
            self._finish(call, found)
            return
        call.checks += 1
        if not probe:
            log.debug("%s was listed but not found; trying again", call.inv.label)

    def _deadline_passed(self, call: _Call) -> None:
        found = self._read_result(call.inv)  # one last direct look
        if found is not None:
            self._finish(call, found)
            return
        inv, fn = call.inv, call.fn
        window = inv.timeout_s + self.deadline_margin_s
        started = self._started_late(inv)
        now = self._now()
        if started is not None:
            call.began = started
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
        self._pool.submit(call)

    def _started_late(self, inv: Invocation) -> float | None:
        try:
            blob = self.store.get(keys.start_key(*inv.key))
            return start_mark.open_start(auth.decode_secret(inv.event["secret"]), *inv.key, blob, self._now())
        except ObjectNotFound:
            return None
        except CorruptObject as exc:  # not the call's own mark: never trusted with its deadline
            log.warning("%s: %s; ignored", inv.label, exc)
            return None

    # -- completion -----------------------------------------------------------
    def _crash_retried(self, call: _Call, result: InvocationResult) -> bool:
        """A call whose job's process died under its worker, which wrote that (the status's
        ``crashed``: "exit code 3", "signal SIGSEGV") before it ended the same way, is sent
        again while ``retries`` allow, as the local backend runs a crashed call again: its
        result object goes first, or it would win the next attempt's write. The object is
        verified first: only the call's own worker may ask for a retry."""
        inv, status = call.inv, result.status
        if status is None or not status.get("crashed") or result.data is None or inv.attempt >= inv.retries \
                or call.done or self._stop.is_set():
            return False
        job_id, cid = inv.key
        if not result_format.is_authentic_result(auth.decode_secret(inv.event["secret"]), job_id, cid, result.data):
            return False  # (the executor fails the call with CorruptObject)
        try:
            self.store.delete(keys.result_key(job_id, cid))
        except Exception:  # noqa: BLE001 - the crash is then the call's outcome
            log.warning("%s: could not delete the result of its crashed attempt; not retried", inv.label, exc_info=True)
            return False
        inv.attempt += 1
        log.warning("%s: worker died (%s); retrying (attempt %d of %d)", inv.label, status["crashed"], inv.attempt + 1,
                    inv.retries + 1)
        if self.invocation_type == "Event":
            self._resend(call)
        else:
            self._pool.submit(call)  # (its sender frees the slots it holds)
        return True

    def _finish(self, call: _Call, result: InvocationResult) -> None:
        if self._crash_retried(call, result):
            return
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
            call.fn.last_progress = self._now()
        if result.status is not None and self.invocation_type == "Event" and call.sent_at:
            with self._lock:
                times = self._times(call.inv)
                times.record(result.status, call.sent_at)
                if times.changed:  # the job's first estimate: its calls are rescheduled now
                    self._replan = True
                    self._wake.set()
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


def _event_fix(inv: Invocation) -> str:
    """What makes an event over Lambda's request limit smaller: the executor already sends
    arguments through the store where they would not fit (``Capabilities.event_limit``),
    so an event still too large carries too much of something else."""
    if "inline" in (inv.event.get("args") or {}):
        return "lower inline_limit so large arguments travel through the store"
    return ("its arguments travel through the store already; what else it carries is too large (env=, the keys "
            "of the jobs whose futures its arguments hold): pass fewer")


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
    if error_type == "ProtocolError":
        # The handler refused the event (another protocol, another store, a malformed event):
        # it ran nothing, and would refuse it again, so it is not a crash to retry.
        return ProtocolError(f"{where}: the Lambda function refused the call: {message}")
    if error_type in _OOM_TYPES or any(word in low for word in _OOM_WORDS):
        return MemoryLimitExceeded(
            f"{where} was killed by Lambda at its function's {memory_mb} MB memory limit ({shown}); "
            "raise memory= (see `wrenpack profile`)"
        )
    return WorkerCrashed(
        f"{where}: the Lambda runtime failed without writing a result ({function_error or 'no status'}: {shown}); "
        f"see CloudWatch log group /aws/lambda/{function_name}"
    )
