"""What surrounds one call in the worker: the event's ``env``
(environment variables set for the call, restored after) and the capture of
what it prints (``capture_logs``: the last that many bytes of stdout and
stderr, returned in the status as ``logs``; the output still goes where it
always went: locally the driver's ``sys.stdout``/``sys.stderr``, through the backend's
relay (``wrenpack.backends.local.output``); CloudWatch on Lambda).

Only Python-level writes (``print``, ``sys.stdout.write``, ``sys.stdout.buffer.write``,
logging to the streams) are captured, not output written straight to file descriptor 1 or 2
by native code or child processes.

And what a call leaves to be done once its reply has gone (``after_reply``).
Standard library only.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Callable, TextIO

log = logging.getLogger("wrenpack.worker")

#: what calls asked to run once their reply has gone (``after_reply``), oldest first
_after_reply: list[Callable[[], Any]] = []


class _Tail:
    """Keeps the last ``limit`` bytes written (approximately, by characters)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.lock = threading.Lock()

    def add(self, text: str) -> None:
        with self.lock:
            self.parts.append(text)
            self.size += len(text)
            if self.size > 2 * self.limit:
                joined = "".join(self.parts)[-self.limit :]
                self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        if not self.parts:
            return ""
        data = "".join(self.parts).encode("utf-8", "replace")[-self.limit :]
        return data.decode("utf-8", "ignore")


class _Tee:
    """A stream that writes through to ``stream`` and keeps a copy in ``tail``."""

    def __init__(self, stream: TextIO, tail: _Tail) -> None:
        self._stream = stream
        self._tail = tail

    def write(self, text: str) -> int:
        if isinstance(text, str):
            self._tail.add(text)
        return self._stream.write(text)

    @property
    def buffer(self) -> Any:
        """The stream's binary buffer, its writes kept in ``tail`` too (decoded as the
        stream would: ``sys.stdout.buffer.write`` is a Python-level write as ``print`` is)."""
        return _BinaryTee(self._stream.buffer, self._tail, getattr(self._stream, "encoding", None) or "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _BinaryTee:
    """A binary stream that writes through to ``stream`` and keeps a decoded copy in ``tail``."""

    def __init__(self, stream: Any, tail: _Tail, encoding: str) -> None:
        self._stream = stream
        self._tail = tail
        self._encoding = encoding

    def write(self, data: Any) -> int:
        written = self._stream.write(data)
        try:
            self._tail.add(bytes(data).decode(self._encoding, "replace"))
        except (TypeError, ValueError, LookupError):
            pass  # (not bytes-like: the stream's own write said so already)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class CallScope:
    """``run`` a call inside the event's environment and output capture."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.env: dict[str, str] = {str(k): str(v) for k, v in (event.get("env") or {}).items()}
        limit = event.get("capture_logs")
        self.tail = _Tail(int(limit)) if isinstance(limit, int) and limit > 0 else None

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        saved = {k: os.environ.get(k) for k in self.env}
        streams = (sys.stdout, sys.stderr)
        try:
            # (inside the try: a variable that cannot be set, after others were, leaves none set for the next call)
            if self.env:
                os.environ.update(self.env)
            if self.tail is not None:
                sys.stdout, sys.stderr = _Tee(sys.stdout, self.tail), _Tee(sys.stderr, self.tail)
            return fn(*args, **kwargs)
        finally:
            if self.tail is not None:
                sys.stdout, sys.stderr = streams
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old

    def status(self) -> dict[str, Any]:
        """What the status record gains: ``logs``, when captured."""
        return {"logs": self.tail.text()} if self.tail is not None else {}


def after_reply(fn: Callable[[], Any]) -> None:
    """Run ``fn`` in this process once the running call's reply has gone.

    For what the call's own retry would still need: a reducer gives back the
    memory of the shuffle sections it read (``shuffle._release_sections``) only
    when its result is on its way to the driver, since a worker that dies while
    it pickles or sends that result makes the driver run the partition again,
    and the sections must still be there to be read. Run by the handler after
    a job's process has sent its reply (``handler.after_reply``), or, where no
    such hook runs, before the process's next call (``run_after_reply``)."""
    _after_reply.append(fn)


def run_after_reply() -> None:
    """What calls left for after their reply (``after_reply``), now; an error in one
    is logged and the rest still run."""
    while _after_reply:
        fn = _after_reply.pop(0)
        try:
            fn()
        except Exception:  # noqa: BLE001 - a clean-up: the call's outcome is already the driver's
            log.warning("work a call left for after its reply failed", exc_info=True)
