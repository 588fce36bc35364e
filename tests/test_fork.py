"""A fork of a driver (``os.fork``, multiprocessing's fork start method) is another driver.

probe17's findings 1 and 2: a forked child used the executor it inherited, the parent's, and
sent its calls over the parent's worker sockets: replies went to whichever process read
first, so a child's future got another child's result and 11,776 of the parent's 20,000 calls
failed; a child that exited normally cancelled the parent's running calls; and a child forked
while a parent thread held the futures' shared lock hung on any future, a new one too.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading

import pytest

import wrenpack
from wrenpack import futures as futures_module

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX's")


def _ident(x):
    return x


def _slow(x):
    import time

    time.sleep(0.4)
    return x


def _in_child(body) -> dict:
    """Run ``body()`` in a forked child; what it returned (JSON), or why it failed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: never back into pytest)
        os.close(read)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(60)  # (a child that hangs ends, and the test fails, rather than waiting for good)
        try:
            out = {"ok": body()}
        except BaseException as exc:  # noqa: BLE001
            out = {"raised": type(exc).__name__, "message": str(exc)}
        os.write(write, json.dumps(out).encode())
        os.close(write)
        sys.stdout.flush()
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return json.loads(data or b"{}")


def test_a_fork_gets_its_own_default_executor_and_leaves_the_parents_calls_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    wrenpack.configure(concurrency=2)
    try:
        running = wrenpack.remote(_slow).map(range(6))  # (the parent's, running while it forks)
        got = [_in_child(lambda k=k: wrenpack.remote(_ident).remote(1000 + k).result(timeout=60)) for k in range(3)]
        assert got == [{"ok": 1000}, {"ok": 1001}, {"ok": 1002}]
        assert wrenpack.get(running, timeout=60) == list(range(6))
    finally:
        wrenpack.configure()


def test_an_inherited_executor_and_its_futures_refuse_in_one_line(tmp_path):
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        pending = wrenpack.remote(_slow, executor=ex).remote(1)
        launched = _in_child(lambda: wrenpack.remote(_ident, executor=ex).remote(1).result(timeout=10))
        waited = _in_child(lambda: pending.result(timeout=10))
        shut = _in_child(lambda: ex.shutdown(wait=True))  # (closes it there only)
        assert pending.result(timeout=60) == 1  # (the parent's call ran on)
    for got in (launched, waited):
        assert got.get("raised") == "ExecutorShutdown", got
        assert f"made by process {os.getpid()}" in got["message"] and "is a fork of it" in got["message"], got
        assert "\n" not in got["message"]
    assert shut == {"ok": None}


def test_a_fork_made_while_a_thread_held_the_futures_lock_can_use_futures():
    held, release = threading.Event(), threading.Event()

    def hold():
        with futures_module._CONDITION:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        def fresh_future():
            fut = wrenpack.WrenFuture()
            fut.set_result(7)
            return fut.result(timeout=5)

        assert _in_child(fresh_future) == {"ok": 7}
    finally:
        release.set()
        holder.join(10)


_POOL = textwrap.dedent("""
    import multiprocessing, wrenpack

    def ident(x):
        return x

    def task(x):
        return wrenpack.remote(ident).remote(1000 + x).result(timeout=60)

    if __name__ == "__main__":
        running = wrenpack.remote(ident).map(range(2000))
        with multiprocessing.get_context("fork").Pool(3) as pool:
            children = pool.map(task, range(6))
        assert children == [1000 + x for x in range(6)], children
        assert wrenpack.get(running, timeout=120) == list(range(2000))
        print("ok")
""")


def test_a_fork_pool_using_wrenpack_while_the_parents_map_runs(tmp_path):
    """probe17's repro, in small: each pool task's call returns its own value, and the parent's map all of its."""
    import subprocess

    script = tmp_path / "prog.py"
    script.write_text(_POOL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout, out.stderr[-2000:])


_POOL_TERMINATED = textwrap.dedent("""
    import multiprocessing, os, wrenpack

    def ident(x):
        return x

    def task(x):
        return wrenpack.remote(ident).remote(x).result(timeout=60)

    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:  # (its exit terminates the workers)
            assert pool.map(task, range(4)) == [0, 1, 2, 3]
        print("ok")
""")


def test_a_terminated_pool_worker_that_used_wrenpack_leaves_no_work_folder(tmp_path):
    """A pool's worker ends its SIGTERM (``Pool.__exit__``) through wrenpack's cleanup thread and
    through multiprocessing's finalizers in its main thread, both running the exit cleanup; the
    main thread's os._exit cut the thread's run short and left the local backend's work folder
    (in 2 runs of 6 pools). The second run now waits for the first."""
    import subprocess
    import time

    script = tmp_path / "prog.py"
    script.write_text(_POOL_TERMINATED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env.get("PYTHONPATH", ""))
    left = []
    for run in range(6):  # (each in a TMPDIR of its own: a later backend's start sweeps what a dead one left)
        tmp = tmp_path / f"tmp{run}"
        tmp.mkdir()
        out = subprocess.run([sys.executable, str(script)], env=dict(env, TMPDIR=str(tmp)), capture_output=True,
                             text=True, timeout=240)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
        time.sleep(0.3)
        left += [p.name for p in tmp.iterdir() if p.name.startswith("wrenpack")]
    assert left == []
