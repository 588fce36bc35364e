"""The local backend: Lambda's limits on one machine.

Warm, long-lived worker processes (like warm Lambda containers) each run
``wrenpack.worker.local_main``, which calls the very handler Lambda calls.
One dispatcher thread hands calls to idle workers over a socket and watches
the busy ones::

    invoke() -> queue -> dispatcher -> worker (socket) -> handler -> store
                             |  watches: deadline, memory, /tmp size, death
                             v
                 Invocation.on_done(InvocationResult)

Limits, per call:
- memory: a cgroup v1 memory limit per worker when this process can create
  one (the kernel then stops the call at the limit, whatever allocates); else
  the worker's high-water mark (VmHWM, reset per call) and its children's
  resident memory are sampled. Either way: ``MemoryLimitExceeded``.
- timeout: the handler raises ``TaskTimeout`` inside the call just before the
  deadline; a call stuck where signals do not reach is killed at the deadline
  plus a grace period. The worker is replaced after a timeout, as on Lambda.
- /tmp: each worker has a private temporary directory (TMPDIR) whose size is
  checked while the call runs: ``EphemeralStorageExceeded``.
- crash: a worker that dies otherwise is replaced and the call retried up to
  ``retries`` times, then ``WorkerCrashed``.
"""
from __future__ import annotations

import itertools
import selectors
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from wrenpack.backends.base import Backend, Invocation, InvocationResult
from wrenpack.backends.cgroups import CgroupFactory, MemoryCgroup
from wrenpack.errors import (
    EphemeralStorageExceeded,
    MemoryLimitExceeded,
    TaskTimeout,
    WorkerCrashed,
    WrenpackError,
)
from wrenpack.worker.memory import peak_rss_mb

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_BOOT = (
    "import sys,json;sys.path[:0]=json.loads(sys.argv[2]);"
    "from wrenpack.worker.local_main import serve;serve(int(sys.argv[1]))"
)
_SAMPLE_S = 0.01
_TMP_CHECK_S = 0.1
_CHILD_CHECK_S = 0.1


def _hard_grace(timeout: float) -> float:
    return 0.5 + 0.02 * timeout


def dir_size(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def _children_rss_mb(pid: int) -> float:
    try:
        import psutil

        total = 0
        for child in psutil.Process(pid).children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / MiB
    except Exception:  # noqa: BLE001 - psutil absent or the process gone
        return 0.0


class _Worker:
    def __init__(self, wid: int, proc: subprocess.Popen[bytes], conn: Connection, tmpdir: str, runtime: str | None, cgroup: MemoryCgroup | None) -> None:
        self.wid = wid
        self.proc = proc
        self.conn = conn
        self.tmpdir = tmpdir
        self.runtime = runtime
        self.cgroup = cgroup
        self.ready = False
        #: calls sent to this worker, oldest first; the first is running, the
        #: rest wait in its socket (pipelining hides the round trip)
        self.inflight: deque[Invocation] = deque()
        self.started = 0.0
        self.deadline = 0.0
        self.hard_deadline = 0.0
        self.next_tmp_check = 0.0
        self.next_child_check = 0.0
        self.next_sample = 0.0
        self.kill_reason: str | None = None
        self.peak_mb = 0.0
        self.tmp_bytes = 0
        self.oom_before = 0
        self.limit_mb: int | None = None
        self.idle_since = time.monotonic()
        self.retire = False
        self.env: dict[str, str] | None = None

    @property
    def inv(self) -> Invocation | None:
        return self.inflight[0] if self.inflight else None


class LocalBackend(Backend):
    """Runs invocations in warm worker processes on this machine."""

    name = "local"

    def __init__(self, concurrency: int | None = None, keep_warm: float = 300.0, use_cgroups: bool | None = None, work_dir: str | None = None) -> None:
        self.concurrency = max(1, int(concurrency or os.cpu_count() or 1))
        self.keep_warm = keep_warm
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="wrenpack-local-")
        self._own_work_dir = work_dir is None
        self._cgroups = None if use_cgroups is False else CgroupFactory.detect()
        if use_cgroups and self._cgroups is None:
            raise WrenpackError("memory cgroups were requested but cannot be created here; run as root on cgroup v1, or drop use_cgroups")
        self._queue: deque[Invocation] = deque()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._cleaned = False
        self.worker_starts = 0
        #: calls queued in a busy worker's socket behind the running one
        self.pipeline_depth = 1

    @classmethod
    def from_config(cls, config: Any) -> "LocalBackend":
        return cls(concurrency=config.concurrency, keep_warm=config.keep_warm)

    # -- Backend API ------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> None:
        self.invoke_many([invocation])

    def invoke_many(self, invocations: list[Invocation]) -> None:
        if self._stopping:
            raise WrenpackError("the local backend was shut down; create a new executor")
        with self._lock:
            self._queue.extend(invocations)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wrenpack-local-dispatch", daemon=True)
                self._thread.start()
        self._wake()

    def cancel(self, invocation: Invocation) -> bool:
        with self._lock:
            try:
                self._queue.remove(invocation)
            except ValueError:
                return False
            return True

    def shutdown(self, wait: bool = True) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        if self._thread is not None and wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._thread is None or not self._thread.is_alive():
            self._cleanup()

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for tests and diagnostics)."""
        return [w.proc.pid for w in list(self._workers)]

    # -- dispatcher thread ------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._assign()
                busy = any(w.inflight for w in self._workers)
                for key, _ in self._selector.select(timeout=_SAMPLE_S if busy else 1.0):
                    worker = key.data
                    if worker is None:
                        os.read(self._wake_r, 65536)
                    elif worker in self._workers:
                        self._receive(worker)
                self._watch()
                self._reap_idle()
        except Exception:  # noqa: BLE001 - fail every pending call rather than hang
            log.exception("wrenpack local backend: dispatcher failed")
            self._stopping = True
        finally:
            self._cleanup()

    def _assign(self) -> None:
        with self._lock:
            if not self._queue:
                return
            idle = [w for w in self._workers if w.ready and not w.inflight and not w.retire]
            while self._queue and idle:
                inv = self._queue[0]
                worker = next((w for w in idle if w.runtime == inv.runtime), None)
                if worker is None:
                    break
                self._queue.popleft()
                idle.remove(worker)
                self._dispatch(worker, inv)
            # Pipelining: give each busy worker its next call now, so it starts the
            # moment the current one ends (same memory limit only: no cgroup change).
            for worker in self._workers:
                if not self._queue:
                    break
                if (
                    worker.ready
                    and not worker.retire
                    and not worker.kill_reason
                    and 0 < len(worker.inflight) <= self.pipeline_depth
                    and self._queue[0].runtime == worker.runtime
                    and self._queue[0].memory_mb == worker.inflight[-1].memory_mb
                ):
                    self._send(worker, self._queue.popleft())
            if not self._queue:
                return
            head_runtime = self._queue[0].runtime
            starting = sum(1 for w in self._workers if not w.ready and w.runtime == head_runtime)
            wanted = len(self._queue) - starting
            while wanted > 0 and len(self._workers) < self.concurrency:
                try:
                    self._spawn(head_runtime)
                except Exception as exc:  # noqa: BLE001 - fail these calls, keep serving others
                    self._fail_runtime(head_runtime, exc)
                    return
                wanted -= 1
            if wanted > 0 and starting == 0:
                # All slots taken by workers for another runtime: retire an idle one.
                other = next((w for w in idle if w.runtime != head_runtime), None)
                if other is not None:
                    self._stop_worker(other)
                    self._spawn(head_runtime)

    def _fail_runtime(self, runtime: str | None, exc: Exception) -> None:
        """Workers for ``runtime`` cannot start: fail every call queued for it (lock held)."""
        doomed = [inv for inv in self._queue if inv.runtime == runtime]
        self._queue = deque(inv for inv in self._queue if inv.runtime != runtime)
        message = str(exc) if isinstance(exc, WrenpackError) else f"{type(exc).__name__}: {exc}"
        for inv in doomed:
            label = inv.label
            self._finish(inv, error=WrenpackError(f"{label}: could not start a worker: {message}"))

    def _worker_command(self, runtime: str | None) -> tuple[list[str], list[str]]:
        if runtime is None:
            paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
            return [sys.executable, "-c", _BOOT], paths
        from wrenpack.backends.runtime_paths import worker_paths

        return [sys.executable, "-I", "-S", "-c", _BOOT], worker_paths(runtime)

    def _spawn(self, runtime: str | None) -> _Worker:
        wid = next(self._ids)
        tmpdir = os.path.join(self.work_dir, f"w{wid}", "tmp")
        os.makedirs(tmpdir, exist_ok=True)
        cmd, paths = self._worker_command(runtime)
        parent_sock, child_sock = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [*cmd, str(child_sock.fileno()), json.dumps(paths)],
                pass_fds=[child_sock.fileno()],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        cgroup = None
        if self._cgroups is not None:
            cgroup = self._cgroups.create(f"wrenpack-{os.getpid()}-w{wid}")
            if cgroup is not None:
                try:
                    cgroup.add(proc.pid)
                except OSError as exc:
                    log.debug("could not move worker %d into its cgroup: %s", proc.pid, exc)
                    cgroup.remove()
                    cgroup = None
        worker = _Worker(wid, proc, conn, tmpdir, runtime, cgroup)
        self._workers.append(worker)
        self._selector.register(conn.fileno(), selectors.EVENT_READ, worker)
        self.worker_starts += 1
        log.debug("started local worker %d (pid %d, runtime %s)", wid, proc.pid, runtime or "client environment")
        return worker

    def _dispatch(self, worker: _Worker, inv: Invocation) -> None:
        """Hand a call to an idle worker."""
        if worker.cgroup is not None and worker.limit_mb != inv.memory_mb:
            worker.limit_mb = inv.memory_mb if worker.cgroup.set_limit_mb(inv.memory_mb) else None
        self._send(worker, inv)
        self._begin(worker)

    def _begin(self, worker: _Worker) -> None:
        """The worker's first in-flight call starts now: set its clocks and meters."""
        inv = worker.inflight[0]
        now = time.time()
        if worker.cgroup is not None:
            worker.cgroup.reset_peak()
            worker.oom_before = worker.cgroup.oom_kills()
        worker.started = now
        worker.deadline = now + inv.timeout_s
        worker.hard_deadline = worker.deadline + _hard_grace(inv.timeout_s)
        worker.next_tmp_check = now + _TMP_CHECK_S
        worker.next_child_check = now + _CHILD_CHECK_S
        worker.next_sample = now
        worker.kill_reason = None
        worker.peak_mb = 0.0
        self.started(inv)

    def _send(self, worker: _Worker, inv: Invocation) -> None:
        worker.inflight.append(inv)
        env = {
            "AWS_LAMBDA_FUNCTION_NAME": "wrenpack-local",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(inv.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(max(1, int(inv.timeout_s))),
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/wrenpack-local",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/worker-{worker.wid}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python%d.%d" % sys.version_info[:2],
            "LAMBDA_TASK_ROOT": os.getcwd(),
            "LAMBDA_RUNTIME_DIR": sys.prefix,
            "_HANDLER": "wrenpack.worker.handler.handler",
            "TMPDIR": worker.tmpdir,
            "TMP": worker.tmpdir,
            "TEMP": worker.tmpdir,
            "WRENPACK_EPHEMERAL_STORAGE_MB": str(inv.ephemeral_storage_mb),
            "WRENPACK_LOCAL_WORKER": "1",
        }
        event = dict(inv.event, attempt=inv.attempt, timeout_s=inv.timeout_s)
        msg: dict[str, Any] = {"event": event, "timeout_s": inv.timeout_s}
        if env != worker.env:
            msg["env"] = worker.env = env
        try:
            worker.conn.send(msg)
        except OSError:
            # The worker died before taking the call; its death handler requeues it.
            pass

    def _receive(self, worker: _Worker) -> None:
        try:
            msg = worker.conn.recv()
        except (EOFError, OSError):
            self._on_death(worker)
            return
        if "ready" in msg:
            worker.ready = True
            return
        if not worker.inflight:
            return
        inv = worker.inflight.popleft()
        worker.idle_since = time.monotonic()
        peak = max(float(msg.get("peak_rss_mb") or 0.0), worker.peak_mb)
        # A process the call started may have been stopped by the kernel at the
        # limit while the worker itself lived on: the call still broke the limit.
        oom = worker.cgroup is not None and worker.cgroup.oom_kills() > worker.oom_before
        if oom:
            peak = max(peak, worker.cgroup.peak_mb())
        if worker.inflight:
            self._begin(worker)
        label = inv.label
        tmp_bytes = dir_size(worker.tmpdir)
        if oom or (worker.cgroup is None and peak > inv.memory_mb):
            # (Without a cgroup: sampling missed it while it ran, the high-water mark did not.)
            self._finish(inv, error=_memory_error(label, inv.memory_mb, peak))
            self._stop_worker(worker)
            return
        if tmp_bytes > inv.ephemeral_storage_mb * MiB:
            self._finish(inv, error=_tmp_error(label, inv.ephemeral_storage_mb, tmp_bytes))
            return
        if "error" in msg:
            self._finish(inv, error=WrenpackError(f"{label}: the worker handler failed: {msg['error']}"))
            self._stop_worker(worker)
            return
        status = msg["status"]
        data = status.pop("result", None)  # the sealed result object, when it came in the reply (contract 2)
        if status.get("exit") == "timeout":
            self._stop_worker(worker)  # as on Lambda: a timed-out environment is not reused
        self._finish(inv, status=status, data=data)

    def _finish(self, inv: Invocation, status: dict[str, Any] | None = None, error: WrenpackError | None = None,
                data: bytes | None = None) -> None:
        try:
            inv.on_done(inv, InvocationResult(status=status, error=error, data=data))
        except Exception:  # noqa: BLE001
            log.exception("on_done callback failed")

    def _on_death(self, worker: _Worker) -> None:
        try:
            worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(worker, worker.kill_reason or "lost")
            worker.proc.wait()
        self._requeue(worker, keep_first=True)
        inv = worker.inflight.popleft() if worker.inflight else None
        reason = worker.kill_reason
        oom = worker.cgroup is not None and worker.cgroup.oom_kills() > worker.oom_before
        peak = max(worker.peak_mb, worker.cgroup.peak_mb() if worker.cgroup is not None else 0.0)
        self._discard(worker)
        if inv is None:
            return
        label = inv.label
        if reason == "timeout":
            self._finish(inv, error=TaskTimeout(
                f"{label} ran past its {inv.timeout_s:g} s timeout and was stopped; raise timeout= (at most 900 s on "
                "Lambda) or make it resumable with wrenpack.checkpoint so it is split across invocations"))
        elif reason == "memory" or oom:
            self._finish(inv, error=_memory_error(label, inv.memory_mb, peak))
        elif reason == "tmp":
            self._finish(inv, error=_tmp_error(label, inv.ephemeral_storage_mb, worker.tmp_bytes))
        elif reason == "shutdown":
            self._finish(inv, error=WrenpackError(f"{label}: the local backend shut down before the call finished"))
        else:
            code = worker.proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            if inv.attempt < inv.retries:
                log.warning("%s: worker died (%s); retrying (attempt %d of %d)", label, how, inv.attempt + 2, inv.retries + 1)
                inv.attempt += 1
                with self._lock:
                    self._queue.appendleft(inv)
            else:
                tries = inv.attempt + 1
                self._finish(inv, error=WorkerCrashed(
                    f"{label}: the worker process died ({how}) on {tries} attempt{'s' if tries > 1 else ''}; "
                    "look for a crash in native code or an external kill, or raise retries="))

    def _watch(self) -> None:
        now = time.time()
        for worker in list(self._workers):
            inv = worker.inv
            if inv is None or worker.kill_reason:
                continue
            if now > worker.hard_deadline:
                self._kill(worker, "timeout")
                continue
            if now < worker.next_sample:
                continue
            worker.next_sample = now + _SAMPLE_S
            hwm = peak_rss_mb(worker.proc.pid) or 0.0
            worker.peak_mb = max(worker.peak_mb, hwm)
            if worker.cgroup is None:
                if now >= worker.next_child_check:
                    worker.next_child_check = now + _CHILD_CHECK_S
                    worker.peak_mb = max(worker.peak_mb, hwm + _children_rss_mb(worker.proc.pid))
                if worker.peak_mb > inv.memory_mb:
                    self._kill(worker, "memory")
                    continue
            if now >= worker.next_tmp_check:
                worker.next_tmp_check = now + _TMP_CHECK_S
                worker.tmp_bytes = dir_size(worker.tmpdir)
                if worker.tmp_bytes > inv.ephemeral_storage_mb * MiB:
                    self._kill(worker, "tmp")

    def _reap_idle(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.inflight and worker.ready and now - worker.idle_since > self.keep_warm:
                self._stop_worker(worker)

    def _kill(self, worker: _Worker, reason: str) -> None:
        if worker.inflight and not worker.kill_reason:
            # Calls queued behind the one being stopped were never started.
            self._requeue(worker, keep_first=True)
        worker.kill_reason = reason
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _stop_worker(self, worker: _Worker) -> None:
        """Retire a worker whose running call was already reported; calls waiting
        in its socket go back to the front of the queue."""
        worker.retire = True
        self._requeue(worker)
        self._kill(worker, worker.kill_reason or "retired")

    def _requeue(self, worker: _Worker, keep_first: bool = False) -> None:
        waiting = list(worker.inflight)[1 if keep_first else 0 :]
        if keep_first:
            first = worker.inflight[0] if worker.inflight else None
            worker.inflight.clear()
            if first is not None:
                worker.inflight.append(first)
        else:
            worker.inflight.clear()
        if waiting:
            with self._lock:
                self._queue.extendleft(reversed(waiting))

    def _discard(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        try:
            self._selector.unregister(worker.conn.fileno())
        except (KeyError, ValueError, OSError):
            pass
        try:
            worker.conn.close()
        except OSError:
            pass
        if worker.cgroup is not None:
            worker.cgroup.remove()
        shutil.rmtree(os.path.dirname(worker.tmpdir), ignore_errors=True)

    def _cleanup(self) -> None:
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = True
            queued, self._queue = list(self._queue), deque()
        for worker in list(self._workers):
            self._kill(worker, worker.kill_reason or "shutdown")
            self._on_death(worker)
        with self._lock:
            queued += list(self._queue)
            self._queue.clear()
        for inv in queued:
            label = inv.label
            self._finish(inv, error=WrenpackError(f"{label}: the local backend shut down before the call started"))
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self._selector.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _memory_error(label: str, limit: int, peak: float) -> MemoryLimitExceeded:
    seen = max(peak, float(limit))
    suggest = min(10240, int(seen * 1.5 / 64 + 1) * 64)
    return MemoryLimitExceeded(
        f"{label} exceeded its memory limit of {limit} MB (peak at least {seen:.0f} MB); "
        f"raise memory= (e.g. memory={suggest}) or measure it with `wrenpack profile`"
    )


def _tmp_error(label: str, limit: int, used: int) -> EphemeralStorageExceeded:
    return EphemeralStorageExceeded(
        f"{label} wrote {used / MiB:.0f} MB to its /tmp, more than ephemeral_storage={limit} MB; "
        "raise ephemeral_storage= (up to 10240 MB) or write less / stream to the store"
    )
