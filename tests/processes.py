"""Process helpers the tests share (not a test module)."""
from __future__ import annotations

from wrenpack import process_state


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    return process_state.runs(pid)


def interruptible() -> None:
    """``preexec_fn`` for a program a test sends ^C (SIGINT): Python installs
    its KeyboardInterrupt handler only when SIGINT is not ignored at start, and
    a test run launched in the background of a non-interactive shell (``cmd &``)
    hands its children an ignored SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
