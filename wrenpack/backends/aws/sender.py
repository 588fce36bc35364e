"""Sender processes: the Lambda backend's HTTP requests made by boto3 clients in
child processes of the driver, so that botocore's CPU per request (building,
signing, urllib3, parsing: 0.4-0.9 ms each, most of a driver's CPU per call)
is not spent under the driver's one GIL.

::

    driver thread (LambdaBackend._send, a reader) -> SenderProcesses.invoke / .get
        -> one frame down a child's stdin (the children taken in turn)
    child (python -c "...sender import main; main()"): its own boto3 session, Lambda
        client and S3 store; a thread per request in flight
        -> lambda.invoke / S3Store.get -> one frame up its stdout
    driver: one reader thread per child hands each reply to the thread waiting for it

What stays in the driver: events, sealing and every check of what comes back
(a child carries bytes: a result object it returns is opened with the job's
secret in the driver, as before), futures, the launch window, cancel markers
and the job's cleanup. The child is started with ``python -c``, never with
multiprocessing's spawn, which would run the driver's ``__main__`` (the user's
script) again: it runs wrenpack's and boto3's code only. It sees the events it
sends, the job's secret among them, as the driver's sending threads did; no
user code runs in it.

A frame: 8 bytes (the JSON head's length, the body's length; little-endian),
the JSON head, the body. A failed request comes back as the error's class
name, AWS error code, HTTP status and first line, and is raised in the driver
as an exception of that name with botocore's ``response`` shape, so the
backend's decisions (throttled, dropped, not found) read it as they read the
in-process client's.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from wrenpack import errors
from wrenpack.boot import NO_CWD

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
#: what a sender process runs (not ``-m``: the package imports this module first)
_CHILD = NO_CWD + "from wrenpack.backends.aws.sender import main;sys.exit(main())"
#: the head of a reply that says the child's clients are made
_READY = "ready"


class SenderLost(Exception):
    """A sender process ended while requests it carried were in flight: they may have been sent."""


class RemoteRequestError(Exception):
    """A request that failed in a sender process; its class is named after the child's
    exception (``EndpointConnectionError``, ``ClientError``...) and ``response`` has
    botocore's shape (``Error.Code``, ``ResponseMetadata.HTTPStatusCode``)."""

    response: dict[str, Any]


_ERROR_TYPES: dict[str, type] = {}
_ERROR_TYPES_LOCK = threading.Lock()


def _error_type(name: str) -> type:
    """The exception class named ``name`` (a ``RemoteRequestError``), made once."""
    with _ERROR_TYPES_LOCK:
        made = _ERROR_TYPES.get(name)
        if made is None:
            made = _ERROR_TYPES[name] = type(name if name.isidentifier() else "RemoteRequestError",
                                             (RemoteRequestError,), {})
        return made


def _remote_error(head: dict[str, Any]) -> Exception:
    """The exception a failed request's reply stands for: wrenpack's own errors as
    themselves (``ObjectNotFound``, ``StoreError``), the rest as ``RemoteRequestError``."""
    name = str(head.get("error") or "RemoteRequestError")
    message = str(head.get("message") or name)
    own = getattr(errors, name, None)
    if isinstance(own, type) and issubclass(own, errors.WrenpackError):
        return own(message)
    exc = _error_type(name)(message)
    response: dict[str, Any] = {"ResponseMetadata": {}}
    if head.get("code"):
        response["Error"] = {"Code": str(head["code"]), "Message": message}
    if head.get("http"):
        response["ResponseMetadata"]["HTTPStatusCode"] = int(head["http"])
    exc.response = response
    return exc


def _write_frame(fd: int, head: dict[str, Any], body: bytes = b"") -> None:
    data = json.dumps(head, separators=(",", ":")).encode()
    view = memoryview(_FRAME.pack(len(data), len(body)) + data + body)
    while view:
        view = view[os.write(fd, view):]


def _read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """One frame, None at the end of the stream."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    head_len, body_len = _FRAME.unpack(header)
    head = stream.read(head_len)
    body = stream.read(body_len) if body_len else b""
    if len(head) < head_len or len(body) < body_len:
        return None
    return json.loads(head), body


class _Waiter:
    """One request in flight: its lock is held until the reply comes."""

    __slots__ = ("lock", "head", "body")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.head: dict[str, Any] = {}
        self.body = b""


class _Child:
    """One sender process and the reader thread that takes its replies."""

    def __init__(self, spec: dict[str, Any], index: int) -> None:
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out = self.proc.stdin.fileno()
        self._in = io.BufferedReader(self.proc.stdout, buffer_size=1 << 16)  # type: ignore[arg-type]
        self._write_lock = threading.Lock()
        self._waiting: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self.alive = True
        self.keepalive = False
        self._index = index
        _write_frame(self._out, spec)

    def wait_ready(self) -> None:
        """Wait for the child's clients (its first frame), then start taking its replies."""
        got = _read_frame(self._in)
        if got is None or not got[0].get(_READY):
            self.close()
            problem = got[0].get("message") if got else f"it exited ({self.proc.wait()})"
            raise errors.ConfigError(str(problem)) if got and got[0].get("error") == "ConfigError" else \
                SenderLost(f"the Lambda backend's sender process did not start: {problem}")
        self.keepalive = bool(got[0].get("keepalive"))
        self._reader = threading.Thread(target=self._read_loop, name=f"wrenpack-lambda-sender-{self._index}", daemon=True)
        self._reader.start()

    def request(self, head: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        waiter = _Waiter()
        rid = next(self._ids)
        head["id"] = rid
        self._waiting[rid] = waiter
        try:
            with self._write_lock:
                if not self.alive:
                    raise OSError("ended")
                _write_frame(self._out, head, body)
        except OSError:
            self._waiting.pop(rid, None)
            raise SenderLost("the Lambda backend's sender process has ended") from None
        waiter.lock.acquire()
        if waiter.head.get("lost"):
            raise SenderLost("the Lambda backend's sender process ended while the request was in flight")
        return waiter.head, waiter.body

    def _read_loop(self) -> None:
        waiting = self._waiting
        try:
            while True:
                got = _read_frame(self._in)
                if got is None:
                    break
                head, body = got
                waiter = waiting.pop(head.get("id"), None)
                if waiter is not None:
                    waiter.head, waiter.body = head, body
                    waiter.lock.release()
        except (OSError, ValueError):
            log.warning("reading from the Lambda backend's sender process failed", exc_info=True)
        finally:
            with self._write_lock:
                self.alive = False
            for rid in list(waiting):
                waiter = waiting.pop(rid, None)
                if waiter is not None:
                    waiter.head = {"lost": True}
                    waiter.lock.release()

    def close(self, wait: bool = True) -> None:
        """End the child: its stdin closes, it finishes the requests it carries and exits
        (``wait``: waited for, up to 10 s, then killed)."""
        with self._write_lock:
            self.alive = False
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
        if not wait:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SenderProcesses:
    """``count`` sender processes, each with a Lambda client made with
    ``lambda_config`` (botocore ``Config`` arguments) and, when ``store`` is an S3
    store's spec, an ``S3Store`` of it; requests go to them in turn.
    ``keepalive``: the Lambda clients' connections send TCP keepalive probes
    (``clients.keepalive_probes``); ``keepalive_set`` says whether that took."""

    def __init__(self, count: int, *, profile: str | None, region: str | None, endpoint_url: str | None,
                 lambda_config: dict[str, Any], keepalive: bool, store: dict[str, Any] | None,
                 store_profile: str | None = None, threads: int) -> None:
        spec = {"profile": profile, "region": region, "endpoint_url": endpoint_url, "lambda_config": lambda_config,
                "keepalive": keepalive, "store": store, "store_profile": store_profile, "threads": threads}
        self._children: list[_Child] = []
        try:
            for i in range(max(1, count)):
                self._children.append(_Child(spec, i))
            for child in self._children:  # (they start side by side: ~0.5 s each, mostly importing boto3)
                child.wait_ready()
        except BaseException:
            self.close()
            raise
        self.keepalive_set = all(c.keepalive for c in self._children)
        self._turn = itertools.count()
        self.has_store = store is not None

    @property
    def alive(self) -> bool:
        return any(c.alive for c in self._children)

    def _child(self) -> _Child:
        children = self._children
        for _ in range(len(children)):
            child = children[next(self._turn) % len(children)]
            if child.alive:
                return child
        raise SenderLost("every sender process of the Lambda backend has ended")

    def invoke(self, function_name: str, invocation_type: str, payload: bytes) -> dict[str, Any]:
        """``lambda.invoke`` in a sender process: its response's StatusCode,
        FunctionError and Payload (a file of the reply's bytes)."""
        head, body = self._child().request({"op": "invoke", "fn": function_name, "type": invocation_type}, payload)
        if "error" in head:
            raise _remote_error(head)
        resp: dict[str, Any] = {"StatusCode": head.get("status"), "Payload": io.BytesIO(body)}
        if head.get("function_error"):
            resp["FunctionError"] = head["function_error"]
        return resp

    def get(self, key: str) -> bytes:
        """The store's ``get(key)`` in a sender process (``ObjectNotFound`` when absent)."""
        head, body = self._child().request({"op": "get", "key": key}, b"")
        if "error" in head:
            raise _remote_error(head)
        return body

    def close(self, wait: bool = True) -> None:
        for child in self._children:
            child.close(wait)


# -- the child --------------------------------------------------------------------


def _serve(spec: dict[str, Any]) -> tuple[Any, Any, bool]:
    """The child's Lambda client and S3 store, and whether keepalive probes took."""
    import boto3
    from botocore.config import Config

    from wrenpack import redact
    from wrenpack.backends.aws import clients
    from wrenpack.storage.s3 import S3Store

    redact.install()  # botocore's debug logs would show the key id, token and request bodies
    session = clients.checked_session(boto3.session.Session(profile_name=spec.get("profile"),
                                                            region_name=spec.get("region")), spec.get("profile"))
    lam = session.client("lambda", endpoint_url=spec.get("endpoint_url"), config=Config(**spec["lambda_config"]))
    keepalive = clients.keepalive_probes(lam) if spec.get("keepalive") else False
    store = S3Store.from_spec(spec["store"], profile=spec.get("store_profile")) if spec.get("store") else None
    if store is not None:
        _ = store.client  # made now, not by the first requests racing
    return lam, store, keepalive


def _failure(rid: Any, exc: BaseException) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    head: dict[str, Any] = {"id": rid, "error": type(exc).__name__, "message": (str(exc).splitlines() or [""])[0][:2000]}
    if isinstance(response, dict):
        head["code"] = response.get("Error", {}).get("Code")
        head["http"] = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return head


def main() -> int:
    from concurrent.futures import ThreadPoolExecutor

    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the frames
    stdin = io.BufferedReader(io.FileIO(sys.stdin.fileno(), "rb", closefd=False), buffer_size=1 << 16)
    got = _read_frame(stdin)
    if got is None:
        return 0
    spec = got[0]
    try:
        lam, store, keepalive = _serve(spec)
    except Exception as exc:  # noqa: BLE001 - said to the driver, which raises it
        _write_frame(out, _failure(0, exc))
        return 1
    _write_frame(out, {_READY: True, "keepalive": keepalive})
    write_lock = threading.Lock()

    def reply(head: dict[str, Any], body: bytes = b"") -> None:
        with write_lock:
            _write_frame(out, head, body)

    def invoke(head: dict[str, Any], payload: bytes) -> None:
        try:
            resp = lam.invoke(FunctionName=head["fn"], InvocationType=head["type"], Payload=payload)
            body = resp["Payload"].read() if resp.get("Payload") is not None else b""
        except Exception as exc:  # noqa: BLE001 - the driver decides (throttled, dropped...)
            reply(_failure(head["id"], exc))
            return
        reply({"id": head["id"], "status": resp.get("StatusCode"), "function_error": resp.get("FunctionError")}, body)

    def get(head: dict[str, Any], _: bytes) -> None:
        try:
            data = store.get(head["key"])
        except Exception as exc:  # noqa: BLE001
            reply(_failure(head["id"], exc))
            return
        reply({"id": head["id"]}, data)

    ops = {"invoke": invoke, "get": get}
    with ThreadPoolExecutor(max_workers=max(4, int(spec.get("threads") or 64)),
                            thread_name_prefix="wrenpack-sender") as pool:
        while True:
            got = _read_frame(stdin)
            if got is None:
                break  # the driver closed our stdin (or ended)
            head, body = got
            op = ops.get(head.get("op"))
            if op is None or (op is get and store is None):
                reply({"id": head.get("id"), "error": "ProtocolError", "message": f"unknown request {head.get('op')!r}"})
                continue
            pool.submit(op, head, body)
    return 0

