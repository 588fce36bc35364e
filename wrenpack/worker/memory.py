"""Peak resident memory of this process, resettable between warm calls (Linux)."""
from __future__ import annotations

import resource
import sys


def reset_peak() -> bool:
    """Reset VmHWM so the next reading is this call's peak, not the container's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """VmHWM in MiB, the OS's own high-water mark of resident memory."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if pid == "self":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
    return None


def children_peak_mb() -> float:
    """The largest ``ru_maxrss`` among this process's waited-for children, in MiB.

    Linux keeps it for the process's whole life, so a call compares the value
    before and after itself to know whether one of *its* children set it."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
