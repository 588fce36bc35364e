"""The local backend's scheduler: Lambda's limits on one machine.

Warm, long-lived worker processes (like warm Lambda containers) each run
``wrenpack.worker.local_main``, which calls the very handler Lambda calls.
This module is the scheduler: it owns the queue and decides which worker
runs what; ``wrenpack.backends.local.process.Worker`` owns a worker's process,
socket, cgroup (``wrenpack.backends.local.linux``) and meters::

    invoke() -> queue -> dispatcher thread -> Worker (socket) -> handler -> store
                              | selector: replies, each worker's pidfd (death)
                              | sampling clock: deadline, memory, /tmp
                              v
                  Invocation.on_done(InvocationResult)

Limits, per call:
- memory: a cgroup v1 memory limit per worker when this process can create
  one (the kernel then stops the call at the limit, whatever allocates); else
  the worker's high-water mark (VmHWM, reset per call) and its children's
  resident memory are sampled. Either way: ``MemoryLimitExceeded``.
- timeout: the handler raises ``TaskTimeout`` inside the call just before the
  deadline; a call stuck where signals do not reach is killed, with its whole
  process tree, at the deadline plus a grace period. The worker is replaced
  after a timeout, as on Lambda.
- /tmp: each worker has a private temporary directory (TMPDIR) whose size is
  checked while the call runs (every 0.1 s near the limit, up to 0.5 s apart
  far below it: ``process.tmp_check_interval``): ``EphemeralStorageExceeded``.
- processes and threads: at most 1,024 per worker, Lambda's limit, held by a
  cgroup v1 pids group where this process can create one (a fork or thread
  past it fails with EAGAIN, as on Lambda); else counted on the sampling clock
  (with psutil), the call stopped past it (``TaskError``). Whatever the call
  started ends with it, at its normal end too (``local_main``).
- crash: a worker that dies otherwise is replaced and the call retried up to
  ``retries`` times, then ``WorkerCrashed``.

Lifecycle: ``on_start`` fires when a worker takes a call; ``cancel`` removes a
queued one; ``shutdown(wait=True)`` runs what is queued, ``wait=False`` fails
it; at interpreter exit every backend still running stops its workers and
removes their cgroups and temporary directories. Workers stop by themselves
when the driver dies (see ``local_main``).
"""
from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import re
import select
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from typing import Any

from wrenpack import interrupts, process_state
from wrenpack.backends.base import Backend, Capabilities, Invocation, InvocationResult, PrivateReply
from wrenpack.backends.local import linux
from wrenpack.backends.local.linux import CgroupFactory, PidsCgroupFactory
from wrenpack.backends.local.output import Relay, WorkerOutput
from wrenpack.backends.local.process import END_GRACE_S, SAMPLE_S, Worker, base_environment, cancelled_error
from wrenpack.backends.local.replies import HandedOff, PickledOutcome
from wrenpack.errors import CallCancelled, ConfigError, WrenpackError
from wrenpack.wire import worker_reply
from wrenpack.worker import handoff as _handoff
from wrenpack.worker.fds import close_quietly
from wrenpack.worker.memory import dir_usage

log = logging.getLogger("wrenpack.backends.local")

#: kept for callers of the old name
dir_size = dir_usage

#: expected work a worker is kept ahead with short calls (automatic batching)
_BATCH_S = 0.02
#: calls expected to take longer are not queued behind a running call, but for
#: the last moments of it (``_PREFETCH_LEAD``)
_PIPELINE_MAX_S = 0.005
#: how long before a longer running call is expected to end the next call of the
#: same limits is sent to its worker (a share of the expected time, at most
#: ``_PREFETCH_LEAD_MAX_S``): the worker starts it as the running one ends, rather
#: than after its reply has reached the driver and the next call has come back, a
#: round trip of four wake-ups (1-2 ms on an idle machine, ~10 ms on a busy one)
_PREFETCH_LEAD = 0.1
_PREFETCH_LEAD_MAX_S = 0.02
#: a function's calls are steady (sent early) after this many timed, their deviation
#: (an average) within this share of their usual time
_STEADY_CALLS = 4
_STEADY_SPREAD = 0.1
_MAX_BATCH = 256
#: the dispatcher's longest sleep: a call handed to an idle worker from the
#: caller's thread needs no wake-up when its first check is due later than this
_IDLE_S = 0.1
#: workers that die before they are ready, in a row, before a runtime's calls fail
_START_TRIES = 3
#: for this long after a reply, the dispatcher sleeps no longer than a sampling interval
#: while a worker without a cgroup is idle: the next call may come from the caller's thread
_BUSY_S = 0.05
#: the longest a waiting caller polls a worker's socket before it looks at its future again (``wait_here``)
_WAIT_HERE_S = 0.25
_live: "weakref.WeakSet[LocalBackend]" = weakref.WeakSet()
#: worker numbers, unique in this process: a worker's cgroups are named by the
#: driver's pid and its number, and another backend's worker (one still being
#: stopped) must not hold the name, or the new worker would run without limits
_worker_ids = itertools.count(1)


#: a local backend's work folder in the temporary directory: this, its driver's pid, "-", a random part
WORK_DIR_PREFIX = "wrenpack-local-"
_STALE_WORK_DIR = re.compile(re.escape(WORK_DIR_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")


#: where the work folder goes when the temporary directory is a tmpfs and calls have memory cgroups
DISK_TMP = "/var/tmp"
_warned_tmpfs = False


def work_root(memory_cgroups: bool) -> str:
    """The folder the work folder (the workers' /tmp) is made in: the temporary
    directory, unless calls have memory cgroups and it is a tmpfs (/tmp on Fedora
    or Arch, TMPDIR=/dev/shm). A tmpfs page is charged to the memory cgroup of
    the process that wrote it, so a call's /tmp files would count as its memory
    (MemoryLimitExceeded where Lambda, whose /tmp is storage of its own, has
    room); /var/tmp, disk-backed, is used instead where it is writable."""
    global _warned_tmpfs
    root = tempfile.gettempdir()
    if not memory_cgroups or linux.filesystem_type(root) != "tmpfs":
        return root
    if os.access(DISK_TMP, os.W_OK | os.X_OK) and linux.filesystem_type(DISK_TMP) not in (None, "tmpfs"):
        return DISK_TMP
    if not _warned_tmpfs:
        _warned_tmpfs = True
        log.warning("the temporary directory %s is a tmpfs and %s is not a disk-backed folder this user can write: what "
                    "calls write to /tmp counts as their memory here (not on Lambda); set TMPDIR to a folder on disk", root, DISK_TMP)
    return root


def remove_stale_work_dirs() -> int:
    """Remove the work folders (workers' /tmp, sockets' folder) of local backends whose
    driver is gone: a driver killed together with its workers (a SIGKILL to its process
    group) removes nothing, and no worker is left to. How many went. One whose driver
    runs, or whose name carries no pid, is left alone. Both places a work folder
    goes are looked at (``work_root``)."""
    removed = 0
    for root in dict.fromkeys((tempfile.gettempdir(), DISK_TMP)):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        gone = 0
        for name in names:
            if not process_state.left_by_gone_process(name, _STALE_WORK_DIR):
                continue
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            gone += 1
        if gone:
            log.info("removed %d work folder(s) in %s left by local backends whose driver is gone", gone, root)
        removed += gone
    return removed


class LocalBackend(Backend):
    """Runs invocations in warm worker processes on this machine."""

    name = "local"

    def __init__(self, concurrency: int | None = None, keep_warm: float = 300.0, use_cgroups: bool | None = None, work_dir: str | None = None,
                 reply_limit: int = 1024 * 1024, handoff: bool | None = None, relay_output: bool = True) -> None:
        """``reply_limit``: result objects at most this many bytes come back in the
        worker's reply instead of through the store (0: always through the store).
        ``handoff``: large arguments and results travel as sealed memfds over the
        worker's socket, not through the store (default: where Linux has them,
        unless ``reply_limit`` is 0). ``relay_output``: what workers print goes
        to this process's ``sys.stdout``/``sys.stderr``, whole lines, a call's
        before its future resolves (``wrenpack.backends.local.output``); False:
        workers write to this process's descriptors 1 and 2 themselves."""
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
            raise ConfigError(f"concurrency={concurrency!r} must be a whole number of at least 1")
        if isinstance(keep_warm, bool) or not isinstance(keep_warm, (int, float)) or not math.isfinite(keep_warm) or keep_warm <= 0:
            raise ConfigError(f"keep_warm={keep_warm!r} must be a number of seconds above 0")
        if isinstance(reply_limit, bool) or not isinstance(reply_limit, int) or reply_limit < 0:
            raise ConfigError(f"reply_limit={reply_limit!r} must be a whole number of bytes, 0 or more "
                              "(0: every result through the store)")
        if handoff is not None and not isinstance(handoff, bool):
            raise ConfigError(f"handoff={handoff!r} must be True (large arguments and results as sealed memfds), "
                              "False (through the store) or None (where Linux has them, unless reply_limit is 0)")
        if not isinstance(relay_output, bool):
            raise ConfigError(f"relay_output={relay_output!r} must be True (workers' output through this process's "
                              "sys.stdout/sys.stderr) or False (straight to its descriptors 1 and 2)")
        self.concurrency = concurrency or os.cpu_count() or 1
        self.keep_warm = float(keep_warm)
        self.reply_limit = reply_limit
        #: the executor asks this before it pickles arguments into memfds
        self.handoff = (reply_limit > 0 if handoff is None else handoff) and _handoff.available()
        self._handoff_min = _handoff.RESULT_MIN if self.handoff else None
        self._cgroups = None if use_cgroups is False else CgroupFactory.detect()
        #: each worker held to Lambda's 1,024 processes and threads (else sampled: ``Worker.sample``)
        self._pids_cgroups = None if use_cgroups is False else PidsCgroupFactory.detect()
        if use_cgroups and self._cgroups is None:
            raise WrenpackError("memory cgroups were requested but cannot be created here; run as root on cgroup v1, or drop use_cgroups")
        if work_dir is None:
            remove_stale_work_dirs()
        # (the driver's pid in its name: a backend started later removes it if this driver is killed with its workers)
        self.work_dir = work_dir or tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{os.getpid()}-", dir=work_root(self._cgroups is not None))
        self._own_work_dir = work_dir is None
        self._queue: deque[Invocation] = deque()
        #: id() of every queued, not cancelled invocation
        self._queued: set[int] = set()
        self._workers: list[Worker] = []
        self._lock = threading.RLock()  # on_done of a failed start may run under it
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._draining = False
        self._stopping = False
        #: ``stop_starting``'s reason: from now on nothing starts (a call whose worker dies ends cancelled)
        self._no_start_reason: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._base_env: dict[str, str] | None = None
        #: reads what the workers print (made with the first worker)
        self._relay_output = relay_output
        self._relay: Relay | None = None
        #: calls that ended, waiting for their on_done outside the lock, with their worker's output to write first
        self._done: deque[tuple[Invocation, InvocationResult, WorkerOutput | None]] = deque()
        #: id() of calls cancelled while they waited in a worker: their reply reports the cancel
        self._stop_on_reply: set[int] = set()
        #: when the dispatcher wakes by itself next (time.time(); 0 while it is awake)
        self._sleep_until = 0.0
        #: when a worker's last reply came (time.time()): calls are coming one after another
        self._last_reply = 0.0
        self._start_failures: dict[str | None, int] = {}
        #: expected seconds per call, by function
        self._estimates: dict[Any, float] = {}
        #: by function: [calls timed, their typical time, its typical deviation] (``_learn``)
        self._typical: dict[Any, list[float]] = {}
        self.worker_starts = 0
        #: messages sent to workers and the calls they carried (batching, for tests and diagnostics)
        self.messages_sent = 0
        self.calls_sent = 0
        #: calls of steady functions sent to a worker before its running call ended (``_prefetch_at``)
        self.calls_sent_ahead = 0
        #: of those, calls taken back before they started: for a worker left idle (``_recall_ahead``), or cancelled
        self.calls_recalled = 0
        self._capabilities: tuple[tuple[Any, ...], Capabilities] | None = None
        #: the process that made it: its workers are that process's, not a fork's (``_forked``)
        self._pid = os.getpid()
        _live.add(self)

    @property
    def capabilities(self) -> Capabilities:
        # (asked a few times per launch: made again only when what it says changes)
        said = (self.reply_limit > 0, self.handoff, self.concurrency)
        kept = self._capabilities
        if kept is None or kept[0] != said:
            kept = self._capabilities = (said, Capabilities(
                calls_end_with_driver=True,
                reply_results=said[0],
                handoff=said[1],
                warm_pool=True,
                enforces=frozenset({"memory", "timeout", "ephemeral_storage"}),
                concurrency=said[2],
                cancel_running=True,
            ))
        return kept[1]

    @classmethod
    def from_config(cls, config: Any) -> "LocalBackend":
        # Objects kept in the store (keep_objects) include the results: none come back in the reply then.
        reply_limit = 0 if getattr(config, "keep_objects", False) else 1024 * 1024
        return cls(concurrency=config.concurrency, keep_warm=config.keep_warm, reply_limit=reply_limit)

    # -- Backend API ------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> None:
        self.invoke_many([invocation])

    def invoke_many(self, invocations: list[Invocation]) -> None:
        started: list[Invocation] = []
        sent_to: list[Worker] = []
        with self._lock:
            if self._stopping or self._closed:
                raise WrenpackError("the local backend was shut down; create a new executor")
            self._queue.extend(invocations)
            self._queued.update(id(inv) for inv in invocations)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wrenpack-local-dispatch", daemon=True)
                self._thread.start()
            elif not self._draining:
                # An idle warm worker takes the call from this thread: no wait
                # for the dispatcher to be scheduled first.
                started, sent_to = self._send_to_idle(flush=False)
        with self._lock:
            if started:
                for worker in sent_to:
                    worker.flush()
                # What a socket did not take now (a message larger than its buffer) is written
                # by the dispatcher when the socket can take more: it must watch it for that.
                # Woken, it would not: it watches for writing only after calls it sent itself
                # (``_after_assign``), and when these were the last calls queued it sends
                # none; the worker then waited for the rest of its message and the driver
                # for its reply, until the call's timeout.
                self._watch_io()
            # The dispatcher must look again unless it will anyway, soon enough for
            # every call just started (their meters and deadlines), and nothing waits.
            wake = not started or self._next_queued() is not None or any(
                w.next_wakeup() < self._sleep_until or w.write_again_at for w in self._workers if w.inflight)
        if wake:
            self._wake()
        # RUNNING once the bytes went: while the worker runs the call, not before it
        # gets it. (Its reply is read on the dispatcher's thread; a call reported done
        # first stays done: a future that is not pending is not made RUNNING.)
        for inv in started:
            self.started(inv)

    def wait_here(self, invocation: Invocation, until: float) -> None:
        """Read the reply of a call running alone on its worker on the waiting
        caller's thread: the worker's socket is taken out of the dispatcher's
        selector meanwhile (its exit, its meters and its deadline stay the
        dispatcher's), polled here, read under the lock as the dispatcher would
        read it, and given back. A reply is a worker's write straight to the
        thread that wants it: no wake-up of the dispatcher, then of the caller.

        Returns at ``until`` (at most ``_WAIT_HERE_S`` at a time: the caller
        looks at its future again), when the reply was read, or at once when the
        call is not alone on a ready worker (queued, behind another call, on a
        worker starting, or this is the dispatcher's own thread)."""
        if threading.current_thread() is self._thread:
            return
        # (a signal's exception can land after any call below returns: whatever was done of the
        # borrowing by then is undone in ``_end_wait_here``, which the key, taken first, makes run)
        key: selectors.SelectorKey | None = None
        worker: Worker | None = None
        fd = -1
        readable = False
        try:
            with self._lock:
                worker = self._alone_on(invocation)
                if worker is None:
                    return
                try:
                    key = self._selector.get_key(worker.sock)
                except (KeyError, ValueError):
                    return
                fd = os.dup(worker.sock.fileno())  # (polled here even if the dispatcher closes the worker's)
                worker.borrowed = True
                self._selector.unregister(worker.sock)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            wait_s = min(until - time.time(), _WAIT_HERE_S)
            readable = wait_s > 0 and bool(poller.poll(int(wait_s * 1000) + 1))
        except (KeyError, ValueError, OSError):
            readable = False  # (the worker's socket closed meanwhile: the dispatcher has it)
        finally:
            if key is not None and worker is not None:
                self._end_wait_here(worker, key.data, fd, readable)

    def _end_wait_here(self, worker: Worker, data: Any, fd: int, readable: bool) -> None:
        """The end of ``wait_here``: a reply that came is read, the worker given back
        and the call completed, with the signals programs handle held back until then
        (``interrupts``: cut short, the call failed with Ctrl-C's interrupt).

        Until they are held, a handler's exception (Ctrl-C, a SIGTERM handler's
        ``SystemExit``) can land between any two bytecodes; landing before the worker
        was given back, it left the reply unread for good, the call never ended and
        ``shutdown(wait=True)`` in the program's ``except SystemExit`` waited forever.
        So the end begins again until it has begun, and such an exception is raised
        once it is done. (One raised inside, with the signals held, is the code's own.)"""
        came: BaseException | None = None
        while True:
            begun = False
            try:
                with interrupts.Held():
                    begun = True
                    if fd >= 0:
                        os.close(fd)
                    with self._lock:
                        worker.borrowed = False
                        if worker in self._workers and (not readable or self._read(worker)):
                            self._give_back(worker, data)
                        # (and when the worker is idle now, a call another sent ahead may come to it)
                        woken = (self._queued or self._ahead_held()) and not self._stopping
                    if woken:
                        self._wake()  # the worker may be free for what waits: the dispatcher hands it out
                    self._report()  # (the calls read here are completed here)
            except BaseException as exc:
                if begun:
                    raise  # (from the work, or a held signal's handler once it was done)
                came = came or exc
                continue
            break
        if came is not None:
            raise came

    def _alone_on(self, invocation: Invocation) -> Worker | None:
        """The ready worker running ``invocation`` and nothing else, with nothing left
        to write to it (lock held); None if there is none."""
        for worker in self._workers:
            inflight = worker.inflight
            if len(inflight) == 1 and inflight[0] is invocation:
                if worker.ready and not worker.outbuf and not worker.kill_reason and not worker.retiring \
                        and not worker.borrowed:
                    return worker
                return None
        return None

    def _give_back(self, worker: Worker, data: Any) -> None:
        """The dispatcher watches a worker's socket again (lock held), for writing
        too if calls were sent to it meanwhile and wait to be written."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.outbuf and not worker.write_again_at else 0)
        try:
            self._selector.register(worker.sock, events, data)
        except (KeyError, ValueError, OSError):
            pass

    def cancel(self, invocation: Invocation) -> bool:
        """Remove a call no worker has taken yet; its ``on_done`` is then never called."""
        with self._lock:
            if id(invocation) not in self._queued:
                return False
            self._queued.discard(id(invocation))
            return True

    def cancel_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Stop these calls, running or not: a queued one is taken out, a running
        one's worker is killed with every process the call started (its cgroup, else
        its process group and descendants) and replaced, as after a timeout; the
        calls waiting behind it go back to the queue. Each ends through ``on_done``
        with ``CallCancelled``."""
        wanted = set(calls)
        stopped: set[tuple[str, str]] = set()
        with self._lock:
            # The workers first: a stopped worker's waiting calls go back to the queue, where
            # the wanted ones among them are taken out with the others.
            for worker in list(self._workers):
                if worker.kill_reason:
                    continue
                for i, inv in enumerate(list(worker.inflight)):
                    if inv.key not in wanted:
                        continue
                    stopped.add(inv.key)
                    if i == 0:
                        self._requeue_waiting(worker)
                        worker.ask_to_end("cancelled")  # (``_watch`` kills it if it has not ended soon)
                        break
                    if inv is worker.ahead and worker.recall() is inv:
                        # (taken back before it started: its worker and the running call go on)
                        self.calls_recalled += 1
                        self._finish(inv, error=cancelled_error(inv.label))
                        continue
                    self._stop_on_reply.add(id(inv))
            for inv in list(self._queue):
                if inv.key in wanted and id(inv) in self._queued:
                    self._queued.discard(id(inv))
                    stopped.add(inv.key)
                    self._finish(inv, error=cancelled_error(inv.label))
        self._wake()  # the dispatcher reports them (``on_done`` runs outside the lock)
        return stopped

    def shutdown(self, wait: bool = True) -> None:
        """``wait=True``: run what is queued and in flight, then stop. ``wait=False``: stop the
        running calls and fail the queued ones now. Either way workers, their cgroups and
        temporary directories are gone when this returns (unless called from a callback).
        In a fork of the process that made it, nothing: its workers are that process's."""
        if self._pid != os.getpid():
            return
        with self._lock:
            if self._closed:
                return
            if wait:
                self._draining = True
            else:
                self._stopping = True
            thread = self._thread
        self._wake()
        if thread is None:
            self._cleanup()
            return
        if thread is threading.current_thread():
            return  # from an on_done callback: the dispatcher stops when it returns
        thread.join(timeout=None if wait else 10)
        if thread.is_alive():
            log.warning("wrenpack local backend: the dispatcher did not stop; killing its workers")
            self._stopping = True
            for worker in list(self._workers):
                worker.kill("shutdown")

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for tests and diagnostics)."""
        return [w.pid for w in list(self._workers)]

    # -- dispatcher thread ------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        """The dispatcher: worker state changes only under the lock (callers may
        hand an idle worker a call directly); callbacks run outside it."""
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        break
                    drained = self._draining and not self._pending()
                if drained:
                    if not self._done:
                        break
                    self._report()  # (its callbacks may launch more: looked at again)
                    continue
                with self._lock:
                    started = self._assign_locked()
                    # (bytes a caller's thread left in a worker's outbuf unwatched: a signal's exception
                    # that landed in ``invoke_many`` between handing calls to a worker and flushing them
                    # left the worker without its calls, and shutdown(wait=True) waiting for them for good)
                    self._watch_io()
                    now = time.time()
                    # (A starting worker's calls have no clock yet, only a wake-up due at 0: counted,
                    # they made this loop spin, a CPU the starting workers lacked. Its "ready"
                    # comes on its socket, its death on its pidfd, both in the selector.)
                    wakeup = min((w.next_wakeup() for w in self._workers if w.inflight and w.ready and not w.kill_reason),
                                 default=now + _IDLE_S)
                    if self._queued:  # a busy worker's next call may go ahead of its reply (one due already was offered above)
                        wakeup = min([wakeup, *(at for w in self._workers if w.inflight and not w.kill_reason and not w.retiring
                                                and (at := self._prefetch_at(w)) > now)])
                    timeout = min(_IDLE_S, max(0.0, wakeup - now), self._idle_expiry(),
                                  *(w.write_again_at - now for w in self._workers if w.write_again_at),
                                  # (a worker asked to end is killed once its grace is over: ``_watch``)
                                  *(max(0.0, w.end_asked + END_GRACE_S - time.monotonic()) + 0.001
                                    for w in self._workers if w.end_asked is not None and w.proc.returncode is None))
                    if now - self._last_reply < _BUSY_S and any(w.cgroup is None and w.ready and not w.inflight
                                                                for w in self._workers):
                        # Calls come one after another (``.remote()`` in a loop): an idle worker
                        # without a cgroup, whose next call is sampled from its start, is looked at
                        # on its sampling clock anyway, so a call handed to it from the caller's
                        # thread needs no wake-up of this thread (``invoke_many``).
                        timeout = min(timeout, SAMPLE_S)
                    polling = any(w.pidfd is None for w in self._workers)
                    if polling:
                        timeout = min(timeout, 0.05)
                    self._sleep_until = now + timeout
                self._after_assign(started)
                events = self._selector.select(timeout=max(0.0, self._sleep_until - time.time()))
                with self._lock:
                    self._sleep_until = 0.0
                    for key, mask in events:
                        self._event(key.data, mask)
                if self._done:
                    # The calls that ended are reported as soon as their replies are read, before
                    # this round's looking and the next one's planning: the caller's wake-up (a
                    # thread the kernel must schedule) overlaps those, which it would wait behind.
                    self._report()
                with self._lock:
                    self._write_again(time.time())
                    if polling:
                        for worker in list(self._workers):
                            if worker.pidfd is None and worker.exited():
                                self._on_exit(worker)
                    self._watch()
                    self._reap_idle()
        except Exception:  # noqa: BLE001 - fail every pending call rather than hang
            log.exception("wrenpack local backend: dispatcher failed")
        finally:
            self._stopping = True
            self._cleanup()
            self._report()

    def _pending(self) -> bool:
        with self._lock:
            if self._queued:
                return True
        return any(w.inflight for w in self._workers)

    def _event(self, data: Any, mask: int) -> None:
        if data is None:
            try:
                while os.read(self._wake_r, 65536):
                    pass
            except (BlockingIOError, OSError):
                pass
            return
        kind, worker = data
        if worker not in self._workers:
            return
        if kind == "exit":
            self._on_exit(worker)
            return
        if worker.borrowed:
            return  # a waiting caller reads it now (``wait_here``): it gives the socket back after
        if mask & selectors.EVENT_WRITE and (worker.flush() or worker.write_again_at):
            # (written, or refused for want of memory: tried again on the clock, ``_write_again``)
            self._selector.modify(worker.sock, selectors.EVENT_READ, ("io", worker))
        if mask & selectors.EVENT_READ:
            self._read(worker)

    def _read(self, worker: Worker) -> bool:
        """Handle the worker's replies read so far; False at the end of its stream."""
        messages = worker.receive()
        if messages is None:
            # End of stream: the process's exit (pidfd) says what happened; stop listening.
            try:
                self._selector.unregister(worker.sock)
            except (KeyError, ValueError):
                pass
            if worker.pidfd is None or not worker.exited():
                worker.kill(worker.kill_reason or "lost")
            return False
        for head, blob in messages:
            if worker.kill_reason:
                break
            self._on_reply(worker, head, blob)
        return True

    def _on_reply(self, worker: Worker, head: dict[str, Any], blob: bytes) -> None:
        if "withdrawn" in head:
            if worker.withdrawn:
                worker.withdrawn -= 1  # (a call taken back: it runs elsewhere)
            elif worker.inflight:
                # A call the driver did not take back, and its worker did not run (the byte it
                # was sent with was gone: read by something else of the worker's): sent again.
                inv = worker.inflight.popleft()
                log.warning("%s: its worker gave it back unrun (the ahead pipe's byte was gone); sending it again", inv.label)
                if worker.inflight:
                    worker.begin(time.time())
                self._requeue_front([inv])
            return
        if "ready" in head:
            worker.ready = True
            # Idle from now, not from its spawn: with a keep_warm shorter than a start,
            # a worker was retired the moment it was ready, before the call it was
            # started for reached it, and the next one too, for as long as that went on.
            worker.idle_since = time.monotonic()
            self._start_failures.pop(worker.runtime, None)
            if worker.inflight:
                worker.begin(time.time())  # calls sent while it started: the clock starts now
            return
        if not worker.inflight:
            return
        inv = worker.inflight.popleft()
        worker.ahead = None  # (the call sent ahead of this one's end starts now: it stays)
        now = self._last_reply = time.time()
        worker.idle_since = time.monotonic()
        error, replace = worker.verdict(inv, head)
        stopped_run = None
        if id(inv) in self._stop_on_reply:
            # Cancelled while it waited in the worker behind another call: it ran, its outcome is dropped
            # (its run, which Lambda would bill, is reported).
            self._stop_on_reply.discard(id(inv))
            error = cancelled_error(inv.label)
        if error is not None:
            # (it ran, cut short or over a limit judged on its reply: its run is reported, and
            # billed, as on Lambda; the one its worker recorded, else from its start to now)
            stopped_run = worker.stopped_status(inv, error, head.get("status"))
        self._learn(inv, head.get("elapsed"))
        if worker.inflight:
            worker.begin(now)
        handoff = head.get("handoff")
        if error is not None:
            if handoff is not None:
                handoff.close()
            self._finish(inv, error=error, status=stopped_run, output=worker.output)
        else:
            data, outcome = worker_reply.payload(head, blob)
            private: PrivateReply | None = None
            if handoff is not None:
                private = HandedOff(inv, handoff)
            elif outcome is not None:
                private = PickledOutcome(inv.label, outcome)
            self._finish(inv, status=head["status"], data=data, private=private, output=worker.output)
        if worker.inflight and id(worker.inflight[0]) in self._stop_on_reply and not worker.kill_reason and not replace:
            self._stop_started(worker)
        if replace:
            self._retire(worker)

    def _stop_started(self, worker: Worker) -> None:
        """The call that starts now on ``worker`` was cancelled while it waited
        there (lock held). A short one runs, its outcome dropped; a longer one
        (sent ahead of a steady call's end) is stopped as a running call is: its
        worker killed and replaced, the calls behind it back in the queue."""
        nxt = worker.inflight[0]
        est = self._estimates.get(nxt.event.get("func_key"))
        if est is not None and est <= _PIPELINE_MAX_S:
            return
        self._stop_on_reply.discard(id(nxt))
        self._requeue_waiting(worker)
        worker.kill("cancelled")

    def _finish(self, inv: Invocation, status: dict[str, Any] | None = None, error: WrenpackError | None = None, data: bytes | None = None,
                private: PrivateReply | None = None, output: WorkerOutput | None = None) -> None:
        """A call ended: its ``on_done`` runs once the lock is released (``_report``),
        after what its worker printed (``output``) is written."""
        self._done.append((inv, InvocationResult(status=status, error=error, data=data, private=private), output))

    def _report(self) -> None:
        """Run the ``on_done`` callbacks of the calls that ended (lock not held), each
        once what its worker printed before its reply is written: the call's output
        comes before its result, and none is left behind at the end of a map."""
        while self._done:
            try:
                inv, result, output = self._done.popleft()
            except IndexError:
                return
            if output is not None:
                output.drain()
            try:
                inv.on_done(inv, result)
            except Exception:  # noqa: BLE001
                log.exception("on_done callback failed")

    # -- assigning ----------------------------------------------------------------
    def _next_queued(self) -> Invocation | None:
        """The oldest call not cancelled (lock held); None while ``stop_starting`` holds
        every call back (unless a ``shutdown(wait=True)`` asks to run what is queued)."""
        if self._no_start_reason is not None and not self._draining:
            return None
        while self._queue:
            inv = self._queue[0]
            if id(inv) in self._queued:
                return inv
            self._queue.popleft()
        return None

    def _take(self, worker: Worker) -> tuple[list[Invocation], bool]:
        """The calls to hand ``worker`` now (lock held), and whether the one call is
        sent ahead of the running call's end (``_prefetch_at``): automatic batching.

        A function's first calls go one per worker and are timed; then a worker
        is kept ``_BATCH_S`` of expected work ahead, so each message (and each
        round trip) carries several short calls. Calls expected to take longer
        than ``_PIPELINE_MAX_S`` are never queued behind a running one: no call
        waits behind a long one while another worker could take it. Nor is a call
        run again (``attempt``: its worker died, or ``retry_on``): the calls it would
        wait behind may be waiting for it (a map_reduce's reducers launched with
        their mappers wait for a mapper that runs again), and it has lost time once."""
        head = self._next_queued()
        if head is None or head.runtime != worker.runtime:
            return [], False
        if not worker.inflight and not worker.holds(head.memory_mb):
            log.info("local worker %d holds more memory than %d MB (kept by an earlier call's warm process): "
                     "replaced, as Lambda gives another memory size another environment", worker.wid, head.memory_mb)
            self._retire(worker)
            return [], False
        est = self._estimates.get(head.event.get("func_key"))
        if worker.inflight:
            last = worker.inflight[-1]
            if est is None or _limits(head) != _limits(last) or head.attempt:
                return [], False
            if est > _PIPELINE_MAX_S:
                if self._prefetch_at(worker) > time.time():
                    return [], False
                ahead = self._pop_queued(1, worker.runtime, _limits(head))
                self.calls_sent_ahead += len(ahead)
                return ahead, True
            room = int((_BATCH_S - len(worker.inflight) * est) / est)
        else:
            room = 1 if est is None else max(1, int(_BATCH_S / max(est, 1e-6)))
        # Fair share: the rest of the queue is left for the other workers.
        room = min(room, _MAX_BATCH, -(-len(self._queued) // self.concurrency))
        if room < 1:
            return [], False
        return self._pop_queued(room, worker.runtime, _limits(head)), False

    def _pop_queued(self, room: int, runtime: str | None, limits: Any) -> list[Invocation]:
        """Up to ``room`` calls from the head of the queue, while they share
        ``runtime`` and ``limits`` (lock held)."""
        calls: list[Invocation] = []
        queue = self._queue
        while queue and len(calls) < room:
            inv = queue[0]
            if id(inv) not in self._queued:
                queue.popleft()
                continue
            if inv.runtime != runtime or _limits(inv) != limits or (calls and inv.attempt):
                break  # (a call run again heads a message of its own: ``_take``)
            queue.popleft()
            self._queued.discard(id(inv))
            calls.append(inv)
        return calls

    def _prefetch_at(self, worker: Worker) -> float:
        """When the next call may be sent to ``worker``, busy with one call expected
        to take longer than ``_PIPELINE_MAX_S``: a little before that call is
        expected to end (``_PREFETCH_LEAD``), if its function's calls take about
        the same time each (``_steady``); never while it holds two (lock held).
        A call that runs past its function's usual time holds the one sent early
        behind it until another worker is idle with nothing queued, which then
        takes it (``_recall_ahead``); where the times vary, nothing is sent early.
        Nothing is sent ahead while a call taken back is still to be answered
        (``Worker.withdrawn``)."""
        if len(worker.inflight) != 1 or not worker.ready or not worker.started or worker.withdrawn:
            return math.inf
        typical = self._steady(worker.inflight[0].event.get("func_key"))
        if typical is None:
            return math.inf
        return worker.started + typical - min(typical * _PREFETCH_LEAD, _PREFETCH_LEAD_MAX_S)

    def _steady(self, key: Any) -> float | None:
        """A function's usual call time if its calls have taken about that long
        each (``_STEADY_CALLS`` timed at least, deviation within ``_STEADY_SPREAD``
        of it), else None."""
        seen = self._typical.get(key)
        if seen is None or seen[0] < _STEADY_CALLS or seen[2] > _STEADY_SPREAD * seen[1]:
            return None
        return seen[1]

    def _recall_ahead(self) -> None:
        """Nothing is queued and a worker is idle: a call sent ahead of a running call's
        end (``_prefetch_at``) that still waits behind it is taken back, if its worker
        has not started it (``Worker.recall``), and goes to the front of the queue, where
        the idle worker takes it now rather than when the running call ends, later
        than its function's usual time (lock held)."""
        idle = [w for w in self._workers if w.ready and not w.inflight and not w.retiring and not w.kill_reason]
        for worker in self._workers:
            inv = worker.ahead
            if inv is None or worker.kill_reason:
                continue
            taker = next((w for w in idle if w.runtime == inv.runtime), None)
            if taker is None:
                continue
            if worker.recall() is inv:
                idle.remove(taker)  # (one call for each idle worker: another waits where it was sent)
                self.calls_recalled += 1
                self._requeue_front([inv])

    def _assign_locked(self) -> list[Invocation]:
        """Hand out queued calls, start workers for the rest (lock held); the calls started."""
        started: list[Invocation] = []
        if not self._queued and self._ahead_held():
            self._recall_ahead()
        if self._queued:
            # A starting worker takes calls too: they run as soon as it has imported the handler.
            usable = [w for w in self._workers if not w.retiring and not w.kill_reason]
            # Idle workers first, then top up the busy ones.
            for worker in sorted(usable, key=lambda w: len(w.inflight)):
                started.extend(self._send(worker))
        head = self._next_queued()
        if head is not None and not self._stopping:
            self._grow(head)
        return started

    def _ahead_held(self) -> bool:
        """Whether a call sent ahead may still be taken back (lock held)."""
        return any(w.ahead is not None for w in self._workers)

    def _send_to_idle(self, flush: bool = True) -> tuple[list[Invocation], list[Worker]]:
        """Queued calls to idle, ready workers only (lock held; the caller's thread):
        the calls, and the workers they went to (``flush=False``: still to be flushed)."""
        started: list[Invocation] = []
        workers: list[Worker] = []
        for worker in self._workers:
            if not self._queued:
                break
            if worker.ready and not worker.inflight and not worker.retiring and not worker.kill_reason:
                calls = self._send(worker, flush)
                if calls:
                    started.extend(calls)
                    workers.append(worker)
        return started, workers

    def _send(self, worker: Worker, flush: bool = True) -> list[Invocation]:
        calls, ahead = self._take(worker)
        if calls:
            worker.send(calls, self.reply_limit, self._handoff_min, flush=flush, ahead=ahead)
            self.messages_sent += 1
            self.calls_sent += len(calls)
        return calls

    def _after_assign(self, started: list[Invocation]) -> None:
        self._report()
        for inv in started:
            self.started(inv)
        if started:
            with self._lock:
                self._watch_io()

    def _learn(self, inv: Invocation, elapsed: Any) -> None:
        """Keep a function's expected call time: up at once, down gradually (so a
        long call is never mistaken for a short one); and its usual time and how
        far its calls stray from it (moving averages: ``_steady``)."""
        if not isinstance(elapsed, (int, float)):
            return
        key = inv.event.get("func_key")
        old = self._estimates.get(key)
        if len(self._estimates) > 4096:
            self._estimates.clear()
        self._estimates[key] = float(elapsed) if old is None or elapsed > old else 0.7 * old + 0.3 * float(elapsed)
        if len(self._typical) > 4096:
            self._typical.clear()
        seen = self._typical.get(key)
        if seen is None:
            self._typical[key] = [1, float(elapsed), 0.0]
        else:
            seen[0] += 1
            seen[2] = 0.7 * seen[2] + 0.3 * abs(elapsed - seen[1])
            seen[1] = 0.7 * seen[1] + 0.3 * elapsed

    def _grow(self, head: Invocation) -> None:
        """Start workers for what waits (lock held)."""
        runtime = head.runtime
        starting = sum(1 for w in self._workers if not w.ready and not w.inflight and w.runtime == runtime)
        if len(self._workers) >= self.concurrency and (starting or all(w.runtime == runtime for w in self._workers)):
            return
        waiting = 0
        for inv in self._queue:  # counted only as far as it matters
            if id(inv) in self._queued and inv.runtime == runtime:
                waiting += 1
                if waiting >= self.concurrency + starting:
                    break
        wanted = waiting - starting
        while wanted > 0 and len(self._workers) < self.concurrency:
            try:
                self._spawn(runtime)
            except Exception as exc:  # noqa: BLE001 - fail these calls, keep serving others
                self._fail_runtime(runtime, f"{type(exc).__name__}: {exc}" if not isinstance(exc, WrenpackError) else str(exc))
                return
            wanted -= 1
        if wanted > 0 and starting == 0:
            # All slots taken by workers for another runtime: retire an idle one.
            other = next((w for w in self._workers if w.ready and not w.inflight and w.runtime != runtime and not w.retiring), None)
            if other is not None:
                self._retire(other)

    def _write_again(self, now: float) -> None:
        """Write again what the kernel refused for want of memory or buffers, once its
        time came (lock held): a socket that is writable all along is not watched
        meanwhile, or the dispatcher would spin on it for as long as the kernel is short."""
        for worker in self._workers:
            if worker.write_again_at and worker.write_again_at <= now and not worker.borrowed:
                worker.write_again_at = 0.0
                if not worker.flush() and not worker.write_again_at:
                    self._watch_io()  # (the socket is full: written as it takes more)

    def _watch_io(self) -> None:
        """Watch for writing the socket of each worker with bytes left to write (lock
        held): ``_event`` writes them as the socket takes them. Whoever leaves bytes
        in a worker's ``outbuf`` calls this (a borrowed socket is watched again when
        it is given back: ``_give_back``)."""
        for worker in self._workers:
            if worker.outbuf and not worker.write_again_at:
                try:
                    if not self._selector.get_key(worker.sock).events & selectors.EVENT_WRITE:  # (the dispatcher asks every turn)
                        self._selector.modify(worker.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("io", worker))
                except (KeyError, ValueError):
                    pass

    def _fail_runtime(self, runtime: str | None, message: str) -> None:
        """Workers for ``runtime`` cannot start: fail every call queued for it (lock held)."""
        self._start_failures.pop(runtime, None)
        doomed = [inv for inv in self._queue if inv.runtime == runtime and id(inv) in self._queued]
        self._queue = deque(inv for inv in self._queue if inv.runtime != runtime)
        for inv in doomed:
            self._queued.discard(id(inv))
            self._finish(inv, error=WrenpackError(f"{inv.label}: could not start a worker: {message}"))

    def _spawn(self, runtime: str | None) -> Worker:
        if self._base_env is None:
            self._base_env = base_environment()
        if self._relay is None and self._relay_output:
            self._relay = Relay()
        worker = Worker(next(_worker_ids), runtime, self.work_dir, self._cgroups, self._base_env, self._pids_cgroups, self._relay)
        self._workers.append(worker)
        self._selector.register(worker.sock, selectors.EVENT_READ, ("io", worker))
        if worker.pidfd is not None:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        self.worker_starts += 1
        log.debug("started local worker %d (pid %d, runtime %s)", worker.wid, worker.pid, runtime or "client environment")
        return worker

    # -- watching -----------------------------------------------------------------
    def _watch(self) -> None:
        now = time.time()
        clock = time.monotonic()
        for worker in self._workers:
            if worker.end_overdue(clock):
                worker.kill(worker.kill_reason or "cancelled")
                continue
            if not worker.inflight or worker.kill_reason or not worker.ready:
                continue
            reason = worker.sample(now)
            if reason is not None:
                self._requeue_waiting(worker)
                worker.kill(reason)

    def _idle_expiry(self) -> float:
        """Seconds until the first idle worker has been idle ``keep_warm`` (lock held):
        the dispatcher wakes then, so a short keep_warm is kept, not rounded up to its sleep."""
        now = time.monotonic()
        ends = [w.idle_since + self.keep_warm - now for w in self._workers if not w.inflight and w.ready and not w.kill_reason]
        return max(0.001, min(ends)) if ends else _IDLE_S

    def _reap_idle(self) -> None:
        now = time.monotonic()
        expired = [w for w in self._workers
                   if not w.inflight and w.ready and not w.kill_reason and now - w.idle_since >= self.keep_warm]
        if not expired:
            return
        waiting = {inv.runtime for inv in self._queue if id(inv) in self._queued}
        for worker in expired:
            if worker.runtime not in waiting:  # (a call waits that it can take: it is not idle)
                self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        """Replace a worker whose running call was already reported; calls waiting
        in it go back to the front of the queue."""
        worker.retiring = True
        self._requeue_waiting(worker, keep_first=False)
        worker.kill(worker.kill_reason or "retired")

    def _let_workers_exit(self, wait_s: float = 1.0) -> None:
        """Close the connection of each worker with no call: it then ends its job's
        processes and its zygote, waits for them, and exits (``local_main``). One
        running a call is asked to stop it and end (``Worker.ask_to_end``), which it
        does the same way. Killed outright, a worker could not collect them: they
        stayed zombies of init, which on a machine (or container) whose first process
        does not collect orphans stay for good. What has not exited within ``wait_s``
        is killed as before."""
        ending = []
        for worker in list(self._workers):
            if worker.proc.returncode is not None or worker.kill_reason is not None:
                continue  # (gone, or being killed: at a limit, cancelled)
            if worker.inflight:
                worker.ask_to_end("shutdown")
            else:
                try:
                    worker.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            ending.append(worker)
        deadline = time.monotonic() + wait_s
        for worker in ending:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def _requeue_waiting(self, worker: Worker, keep_first: bool = True) -> None:
        """Calls sent to ``worker`` but not started go back to the front of the queue."""
        keep = 1 if keep_first else 0
        worker.ahead = None
        waiting = list(worker.inflight)[keep:]
        while len(worker.inflight) > keep:
            worker.inflight.pop()
        self._requeue_front(waiting)

    def _requeue_front(self, calls: list[Invocation]) -> None:
        if calls:
            with self._lock:
                self._queue.extendleft(reversed(calls))
                self._queued.update(id(inv) for inv in calls)

    def _on_exit(self, worker: Worker) -> None:
        """The worker process exited (seen from its pidfd): finish its calls, free its slot."""
        if worker not in self._workers:
            return
        if worker.kill_reason is None:
            # It died by itself: replies it sent first still count.
            messages = worker.receive() or []
            for head, blob in messages:
                self._on_reply(worker, head, blob)
        if worker.kill_reason is None:
            worker.kill("lost")  # what it started dies with it
            worker.kill_reason = None
        worker.reap()
        self._requeue_waiting(worker)
        inv = worker.inflight.popleft() if worker.inflight else None
        # Judged before the cgroup goes: its OOM count says whether the kernel stopped it.
        error = worker.death_error(inv) if inv is not None else None
        self._discard(worker)
        if not worker.ready and worker.kill_reason is None and not self._stopping and (worker.proc.returncode or 0) >= 0:
            # It exited before it could run anything (not killed): its calls never started.
            if inv is not None:
                self._requeue_front([inv])
                inv = None
            failures = self._start_failures[worker.runtime] = self._start_failures.get(worker.runtime, 0) + 1
            if failures >= _START_TRIES:
                with self._lock:
                    self._fail_runtime(worker.runtime, f"the worker process exited at start ({worker.how_it_died()})")
        if inv is None:
            return
        reason = self._no_start_reason
        if error is None and reason is not None:
            error = CallCancelled(f"{inv.label}: {reason}; its worker ended with it ({worker.how_it_died()}) and it "
                                  "was not run again")
        if error is not None:
            # (a call stopped by a cancel, at a limit, or with its worker ran until then: its run is
            # reported, and billed, as on Lambda)
            self._finish(inv, error=error, status=worker.stopped_status(inv, error))
            return
        log.warning("%s: worker died (%s); retrying (attempt %d of %d)", inv.label, worker.how_it_died(), inv.attempt + 2, inv.retries + 1)
        inv.attempt += 1
        with self._lock:
            self._queue.appendleft(inv)
            self._queued.add(id(inv))

    def stop_starting(self, reason: str) -> None:
        self._no_start_reason = reason  # (one assignment: read under the lock by ``_next_queued``, ``_on_exit``)

    def _discard(self, worker: Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        for fileobj in (worker.sock, worker.pidfd):
            if fileobj is None:
                continue
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError, OSError):
                pass
        worker.close()

    def _cleanup(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
        self._let_workers_exit()
        for worker in list(self._workers):
            self._requeue_waiting(worker)
            worker.kill(worker.kill_reason or "shutdown")
        for worker in list(self._workers):
            self._on_exit(worker)
        with self._lock:
            queued = [inv for inv in self._queue if id(inv) in self._queued]
            self._queue.clear()
            self._queued.clear()
        for inv in queued:
            self._finish(inv, error=WrenpackError(f"{inv.label}: the local backend shut down before the call started"))
        self._report()
        if self._relay is not None:
            self._relay.stop()  # (what the workers' processes wrote before they ended is written by now)
        self._selector.close()
        close_quietly(self._wake_r, self._wake_w)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        _live.discard(self)


def _limits(inv: Invocation) -> tuple[Any, ...]:
    return (inv.memory_mb, inv.timeout_s, inv.ephemeral_storage_mb)


def _forked() -> None:
    """A fork of the driver is another driver: the backends it inherited, their workers
    and work folders are the parent's, which its exit must leave alone (``_stop_all``:
    a backend whose dispatcher had not started yet was cleaned up, its workers killed)."""
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: stop every local backend's workers and remove what they made."""
    for backend in list(_live):
        try:
            backend.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - best effort at exit
            log.debug("stopping a local backend at exit failed", exc_info=True)
