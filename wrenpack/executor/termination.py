"""SIGTERM and SIGHUP stop a driver's calls and remove their objects before the driver ends.

``kill``, ``timeout``, a cancelled CI job, ``docker stop`` and a batch
scheduler's preemption send SIGTERM, whose default action ends the process at
once: no exit hook ran, so calls already sent to Lambda ran on and the jobs'
objects (arguments, a map_reduce's intermediates) stayed in the store. With an
executor made, a program that left SIGTERM at its default gets a handler that
runs wrenpack's exit cleanup (``Executor._exit``: running calls stopped, their
objects removed, as at a normal exit) and then lets SIGTERM's default action end
the process, as before: the same exit status, and nothing else of the program
runs (no ``finally``, no other exit hook, none of its done-callbacks, which the
cleanup's cancels would otherwise run: only wrenpack's own do, ``_not_wrenpacks``), so a
program or framework that catches ``SystemExit`` (a test runner, a server loop)
still ends. The cleanup
runs in a thread of its own, waited for at most ``CLEANUP_S``. The main thread,
which the handler interrupts between two bytecodes, may hold there any lock the
cleanup takes: the executor's, the local backend's, a logging handler's, a
progress wait's, an Event's of the standard library, the futures' one held in
``result()``; frozen in the handler, it held it for good, the cleanup waited for
it until ``CLEANUP_S`` and the process ended with its jobs' objects in the store.
So where the signal lands in library code (wrenpack's, the standard library's, the
packages the cleanup runs, such as boto3 and rich: where such locks are held;
not an installed program's own package) the main thread runs on, out of
its critical section, and stops at the first instruction of the program's own
code it comes back to (``_stop_in_program_code``): the cleanup runs meanwhile, and
nothing of the program runs after the signal. Landing in the program's own code,
it stops there at once, after letting go of the futures' lock for good
(``exit_on_sigterm``'s ``let_go``: a test holds it there). A SIGTERM more
than a second after the first ends the process at once; one within a second is
the same request sent twice (``timeout`` signals the program, then its process
group) and is ignored.

A program's own handler (or an ignored SIGTERM) is left alone, as are wrenpack's
own worker processes (they handle it themselves) and a spawned job's supervisor
(``leave_default``). A process forked from the driver (``os.fork``, a
``multiprocessing`` pool of the fork context) has SIGTERM's default action from
its first instruction (``_fork_hooks``): a Python handler runs only when the
process comes back to the interpreter, and a SIGTERM that reaches a child
between the fork and that point is dropped (17 of 20 children signalled right
after their fork ran on; ``multiprocessing.Pool.terminate`` hung on such a one).

SIGHUP gets the same handler, as it ends a program by default as SIGTERM does: a
closed terminal window, a dropped ssh connection, ``kill -HUP``. Before, it ended
the driver at once, and its jobs' objects and scratch areas stayed until ``wrenpack
clean --stale``. (The cleanup then runs with stderr gone: writes to the hung-up
terminal fail, and logging drops them.) A program run under ``nohup`` ignores SIGHUP:
left alone, as a program's own handler is. What this module says of SIGTERM holds for
SIGHUP (the signal that came ends the process; either, a second later, ends it at once).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

#: the longest the cleanup is waited for before the process ends anyway (s)
CLEANUP_S = 30.0
#: a SIGTERM this soon after the first is the same request again (s)
REPEAT_S = 1.0

#: the process that installed the handler (a forked child inherits it, and ends by default)
_installed_in: int | None = None
#: what the handler runs before the process ends (``wrenpack.executor.core``'s exit hook)
_cleanup: Callable[[], None] | None = None
#: what the handler runs first, in the main thread: it gives up the locks the cleanup needs
_let_go: Callable[[], None] | None = None
#: when the first SIGTERM (or SIGHUP) came (monotonic clock)
_first: float | None = None
#: the signals that end a program by default and get the handler when at their default
ENDING_SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def exit_on_sigterm(cleanup: Callable[[], None], let_go: Callable[[], None] | None = None) -> None:
    """Install the handler for each of ``ENDING_SIGNALS`` at its default, once per process,
    if this is the main thread of a driver (not a wrenpack worker, which has its own).
    ``let_go`` gives up, in the thread the handler interrupted, the locks ``cleanup`` takes."""
    global _installed_in, _cleanup, _let_go, _stdlib_roots, _locking_roots
    pid = os.getpid()
    if _installed_in == pid or threading.current_thread() is not threading.main_thread():
        return
    if "wrenpack.worker.handler" in sys.modules:  # a worker (local or Lambda): its own handling
        return
    try:
        ours = [signum for signum in ENDING_SIGNALS if signal.getsignal(signum) is signal.SIG_DFL]
        if not ours:
            return  # the program's own choice (its handlers, or ignored: nohup)
        _cleanup, _let_go = cleanup, let_go
        _stdlib_roots = _roots()  # (now: not imports and file lookups in the handler)
        _locking_roots = tuple(os.path.join(os.path.dirname(p), "") for p in (_WRENPACK_INIT, os.path.abspath(logging.__file__)))
        for signum in ours:
            signal.signal(signum, _stop)
    except (ValueError, OSError):  # (not the main interpreter, or no signals here)
        return
    _installed_in = pid
    _fork_hooks()


#: whether ``_fork_hooks`` registered its hooks (once per process: they stay for good)
_hooked = False
#: the forking thread's signal mask before ``_before_fork`` blocked SIGTERM
_mask = threading.local()


def _fork_hooks() -> None:
    """Children forked from now on start with SIGTERM's (and SIGHUP's) default action. They
    are blocked in the forking thread across the fork, so one sent to the child before it
    reset the action waits in the kernel, and ends it once unblocked; the parent's
    mask is as it was after the fork."""
    global _hooked
    if not _hooked and hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
        os.register_at_fork(before=_before_fork, after_in_parent=_restore_mask, after_in_child=_default_in_child)
        _hooked = True


def _before_fork() -> None:
    try:
        _mask.old = signal.pthread_sigmask(signal.SIG_BLOCK, set(ENDING_SIGNALS))
    except (OSError, ValueError):
        _mask.old = None


def _restore_mask() -> None:
    old = getattr(_mask, "old", None)
    _mask.old = None
    if old is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _default_in_child() -> None:
    for signum in ENDING_SIGNALS:
        try:
            if signal.getsignal(signum) is _stop:
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _restore_mask()  # (a SIGTERM that came meanwhile ends the child now)


@contextlib.contextmanager
def ctrl_c_in_exit_cleanup() -> Iterator[None]:
    """The exit cleanup runs with Ctrl-C's handler (Python's default, ``KeyboardInterrupt``)
    swapped for one that lets a second press within ``REPEAT_S`` of the cleanup's start
    go, as a repeated SIGTERM is: the impatient second press of the Ctrl-C that ended the
    program. It landed in the cleanup, which ended with "Exception ignored in atexit
    callback" and a traceback, and left a scratch area's objects or a map_reduce's
    intermediates in the store. A later press is the user insisting: it still raises
    (``core._at_exit`` then says, in one line, what removes what is left). Only in the
    main thread, and only where SIGINT has Python's default handler (a program's own is left)."""
    try:
        ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    except ValueError:  # (not the main interpreter)
        ours = False
    if not ours:
        yield
        return
    began = time.monotonic()

    def repeated(signum: int, frame: Any) -> None:
        if time.monotonic() - began >= REPEAT_S:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, repeated)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def leave_default() -> None:
    """No driver's handler here (a spawned job's supervisor: it handles SIGTERM itself,
    cancelling its job and recording why, and its job's objects stay)."""
    global _installed_in
    _installed_in = os.getpid()


def _stop(signum: int, frame: Any) -> None:
    """The handler: wrenpack's cleanup, then the default action. The cleanup runs in a
    thread of its own; the main thread, which the handler interrupted, waits for it (at
    most ``CLEANUP_S``) where it holds none of the locks the cleanup takes: at once if
    the signal landed in the program's own code, else once it is back there (``_park``)."""
    global _first, _package_roots
    if os.getpid() != _installed_in:  # a child forked without the hooks (os.fork is not all of them)
        _end(signum)
    if _over:  # (the cleanup is over: ``_watch`` signals the main thread to end the process)
        _end(signum, drain=False)
    now = time.monotonic()
    if _first is not None:
        if now - _first < REPEAT_S:
            return
        _end(signum, drain=False)  # asked again: the process ends now
    _first = now
    cleanup = _cleanup
    if cleanup is None:
        _end(signum)
    _package_roots = _find_package_roots()
    futures = sys.modules.get("wrenpack.futures")  # (imported: the executor that installed this uses it)
    if futures is not None:
        futures._program_callback = _not_wrenpacks  # (the program's done-callbacks are the program's code too)
    _log_aside()
    worker = threading.Thread(target=_run_cleanup, args=(cleanup, signum), name="wrenpack-sigterm-cleanup", daemon=True)
    # (the handler's caller is the frame the signal interrupted, or ``interrupts.Held``'s exit
    # that ran it late: the code running now, which ``frame`` may no longer be)
    here = sys._getframe(1) if frame is not None else None
    if here is None or _stops_here(here):
        # The program's own code, not called back by code that may hold a lock the cleanup takes:
        # it holds none (unless the program took one itself: the futures' lock is let go of, as
        # this thread never runs on after this)
        if _let_go is not None:
            _let_go()
        worker.start()
        _park(worker, signum, now)
    # Library code (wrenpack's, the standard library's: threading, logging, queue; boto3's, rich's):
    # it may hold any lock the cleanup takes (the executor's, the local backend's, a logging
    # handler's, an Event's), where it was stopped, for good. It runs on instead, out of its
    # critical section, and the main thread is stopped at the first instruction of the
    # program's own code it comes back to (a return, an exception, a callback): nothing of
    # the program runs after the signal, as before. Code that never comes back (waiting on
    # what the cleanup stops) is ended by ``_watch`` once the cleanup is over.
    worker.start()
    threading.Thread(target=_watch, args=(worker, signum, now), name="wrenpack-sigterm-watch", daemon=True).start()
    _stop_in_program_code(here, worker, signum, now)


#: set once the cleanup ended, or ran out of time (``_watch``)
_over = False
#: how long after the cleanup ``_watch`` waits for the main thread to end the process by the
#: signal before it ends it itself (a main thread in C code that a signal does not interrupt)
END_GRACE_S = 5.0


def _run_cleanup(cleanup: Callable[[], None], signum: int) -> None:
    log.info("wrenpack: %s: stopping the calls still running and removing their objects, then ending", _name(signum))
    cleanup()


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _park(worker: threading.Thread, signum: int, since: float) -> None:
    """The main thread waits for the cleanup, at most until ``CLEANUP_S`` after ``since``, and ends the process."""
    worker.join(max(0.0, CLEANUP_S - (time.monotonic() - since)))
    _end(signum)


def _watch(worker: threading.Thread, signum: int, since: float) -> None:
    """The cleanup is waited for here when the main thread ran on: once it is over (or at
    ``CLEANUP_S``), the main thread is signalled again and ends the process in the handler
    (``_over``); if it cannot run the handler (stuck in C code), the process ends from here."""
    global _over
    worker.join(max(0.0, CLEANUP_S - (time.monotonic() - since)))
    aside = _aside
    if aside is not None:
        # (here, not in the handler: the main thread, running on, may hold a lock a handler takes)
        aside.drain(DRAIN_S)
    _over = True
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, signum)
    except (OSError, ValueError, AttributeError):
        pass
    time.sleep(END_GRACE_S)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - ending anyway
            pass
    os._exit(128 + signum)


def _stop_in_program_code(frame: Any, worker: threading.Thread, signum: int, since: float) -> None:
    """Trace the main thread (``sys.settrace``, this thread's only) and park it at the first
    event in the program's own code: the next instruction of a program's frame on the
    stack (library code returned into it, or raised into it), or a call of its code."""
    def tracer(f: Any, event: str, arg: Any) -> Any:
        if not _stops_here(f):
            # (library code, or the program's called back by code taking the cleanup's locks: run
            # on, untraced inside; it stops no later than where it returns to, which is traced)
            return None
        sys.settrace(None)
        f.f_trace = None
        _park(worker, signum, since)
        return None

    global _parked_at_exit
    _parked_at_exit = (worker, signum, since)
    f = frame
    while f is not None:
        if _stops_here(f):  # (whether a frame is one never changes: its callers stay)
            f.f_trace = tracer
            f.f_trace_opcodes = True  # (at its next instruction, not its next line)
        f = f.f_back
    sys.settrace(tracer)


#: the cleanup, the signal and its time, while the main thread runs on (``_stop_in_program_code``)
_parked_at_exit: tuple[threading.Thread, int, float] | None = None


@atexit.register  # (registered first, run last: after wrenpack's own exit hooks)
def _park_at_exit() -> None:
    """A main thread that ran on after the signal into the interpreter's exit (the signal
    landed in an exit hook, or in library code the program's last line called) is stopped
    here, after the other exit hooks, until the cleanup is over: the process ends by the
    signal, not with the cleanup cut short by the interpreter's end."""
    parked = _parked_at_exit
    if parked is not None and os.getpid() == _installed_in:
        sys.settrace(None)
        _park(*parked)


def _in_program(frame: Any) -> bool:
    """Whether ``frame`` runs the program's own code: its main module's (wherever it is), or
    code outside library code. Code compiled from text (``<string>``) is its module's: a
    dataclass's ``__init__`` is the module's that made it (the local backend's make some,
    and run them with its lock held); without a module of its own (a namedtuple's
    ``__new__``, code the program ran with ``exec`` in a dict of its own) it is taken for
    library code, which the main thread runs on in rather than stopping where it may hold
    a lock."""
    g = frame.f_globals
    if g.get("__name__") == "__main__":
        return True
    filename = frame.f_code.co_filename
    if filename.startswith("<") and not filename.startswith("<frozen"):
        filename = g.get("__file__") or ""
        if not isinstance(filename, str) or not filename:
            return False
    return not _is_library(filename)


def _not_wrenpacks(fn: Any) -> bool:
    """Whether the done-callback ``fn`` is anything but wrenpack's own code, which alone runs in
    the cleanup (the map's plan, progress, ``as_completed``). Telling the program's callbacks
    apart instead missed those a library wraps: ``lru_cache``, ``singledispatch``, a
    ``partial`` of a thread pool's ``submit`` that runs the program's next stage. Unwrapped here:
    ``functools.partial``, a bound method, a callable object's ``__call__``."""
    for _ in range(8):
        if not isinstance(fn, functools.partial):
            break
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    if getattr(fn, "__code__", None) is None:
        # a callable object: its class's __call__ (the first class of its MRO that defines one)
        call = next((vars(klass)["__call__"] for klass in type(fn).__mro__ if "__call__" in vars(klass)), None)
        fn = getattr(call, "__func__", call)
    code = getattr(fn, "__code__", None)
    if code is None:
        return True  # (C code: a builtin, or a wrapper the program put around its own function)
    ours = _wrenpacks.get(code.co_filename)
    if ours is None:
        ours = _wrenpacks[code.co_filename] = os.path.realpath(code.co_filename).startswith(_WRENPACK_ROOT)
    return not ours


#: file name -> whether it is wrenpack's code (``_not_wrenpacks``: asked for each callback in the cleanup)
_wrenpacks: dict[str, bool] = {}


def _stops_here(frame: Any) -> bool:
    """Whether the main thread stops at ``frame``: the program's own code, with no code below
    it that takes locks the cleanup takes (wrenpack's, logging's): the program's code that
    such code called back (a logging handler of the program's, which logging calls with the
    handler's lock held) is no place to stop. (Other library code below, such as the runner
    that ran the program, pytest's or asyncio's, takes none of them.)"""
    if not _in_program(frame):
        return False
    f = frame.f_back
    while f is not None:
        if f.f_code.co_filename.startswith(_locking_roots):
            return False
        f = f.f_back
    return True


#: whether code of a file is library code (``_is_library``), by file name
_kinds: dict[str, bool] = {}
#: wrenpack's ``__init__.py`` (its folder is wrenpack's code)
_WRENPACK_INIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "__init__.py")
#: wrenpack's folder, as a file's real path begins
_WRENPACK_ROOT = os.path.join(os.path.realpath(os.path.dirname(_WRENPACK_INIT)), "")
#: the folders of the library code that takes the cleanup's locks: wrenpack's, logging's
_locking_roots: tuple[str, ...] = ()


def _is_library(filename: str) -> bool:
    """Whether code of ``filename`` is library code, which may hold a lock the cleanup takes:
    wrenpack's own, the standard library's, and that of the packages the cleanup runs
    (``_CLEANUP_PACKAGES``); not the program's: its script, its modules, and its own installed
    package (a tool installed with pip, run by its console script: its error handling and
    retries must not run on after the signal). (Code compiled from text: ``_in_program``.)"""
    known = _kinds.get(filename)
    if known is None:
        if filename.startswith("<"):
            known = filename.startswith("<frozen")  # (<frozen importlib._bootstrap>, <frozen runpy>)
        else:
            path = os.path.realpath(filename)
            known = path.startswith(_package_roots) or (
                # (the standard library's folder holds the interpreter's site-packages: not its code)
                path.startswith(_stdlib_roots) and not any(part in path for part in _PACKAGE_FOLDERS))
        _kinds[filename] = known
    return known


#: the top-level packages whose code the cleanup runs, or that the main thread may be in holding
#: a lock the cleanup takes: cloudpickle, the progress display (rich and what it imports), the
#: S3 store and Lambda clients (boto3 and what it imports), psutil, the shuffle's codecs
_CLEANUP_PACKAGES = ("cloudpickle", "psutil", "rich", "pygments", "markdown_it", "mdurl", "boto3", "botocore",
                     "s3transfer", "urllib3", "jmespath", "dateutil", "six", "certifi", "zstandard", "blake3",
                     "memory_profiler", "packaging", "tomli", "typing_extensions")
#: folders of installed packages (``_is_library``)
_PACKAGE_FOLDERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
#: the standard library's folders (``_roots``, when the handler is installed)
_stdlib_roots: tuple[str, ...] = ()
#: wrenpack's folder and those of the ``_CLEANUP_PACKAGES`` imported (``_find_package_roots``, when the
#: signal comes: a package not imported then runs nowhere)
_package_roots: tuple[str, ...] = ()


def _roots() -> tuple[str, ...]:
    """The standard library's folders (where an interpreter's site-packages may be too: ``_is_library``)."""
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.join(os.path.realpath(paths[k]), "") for k in ("stdlib", "platstdlib") if paths.get(k)}))


def _find_package_roots() -> tuple[str, ...]:
    """wrenpack's folder, and the folder (or file) of each of ``_CLEANUP_PACKAGES`` imported now:
    ``sys.modules`` look-ups, no import and no file search (this runs in the signal handler)."""
    found = [_WRENPACK_ROOT]
    for name in _CLEANUP_PACKAGES:
        origin = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(origin, str) and os.path.isabs(origin):
            folder = os.path.basename(origin).startswith("__init__.")
            found.append(os.path.join(os.path.realpath(os.path.dirname(origin)), "") if folder else os.path.realpath(origin))
    return tuple(found)


class _Aside(logging.Handler):
    """wrenpack's log records while the SIGTERM cleanup runs, written by a thread of their own
    to the handlers they would have reached (``_log_aside``): a handler that waits (a lock the
    stopped main thread holds, a logging library's of the program's; a network handler whose
    server is gone) then holds up that thread, not the cleanup. ``drain`` gives it a moment to
    write what it has before the process ends."""

    def __init__(self, targets: list[logging.Handler]) -> None:
        super().__init__()
        self.targets = targets
        self.records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write, name="wrenpack-sigterm-log", daemon=True)
        self.thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)

    def _write(self) -> None:
        while True:
            record = self.records.get()
            if record is None:
                return
            for handler in self.targets:  # (as Logger.callHandlers does)
                if record.levelno >= handler.level:
                    handler.handle(record)

    def drain(self, timeout: float) -> None:
        self.records.put(None)
        self.thread.join(timeout)


#: the cleanup's log writer (``_log_aside``), once the signal came
_aside: _Aside | None = None
#: how long the process waits, once the cleanup is over, for its log lines to be written
DRAIN_S = 1.0


def _log_aside() -> None:
    """Hand wrenpack's log records to an ``_Aside`` for the rest of the process: the handlers
    that a record of the ``wrenpack`` logger reaches (its own, then its ancestors' while it
    propagates; logging's last resort, stderr, when there are none) are called from there."""
    global _aside
    logger = logging.getLogger("wrenpack")
    targets: list[logging.Handler] = []
    node: logging.Logger | None = logger
    while node is not None:
        targets += node.handlers
        node = node.parent if node.propagate else None  # type: ignore[assignment]
    if not targets and logging.lastResort is not None:
        targets = [logging.lastResort]
    _aside = _Aside(targets)
    logger.handlers = [_aside]
    logger.propagate = False


def _end(signum: int, drain: bool = True) -> None:
    """SIGTERM's default action: the process ends, with the status a shell shows for it
    (``drain``: once the cleanup's log lines are written, at most ``DRAIN_S``)."""
    aside = _aside
    if drain and aside is not None and os.getpid() == _installed_in:
        aside.drain(DRAIN_S)  # (what the cleanup logged: written, unless a handler is stuck)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - ending anyway
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # (the signal ends the process before this returns)
    os._exit(128 + signum)
