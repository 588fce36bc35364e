"""Whether a process still runs.

A local worker asks it of the processes it ended after a call, the local store
of a temporary file's writer (``LocalStore.remove_stopped_writes``), the local
backend of the driver that made a cgroup or work folder (``left_by_gone_process``);
``wrenpack clean --stale`` whether a gone driver's local workers still run (``works_for``,
from the marker ``worker_marker`` puts in their command lines); and which processes
run below one (``descendants``: a worker ending what a call left, a benchmark ending
its pools). Worker side: the standard library only."""
from __future__ import annotations

import os
import re
import time


def runs(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited: a zombie waiting for
    its reaper has. From ``/proc``; where there is none, the kernel is asked
    (``kill(pid, 0)``), which counts a zombie as running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # (someone else's)
        return True
    state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    return state not in (b"Z", b"X")


def left_by_gone_process(name: str, pattern: re.Pattern[str]) -> bool:
    """Whether ``name`` (of a folder or cgroup) is one ``pattern`` matches, its first group
    the pid of the process that made it, and that process is gone (not this one, not running):
    what a process killed outright could not remove, and a later one may."""
    m = pattern.fullmatch(name)
    if m is None:
        return False
    pid = int(m.group(1))
    return pid != os.getpid() and not runs(pid)


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), which tells a process
    from a later one that reuses its pid; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read().decode("ascii", "replace")
        return stat_line.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_marker() -> str:
    """What a process working for this one (a local worker, and each process forked
    from it) carries in its command line: ``works_for`` finds it there, so that a
    killed driver's jobs count as running while its workers still end their calls
    (which may write their objects meanwhile)."""
    pid = os.getpid()
    return f"wrenpack-owner={pid}:{start_time(pid)}"


#: (when scanned, the pids and command lines of the processes running then)
_scan: tuple[float, list[tuple[str, bytes]]] | None = None
SCAN_REUSE_S = 1.0


def _command_lines() -> list[tuple[str, bytes]]:
    """Every process's command line, from /proc (a scan is reused for a second:
    a clean of many jobs reads /proc once)."""
    global _scan
    now = time.monotonic()
    if _scan is not None and now - _scan[0] < SCAN_REUSE_S:
        return _scan[1]
    lines = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    lines.append((name, f.read()))
            except OSError:
                pass  # (gone meanwhile)
    _scan = (now, lines)
    return lines


def works_for(pid: int, start: object) -> bool:
    """Whether a process still runs that carries the ``worker_marker`` of process
    (``pid``, ``start``): a local worker outlives its killed driver for the moment
    it takes to end its call."""
    if start is None:
        return False
    marker = f'"wrenpack-owner={pid}:{start}"'.encode()
    for name, line in _command_lines():
        if marker in line:
            try:
                if os.stat(f"/proc/{name}").st_uid == os.geteuid():  # (another user's copy of it counts for nothing)
                    return True
            except OSError:
                pass
    return False


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (a /proc scan: the worker side has no psutil;
    a zombie, exited and waiting to be reaped, is left out: nothing of it runs)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            ppid = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
        if fields[0] == b"Z":
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for kid in children.get(stack.pop(), []):
            out.append(kid)
            stack.append(kid)
    return out
