"""``wrenpack doctor --acceptance``: what no emulator can check, in the user's own account.

The tests run wrenpack's Lambda path against moto and the Runtime Interface
Emulator, which neither kill a call at its memory limit, nor throttle at a
reserved concurrency, nor hold events in Lambda's asynchronous queue, nor
bundle the SDK Lambda's Python runtime has. This run deploys a few small
functions of a family of its own (``<function_name>-acc<run id>-*``, so the
deploy policy's ``<function_name>-*`` covers them), checks each of those
things, and deletes everything it created, also on failure and on Ctrl-C::

    deploy: main (zip: handler package only; memory from --memory, 3 s),
            reserved (reserved concurrency 1), and when given a runtime:
            layer / archive (--runtime-dir), image (--image-uri)
    checks (in this order; each one a row, none stops the others):
      cold-start  first and warm probe invocation of each runtime kind;
                  Lambda's own Init Duration from the log tail when sent
      sdk         the worker's botocore (wrenpack.worker.sdk) is new enough
      payload     raw invokes just under / over the Event and RequestResponse
                  payload limits wrenpack assumes; a call with a 1.5 MB
                  argument and a 5 MB result (both through S3)
      requests    client requests per call (Invoke, S3 by operation) of 20
                  small calls, RequestResponse and Event, counted by botocore
                  hooks on the clients the executors use
      throttling  a second synchronous invoke while the reserved-1 function
                  is busy: Lambda refuses it (TooManyRequestsException)
      queue       three Event calls on the reserved-1 function sent at once:
                  they wait in Lambda's queue, start late, and all complete
      memory      a call that touches twice its memory: MemoryLimitExceeded
      timeout     a call past its timeout (wrenpack's own stop) and one that
                  blocks SIGALRM (Lambda's kill): both TaskTimeout
    cleanup: executors drained, functions, layer versions, log groups,
             the run's job objects and the runtime objects it uploaded deleted

Rows are ``{"check", "ok" (True, False, None: skipped), "detail", "seconds"}``;
the command line prints them as a table or JSON. Client side only.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.probe as probe
from wrenpack import keys
from wrenpack.backends.aws.backend import EVENT_PAYLOAD_LIMIT, SYNC_PAYLOAD_LIMIT, LambdaBackend
from wrenpack.backends.aws.deploy import LOCAL_PYTHON, DeployRequest, FunctionSettings, deploy_functions, settings_to_deploy
from wrenpack.backends.aws import undeploy
from wrenpack.errors import ConfigError, MemoryLimitExceeded, TaskTimeout, WrenpackError
from wrenpack.executor import Executor
from wrenpack.remote_function import remote
from wrenpack.storage import store_for_config
from wrenpack.worker.sdk import PROBE_KEY

log = logging.getLogger(__name__)

#: every check, in the order it runs
CHECKS = ("cold-start", "sdk", "payload", "requests", "throttling", "queue", "memory", "timeout")
#: the main function's timeout (s): short, so the timeout check is quick on Lambda
MAIN_TIMEOUT = 3
#: timeouts of the functions that sleep or unpack a runtime (s)
RESERVED_TIMEOUT = 10
RUNTIME_TIMEOUT = 60
#: calls per map in the requests check
REQUEST_CALLS = 20


@dataclass
class AcceptanceOptions:
    """What to deploy and which checks to run."""

    #: the execution role the run's functions get (``wrenpack iam-policy --for worker``)
    role: str | None = None
    #: a ``wrenpack build-runtime`` output: cold starts of it as a layer and as an S3 archive
    runtime_dir: str | None = None
    #: a container image (ECR URI) with wrenpack: its cold start
    image_uri: str | None = None
    #: the main function's memory (MB); the memory check touches twice this
    memory: int = 256
    #: checks left out (names from ``CHECKS``)
    skip: Sequence[str] = ()


@dataclass
class _Run:
    """What one acceptance run created, so that cleanup finds all of it."""

    cfg: Any
    options: AcceptanceOptions
    base: str
    lam: Any = None
    functions: dict[str, str] = field(default_factory=dict)  # kind -> function name
    layers: list[str] = field(default_factory=list)  # names of the layers this run publishes
    uploaded: list[str] = field(default_factory=list)  # store keys this run created outside jobs/
    jobs: set[str] = field(default_factory=set)
    executors: list[Executor] = field(default_factory=list)
    deploy_errors: dict[str, str] = field(default_factory=dict)  # kind -> why it was not deployed


def run_acceptance(cfg: Any, options: AcceptanceOptions, on_row: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Deploy, run every check not skipped, clean up (always); the rows in order.
    ``on_row`` hears each row as it is decided (progress on a long run)."""
    unknown = sorted(set(options.skip) - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown acceptance check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    clients.bucket_prefix(cfg)  # an S3 store, or one line saying so
    if not options.role:
        raise ConfigError("the acceptance run creates Lambda functions: pass --role ARN of their execution role "
                          "(policy: `wrenpack iam-policy --for worker`)")
    run = _Run(cfg, options, f"{cfg.function_name}-acc{secrets.token_hex(3)}")
    FunctionSettings.for_call(options.memory, MAIN_TIMEOUT, 512).function_name(run.base + "-x")  # name length
    rows: list[dict[str, Any]] = []

    def row(name: str, ok: bool | None, detail: str, seconds: float) -> None:
        rows.append({"check": name, "ok": ok, "detail": detail, "seconds": round(seconds, 2)})
        if on_row is not None:
            on_row(rows[-1])

    try:
        run.lam = clients.lambda_client(cfg)
        started = time.monotonic()
        try:
            _deploy(run)
        except WrenpackError as exc:
            row("deploy", False, str(exc), time.monotonic() - started)
            return rows
        for name in CHECKS:
            if name in options.skip:
                continue
            for label, ok, detail, seconds in _timed_rows(name, _CHECK_FUNCTIONS[name], run):
                row(label, ok, detail, seconds)
    finally:
        with _no_interrupts():
            started = time.monotonic()
            ok, detail = _cleanup(run)
            row("cleanup", ok, detail, time.monotonic() - started)
    return rows


# -- deploying --------------------------------------------------------------------------
def _deploy(run: _Run) -> None:
    """The functions the checks need; one that fails to deploy fails only the checks that need it."""
    opts = run.options
    wanted: list[tuple[str, DeployRequest]] = []
    needs = set(CHECKS) - set(opts.skip)
    if needs - {"throttling", "queue"}:
        wanted.append(("main", DeployRequest(memory=[opts.memory], timeout=[MAIN_TIMEOUT], ephemeral_storage=[512],
                                             role=opts.role)))
    if needs & {"throttling", "queue"}:
        wanted.append(("reserved", DeployRequest(memory=[opts.memory], timeout=[RESERVED_TIMEOUT], ephemeral_storage=[512],
                                                 role=opts.role, reserved_concurrency=1)))
    if "cold-start" in needs and opts.runtime_dir:
        wanted.append(("layer", DeployRequest(memory=[opts.memory], timeout=[RUNTIME_TIMEOUT], ephemeral_storage=[512],
                                              role=opts.role, runtime_dir=opts.runtime_dir)))
        wanted.append(("archive", DeployRequest(memory=[opts.memory], timeout=[RUNTIME_TIMEOUT], role=opts.role,
                                                runtime_archive=opts.runtime_dir, ephemeral_storage=[_tmp_for(opts.runtime_dir)])))
    if "cold-start" in needs and opts.image_uri:
        wanted.append(("image", DeployRequest(memory=[opts.memory], timeout=[RUNTIME_TIMEOUT], ephemeral_storage=[512],
                                              role=opts.role, image_uri=opts.image_uri)))
    store = store_for_config(run.cfg)
    for kind, request in wanted:
        cfg = run.cfg.replace(function_name=f"{run.base}-{kind[0]}")
        if request.runtime_dir:
            run.layers.append(f"{cfg.function_name}-runtime")  # deploy's name for it; every version goes
        before = set(store.list("runtimes/")) | set(store.list("deploy/"))
        # Named before the request: a create that half failed is deleted too.
        settings = settings_to_deploy(request, cfg, LOCAL_PYTHON, request.runtime_dir or request.runtime_archive)
        run.functions[kind] = settings[0].function_name(cfg.function_name)
        try:
            deploy_functions(cfg, request, warn=lambda message: log.info("acceptance deploy: %s", message))
        except WrenpackError as exc:
            run.deploy_errors[kind] = str(exc)
            continue
        finally:
            run.uploaded += sorted((set(store.list("runtimes/")) | set(store.list("deploy/"))) - before)
        _wait_active(run.lam, run.functions[kind])


def _tmp_for(runtime_dir: str) -> int:
    """/tmp (MB) for the archive function: the extracted runtime plus room, at least Lambda's 512."""
    size = sum(p.stat().st_size for p in (Path(runtime_dir) / "python").rglob("*") if p.is_file())
    return min(10240, max(512, int(size * 1.5 / 2**20) + 256))


def _wait_active(lam: Any, name: str) -> None:
    """A new function is Pending for a few seconds on Lambda; invoking it then is refused."""
    try:
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    except Exception as exc:  # noqa: BLE001 - a server without the waiter's fields: the checks say what fails
        log.debug("waiting for %s to be active: %s", name, exc)


class _NotDeployed(WrenpackError):
    """A check's function could not be deployed; ``skip`` when the account, not wrenpack, is why."""

    def __init__(self, message: str, skip: bool = False) -> None:
        super().__init__(message)
        self.skip = skip


def _function(run: _Run, kind: str) -> str:
    """The deployed function of ``kind``, or a one-line error saying why there is none."""
    if kind in run.deploy_errors:
        why = run.deploy_errors[kind]
        # A small account cannot reserve concurrency (Lambda keeps some unreserved): nothing to check there.
        raise _NotDeployed(f"its {kind} function was not deployed: {why}", skip="UnreservedConcurrentExecution" in why)
    return run.functions[kind]


def _executor(run: _Run, kind: str, invocation_type: str, backend_class: type[LambdaBackend] = LambdaBackend,
              **settings: Any) -> Executor:
    """An executor on the run's ``kind`` function, counted for cleanup."""
    name = _function(run, kind)
    timeout = MAIN_TIMEOUT if kind == "main" else RESERVED_TIMEOUT
    cfg = run.cfg.replace(backend="lambda", function_name=f"{run.base}-{kind[0]}", memory=run.options.memory,
                          timeout=timeout, ephemeral_storage=512, retries=0, invocation_type=invocation_type,
                          lambda_auto_deploy=False, runtime=None, keep_objects=False, **settings)
    backend = backend_class(store_for_config(cfg), function_name=cfg.function_name, region=cfg.aws_region,
                            profile=cfg.aws_profile, endpoint_url=cfg.lambda_endpoint_url,
                            concurrency=int(cfg.concurrency or 4), invocation_type=invocation_type,
                            architecture=cfg.architecture, poll_interval=0.2, deadline_margin_s=10.0)
    ex = Executor(cfg, backend=backend)
    run.executors.append(ex)
    log.debug("acceptance executor on %s (%s)", name, invocation_type)
    return ex


def _remember(run: _Run, futures: Sequence[Any]) -> None:
    run.jobs.update(f.job_id for f in futures)


# -- the calls (defined inside a function: cloudpickle sends them by value) -----------------
def _calls() -> Any:
    def touch(mb: int) -> int:
        block = bytearray(mb * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return len(block)

    def sleep(seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds

    def ignore_alarm(seconds: float) -> float:
        import signal
        import time

        # wrenpack stops a call with SIGALRM; blocked, only Lambda's own timeout ends it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(seconds)
        return seconds

    def sized(blob: bytes, size: int) -> bytes:
        return bytes([len(blob) % 251]) * size

    def square(x: int) -> int:
        return x * x

    return collections.namedtuple("Calls", "touch sleep ignore_alarm sized square")(
        touch, sleep, ignore_alarm, sized, square)


# -- the checks ------------------------------------------------------------------------------
Row = tuple[bool | None, str]


def _timed_rows(name: str, check: Callable[[_Run], Any], run: _Run) -> Iterator[tuple[str, bool | None, str, float]]:
    """A check's rows, timed: most checks make one (ok, detail); cold-start makes a
    (label, ok, detail, seconds) per runtime kind. A check that raises fails its row."""
    started = time.monotonic()
    try:
        found = check(run)
    except _NotDeployed as exc:
        found = (None if exc.skip else False, f"skipped: {exc}" if exc.skip else str(exc))
    except WrenpackError as exc:
        found = (False, str(exc))
    except Exception as exc:  # noqa: BLE001 - one check's failure is its row, never the run's
        log.debug("acceptance check %s failed", name, exc_info=True)
        code = clients.error_code(exc)
        found = (False, f"{code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if isinstance(found, list):
        yield from found
    else:
        yield name, found[0], found[1], time.monotonic() - started


def _cold_start(run: _Run) -> list[tuple[str, bool | None, str, float]]:
    out = []
    for kind, label, missing in (("main", "zip", ""),
                                 ("layer", "layer", "pass --runtime-dir (a `wrenpack build-runtime` output) to time a layer"),
                                 ("archive", "archive", "pass --runtime-dir to time a runtime archive in S3"),
                                 ("image", "image", "pass --image-uri to time a container image")):
        started = time.monotonic()
        label = f"cold start: {label}"
        if kind not in run.functions:
            out.append((label, None, f"skipped: {missing}", 0.0))
            continue
        try:
            name = _function(run, kind)
            first = probe.probe(run.lam, name, log_tail=True)
            warm = probe.probe(run.lam, name, log_tail=True)
        except WrenpackError as exc:
            out.append((label, False, str(exc), time.monotonic() - started))
            continue
        init = (f"Lambda's Init Duration {first.init_ms:.0f} ms, " if first.init_ms is not None
                else "no Init Duration (the endpoint sent no log tail), ")
        out.append((label, True, f"{init}first call {first.seconds:.2f} s, warm call {warm.seconds:.2f} s "
                                 f"(round trips; botocore {first.doc.get('botocore')})", time.monotonic() - started))
    return out


def _sdk(run: _Run) -> Row:
    doc = probe.probe(run.lam, _function(run, "main")).doc
    if doc.get("problem"):
        return False, str(doc["problem"])
    return True, probe.describe(doc)


def _payload(run: _Run) -> Row:
    name = _function(run, "main")
    raw = clients.session(run.cfg).client("lambda", endpoint_url=getattr(run.cfg, "lambda_endpoint_url", None),
                                          config=_no_retries())
    notes, ok = [], True
    for kind, limit in (("Event", EVENT_PAYLOAD_LIMIT), ("RequestResponse", SYNC_PAYLOAD_LIMIT)):
        for size, want in ((limit - 1024, True), (limit + 1024, False)):
            accepted, why = _invoke_sized(raw, name, kind, size)
            if accepted != want:
                ok = False
                notes.append(f"{kind} {size:,} B {'accepted' if accepted else 'refused'} ({why}), "
                             f"but wrenpack assumes a {limit:,}-byte limit")
            else:
                notes.append(f"{kind} {size:,} B {'accepted' if accepted else 'refused: ' + why}")
    ex = _executor(run, "main", "RequestResponse")
    future = remote(_calls().sized, executor=ex).map([b"x" * (1536 * 1024)], size=5 * 2**20)[0]
    _remember(run, [future])
    try:
        value = future.result(timeout=120)
        good = len(value) == 5 * 2**20
        notes.append("a 1.5 MB argument and a 5 MB result went through the store" if good
                     else f"a 5 MB result came back as {len(value)} bytes")
        ok = ok and good
    except WrenpackError as exc:
        ok = False
        notes.append(f"a call with a 1.5 MB argument and a 5 MB result failed: {exc}")
    return ok, "; ".join(notes)


def _invoke_sized(lam: Any, name: str, kind: str, size: int) -> tuple[bool, str]:
    """Invoke ``name`` with a probe padded to ``size`` bytes: (accepted, the error code or status)."""
    head = json.dumps({PROBE_KEY: 1, "pad": ""})
    payload = head[:-2] + '"' + "x" * (size - len(head)) + '"}'
    try:
        resp = lam.invoke(FunctionName=name, InvocationType=kind, Payload=payload.encode())
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer
        return False, clients.error_code(exc) or type(exc).__name__
    if resp.get("Payload") is not None:
        resp["Payload"].read()
    return True, str(resp.get("StatusCode"))


def _no_retries() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=120, connect_timeout=10)


def _requests(run: _Run) -> Row:
    notes, ok = [], True
    for kind, limits in (("RequestResponse", {"Invoke": 1.0, "S3": 0.5}), ("Event", {"Invoke": 1.0, "S3": 4.0})):
        ex = _executor(run, "main", kind, concurrency=4)
        counts: collections.Counter[str] = collections.Counter()
        for client in _clients_of(ex):
            client.meta.events.register("request-created", _counter(counts))
        futures = remote(_calls().square, executor=ex).map(range(REQUEST_CALLS))
        _remember(run, futures)
        values = [f.result(timeout=120) for f in futures]
        ex.shutdown()  # the job's objects are deleted: counted too
        if values != [x * x for x in range(REQUEST_CALLS)]:
            return False, f"{kind}: wrong results {values}"
        per = {op: n / REQUEST_CALLS for op, n in sorted(counts.items())}
        invoke = per.get("lambda.Invoke", 0.0)  # the rest of Lambda's are once per executor (settings, limits)
        s3 = sum(v for op, v in per.items() if op.startswith("s3."))
        within = invoke <= limits["Invoke"] + 1e-9 and s3 <= limits["S3"]
        ok = ok and within
        billed = ", ".join(f"{v:.2f} {op.split('.', 1)[1]}" for op, v in per.items()
                           if op == "lambda.Invoke" or op.startswith("s3."))
        setup = ", ".join(f"{counts[op]} {op.split('.', 1)[1]}" for op in sorted(counts)
                          if op.startswith("lambda.") and op != "lambda.Invoke")
        notes.append(f"{kind}, {REQUEST_CALLS} calls: {billed} per call" + (f" (and once: {setup})" if setup else "") +
                     ("" if within else f"; over {limits['Invoke']:g} Invoke / {limits['S3']:g} S3 requests a call"))
    notes.append("the worker adds 1 PutObject per Event result")
    return ok, "; ".join(notes)


def _clients_of(ex: Executor) -> list[Any]:
    """The boto3 clients an executor on Lambda sends through (each once)."""
    found: dict[int, Any] = {}
    backend = ex.backend
    for client in (getattr(ex.store, "client", None), getattr(getattr(backend, "store", None), "client", None),
                   getattr(backend, "client", None)):
        if client is not None:
            found[id(client)] = client
    return list(found.values())


def _counter(counts: collections.Counter[str]) -> Callable[..., None]:
    lock = threading.Lock()

    def count(event_name: str = "", **_: Any) -> None:
        # request-created.<service>.<Operation>: one per HTTP attempt, as the bill counts them
        parts = event_name.split(".")
        if len(parts) >= 3:
            with lock:
                counts[f"{parts[1]}.{parts[2]}"] += 1

    return count


def _throttling(run: _Run) -> Row:
    name = _function(run, "reserved")
    raw = clients.session(run.cfg).client("lambda", endpoint_url=getattr(run.cfg, "lambda_endpoint_url", None),
                                          config=_no_retries())
    busy = threading.Thread(target=_quiet(probe.probe), args=(raw, name), kwargs={"sleep": 3.0}, daemon=True)
    busy.start()
    time.sleep(1.0)  # the first one holds the only execution environment
    started = time.monotonic()
    try:
        resp = raw.invoke(FunctionName=name, InvocationType="RequestResponse", Payload=json.dumps({PROBE_KEY: 1}).encode())
        if resp.get("Payload") is not None:
            resp["Payload"].read()
        answer = None
    except Exception as exc:  # noqa: BLE001 - the throttle is the answer
        answer = exc
    waited = time.monotonic() - started
    busy.join(timeout=60)
    if answer is None:
        return False, (f"a second synchronous invoke while the reserved-1 function was busy was not throttled: it "
                       f"waited {waited:.1f} s and ran (this endpoint queues instead of throttling)")
    code = clients.error_code(answer)
    reason = getattr(answer, "response", {}).get("Reason") or getattr(answer, "response", {}).get("Error", {}).get("Reason")
    if code in ("TooManyRequestsException", "429"):
        return True, (f"refused in {waited:.2f} s: {code}" + (f" ({reason})" if reason else "") +
                      "; wrenpack retries it with backoff and lowers concurrency to the reservation")
    return False, f"a second invoke at reserved concurrency 1 failed with {code or type(answer).__name__}, not a throttle"


def _quiet(fn: Callable[..., Any]) -> Callable[..., None]:
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except WrenpackError as exc:
            log.debug("acceptance background probe: %s", exc)
    return run


class _Unlimited(LambdaBackend):
    """Sends past the function's reserved concurrency (the queue check wants Lambda's queue)."""

    def _slots_for(self, name: str) -> tuple[threading.BoundedSemaphore, int]:
        return threading.BoundedSemaphore(self.concurrency), self.concurrency


def _queue(run: _Run) -> Row:
    ex = _executor(run, "reserved", "Event", backend_class=_Unlimited, concurrency=3)
    sent = time.time()
    futures = remote(_calls().sleep, executor=ex).map([1.0] * 3)
    _remember(run, futures)
    values, errors = [], []
    for f in futures:
        try:
            values.append(f.result(timeout=300))
        except WrenpackError as exc:
            errors.append(str(exc))
    if errors:
        return False, f"{len(errors)} of 3 Event calls at reserved concurrency 1 failed: {errors[0]}"
    delays = sorted(f.status["start"] - sent for f in futures)
    retried = sum(1 for f in futures if f.status.get("attempt"))
    late = sum(1 for d in delays if d > ex.backend.deadline_margin_s / 2)
    detail = (f"3 Event calls of 1 s at reserved concurrency 1 started {', '.join(f'{d:.1f}' for d in delays)} s after "
              f"their send (Lambda's queue); {late} started late enough to mark their start; none lost")
    if retried:
        return False, detail + f", but {retried} were sent again"
    if delays[-1] < 0.9:
        return False, detail + ": no call waited, so nothing queued (is the reservation enforced?)"
    return True, detail


def _memory(run: _Run) -> Row:
    ex = _executor(run, "main", "RequestResponse")
    want = 2 * run.options.memory
    future = remote(_calls().touch, executor=ex).map([want])[0]
    _remember(run, [future])
    try:
        future.result(timeout=120)
    except MemoryLimitExceeded as exc:
        return True, f"touching {want} MB on a {run.options.memory} MB function: {exc}"
    except WrenpackError as exc:
        return False, f"touching {want} MB on a {run.options.memory} MB function failed otherwise: {type(exc).__name__}: {exc}"
    except MemoryError:
        return False, f"touching {want} MB raised MemoryError in the call instead of Lambda killing it"
    return False, f"touching {want} MB on a {run.options.memory} MB function was not stopped (memory not enforced here)"


def _timeout(run: _Run) -> Row:
    ex = _executor(run, "main", "RequestResponse", concurrency=2)
    calls = _calls()
    soft = remote(calls.sleep, executor=ex).map([MAIN_TIMEOUT + 2.0])[0]
    # Lambda kills it at its 3 s; 15 s also outlasts an emulator's laxer hard limit (10 s)
    hard = remote(calls.ignore_alarm, executor=ex).map([MAIN_TIMEOUT + 12.0])[0]
    _remember(run, [soft, hard])
    notes, ok = [], True
    for what, future in (("a call past its timeout", soft), ("a call that blocks wrenpack's alarm", hard)):
        try:
            future.result(timeout=120)
            ok = False
            notes.append(f"{what} was not stopped")
        except TaskTimeout as exc:
            notes.append(f"{what}: TaskTimeout ({exc})")
        except WrenpackError as exc:
            ok = False
            notes.append(f"{what}: {type(exc).__name__}, not TaskTimeout ({exc})")
    return ok, "; ".join(notes)


_CHECK_FUNCTIONS: dict[str, Callable[[_Run], Any]] = {
    "cold-start": _cold_start, "sdk": _sdk, "payload": _payload, "requests": _requests,
    "throttling": _throttling, "queue": _queue, "memory": _memory, "timeout": _timeout,
}


# -- cleanup ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ctrl-C during cleanup would leave things behind: it waits until cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _cleanup(run: _Run) -> tuple[bool, str]:
    """Delete what the run created; (all gone, what was deleted or left)."""
    problems: list[str] = []
    for ex in run.executors:
        try:
            ex.shutdown(wait=True, cancel_futures=True)  # calls in flight end before their objects go
        except Exception as exc:  # noqa: BLE001
            problems.append(f"stopping an executor: {exc}")
    lam = run.lam
    deleted = []
    layer_versions = 0
    if lam is not None:
        for name in run.functions.values():
            if _delete(problems, f"function {name}", lambda n=name: lam.delete_function(FunctionName=n)):
                deleted.append(name)
        for layer in run.layers:
            try:
                versions = [v.version for v in undeploy.layer_versions(lam, layer)]
            except WrenpackError as exc:
                versions = []
                problems.append(f"layer {layer} ({exc})")
            for version in versions:
                if _delete(problems, f"layer {layer} version {version}",
                           lambda n=layer, v=version: lam.delete_layer_version(LayerName=n, VersionNumber=v)):
                    layer_versions += 1
        if run.functions:
            try:
                logs = clients.session(run.cfg).client("logs", config=_no_retries())
                for name in run.functions.values():
                    _delete(problems, f"log group of {name}",
                            lambda n=name: logs.delete_log_group(logGroupName=f"/aws/lambda/{n}"), missing_ok=True)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"log groups: {exc}")
    objects = 0
    try:
        store = store_for_config(run.cfg)
        for job in sorted(run.jobs):
            objects += store.delete_prefix(keys.job_prefix(job))
        for key in run.uploaded:
            store.delete(key)
            objects += 1
    except WrenpackError as exc:
        problems.append(f"store objects: {exc}")
    done = (f"deleted {len(deleted)} function(s), {layer_versions} layer version(s), their log groups, "
            f"{objects} object(s) of {len(run.jobs)} job(s) and uploads")
    if problems:
        return False, f"{done}; left behind: {'; '.join(problems)}"
    return True, done


def _delete(problems: list[str], what: str, action: Callable[[], Any], missing_ok: bool = True) -> bool:
    try:
        action()
        return True
    except Exception as exc:  # noqa: BLE001 - each deletion is tried; failures are listed
        code = clients.error_code(exc)
        if missing_ok and code in ("ResourceNotFoundException", "404"):
            return False
        if code == "AccessDeniedException" and what.startswith("log group"):
            problems.append(f"{what} (not allowed: logs:DeleteLogGroup)")
            return False
        problems.append(f"{what} ({code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return False


def encode_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run as JSON: ``ok`` when no row failed (skipped rows do not fail it)."""
    return {"ok": not any(r["ok"] is False for r in rows), "checks": rows}


__all__ = ["AcceptanceOptions", "CHECKS", "encode_rows", "run_acceptance"]
