"""A toy backend: proof that a backend is one folder plus one registry line
(``register_backend("toy", "tests.toy_backend:ToyBackend")`` in tests/conftest.py).

Each call runs in a fresh Python process of its own that calls the real worker
handler (``wrenpack.worker.handler.handler``) with the call's event and writes
the status record the handler returns to a file; results travel through the
store, as the handler writes them there when no reply was asked for.

Why a process per call and not a thread: the handler keeps per-call state in
its process (the job's secret, the call's env= and captured output, the data
store binding) and arms its soft deadline with SIGALRM, which only a main
thread gets. A fresh process gives each call all of that, and a kill ends it.

What it holds calls to (``capabilities.enforces``): the timeout only. The
handler stops a call just before its deadline (TaskTimeout in the status); a
call that blocks that signal is killed, with its process group, a little after
the deadline. Memory and /tmp are not measured or limited here, so they are
not claimed; nor are warm workers, replies or hand-offs. Calls do not end with
the driver either (a call's process is not tied to it), so the executor writes
each job's owner record first, as for Lambda.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from typing import Any

from wrenpack.backends import Backend, Capabilities, Invocation, InvocationResult
from wrenpack.errors import ConfigError, TaskTimeout, WorkerCrashed, WrenpackError

log = logging.getLogger(__name__)

#: seconds past a call's timeout before its process is killed: the handler's own
#: deadline fires first; this covers the process's start (imports) on a busy machine
HARD_GRACE_S = 3.0

#: what each call's process runs: the event in, the handler's status (or why it failed) out
_BOOT = """\
import json, sys
where = sys.argv[1]
with open(where + "/call.json") as f:
    call = json.load(f)
sys.path[:0] = call["paths"]
from wrenpack.worker.handler import handler
try:
    reply = {"status": handler(call["event"])}
except Exception as exc:
    reply = {"error": f"{type(exc).__name__}: {exc}"}
with open(where + "/reply.json.tmp", "w") as f:
    json.dump(reply, f)
import os
os.replace(where + "/reply.json.tmp", where + "/reply.json")
"""


class ToyBackend(Backend):
    """Runs each invocation in a process of its own, ``concurrency`` at once."""

    name = "toy"

    def __init__(self, concurrency: int = 2) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency={concurrency!r} must be a whole number of at least 1")
        self.concurrency = concurrency
        self._cv = threading.Condition()
        self._queue: deque[Invocation] = deque()
        #: the process of each running call, by id(invocation)
        self._procs: dict[int, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False  # no new calls
        self._stopping = False  # shutdown(wait=False): running calls are killed
        self.calls_run = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(enforces=frozenset({"timeout"}), concurrency=self.concurrency)

    @classmethod
    def from_config(cls, config: Any) -> "ToyBackend":
        return cls(concurrency=getattr(config, "concurrency", None) or 2)

    # -- Backend API ------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> None:
        self.invoke_many([invocation])

    def invoke_many(self, invocations: list[Invocation]) -> None:
        with self._cv:
            if self._closed:
                raise WrenpackError("the toy backend was shut down; create a new executor")
            self._queue.extend(invocations)
            want = min(self.concurrency, len(self._threads) + len(invocations))
            while len(self._threads) < want:
                thread = threading.Thread(target=self._serve, name="toy-backend", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cv.notify_all()

    def cancel(self, invocation: Invocation) -> bool:
        """Take back a call no thread has taken yet (its ``on_done`` is then never called)."""
        with self._cv:
            for i, queued in enumerate(self._queue):
                if queued is invocation:
                    del self._queue[i]
                    return True
        return False

    def shutdown(self, wait: bool = True) -> None:
        with self._cv:
            self._closed = True
            left: list[Invocation] = []
            if not wait:
                self._stopping = True
                left, self._queue = list(self._queue), deque()
                for proc in self._procs.values():
                    _kill(proc)
            threads = list(self._threads)
            self._cv.notify_all()
        for inv in left:
            _report(inv, InvocationResult(error=WrenpackError(f"{inv.label}: the toy backend shut down before the call started")))
        if threading.current_thread() in threads:
            return  # from an on_done callback: the threads stop when the queue is empty
        for thread in threads:
            thread.join()

    # -- the threads that run calls -----------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                inv = self._queue.popleft()
            self.started(inv)
            _report(inv, self._run(inv))

    def _run(self, inv: Invocation) -> InvocationResult:
        if inv.runtime is not None:
            return InvocationResult(error=ConfigError(
                f"{inv.label}: the toy backend runs calls in this Python and cannot use runtime={inv.runtime!r}"))
        while True:
            where = tempfile.mkdtemp(prefix="wrenpack-toy-")
            try:
                outcome = self._attempt(inv, where)
            finally:
                shutil.rmtree(where, ignore_errors=True)
            if outcome != "crashed":
                return outcome
            if inv.attempt >= inv.retries:
                tries = inv.attempt + 1
                return InvocationResult(error=WorkerCrashed(
                    f"{inv.label}: the call's process died on {tries} attempt{'s' if tries > 1 else ''}; raise retries="))
            log.warning("%s: the call's process died; retrying (attempt %d of %d)", inv.label, inv.attempt + 2, inv.retries + 1)
            inv.attempt += 1

    def _attempt(self, inv: Invocation, where: str) -> InvocationResult | str:
        """One run of ``inv`` in a fresh process: its result, or "crashed"."""
        event = dict(inv.event, attempt=inv.attempt)
        paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        with open(os.path.join(where, "call.json"), "w") as f:
            json.dump({"event": event, "paths": paths}, f)
        tmp = os.path.join(where, "tmp")
        os.mkdir(tmp)
        env = dict(os.environ, TMPDIR=tmp, TMP=tmp, TEMP=tmp)
        with self._cv:
            if self._stopping:
                return InvocationResult(error=WrenpackError(f"{inv.label}: the toy backend shut down before the call started"))
            proc = subprocess.Popen([sys.executable, "-c", _BOOT, where], env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            self._procs[id(inv)] = proc
            self.calls_run += 1
        try:
            try:
                proc.wait(timeout=inv.timeout_s + HARD_GRACE_S)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
                timed_out = True
        finally:
            with self._cv:
                self._procs.pop(id(inv), None)
                stopped = self._stopping
        if timed_out:
            return InvocationResult(error=TaskTimeout(
                f"{inv.label} ran past its {inv.timeout_s:g} s timeout and was stopped; raise timeout="))
        try:
            with open(os.path.join(where, "reply.json")) as f:
                reply = json.load(f)
        except (OSError, ValueError):
            if stopped:
                return InvocationResult(error=WrenpackError(f"{inv.label}: the toy backend shut down before the call finished"))
            return "crashed"
        if "error" in reply:
            return InvocationResult(error=WrenpackError(f"{inv.label}: the worker handler failed: {reply['error']}"))
        return InvocationResult(status=reply["status"])


def _kill(proc: subprocess.Popen) -> None:
    """The call's process and whatever it started in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _report(inv: Invocation, result: InvocationResult) -> None:
    """``on_done``, once per invocation; a failing callback never stops a thread."""
    try:
        inv.on_done(inv, result)
    except Exception:  # noqa: BLE001
        log.exception("on_done callback failed for %s", inv.label)

