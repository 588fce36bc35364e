"""SIGTERM stops a driver's calls and removes their objects before the driver ends.

``kill``, ``timeout``, a cancelled CI job, ``docker stop`` and a batch
scheduler's preemption send SIGTERM, whose default action ends the process at
once: no exit hook ran, so calls already sent to Lambda ran on and the jobs'
objects (arguments, a map_reduce's intermediates) stayed in the store. With an
executor made, a program that left SIGTERM at its default gets a handler that
runs wrenpack's exit cleanup (``Executor._exit``: running calls stopped, their
objects removed, as at a normal exit) and then lets SIGTERM's default action end
the process, as before: the same exit status, and nothing else of the program
runs (no ``finally``, no other exit hook), so a program or framework that
catches ``SystemExit`` (a test runner, a server loop) still ends. The cleanup
runs in a thread of its own, waited for at most ``CLEANUP_S``; locks the main
thread may hold where the handler runs and the cleanup needs (the futures' lock,
held between bytecodes of ``result()``) are let go first, for good, since the
main thread never runs on (``exit_on_sigterm``'s ``let_go``). A SIGTERM more
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
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

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
#: when the first SIGTERM came (monotonic clock)
_first: float | None = None


def exit_on_sigterm(cleanup: Callable[[], None], let_go: Callable[[], None] | None = None) -> None:
    """Install the handler, once per process, if SIGTERM is at its default and this is
    the main thread of a driver (not a wrenpack worker, which has its own). ``let_go``
    gives up, in the thread the handler interrupted, the locks ``cleanup`` takes."""
    global _installed_in, _cleanup, _let_go
    pid = os.getpid()
    if _installed_in == pid or threading.current_thread() is not threading.main_thread():
        return
    if "wrenpack.worker.handler" in sys.modules:  # a worker (local or Lambda): its own handling
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program's own choice
        _cleanup, _let_go = cleanup, let_go
        signal.signal(signal.SIGTERM, _stop)
    except (ValueError, OSError):  # (not the main interpreter, or no signals here)
        return
    _installed_in = pid
    _fork_hooks()


#: whether ``_fork_hooks`` registered its hooks (once per process: they stay for good)
_hooked = False
#: the forking thread's signal mask before ``_before_fork`` blocked SIGTERM
_mask = threading.local()


def _fork_hooks() -> None:
    """Children forked from now on start with SIGTERM's default action. SIGTERM is
    blocked in the forking thread across the fork, so one sent to the child before it
    reset the action waits in the kernel, and ends it once unblocked; the parent's
    mask is as it was after the fork."""
    global _hooked
    if not _hooked and hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
        os.register_at_fork(before=_before_fork, after_in_parent=_restore_mask, after_in_child=_default_in_child)
        _hooked = True


def _before_fork() -> None:
    try:
        _mask.old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (OSError, ValueError):
        _mask.old = None


def _restore_mask() -> None:
    old = getattr(_mask, "old", None)
    _mask.old = None
    if old is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _default_in_child() -> None:
    try:
        if signal.getsignal(signal.SIGTERM) is _stop:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    _restore_mask()  # (a SIGTERM that came meanwhile ends the child now)


def leave_default() -> None:
    """No driver's handler here (a spawned job's supervisor: it handles SIGTERM itself,
    cancelling its job and recording why, and its job's objects stay)."""
    global _installed_in
    _installed_in = os.getpid()


def _stop(signum: int, frame: Any) -> None:
    """The handler: wrenpack's cleanup, then the default action."""
    global _first
    if os.getpid() != _installed_in:  # a child forked without the hooks (os.fork is not all of them)
        _end(signum)
    now = time.monotonic()
    if _first is not None:
        if now - _first < REPEAT_S:
            return
        _end(signum)  # asked again: the process ends now
    _first = now
    cleanup = _cleanup
    if cleanup is not None:
        if _let_go is not None:
            # (this thread may hold, between two bytecodes, a lock the cleanup takes: it waited
            # for it until CLEANUP_S and removed nothing; this thread never runs on after this)
            _let_go()
        log.info("wrenpack: SIGTERM: stopping the calls still running and removing their objects, then ending")
        # (a thread of its own: this one may have been stopped holding a lock the cleanup takes)
        worker = threading.Thread(target=cleanup, name="wrenpack-sigterm-cleanup", daemon=True)
        worker.start()
        worker.join(CLEANUP_S)
    _end(signum)


def _end(signum: int) -> None:
    """SIGTERM's default action: the process ends, with the status a shell shows for it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - ending anyway
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # (the signal ends the process before this returns)
    os._exit(128 + signum)
