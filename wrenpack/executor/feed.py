"""A map of large arguments, pickled as the workers take them.

Pickling every argument before the first call runs makes such a map wait for
all of it, and holds every pickle at once: 100 calls of 10 MiB spent a second
pickling before anything ran, and held 1 GB. On a backend of warm workers
where large arguments travel as memfds (``worker.handoff``), a map whose first call has a
large bytes or array among its arguments, and whose arguments cannot change
meanwhile (bytes, numbers, strings, tuples of them, arrays over bytes: a map's
arguments are what they were when ``map`` was called), is fed instead, as
``ProcessPoolExecutor`` feeds its queue: the first call is pickled and launched
by ``map`` itself, the others on the feed's own thread, at most ``window`` of
them launched and not ended at a time. A call that ends frees its memfd for the next one (``handoff._pool``), so
the window's pages are written warm.

What a map promises stays: its futures come back at once, in order, each with
its own outcome; a call whose arguments cannot be pickled fails alone with the
one-line error ``map`` would have raised (the first call's raises from ``map``
itself); cancelling a call not launched yet takes it out; ``shutdown`` waits
for the calls not launched yet; a call's future pickled into another call's
arguments launches it at once.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

from wrenpack.errors import WrenpackError
from wrenpack.futures import WrenFuture
from wrenpack.worker import handoff

if TYPE_CHECKING:
    from wrenpack.executor.core import Executor
    from wrenpack.executor.options import CallOptions
    from wrenpack.executor.prepared import Prepared

log = logging.getLogger(__name__)

#: calls launched and not ended, per worker
PER_WORKER = 2

Call = tuple[tuple[Any, ...], dict[str, Any]]


def launch_map(executor: Executor, fn: Callable[..., Any], calls: Sequence[Call], options: CallOptions,
               label: str) -> list[WrenFuture] | None:
    """Launch a map of large arguments as a feed; None when it is not one (the
    caller launches it as usual)."""
    caps = executor.capabilities
    window = PER_WORKER * caps.concurrency
    if not (caps.warm_pool and caps.handoff) or len(calls) <= window:
        return None
    args0, kwargs0 = calls[0]
    if not any(handoff.large_value(v) for v in (*args0, *kwargs0.values())):
        return None  # a large bytes or array as an argument is what makes a map worth feeding
    if not all(_frozen(v) for args, kwargs in calls for v in (*args, *kwargs.values())):
        # A map's arguments are what they were when map was called: pickled later, a
        # list or a writable array changed meanwhile would send what it became.
        return None
    executor.check_open()
    packer = executor.args_packer(calls)
    if packer is None:
        return None
    try:
        first = executor.prepare(fn, calls[:1], options, label, packer=packer)
    except BaseException:
        packer.close()
        raise
    if not isinstance(first.payloads[0], handoff.Args) or first.referenced:
        # Small arguments (the usual paths group them), or futures among them.
        for data in first.payloads:
            if isinstance(data, handoff.Args):
                data.close()
        packer.close()
        return None
    feed = _Feed(executor, fn, calls, options, label, packer, window, first)
    return feed.start()


class _Feed:
    """One map's calls: launched ``window`` at a time, in order."""

    def __init__(self, executor: Executor, fn: Callable[..., Any], calls: Sequence[Call], options: CallOptions,
                 label: str, packer: handoff.Packer, window: int, first: Prepared) -> None:
        self.executor = executor
        self.fn = fn
        self.calls = calls
        self.options = options
        self.label = label
        self.packer = packer
        self.window = window
        self.first = first
        self.fn_bytes = first.fn_bytes
        self.items = [WrenFuture("", "", f"{label}[{i}]") for i in range(len(calls))]
        for i, item in enumerate(self.items):
            item.hold_in(self.items, i)  # (an ended call's future is let go of: its result is the caller's)
        # ``with self.lock``, not ``with self.cond``: a C lock's ``with`` is entered once the lock is taken,
        # where Condition.__enter__ (Python) could be left by a Ctrl-C with it taken (``futures._Condition``)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        #: calls launched (or taken out) already, by index
        self.taken: set[int] = {0}
        self.next = 1
        self.running = 0
        self.done_launching = False
        # Memfds for the results (``Args.slab``), once a result came back large:
        # allocated by the driver (so charged to it, not to a worker's memory
        # limit), each ended call's passed on to the next one. Written warm, a
        # result costs the worker a third of what a fresh memfd does.
        self.slabs: list[handoff.Sealed] = []
        self.slab_room = 0  # bytes a slab holds; 0: results are not large (yet)
        self.slabs_made = 0
        self.args_of: dict[int, handoff.Args] = {}

    def start(self) -> list[WrenFuture]:
        ex = self.executor
        futures = list(self.items)  # (the caller's: ``self.items`` lets go of each as it ends)
        for i, item in enumerate(self.items[1:], 1):
            item._launched = threading.Event()
            item._launch_now = lambda i=i: self._launch_now(i)
            item._canceller = lambda i=i: self._take_out(i)
        ex.hold(self)
        self.running = 1
        self._track(0, self.first)
        try:
            ex.launch(self.fn, (), self.options, self.label, prepared=self.first, futures=futures[:1])
        except BaseException:
            self._finish()
            raise
        futures[0].add_done_callback(self._ended)
        threading.Thread(target=self._run, name=f"wrenpack-feed-{self.label}"[:60], daemon=True).start()
        return futures

    # -- the feed's thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    while self.running >= self.window:
                        self.cond.wait()
                    i = self._claim_next()
                    if i is None:
                        return
                    self.running += 1
                self._send(i)
        except BaseException as exc:  # noqa: BLE001 - the calls fail, never silently stay pending
            log.debug("the feed of %s stopped", self.label, exc_info=True)
            self._fail_rest(exc)
        finally:
            self._finish()

    def _claim_next(self) -> int | None:
        while self.next < len(self.items):
            i = self.next
            self.next += 1
            if i not in self.taken:
                self.taken.add(i)
                return i
        return None

    def _send(self, i: int) -> None:
        """Pickle call ``i`` and launch it; its own error if either fails."""
        item = self.items[i]
        try:
            prepared = self.executor.prepare(self.fn, self.calls[i : i + 1], self.options, self.label,
                                             packer=self.packer, fn_bytes=self.fn_bytes, first=i)
            self._track(i, prepared)
            self.executor.launch(self.fn, (), self.options, self.label, prepared=prepared, futures=[item])
        except Exception as exc:  # noqa: BLE001 - this call's failure, as map would have raised it
            item._resolve(False, exc.with_traceback(None))  # its message says it all: not the feed thread's frames
        except BaseException as exc:  # noqa: BLE001
            item._resolve(False, WrenpackError(f"{item.label}: the call could not be launched: {exc!r}"))
        finally:
            if item._launched is not None:
                item._launched.set()
        item.add_done_callback(self._ended)

    def _track(self, i: int, prepared: Prepared) -> None:
        """Give call ``i`` a memfd for its result, if results are large."""
        args = prepared.payloads[0] if prepared.payloads else None
        if not isinstance(args, handoff.Args):
            return
        with self.lock:
            self.args_of[i] = args
            slab = self.slabs.pop() if self.slabs else None
            make = slab is None and self.slab_room and self.slabs_made < self.window
            if make:
                self.slabs_made += 1
            room = self.slab_room
        if make:
            slab = _new_slab(room)
            if slab is None:
                with self.lock:
                    self.slabs_made -= 1
        args.slab = slab
        args.slab_back = lambda args, i=i: self._slab_back(i, args)

    def _slab_back(self, i: int, args: handoff.Args) -> None:
        """Call ``i`` ended, its result read (``Args.close``, before its future
        resolves): its result memfd goes to the next call, or is closed."""
        with self.lock:
            self.args_of.pop(i, None)
            slab, args.slab = args.slab, None
            size = args.result_size
            close: list[handoff.Sealed] = []
            if size >= handoff.RESULT_MIN and size > self.slab_room:
                # The first large result, or a larger one: slabs of the new size from now on.
                self.slab_room = _room_for(size)
                close, self.slabs = self.slabs, []
            if slab is not None:
                (self.slabs if slab.layout.get("room", 0) >= self.slab_room else close).append(slab)
            close += self._unneeded_slabs()
            self.slabs_made -= len(close)
        for slab in close:
            slab.close()

    def _unneeded_slabs(self) -> list[handoff.Sealed]:
        """The free result memfds, taken out, once the map launched its last call
        and every call ended: nothing is left behind (``cond`` held)."""
        if not (self.done_launching and not self.args_of):
            return []
        free, self.slabs = self.slabs, []
        return free

    def _ended(self, _fut: WrenFuture) -> None:
        with self.lock:
            self.running -= 1
            self.cond.notify()

    # -- the caller's threads ---------------------------------------------------------
    def _launch_now(self, i: int) -> None:
        """Its future is being pickled into another call's arguments: launch it now."""
        with self.lock:
            if i in self.taken:
                return
            self.taken.add(i)
            self.running += 1
        self._send(i)

    def _take_out(self, i: int) -> bool:
        """Cancel a call not launched yet."""
        with self.lock:
            if i in self.taken:
                return False
            self.taken.add(i)
        return True

    def _fail_rest(self, exc: BaseException) -> None:
        with self.lock:
            rest = [i for i in range(len(self.items)) if i not in self.taken]
            self.taken.update(rest)
        err = exc if isinstance(exc, Exception) else WrenpackError(f"{self.label}: the calls could not be launched: {exc!r}")
        for i in rest:
            self.items[i]._resolve(False, err)
            if self.items[i]._launched is not None:
                self.items[i]._launched.set()

    def _finish(self) -> None:
        self.packer.close()  # each launched call holds the shared objects it refers to
        with self.lock:
            self.done_launching = True
            close = self._unneeded_slabs()
            self.slabs_made -= len(close)
        for slab in close:
            slab.close()
        self.executor.unhold(self)


_FROZEN_TYPES = frozenset({bytes, str, int, float, complex, bool, type(None), range, type(Ellipsis)})


def _frozen(value: Any, depth: int = 0) -> bool:
    """``value`` cannot change between ``map`` and its pickling: bytes, numbers,
    strings (those exact types: a subclass's instance may carry attributes),
    tuples (a namedtuple too) and frozensets of such, and numpy arrays over
    ``bytes``. An array that owns its memory is not, even read-only: numpy lets
    its owner make it writable again."""
    t = type(value)
    if t in _FROZEN_TYPES:
        return True
    if (t is tuple or t is frozenset or (isinstance(value, tuple) and hasattr(t, "_fields")
                                          and not hasattr(value, "__dict__"))) and depth < 4:
        return all(_frozen(v, depth + 1) for v in value)
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        base = value.base
        for _ in range(8):  # a view of a view ... of an array over bytes
            if type(base) is bytes:
                return not value.flags.writeable
            if type(base).__name__ != "ndarray":
                return False
            base = base.base
    return False


def _room_for(size: int) -> int:
    """A result slab's size for results of ``size`` bytes: a little more, in MiB."""
    mib = 1 << 20
    return (size + size // 16 + mib - 1) // mib * mib


def _new_slab(room: int) -> handoff.Sealed | None:
    """A memfd of ``room`` bytes whose pages the driver allocates (so they are
    charged to the driver), for a call to write its result into."""
    if room > handoff.SLAB_MAX:
        return None
    fd = os.memfd_create("wrenpack-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.posix_fallocate(fd, 0, room)
    except OSError:
        os.close(fd)
        return None
    return handoff.Sealed(fd, {"room": room})
