"""The progress ``wrenpack.get`` shows while it waits, wherever the user is.

- ``"bar"``: a terminal (stderr is a TTY that can redraw a line) gets a rich
  bar that disappears when done; where it cannot be drawn (a pipe, a file,
  ``TERM=dumb``) the ``"log"`` lines stand in for it;
- ``"notebook"``: a Jupyter kernel gets a widget (ipywidgets, when installed),
  else an HTML line that updates itself in place; outside a kernel, the bar
  or the log lines stand in for it;
- ``"log"``: anywhere else (a pipe, a CI log, a file), a plain line every
  ``LOG_EVERY_S`` seconds and one at the end:
  ``wrenpack: 40/100 calls done, 2 failed, 12 s`` (and ``, 3 cancelled``
  when some were).

``progress=None`` (the default, or the ``progress`` setting) shows the bar on a
terminal and the widget in a notebook, for more than one call, and nothing
elsewhere; ``progress=True`` shows whichever fits, the log lines included.

Progress is output the user asked for: the ``"log"`` lines are records of the
``wrenpack.progress`` logger (INFO) where the program's logging takes them, and
plain lines on stderr where it does not (no logging configured, or only
warnings), so asking for them always shows them. While the bar is up, what the
program writes to the terminal through ``sys.stdout``/``sys.stderr`` or its
logging handlers is printed above it, never into it.
"""
from __future__ import annotations

import concurrent.futures as cf
import html
import io
import logging
import os
import sys
import threading
import time
from typing import Any, NamedTuple, Sequence

from wrenpack import config, interrupts
from wrenpack.errors import ExecutorShutdown, RemoteTraceback

log = logging.getLogger(__name__)

#: seconds between two lines of the ``"log"`` display
LOG_EVERY_S = 10.0
#: seconds between two redraws of the notebook display (the last state is always drawn)
NOTEBOOK_EVERY_S = 0.2
#: seconds between two redraws of the notebook display when nothing ended (its elapsed time)
NOTEBOOK_TICK_S = 1.0


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
    """True if stderr is a terminal that can redraw a line (not ``TERM=dumb``:
    an Emacs shell, some CI consoles, which print a bar's every frame, or none)."""
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return False
    return _is_tty(sys.stderr)


def _is_tty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def wait(futures: Sequence[cf.Future], timeout: float | None, mode: str) -> None:
    """Wait for every future, showing progress in ``mode`` meanwhile; raise
    ``concurrent.futures.TimeoutError`` if they are not all done in ``timeout`` s."""
    total = len(futures)
    if not total:
        return
    finished = mode == "bar" and all(fut.done() for fut in futures)
    tally = _Tally()
    for fut in futures:
        fut.add_done_callback(tally.finished)
    del futures  # (the tally counts; a timeout's traceback then holds no future)
    display = _display(mode, total, finished)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    counts = Counts(0, 0, 0)
    try:
        while True:
            now = time.monotonic()
            waits = [t for t in (display.next_update(now), None if deadline is None else deadline - now) if t is not None]
            counts = tally.wait_for_change(counts.done, min(waits) if waits else None)
            now = time.monotonic()
            if counts.done >= total:
                return
            display.update(counts, now - start)
            if deadline is not None and now >= deadline:
                raise cf.TimeoutError(f"{total - counts.done} of {total} calls not finished after {timeout} s")
    finally:
        display.close(tally.counts(), time.monotonic() - start)


class Counts(NamedTuple):
    """How many calls are done (failed, cancelled and stopped included), failed, cancelled, and
    stopped by the program's end (``ExecutorShutdown``: neither the call's failure nor a cancel)."""

    done: int
    failed: int
    cancelled: int
    stopped: int = 0


class _Tally:
    """How many of the futures are done, failed and cancelled, counted by their
    done callbacks (from whichever thread finishes them): one pass over the
    futures, however long the wait."""

    def __init__(self) -> None:
        # ``with self._lock``, not ``with self._changed``: a C lock's ``with`` is entered once the lock is
        # taken, where Condition.__enter__ (Python) could be left by a Ctrl-C with it taken (``futures._Condition``)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._done = 0
        self._failed = 0
        self._cancelled = 0
        self._stopped = 0

    def finished(self, fut: cf.Future) -> None:
        cancelled = fut.cancelled()
        error = None if cancelled else fut.exception()
        # (the program's end stopped it: the last line said "failed"; not one the call's own code raised, which
        # comes with the remote traceback as its cause)
        stopped = isinstance(error, ExecutorShutdown) and not isinstance(error.__cause__, RemoteTraceback)
        with self._lock:
            self._done += 1
            self._failed += error is not None and not stopped
            self._cancelled += cancelled
            self._stopped += stopped
            self._changed.notify_all()

    def counts(self) -> Counts:
        with self._lock:
            return Counts(self._done, self._failed, self._cancelled, self._stopped)

    def wait_for_change(self, seen: int, timeout: float | None) -> Counts:
        """The counts once more than ``seen`` are done, or after ``timeout`` s."""
        with self._lock:  # (in slices: signals another thread took, ``interrupts.sliced``)
            interrupts.wait_sliced(self._changed.wait, lambda: self._done != seen, timeout)
            return Counts(self._done, self._failed, self._cancelled, self._stopped)


def status_line(done: int, total: int, failed: int, elapsed: float, cancelled: int = 0, stopped: int = 0) -> str:
    """``wrenpack: 40/100 calls done, 2 failed, 12 s``; the cancelled calls,
    counted as done, are named too (``, 3 cancelled``): they did not run; and those
    the program's end stopped (``, 2 stopped``)."""
    failures = f", {failed} failed" if failed else ""
    cancels = f", {cancelled} cancelled" if cancelled else ""
    stops = f", {stopped} stopped" if stopped else ""
    return f"wrenpack: {done}/{total} calls done{failures}{cancels}{stops}, {elapsed:.0f} s"


def _line(counts: Counts, total: int, elapsed: float) -> str:
    return status_line(counts.done, total, counts.failed, elapsed, counts.cancelled, counts.stopped)


class _Display:
    """One way of showing progress; ``next_update`` says in how many seconds it
    wants to be updated even if nothing finished (None: only on a change)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def next_update(self, now: float) -> float | None:
        return None

    def update(self, counts: Counts, elapsed: float) -> None:
        pass

    def close(self, counts: Counts, elapsed: float) -> None:
        pass


def _display(mode: str, total: int, finished: bool = False) -> _Display:
    """The display for ``mode``; a bar where none can be drawn (stderr is not a
    terminal, or a dumb one) is the log lines instead: a bar there would show
    nothing and leave an empty line. The notebook's display outside a Jupyter
    kernel is the one that fits there (the ``progress`` setting may be shared
    by a project's notebooks and scripts): there it would print its widget's
    text, or fail without IPython. ``finished``: every call is done already,
    so a bar would only flash up and away: none is drawn."""
    if mode == "notebook" and not in_jupyter_kernel():
        mode = "bar" if _stderr_is_terminal() else "log"
    if mode == "bar":
        # rich costs a tenth of a second to import: only a wait that shows it pays
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_interactive:  # (rich's own test: TERM=dumb, TTY_INTERACTIVE=0, not a TTY)
            return _Log(total)
        return _Display(total) if finished else _Bar(total, console)
    return _DISPLAYS[mode](total)


class _Bar(_Display):
    """A row of the rich bar on stderr, gone when the wait ends (the terminal
    stays clean). Waits at once in several threads share one bar (``_Shared``),
    a row each: two bars would fight over the line."""

    def __init__(self, total: int, console: Any) -> None:
        super().__init__(total)
        global _shared
        with _shared_lock:
            if _shared is None:
                _shared = _Shared(console, total)
            self._shared = _shared
            self._shared.users += 1
            self._task = self._shared.progress.add_task("calls", total=total, status=f"{0:>{len(str(total))}}/{total}")

    def update(self, counts: Counts, elapsed: float) -> None:
        status = f"[green]{counts.done:>{len(str(self.total))}}/{self.total}[/]"
        status += f" [red]{counts.failed} failed[/]" if counts.failed else ""
        status += f" [yellow]{counts.cancelled} cancelled[/]" if counts.cancelled else ""
        status += f" [yellow]{counts.stopped} stopped[/]" if counts.stopped else ""
        self._shared.progress.update(self._task, completed=counts.done, status=status)

    def close(self, counts: Counts, elapsed: float) -> None:
        global _shared
        try:
            self.update(counts, elapsed)  # (the last frame shows the final count)
        finally:
            with _shared_lock:  # (held while the bar goes: a new one starts once the streams are back)
                self._shared.users -= 1
                if self._shared.users:
                    self._shared.progress.remove_task(self._task)
                else:
                    if _shared is self._shared:
                        _shared = None
                    self._shared.stop()


class _Shared:
    """The bar itself: rich's live display, with a row per wait.

    While it is up, what the program writes to ``sys.stderr`` is printed above
    it, line by line as written (``_Above``), and ``sys.stdout`` too when
    stdout is a terminal (when it is a file, as in ``prog > out.txt``, what is
    printed stays in the file). The program's logging handlers that write to
    the terminal are pointed at the same place for the wait: they hold the
    stream they were made with, and their lines would otherwise be written
    into the bar's line and stay there."""

    def __init__(self, console: Any, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.users = 0
        # The count and the elapsed time are what the bar is for: on a narrow
        # terminal the bar gives way (shorter, then none), so that they are whole.
        reserve = len(f"wrenpack {total}/{total} {total} failed 0:00:00") + 2
        width = max(0, min(40, console.width - reserve))
        bar = [BarColumn(bar_width=width)] if width >= 8 else []
        # (rich's own redirection cuts long lines at the terminal's width, reads
        # brackets in a flushed partial line as markup and ends it with a newline)
        self.progress = Progress(TextColumn("[bold]wrenpack"), *bar, TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 transient=True, console=console, redirect_stdout=False, redirect_stderr=False)
        # (before the bar is drawn: what is written as it starts goes above it too)
        self._moved = _follow_sys_streams()
        self._streams = {"stderr": sys.stderr}
        if _is_tty(sys.stdout):
            self._streams["stdout"] = sys.stdout
        for name, stream in self._streams.items():
            setattr(sys, name, _Above(console, stream))
        try:
            self.progress.start()
        except BaseException:
            self._put_back()
            raise

    def stop(self) -> None:
        try:
            self.progress.stop()
        finally:
            self._put_back()  # (after: what is written as the bar goes is not erased with it)

    def _put_back(self) -> None:
        for name, stream in self._streams.items():
            above = getattr(sys, name)
            if isinstance(above, _Above) and above.file is stream:  # (unless the program replaced it meanwhile)
                setattr(sys, name, stream)
                above.release()
        _restore_handlers(self._moved)


#: the bar that is up, if any (``_Bar``s share it)
_shared: _Shared | None = None
_shared_lock = threading.Lock()


class _Above(io.TextIOBase):
    """``sys.stderr`` (or ``sys.stdout``) while the bar is up: each complete
    line written is printed above the bar as it was written (no markup, no
    cutting at the terminal's width: the terminal wraps it); a partial line
    waits for its end, or for the bar to go (``release``)."""

    def __init__(self, console: Any, file: Any) -> None:
        super().__init__()
        self.file = file
        self._console = console
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        from rich.text import Text

        with self._lock:
            head, newline, self._partial = (self._partial + text).rpartition("\n")
        if newline:
            self._console.print(Text("\n").join(Text.from_ansi(line) for line in head.split("\n")), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass  # (a partial line is shown with its end: written now, the bar would be drawn after it)

    def release(self) -> None:
        """The bar is gone: what is left of a partial line goes to the stream."""
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial:
            self.file.write(partial)
        self.file.flush()

    @property
    def rich_proxied_file(self) -> Any:
        """The stream itself: where rich's console (which follows ``sys.stderr``) writes the bar."""
        return self.file

    def isatty(self) -> bool:
        return _is_tty(self.file)

    def fileno(self) -> int:
        return self.file.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.file, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.file, "errors", None)

    def __getattr__(self, name: str) -> Any:  # (errors, buffer, ...: the stream's)
        return getattr(self.file, name)


class _SysStream:
    """Writes to whatever ``sys.<name>`` is at the time of each write: what a
    logging handler of the terminal writes to while the bar is up, so that its
    records go where rich puts ``sys.stderr`` (above the bar), and, once the
    bar is gone, to the terminal again."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return getattr(sys, self._name).write(text)

    def flush(self) -> None:
        getattr(sys, self._name).flush()

    def __getattr__(self, attr: str) -> Any:  # (encoding, isatty, fileno: the stream's)
        return getattr(getattr(sys, self._name), attr)


def _follow_sys_streams() -> list[tuple[logging.StreamHandler, Any, Any]]:
    """Point every logging handler that writes to ``sys.stdout`` or
    ``sys.stderr`` (the objects they are now) at a ``_SysStream`` of it;
    what to restore. File handlers, and those of other streams, are left alone."""
    streams = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    moved = []
    for handler in {id(h): h for lg in loggers for h in list(lg.handlers)}.values():
        if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
            continue
        old = getattr(handler, "stream", None)
        if old is None or id(old) not in streams:
            continue
        new = _SysStream(streams[id(old)])
        try:
            handler.setStream(new)
        except AttributeError:  # a handler whose stream is a property (it follows sys.stderr already)
            continue
        moved.append((handler, old, new))
    return moved


def _restore_handlers(moved: list[tuple[logging.StreamHandler, Any, Any]]) -> None:
    for handler, old, new in moved:
        if handler.stream is new:  # (unless the program pointed it elsewhere meanwhile)
            handler.setStream(old)


class _Log(_Display):
    """A line every ``LOG_EVERY_S`` seconds, and one at the end: a record of the
    ``wrenpack.progress`` logger where the program's logging takes INFO records
    (its format, its files), else a plain line on stderr (no logging set up, or
    only warnings: the user asked for progress, so it is shown)."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._stream = sys.stderr
        self._next = time.monotonic() + LOG_EVERY_S

    def next_update(self, now: float) -> float | None:
        return max(0.0, self._next - now)

    def update(self, counts: Counts, elapsed: float) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._write(_line(counts, self.total, elapsed))
            self._next = now + LOG_EVERY_S

    def close(self, counts: Counts, elapsed: float) -> None:
        self._write(_line(counts, self.total, elapsed))

    def _write(self, line: str) -> None:
        if log.isEnabledFor(logging.INFO) and log.hasHandlers():
            log.info("%s", line)
            return
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
        self._behind = False  # a change is not drawn yet (it came too soon after the last redraw)
        self._bar: Any = None
        self._handle: Any = None
        try:
            import ipywidgets
        except ImportError:
            self._handle = display(self._bundle(Counts(0, 0, 0), 0.0), raw=True, display_id=True)
        else:
            self._bar = ipywidgets.IntProgress(value=0, min=0, max=max(total, 1), description="wrenpack", bar_style="info")
            self._label = ipywidgets.Label(value=status_line(0, total, 0, 0.0))
            display(ipywidgets.HBox([self._bar, self._label]))

    def next_update(self, now: float) -> float | None:
        # A change held back is drawn once the time between redraws has passed,
        # not when the next call ends (which may be long after); with none, the
        # elapsed time is redrawn now and then.
        return max(0.0, self._last + (NOTEBOOK_EVERY_S if self._behind else NOTEBOOK_TICK_S) - now)

    def update(self, counts: Counts, elapsed: float, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < NOTEBOOK_EVERY_S:
            self._behind = True
            return  # (each redraw is a message to the front end)
        self._last = now
        self._behind = False
        if self._bar is not None:
            self._bar.value = counts.done
            self._label.value = _line(counts, self.total, elapsed)
            if final:  # (red: failed or not all done; yellow: some never ran; green: all ran and succeeded)
                self._bar.bar_style = "danger" if counts.failed or counts.done < self.total else \
                    "warning" if counts.cancelled or counts.stopped else "success"
        else:
            self._handle.update(self._bundle(counts, elapsed), raw=True)

    def close(self, counts: Counts, elapsed: float) -> None:
        self.update(counts, elapsed, final=True)

    def _bundle(self, counts: Counts, elapsed: float) -> dict[str, str]:
        line = _line(counts, self.total, elapsed)
        bar = f'<progress value="{counts.done}" max="{max(self.total, 1)}" style="width: 20em"></progress>'
        return {"text/plain": line, "text/html": f"<div>{bar} <code>{html.escape(line)}</code></div>"}


_DISPLAYS: dict[str, type[_Display]] = {"bar": _Bar, "notebook": _Notebook, "log": _Log}
