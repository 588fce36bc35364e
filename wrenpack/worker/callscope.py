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
    """A stream that writes through to ``stream`` and keeps a copy in the running call's
    tail (``tail``: None between calls). One per stream for the process's life
    (``_tee_of``): a logging handler a call made (``logging.basicConfig``) holds the
    ``sys.stderr`` of the call that made it, and a new one per call left the later calls'
    log lines out of their ``logs`` (kept in the first call's tail instead)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.tail: _Tail | None = None

    def write(self, text: str) -> int:
        tail = self.tail
        if tail is not None and isinstance(text, str):
            tail.add(text)
        return self._stream.write(text)

    @property
    def buffer(self) -> Any:
        """The stream's binary buffer, its writes kept in the tail too (decoded as the
        stream would: ``sys.stdout.buffer.write`` is a Python-level write as ``print`` is)."""
        return _BinaryTee(self._stream.buffer, self, getattr(self._stream, "encoding", None) or "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _BinaryTee:
    """A binary stream that writes through to ``stream`` and keeps a decoded copy in its text tee's tail."""

    def __init__(self, stream: Any, tee: _Tee, encoding: str) -> None:
        self._stream = stream
        self._tee = tee
        self._encoding = encoding

    def write(self, data: Any) -> int:
        written = self._stream.write(data)
        tail = self._tee.tail
        if tail is not None:
            try:
                tail.add(bytes(data).decode(self._encoding, "replace"))
            except (TypeError, ValueError, LookupError):
                pass  # (not bytes-like: the stream's own write said so already)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


#: the tee of each stream a call's output went to (``_tee_of``), by the stream's id (the oldest
#: dropped past ``_MAX_TEES``)
_tees: dict[int, _Tee] = {}
_MAX_TEES = 8


def _tee_of(stream: Any) -> Any:
    """The one ``_Tee`` of ``stream`` (of a tee too: a call run inside a call's scope keeps
    what it prints in both calls' tails)."""
    tee = _tees.get(id(stream))
    if tee is None or tee._stream is not stream:
        if len(_tees) >= _MAX_TEES:  # (a call that sets sys.stdout itself, each time anew: none kept for long)
            _tees.pop(next(iter(_tees)))
        tee = _tees[id(stream)] = _Tee(stream)
    return tee


class CallScope:
    """``run`` a call inside the event's environment and output capture."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.env: dict[str, str] = {str(k): str(v) for k, v in (event.get("env") or {}).items()}
        limit = event.get("capture_logs")
        self.tail = _Tail(int(limit)) if isinstance(limit, int) and limit > 0 else None

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        saved = {k: os.environ.get(k) for k in self.env}
        streams = (sys.stdout, sys.stderr)
        tees: tuple[Any, ...] = ()
        kept: list[Any] = []
        try:
            # (inside the try: a variable that cannot be set, after others were, leaves none set for the next call)
            if self.env:
                os.environ.update(self.env)
            if self.tail is not None:
                tees = (_tee_of(sys.stdout), _tee_of(sys.stderr))
                kept = [t.tail for t in tees]
                for tee in tees:
                    tee.tail = self.tail
                sys.stdout, sys.stderr = tees
            return fn(*args, **kwargs)
        finally:
            if self.tail is not None:
                for tee, was in zip(tees, kept):
                    tee.tail = was
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
