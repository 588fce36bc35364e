"""What local workers print, relayed through the driver.

A worker's file descriptors 1 and 2 are pipes whose other ends the driver
reads (``Relay``): the output of every process of the worker (its own, its
job's process, anything a call started) comes back here, and each complete
line is written to the driver's ``sys.stdout`` or ``sys.stderr`` *as they are
at the time of the write*. So what a call prints goes wherever the program's
own prints go: above the progress bar while one is up (``wrenpack.progress``
puts its ``_Above`` streams there), into pytest's capsys/capfd, a Jupyter
cell, a redirected file. Written straight to the terminal, as it was before,
a worker's line broke into the bar's line (which is redrawn with ``\\r``).

- **Whole lines.** Only complete lines are written, each batch of them in one
  ``write`` under one lock for all workers, so two workers' lines never mix
  mid-line; what is left of a line waits for its end.
- **In order, and before the call's future resolves.** A worker flushes its
  streams (and its job's process flushes its own) before it sends a call's
  reply, so when the reply is read, what the call printed is in the pipe:
  the scheduler drains the worker's pipes (``WorkerOutput.drain``) before it
  runs the call's ``on_done``. A line the call left without its end is ended
  by the worker (``wrenpack.worker.streams``), so it cannot be glued to the
  next call's output, and the next call's line, which a worker running calls
  back to back may be writing already, is not cut. A worker that dies or is stopped is drained to the end of
  its pipes (``finish``), and the relay reads everything left before the
  backend's shutdown returns: nothing is lost at the end of a map.
- **No full pipe.** A thread (``wrenpack-local-output``) reads every worker's
  pipes as data comes, so a call that writes megabytes never blocks on a
  full pipe, whether or not anyone waits for its future.

The order of lines between a worker's stdout and its stderr is as they are
read, which is the order they were written except for writes that come
within moments of each other. A line longer than ``MAX_LINE`` is written in
pieces of that size. Bytes are decoded as UTF-8 (the worker's streams write
UTF-8: ``local_main``), undecodable ones replaced.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import sys
import threading

log = logging.getLogger("wrenpack.backends.local")

#: bytes read per read of a pipe
_CHUNK = 1 << 16
#: reads of one drain at most: a pipe holds 64 KiB (at most 1 MiB), so this is all that was
#: written before a reply, and a writer that goes on (a process left running) cannot keep a drain going
_DRAIN_READS = 256
#: the longest line kept whole: past it, what was read is written as it is
MAX_LINE = 1 << 20

#: one batch of lines at a time on the driver's streams, whichever worker's (and backend's)
_emitting = threading.Lock()


def _emit(name: str, data: bytes) -> None:
    """Write ``data`` (whole lines) to ``sys.<name>`` as it is now; a stream
    that is gone or closed (``pythonw``, a closed pipe) takes nothing."""
    text = data.decode("utf-8", "replace")
    with _emitting:
        stream = getattr(sys, name, None)
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # (a closed stream, a reader gone: nobody sees it)
            pass


class _Pipe:
    """One of a worker's two streams: the read end of its pipe, and the part of
    a line read that waits for its end."""

    __slots__ = ("fd", "name", "partial", "lock", "eof", "closed")

    def __init__(self, fd: int, name: str) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.name = name
        self.partial = b""
        self.lock = threading.Lock()
        self.eof = False
        self.closed = False

    def pump(self, until_empty: bool, end_line: bool) -> None:
        """Read what the pipe holds (one read, or ``until_empty``: until none is
        left) and write the complete lines; ``end_line``: also what is left of a line."""
        with self.lock:
            read: list[bytes] = []
            while not self.eof and len(read) < _DRAIN_READS:
                try:
                    chunk = os.read(self.fd, _CHUNK)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # (EBADF after a close elsewhere; EIO)
                    if exc.errno not in (errno.EBADF, errno.EIO):
                        log.debug("reading a worker's %s failed", self.name, exc_info=True)
                    self.eof = True
                    break
                if not chunk:
                    self.eof = True
                    break
                read.append(chunk)
                if not until_empty or len(chunk) < _CHUNK:
                    break
            data = self.partial + b"".join(read) if read else self.partial
            cut = data.rfind(b"\n") + 1
            if end_line or self.eof:
                whole, self.partial = data + (b"\n" if data and not data.endswith(b"\n") else b""), b""
            elif len(data) - cut > MAX_LINE:
                whole, self.partial = data, b""
            else:
                whole, self.partial = data[:cut], data[cut:]
            if whole:
                _emit(self.name, whole)


class WorkerOutput:
    """One worker's stdout and stderr pipes, as its ``Relay`` reads them."""

    def __init__(self, relay: "Relay", out_fd: int, err_fd: int) -> None:
        self.relay = relay
        self.pipes = (_Pipe(out_fd, "stdout"), _Pipe(err_fd, "stderr"))
        self.finished = False

    def drain(self) -> None:
        """A call of this worker ended (its reply was read): write what it printed.
        Its worker ended the line it left open (``wrenpack.worker.streams``); what
        follows the last line end is the next call's, which a worker running calls
        back to back may be writing already: it waits for its end. Any thread."""
        for pipe in self.pipes:
            pipe.pump(until_empty=True, end_line=False)

    def finish(self) -> None:
        """The worker is gone: write what is left, then the relay closes the pipes
        (what a process of it that outlived it writes still comes until then)."""
        if self.finished:
            return
        self.finished = True
        self.drain()
        self.relay._remove(self)


class Relay:
    """Reads every worker's pipes on a thread of its own and writes their lines
    to the driver's streams (one per local backend). Only that thread touches
    its selector; workers come and go through ``add`` and ``WorkerOutput.finish``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._added: list[WorkerOutput] = []
        self._removed: list[WorkerOutput] = []
        self._outputs: set[WorkerOutput] = set()
        self._stopping = False
        self._closed = False  # (its descriptors are closed: their numbers may be another file's by now)
        self._thread: threading.Thread | None = None

    @staticmethod
    def pipes() -> tuple[tuple[int, int], tuple[int, int]]:
        """Two new pipes, (read end, write end) each: a worker's stdout and stderr
        (the write ends go to the worker's Popen and are closed here after it)."""
        out = os.pipe()
        try:
            err = os.pipe()
        except BaseException:
            os.close(out[0])
            os.close(out[1])
            raise
        return out, err

    def add(self, out_fd: int, err_fd: int) -> WorkerOutput:
        """Relay the pipes whose read ends these are (this relay closes them)."""
        output = WorkerOutput(self, out_fd, err_fd)
        with self._lock:
            self._added.append(output)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wrenpack-local-output", daemon=True)
                self._thread.start()
        self._wake()
        return output

    def _remove(self, output: WorkerOutput) -> None:
        with self._lock:
            self._removed.append(output)
        self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what every worker's pipes hold, close them and end the thread."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.debug("the local backend's output relay did not stop within %.0f s", timeout)
                return
        if thread is None:
            self._close_all()

    def _wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    added, self._added = self._added, []
                    removed, self._removed = self._removed, []
                    stopping = self._stopping
                for output in added:
                    self._outputs.add(output)
                    for pipe in output.pipes:
                        self._selector.register(pipe.fd, selectors.EVENT_READ, pipe)
                for output in removed:
                    self._close(output)
                if stopping:
                    break
                for key, _mask in self._selector.select():
                    pipe = key.data
                    if pipe is None:
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                        continue
                    pipe.pump(until_empty=False, end_line=False)
                    if pipe.eof:
                        self._unregister(pipe)
        except Exception:  # noqa: BLE001 - the workers' output is lost, their calls are not
            log.exception("wrenpack local backend: the output relay failed")
        finally:
            self._close_all()

    def _unregister(self, pipe: _Pipe) -> None:
        try:
            self._selector.unregister(pipe.fd)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, output: WorkerOutput) -> None:
        """What is left of a worker that ended is written, and its pipes closed (relay thread)."""
        self._outputs.discard(output)
        for pipe in output.pipes:
            if pipe.closed:
                continue
            self._unregister(pipe)
            pipe.pump(until_empty=True, end_line=True)
            with pipe.lock:
                pipe.eof = pipe.closed = True
                try:
                    os.close(pipe.fd)
                except OSError:
                    pass

    def _close_all(self) -> None:
        with self._lock:
            if self._closed:
                return
            outputs = self._outputs | set(self._added) | set(self._removed)
            self._outputs, self._added, self._removed = set(), [], []
        for output in outputs:
            self._close(output)
        with self._lock:
            self._closed = True
            try:
                self._selector.close()
            except OSError:
                pass
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
