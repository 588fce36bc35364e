"""Local stand-ins for AWS on 127.0.0.1, shared by tests/aws and benchmarks/.

* ``start_moto``: moto's server mode (S3, the Lambda control plane, IAM, STS)
  in its own process.
* ``Dispatcher``: Lambda's endpoint. Control-plane requests (create, get,
  concurrency, ...) go on to moto, which records the functions; invocations
  run in the official Runtime Interface Emulator (RIE, from the
  ``aws-sam-cli`` wheel) with the official runtime client ``awslambdaric``
  and wrenpack's real handler. Each deployed function gets its own RIEs,
  started on its first invocation with the function's configuration in the
  environment, as Lambda gives it (``lambda_environment``).

  The RIE runs one request at a time, crashes on a second concurrent one and
  answers ``Event`` synchronously, so the dispatcher gives the backend what
  Lambda's endpoint gives it: any number of concurrent requests, ``Event``
  answered 202 at once and queued until one of the function's execution
  environments is free, 404 ResourceNotFoundException for unknown names, the
  account's concurrency (``account_concurrency``) from GetAccountSettings,
  and Lambda's strictness where the RIE forgives (see ``Dispatcher``):
  payload limits, 429 beyond a function's or the account's concurrency, the
  async queue's retries, age limit and duplicates, out-of-memory replies in
  Lambda's shapes, and a sandbox per execution environment (``sandbox.py``:
  1,024 processes/threads, the memory limit, a read-only filesystem but /tmp).
* ``CountingProxy``: an HTTP proxy that counts requests by kind (PUT, GET,
  LIST, ...) on their way to a server, as a bill would.
* ``IdleDroppingProxy``: a TCP proxy that drops connections idle for longer
  than a set time, as NAT gateways and firewalls do.

Nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import collections
import fcntl
import http.client
import io
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from tests.aws.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("WRENPACK_TEST_CACHE", Path.home() / ".cache" / "wrenpack-test"))
RIE_MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"
REGION = "us-east-1"


#: The emulated default function's timeout (seconds). 5, not less: a loaded
#: 2-core machine can take seconds to load even a tiny call's function from S3.
FUNCTION_TIMEOUT = 5
FUNCTION_NAME = "wrenpack-worker"
PYTHON = "%d.%d" % sys.version_info[:2]

#: The emulator's hard time limit is at least this (seconds), see FunctionPool.
MIN_HARD_TIMEOUT = 10
#: Handlers the emulator runs with boto3 preloaded (see rie_handler.py).
PRELOADED = {"wrenpack.worker.handler.handler": "tests.aws.rie_handler.handler"}
#: What the emulator's own tests run (``LambdaEndpoint.deploy_probe``).
PROBE_HANDLER = "tests.aws.probe_handler.handler"



class Unavailable(RuntimeError):
    """A tool the servers need cannot be obtained (the message says why)."""


_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def _port_share() -> tuple[int, int]:
    """(which share of the ports is this test process's, how many shares): one per
    pytest-xdist worker (``gw0``, ``gw1``, ...), one in all for a run in one process."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return index % max(count, 1), max(count, 1)


def free_port() -> int:
    """A free loopback port not handed out before in this session. The kernel
    may offer the same free port twice before either server binds it: two
    emulators started together were seen to get one port, and one died at
    start ("bind: address already in use") while the other answered for both.
    The suite's test processes (-n 2) each take ports of a share of their own
    (``_port_share``: by ``port // 2``, as the kernel hands out ports of one
    parity), so that one's port is not offered to the other before its server binds it."""
    index, count = _port_share()
    with _ports_lock:
        for _ in range(1000 * count):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_given and port // 2 % count == index:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free loopback port that was not handed out already")


def serve_on_loopback(handler_class: type) -> tuple[ThreadingHTTPServer, str, threading.Thread]:
    """An HTTP server on a free 127.0.0.1 port, serving from a daemon thread: (server, url, thread).

    Its loop looks for ``shutdown()`` every 0.05 s (socketserver's default, 0.5 s, is what each
    ``stop()`` of a proxy or a dispatcher waited); requests are served as they come either way."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler_class)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", thread


def wait_listening(port: int, proc: subprocess.Popen, what: str, log: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}; see {log}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of the group is left.

    The SIGKILL is sent even when ``wait`` returned: an RIE was seen left running for
    hours after a session (it logged SIGTERM, then waited forever for its runtime's
    end) although ``wait`` had returned at once, and a leader that exits can leave
    its runtime child behind in the group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str, Any]:
    """moto's server in its own process (in-process it would share our GIL)."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_listening(port, proc, "moto server", log.name)
    except BaseException:
        stop(proc)
        log.close()
        raise
    return proc, f"http://127.0.0.1:{port}", log


def rie_binary() -> Path:
    """The Runtime Interface Emulator's binary in CACHE, taken from the aws-sam-cli wheel
    (downloaded first when missing). Fetched under a lock, as ``pythons.ensure`` builds a
    venv: the suite's two test processes (-n 2) start their session fixtures together, and
    on a fresh cache (CI) both downloaded into the same folder and wrote the same ``.tmp``
    file, so one could replace the target while the other still wrote it (a truncated
    binary, or "text file busy")."""
    target = CACHE / "aws-lambda-rie-x86_64"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process fetching it: wait, then use what it made
        if target.exists():
            return target
        wheels = sorted(CACHE.glob("aws_sam_cli-*.whl"))
        if not wheels:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "aws-sam-cli", "-d", str(CACHE)],
                capture_output=True, text=True, timeout=300,
            )
            wheels = sorted(CACHE.glob("aws_sam_cli-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise Unavailable(f"`pip download aws-sam-cli` failed: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            try:
                data = zf.read(RIE_MEMBER)
            except KeyError:
                raise Unavailable(f"{wheels[-1].name} has no {RIE_MEMBER}") from None
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(target)  # last: a target that exists is whole
        return target


# -- Lambda's limits, as the dispatcher enforces them ------------------------------------------
#: Invoke request payloads: 6 MB synchronous, 1 MB asynchronous (lambda-facts.md).
SYNC_REQUEST_LIMIT = 6 * 1024 * 1024
EVENT_REQUEST_LIMIT = 1024 * 1024
#: A synchronous response may be 100 bytes over 6 MB: what Lambda (and the RIE) allow.
RESPONSE_LIMIT = 6 * 1024 * 1024 + 100
#: Lambda's async queue: a throttled event is tried again after 1 s, doubling up to 5 min,
#: until it is older than the function's MaximumEventAgeInSeconds (default 6 h).
ASYNC_BACKOFF = (1.0, 300.0)
DEFAULT_MAX_EVENT_AGE = 21600.0

#: How Lambda has reported a runtime its memory limit killed: a synchronous reply's body
#: (with ``X-Amz-Function-Error: Unhandled``), by shape. ``{rid}``: the request id.
OOM_SHAPES: dict[str, dict[str, Any]] = {
    "out-of-memory": {"errorType": "Runtime.OutOfMemory",
                      "errorMessage": "RequestId: {rid} Error: Runtime exited with error: signal: killed"},
    "out-of-memory-no-reason": {"errorType": "Runtime.OutOfMemory",
                                "errorMessage": "RequestId: {rid} Error: Runtime exited without providing a reason"},
    "exit-error-killed": {"errorType": "Runtime.ExitError",
                          "errorMessage": "RequestId: {rid} Error: Runtime exited with error: signal: killed"},
    "exit-status-137": {"errorType": "Runtime.ExitError",
                        "errorMessage": "RequestId: {rid} Error: Runtime exited with error: exit status 137"},
    "process-exited": {"errorMessage": "RequestId: {rid} Process exited before completing request"},
    "memory-error": {"errorMessage": "", "errorType": "MemoryError", "requestId": "{rid}", "stackTrace": []},
}
#: The keys of the document a runtime's unhandled error becomes.
_ERROR_KEYS = {"errorMessage", "errorType", "requestId", "stackTrace"}


def oom_reply(shape: str, request_id: str) -> bytes:
    """The body of Lambda's reply for a runtime killed at its memory limit, in ``shape``."""
    doc = {k: v.replace("{rid}", request_id) if isinstance(v, str) else v for k, v in OOM_SHAPES[shape].items()}
    return json.dumps(doc).encode()


def is_error_document(body: bytes) -> bool:
    """Whether a runtime's 200 answer is its report of an unhandled error (which Lambda
    flags with ``X-Amz-Function-Error``; the RIE does not)."""
    if not body.startswith(b"{") or b'"errorType"' not in body[:4096] and b'"errorMessage"' not in body[:4096]:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and bool(doc) and set(doc) <= _ERROR_KEYS


def lambda_environment(name: str, conf: dict[str, Any], base_env: dict[str, str], handler: str,
                       hard_timeout: int, python_version: str = PYTHON, python: str = sys.executable) -> dict[str, str]:
    """The environment Lambda gives a function's runtime: its defined variables
    (docs: "Defined runtime environment variables") and the function's own
    ``Environment``, nothing of this machine's but what the emulator needs:
    ``PYTHONPATH`` (the checkout, which stands for the deployment package),
    the stand-in credentials and AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE
    (so no file of this machine's is read), the stand-in endpoints a test names
    (``AWS_ENDPOINT_URL*``) and where it unpacks runtime archives, and the RIE's own
    ``AWS_LAMBDA_FUNCTION_TIMEOUT`` (how it learns the timeout; not Lambda's)."""
    env = dict((conf.get("Environment") or {}).get("Variables") or {})
    for key in ("PYTHONPATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        if key in base_env:
            env[key] = base_env[key]
    # Where AWS is reached: on Lambda the real endpoints; here the stand-ins a test names
    # (AWS_ENDPOINT_URL_S3, ...), and where a test wants runtime archives unpacked.
    for key, value in base_env.items():
        if key.startswith("AWS_ENDPOINT_URL") or key == "WRENPACK_RUNTIME_ROOT":
            env[key] = value
    # A function may set PYTHONPATH itself (Lambda does not reserve it): its entries come first.
    own_path = ((conf.get("Environment") or {}).get("Variables") or {}).get("PYTHONPATH")
    if own_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (own_path, base_env.get("PYTHONPATH")) if p)
    memory = int(conf.get("MemorySize") or 128)
    stream = time.strftime("%Y/%m/%d", time.gmtime()) + "/[$LATEST]" + uuid.uuid4().hex
    # Reserved variables last: a function's Environment cannot override them on Lambda.
    env.update(
        PATH=f"{os.path.dirname(python)}:/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        LANG="en_US.UTF-8",
        TZ=":UTC",
        _HANDLER=handler,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EXECUTION_ENV=f"AWS_Lambda_python{python_version}",
        AWS_LAMBDA_FUNCTION_NAME=name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory),
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_INITIALIZATION_TYPE="on-demand",
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}",
        AWS_LAMBDA_LOG_STREAM_NAME=stream,
        LAMBDA_TASK_ROOT=base_env.get("LAMBDA_TASK_ROOT", str(REPO)),
        LAMBDA_RUNTIME_DIR=str(Path(awslambdaric_dir()).parent),
        AWS_LAMBDA_FUNCTION_TIMEOUT=str(hard_timeout),
    )
    return env


def awslambdaric_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("awslambdaric")
    return os.path.dirname(spec.origin) if spec and spec.origin else str(REPO)


class Emulator:
    """One RIE process (and, once invoked, its awslambdaric runtime), confined as a
    Lambda sandbox is (``sandbox.Sandbox``) where this machine allows it."""

    def __init__(self, binary: Path, env: dict[str, str], log_path: Path, timeout: float,
                 sandbox: Sandbox | None = None, python: str = sys.executable) -> None:
        self.port = free_port()
        self.api_port = api_port = free_port()
        self.timeout = timeout
        self.sandbox = sandbox
        self.log = open(log_path, "wb")
        runtime = [python, "-m", "awslambdaric", env.get("_HANDLER", "wrenpack.worker.handler.handler")]
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                "--runtime-api-address", f"127.0.0.1:{api_port}",
                *(sandbox.command(runtime) if sandbox is not None else runtime),
            ],
            cwd=str(REPO), env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, settle: bool = True) -> None:
        """Wait until the RIE listens; with ``settle``, then ``check_alive`` after a moment
        (a pool starting several settles once for them all)."""
        wait_listening(self.port, self.proc, "RIE", self.log.name)
        if settle:
            time.sleep(0.05)
            self.check_alive()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:  # something else answered on its port
            raise RuntimeError(f"RIE exited with {self.proc.returncode} after its port answered; see {self.log.name}")

    def forward(self, body: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the kernel's OOM killer struck during the invocation)."""
        kills = self.sandbox.oom_kills() if self.sandbox is not None else 0
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout + 60)
        try:
            conn.request("POST", "/2015-03-31/functions/function/invocations", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, out = resp.status, resp.read()
        finally:
            conn.close()
        oom = self.sandbox is not None and self.sandbox.oom_kills() > kills
        return status, out, oom

    def stop(self) -> None:
        stop(self.proc)
        if self.sandbox is not None:
            self.sandbox.remove()
        self.log.close()


class FunctionPool:
    """The execution environments of one deployed function, and its concurrency."""

    def __init__(self, name: str, conf: dict[str, Any], emulators: list[Emulator],
                 reserved: int | None = None, max_event_age: float = DEFAULT_MAX_EVENT_AGE) -> None:
        self.name = name
        self.conf = conf
        self.emulators = emulators
        self.reserved = reserved
        self.max_event_age = max_event_age
        #: invocations running (or waiting for an idle environment) now
        self.running = 0
        self.idle: "queue.Queue[Emulator]" = queue.Queue()
        for emu in emulators:
            self.idle.put(emu)


def _event_ids(body: bytes) -> tuple[str | None, str | None, int, int]:
    """(job_id, call_id, segment, attempt) of a wrenpack event (Nones for anything else)."""
    try:
        event = json.loads(body)
        return event.get("job_id"), event.get("call_id"), int(event.get("segment", 0)), int(event.get("attempt", 0))
    except (ValueError, AttributeError, TypeError):
        return None, None, 0, 0


class Dispatcher:
    """Lambda's endpoint on 127.0.0.1: control plane -> moto, invocations -> RIEs.

    As strict as Lambda, where the RIE alone is not:

    * payloads: a request over 6 MB (RequestResponse) or 1 MB (Event) is answered
      413 RequestEntityTooLargeException; a response over 6 MB becomes the function
      error ``Function.ResponseSizeTooLarge``;
    * a runtime's unhandled error and its death come back as Lambda gives them:
      200 with ``X-Amz-Function-Error: Unhandled``; a runtime the kernel killed at
      the function's memory (its sandbox's memory cgroup) in Lambda's shape
      ``oom_shape`` (one of ``OOM_SHAPES``);
    * concurrency: a RequestResponse call beyond the function's reserved
      concurrency or the account's (``account_concurrency``) is answered 429
      TooManyRequestsException at once; an Event call is queued (202) and, while
      throttled, tried again with backoff (``async_backoff``) until it is older
      than the function's MaximumEventAgeInSeconds (``max_event_age`` overrides
      it), then dropped;
    * ``duplicates``: the share of Event calls delivered twice (off by default;
      Lambda's async queue delivers at least once);
    * each execution environment is a sandbox (``sandbox.Sandbox``): 1,024
      processes/threads, the function's memory, 1,024 file descriptors, a
      read-only filesystem but for a private /tmp (and ``shared`` directories),
      and Lambda's environment variables (``lambda_environment``).

    What the tests look at: ``invocations`` (type, outcome), ``calls`` (every
    run), ``arrived``, ``queue_log`` (what the async queue did to each event:
    throttled, dropped, duplicate, ran (with the handler's reply)).
    """

    #: the interpreter the runtimes run (awslambdaric, the handler) and its X.Y (tests/aws/pythons.py sets others)
    python, python_version = sys.executable, PYTHON
    _stopped = False
    #: IAM in front of every request (iam_proxy.Enforcer.judge): (method, path, headers, body) ->
    #: None to go on, or the refusal to answer, (status, headers, body)
    authorize: Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes] | None] | None = None

    def __init__(self, binary: Path, base_env: dict[str, str], log_dir: Path, moto_url: str,
                 per_function: int = 3, shared: list[str] | tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.base_env = base_env
        self.log_dir = log_dir
        self.moto_url = moto_url
        self.per_function = per_function
        self.shared = [str(s) for s in shared]
        #: execution environments of particular functions (default ``per_function``)
        self.environments: dict[str, int] = {}
        self.account_concurrency = 1000
        self.oom_shape = "out-of-memory"
        self.async_backoff = ASYNC_BACKOFF
        #: seconds an Event call may wait in the queue, for every function (None: each function's own)
        self.max_event_age: float | None = None
        self.duplicates = 0.0
        #: when a duplicate is delivered: uniformly within this many seconds of the first delivery's queueing
        self.duplicate_delay = 0.3
        self._random = random.Random(7)
        self.pools: dict[str, FunctionPool] = {}
        self._pools_lock = threading.Lock()
        self.max_background = 0  # most Event invocations running at once
        self.throttle_next = 0  # answer this many invocations with 429
        self.invocations: list[tuple[str, str]] = []  # (invocation type, outcome)
        #: every invocation that ran: (function, job_id, call_id, segment, attempt)
        self.calls: list[tuple[str, str, str, int, int]] = []
        #: (job_id, call_id) -> when its first invocation request arrived (time.time()), queued or not
        self.arrived: dict[tuple[str, str], float] = {}
        #: what the async queue did: (function, job_id, call_id, "throttled" | "dropped" | "duplicate" | "ran", reply)
        self.queue_log: list[tuple[str, str | None, str | None, str, Any]] = []
        self._background = 0
        self._running = 0
        self._account_running = 0
        self._cv = threading.Condition()
        self.server, self.url, self._thread = serve_on_loopback(self._handler_class())

    # -- functions -----------------------------------------------------------
    #: the control-plane client ``pool`` asks moto with (made once: a client takes ~0.1 s to make)
    _moto_client: Any = None

    def _moto_lambda(self) -> Any:
        """(Called with ``_pools_lock`` held.)"""
        import boto3

        if self._moto_client is None:
            self._moto_client = boto3.client("lambda", endpoint_url=self.moto_url, region_name=REGION)
        return self._moto_client

    def pool(self, name: str) -> FunctionPool | None:
        with self._pools_lock:
            found = self.pools.get(name)
            if found is not None or self._stopped:
                return found
            lam = self._moto_lambda()
            try:
                conf = lam.get_function_configuration(FunctionName=name)
            except lam.exceptions.ResourceNotFoundException:
                return None
            reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
            try:
                age = float(lam.get_function_event_invoke_config(FunctionName=name).get("MaximumEventAgeInSeconds")
                            or DEFAULT_MAX_EVENT_AGE)
            except Exception:  # noqa: BLE001 - none configured: Lambda's default
                age = DEFAULT_MAX_EVENT_AGE
            count = self.environments.get(name, self.per_function)
            count = count if reserved is None else max(0, min(reserved, count))
            handler = PRELOADED.get(conf.get("Handler") or "", conf.get("Handler") or "wrenpack.worker.handler.handler")
            # The RIE counts a runtime's init in its first call's timeout and Lambda does
            # not: its hard limit is kept at >= 10 s, so a loaded machine does not kill a
            # cold runtime; the handler still stops each call at its own timeout (TaskTimeout).
            hard = max(int(conf.get("Timeout") or 3), MIN_HARD_TIMEOUT)
            memory = int(conf.get("MemorySize") or 128)
            emulators = []
            for i in range(count):
                tag = f"{name}-{i}"
                sandbox = Sandbox(f"wrenpack-rie-{os.getpid()}-{tag}", memory, self.log_dir / f"tmp-{tag}", self.shared)
                env = lambda_environment(name, conf, self.base_env, handler, hard, self.python_version, self.python)
                emulators.append(Emulator(self.binary, env, self.log_dir / f"rie-{tag}.log", float(hard), sandbox,
                                          self.python))
            for emu in emulators:
                emu.wait_ready(settle=False)
            time.sleep(0.05)
            for emu in emulators:
                emu.check_alive()
            # Start each runtime now: Lambda does not count a cold start in the
            # call's timeout, the RIE would (and the tests' timeouts are 3 s).
            warm = [threading.Thread(target=emu.forward, args=(b'{"warmup": true}',)) for emu in emulators]
            for t in warm:
                t.start()
            for t in warm:
                t.join()
            found = self.pools[name] = FunctionPool(name, conf, emulators, reserved, age)
            return found

    @property
    def emulators(self) -> list[Emulator]:
        return [emu for pool in self.pools.values() for emu in pool.emulators]

    # -- concurrency ---------------------------------------------------------
    def _admit(self, pool: FunctionPool) -> str | None:
        """Take one of the function's and the account's concurrency, or say why not (429's Reason)."""
        with self._cv:
            if pool.reserved is not None and pool.running >= pool.reserved:
                return "ReservedFunctionConcurrentInvocationLimitExceeded"
            if self._account_running >= self.account_concurrency:
                return "ConcurrentInvocationLimitExceeded"
            pool.running += 1
            self._account_running += 1
            return None

    def _release(self, pool: FunctionPool) -> None:
        with self._cv:
            pool.running -= 1
            self._account_running -= 1
            self._cv.notify_all()

    def _run(self, pool: FunctionPool, body: bytes) -> tuple[int, bytes, bool]:
        job_id, call_id, segment, attempt = _event_ids(body)
        if job_id is not None:
            self.calls.append((pool.name, job_id, call_id, segment, attempt))
        emu = pool.idle.get()
        try:
            return emu.forward(body)
        finally:
            pool.idle.put(emu)

    def _note_arrival(self, body: bytes) -> None:
        job_id, call_id, _, _ = _event_ids(body)
        if job_id is not None and call_id is not None:
            self.arrived.setdefault((job_id, call_id), time.time())

    # -- the async queue -------------------------------------------------------
    def _enqueue(self, pool: FunctionPool, body: bytes) -> None:
        deliveries = [0.0]
        if self.duplicates and self._random.random() < self.duplicates:
            deliveries.append(self._random.uniform(0, self.duplicate_delay))
        queued_at = time.time()
        for i, delay in enumerate(deliveries):
            with self._cv:
                self._background += 1
            threading.Thread(target=self._deliver, args=(pool, body, queued_at, delay, i > 0), daemon=True).start()

    def _deliver(self, pool: FunctionPool, body: bytes, queued_at: float, delay: float, duplicate: bool) -> None:
        job_id, call_id, _, _ = _event_ids(body)
        try:
            if duplicate:
                self.queue_log.append((pool.name, job_id, call_id, "duplicate", None))
            time.sleep(delay)
            age_limit = pool.max_event_age if self.max_event_age is None else self.max_event_age
            backoff = self.async_backoff[0]
            while self._admit(pool) is not None:
                if time.time() + backoff - queued_at > age_limit:
                    self.queue_log.append((pool.name, job_id, call_id, "dropped", None))
                    return
                self.queue_log.append((pool.name, job_id, call_id, "throttled", None))
                time.sleep(backoff)
                backoff = min(backoff * 2, self.async_backoff[1])
            with self._cv:
                self._running += 1
                self.max_background = max(self.max_background, self._running)
            try:
                status, out, oom = self._run(pool, body)
            finally:
                self._release(pool)
                with self._cv:
                    self._running -= 1
            try:
                reply = json.loads(out) if status < 500 and not oom else None
            except ValueError:
                reply = None
            self.queue_log.append((pool.name, job_id, call_id, "ran", reply))
        finally:
            with self._cv:
                self._background -= 1
                self._cv.notify_all()

    def drain(self, timeout: float = 60) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._background == 0, timeout=timeout)

    # -- HTTP ------------------------------------------------------------------
    def _proxy(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        where = urlsplit(self.moto_url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            handler.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(out)))
            handler.end_headers()
            handler.wfile.write(out)
        finally:
            conn.close()

    def _sync_reply(self, status: int, out: bytes, oom: bool) -> tuple[bytes, str | None]:
        """(body, X-Amz-Function-Error) of Lambda's 200 answer to a RequestResponse call."""
        if oom:
            rid = out.decode("utf-8", "replace").partition("RequestId: ")[2].split(" ")[0] or str(uuid.uuid4())
            return oom_reply(self.oom_shape, rid), "Unhandled"
        if len(out) > RESPONSE_LIMIT:
            doc = {"errorMessage": f"Response payload size ({len(out)} bytes) exceeded maximum allowed payload size "
                                   f"({RESPONSE_LIMIT} bytes).", "errorType": "Function.ResponseSizeTooLarge"}
            return json.dumps(doc).encode(), "Unhandled"
        # The RIE says 502/500 for a runtime that died (and a response too large):
        # Lambda answers 200 with the function error; and a handler's own exception
        # is flagged as one, which the RIE does not do.
        if status >= 500 or is_error_document(out):
            return out, "Unhandled"
        return out, None

    def _handler_class(self):
        dispatcher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: bytes, error_type: str | None = None,
                       function_error: str | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    if error_type:
                        self.send_header("x-amzn-ErrorType", error_type)
                    if function_error:
                        self.send_header("X-Amz-Function-Error", function_error)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client went away (a dropped connection): Lambda's reply is lost too
                    self.close_connection = True

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _refused(self, body: bytes) -> bool:
                """Whether IAM refused the request (``authorize``), its refusal then sent."""
                if dispatcher.authorize is None:
                    return False
                refusal = dispatcher.authorize(self.command, self.path, dict(self.headers.items()), body)
                if refusal is None:
                    return False
                status, headers, out = refusal
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                return True

            def do_GET(self):  # noqa: N802
                body = self._body()
                if self._refused(body):
                    return
                if self.path.split("?")[0].rstrip("/").endswith("/account-settings"):
                    n = dispatcher.account_concurrency
                    doc = {"AccountLimit": {"ConcurrentExecutions": n, "UnreservedConcurrentExecutions": n,
                                            "TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000,
                                            "CodeSizeZipped": 52428800},
                           "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(dispatcher.pools)}}
                    return self._reply(200, json.dumps(doc).encode())
                dispatcher._proxy(self, body)

            def do_PUT(self):  # noqa: N802
                body = self._body()
                if not self._refused(body):
                    dispatcher._proxy(self, body)

            def do_DELETE(self):  # noqa: N802
                body = self._body()
                if not self._refused(body):
                    dispatcher._proxy(self, body)

            def do_POST(self):  # noqa: N802
                body = self._body()
                if self._refused(body):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if not (len(parts) == 4 and parts[1] == "functions" and parts[3] == "invocations"):
                    return dispatcher._proxy(self, body)
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                limit = EVENT_REQUEST_LIMIT if kind == "Event" else SYNC_REQUEST_LIMIT
                if len(body) > limit:
                    dispatcher.invocations.append((kind, "too-large"))
                    message = (f"{len(body)} byte payload is too large for the Event invocation type (limit {limit} bytes)"
                               if kind == "Event" else f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
                    msg = {"Type": "User", "message": message}
                    return self._reply(413, json.dumps(msg).encode(), "RequestEntityTooLargeException")
                dispatcher._note_arrival(body)
                pool = dispatcher.pool(parts[2])
                if pool is None or not pool.emulators:
                    dispatcher.invocations.append((kind, "not-found"))
                    msg = {"Type": "User", "message": f"Function not found: {parts[2]}"}
                    return self._reply(404, json.dumps(msg).encode(), "ResourceNotFoundException")
                with dispatcher._cv:
                    throttled = dispatcher.throttle_next > 0
                    if throttled:
                        dispatcher.throttle_next -= 1
                reason = "ReservedFunctionConcurrentInvocationLimitExceeded" if throttled else None
                if kind == "Event" and not throttled:
                    dispatcher.invocations.append((kind, "queued"))
                    dispatcher._enqueue(pool, body)
                    return self._reply(202, b"")
                if reason is None:
                    reason = dispatcher._admit(pool)
                    admitted = reason is None
                else:
                    admitted = False
                if not admitted:
                    dispatcher.invocations.append((kind, "throttled"))
                    msg = {"Reason": reason, "Type": "User", "message": "Rate Exceeded."}
                    return self._reply(429, json.dumps(msg).encode(), "TooManyRequestsException")
                dispatcher.invocations.append((kind, "run"))
                try:
                    status, out, oom = dispatcher._run(pool, body)
                finally:
                    dispatcher._release(pool)
                out, function_error = dispatcher._sync_reply(status, out, oom)
                return self._reply(200, out, function_error=function_error)

        return Handler

    def stop(self) -> None:
        self.drain(timeout=30)
        self.server.shutdown()
        self.server.server_close()
        with self._pools_lock:  # a pool still starting (a request in flight) is stopped too; none starts after
            self._stopped = True
            for emu in self.emulators:
                emu.stop()


class LambdaEndpoint(Dispatcher):
    """The dispatcher plus ``deploy``: wrenpack's deploy code against it."""

    function_name = FUNCTION_NAME
    role_arn = ""

    def deploy(self, memory: int = 1024, timeout: float = FUNCTION_TIMEOUT, ephemeral_storage: int = 512,
               reserved: int | None = None, store_url: str | None = "s3://wrenpack-test",
               environments: int | None = None) -> str:
        import boto3

        from wrenpack.backends.aws.deploy import ENV_FAMILY, ENV_STORE, HANDLER, FunctionSettings, deploy_function

        settings = FunctionSettings.for_call(memory, timeout, ephemeral_storage, python=self.python_version)
        name = settings.function_name(self.function_name)
        if environments is not None:
            self.environments[name] = environments
        lam = boto3.client("lambda", endpoint_url=self.url, region_name=REGION)
        env = {"WRENPACK_DEPLOYED_PYTHON": self.python_version, ENV_FAMILY: self.function_name}
        if store_url:
            env[ENV_STORE] = store_url
        package = {"Runtime": f"python{self.python_version}", "Handler": HANDLER, "Layers": [], "Architectures": ["x86_64"]}
        deploy_function(lam, name, settings, {"ZipFile": _package()}, package, env, role=self.role_arn, reserved=reserved)
        return name


    def deploy_probe(self, name: str, memory: int = 128, timeout: int = 5, reserved: int | None = None,
                     environments: int = 1) -> str:
        """A function whose runtime runs ``tests.aws.probe_handler`` (the emulator's own
        tests: it does what each event asks and loads nothing of wrenpack's), created in
        moto directly, with ``environments`` execution environments."""
        import boto3

        lam = boto3.client("lambda", endpoint_url=self.moto_url, region_name=REGION)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("probe.txt", "the runtime imports tests.aws.probe_handler from the checkout")
        lam.create_function(FunctionName=name, Runtime=f"python{PYTHON}", Role=self.role_arn, Handler=PROBE_HANDLER,
                            Code={"ZipFile": buf.getvalue()}, MemorySize=memory, Timeout=timeout)
        if reserved is not None:
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
        self.environments[name] = environments
        return name


_PACKAGE: list[bytes] = []


def _package() -> bytes:
    from wrenpack.backends.aws.deploy import handler_package

    if not _PACKAGE:
        _PACKAGE.append(handler_package())
    return _PACKAGE[0]


class CountingProxy:
    """Forwards HTTP to ``target`` and counts requests by kind, as S3 bills them."""

    def __init__(self, target: str, classify: Callable[[str, str, dict[str, str]], str] | None = None) -> None:
        self.target = urlsplit(target)
        self.classify = classify or s3_request_kind
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str]] = []  # (kind, path)
        self._lock = threading.Lock()
        self.server, self.url, self._thread = serve_on_loopback(self._handler_class())

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = proxy.classify(self.command, self.path, dict(self.headers.items()))
                with proxy._lock:
                    proxy.counts[kind] += 1
                    proxy.log.append((kind, self.path))
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=300)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length",)}
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                                 headers=headers)
                    resp = conn.getresponse()
                    out = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(out)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def s3_request_kind(method: str, path: str, headers: dict[str, str]) -> str:
    """How S3 prices a request: PUT/COPY/POST/LIST at one rate, GET/HEAD at another, DELETE free."""
    query = urlsplit(path).query
    if method == "GET" and ("list-type=" in query or urlsplit(path).path.rstrip("/").count("/") <= 1):
        return "LIST"
    if method in ("GET", "HEAD"):
        return method
    if method == "POST" and "delete" in query:
        return "DELETE"
    return method


class IdleDroppingProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` that closes both sides of a connection
    after ``idle_s`` seconds without a byte either way while a request waits for its
    answer, as a NAT gateway or a firewall drops the idle connection of a long
    synchronous call (a kernel's keepalive probes would not reach a proxy in user
    space, so they do not keep a connection open here). A connection idle between
    requests is left alone: dropping it would race with the client's next request,
    which no client can tell from a drop during a call."""

    def __init__(self, target: str, idle_s: float) -> None:
        where = urlsplit(target)
        self.target = (where.hostname, where.port)
        self.idle_s = idle_s
        self.dropped = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", free_port()))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        import selectors

        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        waiting = False  # a request went up and its answer has not begun
        try:
            while not self._stop.is_set():
                ready = sel.select(timeout=self.idle_s if waiting else 0.5)
                if not ready:
                    if waiting:
                        with self._lock:
                            self.dropped += 1
                        return
                    continue
                for key, _ in ready:
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
                    waiting = key.fileobj is client
        except OSError:
            return
        finally:
            sel.close()
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
