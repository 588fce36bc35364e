"""The memfds a test process holds open (tests of ``wrenpack.worker.handoff``)."""
from __future__ import annotations

import os


def memfds(name: str = "") -> list[str]:
    """The memfds this process holds open, those whose name starts with ``name``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:{name}"):
            out.append(target)
    return out
