"""The simulated Lambda + S3 (``sim_service``) served over HTTP on 127.0.0.1,
in a process of its own: what a benchmark's driver talks to when its own CPU
is what is measured (AWS is not in the driver's process, and an in-process
simulator shares the driver's GIL).

::

    python -m tests.aws.sim_server --duration 0.1 --jitter 0.1 --concurrency 1000 --invoke-latency 0.025
        -> prints one JSON line {"s3_url": ..., "lambda_url": ...}, serves until stdin closes

    with RemoteSim(duration=0.1, ...) as sim:       # starts that process
        boto3.client("s3", endpoint_url=sim.s3_url) ...
        sim.requests("client"), sim.stats()            # counts and figures, fetched from it

The same ``SimS3.handle`` and ``SimLambda.handle`` answer as in process; only
the transport differs: a small HTTP/1.1 server (keep-alive, ``Content-Length``
or chunked bodies, ``Expect: 100-continue``), a thread per connection, since
a RequestResponse invocation holds its connection for the call's duration as
Lambda does. ``/_sim/...`` on the Lambda port is the control API
(counts, reset, stats, bucket keys). The functions it runs are wrenpack
workers as ``sim_worker.WrenpackFunction`` simulates them, computing the
identity of their first argument.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.request import Request, urlopen

_REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 206: "Partial Content", 404: "Not Found",
            412: "Precondition Failed", 416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class _Headers(dict):
    """Request headers, looked up without regard to case (as botocore's are)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, str(key).lower())


class _Request:
    """What ``SimS3.handle``/``SimLambda.handle`` read of a request (botocore's ``AWSRequest`` shape)."""

    __slots__ = ("url", "method", "headers", "body")

    def __init__(self, url: str, method: str, headers: _Headers, body: bytes) -> None:
        self.url, self.method, self.headers, self.body = url, method, headers, body


def _read_body(rfile: Any, headers: _Headers) -> bytes:
    length = headers.get("content-length")
    if length is not None:
        return rfile.read(int(length)) if int(length) else b""
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        out = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(out)
            out.append(rfile.read(size))
            rfile.readline()
    return b""


class _Handler(socketserver.StreamRequestHandler):
    """One connection: requests one after another (keep-alive) until the client closes it."""

    rbufsize = 65536
    wbufsize = 0
    disable_nagle_algorithm = True

    def handle(self) -> None:
        serve: Callable[[Any], Any] = self.server.serve  # type: ignore[attr-defined]
        base = self.server.base  # type: ignore[attr-defined]
        rfile, sock = self.rfile, self.connection
        while True:
            try:
                line = rfile.readline(65537)
            except OSError:
                return
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                continue
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = _Headers()
            while True:
                h = rfile.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if (headers.get("expect") or "").lower() == "100-continue":
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _read_body(rfile, headers)
            request = _Request(base + target, method, headers, body)
            try:
                resp = serve(request)
                status, out_headers, data = resp.status_code, dict(resp.headers.items()), resp.raw.read()
            except Exception as exc:  # noqa: BLE001 - the simulator's own bug: a 500 the client sees
                status, out_headers, data = 500, {"Content-Type": "text/plain"}, f"{type(exc).__name__}: {exc}".encode()
            if method == "HEAD":
                length = out_headers.pop("content-length", None) or out_headers.pop("Content-Length", None) or "0"
                payload = b""
            else:
                out_headers = {k: v for k, v in out_headers.items() if k.lower() != "content-length"}
                length, payload = str(len(data)), data
            head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Length: {length}"]
            head += [f"{k}: {v}" for k, v in out_headers.items()]
            try:
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            except OSError:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048

    def __init__(self, serve: Callable[[Any], Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.serve = serve
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


def serve(sim: Any) -> tuple[_Server, _Server]:
    """Serve ``sim`` (a ``SimService``) over HTTP: its S3 and Lambda (with the
    ``/_sim/`` control API) on two ports of 127.0.0.1, from daemon threads."""
    s3 = _Server(sim._timed_s3)
    control = _Control(sim)
    lam = _Server(control)
    for server in (s3, lam):
        # (shutdown() is seen within 0.05 s; requests are served as they come either way)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"sim-http-{server.server_address[1]}").start()
    return s3, lam


class _Control:
    """The Lambda port's requests: ``/_sim/...`` is the control API, the rest is Lambda's."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def __call__(self, request: Any) -> Any:
        from tests.aws.sim_service import _response

        path = request.url.split("/", 3)[-1]
        if not path.startswith("_sim/"):
            return self.sim.lambda_.handle(request)
        what, _, arg = path[5:].partition("?")
        sim = self.sim
        if what == "requests":
            side = None if arg in ("", "side=all") else arg.partition("=")[2]
            doc: Any = sim.requests(side)
        elif what == "reset":
            sim.reset_counts()
            doc = {}
        elif what == "stats":
            fn = sim.lambda_.function
            doc = {"cpu_s": sim.cpu_s, "process_cpu_s": time.process_time(), "peak_bytes": sim.s3.peak_bytes,
                   "bytes_stored": sim.s3.bytes_stored, "slowdowns": sum(sim.s3.slowdowns.values()),
                   "errors": list(sim.lambda_.errors[:20]), "lost_writes": getattr(fn, "lost_writes", 0),
                   "started": sim.lambda_.started, "finished": sim.lambda_.finished,
                   "peak_running": sim.lambda_.peak_running}
        elif what == "keys":
            from urllib.parse import parse_qsl

            q = dict(parse_qsl(arg))
            doc = sim.s3.keys(q["bucket"], q.get("prefix", ""))
        elif what == "bucket":
            sim.s3.create_bucket(arg.partition("=")[2])
            doc = {}
        else:
            return _response(request.url, 404, b"{}")
        return _response(request.url, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})


# -- the process --------------------------------------------------------------------


def _identity(x: Any) -> Any:
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=0.1, help="each call's run time (s of the clock)")
    ap.add_argument("--jitter", type=float, default=0.0, help="durations uniform within +- this fraction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", type=float, default=1.0, help="the clock, times real time")
    ap.add_argument("--clock-origin", type=float, nargs=2, metavar=("EPOCH", "MONOTONIC"),
                    help="a scaled clock's origin, shared with the client's")
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--invoke-latency", type=float, default=0.025)
    ap.add_argument("--s3-latency", type=float, default=0.0)
    ap.add_argument("--bucket", action="append", default=[])
    args = ap.parse_args(argv)

    from tests.aws.sim_service import Clock, ScaledClock, SimService
    from tests.aws.sim_worker import WrenpackFunction

    if args.speed == 1.0:
        clock: Clock = Clock()
    else:
        clock = ScaledClock(args.speed, origin=tuple(args.clock_origin) if args.clock_origin else None)
    rng = random.Random(args.seed)
    lock = threading.Lock()

    def length(event: dict[str, Any]) -> float:
        with lock:
            return args.duration * (1.0 + args.jitter * (2 * rng.random() - 1))

    sim = SimService(clock, function=WrenpackFunction(_identity, duration=length), concurrency=args.concurrency,
                     invoke_latency=args.invoke_latency, s3_latency=args.s3_latency)
    for bucket in args.bucket:
        sim.s3.create_bucket(bucket)
    s3, lam = serve(sim)
    print(json.dumps({"s3_url": s3.base, "lambda_url": lam.base, "pid": os.getpid()}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.stdin.read()  # until the parent closes it (or exits)
    return 0


class RemoteSim:
    """A ``sim_server`` process: started here, reached at ``s3_url``/``lambda_url``,
    its counts and figures fetched from it; ``close`` ends it."""

    def __init__(self, *, duration: float = 0.1, jitter: float = 0.0, seed: int = 0, clock: Any = None,
                 concurrency: int = 1000, invoke_latency: float = 0.025, s3_latency: float = 0.0,
                 buckets: tuple[str, ...] = ()) -> None:
        cmd = [sys.executable, "-m", "tests.aws.sim_server", "--duration", repr(duration), "--jitter", repr(jitter),
               "--seed", str(seed), "--concurrency", str(concurrency), "--invoke-latency", repr(invoke_latency),
               "--s3-latency", repr(s3_latency)]
        speed = getattr(clock, "speed", 1.0)
        if speed != 1.0:
            cmd += ["--speed", repr(speed), "--clock-origin", *map(repr, clock.origin)]
        for bucket in buckets:
            cmd += ["--bucket", bucket]
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=env)
        line = self._proc.stdout.readline() if self._proc.stdout else b""
        if not line:
            self._proc.wait(timeout=10)
            raise RuntimeError(f"the simulator process exited ({self._proc.returncode}) before serving")
        info = json.loads(line)
        self.s3_url: str = info["s3_url"]
        self.lambda_url: str = info["lambda_url"]
        self.pid: int = info["pid"]

    def _get(self, what: str) -> Any:
        with urlopen(Request(f"{self.lambda_url}/_sim/{what}"), timeout=30) as resp:  # noqa: S310 - 127.0.0.1
            return json.loads(resp.read())

    def requests(self, side: str | None = "client") -> dict[str, int]:
        return self._get(f"requests?side={side or 'all'}")

    def reset_counts(self) -> None:
        self._get("reset")

    def stats(self) -> dict[str, Any]:
        return self._get("stats")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        from urllib.parse import urlencode

        return self._get("keys?" + urlencode({"bucket": bucket, "prefix": prefix}))

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> "RemoteSim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RemoteSim", "serve", "main"]
