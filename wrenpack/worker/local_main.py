"""The loop a local worker process runs: a warm "container" for many calls.

The parent (``wrenpack.backends.local``) sends one message per call over a
socket and reads one reply. Each call gets Lambda's environment variables,
its own deadline and a private temporary directory (TMPDIR), and its peak
memory is measured from a reset high-water mark.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any


def serve(fd: int) -> None:
    from wrenpack.worker import memory
    from wrenpack.worker.context import LocalContext
    from wrenpack.worker.handler import handler

    conn = Connection(fd)
    conn.send({"ready": os.getpid()})
    base_env = dict(os.environ)
    applied: dict[str, str] = {}
    calls = 0
    while True:
        try:
            msg: dict[str, Any] | None = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        env = msg.get("env")
        if env is not None and env != applied:
            # Only changed settings are applied: setting os.environ is not free.
            for key in applied.keys() - env.keys():
                if key in base_env:
                    os.environ[key] = base_env[key]
                else:
                    os.environ.pop(key, None)
            for key, value in env.items():
                if applied.get(key) != value:
                    os.environ[key] = value
            applied = dict(env)
            if env.get("TMPDIR"):
                tempfile.tempdir = env["TMPDIR"]
        calls += 1
        ctx = LocalContext(
            function_name=applied.get("AWS_LAMBDA_FUNCTION_NAME", "wrenpack-local"),
            memory_mb=int(applied.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0),
            deadline=time.time() + float(msg["timeout_s"]),
            request_id=f"{os.getpid()}-{calls}",
        )
        t0 = time.perf_counter()
        try:
            status = handler(msg["event"], ctx)
            peak = max(status.get("peak_rss_mb") or 0.0, status.get("children_peak_rss_mb") or 0.0)
            reply: dict[str, Any] = {"status": status, "peak_rss_mb": peak}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, worker keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}", "peak_rss_mb": memory.peak_rss_mb()}
        reply["elapsed"] = time.perf_counter() - t0
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(reply)


if __name__ == "__main__":  # pragma: no cover - started by the local backend
    serve(int(sys.argv[1]))
