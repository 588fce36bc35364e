"""Whether a process still runs.

A local worker asks it of the processes it ended after a call, the local store
of a temporary file's writer (``LocalStore.remove_stopped_writes``), the local
backend of the driver that made a cgroup or work folder (``left_by_gone_process``). Worker
side: the standard library only."""
from __future__ import annotations

import os
import re


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
