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
import signal
import time
from typing import Any, Callable, Collection, Iterable, NamedTuple


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


class _Scan(NamedTuple):
    """What one read of /proc found: every process's command line, and when it was taken."""

    at: float  #: (``time.monotonic()``)
    ticks: int | None  #: (clock ticks after boot when it began, as /proc/<pid>/stat's start times count)
    pids: frozenset[str]  #: (every process listed)
    lines: list[tuple[str, bytes]]  #: (pid, command line)


_scan: _Scan | None = None
SCAN_REUSE_S = 1.0


def _boot_ticks() -> int | None:
    """Now, in clock ticks after boot (the unit of ``start_time``); None where that cannot be read."""
    try:
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))
    except (AttributeError, OSError, ValueError):
        return None


def _command_lines() -> _Scan:
    """Every process's command line, from /proc, read now."""
    global _scan
    ticks = _boot_ticks()  # (before the listing: a process started after this may be in it or not)
    names = [name for name in os.listdir("/proc") if name.isdigit()]
    lines = []
    for name in names:
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                lines.append((name, f.read()))
        except OSError:
            pass  # (gone meanwhile)
    _scan = _Scan(time.monotonic(), ticks, frozenset(names), lines)
    return _scan


def _answers_for(scan: _Scan | None, pid: int, start: str) -> bool:
    """Whether ``scan`` may be used again for the workers of process (``pid``, ``start``): it is
    under ``SCAN_REUSE_S`` old, and that process was gone when it was taken (started before it,
    and not listed). Then whatever carries its marker was in the scan: only that process and
    its workers start more such processes. A scan taken before the process was gone, or before
    it started, says nothing of the workers it started since (reused, a scan from before a
    driver started said "no workers" once it was killed, and ``clean --stale`` removed a
    map_reduce its workers still wrote to)."""
    return (scan is not None and time.monotonic() - scan.at < SCAN_REUSE_S and scan.ticks is not None
            and start.isdigit() and int(start) < scan.ticks and str(pid) not in scan.pids)


def works_for(pid: int, start: object) -> bool:
    """Whether a process still runs that carries the ``worker_marker`` of process
    (``pid``, ``start``): a local worker outlives its killed driver for the moment
    it takes to end its call. One read of /proc answers for every process that was
    gone when it was taken, for a second (a clean of many jobs reads it once)."""
    if start is None:
        return False
    marker = f'"wrenpack-owner={pid}:{start}"'.encode()
    scan = _scan
    if not _answers_for(scan, pid, str(start)):
        scan = _command_lines()
    for name, line in scan.lines:
        if marker in line:
            try:
                if os.stat(f"/proc/{name}").st_uid == os.geteuid():  # (another user's copy of it counts for nothing)
                    return True
            except OSError:
                pass
    return False


def descendants(root: int, sparing: Collection[int] = ()) -> list[int]:
    """Every live process below ``root`` (a /proc scan: the worker side has no psutil;
    a zombie, exited and waiting to be reaped, is left out: nothing of it runs), but
    those in ``sparing`` and every process below them."""
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
            if kid not in sparing:
                out.append(kid)
                stack.append(kid)
    return out


def end_all(listing: Callable[[], Iterable[int]], reap: Callable[[], Any], rounds: int = 50) -> tuple[set[int], bool]:
    """SIGKILL every process ``listing()`` names and ``reap()`` the dead, again until it names
    none (a process may fork while it is being killed), at most ``rounds`` times: (the pids
    killed, whether some were still named after the last round)."""
    ended: set[int] = set()
    for _ in range(rounds):
        pids = set(listing())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        reap()
        if not pids:
            return ended, False
        ended |= pids
        time.sleep(0.002)
    return ended, True
