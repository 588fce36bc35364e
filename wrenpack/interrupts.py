"""Signals held back while the caller's thread does the driver's bookkeeping.

Python runs a signal's handler in the main thread, between any two bytecodes,
so a ``KeyboardInterrupt`` (Ctrl-C), or the ``SystemExit`` a program's SIGTERM
handler raises, can land in the middle of work that must finish once begun.
The local backend reads a call's reply on the thread waiting in ``result()``
(``LocalBackend.wait_here``), and completing the call there updates the
executor's tables, resolves the future and gives the worker back to the
dispatcher. Cut short, a call failed with the interrupt as its error
("wrenpack could not complete the call: KeyboardInterrupt", though it had run
to its result) and the interrupt was swallowed; or, cut short inside the read,
the call never completed, and ``shutdown(wait=True)`` in the program's
``except SystemExit`` waited for it for good. ``Held`` runs such work with the
Python handlers of the signals programs handle (``HELD``) swapped for one that
notes the signal, and calls the original handlers afterwards: the exception is
raised when the work is done, by the program's own handler, as if the signal
had come a moment later.

Only in the main thread (where handlers run and can be set), and only signals
with a Python handler (a signal left at its default action or ignored is the
kernel's business). The handlers are swapped, and put back, in one C call each
(``map`` over ``_signal.signal``: no bytecode between two swaps, so no handler
runs with some swapped and not others). The work held is short (one reply read
and its call completed); the swap costs two ``sigaction`` calls per handler
(SIGINT's, and SIGTERM's where the program or wrenpack set one), a few
microseconds, so it is made only around a reply that came, not around the wait
for it."""
from __future__ import annotations

import _signal
import signal
import threading
import time
from itertools import repeat
from typing import Any, Callable

#: the signals whose Python handlers are held: those programs handle to stop or
#: to be told something (a handler of another signal runs when it comes)
HELD: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name))


class Held:
    """``with Held():`` the Python handlers of ``HELD`` signals that came meanwhile run when the block has ended."""

    __slots__ = ("_nums", "_saved", "_came")

    def __init__(self) -> None:
        self._nums: list[int] = []
        self._saved: list[Any] = []
        self._came: list[tuple[int, Any]] = []

    def _note(self, signum: int, frame: Any) -> None:
        self._came.append((signum, frame))

    def __enter__(self) -> "Held":
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            nums = [n for n, h in zip(HELD, map(_signal.getsignal, HELD)) if callable(h)]
            if nums:
                self._saved = list(map(_signal.signal, nums, repeat(self._note)))
        except ValueError:  # (not the main interpreter)
            return self
        self._nums = nums
        return self

    def __exit__(self, *exc: Any) -> None:
        nums, saved = self._nums, self._saved
        if not nums:
            return
        self._nums, self._saved = [], []
        list(map(_signal.signal, nums, saved))
        came, self._came = self._came, []
        handlers = dict(zip(nums, saved))
        done: set[int] = set()
        for signum, frame in came:
            if signum not in done:  # (twice while held is once, as the kernel keeps one pending)
                done.add(signum)
                handlers[signum](signum, frame)  # (raises KeyboardInterrupt, or runs the program's own handler)


#: the longest one wait of the main thread in wrenpack's code lasts before it returns to the
#: interpreter, which then runs the Python handlers of signals another thread took (``sliced``)
SIGNAL_CHECK_S = 0.25


def sliced(timeout: float | None) -> float | None:
    """``timeout``, cut to ``SIGNAL_CHECK_S`` in the main thread (whose callers wait again
    until what they wait for has come, or their own timeout has passed).

    The kernel hands a signal sent to the process to any thread that does not block it.
    One that came while all were stopped (Ctrl-Z, then ``kill %1`` or the terminal
    closing: SIGTERM or SIGHUP, then SIGCONT) goes to whichever runs first, often one of
    wrenpack's; Python then runs its handler in the main thread, but only once that
    thread is back in the interpreter. Blocked in ``result()``, ``wrenpack.get`` or
    ``shutdown()``, it ran wrenpack's exit cleanup (or the program's handler) after the
    calls had run to their end. (Blocking the signals in wrenpack's threads instead kept
    them blocked in the processes those threads start: the local workers, and whatever a
    done-callback runs.)"""
    if threading.current_thread() is threading.main_thread():
        return SIGNAL_CHECK_S if timeout is None else min(timeout, SIGNAL_CHECK_S)
    return timeout


def wait_sliced(wait: Callable[[float | None], Any], done: Callable[[], bool], timeout: float | None) -> bool:
    """Call ``wait`` (an Event's or a Condition's, its lock held) until ``done()``, or until
    ``timeout`` s have passed, each wait at most ``sliced`` long; whether ``done()``."""
    end = None if timeout is None else time.monotonic() + timeout
    while not done():
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return False
        wait(sliced(left))
    return True
