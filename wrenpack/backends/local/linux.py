"""Per-worker limits through Linux cgroup v1 (when this process may make them):
memory, and processes and threads.

A hard memory limit is what Lambda enforces; the kernel's own accounting
catches spikes of any length and memory held in child processes. Lambda also
caps an execution environment at 1,024 processes and threads (``MAX_TASKS``):
a fork or thread past it fails with EAGAIN, which a pids cgroup does the same
way. Where cgroups are unavailable the local backend falls back to sampling
(``wrenpack.backends.local.process``). Not RLIMIT_NPROC: it counts every
process of the user on the machine, not the worker's, and root ignores it.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import threading
import time

from wrenpack import process_state
from wrenpack.config import env_flag

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: Lambda's limit on the processes and threads of one execution environment
MAX_TASKS = 1024


class Cgroup:
    """One cgroup v1 group of one worker (any controller): its tasks, their kill, its removal."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def _read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """The processes in the group and in the groups below it: a call that runs a
        local backend of its own (a job launched inside the call) makes its workers'
        groups inside this one, and v1's ``cgroup.procs`` lists a group's own only."""
        out: list[int] = []
        for path in (self.path, *_groups_below(self.path)):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    out.extend(int(p) for p in f.read().split())
            except (OSError, ValueError):
                pass
        return out

    def kill_all(self, rounds: int = 50) -> bool:
        """SIGKILL every process in the cgroup (setsid'd and daemonised ones too),
        again until none is left (a process may fork while it is being killed)."""
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.002)
        return not self.pids()

    def remove(self) -> bool:
        """Remove the (empty) cgroup; a few tries, as killed tasks leave it
        asynchronously. One whose tasks take longer (a loaded machine) is tried
        again at this process's exit (``_remove_later``)."""
        for attempt in range(20):
            try:
                _remove_group(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if attempt == 19:
                    log.debug("could not remove cgroup %s yet; trying again at exit", self.path)
                    _remove_later(self.path)
                    return False
                time.sleep(0.005)
        return False


def _remove_group(path: str) -> None:
    """``os.rmdir`` of a cgroup and of the groups inside it, deepest first (a group
    holding groups cannot go; one already gone is fine): the group's OSError otherwise."""
    for below in _groups_below(path):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(below)
    os.rmdir(path)


def _groups_below(path: str) -> list[str]:
    """The cgroups inside the group at ``path`` (its folders), deepest first."""
    try:
        return [root for root, _dirs, _files in os.walk(path, topdown=False) if root != path]
    except OSError:
        return []


#: cgroups whose removal failed while killed tasks were still leaving them
_unremoved: set[str] = set()
_unremoved_lock = threading.Lock()


def filesystem_type(path: str) -> str | None:
    """The type of the file system ``path`` is on (``"tmpfs"``, ``"ext4"``...), from
    ``/proc/self/mountinfo``; None where that cannot be read."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        # (octal escapes in mount points: \040 for a space)
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, tail.split()[0]
    return kind


def _remove_later(path: str) -> None:
    with _unremoved_lock:
        if not _unremoved:
            atexit.register(remove_unremoved, 2.0)
        _unremoved.add(path)


def remove_unremoved(wait_s: float = 0.0) -> None:
    """Remove the cgroups ``Cgroup.remove`` could not, waiting up to ``wait_s``
    for their last tasks to leave."""
    deadline = time.monotonic() + wait_s
    while True:
        with _unremoved_lock:
            left = list(_unremoved)
        for path in left:
            try:
                _remove_group(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            with _unremoved_lock:
                _unremoved.discard(path)
        if not _unremoved or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


#: a worker's group (``wrenpack-<driver pid>-w<n>``) or a probe's (``wrenpack-probe-<pid>``)
_OURS = re.compile(r"wrenpack-(?:probe-)?(\d+)(?:-w\d+)?")


def remove_stale(base: str) -> int:
    """Remove the empty groups under ``base`` that wrenpack made for a process that
    is gone (a driver killed together with its workers, whose exit removed
    nothing); how many. A group that still holds a task is left alone."""
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not process_state.left_by_gone_process(name, _OURS):
            continue
        group = os.path.join(base, name)
        try:
            _remove_group(group)  # (with a job's own local backend's groups inside a worker's)
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d cgroup(s) under %s left by wrenpack processes that are gone", removed, base)
    return removed


class MemoryCgroup(Cgroup):
    """A worker's memory group: its limit, peak and OOM kills."""

    def set_limit_mb(self, mb: int) -> bool:
        return self.set_limit_bytes(mb * MiB)

    def set_limit_bytes(self, n: int) -> bool:
        try:
            self._write("memory.limit_in_bytes", str(n))
            return True
        except OSError:  # EBUSY: usage above the new limit
            return False

    def reset_peak(self) -> None:
        try:
            self._write("memory.max_usage_in_bytes", "0")
        except OSError:
            pass

    def peak_mb(self) -> float:
        try:
            return int(self._read("memory.max_usage_in_bytes")) / MiB
        except (OSError, ValueError):
            return 0.0

    def oom_kills(self) -> int:
        try:
            for line in self._read("memory.oom_control").splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        try:
            return int(self._read("memory.failcnt"))
        except (OSError, ValueError):
            return 0


class PidsCgroup(Cgroup):
    """A worker's pids group: at most ``MAX_TASKS`` processes and threads, as on
    Lambda (``pids.max``: the fork or thread past them fails with EAGAIN)."""


def _own_group(controller: str) -> str | None:
    """This process's cgroup v1 directory for ``controller``, if it is mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"))
    return None


def _probe(base: str, setting: str, value: str) -> bool:
    """Whether this process may make a group under ``base`` and set ``setting`` there."""
    probe = os.path.join(base, f"wrenpack-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        with open(os.path.join(probe, setting), "w") as f:
            f.write(value)
        return True
    except OSError as exc:
        log.debug("cgroups under %s unavailable (%s)", base, exc)
        return False
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


class CgroupFactory:
    """Makes child memory cgroups under this process's own (cgroup v1)."""

    def __init__(self, base: str) -> None:
        self.base = base

    @classmethod
    def detect(cls) -> "CgroupFactory | None":
        if env_flag("WRENPACK_NO_CGROUPS"):
            return None
        base = _own_group("memory")
        if base is None or not _probe(base, "memory.limit_in_bytes", str(256 * MiB)):
            log.debug("memory cgroups unavailable; sampling memory instead")
            return None
        remove_stale(base)
        return cls(base)

    def create(self, name: str) -> MemoryCgroup | None:
        path = os.path.join(self.base, name)
        try:
            os.mkdir(path)
            cg = MemoryCgroup(path)
            try:
                cg._write("memory.move_charge_at_immigrate", "3")
            except OSError:
                pass
            try:
                cg._write("memory.swappiness", "0")
            except OSError:
                pass
            return cg
        except OSError as exc:
            log.debug("cannot create cgroup %s: %s", path, exc)
            return None


class PidsCgroupFactory:
    """Makes child pids cgroups under this process's own (cgroup v1), each held to ``MAX_TASKS``."""

    def __init__(self, base: str) -> None:
        self.base = base

    @classmethod
    def detect(cls) -> "PidsCgroupFactory | None":
        if env_flag("WRENPACK_NO_CGROUPS"):  # (a boolean word, read as the memory group reads it)
            return None
        base = _own_group("pids")
        if base is None or not _probe(base, "pids.max", str(MAX_TASKS)):
            log.debug("pids cgroups unavailable; sampling a call's processes and threads instead")
            return None
        remove_stale(base)
        return cls(base)

    def create(self, name: str, limit: int = MAX_TASKS) -> PidsCgroup | None:
        path = os.path.join(self.base, name)
        try:
            os.mkdir(path)
        except OSError as exc:
            log.debug("cannot create cgroup %s: %s", path, exc)
            return None
        cg = PidsCgroup(path)
        try:
            cg._write("pids.max", str(limit))
        except OSError as exc:
            log.debug("cannot limit cgroup %s: %s", path, exc)
            cg.remove()
            return None
        return cg
