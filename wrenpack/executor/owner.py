"""Owner records: who launched a job, and whether that process still lives
(``wrenpack clean --stale`` removes the objects of jobs whose owner is gone)."""
from __future__ import annotations

import os
import socket
import time
from typing import Any


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), which tells a live
    owner from a new process that reuses its pid; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_me: tuple[int, str, str | None] | None = None


def owner_record(label: str = "") -> dict[str, Any]:
    """What jobs/<job>/owner.json holds: who launched the job, and when."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:  # read once per process (a fork is a new one)
        _me = (pid, socket.gethostname(), _process_start(pid))
    return {"host": _me[1], "pid": pid, "start": _me[2], "created": time.time(), "label": label}


def owner_alive(record: dict[str, Any]) -> bool | None:
    """True if the owner process lives, False if it is gone, None if it ran on
    another host (cannot tell from here)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = _process_start(pid)
    return start is not None and (record.get("start") is None or start == record.get("start"))
