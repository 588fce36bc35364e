"""Jobs isolated from each other in a warm worker: the user's code never runs
in the process that holds the secrets, and code from one isolation domain never
runs where another domain's ran.

A warm worker (a local worker process, or a Lambda container, which serves
every job of its function) runs many jobs one after another. The process that
receives an event holds that job's secret: code running in it could read the
secret, or patch the handler so a later job's secret leaks or its results
lie under a valid MAC. So the worker is split::

    parent (secret holder)            zygote (never held a secret)
      receives the event                forked at start-up, before any event
      verifies func + args bytes        forks one child per domain on request
      seals and writes the outcome          |
      serves the child's requests       child (one domain's code, no secret)
        checkpoint get/put (sealed)       unpickles the function once
        sub-job secret derivation         runs the calls of that one domain
      watches the cancel marker           returns raw outcome bytes

* An **isolation domain** is what may share a child: the event's ``domain``
  with the function's content hash (``handler._domain_of``). The client makes
  the domain the HMAC of the function's hash under a random key of its own
  process (``wire.event.isolation_domain``), so calls of one function (same
  pickled bytes, closure included) from one driver process share a warm child,
  as a process pool's worker or a Lambda warm container is shared: its globals,
  imports and threads stay from call to call, whichever job (``remote()``,
  ``map``) the call belongs to. Nothing else shares it: another function,
  the same function from another driver process (another key; a fork gets a
  new one), or a call inside a call (launched from the child's process, with
  its key) always gets a new child. No other job can name the domain: the
  child gets neither the domain nor a secret, and job code never sees an
  event. An event without a domain (an older client) is its job's own domain.
* The **zygote** is forked before the worker sees any event (a local worker's
  start, Lambda's init), so nothing it forks ever had a secret in memory,
  not even freed memory. If it dies, a fresh interpreter is started in its
  place (``_spawn_zygote``): forking the parent again would copy its heap.
* A **child** runs the calls of one domain only; when a call of another
  domain comes, it is killed with everything it started, and the spare forked
  ahead takes its place (``request_spare``: the zygote forks it while the
  parent seals and replies, so a new domain's first call forks nothing).
* The child gets verified bytes (function, arguments, hand-off memfds) over a
  socketpair and sends back the outcome's pickle, never touching a secret:
  a checkpoint is sealed and opened by the parent (``ckpt_get``/``ckpt_put``),
  a job launched inside the call gets its secret from the parent
  (``derive``: the HMAC of the current call's job secret and the new job's id,
  so the child learns the sub-job's secret, never its own job's). Each request
  is answered for the call running now, whose job the parent holds the secret
  of. References to other jobs' calls among the arguments verify with the
  secrets the client put in this job's event (``ref_secrets``); those are given
  to the child, since its caller handed it those futures.
* The parent trusts nothing the child says beyond its own call's outcome: the
  child's messages are JSON heads and raw bytes (nothing from it is
  unpickled in the parent), and the outcome is sealed for the call's job,
  with that job's secret.
* On Lambda the kept child and every process it started are stopped (SIGSTOP)
  at the end of each invocation, before the runtime asks Lambda's Runtime API
  for the next event (which any process on loopback could ask for, and get
  another job's event with its secret), and continued at its domain's next
  call; a tree holding a connection to that API is ended instead (``freeze_child``).
* On Linux the parent is made non-dumpable (``PR_SET_DUMPABLE``), so a child
  of the same (non-root) user cannot read its memory through ``/proc/<pid>/mem``
  or ptrace. Root's capabilities would let it (a local worker run as root, in a
  container say; Lambda runs functions as a user without them): the zygote, and
  so every child, gives up those that read another process's memory
  (``drop_memory_reading_capabilities``), for good, for what it execs too.

Standard library and cloudpickle only: this runs in the worker.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from wrenpack.boot import NO_CWD
from wrenpack.errors import exc_text
from wrenpack.process_state import descendants, end_all  # (callers name it isolation.descendants)
from wrenpack.worker import streams
from wrenpack.worker.fds import close_all, close_quietly

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
_HEAD = struct.Struct("!IQ")
#: the most a child's message head may hold (the parent reads nothing larger)
_MAX_HEAD = 1 << 20


def prctl(option: int, value: int) -> bool:
    """Linux's ``prctl(option, value)`` through libc; False where it fails or is absent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


#: Linux capabilities that let a process read another's memory, which the zygote gives up for
#: its children (``drop_memory_reading_capabilities``): CAP_SYS_PTRACE (ptrace, /proc/<pid>/mem,
#: process_vm_readv of any process, non-dumpable ones too), CAP_SYS_RAWIO (/proc/kcore: all of
#: memory), CAP_SYS_MODULE (a kernel module reads anything), CAP_SYS_ADMIN, CAP_PERFMON and
#: CAP_BPF (tracing programs that read a process's memory as it runs), CAP_CHECKPOINT_RESTORE
#: (another process's /proc/<pid>/map_files). The numbers are Linux's.
MEMORY_READING_CAPABILITIES = {"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
                               "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_memory_reading_capabilities() -> bool:
    """Give up ``MEMORY_READING_CAPABILITIES`` in this process, and in what it forks or
    execs (the bounding set: root's exec would get them back otherwise). A job's code
    runs as the worker's user; as root it could otherwise read the memory of the
    parent that holds its job's secret, of the driver that holds every job's, and of
    another job's process, whatever their dumpable flag and Yama say (both yield to
    CAP_SYS_PTRACE). Without them, ``/proc/<pid>/mem`` and ptrace of a process with
    more capabilities fail (the kernel's capability subset rule), as they do for a
    user without capabilities, which is what Lambda runs functions as. True when
    none is left (a process without them, any non-root user's, has nothing to drop)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in MEMORY_READING_CAPABILITIES.values():
            if libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # (needs CAP_SETPCAP, which root has)
        head = _CapHeader(_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        if libc.capget(ctypes.byref(head), data) != 0:
            return False
        for cap in MEMORY_READING_CAPABILITIES.values():
            word, bit = data[cap // 32], ~(1 << (cap % 32)) & 0xFFFFFFFF
            word.effective &= bit
            word.permitted &= bit
            word.inheritable &= bit
        if libc.capset(ctypes.byref(head), data) != 0:
            return False
        return not any(libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1 for cap in MEMORY_READING_CAPABILITIES.values())
    except (OSError, AttributeError):  # (no libc capget: not Linux)
        return False


# -- framing: a JSON head, a blob, descriptors on the first byte ------------------
#: a message whose head and blob together are at most this many bytes is read in one system call
_ONE_READ = 1 << 16


#: compact JSON (one encoder: ``json.dumps`` with separators makes one per call)
_JSON = json.JSONEncoder(separators=(",", ":"))


def send(sock: socket.socket, head: dict[str, Any], blob: Any = b"", fds: list[int] | None = None,
         to_child: bool = False) -> None:
    """One message in one ``sendmsg`` (the peer wakes once, with all of it): the
    fixed part, the head and the blob, descriptors with its first byte. The head
    is JSON, or with ``to_child`` (the parent's messages to a job's child, which
    trusts its parent) ``marshal``, which costs a fraction to write and read.
    Nothing a child sends is read as anything but JSON."""
    data = marshal.dumps(head) if to_child else _JSON.encode(head).encode()
    view = memoryview(blob).cast("B") if blob else memoryview(b"")
    first = _HEAD.pack(len(data), view.nbytes) + data
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
    sent = sock.sendmsg([first, view] if view.nbytes else [first], anc)
    # (a socket with a timeout, or a signal, may take part of it: the rest follows)
    if sent < len(first):
        sock.sendall(first[sent:])
        sent = len(first)
    if sent - len(first) < view.nbytes:
        sock.sendall(view[sent - len(first):])


def _fds_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors a ``recvmsg`` brought (``SCM_RIGHTS``)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4])
    return fds


def _max_blob() -> int:
    """The most a message's blob can hold: this machine's memory (a peer announcing
    more is not sending a real one, and allocating it would fail as MemoryError or
    OverflowError rather than as the protocol break it is)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return sys.maxsize


_MAX_BLOB = _max_blob()


def _check_head_size(head_len: int, fds: list[int], blob_len: int = 0) -> None:
    """Refuse a message whose head would be larger than ``_MAX_HEAD``, or whose blob
    than ``_MAX_BLOB`` (its descriptors closed)."""
    if head_len > _MAX_HEAD:
        close_all(fds)
        raise ValueError("a message head is too large")
    if blob_len > _MAX_BLOB:
        close_all(fds)
        raise ValueError(f"a message announces {blob_len} bytes, more than this machine's memory")


def _head(loads: Callable[[bytes], Any], data: bytes, fds: list[int]) -> dict[str, Any]:
    """A message's head, which must be an object (else its descriptors are closed and it is refused)."""
    head = loads(data)
    if not isinstance(head, dict):
        close_all(fds)
        raise ValueError("a message head is not an object")
    return head


def _recv_exact(sock: socket.socket, n: int, fds: list[int] | None) -> bytearray:
    """``n`` bytes; ``fds``: the message's first read, whose descriptors are added to it."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if fds is not None and got == 0:
            k, anc, _flags, _addr = sock.recvmsg_into([view], socket.CMSG_SPACE(64 * 4))
            fds += _fds_in(anc)
        else:
            k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other end closed")
        got += k
    return buf


#: each reading thread's buffer for a message read whole (``recv(whole=True)``)
_reading = threading.local()


def _recv_whole(sock: socket.socket, loads: Callable[[bytes], Any]) -> tuple[dict[str, Any], bytearray, list[int]] | None:
    """A message read in one system call, when it is small and all there: (head,
    blob, descriptors); None when what came is only its start (``recv`` reads the
    rest). Used only between a parent and its job's child, where each side sends
    one message and then waits for the other's: bytes after the message can only
    be the peer breaking the protocol, and are refused as such (``ValueError``)."""
    view = getattr(_reading, "view", None)
    if view is None:
        view = _reading.view = memoryview(bytearray(_ONE_READ + _HEAD.size))
    fds: list[int] = []
    k, anc, _flags, _addr = sock.recvmsg_into([view], socket.CMSG_SPACE(64 * 4))
    fds += _fds_in(anc)
    if k == 0:
        close_all(fds)
        raise EOFError("the other end closed")
    if k >= _HEAD.size:
        head_len, blob_len = _HEAD.unpack_from(view)
        end = _HEAD.size + head_len + blob_len
        if k > end:
            close_all(fds)
            raise ValueError("bytes came after a message")
        if k == end:
            _check_head_size(head_len, fds)
            head = _head(loads, bytes(view[_HEAD.size:_HEAD.size + head_len]), fds)
            return head, bytearray(view[_HEAD.size + head_len:end]) if blob_len else bytearray(), fds
    # Only the message's start came (a large one, or a slow writer): the rest as before.
    return _recv_rest(sock, bytes(view[:k]), fds, loads)


def _recv_rest(sock: socket.socket, start: bytes, fds: list[int], loads: Callable[[bytes], Any]) -> tuple[dict[str, Any], bytearray, list[int]]:
    """A message whose first bytes (``start``) were read already."""
    if len(start) < _HEAD.size:
        start += bytes(_recv_exact(sock, _HEAD.size - len(start), None))
    head_len, blob_len = _HEAD.unpack_from(start)
    _check_head_size(head_len, fds, blob_len)
    body = start[_HEAD.size:]
    rest = head_len + blob_len - len(body)
    if rest < 0:
        close_all(fds)
        raise ValueError("bytes came after a message")
    if len(body) < head_len:
        body += bytes(_recv_exact(sock, head_len - len(body), None))
        rest = blob_len
    head = _head(loads, bytes(body[:head_len]), fds)
    got = body[head_len:]
    if rest <= 0:
        return head, bytearray(got), fds
    # The blob read into a buffer of its own, its start copied in (never the whole of it again).
    blob = bytearray(blob_len)
    view = memoryview(blob)
    view[:len(got)] = got
    at = len(got)
    while at < blob_len:
        k = sock.recv_into(view[at:], blob_len - at)
        if k == 0:
            close_all(fds)
            raise EOFError("the other end closed")
        at += k
    return head, blob, fds


def recv(sock: socket.socket, from_parent: bool = False, whole: bool = False) -> tuple[dict[str, Any], bytearray, list[int]]:
    """One message: (head, blob, descriptors that came with it). A small one takes
    two reads (the fixed part, then the rest), a larger one three (its blob is
    read into a buffer of its own, never copied). ``from_parent``: a job's child
    reading its parent's message (a ``marshal`` head: ``send(to_child=True)``).
    ``whole``: between a parent and its job's child (one message at a time each
    way), a small message is read in one system call (``_recv_whole``)."""
    loads = marshal.loads if from_parent else json.loads
    if whole:
        return _recv_whole(sock, loads)
    fds: list[int] = []
    fixed = _recv_exact(sock, _HEAD.size, fds)
    head_len, blob_len = _HEAD.unpack(fixed)
    _check_head_size(head_len, fds, blob_len)
    if head_len + blob_len <= _ONE_READ:
        rest = _recv_exact(sock, head_len + blob_len, None)
        head = _head(loads, bytes(rest[:head_len]), fds)
        blob = rest[head_len:] if blob_len else bytearray()
    else:
        head = _head(loads, bytes(_recv_exact(sock, head_len, None)), fds)
        blob = _recv_exact(sock, blob_len, None) if blob_len else bytearray()
    return head, blob, fds


# -- the zygote -----------------------------------------------------------------------
class _Zygote:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        #: the process itself, not its number: once it has exited and been collected, its pid
        #: may be any process's next (``keepers`` must not protect that one)
        self.pidfd = _pidfd(pid)
        self.sock = sock
        sock.settimeout(10.0)  # a zygote that stops answering is replaced, never waited on for ever
        self.lock = threading.Lock()


def _pidfd(pid: int) -> int | None:
    """A descriptor of process ``pid`` (``pidfd_open``), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _gone(pidfd: int | None) -> bool:
    """Whether the process of ``pidfd`` has exited (False when that cannot be told)."""
    if pidfd is None:
        return False
    try:
        return bool(select.select([pidfd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


_zygote: _Zygote | None = None
_prepared = False


def active() -> bool:
    """Calls run in per-domain children (``prepare`` was called in this process)."""
    return _prepared


def prepare() -> None:
    """Fork the zygote now, before this process sees any event; from here on
    calls run in per-domain children. Called by a local worker at start and by the
    handler module when Lambda loads it."""
    global _zygote, _prepared
    if _prepared or os.environ.get("WRENPACK_ZYGOTE") == "1":
        return
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return  # (not Linux: calls run in the handler's process, as before)
    _zygote = _fork_zygote()
    _prepared = True
    _learn_runtime_api()
    _import_what_a_respawn_needs()
    # Orphans of a job's processes stay below this process, where ``Child.kill`` finds them.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    # A child of the same user cannot read this process's memory (/proc/<pid>/mem, ptrace).
    prctl(_PR_SET_DUMPABLE, 0)


def _fork_zygote() -> _Zygote:
    mine, theirs = socket.socketpair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the zygote
        try:
            mine.close()
            _zygote_main(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return _Zygote(pid, mine)


#: ``subprocess``, imported by ``prepare`` (``_import_what_a_respawn_needs``)
_subprocess: Any = None


def _import_what_a_respawn_needs() -> None:
    """Import now, before any event, what starting a fresh zygote needs (``_spawn_zygote``).

    This process holds the secrets; after a job's code has run, nothing may be imported
    into it: an import finds the first file of that name on ``sys.path``, and job code
    can write into folders there (the driver's folder or cwd, first on a local worker's
    path; on Lambda, a runtime archive's tree in /tmp). A job's code can kill the zygote
    (same user), and replacing it imported ``subprocess`` for the first time."""
    global _subprocess
    import subprocess

    _subprocess = subprocess


def _spawn_zygote() -> _Zygote:
    """A zygote from a fresh interpreter: forking this process would copy the
    secrets it has held into it."""
    subprocess = _subprocess
    if subprocess is None:  # (not prepared: no job's code has run in this process)
        import subprocess

    archive = _runtime_archive()
    problem = archive.tampered() if archive is not None else None
    if problem is not None:  # (``_check_runtime_tree`` extracts it again before the next domain's call)
        raise ChildGone(f"the runtime tree in /tmp was changed by a job's code ({problem}): no process is started "
                        "from it", died=False)
    mine, theirs = socket.socketpair()
    code = (NO_CWD + "import json;c=json.loads(sys.argv[1]);sys.path[:]=c['paths'];"
            "import socket;from wrenpack.worker.isolation import _zygote_main;"
            "from wrenpack.worker import handler;_zygote_main(socket.socket(fileno=c['fd']))")
    config = {"fd": theirs.fileno(), "paths": [p for p in sys.path]}
    flags = ["-B"] if sys.dont_write_bytecode else []  # (as this process: ``runtime_archive.ensure_runtime``)
    proc = subprocess.Popen([sys.executable, *flags, "-c", code, json.dumps(config)], pass_fds=[theirs.fileno()],
                            stdin=subprocess.DEVNULL, env=dict(os.environ, WRENPACK_ZYGOTE="1"))
    theirs.close()
    return _Zygote(proc.pid, mine)


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: a child inherits no socket, pipe or file of the parent's."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    close_all(fd for fd in fds if fd > 2 and fd not in keep)


def _zygote_main(sock: socket.socket) -> None:  # pragma: no cover - runs in the zygote
    """Fork a child for each request; nothing else. Its children are reaped by the kernel."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.environ.pop("WRENPACK_ZYGOTE", None)
    # Nothing of another job's may attach to it, or to the processes it forks before
    # they have a job of their own (``_child_main`` makes a job's process dumpable).
    prctl(_PR_SET_DUMPABLE, 0)
    # ... nor read anybody's memory with root's capabilities (a worker run as root)
    if not drop_memory_reading_capabilities() and os.geteuid() == 0:
        log.warning("could not give up the capabilities that read other processes' memory: a job's code "
                    "running as root here could read the memory of the worker that holds its job's secret")
    worker = os.getppid()
    _close_fds_except({sock.fileno()})
    _forget_process_files()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import gc

    # What the zygote holds stays out of the collector's passes in its forks: a pass
    # would write to every object's page, copying the whole heap into each child.
    gc.collect()
    gc.freeze()
    while True:
        try:
            _head, _blob, fds = recv(sock)
        except (EOFError, OSError):
            os._exit(0)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                _fork_child(sock, fds[0], worker)
            finally:
                os._exit(0)
        os.close(fds[0])


def _fork_child(sock: socket.socket, fd: int, worker: int) -> None:  # pragma: no cover - the zygote's fork
    """Fork the job's child and exit: the child is orphaned to the worker, the
    subreaper, whose child it then is (the worker reads its exit status; a
    crash of the call is the invocation's crash, as before)."""
    me = os.getpid()
    pid = os.fork()
    if pid:
        try:
            send(sock, {"pid": pid})
        finally:
            os._exit(0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sock.close()
    _close_fds_except({fd})
    deadline = time.monotonic() + 5.0
    while os.getppid() == me and time.monotonic() < deadline:
        time.sleep(0.0002)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker:
        os._exit(0)  # the worker is gone (or this was not orphaned to it)
    _child_main(socket.socket(fileno=fd))


def _forget_process_files() -> None:
    """Kept descriptors of another process's /proc files, now closed."""
    try:
        from wrenpack.worker import memory

        memory._own.clear()
    except Exception:  # noqa: BLE001
        pass


# -- the parent's side of a child ------------------------------------------------------
class ChildGone(Exception):
    """The job's child died (``died``) or broke the protocol while it ran a call."""

    def __init__(self, message: str, died: bool = True) -> None:
        super().__init__(message)
        self.died = died


class Child:
    """A forked child running the calls of one isolation domain (held by the parent)."""

    def __init__(self, domain: str) -> None:
        #: the calls it may run (``child_for``)
        self.domain = domain
        self.funcs: set[str] = set()
        #: the per-call environment (``handler._CALL_ENV``) it was given last: sent again only when it changes
        self.env: dict[str, str] | None = None
        #: its socket and pidfd, polled while it runs a call (``run_call``)
        self.poller: Any = None
        #: (and the inode of its own end of the socketpair: ``_api_holders``)
        self.pid, self.sock, self.peer_inode = _take_spare()
        self.status: int | None = None
        #: its last call left processes behind, by its own report (a false "no" spares only its own job's)
        self.left_processes = False
        #: its last call started processes (ended or not), by its own report: one the kernel
        #: stopped at the memory limit is the call's breach (the worker's verdict looks then)
        self.started_processes = False
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pass
        #: its processes are stopped (SIGSTOP) between two invocations on Lambda (``freeze_child``)
        self.frozen = False
        #: it was sent a call (until then it has run no job's code: nothing of it to stop or check)
        self.used = False

    def exit_status(self, wait_s: float = 1.0) -> int | None:
        """The child's wait status once it has exited (it is this process's child:
        orphaned to it at its start), or None if it has not by ``wait_s``."""
        if self.status is not None:
            return self.status
        deadline = time.monotonic() + wait_s
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                self.status = status
                return status
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)

    def kill(self) -> set[int]:
        """End the child and every process it started, without waiting for them to exit
        (what was killed is returned: ``freeze_child`` waits for those).

        The child first: once it has SIGKILL pending it runs no more of its code, and
        no fork of its completes (the kernel refuses a fork to a process with a fatal
        signal pending). Then what it started, looked for until nothing new turns up:
        a process forked just before is a child of a process killed already, or,
        once that one has exited, of this process (their subreaper); every process
        killed forks nothing more. So when this returns, nothing of the job's runs
        its code any more; they are reaped later (``_reap``)."""
        _kill(None, self.pidfd, self.pid)
        killed = {self.pid}
        me = os.getpid()
        for _ in range(100):
            # Each look walks the whole tree, through the processes killed already: one
            # killed after its children were read may have finished a fork in between
            # (a fork completes unless the kill came first), and until it has exited that
            # new process is its child, reachable through it alone. A process is killed
            # as soon as it is found, so the window for such a fork is one read wide.
            stack = list(_children_of(self.pid) | (_children_of(me) - keepers()))
            seen: set[int] = set()
            new = False
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                if pid not in killed:
                    _kill(pid, None, pid)
                    killed.add(pid)
                    new = True
                stack.extend(_children_of(pid))
            if not new:
                break
        self.exit_status(0.0)
        try:
            self.sock.close()
        except OSError:
            pass
        close_quietly(self.pidfd)
        self.pidfd = None
        return killed

    def alive(self) -> bool:
        if self.sock.fileno() < 0:
            return False
        if self.pidfd is not None:
            return not select.select([self.pidfd], [], [], 0)[0]  # readable: it exited
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


#: the parent's end of a process asked of the zygote and not yet handed a job (one at most)
_spare: socket.socket | None = None
#: the inode of the spare's end of its socketpair (the one socket a job's process is given)
_spare_peer_inode = 0
#: its pid, once the zygote said (it is orphaned to this process only after saying)
_spare_pid: int | None = None
#: and a descriptor of that process (``_pidfd``), opened when the zygote said: it cannot have
#: been collected by then (its pid is held until this process collects it)
_spare_pidfd: int | None = None


def _forget_spare_pid() -> int | None:
    """The spare's pid, forgotten here (with its descriptor): it is being taken or dropped."""
    global _spare_pid, _spare_pidfd
    pid, fd = _spare_pid, _spare_pidfd
    _spare_pid, _spare_pidfd = None, None
    close_quietly(fd)
    return pid


def _poll_spare() -> None:
    """Read the zygote's answer about the spare process if it has come (no wait)."""
    global _spare_pid, _spare_pidfd
    if _spare is None or _spare_pid is not None or _zygote is None:
        return
    sock = _zygote.sock
    with _zygote.lock:
        try:
            # (select, not a non-blocking recv: with a timeout set on the socket,
            # Python waits for data after the kernel says there is none)
            if not select.select([sock], [], [], 0)[0] or not sock.recv(1, socket.MSG_PEEK):
                return
        except OSError:
            return
        try:
            head, _blob, extra = recv(sock)
        except (OSError, EOFError, ValueError):
            return
    for fd in extra:
        os.close(fd)
    try:
        _spare_pid = int(head["pid"])
    except (KeyError, ValueError, TypeError):
        return
    _spare_pidfd = _pidfd(_spare_pid)


#: set by a local worker, which asks for the spare after the reply has gone
#: (``local_main.serve``): asking wakes the zygote, whose fork then competes with the reply
spare_after_reply = False


def request_spare() -> None:
    """Have a process ready for the next domain: forked by the zygote while this
    process seals and replies (a new domain's first call then forks nothing).
    Nothing to do while the spare asked for before is not taken."""
    if not _prepared:
        return
    try:
        _request_spare()
    except (OSError, ChildGone):
        pass


def _request_spare() -> None:
    """Ask the zygote for a process for the next job (its pid is read when it is taken)."""
    global _spare, _zygote, _spare_peer_inode
    if _spare is not None:
        return
    if _zygote is None:
        _zygote = _replace_zygote(None)
    mine, theirs = socket.socketpair()
    try:
        peer = os.fstat(theirs.fileno()).st_ino
        with _zygote.lock:
            send(_zygote.sock, {"fork": True}, fds=[theirs.fileno()])
    except OSError:
        mine.close()
        return
    finally:
        theirs.close()
    _spare, _spare_peer_inode = mine, peer


def _take_spare() -> tuple[int, socket.socket, int]:
    """A process for a new job: the one asked for before, else a new one (a
    fresh zygote first if the zygote is gone): (its pid, this end of its socketpair,
    the inode of its end)."""
    global _spare, _zygote
    for attempt in range(2):
        if attempt:
            _zygote = _replace_zygote(_zygote)
        _request_spare()
        mine, _spare = _spare, None
        peer = _spare_peer_inode
        known = _forget_spare_pid()
        if mine is None or _zygote is None:
            continue
        if known is not None:
            return known, mine, peer
        try:
            with _zygote.lock:
                head, _blob, extra = recv(_zygote.sock)
            for fd in extra:
                os.close(fd)
            return int(head["pid"]), mine, peer
        except (OSError, EOFError, KeyError, ValueError, TypeError):
            mine.close()
    raise ChildGone("could not start a process for the job's code")


def _children_of(pid: int) -> set[int]:
    """``pid``'s children (every thread's), from /proc: no scan of every process."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def _kill(pid: int | None, pidfd: int | None, fallback: int) -> None:
    try:
        if pidfd is not None and hasattr(signal, "pidfd_send_signal"):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid if pid is not None else fallback, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _replace_zygote(old: _Zygote | None) -> _Zygote:
    global _spare, _zygote
    if _spare is not None:
        _spare.close()
        _spare = None
        _forget_spare_pid()
    if old is not None:
        try:
            old.sock.close()
        except OSError:
            pass
        _kill(old.pid, old.pidfd, old.pid)  # (by its descriptor: its pid may be another's by now)
        close_quietly(old.pidfd)
        old.pidfd = None
    log.info("the worker's zygote is gone; starting a fresh one")
    _zygote = _spawn_zygote()
    return _zygote


_child: Child | None = None


#: seconds spent ending a job's process and taking the next since ``take_start_cost``
_start_cost = 0.0


def take_start_cost() -> float:
    """What changing jobs cost since the last look (a local worker leaves it out of the
    call's time it reports, which the scheduler learns a function's call time from)."""
    global _start_cost
    cost, _start_cost = _start_cost, 0.0
    return cost


def current_child() -> Child | None:
    return _child


def call_started_processes() -> bool:
    """Whether the last call's child says the call started processes (its
    descendants' usage changed): the worker's own ``RUSAGE_CHILDREN`` does not see
    them, since they are the child's."""
    child = _child
    return child is not None and child.started_processes


def call_left_processes() -> bool:
    """Whether the last call's child says processes it started are still there."""
    child = _child
    return child is not None and child.left_processes


def child_for(domain: str) -> Child:
    """The child for the calls of ``domain`` (the event's isolation domain and
    the function: ``handler._domain_of``): the running one if it serves that
    domain, else a new one (the old one, and all it started, ended first)."""
    global _child, _start_cost
    child = _child
    if child is not None and child.domain == domain and child.alive():
        if child.frozen:
            _thaw(child)
        return child
    t0 = time.perf_counter()
    if child is not None:
        end_child()
    _check_runtime_tree()
    for _attempt in range(2):
        child = Child(domain)
        if child.alive():
            _child = child
            _start_cost += time.perf_counter() - t0
            return child
        # Its process is gone (a job's code may kill what it can reach): a fresh zygote.
        child.kill()
        _replace_zygote(_zygote)
    raise ChildGone("could not start a process for the job's code", died=False)


def _runtime_archive() -> Any:
    """``wrenpack.worker.runtime_archive`` if this worker runs from an archived runtime
    (its module is loaded then: it is the handler), else None. Never imported here."""
    return sys.modules.get("wrenpack.worker.runtime_archive")


def _check_runtime_tree() -> None:
    """Before a new domain's process takes its first call (the previous domain's
    processes are killed by now): the archived runtime's tree in /tmp must be as this
    process extracted it, since job code can write there and every later domain's
    process imports from it. If it was changed, nothing runs from it: every process
    below this one (the spare and the zygote, which may have loaded from the changed
    tree, and anything they started) is killed, the archive is extracted again, and a
    fresh zygote is started from the new tree. If that fails, the call fails (``ChildGone``)."""
    archive = _runtime_archive()
    if archive is None:
        return
    archive.guard_parent()  # (from the first job's call on, nothing of the tree is imported here)
    problem = archive.tampered()
    if problem is None:
        return
    log.warning("the runtime tree in /tmp was changed by a job's code (%s): killing the worker's job "
                "processes and extracting the runtime archive again", problem)
    _kill_everything_below()
    try:
        archive.renew()
    except Exception as exc:  # noqa: BLE001 - the call fails with what happened, in one line
        raise ChildGone(f"the runtime tree in /tmp was changed by an earlier job's code ({problem}) and extracting "
                        f"the runtime archive again failed ({exc}); the call did not run", died=False) from None
    _replace_zygote(_zygote)


def _kill_everything_below() -> None:
    """Kill every process below this one (it is their subreaper) and wait until none runs."""
    me = os.getpid()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = descendants(me)
        if not pids:
            break
        for pid in pids:
            _kill(pid, None, pid)
        time.sleep(0.002)
    _reap()


def end_child() -> None:
    """End the current child (a call of it went wrong, or its job changed)."""
    global _child
    child, _child = _child, None
    if child is not None:
        child.kill()
        _reap()


# -- between two invocations on Lambda: the kept child's processes stopped ----------------------
# On Lambda the kept child of a domain waits between invocations, and the Runtime API
# that hands out the next event answers whoever asks on loopback: a request a job's
# code left waiting on ``/runtime/invocation/next`` may get the next invocation, another
# job's event with its secret, before the runtime's own request does. So at the end of
# each invocation, before the handler returns to the runtime (which then asks for the
# next event), every process of the kept child's tree is stopped (SIGSTOP: a stopped
# process reads nothing, sends nothing and opens no connection) until its domain's next
# call continues it (``_thaw``); another domain's call ends it, as before. Lambda
# itself freezes the sandbox between invocations; this does it to a job's processes
# before the next event is asked for.
#
# An event a stopped process's request gets is then never read: that invocation gets no
# answer, times out, and Lambda resets the execution environment, which ends the stopped
# process with the rest. To spare the next job that, a tree holding a connection to the
# Runtime API when it is stopped (or whose connections cannot be checked) is ended at
# once (the domain's next call gets a fresh child, as a new domain does), and a warning
# says so: its connections are closed before the runtime asks for the next event.

#: the Runtime API's (host, port) this worker is served by (``prepare``, on Lambda only), else None
_runtime_api: tuple[str, int] | None = None
#: the addresses the Runtime API's host names (packed; IPv4 ones as 4 bytes)
_api_addrs: frozenset[bytes] = frozenset()
#: the longest wait for the child's processes to stop, or to exit once ended
FREEZE_WAIT_S = 1.0
#: seconds spent stopping and checking (``freeze_child``) and continuing (``_thaw``) since ``take_freeze_cost``
_freeze_cost = 0.0


def take_freeze_cost() -> float:
    """What stopping and continuing the kept child cost since the last look (measurements)."""
    global _freeze_cost
    cost, _freeze_cost = _freeze_cost, 0.0
    return cost


def _learn_runtime_api() -> None:
    """Read ``AWS_LAMBDA_RUNTIME_API`` (host:port) once, at ``prepare``, on Lambda only (a local
    worker has no Runtime API: its handler returns to the worker, not to a runtime)."""
    global _runtime_api, _api_addrs
    api = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not api or os.environ.get("WRENPACK_LOCAL_WORKER") == "1":
        return
    host, _, port = api.rpartition(":")
    host = host.strip("[]")
    try:
        _runtime_api = (host, int(port))
    except ValueError:
        _runtime_api = (api, -1)  # (not host:port: every check fails, and a child holding a socket is ended)
        return
    addrs: set[bytes] = set()
    try:
        for family, _type, _proto, _name, addr in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            addrs.add(_plain(socket.inet_pton(family, addr[0])))
    except (OSError, UnicodeError, ValueError):
        pass
    _api_addrs = frozenset(addrs)


def _plain(packed: bytes) -> bytes:
    """An address, an IPv4-mapped IPv6 one as its IPv4 address."""
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        return packed[12:]
    return packed


def _to_api(local: bytes, remote: bytes, port: int) -> bool:
    """Whether a TCP connection from ``local`` to ``remote``:``port`` goes to the Runtime API:
    its port at its host's address, at a loopback address, or at the connection's own local
    address (this machine, through another of its addresses)."""
    if _runtime_api is None or port != _runtime_api[1]:
        return False
    local, remote = _plain(local), _plain(remote)
    return (remote in _api_addrs or remote == local or (len(remote) == 4 and remote[0] == 127)
            or remote == b"\0" * 15 + b"\1")


#: netlink's socket diagnostics (``sock_diag(7)``): the kernel filters the TCP table by port. The
#: older request (``TCPDIAG_GETSOCK``) walks the table once for IPv4 and IPv6 together, and took
#: a quarter of the time of the two ``SOCK_DIAG_BY_FAMILY`` requests it replaces (on a machine
#: with a large table: 1.8 ms against 6.4)
_NETLINK_INET_DIAG, _TCPDIAG_GETSOCK, _NLMSG_ERROR, _NLMSG_DONE = 4, 18, 2, 3
#: every TCP state but TIME_WAIT (no process holds one) and LISTEN
_DIAG_STATES = 0xFFF & ~(1 << 6) & ~(1 << 10)
_netlink_works = True


def _api_connections() -> set[int]:
    """The inodes of the TCP sockets (of this network namespace) connected to the Runtime
    API. From netlink's socket diagnostics, where the kernel keeps only those to its port;
    else from /proc/net/tcp{,6}. Raises ``OSError`` when neither can be read."""
    global _netlink_works
    if _netlink_works:
        try:
            return _diag()
        except (OSError, ValueError, struct.error):
            _netlink_works = False  # (not allowed here: /proc from now on)
    return _proc_net("/proc/net/tcp") | _proc_net("/proc/net/tcp6")


def _diag() -> set[int]:
    assert _runtime_api is not None
    port = _runtime_api[1]
    if not 0 < port < 65536:
        raise ValueError("no port")
    # A filter run by the kernel on each socket: its remote port >= port, then <= port (a failed
    # test jumps past the end, which rejects the socket).
    code = struct.pack("=BBHBBHBBHBBH", 4, 8, 20, 0, 0, port, 5, 8, 12, 0, 0, port)
    # (struct inet_diag_req: family, lengths, extensions, the socket id, states, dbs; then the filter)
    req = struct.pack("=BBBB", socket.AF_INET, 0, 0, 0) + bytes(48) + struct.pack("=II", _DIAG_STATES, 0)
    body = req + struct.pack("=HH", 4 + len(code), 1) + code
    found: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_INET_DIAG) as nl:
        nl.settimeout(FREEZE_WAIT_S)
        nl.sendto(struct.pack("=IHHII", 16 + len(body), _TCPDIAG_GETSOCK, 0x301, 1, 0) + body, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            if not data:
                raise OSError("netlink closed")
            at = 0
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", data, at + 16)[0], "netlink socket diagnostics refused")
                if kind == _TCPDIAG_GETSOCK and length >= 16 + 72:
                    msg = at + 16
                    size = 4 if data[msg] == socket.AF_INET else 16
                    inode = struct.unpack_from("=I", data, msg + 68)[0]
                    dport = struct.unpack_from("!H", data, msg + 6)[0]
                    if inode and _to_api(data[msg + 8:msg + 8 + size], data[msg + 24:msg + 24 + size], dport):
                        found.add(inode)
                if length < 16:
                    raise OSError("a malformed netlink message")
                at += (length + 3) & ~3


def _proc_net(name: str) -> set[int]:
    """``_api_connections`` from one of /proc/net/tcp{,6} (absent tcp6: no IPv6 here)."""
    try:
        with open(name, "rb") as f:
            lines = f.read().decode("ascii").splitlines()[1:]
    except FileNotFoundError:
        if name.endswith("6"):
            return set()
        raise
    found: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[9] == "0":
            continue
        local, _, _ = fields[1].partition(":")
        remote, _, port = fields[2].partition(":")
        if _to_api(_unhex(local), _unhex(remote), int(port, 16)):
            found.add(int(fields[9]))
    return found


def _unhex(text: str) -> bytes:
    """An address as /proc/net/tcp{,6} writes it (each 32-bit word in this machine's byte order)."""
    return b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))


def _sockets_of(pid: int | str) -> set[int]:
    """The socket inodes process ``pid`` holds (``/proc/PID/fd``); none if it is gone. Raises
    ``OSError`` when a process that is there cannot be read."""
    table = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(table)
    except FileNotFoundError:
        return set()
    out: set[int] = set()
    for fd in fds:
        try:
            link = os.readlink(f"{table}/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _tree(child: Child) -> set[int]:
    """The child and every process below it, and the orphans of its processes (this
    process is their subreaper): every process of the domain. Never the zygote or the spare."""
    me = os.getpid()
    mine = _children_of(me)  # (before ``keepers``: the spare is orphaned here only after the zygote said which)
    keep = keepers() - {child.pid}
    out: set[int] = set()
    stack = [child.pid, *(mine - keep)]
    while stack:
        pid = stack.pop()
        if pid in out or pid in keep:
            continue
        out.add(pid)
        stack.extend(_children_of(pid))
    return out


def _signal(child: Child, pid: int, sig: int) -> None:
    try:
        if pid == child.pid and child.pidfd is not None and hasattr(signal, "pidfd_send_signal"):
            signal.pidfd_send_signal(child.pidfd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _threads_in(pid: int, states: bytes) -> bool:
    """Whether every thread of ``pid`` is in one of ``states`` (or the process is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        at = stat.rfind(b")") + 2
        if 1 < at < len(stat) and stat[at] not in states:
            return False
    return True


#: a thread that runs no code and makes no system call: stopped, stopped by a tracer, or dead
_STILL = b"TtZXx"
_DEAD = b"ZXx"


def _stop_tree(child: Child, deadline: float) -> tuple[set[int], str | None]:
    """Stop every process of the child's tree: (its processes, a problem or None). Each round
    stops what it finds and waits until every thread of those is stopped (one in the middle
    of a fork finishes it first), then looks again, until no new process turns up."""
    stopped: set[int] = set()
    while True:
        new = _tree(child) - stopped
        if not new:
            return stopped, None
        for pid in new:
            _signal(child, pid, signal.SIGSTOP)
        stopped |= new
        pause = 0.00005
        while new:
            new = {pid for pid in new if not _threads_in(pid, _STILL)}
            if not new:
                break
            if time.monotonic() > deadline:
                return stopped, f"its process {min(new)} did not stop within {FREEZE_WAIT_S:g} s"
            time.sleep(pause)
            pause = min(pause * 2, 0.005)


def _api_holders(child: Child, tree: set[int]) -> tuple[str | None, set[int]]:
    """Whether a process of ``tree`` (stopped) holds a connection to the Runtime API: (what,
    or None; the connections). Only sockets count that are not this process's own (the
    runtime's connection, its end of a socketpair) nor the child's end of its socketpair;
    a tree that holds none (most calls) is not looked up in the kernel's TCP table."""
    held = {pid: inodes for pid in sorted(tree) if (inodes := _sockets_of(pid) - {child.peer_inode})}
    if held:  # (this process's own are left out only now: a tree that holds no other socket needs no look)
        own = _sockets_of("self")
        held = {pid: inodes - own for pid, inodes in held.items() if inodes - own}
    if not held:
        return None, set()
    conns = _api_connections()
    theirs = {pid: inodes & conns for pid, inodes in held.items() if inodes & conns}
    if not theirs:
        return None, set()
    pids = ", ".join(str(pid) for pid in theirs)
    found = set().union(*theirs.values())
    return f"its process(es) {pids} held {len(found)} connection(s) to the Lambda Runtime API", found


def freeze_child(label: str = "the call") -> None:
    """At the end of an invocation on Lambda (``handler``, before it returns to the runtime):
    stop the kept child's processes until the domain's next call (``_thaw``), or end them
    all when one holds a connection to the Runtime API or that cannot be checked (a warning
    says which). Nothing to do off Lambda, without a child, or when it is stopped already."""
    global _freeze_cost
    child = _child
    if _runtime_api is None or child is None or child.frozen or not child.used:
        return
    t0 = time.perf_counter()
    deadline = time.monotonic() + FREEZE_WAIT_S
    tree: set[int] = set()
    conns: set[int] = set()
    try:
        tree, problem = _stop_tree(child, deadline)
        if problem is None:
            problem, conns = _api_holders(child, tree)
    except Exception as exc:  # noqa: BLE001 - what cannot be checked is ended
        problem = f"its processes or connections could not be checked ({type(exc).__name__}: {exc})"
    child.frozen = True
    if problem is not None:
        log.warning("%s: the job's process kept for its function's next call was ended with all it started, "
                    "since %s (its function's next call starts in a fresh process)", label, problem)
        _end_and_wait(tree, conns, time.monotonic() + FREEZE_WAIT_S)
    _freeze_cost += time.perf_counter() - t0


def _end_and_wait(tree: set[int], conns: set[int], deadline: float) -> None:
    """End the child and its tree, and wait until they have exited and the connections to the
    Runtime API among ``conns`` are closed: before the runtime asks for the next event."""
    global _child
    child, _child = _child, None
    killed = set(tree)
    if child is not None:
        killed |= child.kill()
    for pid in tree:
        _kill(pid, None, pid)
    left: set[int] = set()
    while True:
        _reap()
        left = {pid for pid in killed if not _threads_in(pid, _DEAD)}
        if not left and not _still_open(conns):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.001)
    log.warning("after ending the job's processes, %s", f"processes {sorted(left)} of them had not exited" if left
                else "a connection to the Lambda Runtime API was still open")


def _still_open(conns: set[int]) -> bool:
    """Whether one of the connections ``conns`` is still held (by a process, or a message)."""
    if not conns:
        return False
    try:
        return bool(conns & _api_connections())
    except (OSError, ValueError, IndexError):
        return False


def _thaw(child: Child) -> None:
    """Continue the stopped processes of ``child``'s tree (its domain's next call has come)."""
    global _freeze_cost
    t0 = time.perf_counter()
    for pid in _tree(child):
        _signal(child, pid, signal.SIGCONT)
    child.frozen = False
    _freeze_cost += time.perf_counter() - t0

def protected() -> set[int]:
    """``keepers`` and every process below the zygote (a fork it is making):
    what ending a call's processes must leave alone. Scans /proc: only when a
    call left processes."""
    keep = keepers()
    if _zygote is not None and _zygote.pid in keep:  # (a zygote that is gone protects nothing below its old pid)
        keep.update(descendants(_zygote.pid))
    return keep


def keepers() -> set[int]:
    """The processes that outlive a call: the zygote, the next job's process
    (once the zygote said which) and the job's child. Call it after listing the
    processes to judge: the next job's process is orphaned to this one only
    after the zygote said which it is."""
    _poll_spare()
    # Only those still running: one that has exited and been collected leaves a pid that a
    # job's process may take next (pids wrap), and protecting that one would let it outlive
    # its job, into the next job's calls.
    out = {_spare_pid} if _spare_pid is not None and not _gone(_spare_pidfd) else set()
    if _zygote is not None and not _gone(_zygote.pidfd):
        out.add(_zygote.pid)
    if _child is not None and not _gone(_child.pidfd):
        out.add(_child.pid)
    return out


#: set when the worker stops (its driver is gone): a child's death is then no crash to mirror
stopping = False


def stop() -> None:
    """The worker is stopping on purpose: end the zygote first, so it forks nothing more,
    and let the child's coming death be no crash of the worker's (``die_like``)."""
    global stopping
    stopping = True
    zygote = _zygote
    if zygote is not None:
        _kill(zygote.pid, zygote.pidfd, zygote.pid)


def die_like(status: int | None) -> None:
    """End this process as the job's child ended (its wait status): a crash in
    the call's code is the invocation's crash, as when it ran in this process
    (the local backend retries it, or names the signal; Lambda restarts the runtime)."""
    while stopping:  # the worker is being stopped (``stop``): that ends this process
        time.sleep(1.0)
    if status is None or os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status) if status is not None else signal.SIGKILL
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        time.sleep(1.0)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _reap() -> None:
    zpid = _zygote.pid if _zygote is not None else None
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == zpid:
            log.info("the worker's zygote exited")


# -- one call, parent side ---------------------------------------------------------
def run_call(child: Child, head: dict[str, Any], blob: bytes, fds: list[int], serve: Callable[[dict[str, Any], bytearray], tuple[dict[str, Any], Any]],
             wait_until: float | None, cancelled: Callable[[], bool] | None = None) -> tuple[dict[str, Any], bytearray, list[int]]:
    """Send one call to ``child`` and serve its requests until it reports the
    outcome: (head, outcome bytes, descriptors). ``serve(head, blob)`` answers a
    request (checkpoint, derivation). ``wait_until``: give up (``ChildGone``) if
    nothing has come by then; ``cancelled``: polled while waiting."""
    child.used = True
    try:
        send(child.sock, head, blob, fds, to_child=True)
    except OSError as exc:
        raise ChildGone(f"the call's process died ({exc})") from None
    poller = child.poller
    if poller is None:
        poller = child.poller = select.poll()  # (kept for the child's next calls)
        poller.register(child.sock, select.POLLIN)
        if child.pidfd is not None:
            poller.register(child.pidfd, select.POLLIN)
    while True:
        timeout = 0.25
        if wait_until is not None:
            timeout = min(timeout, max(0.0, wait_until - time.time()))
        ready = poller.poll(int(timeout * 1000) + 1)
        if cancelled is not None and cancelled():
            raise Cancelled()
        if not ready:
            if wait_until is not None and time.time() > wait_until:
                raise ChildGone("the call's process did not answer by its deadline", died=False)
            continue
        if not any(fd == child.sock.fileno() for fd, _ in ready):
            # Only the pidfd: the child exited; a last message may still be in the socket.
            poller.unregister(child.pidfd)
            child.poller = None
            try:
                child.sock.setblocking(False)
                peek = child.sock.recv(1, socket.MSG_PEEK)
            except OSError:
                peek = b""
            finally:
                child.sock.setblocking(True)
            if not peek:
                raise ChildGone("the call's process died")
        try:
            got, data, got_fds = recv(child.sock, whole=True)
        except (EOFError, OSError) as exc:
            raise ChildGone(f"the call's process died ({exc})") from None
        except (ValueError, struct.error) as exc:
            raise ChildGone(f"the call's process broke the worker's protocol ({exc}): did its code write to "
                            "a descriptor it inherited?", died=False) from None
        kind = got.get("t")
        if kind == "done":
            child.left_processes = got.get("children") is not False
            # (a false "no" only hides its own call's processes from its own verdict)
            child.started_processes = child.left_processes or got.get("started") is not False
        if kind not in ("done", "ckpt_get", "ckpt_put", "derive"):
            for fd in got_fds:
                os.close(fd)
            raise ChildGone(f"the call's process sent a message of kind {kind!r}", died=False)
        if kind == "done":
            return got, data, got_fds
        for fd in got_fds:
            os.close(fd)
        try:
            answer, answer_blob = serve(got, data)
        except Exception as exc:  # noqa: BLE001 - reported to the child, which raises it in the call
            answer, answer_blob = {"error": f"{type(exc).__name__}: {exc_text(exc)}", "kind": type(exc).__name__}, b""
        try:
            send(child.sock, answer, answer_blob, to_child=True)
        except OSError:
            raise ChildGone("the call's process died") from None


class Cancelled(Exception):
    """The call's cancel marker appeared while it ran."""


# -- the child ----------------------------------------------------------------------
class _Rpc:
    """The child's way to ask the parent for what needs the job's secret."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def ask(self, head: dict[str, Any], blob: Any = b"") -> tuple[dict[str, Any], bytearray]:
        with self.lock:
            send(self.sock, head, blob)
            answer, data, fds = recv(self.sock, from_parent=True, whole=True)
        for fd in fds:
            os.close(fd)
        if "error" in answer:
            from wrenpack import errors

            cls = getattr(errors, str(answer.get("kind")), None)
            if not (isinstance(cls, type) and issubclass(cls, errors.WrenpackError)):
                cls = errors.WrenpackError
            raise cls(str(answer["error"]))
        return answer, data


#: runs one call in a child: ``handler.run_in_child`` (set by the handler module, which imports this one)
_runner: Callable[..., tuple[dict[str, Any], Any, list[int]]] | None = None


#: runs the call path once on nothing in a process waiting for its first call (``handler.warm_up``)
_warm_up: Callable[[], None] | None = None
#: runs in a job's process after each reply has gone, while it waits for its next call (``handler.after_reply``)
_after_reply: Callable[[], None] | None = None


def set_runner(runner: Callable[..., tuple[dict[str, Any], Any, list[int]]], warm_up: Callable[[], None] | None = None,
               after_reply: Callable[[], None] | None = None) -> None:
    global _runner, _warm_up, _after_reply
    _runner = runner
    _warm_up = warm_up
    _after_reply = after_reply


def _has_children() -> bool:
    """Whether processes a call started are still there (below this one: it is
    their subreaper); reaps those that exited."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _call_left_processes() -> bool:
    """Whether processes the call started are still there (``_has_children``). The
    workers of a local backend this process runs are not the call's: they run the
    calls of a job the call launched (its future returned, say), which run on after
    it while this process lasts. Told that processes were left, the
    worker ended every process below this one, those workers too, and the job's
    running call died of SIGKILL (its retry with it, when it started meanwhile). So
    where such workers run, this process ends the call's others itself, with none
    of them starting meanwhile, and says whether any is left. (Looked up, not imported:
    a call that launched nothing here never imported the local backend.)"""
    local = sys.modules.get("wrenpack.backends.local.process")
    held = getattr(local, "workers_held", None)
    if held is None:
        return _has_children()
    with held() as workers:
        if not workers:
            return _has_children()
        me = os.getpid()

        def reap() -> None:  # (the dead reaped here; the workers' exits are their backend's)
            for pid in _children_of(me) - workers:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

        # (live ones listed: a zombie is not, and is reaped in the round that finds none)
        return end_all(lambda: descendants(me, sparing=workers), reap)[1]


def children_usage() -> tuple[float, int]:
    """CPU time and page faults of this process's waited-for descendants: they
    change when a call started processes (the worker's, and a job's process, the
    subreaper of its call's processes, compare them before and after a call)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime, ru.ru_minflt


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def fresh_root_logger() -> None:
    """The root logger as a fresh interpreter has it: no handler, level WARNING, local time.

    A job's process is forked from the worker, and on Lambda the runtime client
    (awslambdaric) gave the worker's root logger its handler (level WARNING, Lambda's
    line format, UTC): kept in the job's process, it made ``logging.basicConfig`` in the
    user's code a no-op there, so a call's INFO lines, kept on the local backend (whose
    workers have no such handler), were dropped on Lambda. The worker keeps it: its own
    lines reach CloudWatch as before. The job's process writes to the same stdout and
    stderr (CloudWatch's stream, and the call's captured ``logs``), and its own
    warnings, with no handler, reach stderr through logging's last resort, as locally."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for flt in list(root.filters):
        root.removeFilter(flt)
    root.setLevel(logging.WARNING)
    logging.Formatter.converter = time.localtime


def _child_main(sock: socket.socket) -> None:  # pragma: no cover - runs in the child
    """Run this domain's calls until the parent closes the socket."""
    runner = _runner
    if runner is None:
        os._exit(1)
    _forget_process_files()
    fresh_root_logger()
    # Orphans of its calls stay below it, where its report after each call counts them.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    rpc = _Rpc(sock)
    first = True
    before: tuple[float, int] | None = None
    if _warm_up is not None and not _readable(sock):
        # While it waits to be taken (a spare), it runs the call path once on nothing:
        # the pages that copies from the zygote are copied now, not on the first call's
        # clock. (Not when its first call is there already: that would only delay it.)
        try:
            _warm_up()
        except Exception:  # noqa: BLE001 - only a head start: the first call runs all of it anyway
            pass
    while True:
        try:
            head, blob, fds = recv(sock, from_parent=True, whole=True)
        except (EOFError, OSError):
            os._exit(0)
        if first:
            # Its domain's first call: the earlier domain's process is gone by now (the parent
            # ended it first), so none can attach to this one once it is dumpable (its
            # own /proc files, the memory meter's reset, core dumps need that).
            prctl(_PR_SET_DUMPABLE, 1)
            first = False
        if before is None:
            before = children_usage()
        reply, out, out_fds = runner(head, blob, fds, rpc)
        streams.end_call_output()  # (what the call printed is written before its reply: the driver relays it first)
        reply["children"] = _call_left_processes()
        reply["started"] = reply["children"] or children_usage() != before
        try:
            send(sock, reply, out, out_fds)
        except OSError:
            os._exit(0)
        finally:
            close_all(out_fds)
        # The next call's marks, taken while the parent and the driver handle the reply: only
        # this process reaps what its calls started (``_has_children``), so the usage of its
        # waited-for children is the same when the next call comes.
        before = children_usage()
        if _after_reply is not None:
            _after_reply()
