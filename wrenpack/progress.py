"""The progress ``wrenpack.get`` shows while it waits, wherever the user is.

- ``"bar"``: a terminal (stderr is a TTY) gets a rich bar that disappears when done;
- ``"notebook"``: a Jupyter kernel gets a widget (ipywidgets, when installed),
  else an HTML line that updates itself in place;
- ``"log"``: anywhere else (a pipe, a CI log, a file), a plain line on stderr
  every ``LOG_EVERY_S`` seconds and one at the end:
  ``wrenpack: 40/100 calls done, 2 failed, 12 s``.

``progress=None`` (the default, or the ``progress`` setting) shows the bar on a
terminal and the widget in a notebook, for more than one call, and nothing
elsewhere; ``progress=True`` shows whichever fits, the log lines included.

Progress is output the user asked for, not a log record: it goes to stderr (or
the notebook) whether or not logging is configured, as a progress bar does.
"""
from __future__ import annotations

import concurrent.futures as cf
import html
import sys
import threading
import time
from typing import Any, Sequence

from wrenpack import config

#: seconds between two lines of the ``"log"`` display
LOG_EVERY_S = 10.0
#: seconds between two redraws of the notebook display (the last state is always drawn)
NOTEBOOK_EVERY_S = 0.2


def choose(progress: Any, count: int) -> str | None:
    """The display for a wait on ``count`` calls: ``"bar"``, ``"notebook"``,
    ``"log"``, or None for none. ``progress`` is ``get``'s argument (None: the
    ``progress`` setting decides)."""
    if progress is None:
        progress = config.current().progress
    else:
        progress = config.check_progress(progress, "get(progress=...)")
    if progress is False:
        return None
    if progress is None:  # automatic: only where a display cannot get in the way
        if count < 2:
            return None
        if in_jupyter_kernel():
            return "notebook"
        return "bar" if _stderr_is_terminal() else None
    if progress is True:
        if in_jupyter_kernel():
            return "notebook"
        return "bar" if _stderr_is_terminal() else "log"
    return str(progress)


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook, JupyterLab, VS Code, Colab).

    There IPython is already imported and its shell has a kernel; a terminal
    IPython's shell has none, and a plain script never imported IPython (this
    does not import it: that would cost a script a second)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a half-imported or unusual IPython: no kernel to draw in
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def wait(futures: Sequence[cf.Future], timeout: float | None, mode: str) -> None:
    """Wait for every future, showing progress in ``mode`` meanwhile; raise
    ``concurrent.futures.TimeoutError`` if they are not all done in ``timeout`` s."""
    total = len(futures)
    if not total:
        return
    tally = _Tally()
    for fut in futures:
        fut.add_done_callback(tally.finished)
    del futures  # (the tally counts; a timeout's traceback then holds no future)
    display = _DISPLAYS[mode](total)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    done = failed = 0
    try:
        while True:
            now = time.monotonic()
            waits = [t for t in (display.next_update(now), None if deadline is None else deadline - now) if t is not None]
            done, failed = tally.wait_for_change(done, min(waits) if waits else None)
            now = time.monotonic()
            if done >= total:
                return
            display.update(done, failed, now - start)
            if deadline is not None and now >= deadline:
                raise cf.TimeoutError(f"{total - done} of {total} calls not finished after {timeout} s")
    finally:
        done, failed = tally.counts()
        display.close(done, failed, time.monotonic() - start)


class _Tally:
    """How many of the futures are done and how many failed, counted by their
    done callbacks (from whichever thread finishes them): one pass over the
    futures, however long the wait."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._done = 0
        self._failed = 0

    def finished(self, fut: cf.Future) -> None:
        failed = not fut.cancelled() and fut.exception() is not None
        with self._changed:
            self._done += 1
            self._failed += failed
            self._changed.notify_all()

    def counts(self) -> tuple[int, int]:
        with self._changed:
            return self._done, self._failed

    def wait_for_change(self, seen: int, timeout: float | None) -> tuple[int, int]:
        """The counts once more than ``seen`` are done, or after ``timeout`` s."""
        with self._changed:
            if self._done == seen and (timeout is None or timeout > 0):
                self._changed.wait(timeout)
            return self._done, self._failed


def status_line(done: int, total: int, failed: int, elapsed: float) -> str:
    """``wrenpack: 40/100 calls done, 2 failed, 12 s``."""
    failures = f", {failed} failed" if failed else ""
    return f"wrenpack: {done}/{total} calls done{failures}, {elapsed:.0f} s"


class _Display:
    """One way of showing progress; ``next_update`` says in how many seconds it
    wants to be updated even if nothing finished (None: only on a change)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def next_update(self, now: float) -> float | None:
        return None

    def update(self, done: int, failed: int, elapsed: float) -> None:
        pass

    def close(self, done: int, failed: int, elapsed: float) -> None:
        pass


class _Bar(_Display):
    """A rich bar on stderr, gone when the wait ends (the terminal stays clean)."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        # rich costs a tenth of a second to import: only a wait that shows it pays
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]wrenpack"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
                                  TimeElapsedColumn(), transient=True, console=Console(stderr=True))
        self._task = self._progress.add_task("calls", total=total, failed="")
        self._progress.start()

    def update(self, done: int, failed: int, elapsed: float) -> None:
        self._progress.update(self._task, completed=done, failed=f"[red]{failed} failed" if failed else "")

    def close(self, done: int, failed: int, elapsed: float) -> None:
        self.update(done, failed, elapsed)
        self._progress.stop()


class _Log(_Display):
    """A line on stderr every ``LOG_EVERY_S`` seconds, and one at the end."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._stream = sys.stderr
        self._next = time.monotonic() + LOG_EVERY_S

    def next_update(self, now: float) -> float | None:
        return max(0.0, self._next - now)

    def update(self, done: int, failed: int, elapsed: float) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._write(status_line(done, self.total, failed, elapsed))
            self._next = now + LOG_EVERY_S

    def close(self, done: int, failed: int, elapsed: float) -> None:
        self._write(status_line(done, self.total, failed, elapsed))

    def _write(self, line: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nobody reads it
            self._stream = None


class _Notebook(_Display):
    """A widget in the notebook (ipywidgets), or else an HTML line updated in
    place (a display with a ``display_id``, which every Jupyter front end
    redraws); both stay, showing the final state, when the wait ends."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        # IPython is imported already (we are in its kernel); ipywidgets is optional
        from IPython.display import display

        self._last = 0.0
        self._bar: Any = None
        self._handle: Any = None
        try:
            import ipywidgets
        except ImportError:
            self._handle = display(self._bundle(0, 0, 0.0), raw=True, display_id=True)
        else:
            self._bar = ipywidgets.IntProgress(value=0, min=0, max=max(total, 1), description="wrenpack", bar_style="info")
            self._label = ipywidgets.Label(value=status_line(0, total, 0, 0.0))
            display(ipywidgets.HBox([self._bar, self._label]))

    def next_update(self, now: float) -> float | None:
        return None

    def update(self, done: int, failed: int, elapsed: float, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < NOTEBOOK_EVERY_S:
            return  # (each redraw is a message to the front end)
        self._last = now
        if self._bar is not None:
            self._bar.value = done
            self._label.value = status_line(done, self.total, failed, elapsed)
            if final:
                self._bar.bar_style = "danger" if failed or done < self.total else "success"
        else:
            self._handle.update(self._bundle(done, failed, elapsed), raw=True)

    def close(self, done: int, failed: int, elapsed: float) -> None:
        self.update(done, failed, elapsed, final=True)

    def _bundle(self, done: int, failed: int, elapsed: float) -> dict[str, str]:
        line = status_line(done, self.total, failed, elapsed)
        bar = f'<progress value="{done}" max="{max(self.total, 1)}" style="width: 20em"></progress>'
        return {"text/plain": line, "text/html": f"<div>{bar} <code>{html.escape(line)}</code></div>"}


_DISPLAYS: dict[str, type[_Display]] = {"bar": _Bar, "notebook": _Notebook, "log": _Log}
