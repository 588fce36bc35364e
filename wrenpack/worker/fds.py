"""Closing descriptors that may be gone already: a call's hand-off memfds, a
job process's pidfd, a worker's socket. Cleanup closes them on every path
(after a call, after a crash, at shutdown), where one closed earlier, or a
``None`` for one never opened, is no error.

Standard library only: this runs in the worker."""
from __future__ import annotations

import os
from typing import Iterable


def close_quietly(*fds: int | None) -> None:
    """Close each descriptor given; ``None`` and one that is closed already are skipped."""
    close_all(fds)


def close_all(fds: Iterable[int | None]) -> None:
    """``close_quietly`` of every descriptor in ``fds``."""
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
