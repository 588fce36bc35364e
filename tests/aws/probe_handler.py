"""What the emulator's own tests run (tests/aws/test_servers.py): one action per
event, reported back. Nothing of wrenpack's is imported, so a runtime starts in
a fraction of a second.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any


def handler(event: dict[str, Any], context: Any = None) -> Any:
    if event.get("warmup"):
        return {"warm": True}
    op = event.get("op")
    if op == "env":
        return dict(os.environ)
    if op == "sleep":
        time.sleep(event["s"])
        return {"slept": event["s"], "pid": os.getpid(), "tag": event.get("tag")}
    if op == "hold":  # until the test creates the file ``until`` (at most ``s`` seconds)
        end = time.monotonic() + event["s"]
        while not os.path.exists(event["until"]) and time.monotonic() < end:
            time.sleep(0.01)
        return {"released": os.path.exists(event["until"]), "pid": os.getpid()}
    if op == "reply":
        return "x" * event["n"]
    if op == "echo":
        return {"size": len(event.get("pad", ""))}
    if op == "allocate":
        block = b"\x01" * (event["mb"] * 1024 * 1024)  # every page written: resident
        return {"allocated": len(block)}
    if op == "threads":
        return _threads(event["n"])
    if op == "write":
        return {path: _write(path) for path in event["paths"]}
    if op == "read":
        return {path: _read(path) for path in event["paths"]}
    raise ValueError(f"unknown op {op!r}")


def _threads(n: int) -> dict[str, Any]:
    """Start up to ``n`` threads that wait; how many started, and the error that stopped them."""
    stop = threading.Event()
    started: list[threading.Thread] = []
    error = None
    try:
        for _ in range(n):
            t = threading.Thread(target=stop.wait)
            t.start()
            started.append(t)
    except RuntimeError as exc:
        error = str(exc)
    finally:
        stop.set()
        for t in started:
            t.join()
    return {"started": len(started), "error": error}


def _write(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("written inside the sandbox")
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
