"""Large arguments and results handed over between the driver and a local worker as sealed memfds.

On the local backend the driver and each worker share a private socketpair
(made by the driver before the worker's exec; only the worker holds the other
end). A pickle larger than a threshold is written straight into an anonymous
memory file (``memfd_create``) as it is pickled, sealed against any change
(``F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``) and passed over
that socket with SCM_RIGHTS. The receiver refuses a file that is not a memfd,
is not sealed so, or whose size is not the one announced, before anything is
unpickled; then it maps it and unpickles. The channel authenticates what comes
through it, as it does for the inline arguments and the secret in the event, so
data that never touches the store needs no MAC pass: the store's objects
(Lambda, ``keep_objects``, a pickled future's result) stay HMAC-sealed.

Layout of a hand-off: the pickle stream (protocol 5) at offset 0, then its
out-of-band buffers (``PickleBuffer``: numpy arrays and the like), each at a
64-byte-aligned offset; ``Sealed.layout`` describes it (JSON)::

    {"size": total bytes, "stream": stream bytes, "buffers": [[offset, length], ...]}

Arguments are mapped copy-on-write in the worker (out-of-band arrays are then
views of the driver's pages, writable by the call without changing them);
results are copied out by the driver and the memfd closed at once, so a
result's pages never keep counting against its worker's memory limit.

Standard library and cloudpickle only: the worker imports this.
"""
from __future__ import annotations

import fcntl
import logging
import mmap
import os
import pickle
import threading
from typing import Any, Callable

from wrenpack.errors import CorruptObject

log = logging.getLogger(__name__)

#: the seals a hand-off carries; the receiver refuses one without all of them
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL if hasattr(fcntl, "F_ADD_SEALS") else 0
#: buffers at least this large go out of band (smaller ones stay in the stream)
OOB_MIN = 64 * 1024
#: results larger than this are handed off instead of sealed into the reply
RESULT_MIN = 64 * 1024
_ALIGN = 64
_MAX_WRITE = 1 << 30

_lock = threading.Lock()
_open = 0  # memfds of pending arguments held by this process
_max_open: int | None = None


def available() -> bool:
    """memfd_create, seals and SCM_RIGHTS exist here (Linux)."""
    import socket

    return bool(SEALS) and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def _budget() -> int:
    """How many argument memfds a driver holds before it falls back to the store
    (a quarter of the open-files limit: each pending call holds one)."""
    global _max_open
    if _max_open is None:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        _max_open = max(16, min(65536, (soft if soft > 0 else 1024) // 4))
    return _max_open


def reserve() -> bool:
    """Take one slot of the driver's memfd budget; False when it is spent."""
    global _open
    with _lock:
        if _open >= _budget():
            return False
        _open += 1
        return True


def _release() -> None:
    global _open
    with _lock:
        _open = max(0, _open - 1)


class Sealed:
    """A sealed memfd this process owns (closed once, by ``close`` or when collected)."""

    def __init__(self, fd: int | None, layout: Any, counted: bool = False) -> None:
        self.fd: int | None = fd
        self.layout = layout
        self._counted = counted

    @property
    def size(self) -> int:
        return int(self.layout["size"])  # only of one this process made

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            if self._counted:
                _release()

    def __del__(self) -> None:
        self.close()


class Spill:
    """A write-only file for a pickler: in memory up to ``threshold`` bytes, then a
    memfd (``finish`` seals it). Big ``bytes`` are written by the pickler
    directly, without a copy in this process; out-of-band buffers (``buffer``,
    the pickler's ``buffer_callback``) are appended after the stream."""

    def __init__(self, threshold: int, name: str = "wrenpack", oob: bool = True, counted: bool = False) -> None:
        self.threshold = threshold
        self.name_ = name
        self.oob = oob
        self.counted = counted
        self._mem = bytearray()
        self._fd: int | None = None
        self._pos = 0
        self._buffers: list[pickle.PickleBuffer] = []

    def _spill(self) -> None:
        self._fd = os.memfd_create(self.name_, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        if self._mem:
            self._write_all(memoryview(self._mem))
            self._mem = bytearray()

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        while len(view):
            n = os.write(self._fd, view[:_MAX_WRITE])
            self._pos += n
            view = view[n:]

    def write(self, b: Any) -> int:
        view = memoryview(b)
        n = view.nbytes
        if self._fd is None and len(self._mem) + n <= self.threshold:
            self._mem += view
            return n
        if self._fd is None:
            self._spill()
        self._write_all(view)
        return n

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        """``buffer_callback``: large contiguous buffers out of band (False), others in band."""
        if not self.oob:
            return True
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: pickled in band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        self._buffers.append(buf)
        return False

    def finish(self) -> "bytes | Sealed":
        """The pickle as bytes if it stayed small and in band, else the sealed memfd."""
        if self._fd is None and not self._buffers:
            if self.counted:
                self.counted = False
                _release()
            return bytes(self._mem)
        if self._fd is None:
            self._spill()
        assert self._fd is not None
        stream = self._pos
        spans = []
        for buf in self._buffers:
            pad = -self._pos % _ALIGN
            if pad:
                self._write_all(memoryview(bytes(pad)))
            raw = buf.raw()
            spans.append([self._pos, raw.nbytes])
            self._write_all(raw)
        self._buffers = []
        fd, self._fd = self._fd, None
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return Sealed(fd, {"size": self._pos, "stream": stream, "buffers": spans}, counted=self.counted)

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._buffers = []
        self._mem = bytearray()
        if self.counted:
            self.counted = False
            _release()


def dump(obj: Any, threshold: int, name: str = "wrenpack-result", oob: bool = False,
         pickler: Callable[..., Any] | None = None) -> "bytes | Sealed":
    """Pickle ``obj`` (protocol 5): bytes if at most ``threshold``, else a sealed memfd."""
    import cloudpickle

    spill = Spill(threshold, name, oob=oob)
    try:
        (pickler or cloudpickle.Pickler)(spill, protocol=5, buffer_callback=spill.buffer if oob else None).dump(obj)
        return spill.finish()
    except BaseException:
        spill.discard()
        raise


def check_layout(layout: Any) -> dict[str, Any]:
    """A received layout, validated (ValueError says what is wrong)."""
    if not isinstance(layout, dict) or set(layout) != {"size", "stream", "buffers"}:
        raise ValueError("the hand-off layout must have size, stream and buffers")
    size, stream, spans = layout["size"], layout["stream"], layout["buffers"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (size, stream)) or stream > size:
        raise ValueError("the hand-off layout's size/stream are not byte counts")
    if not isinstance(spans, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in s)
        and s[0] >= stream and s[0] + s[1] <= size for s in spans
    ):
        raise ValueError("the hand-off layout's buffers are not spans inside it")
    return layout


def _refuse(what: str, why: str) -> CorruptObject:
    return CorruptObject(f"the {what} was refused ({why}); nothing was unpickled: it did not come from wrenpack, re-run the call")


def _check(fd: int | None, layout: Any, what: str) -> dict[str, Any]:
    """A received memfd is what it must be: a memfd, sealed with ``SEALS``, of the announced size."""
    if fd is None:
        raise _refuse(what, "its memory file did not arrive")
    try:
        layout = check_layout(layout)
    except ValueError as exc:
        raise _refuse(what, str(exc)) from None
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise _refuse(what, "not a sealable memory file") from None
    if seals & SEALS != SEALS:
        raise _refuse(what, "its memory file is not sealed against writes, growth and shrinking")
    size = os.fstat(fd).st_size
    if size != layout["size"]:
        raise _refuse(what, f"its memory file holds {size} bytes, not the {layout['size']} announced")
    return layout


class _Reader:
    """The pickle stream of a hand-off as a file for ``pickle.load``: positioned
    reads (the descriptor's offset is shared with the sender), so a large
    ``bytes`` is read straight into the object being built, without the GIL."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, 0, end

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n is None or n < 0 else min(n, self.end - self.pos)
        data = os.pread(self.fd, n, self.pos) if n > 0 else b""
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        view = view[: max(0, self.end - self.pos)]
        got = 0
        while got < len(view):
            k = os.preadv(self.fd, [view[got:]], self.pos + got)
            if k <= 0:
                break
            got += k
        self.pos += got
        return got

    def readline(self) -> bytes:
        out = bytearray()
        while self.pos < self.end:
            c = self.read(1)
            out += c
            if c == b"\n":
                break
        return bytes(out)


def load(fd: int | None, layout: Any, what: str, *, private: bool, loads: Callable[..., Any]) -> Any:
    """Check and unpickle a hand-off with ``loads(file, buffers)`` (``pickle.load``
    style); ``fd`` is consumed (closed here).

    Out-of-band buffers: ``private`` (arguments, in the worker) maps them
    copy-on-write and leaves them views of that mapping (freed with the value);
    otherwise (results, in the driver) they are copied out and nothing maps the
    pages when this returns."""
    try:
        layout = _check(fd, layout, what)
        assert fd is not None
        spans = layout["buffers"]
        if not spans:
            return loads(_Reader(fd, layout["stream"]), [])
        if private:
            # Copy-on-write, faulted in as read (populating a writable private map would copy it all).
            mm = mmap.mmap(fd, layout["size"], flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            view = memoryview(mm)
            buffers: list[Any] = [view[o : o + n] for o, n in spans]
            view.release()
            return loads(_Reader(fd, layout["stream"]), buffers)
        buffers = []
        for o, n in spans:
            buf = bytearray(n)
            _read_at(fd, buf, o)
            buffers.append(buf)
        return loads(_Reader(fd, layout["stream"]), buffers)
    finally:
        if fd is not None:
            os.close(fd)


def _read_at(fd: int, buf: bytearray, offset: int) -> None:
    reader = _Reader(fd, offset + len(buf))
    reader.pos = offset
    if reader.readinto(buf) != len(buf):
        raise CorruptObject("a hand-off's buffer ended early; re-run the call")
