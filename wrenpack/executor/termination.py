"""SIGTERM ends a driver as Ctrl-C does.

``kill``, ``timeout``, a cancelled CI job, ``docker stop`` and a batch
scheduler's preemption send SIGTERM, whose default action ends the process at
once: no exit hook runs, so calls already sent to Lambda ran on and the jobs'
objects (arguments, a map_reduce's intermediates) stayed in the store. With
an executor made, a program that left SIGTERM at its default gets a handler
that raises ``SystemExit(143)`` in the main thread instead: ``finally`` blocks
run, then the exit hook stops the calls still running and removes their
objects (``Executor._exit``), as after Ctrl-C. A later SIGTERM ends the
process at once, as before; one within a second of the first is the same
request sent twice (``timeout`` signals the program, then its process group)
and is ignored.

A program's own handler (or an ignored SIGTERM) is left alone, as are wrenpack's
own worker processes (they handle it themselves) and a process forked from the
driver (it ends as it did: the signal's default action).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

#: the process that installed the handler (a forked child inherits it, and ends by default)
_installed_in: int | None = None


def exit_on_sigterm() -> None:
    """Install the handler, once per process, if SIGTERM is at its default and this is
    the main thread of a driver (not a wrenpack worker, which has its own)."""
    global _installed_in
    pid = os.getpid()
    if _installed_in == pid or threading.current_thread() is not threading.main_thread():
        return
    if "wrenpack.worker.handler" in sys.modules:  # a worker (local or Lambda): its own handling
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program's own choice
        signal.signal(signal.SIGTERM, _stop)
    except (ValueError, OSError):  # (not the main interpreter, or no signals here)
        return
    _installed_in = pid


def leave_default() -> None:
    """This process keeps SIGTERM's default action (a spawned job's supervisor: SIGTERM
    ends it at once, as ``wrenpack jobs`` then reports, and its job's objects stay)."""
    global _installed_in
    _installed_in = os.getpid()


#: a SIGTERM this soon after the first is the same request again (s)
REPEAT_S = 1.0
#: when the first SIGTERM came (monotonic clock)
_first: float | None = None


def _stop(signum: int, frame: Any) -> None:
    """The handler: the first SIGTERM raises SystemExit in the main thread."""
    global _first
    if os.getpid() != _installed_in:  # a forked child: the default action, as before
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    now = time.monotonic()
    if _first is not None:
        if now - _first < REPEAT_S:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # asked again: the process ends at once
        os.kill(os.getpid(), signum)
        return
    _first = now
    log.info("wrenpack: SIGTERM: ending the program as Ctrl-C does (its calls are stopped, their objects removed)")
    raise SystemExit(128 + signum)
