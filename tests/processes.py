"""Process helpers the tests share (not a test module)."""
from __future__ import annotations


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def interruptible() -> None:
    """``preexec_fn`` for a program a test sends ^C (SIGINT): Python installs
    its KeyboardInterrupt handler only when SIGINT is not ignored at start, and
    a test run launched in the background of a non-interactive shell (``cmd &``)
    hands its children an ignored SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
