"""Local stand-ins for AWS on 127.0.0.1, shared by tests/aws and benchmarks/.

* ``start_moto``: moto's server mode (S3, the Lambda control plane, IAM, STS)
  in its own process.
* ``Dispatcher``: Lambda's endpoint. Control-plane requests (create, get,
  concurrency, ...) go on to moto, which records the functions; invocations
  run in the official Runtime Interface Emulator (RIE, from the
  ``aws-sam-cli`` wheel) with the official runtime client ``awslambdaric``
  and wrenpack's real handler. Each deployed function gets its own RIEs,
  started on its first invocation with the function's configuration in the
  environment, as Lambda gives it (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``,
  ``AWS_LAMBDA_FUNCTION_TIMEOUT``, its ``Environment`` variables).

  The RIE runs one request at a time, crashes on a second concurrent one and
  answers ``Event`` synchronously, so the dispatcher gives the backend what
  Lambda's endpoint gives it: any number of concurrent requests, ``Event``
  answered 202 at once and queued until one of the function's execution
  environments is free (its concurrency: reserved concurrency if set, else
  ``per_function``), 404 ResourceNotFoundException for unknown names, the
  account's concurrency (``account_concurrency``) from GetAccountSettings and
  (when a test asks) 429 TooManyRequestsException.
* ``CountingProxy``: an HTTP proxy that counts requests by kind (PUT, GET,
  LIST, ...) on their way to a server, as a bill would.

Nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import collections
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

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



class Unavailable(RuntimeError):
    """A tool the servers need cannot be obtained (the message says why)."""


_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A free loopback port not handed out before in this session. The kernel
    may offer the same free port twice before either server binds it: two
    emulators started together were seen to get one port, and one died at
    start ("bind: address already in use") while the other answered for both."""
    with _ports_lock:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free loopback port that was not handed out already")


def serve_on_loopback(handler_class: type) -> tuple[ThreadingHTTPServer, str, threading.Thread]:
    """An HTTP server on a free 127.0.0.1 port, serving from a daemon thread: (server, url, thread)."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler_class)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
    target = CACHE / "aws-lambda-rie-x86_64"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
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
    tmp.replace(target)
    return target


class Emulator:
    """One RIE process (and, once invoked, its awslambdaric runtime)."""

    def __init__(self, binary: Path, env: dict[str, str], log_path: Path, timeout: float, python: str = sys.executable) -> None:
        self.port = free_port()
        self.api_port = api_port = free_port()
        self.timeout = timeout
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                "--runtime-api-address", f"127.0.0.1:{api_port}",
                python, "-m", "awslambdaric", env.pop("_HANDLER", "wrenpack.worker.handler.handler"),
            ],
            cwd=str(REPO), env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        wait_listening(self.port, self.proc, "RIE", self.log.name)
        time.sleep(0.05)
        if self.proc.poll() is not None:  # something else answered on its port
            raise RuntimeError(f"RIE exited with {self.proc.returncode} after its port answered; see {self.log.name}")

    def forward(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout + 60)
        try:
            conn.request("POST", "/2015-03-31/functions/function/invocations", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


class FunctionPool:
    """The execution environments of one deployed function."""

    def __init__(self, name: str, conf: dict[str, Any], emulators: list[Emulator]) -> None:
        self.name = name
        self.conf = conf
        self.emulators = emulators
        self.idle: "queue.Queue[Emulator]" = queue.Queue()
        for emu in emulators:
            self.idle.put(emu)


class Dispatcher:
    """Lambda's endpoint on 127.0.0.1: control plane -> moto, invocations -> RIEs."""

    #: the interpreter the runtimes run (awslambdaric, the handler) and its X.Y (tests/aws/pythons.py sets others)
    python, python_version = sys.executable, PYTHON
    _stopped = False

    def __init__(self, binary: Path, base_env: dict[str, str], log_dir: Path, moto_url: str,
                 per_function: int = 3) -> None:
        self.binary = binary
        self.base_env = base_env
        self.log_dir = log_dir
        self.moto_url = moto_url
        self.per_function = per_function
        #: execution environments of particular functions (default ``per_function``)
        self.environments: dict[str, int] = {}
        self.account_concurrency = 1000
        self.pools: dict[str, FunctionPool] = {}
        self._pools_lock = threading.Lock()
        self.max_background = 0  # most Event invocations running at once
        self.throttle_next = 0  # answer this many invocations with 429
        self.invocations: list[tuple[str, str]] = []  # (invocation type, outcome)
        #: every invocation that ran: (function, job_id, call_id, segment, attempt)
        self.calls: list[tuple[str, str, str, int, int]] = []
        #: (job_id, call_id) -> when its first invocation request arrived (time.time()), queued or not
        self.arrived: dict[tuple[str, str], float] = {}
        self._background = 0
        self._running = 0
        self._cv = threading.Condition()
        self.server, self.url, self._thread = serve_on_loopback(self._handler_class())

    # -- functions -----------------------------------------------------------
    def _moto_lambda(self) -> Any:
        import boto3

        return boto3.client("lambda", endpoint_url=self.moto_url, region_name=REGION)

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
            count = self.environments.get(name, self.per_function)
            count = count if reserved is None else max(0, min(reserved, count))
            env = dict(self.base_env)
            env.update((conf.get("Environment") or {}).get("Variables") or {})
            env.update(
                AWS_LAMBDA_FUNCTION_NAME=name,
                AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(conf.get("MemorySize") or 128),
                # The RIE counts a runtime's init in its first call's timeout and Lambda does
                # not: its hard limit is kept at >= 10 s, so a loaded machine does not kill a
                # cold runtime; the handler still stops each call at its own timeout (TaskTimeout).
                AWS_LAMBDA_FUNCTION_TIMEOUT=str(max(int(conf.get("Timeout") or 3), MIN_HARD_TIMEOUT)),
                _HANDLER=PRELOADED.get(conf.get("Handler") or "", conf.get("Handler") or "wrenpack.worker.handler.handler"),
            )
            emulators = [Emulator(self.binary, dict(env), self.log_dir / f"rie-{name}-{i}.log", float(env["AWS_LAMBDA_FUNCTION_TIMEOUT"]), self.python)
                         for i in range(count)]
            for emu in emulators:
                emu.wait_ready()
            # Start each runtime now: Lambda does not count a cold start in the
            # call's timeout, the RIE would (and the tests' timeouts are 3 s).
            warm = [threading.Thread(target=emu.forward, args=(b'{"warmup": true}',)) for emu in emulators]
            for t in warm:
                t.start()
            for t in warm:
                t.join()
            found = self.pools[name] = FunctionPool(name, conf, emulators)
            return found

    @property
    def emulators(self) -> list[Emulator]:
        return [emu for pool in self.pools.values() for emu in pool.emulators]

    def _run(self, pool: FunctionPool, body: bytes) -> tuple[int, bytes]:
        try:
            event = json.loads(body)
            self.calls.append((pool.name, event.get("job_id"), event.get("call_id"),
                               int(event.get("segment", 0)), int(event.get("attempt", 0))))
        except (ValueError, AttributeError):
            pass
        emu = pool.idle.get()
        try:
            return emu.forward(body)
        finally:
            pool.idle.put(emu)

    def _note_arrival(self, body: bytes) -> None:
        try:
            event = json.loads(body)
            self.arrived.setdefault((event["job_id"], event["call_id"]), time.time())
        except (ValueError, KeyError, TypeError):
            pass

    def _event(self, pool: FunctionPool, body: bytes) -> None:
        with self._cv:
            self._running += 1
            self.max_background = max(self.max_background, self._running)
        try:
            self._run(pool, body)
        finally:
            with self._cv:
                self._running -= 1
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

    def _handler_class(self):
        dispatcher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: bytes, error_type: str | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if error_type:
                    self.send_header("x-amzn-ErrorType", error_type)
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):  # noqa: N802
                body = self._body()
                if self.path.split("?")[0].rstrip("/").endswith("/account-settings"):
                    n = dispatcher.account_concurrency
                    doc = {"AccountLimit": {"ConcurrentExecutions": n, "UnreservedConcurrentExecutions": n,
                                            "TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000,
                                            "CodeSizeZipped": 52428800},
                           "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(dispatcher.pools)}}
                    return self._reply(200, json.dumps(doc).encode())
                dispatcher._proxy(self, body)

            def do_PUT(self):  # noqa: N802
                dispatcher._proxy(self, self._body())

            def do_DELETE(self):  # noqa: N802
                dispatcher._proxy(self, self._body())

            def do_POST(self):  # noqa: N802
                body = self._body()
                parts = self.path.split("?")[0].strip("/").split("/")
                if not (len(parts) == 4 and parts[1] == "functions" and parts[3] == "invocations"):
                    return dispatcher._proxy(self, body)
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
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
                if throttled:
                    dispatcher.invocations.append((kind, "throttled"))
                    msg = {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "Type": "User", "message": "Rate Exceeded."}
                    return self._reply(429, json.dumps(msg).encode(), "TooManyRequestsException")
                if kind == "Event":
                    dispatcher.invocations.append((kind, "queued"))
                    with dispatcher._cv:
                        dispatcher._background += 1
                    threading.Thread(target=dispatcher._event, args=(pool, body), daemon=True).start()
                    return self._reply(202, b"")
                dispatcher.invocations.append((kind, "run"))
                status, out = dispatcher._run(pool, body)
                # Lambda answers 200 for a function's own errors too; RIE may say 502/500
                # for a runtime that died, which Lambda reports as 200 + FunctionError.
                if status >= 500:
                    self.send_response(200)
                    self.send_header("X-Amz-Function-Error", "Unhandled")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                return self._reply(status, out)

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
