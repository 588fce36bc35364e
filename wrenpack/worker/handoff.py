"""Large arguments and results handed over between the driver and a local worker as sealed memfds.

On the local backend the driver and each worker share a private socketpair
(made by the driver before the worker's exec; only the worker holds the other
end). A pickle larger than a threshold is written straight into an anonymous
memory file (``memfd_create``) as it is pickled, sealed against any change
(``F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``) and passed over
that socket with SCM_RIGHTS. The receiver refuses a file that is not a memfd,
is not sealed so, or whose size is not the one announced, before anything is
unpickled; then it maps it and unpickles. Two files stay unsealed, both the
driver's own and written again (fresh pages cost three times written ones):
an argument memfd holding only a pickle stream, which the worker reads into
the objects it builds and keeps no view of (``_pool``: the driver writes the
next call's arguments into it once this call ended; only a call of the same
isolation domain's, since the job's process that read it may still hold it
writable, and code of one domain must not reach another's arguments), and the memfd the driver
gives a call for its result (``Spill(slab=)``), accepted back only if it is that
very file (``load(own=)``). The channel authenticates what comes
through it, as it does for the inline arguments and the secret in the event, so
data that never touches the store needs no MAC pass: the store's objects
(Lambda, ``keep_objects``, a pickled future's result) stay HMAC-sealed.

Layout of a hand-off: the pickle stream (protocol 5) at offset 0, then its
out-of-band buffers (``PickleBuffer``: numpy arrays and the like), each at a
64-byte-aligned offset; ``Sealed.layout`` describes it. The format is
``wrenpack.wire.handoff``'s (``layout``, ``check_layout``); this module makes,
seals, sends and maps the files.

Arguments are mapped copy-on-write in the worker (out-of-band arrays are then
views of the driver's pages, writable by the call without changing them);
results are copied out by the driver and the memfd closed at once, so a
result's pages never keep counting against its worker's memory limit.

Standard library and cloudpickle only: the worker imports this.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import pickle
import threading
from typing import Any, Callable

from wrenpack.errors import CorruptObject
from wrenpack.wire import handoff as handoff_format
from wrenpack.worker.fds import close_all, close_quietly

log = logging.getLogger(__name__)

#: the seals a hand-off carries; the receiver refuses one without all of them
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL if hasattr(fcntl, "F_ADD_SEALS") else 0
#: buffers at least this large go out of band (smaller ones stay in the stream)
OOB_MIN = 64 * 1024
#: results larger than this are handed off instead of sealed into the reply
RESULT_MIN = 64 * 1024
_MAX_WRITE = 1 << 30

_lock = threading.RLock()  # reentrant: a collected Sealed may close (and release) while it is held
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


#: argument memfds of calls that ended, kept to be written again: pages a memfd
#: already holds are written about three times faster than fresh ones (10 MiB:
#: 3 ms against 10 ms here), and a map that streams its arguments (``wrenpack.feed``)
#: then writes its window's pages warm
#: kept argument memfds by isolation domain (``wire.event.isolation_domain``): a
#: memfd goes back only to calls of the domain whose process read it. That process
#: runs the user's code, which can keep the file open for writing (an unsealed
#: memfd, reopened through ``/proc/self/fd``) and write into it later; given to
#: another function's call, what that call ran with would be this code's choice.
_pool: dict[str, list[tuple[int, int]]] = {}  # domain -> [(fd, its size)]
_pool_bytes = 0
#: the most the pool keeps, in all and of one memfd
POOL_BYTES = 256 * 1024 * 1024
SLAB_MAX = 64 * 1024 * 1024


def _take_kept(domain: str) -> int | None:
    """A kept argument memfd of ``domain`` (offset reset) to pickle into, or None."""
    global _pool_bytes
    with _lock:
        kept = _pool.get(domain)
        while kept:
            fd, size = kept.pop()
            _pool_bytes -= size
            if not kept:
                del _pool[domain]
            try:
                os.lseek(fd, 0, os.SEEK_SET)
            except OSError:
                continue
            return fd
    return None


def _keep(fd: int, domain: str) -> None:
    """Keep an argument memfd no receiver reads any more for ``domain``'s next calls, or close it."""
    global _pool_bytes
    try:
        size = os.fstat(fd).st_size
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE:
            size = -1  # sealed since: never written again
    except OSError:
        size = -1
    with _lock:
        if 0 <= size <= SLAB_MAX and _pool_bytes + size <= POOL_BYTES:
            _pool.setdefault(domain, []).append((fd, size))
            _pool_bytes += size
            return
    close_quietly(fd)


def drain_pool() -> None:
    """Close the kept memfds (their pages go back to the system)."""
    global _pool_bytes
    with _lock:
        kept = [fd for fds in _pool.values() for fd, _size in fds]
        _pool.clear()
        _pool_bytes = 0
    close_all(kept)


class Sealed:
    """A sealed memfd this process owns: closed when the last holder closes it
    (``share`` adds a holder), or when collected."""

    def __init__(self, fd: int | None, layout: Any, counted: bool = False, on_close: Callable[[], None] | None = None,
                 recycle: str | None = None) -> None:
        self.fd: int | None = fd
        self.layout = layout
        self._counted = counted
        self._holders = 1
        self._on_close = on_close
        #: an unsealed argument memfd: back to this isolation domain's pool when closed (its call ended)
        self.recycle = recycle

    @property
    def size(self) -> int:
        return int(self.layout["size"])  # only of one this process made

    def share(self) -> "Sealed":
        with _lock:
            self._holders += 1
        return self

    def close(self) -> None:
        with _lock:
            self._holders -= 1
            if self._holders > 0:
                return
        self._close()

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                if self.recycle is not None:
                    _keep(fd, self.recycle)
                else:
                    os.close(fd)
            except OSError:
                pass
            if self._counted:
                _release()
        hook, self._on_close = self._on_close, None
        if hook is not None:
            hook()

    def __del__(self) -> None:
        self._close()


class Args:
    """One call's arguments on the local backend: the pickle (``main``: bytes, or
    a sealed memfd) and the shared objects it refers to (``blobs``, sealed memfds
    that other calls of the same map refer to as well)."""

    def __init__(self, main: "bytes | Sealed", blobs: list[Sealed]) -> None:
        self.main = main
        self.blobs = [b.share() for b in blobs]
        #: a memfd of the driver's for the call to write its result into (the
        #: feed's, ``wrenpack.feed``, which takes it back when the call ended)
        self.slab: Sealed | None = None
        #: called with this when it closes (the call ended) and has a slab: it goes back
        self.slab_back: Callable[["Args"], None] | None = None
        #: bytes of the call's result, when it came back as a memfd (the driver sets it)
        self.result_size = 0

    @property
    def size(self) -> int:
        main = self.main.size if isinstance(self.main, Sealed) else len(self.main)
        return main + sum(b.size for b in self.blobs)

    def fds(self) -> list[int]:
        """What travels with the call, in order: the pickle's memfd (if one), then the blobs'."""
        out = [self.main.fd] if isinstance(self.main, Sealed) else []
        out += [b.fd for b in self.blobs]
        if self.slab is not None:
            out.append(self.slab.fd)
        return [fd for fd in out if fd is not None]

    def close(self) -> None:
        if isinstance(self.main, Sealed):
            self.main.close()
            self.main = b""
        blobs, self.blobs = self.blobs, []
        for blob in blobs:
            blob.close()
        back, self.slab_back = self.slab_back, None
        if back is not None:
            back(self)
        elif self.slab is not None:
            slab, self.slab = self.slab, None
            slab.close()


def large_value(value: Any) -> bool:
    """An argument worth pickling once for every call that shares it."""
    if isinstance(value, (bytes, bytearray)):
        return len(value) >= OOB_MIN
    return type(value).__module__ == "numpy" and isinstance(getattr(value, "nbytes", None), int) and value.nbytes >= OOB_MIN


class _Ref:
    """Stands in, inside one call's pickle, for a large object several calls share."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_blob, (self.index,))


_loading = threading.local()


def _blob(index: int) -> Any:
    """The call's ``index``-th shared argument (only while its arguments are unpickled)."""
    loaders = getattr(_loading, "blobs", None)
    if loaders is None or not isinstance(index, int) or not 0 <= index < len(loaders):
        raise CorruptObject("a shared argument was referred to outside its call's arguments; re-run the call")
    return loaders[index]()


class Packer:
    """The driver's side for one map: pickles each call's arguments into a
    ``Spill`` (a sealed memfd above ``threshold``) and pickles a large bytes or
    array that several calls share (the same object, top-level argument) once,
    as a blob every such call refers to. Those calls' own pickles are then tiny."""

    def __init__(self, calls: Any, threshold: int) -> None:
        self.threshold = threshold
        seen: dict[int, int] = {}
        for args, kwargs in calls:
            for value in (*args, *kwargs.values()):
                if large_value(value):
                    seen[id(value)] = seen.get(id(value), 0) + 1
        self._shared = {k for k, n in seen.items() if n > 1}
        self._blobs: dict[int, tuple[Any, Sealed]] = {}  # id -> (the object, kept alive; its blob)

    def pack(self, args: tuple[Any, ...], kwargs: dict[str, Any], dump: Callable[..., Any], domain: str) -> "bytes | Args":
        """``dump(args, kwargs, spill)`` pickles (naming what fails); bytes when
        nothing is handed off (small, or the memfd budget is spent). ``domain`` is
        the call's isolation domain: its argument memfd is written again only for
        calls of that domain (``_pool``)."""
        used: list[Sealed] = []
        if self._shared:
            index: dict[int, int] = {}

            def swap(value: Any) -> Any:
                if id(value) not in self._shared:
                    return value
                blob = self._blob(value, dump)
                if blob is None:
                    return value
                if id(value) not in index:
                    index[id(value)] = len(used)
                    used.append(blob)
                return _Ref(index[id(value)])

            args = tuple(swap(v) for v in args)
            kwargs = {k: swap(v) for k, v in kwargs.items()}
        spill = Spill(self.threshold, "wrenpack-args", counted=True, reuse=domain) if reserve() else Spill(1 << 62, oob=False)
        main = dump(args, kwargs, spill)
        if isinstance(main, bytes) and not used:
            return main
        return Args(main, used)

    def _blob(self, value: Any, dump: Callable[..., Any]) -> Sealed | None:
        got = self._blobs.get(id(value))
        if got is not None:
            return got[1]
        if not reserve():
            return None
        import cloudpickle

        spill = Spill(0, "wrenpack-shared", counted=True)
        try:
            cloudpickle.Pickler(spill, protocol=5, buffer_callback=spill.buffer).dump(value)
            blob = spill.finish()
        except BaseException:
            spill.discard()
            raise
        assert isinstance(blob, Sealed)
        self._blobs[id(value)] = (value, blob)
        return blob

    def close(self) -> None:
        """Launched (or failed): the calls hold the blobs they use; drop ours."""
        blobs, self._blobs = self._blobs, {}
        for _value, blob in blobs.values():
            blob.close()


class call_blobs:
    """While a call's arguments are unpickled in the worker: its hand-offs
    (``context.handoff_fds``, in order: the pickle's memfd if ``"handoff"`` is in
    ``args``, then one per shared blob). ``main`` is the pickle's descriptor;
    every descriptor is closed on leaving."""

    def __init__(self, context: Any, args: dict[str, Any], loads: Callable[..., Any]) -> None:
        fds = list(getattr(context, "handoff_fds", None) or [])
        if fds:
            context.handoff_fds = []  # ours now
        self.main = fds.pop(0) if "handoff" in args and fds else None
        if args.get("slab") is True and fds and context is not None:
            # A memfd of the driver's to write the result into (``Spill(slab=)``): the handler's now.
            context.result_slab = fds.pop()
        self._fds: list[int | None] = list(fds)
        specs = args.get("blobs") or []
        self._loaders = [self._loader(i, spec, loads) for i, spec in enumerate(specs if isinstance(specs, list) else [])]

    def _loader(self, i: int, spec: Any, loads: Callable[..., Any]) -> Callable[[], Any]:
        done: list[Any] = []

        def get() -> Any:
            if not done:
                fd = self._fds[i] if i < len(self._fds) else None
                if i < len(self._fds):
                    self._fds[i] = None
                done.append(load(fd, spec, "shared argument", private=True, loads=loads))
            return done[0]

        return get

    def take_main(self) -> int | None:
        """The pickle's memfd; the caller closes it (``load`` does)."""
        fd, self.main = self.main, None
        return fd

    def __enter__(self) -> "call_blobs":
        _loading.blobs = self._loaders
        return self

    def __exit__(self, *exc: Any) -> None:
        _loading.blobs = None
        close_quietly(self.main, *self._fds)
        self.main = None
        self._fds = []
        # Each loader refers to this object: a cycle that kept every shared
        # argument a warm worker had loaded until a gc pass (241 MB after a map
        # of 10 MiB arguments, and the next small call exceeded memory=128).
        self._loaders = []


class Spill:
    """A write-only file for a pickler: in memory up to ``threshold`` bytes, then a
    memfd (``finish`` seals it). Big ``bytes`` are written by the pickler
    directly, without a copy in this process; out-of-band buffers (``buffer``,
    the pickler's ``buffer_callback``) are appended after the stream."""

    def __init__(self, threshold: int, name: str = "wrenpack", oob: bool = True, counted: bool = False,
                 reuse: str | None = None, slab: int | None = None, room: int | None = None) -> None:
        self.threshold = threshold
        self.name_ = name
        self.oob = oob
        self.counted = counted
        #: a result: a memfd the driver gave (its pages already allocated, and
        #: charged to the driver, not to this worker) to write into while it has room
        self.slab = slab
        self._room = 0
        #: the most this result may put in ``slab`` (the worker's memory left)
        self._budget = room
        #: arguments: the isolation domain of the call they are for, whose kept memfd
        #: they are written into, left unsealed to be kept again for that domain when
        #: it holds only the stream (the worker reads it, maps nothing)
        self.reuse = reuse
        self._mem = bytearray()
        self._fd: int | None = None
        self._pos = 0
        self._buffers: list[pickle.PickleBuffer] = []

    def _spill(self) -> None:
        if self.slab is not None:
            slab, self.slab = self.slab, None
            try:
                room = os.fstat(slab).st_size
                os.lseek(slab, 0, os.SEEK_SET)
            except OSError:
                room = 0
            if self._budget is not None:
                room = min(room, self._budget)
            if room > 0:
                self._fd, self._room = slab, room
                self._write_all(memoryview(self._mem))
                self._mem = bytearray()
                return
            os.close(slab)
        fd = _take_kept(self.reuse) if self.reuse is not None else None
        self._fd = fd if fd is not None else os.memfd_create(self.name_, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        if self._mem:
            self._write_all(memoryview(self._mem))
            self._mem = bytearray()

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if self._room and self._pos + len(view) > self._room:
            self._leave_slab()
        while len(view):
            n = os.write(self._fd, view[:_MAX_WRITE])
            self._pos += n
            view = view[n:]

    def _leave_slab(self) -> None:
        """The result outgrew the driver's memfd: on in a new one of our own (the
        driver's is never grown, so its pages stay all charged to the driver)."""
        assert self._fd is not None
        slab = self._fd
        fd = _copied(slab, self._pos, self.name_)
        os.close(slab)
        self._fd, self._room = fd, 0

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
            pad = handoff_format.padding(self._pos)
            if pad:
                self._write_all(memoryview(bytes(pad)))
            raw = buf.raw()
            spans.append([self._pos, raw.nbytes])
            self._write_all(raw)
        layout = handoff_format.layout(self._pos, stream, spans)
        fd, self._fd = self._fd, None
        if self._room:
            # In the driver's own memfd: it knows the file, and checks it is the one it gave.
            self._room = 0
            return Sealed(fd, layout)
        if self.reuse is not None and not self._buffers:
            # Read by the worker with positioned reads into the objects it builds, and
            # not touched once its call ended: no seal, so it can be written again.
            return Sealed(fd, layout, counted=self.counted, recycle=self.reuse)
        self._buffers = []
        try:
            if os.fstat(fd).st_size != self._pos:
                os.ftruncate(fd, self._pos)  # a kept memfd, larger: the receiver sees exactly the layout
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            except OSError as exc:
                if exc.errno != errno.EBUSY or self.reuse is None:
                    raise
                # A kept memfd the kernel will not seal against writes yet (its pages still held
                # where its last call was read): the bytes go to a fresh one, sealed instead.
                fresh = _copied(fd, self._pos, self.name_)
                os.close(fd)
                fd = fresh
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)  # (taken from self._fd above: ``discard`` no longer sees it)
            raise
        return Sealed(fd, layout, counted=self.counted)

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self.slab is not None:
            slab, self.slab = self.slab, None
            os.close(slab)
        self._buffers = []
        self._mem = bytearray()
        if self.counted:
            self.counted = False
            _release()


def _copied(src: int, size: int, name: str) -> int:
    """A new memfd (sealable) holding the first ``size`` bytes of memfd ``src``, copied in the kernel."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        done = 0
        while done < size:
            done += os.sendfile(fd, src, done, size - done) or _fail_copy()
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fail_copy() -> int:
    raise OSError("copying a result out of the driver's memory file ended early")


def dump(obj: Any, threshold: int, name: str = "wrenpack-result", oob: bool = False,
         pickler: Callable[..., Any] | None = None, slab: int | None = None, room: int | None = None) -> "bytes | Sealed":
    """Pickle ``obj`` (protocol 5): bytes if at most ``threshold``, else a sealed
    memfd, or ``slab`` (a memfd the driver gave, consumed) while it has room, and
    while the pickle is at most ``room`` bytes."""
    import cloudpickle

    spill = Spill(threshold, name, oob=oob, slab=slab, room=room)
    try:
        (pickler or cloudpickle.Pickler)(spill, protocol=5, buffer_callback=spill.buffer if oob else None).dump(obj)
        out = spill.finish()
    except BaseException:
        spill.discard()
        raise
    if spill.slab is not None:  # not needed: the result was small
        os.close(spill.slab)
        spill.slab = None
    return out


def _refuse(what: str, why: str) -> CorruptObject:
    return CorruptObject(f"the {what} was refused ({why}); nothing was unpickled: it did not come from wrenpack, re-run the call")


def _check(fd: int | None, layout: Any, what: str, kept_ok: bool = False, own: int | None = None) -> dict[str, Any]:
    """A received memfd is what it must be: a memfd, sealed with ``SEALS``, of the announced size.

    ``kept_ok`` (arguments, in the worker): an unsealed memfd holding only a
    pickle stream is accepted too, at least the announced size. The driver keeps
    such memfds to write the next calls' arguments into (``_pool``) once this
    call ended; the worker reads the stream with positioned reads into the
    objects it builds and maps nothing, so no value it keeps can change. The
    private socketpair authenticates the sender, as it does for inline arguments.

    ``own`` (a result, in the driver): the memfd the driver gave the call to
    write its result into; an unsealed file is accepted only if it is that one."""
    if fd is None:
        raise _refuse(what, "its memory file did not arrive")
    try:
        layout = handoff_format.check_layout(layout)
    except ValueError as exc:
        raise _refuse(what, str(exc)) from None
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise _refuse(what, "not a sealable memory file") from None
    size = os.fstat(fd).st_size
    if seals & SEALS != SEALS:
        if not (kept_ok and not layout["buffers"]) and not (own is not None and _same_file(fd, own)):
            raise _refuse(what, "its memory file is not sealed against writes, growth and shrinking")
        if size < layout["size"]:
            raise _refuse(what, f"its memory file holds {size} bytes, fewer than the {layout['size']} announced")
        return layout
    if size != layout["size"]:
        raise _refuse(what, f"its memory file holds {size} bytes, not the {layout['size']} announced")
    return layout


def _same_file(fd: int, other: int) -> bool:
    try:
        a, b = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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


def load(fd: int | None, layout: Any, what: str, *, private: bool, loads: Callable[..., Any], own: int | None = None) -> Any:
    """Check and unpickle a hand-off with ``loads(file, buffers)`` (``pickle.load``
    style); ``fd`` is consumed (closed here).

    Out-of-band buffers: ``private`` (arguments, in the worker) maps them
    copy-on-write and leaves them views of that mapping (freed with the value);
    otherwise (results, in the driver) they are copied out and nothing maps the
    pages when this returns."""
    try:
        layout = _check(fd, layout, what, kept_ok=private, own=own)
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
