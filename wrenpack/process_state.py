"""Whether a process still runs.

A local worker asks it of the processes it ended after a call, the local store
of a temporary file's writer (``LocalStore.remove_stopped_writes``). Worker
side: the standard library only."""
from __future__ import annotations

import os


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
