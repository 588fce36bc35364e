"""Real protocol servers on 127.0.0.1 for the AWS path, started once per session.

* S3 and the Lambda control plane: moto's server mode (``ThreadedMotoServer``).
* Lambda invocations: the official Runtime Interface Emulator (RIE, a Go binary
  taken from the ``aws-sam-cli`` wheel) running the official runtime client
  ``awslambdaric`` with wrenpack's real handler, which talks to the moto S3.

The RIE handles one request at a time, crashes on a second concurrent one,
routes only the function name ``function`` and answers even ``Event``
invocations synchronously. ``Dispatcher`` is a small router in front of
several RIEs that gives the backend what Lambda's endpoint gives it: any number
of concurrent requests, ``Event`` answered 202 at once and run in the
background, 404 ResourceNotFoundException for unknown names, and (when a
test asks) 429 TooManyRequestsException. Every invocation still runs through
a real RIE and a real runtime client.

Nothing listens beyond 127.0.0.1 and everything is stopped at session end.
If the emulator cannot be obtained the tests fail with the reason, unless
WRENPACK_SKIP_AWS_TESTS=1 is set.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("WRENPACK_TEST_CACHE", Path.home() / ".cache" / "wrenpack-test"))
RIE_MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"
#: The emulated function's configured timeout (seconds): RIE enforces it.
FUNCTION_TIMEOUT = 3
FUNCTION_NAME = "wrenpack-worker"
REGION = "us-east-1"
N_EMULATORS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str) -> None:
    if os.environ.get("WRENPACK_SKIP_AWS_TESTS") == "1":
        pytest.skip(f"AWS tests skipped (WRENPACK_SKIP_AWS_TESTS=1): {reason}")
    pytest.fail(f"AWS tests cannot run: {reason} (set WRENPACK_SKIP_AWS_TESTS=1 to skip them explicitly)")


@pytest.fixture(scope="session", autouse=True)
def aws_env():
    """Dummy credentials and a region for every boto3 client in these tests;
    no profile or endpoint from the developer's environment leaks in."""
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL") or key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(key)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    mp.setenv("AWS_REGION", REGION)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def moto_endpoint(aws_env, tmp_path_factory):
    """moto's server mode in its own process (in-process it would share our GIL)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_listening(port, proc, "moto server", log.name)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log: str, timeout: float = 30) -> None:
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


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def bucket(moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket="wrenpack-test")
    return "wrenpack-test"


def _rie_binary() -> Path:
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
            _unavailable(f"`pip download aws-sam-cli` failed: {proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        try:
            data = zf.read(RIE_MEMBER)
        except KeyError:
            _unavailable(f"{wheels[-1].name} has no {RIE_MEMBER}")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


class Emulator:
    """One RIE process (and, once invoked, its awslambdaric runtime)."""

    def __init__(self, binary: Path, env: dict[str, str], log_dir: Path, index: int) -> None:
        self.port = free_port()
        self.api_port = api_port = free_port()
        self.log = open(log_dir / f"rie-{index}.log", "wb")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
                "--runtime-api-address", f"127.0.0.1:{api_port}",
                sys.executable, "-m", "awslambdaric", "wrenpack.worker.handler.handler",
            ],
            cwd=str(REPO), env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        _wait_listening(self.port, self.proc, "RIE", self.log.name)

    def forward(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=FUNCTION_TIMEOUT + 60)
        try:
            conn.request("POST", "/2015-03-31/functions/function/invocations", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class Dispatcher:
    """Lambda's invoke endpoint on 127.0.0.1, backed by a pool of RIEs."""

    def __init__(self, emulators: list[Emulator], function_name: str) -> None:
        self.function_name = function_name
        self.emulators = emulators
        self.max_background = 0  # most Event invocations running at once
        self.idle: "queue.Queue[Emulator]" = queue.Queue()
        for emu in emulators:
            self.idle.put(emu)
        self.throttle_next = 0  # answer this many invocations with 429
        self.invocations: list[tuple[str, str]] = []  # (invocation type, outcome)
        self._background = 0
        self._running = 0
        self._cv = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _run(self, body: bytes) -> tuple[int, bytes]:
        emu = self.idle.get()
        try:
            return emu.forward(body)
        finally:
            self.idle.put(emu)

    def _event(self, body: bytes) -> None:
        with self._cv:
            self._running += 1
            self.max_background = max(self.max_background, self._running)
        try:
            self._run(body)
        finally:
            with self._cv:
                self._running -= 1
                self._background -= 1
                self._cv.notify_all()

    def drain(self, timeout: float = 60) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._background == 0, timeout=timeout)

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

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].strip("/").split("/")
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                if len(parts) != 4 or parts[3] != "invocations" or parts[2] != dispatcher.function_name:
                    dispatcher.invocations.append((kind, "not-found"))
                    msg = {"Type": "User", "message": f"Function not found: {parts[2] if len(parts) > 2 else '?'}"}
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
                    threading.Thread(target=dispatcher._event, args=(body,), daemon=True).start()
                    return self._reply(202, b"")
                dispatcher.invocations.append((kind, "run"))
                status, out = dispatcher._run(body)
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
        self.drain(timeout=FUNCTION_TIMEOUT + 10)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def lambda_endpoint(moto_endpoint, bucket, tmp_path_factory):
    """URL of a Lambda invoke endpoint that runs wrenpack's handler in real RIEs."""
    try:
        import awslambdaric  # noqa: F401
    except ImportError:
        _unavailable("awslambdaric is not installed; pip install -e '.[test]'")
    binary = _rie_binary()
    log_dir = tmp_path_factory.mktemp("rie-logs")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WRENPACK_", "PYTEST_"))
    }
    env.update(
        AWS_LAMBDA_FUNCTION_TIMEOUT=str(FUNCTION_TIMEOUT),
        AWS_LAMBDA_FUNCTION_NAME=FUNCTION_NAME,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
        LAMBDA_TASK_ROOT=str(REPO),
        PYTHONPATH=str(REPO),
        WRENPACK_STORE_URL=f"s3://{bucket}",  # as `wrenpack deploy` sets it: events naming another bucket are refused
    )
    emulators = [Emulator(binary, env, log_dir, i) for i in range(N_EMULATORS)]
    dispatcher = None
    try:
        for emu in emulators:
            emu.wait_ready()
        dispatcher = Dispatcher(emulators, FUNCTION_NAME)
        yield dispatcher
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        for emu in emulators:
            emu.stop()


@pytest.fixture(scope="session")
def listening():
    return listening_ports


def listening_ports() -> set[tuple[str, int]]:
    """(address, port) of this process tree's TCP listeners, via /proc/net/tcp."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].split(":")
            out.add((addr, int(port, 16)))
    return out
