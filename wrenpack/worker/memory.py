"""What a call uses on this machine: peak memory (resettable between warm calls)
and directory usage (Linux /proc).

One reader of ``/proc/<pid>/status`` and one directory-usage function, shared
by the worker, the local backend and the profiler, so all three count alike.
Standard library only (Lambda imports it).
"""
from __future__ import annotations

import os
import resource
import sys
import threading
from typing import Iterable

_KIB_PER_MIB = 1024.0
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0) if hasattr(os, "sysconf") else 4096 / (1024.0 * 1024.0)


#: "status"/"statm"/"clear_refs" -> (pid, fd, (st_dev, st_ino)): this process's own files, opened once
_own: dict[str, tuple[int, int, tuple[int, int]]] = {}
_own_lock = threading.Lock()


def _own_fd(name: str, flags: int, checked: bool = True) -> int:
    """A kept descriptor of ``/proc/self/<name>``: opening it costs more than the
    read or write (a warm worker resets and reads its peak on every call).
    Reopened in a forked child (its ``self`` is another process) and when the
    descriptor no longer is that file (user code closed it and reused the number;
    ``checked=False``: the caller checks what it reads instead of an fstat)."""
    pid = os.getpid()
    got = _own.get(name)
    if got is not None and got[0] == pid:
        if not checked:
            return got[1]
        try:
            st = os.fstat(got[1])
            if (st.st_dev, st.st_ino) == got[2]:
                return got[1]
        except OSError:
            pass
    with _own_lock:
        fd = os.open(f"/proc/self/{name}", flags | os.O_CLOEXEC)
        st = os.fstat(fd)
        old = _own.get(name)
        _own[name] = (pid, fd, (st.st_dev, st.st_ino))
    if old is not None and old[0] != pid:
        try:
            st = os.fstat(old[1])
            if (st.st_dev, st.st_ino) == old[2]:
                os.close(old[1])  # the parent's, inherited over a fork
        except OSError:
            pass
    return fd


def _own_status() -> bytes:
    """This process's /proc status, read through the kept descriptor; read again
    from a new one if what came is not this process's status."""
    mark = b"\nPid:\t%d\n" % os.getpid()
    try:
        text = os.pread(_own_fd("status", os.O_RDONLY, checked=False), 8192, 0)
        if text.startswith(b"Name:") and mark in text:
            return text
    except OSError:
        pass
    _own.pop("status", None)  # not ours any more (closed, or its number reused): left alone
    return os.pread(_own_fd("status", os.O_RDONLY), 8192, 0)


def reset_peak() -> bool:
    """Reset VmHWM so the next reading is this call's peak, not the container's."""
    try:
        os.write(_own_fd("clear_refs", os.O_WRONLY), b"5")
        return True
    except OSError:
        return False


def _faults() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_minflt + ru.ru_majflt


def start_peak() -> tuple[int, int] | None:
    """Reset VmHWM for a call (``reset_peak``) and note what ``peak_since`` needs:
    the page faults so far and the resident size at the reset. None if it cannot."""
    try:
        faults = _faults()
        if not reset_peak():
            return None
        resident = int(os.pread(_own_fd("statm", os.O_RDONLY), 256, 0).split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return faults, resident


def peak_since(mark: tuple[int, int] | None) -> float | None:
    """The peak resident memory since ``start_peak``, in MiB (``peak_rss_mb``).

    Resident memory grows only through page faults (populating a mapping counts
    as faults too), and the process's fault counters cover all its threads, so
    with no fault since the reset the peak is the resident size at the reset,
    which is what VmHWM holds then. /proc/self/status, which costs several times
    more to read than the counters and statm, is read only when a fault came."""
    if mark is not None and _faults() == mark[0]:
        return mark[1] * _PAGE_MIB
    return peak_rss_mb()


def proc_status(pid: int | str = "self", fields: tuple[bytes, ...] = (b"VmHWM:",)) -> dict[bytes, int]:
    """The given ``/proc/<pid>/status`` fields, in kB (those present; {} once the process is gone).

    Stops reading at the last field wanted (the file is long; a sampler reads it often)."""
    out: dict[bytes, int] = {}
    try:
        if pid == "self":
            text = _own_status()
        else:
            with open(f"/proc/{pid}/status", "rb", buffering=0) as f:
                text = f.read(8192)  # one read: the file is ~1.5 kB, read on every call and sample
        for name in fields:
            at = text.find(b"\n" + name)
            if at >= 0:
                out[name] = int(text[at + len(name) + 1 : text.index(b"\n", at + 1)].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """VmHWM in MiB, the OS's own high-water mark of resident memory."""
    kb = proc_status(pid).get(b"VmHWM:")
    if kb is not None:
        return kb / _KIB_PER_MIB
    if pid == "self":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
    return None


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has ended in this process's memory
    cgroup (v2 ``memory.events``, v1 ``memory.oom_control``: ``oom_kill``), or None
    where that cannot be read (no such cgroup, another mount layout).

    A job's child that died of SIGKILL while this process lived on was stopped at
    the memory limit when this count rose meanwhile: its worker then says so
    (``handler``), as the local backend does from its own cgroup."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    places = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                places.append((f"{mount}{path.rstrip('/')}/memory.events", "oom_kill "))
        elif "memory" in controllers.split(","):
            places.insert(0, (f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.oom_control", "oom_kill "))
    for name, field in places:
        try:
            with open(name) as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def children_peak_mb() -> float:
    """The largest ``ru_maxrss`` among this process's waited-for children, in MiB.

    Linux keeps it for the process's whole life, so a call compares the value
    before and after itself to know whether one of *its* children set it."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def dir_usage(path: str) -> int:
    """Bytes a directory tree takes on its filesystem (allocated blocks, as a
    size-limited /tmp counts them; a sparse file counts what it really holds).
    A file with several names (hard links: ``git clone`` of a local repository,
    ``cp -al``) holds its blocks once, and is counted once."""
    total = 0
    linked: set[tuple[int, int]] = set()
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
                            st = entry.stat(follow_symlinks=False)
                            if st.st_nlink > 1:
                                if (st.st_dev, st.st_ino) in linked:
                                    continue
                                linked.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def open_deleted_bytes(path: str, pids: Iterable[int]) -> int:
    """Bytes of files under ``path`` that were deleted while ``pids`` still hold them
    open (``tempfile.TemporaryFile()``, a file written then unlinked): gone from the
    directory, their blocks stay taken until the last descriptor closes, and Lambda's
    /tmp counts them (a write past its size fails with ENOSPC). Each file once."""
    prefix = os.path.join(os.path.realpath(path), "")
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            where = f"{fd_dir}/{fd}"
            try:
                target = os.readlink(where)
                if not (target.startswith(prefix) and target.endswith(" (deleted)")):
                    continue
                st = os.stat(where)  # (the open file itself, through the descriptor's link)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total

