"""One warm local worker, as the driver holds it: its process, socket, cgroup, /tmp and meters.

The scheduler (``wrenpack.backends.local.scheduler``) decides what a worker
runs; a ``Worker`` runs it and judges it against the call's limits:

- ``send(calls)``: the calls go down the socket in one message; the first
  begins now, the others as each reply comes back (``begin``).
- ``sample(now)``: on the sampling clock only, the running call's deadline,
  memory and /tmp; returns why the worker must be stopped, if it must.
- ``verdict(inv, reply)``: the limit a finished call broke, if any.
- ``kill(reason)``: the whole process tree (the cgroup's tasks, else the
  process group and every descendant; the worker is a child subreaper, so a
  call's daemonised children stay its descendants).

A worker stays in the driver's session and so shares the CPU as the user's
programs do: with Linux's autogroup scheduling every session gets a CPU share
of its own, and workers in sessions of their own would take CPU from the
user's other programs (and from the driver: a woken worker preempts it).
It leads a process group of its own, which the kill reaches and a terminal's
^C (sent to the driver's group) does not.

Death is seen from the process itself (a pidfd in the scheduler's selector),
never from the socket, which a call's children may hold open.

What travels on the socket is ``wrenpack.wire``'s: frames (``wire.frames``)
whose headers are the driver's messages (``wire.driver_message``) and the
worker's replies (``wire.worker_reply``), both ``marshal``, nothing pickled (the driver
unpickles only the outcomes this worker sends on the same private socketpair:
``wrenpack.backends.local.replies``).
Large arguments and results travel beside them as sealed memfds
(``wrenpack.worker.handoff``; their layout is ``wire.handoff``), passed with
SCM_RIGHTS on the message's first bytes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from wrenpack.backends.base import Invocation
from wrenpack.boot import NO_CWD
from wrenpack.backends.local.linux import MAX_TASKS, CgroupFactory, MemoryCgroup, PidsCgroup, PidsCgroupFactory
from wrenpack.backends.local.output import Relay, WorkerOutput
from wrenpack.errors import CallCancelled, EphemeralStorageExceeded, MemoryLimitExceeded, TaskError, TaskTimeout, WorkerCrashed, WrenpackError, died_how
from wrenpack.limits import memory_for
from wrenpack.process_state import worker_marker
from wrenpack.wire import driver_message, frames, status as status_record, worker_reply
from wrenpack.worker.fds import close_quietly
from wrenpack.worker.handoff import Sealed
from wrenpack.worker.memory import dir_usage, open_deleted_bytes, peak_rss_mb

#: errors of a write to a worker's socket that say "not now" (the kernel is short of memory or
#: buffers), not "the worker is gone": the bytes stay to be written again
_SEND_LATER = frozenset({errno.ENOBUFS, errno.ENOMEM})

log = logging.getLogger("wrenpack.backends.local")

MiB = 1024 * 1024
#: the private memory of a worker's processes that run no user code, beyond the
#: one process a worker was before jobs were isolated (its cgroup measured 12 MB more at a call's peak)
ISOLATION_MB = 16
SAMPLE_S = 0.01
TMP_CHECK_S = 0.1
#: the next /tmp check of a running call comes when what room it has left could be full,
#: written at this speed (a page-cache write measured 0.45 GiB/s here): every TMP_CHECK_S
#: near its limit, at most TMP_CHECK_MAX_S apart far below it. Each check costs the driver
#: ~0.4 ms (every descriptor of the worker's processes is looked at for deleted files)
TMP_FILL_BYTES_S = 2 * 1024 * 1024 * 1024
TMP_CHECK_MAX_S = 0.5
CHILD_CHECK_S = 0.1
#: how long after the kernel refused a write for want of memory or buffers it is tried again
WRITE_AGAIN_S = 0.005
_BOOT = (
    # setpgid first: on Python 3.10 Popen cannot do it (no process_group=) and a
    # preexec_fn is unsafe in a driver with threads; it does nothing when Popen did.
    NO_CWD + "import os;os.setpgid(0,0);import json;c=json.loads(sys.argv[1]);sys.path[:0]=c['paths'];"
    "from wrenpack.worker.local_main import main;main(c)"
)
#: a process group of its own from the start, where Popen can make one (Python 3.11+)
_OWN_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {}


#: the pids of this process's local workers, and the lock held while one starts (``workers_held``)
_live_workers: set[int] = set()
_starting = threading.Lock()


def _forked() -> None:
    """A fork of the driver has no local workers of its own yet (its parent's are not its),
    and a lock of its own (a thread of the parent may have held it)."""
    global _starting
    _live_workers.clear()
    _starting = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@contextlib.contextmanager
def workers_held() -> Iterator[frozenset[int]]:
    """The pids of the local workers this process runs, with none starting meanwhile.

    A job's process that launched a job of its own runs that job's workers: they run on
    after the launching call (its future returned, say), while that process lasts. The job's process
    ends its call's other processes with this held (``isolation``), so a worker forked
    meanwhile (a retry, a second worker) is not taken for one of them."""
    with _starting:
        yield frozenset(_live_workers)


#: each reading thread's buffer (a fresh 1 MiB for every read costs more than the read)
_reading = threading.local()


def hard_grace(timeout: float) -> float:
    """How long past its deadline a call that ignores the soft deadline may run before the kill."""
    return 0.5 + 0.02 * timeout


def tmp_check_interval(room: int) -> float:
    """Seconds to the next /tmp check of a call with ``room`` bytes left below its limit
    (``TMP_FILL_BYTES_S``): a call far below it is looked at less often, one near it as
    often as before, so one that crosses it is still stopped within ``TMP_CHECK_S``."""
    return min(TMP_CHECK_MAX_S, max(TMP_CHECK_S, room / TMP_FILL_BYTES_S))


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil absent or the process gone
        return []


def _tree_usage(pid: int, rss: bool = True) -> tuple[float, int]:
    """(MB of memory of the process's descendants, processes and threads of its
    whole tree); (0, 0) without psutil.

    A descendant's memory is its private pages where Linux says (``smaps_rollup``):
    the worker's job processes (``wrenpack.worker.isolation``) are forks of it whose
    pages it shares, counted once, in the worker's own resident size."""
    try:
        import psutil

        root = psutil.Process(pid)
        total, tasks = 0, root.num_threads()
        for child in root.children(recursive=True):
            try:
                tasks += child.num_threads()
                if rss:
                    private = _private_bytes(child.pid)
                    total += private if private is not None else child.memory_info().rss
            except psutil.Error:
                pass
        return total / MiB, tasks
    except Exception:  # noqa: BLE001
        return 0.0, 0


def _private_bytes(pid: int) -> int | None:
    """Bytes only this process maps (its private clean and dirty pages), or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass



def _join(factory: Any, name: str, pid: int, what: str) -> Any:
    """A new cgroup of ``factory`` named ``name`` holding process ``pid``, or None
    (no factory, or the move failed: the worker then runs without it)."""
    if factory is None:
        return None
    group = factory.create(name)
    if group is None:
        return None
    try:
        group.add(pid)
    except OSError as exc:
        log.debug("could not move worker %d into its %s: %s", pid, what, exc)
        group.remove()
        return None
    return group

#: how long a worker asked to end (``Worker.ask_to_end``) has before it is killed (s): it
#: ends in milliseconds; one that does not is stuck, and its call must stop all the same
END_GRACE_S = 0.5


class Worker:
    """A warm worker process and the meters of the call it runs."""

    def __init__(self, wid: int, runtime: str | None, work_dir: str, cgroups: CgroupFactory | None, base_env: dict[str, str],
                 pids_cgroups: PidsCgroupFactory | None = None, relay: Relay | None = None) -> None:
        """``relay``: the worker's stdout and stderr are pipes it reads, and what the
        worker prints goes to the driver's streams through it (``output``); without
        one the worker writes to the driver's own descriptors 1 and 2."""
        self.wid = wid
        self.runtime = runtime
        self.dir = os.path.join(work_dir, f"w{wid}")
        self.tmpdir = os.path.join(self.dir, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        cmd, paths = _command(runtime)
        env = dict(base_env, TMPDIR=self.tmpdir, TMP=self.tmpdir, TEMP=self.tmpdir)
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = f"local/worker-{wid}"
        parent_sock, child_sock = socket.socketpair()
        # The ahead pipe: a byte in it for each call sent ahead and not yet started, read by
        # whichever of the two claims the call first (``recall``; ``wire.driver_message``).
        ahead_r, ahead_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ahead_r: int | None = ahead_r
        self._ahead_w: int | None = ahead_w
        config = {"fd": child_sock.fileno(), "ahead_fd": ahead_r, "parent": os.getpid(), "dir": self.dir, "paths": paths,
                  "owner": worker_marker(),  # (`clean --stale` keeps the driver's jobs while this process runs)
                  "relay": relay is not None}  # (its stdout and stderr are pipes the driver reads)
        stdio: dict[str, int] = {}
        pipes = None
        try:
            if relay is not None:
                pipes = relay.pipes()
                stdio = {"stdout": pipes[0][1], "stderr": pipes[1][1]}
            with _starting:
                self.proc = subprocess.Popen(
                    [*cmd, json.dumps(config)],
                    pass_fds=[child_sock.fileno(), ahead_r],
                    stdin=subprocess.DEVNULL,
                    env=env,
                    **stdio,  # type: ignore[arg-type]
                    **_OWN_GROUP,  # the driver's session (its CPU share), a group of its own
                )
                _live_workers.add(self.proc.pid)
        except BaseException:
            parent_sock.close()
            close_quietly(ahead_r, ahead_w)
            if pipes is not None:
                close_quietly(pipes[0][0], pipes[1][0])
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        finally:
            child_sock.close()
            if pipes is not None:
                close_quietly(pipes[0][1], pipes[1][1])
        #: what the worker prints, on its way to the driver's streams (None: it writes to the driver's own)
        self.output: WorkerOutput | None = relay.add(pipes[0][0], pipes[1][0]) if relay is not None and pipes is not None else None
        self.pid = self.proc.pid
        self.sock = parent_sock
        self.sock.setblocking(False)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        #: the first event of the last message sent, as the worker keeps it
        self._sent_event: dict[str, Any] | None = None
        #: [offset in outbuf, descriptors to send with the bytes from there]
        self._out_fds: deque[list[Any]] = deque()
        #: when a write the kernel refused for want of memory or buffers is tried again
        #: (``flush``): the socket stays writable meanwhile, and watching it would spin
        self.write_again_at = 0.0
        #: descriptors received and not yet matched with their reply (oldest first)
        self._in_fds: deque[int] = deque()
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # kernel < 5.3: the scheduler polls instead
            pass
        self.cgroup: MemoryCgroup | None = _join(cgroups, f"wrenpack-{os.getpid()}-w{wid}", self.pid, "cgroup")
        #: at most MAX_TASKS processes and threads, as on Lambda (else sampled: ``sample``)
        self.pids_cgroup: PidsCgroup | None = _join(pids_cgroups, f"wrenpack-{os.getpid()}-w{wid}", self.pid, "pids cgroup")
        self.ready = False
        self.retiring = False
        #: a caller's thread reads this worker's reply (``LocalBackend.wait_here``): not the dispatcher
        self.borrowed = False
        #: calls sent, oldest first; the first is running, the rest wait in the worker
        self.inflight: deque[Invocation] = deque()
        #: the call sent ahead of the running one's end that may still be taken back (``recall``)
        self.ahead: Invocation | None = None
        #: calls taken back whose ``withdrawn`` reply is still to come
        self.withdrawn = 0
        self.limits: tuple[int, float, int] | None = None
        self.limit_mb: int | None = None
        #: bytes of results this worker handed back that the driver has not read yet:
        #: its cgroup still counts them, so its limit is raised by as much meanwhile
        self.unread = 0
        self._limit_lock = threading.RLock()  # a collected hand-off's hook may run while it is held
        self._limit_stuck = False
        self.idle_since = time.monotonic()
        self.kill_reason: str | None = None
        #: when it was asked to end (``ask_to_end``; monotonic clock), else None
        self.end_asked: float | None = None
        #: when the first kill was asked (``kill``): where a stopped call's run ends
        self.killed_at = 0.0
        self.oom_seen = 0
        # meters of the running call
        self.started = 0.0
        self.hard_deadline = 0.0
        self.next_sample = 0.0
        self.next_tmp_check = 0.0
        self.next_child_check = 0.0
        self.peak_mb = 0.0
        self.tmp_bytes = 0
        self.tasks = 0

    # -- sending ---------------------------------------------------------------
    def send(self, calls: list[Invocation], reply_limit: int | None, handoff_min: int | None = None, flush: bool = True,
             ahead: bool = False) -> None:
        """Queue ``calls`` in one message (same limits); the first begins now if the worker was idle.
        ``handoff_min``: results pickled larger than this come back as sealed memfds.
        ``flush=False``: the caller flushes (``flush()``) when it is ready for the reply.
        ``ahead``: one call sent ahead of the running call's end, which ``recall`` may take back."""
        first = calls[0]
        limits = (first.memory_mb, first.timeout_s, first.ephemeral_storage_mb)
        changed = limits != self.limits
        self.limits = limits
        items = [(_event(inv), inv.timeout_s, _fd_count(inv)) for inv in calls]
        ahead_w = self._ahead_w if ahead else None
        msg = driver_message.message(driver_message.calls(items, self._sent_event, ahead=ahead_w is not None), list(limits) if changed else None,
                                     reply_limit, handoff_min)
        if ahead_w is not None:
            os.write(ahead_w, b"a")  # (a byte per call sent ahead and not started: never a full pipe)
            self.ahead = first
        # What the worker keeps of this message (``driver_message.Decoder``): the next one's
        # first call may be sent as what differs from it. (A copy: the invocation's own may change.)
        self._sent_event = dict(items[0][0])
        was_idle = not self.inflight
        if was_idle and self.cgroup is not None and self.limit_mb != first.memory_mb:
            with self._limit_lock:
                self.limit_mb = first.memory_mb
                if not self._apply_limit():
                    self.limit_mb = None
            # The cgroup's peak is read only when the kernel stopped a call at the limit,
            # where it is the limit: reset when the limit changes, not on every call.
            self.cgroup.reset_peak()
        self.inflight.extend(calls)
        fds = [fd for inv in calls if inv.handoff is not None for fd in inv.handoff.fds()]
        at = len(self.outbuf)
        for i in range(0, len(fds), frames.FDS_PER_SEND):
            # At most FDS_PER_SEND per sendmsg (the kernel's limit is 253), each group a byte further on.
            self._out_fds.append([at + i // frames.FDS_PER_SEND, fds[i : i + frames.FDS_PER_SEND]])
        self.outbuf += frames.encode(driver_message.dumps(msg))
        if was_idle and self.ready:
            self.begin(time.time())
        if flush:
            self.flush()

    def flush(self) -> bool:
        """Write what the socket takes now; True when nothing is left to write."""
        marks = self._out_fds
        while self.outbuf:
            try:
                if marks and marks[0][0] == 0:
                    end = marks[1][0] if len(marks) > 1 else len(self.outbuf)
                    n = frames.send_with_fds(self.sock, memoryview(self.outbuf)[:end], marks[0][1])
                    marks.popleft()  # sent with the first byte, whatever else was
                elif marks:
                    n = self.sock.send(memoryview(self.outbuf)[: marks[0][0]])
                else:
                    n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in _SEND_LATER:
                    # (the kernel is short of buffers for a moment: what is left goes with the next write;
                    # dropping it would leave the worker waiting for the rest of a message)
                    self.write_again_at = time.time() + WRITE_AGAIN_S
                    return False
                # The worker is gone; its exit is seen from the process and handled there.
                self.outbuf.clear()
                marks.clear()
                return True
            del self.outbuf[:n]
            self.write_again_at = 0.0
            for mark in marks:
                mark[0] -= n
        return True

    def recall(self) -> Invocation | None:
        """Take back the call sent ahead (``ahead``), if the worker has not started
        it: it leaves ``inflight``, and the worker answers it with ``withdrawn``
        (counted in ``withdrawn`` until then). None if it has started, or there is none."""
        inv, self.ahead = self.ahead, None
        if inv is None or self._ahead_r is None or len(self.inflight) < 2 or self.inflight[-1] is not inv:
            return None
        try:
            if not os.read(self._ahead_r, 1):
                return None
        except OSError:  # (BlockingIOError: the worker read the byte, the call is its)
            return None
        self.inflight.pop()
        self.withdrawn += 1
        return inv

    # -- receiving -------------------------------------------------------------
    def receive(self) -> list[tuple[dict[str, Any], bytes]] | None:
        """Complete messages read so far; None at end of stream."""
        eof = False
        view = getattr(_reading, "view", None)
        if view is None:
            view = _reading.view = memoryview(bytearray(1 << 20))
        while True:
            try:
                n = frames.recv(self.sock, view, self._in_fds)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not n:
                eof = True
                break
            self.inbuf += view[:n]
            if n < len(view):
                break
        out = []
        buf = self.inbuf
        pos = 0
        while (spans := frames.next_frame(buf, pos)) is not None:
            start, blob_at, end = spans
            head = worker_reply.loads(bytes(buf[start:blob_at]))
            if "handoff" in head:
                # The result as a sealed memfd: the executor checks, reads and closes it.
                fd = self._in_fds.popleft() if self._in_fds else None
                hook = None
                if fd is not None and self.cgroup is not None:
                    try:
                        # A sealed memfd is the worker's own, charged to its cgroup; an
                        # unsealed one can only be the driver's (the executor checks).
                        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE:
                            hook = self._handed_off(os.fstat(fd).st_size)
                    except OSError:
                        pass
                head["handoff"] = Sealed(fd, head["handoff"], on_close=hook)
            out.append((head, bytes(buf[blob_at:end])))
            pos = end
        if pos:
            del buf[:pos]
        if eof and not out:
            return None
        return out

    # -- meters ----------------------------------------------------------------
    def begin(self, now: float) -> None:
        """The first in-flight call starts now: its clocks (nothing is read here)."""
        inv = self.inflight[0]
        self.started = now
        self.hard_deadline = now + inv.timeout_s + hard_grace(inv.timeout_s)
        self.next_sample = now + SAMPLE_S
        self.next_tmp_check = now + TMP_CHECK_S
        self.next_child_check = now + CHILD_CHECK_S
        self.peak_mb = 0.0

    def holds(self, memory_mb: int) -> bool:
        """Whether this idle worker can take a call of ``memory_mb`` now: False if its
        cgroup's limit cannot come down to it because the worker holds more already
        (a warm job process of an earlier call with more memory kept it). On Lambda
        another memory size is another environment; here the worker is replaced
        (``LocalBackend._take``), or the call would run with no limit at all."""
        if self.cgroup is None or self.limit_mb is None or memory_mb >= self.limit_mb:
            return True
        with self._limit_lock:
            old, self.limit_mb = self.limit_mb, memory_mb
            if self._apply_limit():
                self.cgroup.reset_peak()
                return True
            self.limit_mb = old
            self._apply_limit()
            return False

    def _apply_limit(self) -> bool:
        """The cgroup's limit: the call's memory plus the unread hand-offs, plus what
        the worker's processes that run no user code hold of their own (the parent
        that keeps the secrets, the zygote and the spare job process:
        ``wrenpack.worker.isolation``), so a call has the memory it had when it ran
        in the worker's one process (lock held)."""
        if self.cgroup is None or self.limit_mb is None:
            return True
        ok = self.cgroup.set_limit_bytes(self.limit_mb * MiB + self.unread + ISOLATION_MB * MiB)
        self._limit_stuck = not ok
        return ok

    def _handed_off(self, size: int) -> Callable[[], None]:
        """A result of ``size`` bytes came back as a memfd the worker's cgroup is
        charged for until the driver closes it: the limit rises by that much now
        and falls back when it is closed (the returned hook; any thread)."""
        with self._limit_lock:
            self.unread += size
            self._apply_limit()

        def read_back() -> None:
            with self._limit_lock:
                self.unread -= size
                self._apply_limit()  # fails only if the running call is above its own limit: sample() stops it

        return read_back

    def sample(self, now: float) -> str | None:
        """Check the running call on the sampling clock; the reason to stop it, if any."""
        inv = self.inflight[0]
        if now > self.hard_deadline:
            return "timeout"
        if self._limit_stuck:
            with self._limit_lock:
                if not self._apply_limit():
                    return "memory"  # above its memory once the driver's unread results are gone
        if now < self.next_sample:
            return None
        self.next_sample = now + SAMPLE_S
        hwm = 0.0
        if self.cgroup is None:
            hwm = peak_rss_mb(self.pid) or 0.0
            self.peak_mb = max(self.peak_mb, hwm)
        if now >= self.next_child_check and (self.cgroup is None or self.pids_cgroup is None):
            self.next_child_check = now + CHILD_CHECK_S
            children_mb, self.tasks = _tree_usage(self.pid, rss=self.cgroup is None)
            if self.cgroup is None:
                self.peak_mb = max(self.peak_mb, hwm + children_mb)
            if self.pids_cgroup is None and self.tasks > MAX_TASKS:
                return "processes"
        if self.cgroup is None and self.peak_mb > inv.memory_mb:
            return "memory"
        if now >= self.next_tmp_check:
            self.tmp_bytes = dir_usage(self.tmpdir) + open_deleted_bytes(self.tmpdir, self._processes())
            room = inv.ephemeral_storage_mb * MiB - self.tmp_bytes
            if room < 0:
                return "tmp"
            self.next_tmp_check = now + tmp_check_interval(room)
        return None

    def _processes(self) -> list[int]:
        """The worker's processes (its cgroup's, else its tree's): whose open files are looked at."""
        for group in (self.cgroup, self.pids_cgroup):
            if group is not None:
                return group.pids()
        try:
            import psutil

            return [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        except Exception:  # noqa: BLE001 - gone, or no psutil: its own files only
            return [self.pid]

    def next_wakeup(self) -> float:
        """When the running call must be looked at next: with a cgroup the kernel
        holds the memory limit, so only /tmp and the deadline are on the clock."""
        if self.cgroup is None:
            return min(self.next_sample, self.hard_deadline)
        if self.pids_cgroup is None:  # its processes and threads are counted on the clock
            return min(self.next_tmp_check, self.next_child_check, self.hard_deadline)
        return min(self.next_tmp_check, self.hard_deadline)

    def oom_kills(self) -> int:
        """New kernel OOM kills in this worker's cgroup since the last look."""
        if self.cgroup is None:
            return 0
        now = self.cgroup.oom_kills()
        new, self.oom_seen = now - self.oom_seen, now
        return max(0, new)

    def verdict(self, inv: Invocation, reply: dict[str, Any]) -> tuple[WrenpackError | None, bool]:
        """(the limit error of a call that finished, whether to replace the worker)."""
        label = inv.label
        peak = max(float(reply.get("peak_rss_mb") or 0.0), self.peak_mb)
        # A process the call started may have been stopped by the kernel at the
        # limit while the worker lived on: the call still broke the limit.
        if self.cgroup is not None and reply.get("children") and self.oom_kills():
            return memory_error(label, inv.memory_mb, max(peak, self.cgroup.peak_mb())), True
        if self.cgroup is None and peak > inv.memory_mb:
            # Sampling missed it while it ran; the high-water mark did not.
            return memory_error(label, inv.memory_mb, peak, stopped=False), True
        if inv.handoff is not None and peak > inv.memory_mb:
            # Its arguments' pages came from the driver, charged to it and not to the
            # worker's cgroup; its high-water mark counts those it used, as Lambda
            # counts the arguments in the call's memory.
            return memory_error(label, inv.memory_mb, peak, args_mb=inv.handoff.size / MiB, stopped=False), False
        tmp = int(reply.get("tmp_bytes") or 0)
        if tmp > inv.ephemeral_storage_mb * MiB:
            return tmp_error(label, inv.ephemeral_storage_mb, tmp), True
        if "error" in reply:
            return WrenpackError(f"{label}: the worker handler failed: {reply['error']}"), True
        status = reply.get("status") or {}
        # As on Lambda, a timed-out environment is not reused.
        return None, status.get("exit") == "timeout"

    def death_error(self, inv: Invocation) -> WrenpackError | None:
        """Why the running call ended with its worker; None: a crash to retry."""
        label = inv.label
        reason = self.kill_reason
        oom = self.oom_kills() > 0
        if reason == "timeout":
            if inv.event.get("segment") or inv.event.get("checkpoint") or _saved_checkpoint(inv):
                # (a later segment, or a first one that saved: it checkpoints already)
                return TaskTimeout(
                    f"{label} ran past its {inv.timeout_s:g} s timeout and was stopped, though it checkpoints: a step or a "
                    "save took longer than the time left; offer more often (smaller steps, a smaller state) or raise timeout=")
            return TaskTimeout(
                f"{label} ran past its {inv.timeout_s:g} s timeout and was stopped; raise timeout= (at most 900 s on "
                "Lambda) or make it resumable with wrenpack.checkpoint so it is split across invocations (if it "
                "checkpoints, its first save, due halfway, did not finish in time: raise timeout= or save a smaller state)")
        if reason == "memory" or oom:
            peak = max(self.peak_mb, self.cgroup.peak_mb() if self.cgroup is not None else 0.0)
            return memory_error(label, inv.memory_mb, peak)
        if reason == "tmp":
            return tmp_error(label, inv.ephemeral_storage_mb, self.tmp_bytes)
        if reason == "processes":
            return TaskError(
                f"{label} ran {self.tasks} processes and threads at once, more than Lambda's {MAX_TASKS} (where a fork "
                "or thread past them fails with EAGAIN), and was stopped; start fewer, e.g. a pool of a few hundred")
        if reason == "shutdown":
            return WrenpackError(f"{label}: the local backend shut down before the call finished")
        if reason == "cancelled":
            return cancelled_error(label)
        if inv.attempt < inv.retries:
            return None
        return WorkerCrashed.after(label, self.proc.returncode, inv.attempt + 1)

    def stopped_status(self, inv: Invocation, error: WrenpackError,
                       recorded: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The status record of ``inv``, a call this worker ran that the backend ended
        with ``error``: killed to cancel it (``wrenpack.cancel``, a spawned job's cancel),
        at a limit (timeout, memory, /tmp, processes), or when its worker died. Its run
        is the one its worker ``recorded`` where the worker replied, else from its start
        to the kill (or to now, for a worker found dead), as a Lambda invocation
        reports its own run. That run is billed on Lambda, so a report and a job's cost
        count it (before, such a call had no record: 0 ms, its run left out). None if
        it had not started (its worker was not ready)."""
        if isinstance(recorded, dict):
            status = dict(recorded)
        else:
            if not self.ready or self.started <= 0:
                return None
            end = self.killed_at if self.killed_at >= self.started else time.time()
            status = status_record.record(inv.key[0], inv.key[1], inv.attempt, int(inv.event.get("segment", 0)), "error",
                                          self.started, end, round(self.peak_mb, 2) if self.peak_mb else None,
                                          None, socket.gethostname(), self.pid, "", None)
        status.update(exit="timeout" if isinstance(error, TaskTimeout) else "error", error=type(error).__name__)
        if isinstance(error, CallCancelled):
            status["cancelled"] = True
        return status

    def how_it_died(self) -> str:
        return died_how(self.proc.returncode)

    # -- ending ------------------------------------------------------------------
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def ask_to_end(self, reason: str) -> None:
        """Ask the worker to stop its call and end (SIGTERM: ``local_main.die`` kills what
        is below it, collects it, removes its cgroups and exits), as ``kill`` would with
        ``reason``. Killed with its processes at once, it could not collect them: its
        zygote and job's process became zombies of init, which a container's first
        process that does not collect orphans keeps for good (a driver that is that
        first process among them). What has not ended ``END_GRACE_S`` later is killed
        (the dispatcher's ``_watch``, or the backend's shutdown)."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.killed_at = time.time()
        if self.proc.returncode is None and self.end_asked is None:
            self.end_asked = time.monotonic()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGTERM)

    def end_overdue(self, now: float) -> bool:
        """Whether the worker was asked to end (``ask_to_end``) more than ``END_GRACE_S`` ago and runs on."""
        return self.end_asked is not None and now - self.end_asked > END_GRACE_S and self.proc.poll() is None

    def kill(self, reason: str) -> None:
        """Stop the worker and everything it started, setsid'd or daemonised children included."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.killed_at = time.time()
        groups = [g for g in (self.cgroup, self.pids_cgroup) if g is not None]
        if groups:
            # The kernel's list of the tree: everything the call started, wherever it moved.
            for group in groups:
                group.kill_all()
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        # Freeze the tree, look again for what forked meanwhile, then kill it all.
        pids = [self.pid]
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGSTOP)
            except (ProcessLookupError, PermissionError):
                pass
            for _ in range(3):
                found = [self.pid, *_descendants(self.pid)]
                _signal_all(found, signal.SIGSTOP)
                if set(found) == set(pids):
                    break
                pids = found
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _signal_all(pids, signal.SIGKILL)

    def reap(self) -> None:
        """Wait for the (killed or exited) process; SIGKILL again if it lingers."""
        if self.proc.returncode is not None:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill(self.kill_reason or "lost")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("local worker %d (pid %d) does not exit after SIGKILL", self.wid, self.pid)

    def close(self) -> None:
        """After the process exited: stop what is left of its tree, remove its cgroup and /tmp."""
        self.reap()
        _live_workers.discard(self.pid)
        groups = [g for g in (self.cgroup, self.pids_cgroup) if g is not None]
        for group in groups:
            group.kill_all()
            group.remove()
        if not groups:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # children left in its process group
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        while self._in_fds:  # hand-offs of replies never read
            close_quietly(self._in_fds.popleft())
        close_quietly(self.pidfd, self._ahead_r, self._ahead_w)
        self.pidfd = self._ahead_r = self._ahead_w = None
        if self.output is not None:
            self.output.finish()  # (after the kills: what it and its processes wrote is all in the pipes)
        shutil.rmtree(self.dir, ignore_errors=True)


def _fd_count(inv: Invocation) -> int:
    """How many memfds go with the call (its arguments')."""
    return len(inv.handoff.fds()) if inv.handoff is not None else 0


def _saved_checkpoint(inv: Invocation) -> bool:
    """Whether a call stopped at its deadline in its first segment had saved a checkpoint
    (its worker can no longer say): a local store's is looked for (a stat), never an S3 one."""
    ev = inv.event
    spec = ev.get("store")
    if not isinstance(spec, dict) or spec.get("type") != "local" or not ev.get("job_id") or not ev.get("call_id"):
        return False
    try:
        from wrenpack import keys
        from wrenpack.storage import open_store

        return open_store(spec).exists(keys.checkpoint_key(ev["job_id"], ev["call_id"]))
    except Exception:  # noqa: BLE001 - only a message depends on it
        return False


def _event(inv: Invocation) -> dict[str, Any]:
    event = inv.event
    if event.get("attempt", 0) != inv.attempt:
        event = dict(event, attempt=inv.attempt)
    return event


def _command(runtime: str | None) -> tuple[list[str], list[str]]:
    if runtime is None:
        paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        return [sys.executable, "-c", _BOOT], paths
    from wrenpack.backends.runtime_paths import worker_paths  # (importlib.metadata: only for a built runtime)

    return [sys.executable, "-I", "-S", "-c", _BOOT], worker_paths(runtime)


#: what describes the Lambda function a driver runs in (a call that launches calls of its own
#: there: the default executor in a call is a local backend): the variables `wrenpack deploy`
#: gives the function and those of Lambda's runtime that name it or its current request
_LAMBDA_FUNCTION_ENV = (
    "WRENPACK_STORE_URL", "WRENPACK_FUNCTION_FAMILY", "WRENPACK_FUNCTION_SETTINGS", "WRENPACK_EVENT_PROTOCOL",
    "WRENPACK_VERSION", "WRENPACK_RUNTIME_TMP_MB", "WRENPACK_RUNTIME_ARCHIVE", "WRENPACK_RUNTIME_SHA256",
    "WRENPACK_DEPLOYED_PYTHON", "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_TIMEOUT", "AWS_LAMBDA_LOG_STREAM_NAME", "_X_AMZN_TRACE_ID",
)


def base_environment() -> dict[str, str]:
    """A worker's environment: the driver's plus Lambda's variables (built once per backend).

    A driver that runs inside a Lambda function (a call launching calls of its own: its
    default executor is a local backend, with a store in the function's /tmp) does not
    pass on the variables that describe that function (``_LAMBDA_FUNCTION_ENV``): its
    workers are local ones. Its store pin (``WRENPACK_STORE_URL``) made each of them
    refuse every event of the nested job, whose store is not the function's S3 location:
    such a call failed on Lambda and ran locally."""
    env = dict(os.environ)
    if env.get("AWS_LAMBDA_FUNCTION_NAME") and env.get("WRENPACK_LOCAL_WORKER") != "1":  # (in a Lambda function)
        for name in _LAMBDA_FUNCTION_ENV:
            env.pop(name, None)
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": "wrenpack-local",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/wrenpack-local",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python%d.%d" % sys.version_info[:2],
        "LAMBDA_TASK_ROOT": os.getcwd(),
        "LAMBDA_RUNTIME_DIR": sys.prefix,
        "_HANDLER": "wrenpack.worker.handler.handler",
        "WRENPACK_LOCAL_WORKER": "1",
    })
    return env


def _enclosing_limit_mb() -> int | None:
    """The memory limit of the call this process runs in (a job launched inside a call, on a
    local worker or on Lambda: its workers share that call's memory), else None."""
    if os.environ.get("WRENPACK_LOCAL_WORKER") != "1" and not os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        return None
    try:
        return int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
    except (KeyError, ValueError):
        return None


def memory_error(label: str, limit: int, peak: float, args_mb: float | None = None,
                 stopped: bool = True) -> MemoryLimitExceeded:
    """``stopped``: the call was stopped at the limit, so its peak is only known
    to be above it: no figure is suggested (a guess failed as often as not).
    A call that ran to its end has a measured peak: the figure that would have
    held is that peak plus the profiler's margin."""
    seen = max(peak, float(limit))
    counted = "" if args_mb is None else f", counting the {args_mb:.0f} MB of arguments it was given, which are in its memory on Lambda"
    enclosing = _enclosing_limit_mb()
    if stopped and enclosing is not None and enclosing < limit:
        # (its worker's cgroup is inside the launching call's worker's, which holds them all to its limit)
        return MemoryLimitExceeded(
            f"{label} was stopped at {enclosing} MB, the memory limit of the call that launched it, which the calls "
            f"it launches share (their memory={limit} MB cannot go past it); raise the launching call's memory= by "
            "what they need, or launch them from the program")
    if stopped:
        return MemoryLimitExceeded(
            f"{label} exceeded its memory limit of {limit} MB and was stopped there (peak at least {seen:.0f} MB{counted}; "
            "how much more it needs is not known); raise memory= to what `wrenpack profile` measures (its "
            "recommendation is the measured peak plus a margin; a scaling run with memory=\"auto\" sizes each call)"
        )
    return MemoryLimitExceeded(
        f"{label} exceeded its memory limit of {limit} MB (measured peak {seen:.0f} MB{counted}); "
        f"raise memory= to memory={memory_for(seen)} (the peak x 1.10 + 32 MB, as `wrenpack profile` recommends)"
    )


def cancelled_error(label: str) -> CallCancelled:
    return CallCancelled(f"{label} was cancelled (wrenpack.cancel) and stopped, with every process it started")


def tmp_error(label: str, limit: int, used: int) -> EphemeralStorageExceeded:
    return EphemeralStorageExceeded(
        f"{label}: its worker's /tmp held {used / MiB:.0f} MB, more than ephemeral_storage={limit} MB (files earlier "
        "calls on this warm worker left there count too, as on Lambda, where /tmp outlives a call); raise "
        "ephemeral_storage= (up to 10240 MB), or write less / stream to the store and remove what calls leave in /tmp"
    )
