"""SIGTERM (kill, timeout, a cancelled CI job, docker stop) ends a driver as Ctrl-C does:
its calls are stopped and their objects removed (``wrenpack.executor.termination``).
Before, its default action ended the driver at once and a map_reduce's intermediates,
its jobs' stored arguments (and on Lambda, calls running on) stayed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_CACHE_DIR=str(tmp_path / "cache"),
               WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2", PYTHONPATH=str(REPO))
    return env


def _stored(tmp_path: Path) -> list[str]:
    root = tmp_path / "store"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


_MAP_REDUCE = """
    import os, sys, time, wrenpack
    def mapper(x):
        return [(x % 3, b"x" * 100_000)]  # (sections of the shuffle's objects in the store)
    def reducer(key, values):
        time.sleep(60)
    fut = wrenpack.map_reduce(mapper, range(6), reducer, partitions=3)
    shuffle = os.path.join(os.environ["WRENPACK_STORAGE"], "shuffle")
    while not any(f.startswith("m") for _d, _s, files in os.walk(shuffle) for f in files):
        time.sleep(0.02)
    time.sleep(0.3)
    print("ready", flush=True)
    fut.result()
"""


@pytest.mark.parametrize("to_group", [False, True], ids=["kill", "timeout"])
def test_a_map_reduce_ended_by_sigterm_leaves_nothing_in_the_store(tmp_path, to_group):
    """``kill PID`` signals the driver; ``timeout`` signals it, then its whole process group
    (the driver gets it twice: the second, within a second, is the same request, not "now")."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_MAP_REDUCE)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
        assert any(p.startswith("shuffle/") for p in _stored(tmp_path))
        proc.send_signal(signal.SIGTERM)
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _stored(tmp_path) == [], err  # (before: the shuffle's objects and owner record stayed)
    assert "Traceback" not in err and "still running at exit" in err, err


_OWN = """
    import os, signal, sys, time, wrenpack
    {setup}
    def f(x):
        return x
    assert wrenpack.remote(f).remote(1).result() == 1
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # (a SIGTERM that ended it would have done so at once)
    print("survived", flush=True)
"""


@pytest.mark.parametrize("setup, code, out", [
    ("signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))", 7, ""),  # the program's own handler
    ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", 0, "survived"),  # the program ignores it
], ids=["own-handler", "ignored"])
def test_a_programs_own_sigterm_choice_is_left_alone(tmp_path, setup, code, out):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_OWN.format(setup=setup))], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (code, out), proc.stderr


def test_a_forked_child_and_a_repeated_sigterm_end_at_once(tmp_path):
    """A process forked from the driver inherits the handler but ends by SIGTERM's default
    action, as before; in the driver, a SIGTERM more than a second after the first ends it
    at once (a cleanup that hangs can still be ended)."""
    script = textwrap.dedent("""
        import os, signal, sys, time, wrenpack
        def f(x):
            return x
        assert wrenpack.remote(f).remote(1).result() == 1
        ready, said = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(said, b"1")  # (a signal before the child's Python is set up after the fork is dropped)
            time.sleep(30)
            os._exit(0)
        os.read(ready, 1)
        time.sleep(0.2)
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except SystemExit as exc:
            print(exc.code, flush=True)
        time.sleep(1.2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("survived", flush=True)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split() == [str(int(signal.SIGTERM)), str(128 + signal.SIGTERM)], proc.stderr
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - t0 < 5, proc.stderr
