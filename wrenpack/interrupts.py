"""Ctrl-C held back while the caller's thread does the driver's bookkeeping.

Python runs a signal's handler in the main thread, between any two bytecodes,
so a ``KeyboardInterrupt`` can land in the middle of work that must finish
once begun. The local backend reads a call's reply on the thread waiting in
``result()`` (``LocalBackend.wait_here``), and completing the call there
updates the executor's tables, resolves the future and gives the worker back
to the dispatcher. Cut short, a call failed with the interrupt as its error
("wrenpack could not complete the call: KeyboardInterrupt", though it had run
to its result), and the interrupt itself was swallowed. ``Held`` runs such
work with SIGINT's handler swapped for one that notes the signal, and calls the
original handler afterwards: the interrupt is raised when the work is done, by
the program's own handler, as if it had come a moment later.

Only in the main thread (where handlers run and can be set), and only SIGINT:
wrenpack's own SIGTERM handler ends the process rather than raising
(``wrenpack.executor.termination``). The work held is short (one reply read
and its call completed); the swap costs two ``sigaction`` calls, about 8 us,
so it is made only around a reply that came, not around the wait for it."""
from __future__ import annotations

import signal
import threading
from typing import Any


class Held:
    """``with Held():`` SIGINT's Python handler runs when the block has ended, if SIGINT came meanwhile."""

    __slots__ = ("_saved", "_came")

    def __init__(self) -> None:
        self._saved: Any = None
        self._came: Any = None

    def _note(self, signum: int, frame: Any) -> None:
        self._came = frame

    def __enter__(self) -> "Held":
        if threading.current_thread() is threading.main_thread():
            try:
                saved = signal.signal(signal.SIGINT, self._note)
            except ValueError:  # (not the main interpreter)
                return self
            if callable(saved):
                self._saved = saved
            else:  # (ignored, or the default action: nothing of Python's to hold)
                signal.signal(signal.SIGINT, saved)
        return self

    def __exit__(self, *exc: Any) -> None:
        saved = self._saved
        if saved is None:
            return
        self._saved = None
        signal.signal(signal.SIGINT, saved)
        if self._came is not None:
            frame, self._came = self._came, None
            saved(signal.SIGINT, frame)  # (raises KeyboardInterrupt, or runs the program's own handler)
