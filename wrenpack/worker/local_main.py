"""The loop a local worker process runs: a warm "container" for many calls.

The parent (``wrenpack.backends.local``) sends messages of one or more calls
over a socket (``wrenpack.wire.frames``: a header and a blob, nothing pickled;
the headers are ``wire.driver_message`` and ``wire.worker_reply``); the worker
runs them in order and replies once per call, with the result object itself
when it is small (the reply's blob). Each call gets Lambda's environment variables, its own deadline and a
private temporary directory (TMPDIR), and its peak memory is measured from a
reset high-water mark. The user's code runs in a process of its isolation
domain (the calls of one function from one driver), never in this one, which
holds the secrets (``wrenpack.worker.isolation``: the zygote is forked in
``main``, before the first event).

The worker never outlives its driver: a parent-death signal, and a thread
watching the driver's pidfd (or its parent pid), stop it and every process its
call started, within about a second of the driver's death. Nor does any
process a call started outlive the call: they end before its reply goes
(``end_call_processes``).

Standard library only (besides the handler's cloudpickle).
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from wrenpack import process_state
from wrenpack.errors import exc_text
from wrenpack.wire import driver_message, frames, worker_reply
from wrenpack.worker import streams
from wrenpack.worker.fds import close_quietly

def _own_cgroups() -> list[str]:
    """This worker's cgroup directories (memory, pids) that the backend made for it."""
    found = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _id, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in ("memory", "pids"):
                    if controller in controllers.split(",") and os.path.basename(path).startswith("wrenpack-"):
                        found.append(os.path.join("/sys/fs/cgroup", controller, path.lstrip("/")))
    except (OSError, ValueError):
        pass
    return found


def _cgroup_tasks(cgroups: list[str], me: int) -> list[int]:
    """The processes in the worker's cgroups besides itself."""
    pids: list[int] = []
    for cgroup in cgroups:
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as f:
                pids += [int(p) for p in f.read().split() if int(p) != me]
        except (OSError, ValueError):
            pass
    return pids


_dying = threading.Lock()


def die(worker_dir: str | None, driver: int | None = None) -> None:
    """The driver is gone, or asked this worker to end (SIGTERM: ``Worker.ask_to_end``, a
    cancelled call's): stop the call and everything it started, clean up, exit. The
    backend's work folder, once empty, goes only when ``driver`` (its pid) is gone: a
    driver that asked this worker to end starts others there, and removed from under
    it, its next worker's start failed (FileNotFoundError) and with it the calls queued."""
    if not _dying.acquire(blocking=False):
        return
    me = os.getpid()
    cgroups = _own_cgroups()
    # First: the zygote forks nothing more, and the call's end is no crash. (Looked up,
    # not imported: the driver may die while this worker still imports its modules.)
    isolation = sys.modules.get("wrenpack.worker.isolation")
    try:
        if isolation is not None:
            isolation.stop()
    except Exception:  # noqa: BLE001 - half imported: nothing of it runs yet
        pass
    _kill_all_below(cgroups, wait_s=0.2)
    for cgroup in cgroups:
        # Leave the cgroup for its parent, then remove it: nobody else will.
        try:
            with open(os.path.join(os.path.dirname(cgroup), "cgroup.procs"), "w") as f:
                f.write(str(me))
            for _ in range(200):  # up to a second: killed processes may take a moment to exit
                try:
                    # (the groups of a job's own local workers first, inside this one: with
                    # them there, this one stayed, until the next local backend's start)
                    for below, _dirs, _files in os.walk(cgroup, topdown=False):
                        if below != cgroup:
                            with contextlib.suppress(FileNotFoundError):
                                os.rmdir(below)
                    os.rmdir(cgroup)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    inside = [below for below, _dirs, _files in os.walk(cgroup)]  # (itself and those inside it)
                    for pid in _cgroup_tasks(inside, me):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                    _children_left()
                    time.sleep(0.005)
        except OSError:
            pass
    if worker_dir:
        shutil.rmtree(worker_dir, ignore_errors=True)
        if driver is None or os.getppid() != driver:  # (its driver gone: this process was handed to another)
            try:
                os.rmdir(os.path.dirname(worker_dir))  # the backend's work directory, once empty
            except OSError:
                pass
    os._exit(1)


def _watch_parent(parent: int, worker_dir: str | None) -> None:
    """Block until the driver exits (its pidfd), else poll the parent pid."""
    pidfd = None
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pass
    if os.getppid() != parent:  # died before we looked
        die(worker_dir)
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
    else:
        while os.getppid() == parent:
            time.sleep(0.25)
    die(worker_dir)


def _children_left(which: bool = False) -> "bool | set[int]":
    """Reap the children that exited; whether any is left (one system call when
    none is), or with ``which`` the set of them (a short read of /proc)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return set() if which else False
        if pid == 0:
            break
    return _direct_children() if which else True


def _direct_children() -> set[int]:
    """This process's children (every thread's), from /proc."""
    out: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {-1}
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                out.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            return {-1}  # unknown: assume there are some
    return out


#: ``wrenpack.worker.isolation`` once imported (``_import_isolation``): the calls' bookkeeping
#: asks for it after every call, and an import statement costs a look-up each time
_isolation: Any = None


def _import_isolation() -> Any:
    global _isolation
    from wrenpack.worker import isolation

    _isolation = isolation
    return isolation


def end_call_processes() -> int:
    """Every process the call started ends with it, as on Lambda, where nothing a
    call left runs on after it (the environment is frozen): none may outlive it
    here, or run on into the next call. This worker is their subreaper, so
    any still running is a descendant (its cgroups list them too). The
    isolation's zygote and the job's child (``wrenpack.worker.isolation``) stay,
    and with them nothing else: the processes below the child are the call's.
    How many were ended."""
    isolation = _isolation or _import_isolation()
    if isolation.active():
        # The call ran in its job's child, the subreaper of what it started: the
        # child's report says whether anything is left (a call that died took its
        # processes' parent with it; ``isolation.end_child`` ended those).
        _children_left()  # (reaps)
        if not isolation.call_left_processes():
            return 0
    elif not _children_left():
        return 0
    me = os.getpid()
    cgroups = _own_cgroups()
    # (``protected`` after listing them: see keepers)
    ended, _left = process_state.end_all(
        lambda: set(isolation.descendants(me) + _cgroup_tasks(cgroups, me)) - isolation.protected(), _children_left)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:  # the killed ones' exits (reparented here, or to the job's child, which reaps its own)
        _children_left()
        if not any(process_state.runs(pid) for pid in ended):
            break
        time.sleep(0.002)
    child = isolation.current_child()
    if child is not None:
        child.left_processes = False
    return len(ended)


#: a directory whose last change is at least this much older than a count that found it
#: empty is empty while it stays unchanged: file times are coarse (a few milliseconds), so a
#: change made just after a count may keep the time the directory had
_QUIET_S = 0.05


class TmpMeter:
    """Bytes in the worker's temporary directory after each call (``memory.dir_usage``),
    without walking it after every call of a function that leaves it empty.

    An empty directory that has not changed since stays empty: whatever a call
    puts in it (a file, a directory, a name moved in) is a new entry, and a new
    entry changes the directory's modification time. A file that only grows
    changes nothing there, so a directory that holds anything is counted after
    every call, as is one whose time or identity changed, or whose last change
    was too recent to tell from one made just after the count (``_QUIET_S``)."""

    def __init__(self, path: str, count: Callable[[str], int]) -> None:
        self.path = path
        self._count = count  # (``memory.dir_usage``)
        #: (device, inode, modification time) when it was last found empty, long enough after its last change
        self._empty: tuple[int, int, int] | None = None

    def usage(self) -> int:
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and self._empty == (st.st_dev, st.st_ino, st.st_mtime_ns):
            return 0
        self._empty = None
        now_ns = time.time_ns()
        total = self._count(self.path)
        if total == 0 and st is not None and now_ns - st.st_mtime_ns >= _QUIET_S * 1e9 and not _has_entries(self.path):
            self._empty = (st.st_dev, st.st_ino, st.st_mtime_ns)
        return total


#: a call shorter than this cannot have written enough to /tmp to matter (a few GB/s at most):
#: the files its job's process holds deleted are not looked for (tens of system calls a call)
_HELD_DELETED_MIN_S = 0.005


def _held_deleted(tmpdir: str, elapsed: float) -> int:
    """Bytes of files in ``tmpdir`` deleted but held open by the job's process after a
    call (``tempfile.TemporaryFile()`` kept in a global): Lambda's /tmp counts them.
    (During a call the driver looks for them too, with the worker's other processes.)"""
    if elapsed < _HELD_DELETED_MIN_S:
        return 0
    from wrenpack.worker import memory

    child = (_isolation or _import_isolation()).current_child()
    return memory.open_deleted_bytes(tmpdir, [child.pid]) if child is not None else 0


def _has_entries(path: str) -> bool:
    """Whether the directory holds anything (empty files count: a byte total of 0 says nothing of them)."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is not None
    except OSError:
        return True


def _send(sock: socket.socket, head: dict[str, Any], blob: bytes = b"", fd: int | None = None) -> None:
    frames.send(sock, worker_reply.dumps(head), blob, fd)


def _claim(ahead_fd: int | None) -> bool:
    """Whether a call sent ahead is still this worker's to run: the byte the driver
    wrote to the ahead pipe when it sent it is read here, unless the driver read it
    back first (``Worker.recall``). One of the two reads gets it, never both."""
    if ahead_fd is None:
        return True  # (a driver that sends nothing ahead)
    try:
        return bool(os.read(ahead_fd, 1))  # (b"": the driver is gone; nothing is run for it)
    except BlockingIOError:
        return False


def _apply_limits(limits: list[Any]) -> dict[str, str]:
    """Set the calls' limits in the environment, as Lambda does; what was set
    (each call's context names it, ``call_env``: the handler does not read it again per call)."""
    memory_mb, timeout_s, storage_mb = limits
    env = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb), "AWS_LAMBDA_FUNCTION_TIMEOUT": str(max(1, int(timeout_s))),
           "WRENPACK_EPHEMERAL_STORAGE_MB": str(storage_mb)}
    os.environ.update(env)
    return env


def serve(sock: socket.socket, worker_dir: str | None = None, ahead_fd: int | None = None) -> None:
    """Run calls from ``sock`` until it closes. ``ahead_fd``: the read end of the
    pipe a call sent ahead is claimed from (``_claim``)."""
    import tempfile

    from wrenpack.worker import isolation, memory
    from wrenpack.worker.context import LocalContext
    from wrenpack.worker.handler import handler, store_pin as handler_store_pin

    tmpdir = os.environ.get("TMPDIR")
    if tmpdir:
        tempfile.tempdir = tmpdir
    tmp_meter = TmpMeter(tmpdir, memory.dir_usage) if tmpdir else None
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "wrenpack-local")
    memory_mb = 0
    call_env: dict[str, str] | None = None  # (None until limits come: the handler reads the environment)
    # What the handler's store check depends on (``handler._store_for``): set when this worker
    # started, and nothing runs in this process that could change it.
    store_pin = handler_store_pin()
    isolation.spare_after_reply = True
    _send(sock, worker_reply.ready(os.getpid()))
    calls = 0
    pid = os.getpid()  # (this process serves every call: the zygote's forks run no part of this loop)
    fds: list[int] = []  # hand-offs received, not yet given to a call (oldest first)
    reader = frames.Reader(sock)
    decoder = driver_message.Decoder()
    while True:
        got = reader.next(fds)
        if got is None:
            return
        msg = driver_message.loads(got[0])
        if msg.get("limits"):
            call_env = _apply_limits(msg["limits"])
            memory_mb = int(msg["limits"][0])
        reply_limit = msg.get("reply_limit")
        for call, event in decoder.events(msg):
            if call.get("ahead") and not _claim(ahead_fd):
                # Taken back by the driver while the call before it ran: it runs elsewhere.
                close_quietly(*[fds.pop(0) for _ in range(min(int(call.get("fd") or 0), len(fds)))])
                _send(sock, worker_reply.withdrawn())
                continue
            calls += 1
            ctx = LocalContext(
                function_name=function_name,
                memory_mb=memory_mb,
                deadline=time.time() + float(call["timeout_s"]),
                request_id=f"{pid}-{calls}",
            )
            # Replies the backend asked for come back over this socket, which only this
            # process and the driver hold: the outcome needs no MAC (wrenpack.backends.local.replies).
            ctx.private_reply = bool(reply_limit)
            ctx.call_env = call_env  # type: ignore[attr-defined]
            ctx.store_pin = store_pin  # type: ignore[attr-defined]
            # The call's arguments as sealed memfds, when they came that way (the handler checks them).
            ctx.handoff_fds = [fds.pop(0) for _ in range(min(int(call.get("fd") or 0), len(fds)))]
            before = isolation.children_usage()
            t0 = time.perf_counter()
            blob = b""
            out = None
            child_died = False
            try:
                reply, blob, out = worker_reply.of_call(handler(event, ctx))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, worker keeps serving
                reply = worker_reply.failed(f"{type(exc).__name__}: {exc_text(exc)}", memory.peak_rss_mb())
                child_died = True
            finally:
                for fd in ctx.handoff_fds:  # not taken by the handler (a refused event)
                    close_quietly(fd)
                if getattr(ctx, "result_slab", None) is not None:  # the result did not go in it
                    close_quietly(ctx.result_slab)
                    ctx.result_slab = None
            # (without the change of job's process: once per job, not the call's own time)
            elapsed = max(0.0, time.perf_counter() - t0 - isolation.take_start_cost())
            end_call_processes()
            worker_reply.measured(reply, elapsed, children=child_died or isolation.children_usage() != before
                                  or isolation.call_started_processes(),
                                  tmp_bytes=tmp_meter.usage() + _held_deleted(tmpdir, elapsed) if tmp_meter is not None else 0)
            streams.end_call_output()  # (what the call printed goes before its reply)
            try:
                _send(sock, reply, blob, out.fd if out is not None else None)
            finally:
                if out is not None:
                    out.close()  # the driver holds the pages now; they go when it closes its copy
            isolation.request_spare()  # (after the reply: the zygote's fork does not delay it)


def main(config: dict[str, Any]) -> None:
    """Entry point (``wrenpack.backends.local.process`` starts ``python -c`` with this)."""
    from wrenpack.worker import isolation

    worker_dir = config.get("dir")
    parent = int(config.get("parent") or os.getppid())
    # The kernel's backstop if this process cannot run Python when the driver dies.
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: die(worker_dir, parent))
    # Orphans of a call (daemonised children) stay below this process, where the kill finds them.
    isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
    # The worker is in the driver's session, in a background process group: on a terminal
    # set to stop background writers (stty tostop) a call's print would stop it. Ignored,
    # the write goes through, as it did when workers had no terminal (and as on Lambda,
    # the call never stops for the terminal; a read from it fails instead of stopping).
    for sig in (signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)
    if config.get("relay"):
        streams.line_streams()
    # Before any event, and before any thread: the zygote that forks each job's
    # child is a copy of this process as it is now, which never held a secret.
    from wrenpack.worker import handler  # noqa: F401 - imported for the zygote's copy

    isolation.prepare()
    threading.Thread(target=_watch_parent, args=(parent, worker_dir), name="wrenpack-parent-watch", daemon=True).start()
    sock = socket.socket(fileno=int(config["fd"]))
    ahead_fd = config.get("ahead_fd")
    if ahead_fd is not None:
        os.set_inheritable(int(ahead_fd), False)  # (nothing a call starts holds it)
    try:
        serve(sock, worker_dir, int(ahead_fd) if ahead_fd is not None else None)
    except (BrokenPipeError, ConnectionError, EOFError):
        pass  # the driver closed the connection: a quiet exit
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    if _dying.locked():
        # The driver died and ``die`` is ending the call's processes and removing the
        # worker's cgroups (the socket broke meanwhile): it ends this process when done.
        time.sleep(30)
    end_own_processes()
    os._exit(0)


def end_own_processes(wait_s: float = 1.0) -> None:
    """The driver closed the connection: end the zygote, the job's process, the spare and
    whatever is left below this worker, and collect them before it exits. Left to the
    worker's exit, they would be orphans handed to init as zombies, which an init that
    does not collect orphans (a container whose first process is the driver) keeps."""
    isolation = sys.modules.get("wrenpack.worker.isolation")
    if isolation is not None:
        try:
            isolation.stop()  # (the zygote first: it forks nothing more)
            isolation.end_child()
        except Exception:  # noqa: BLE001 - what is left is killed below
            pass
    _kill_all_below([], wait_s)


def _kill_all_below(cgroups: list[str], wait_s: float) -> None:
    """SIGKILL every process below this worker (its subreaper) and in its ``cgroups``,
    collecting those that exit, until none is left or ``wait_s`` has passed. The
    isolation module is looked up, not imported: this may run while the worker still
    imports its modules (then there is nothing of it to end)."""
    me = os.getpid()
    isolation = sys.modules.get("wrenpack.worker.isolation")
    descendants = getattr(isolation, "descendants", None)
    deadline = time.monotonic() + wait_s
    while True:
        pids = set(descendants(me) if descendants is not None else []) | set(_cgroup_tasks(cgroups, me))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        left = _children_left()  # (reaps what exited: a process is in its cgroup until reaped)
        if (not pids and not left) or time.monotonic() > deadline:
            return
        time.sleep(0.002)


if __name__ == "__main__":  # pragma: no cover - started by the local backend
    main(json.loads(sys.argv[1]))
