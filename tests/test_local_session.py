"""Local workers share the CPU as the user's programs do: they stay in the
driver's session (so in its autogroup, where Linux shares the CPU per
session), in a process group of their own that the backend can kill, and they
still write to the user's terminal when it stops background writers."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time

import pytest

import wrenpack
from wrenpack.backends.local import LocalBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _where(_: int) -> dict:
    return {"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "autogroup": _autogroup()}


def _autogroup() -> str | None:
    """This process's autogroup, or None where the kernel has none: some
    kernels (and containers) give an empty ``/proc/self/autogroup``."""
    try:
        with open("/proc/self/autogroup") as f:
            fields = f.read().split()
    except OSError:
        return None
    return fields[0] if fields else None


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroups", "no-cgroups"])
def test_a_worker_is_in_the_drivers_session_and_a_group_of_its_own(tmp_path, cgroups):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2)
    ex._backend = LocalBackend(concurrency=2, use_cgroups=cgroups)
    try:
        seen = wrenpack.get(wrenpack.remote(_where, executor=ex).map(range(4)), progress=False)
        pids = ex.backend.worker_pids()
        assert pids
        for w in seen:
            assert w["sid"] == os.getsid(0), "the worker left the driver's session (and its CPU share)"
            # (the call runs in its job's process, in the group its worker leads)
            assert w["pgid"] in pids, "the worker is not the leader of its own process group"
            assert w["pgid"] != os.getpgid(0), "the worker is in the driver's process group (a terminal's ^C would reach it)"
            assert w["autogroup"] == _autogroup()
        for pid in pids:  # seen from the driver as well
            assert os.getsid(pid) == os.getsid(0)
            assert os.getpgid(pid) == pid
    finally:
        ex.shutdown()


_TTY_DRIVER = textwrap.dedent(
    """
    import fcntl, os, sys, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty is this session's terminal; this group its foreground
    attrs = termios.tcgetattr(0)
    attrs[3] |= termios.TOSTOP  # background writers are stopped (stty tostop)
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    import wrenpack

    def hello(x):
        print("from the call", x, flush=True)
        return x + 1

    f = wrenpack.remote(hello, timeout=5, retries=0)
    print("result", f.remote(1).result(timeout=60), flush=True)
    """
)


def test_a_worker_writes_to_a_terminal_that_stops_background_writers(tmp_path):
    """The worker's process group is a background one on the user's terminal: with
    ``stty tostop`` its writes there must not stop it (it ignores SIGTTOU)."""
    script = tmp_path / "tty_driver.py"
    script.write_text(_TTY_DRIVER)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")},
        "PYTHONPATH": ROOT,
        "TMPDIR": str(tmp_path),
        "WRENPACK_STORAGE": str(tmp_path / "store"),
        "WRENPACK_CONCURRENCY": "1",
        "WRENPACK_PROGRESS": "false",
    }
    try:
        master, slave = os.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal here: {exc}")
    proc = subprocess.Popen([sys.executable, str(script)], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert "from the call 1" in text, text
    assert "result 2" in text, text
    assert proc.returncode == 0, text
