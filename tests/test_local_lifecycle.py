"""The local backend's lifecycle: death seen from the process, the whole tree
killed, nothing left behind, workers that never outlive their driver, and the
call-lifecycle hooks (on_start, cancel, draining shutdown)."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import wrenpack
from tests.processes import alive, interruptible
from wrenpack.backends.local.linux import CgroupFactory, PidsCgroupFactory
from wrenpack.backends.local import LocalBackend
from wrenpack.errors import ConfigError
from wrenpack.storage.local import LocalStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_dead(pids, within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def _cgroup_bases() -> list[str]:
    factories = (CgroupFactory.detect(), PidsCgroupFactory.detect())
    return [factory.base for factory in factories if factory is not None]


def _leftover_cgroups(driver_pid: int) -> list[str]:
    return [path for base in _cgroup_bases() for path in glob.glob(os.path.join(base, f"wrenpack-{driver_pid}-*"))]


# --------------------------------------------------------------------------- the call's children


def _fork_setsid_holder(daemon: bool, pidfile: str) -> None:
    """Fork a child in its own session that keeps every inherited fd (the worker's
    socket too) and outlives the call; ``daemon``: double fork, so its parent is gone."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if daemon and os.fork() != 0:
            os._exit(0)
        with open(pidfile, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(120)
        os._exit(0)
    if daemon:
        os.waitpid(pid, 0)


@pytest.mark.parametrize("daemon", [False, True], ids=["setsid-child", "daemon-child"])
def test_timeout_is_on_time_whatever_the_calls_children_hold(tmp_path, daemon):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    pidfile = str(tmp_path / "pids")

    def stuck(pidfile):
        import signal as sig

        _fork_setsid_holder(daemon, pidfile)
        sig.pthread_sigmask(sig.SIG_BLOCK, [sig.SIGALRM])  # the soft deadline cannot fire
        time.sleep(60)

    try:
        f = wrenpack.remote(stuck, executor=ex, timeout=1)
        t0 = time.monotonic()
        fut = f.remote(pidfile)
        with pytest.raises(wrenpack.TaskTimeout, match="was stopped"):
            fut.result(timeout=30)
        assert time.monotonic() - t0 < 1 + 5
        # The slot is free at once: the next call runs.
        t1 = time.monotonic()
        assert wrenpack.remote(abs, executor=ex).remote(-3).result(timeout=10) == 3
        assert time.monotonic() - t1 < 5
        with open(pidfile) as fh:
            children = [int(line) for line in fh.read().split()]
        assert children and _wait_dead(children, 2) == [], "the call's setsid'd child survived the kill"
    finally:
        ex.shutdown()


def test_timeout_kills_children_without_cgroups(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    ex._backend = LocalBackend(concurrency=1, use_cgroups=False)
    pidfile = str(tmp_path / "pids")

    def stuck(pidfile):
        import signal as sig

        _fork_setsid_holder(True, pidfile)
        sig.pthread_sigmask(sig.SIG_BLOCK, [sig.SIGALRM])
        time.sleep(60)

    try:
        t0 = time.monotonic()
        with pytest.raises(wrenpack.TaskTimeout):
            wrenpack.remote(stuck, executor=ex, timeout=1).remote(pidfile).result(timeout=30)
        assert time.monotonic() - t0 < 6
        with open(pidfile) as fh:
            children = [int(line) for line in fh.read().split()]
        assert _wait_dead(children, 2) == []
    finally:
        ex.shutdown()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("keep_warm", [0, -1, math.nan, math.inf, "x"])
def test_nonsense_keep_warm_is_refused(keep_warm):
    with pytest.raises(ConfigError, match="keep_warm"):
        LocalBackend(keep_warm=keep_warm)


@pytest.mark.parametrize("concurrency", [0, -2, 1.5])
def test_nonsense_concurrency_is_refused(concurrency):
    with pytest.raises(ConfigError, match="concurrency"):
        LocalBackend(concurrency=concurrency)


# --------------------------------------------------------------------------- hooks and shutdown


def _nap(s):
    time.sleep(s)
    return s


def test_on_start_cancel_and_draining_shutdown(captured):
    calls = captured(_nap, [0.3, 0.3, 0.3, 0.3])
    invs, done, started = calls.invocations, calls.done, calls.started
    backend = LocalBackend(concurrency=1)
    backend.invoke_many(invs)
    assert backend.cancel(invs[3]) is True
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started == [invs[0].key[1]]
    assert backend.cancel(invs[0]) is False  # a worker has it
    backend.shutdown(wait=True)  # drains: the queued calls still run
    assert sorted(done) == [inv.key[1] for inv in invs[:3]]
    assert all(r.error is None and r.status["exit"] == "ok" for r in done.values())
    assert started == [inv.key[1] for inv in invs[:3]]
    assert not os.path.exists(backend.work_dir)


def test_shutdown_without_wait_fails_queued_and_running_calls_clearly(captured):
    calls = captured(_nap, [30, 30, 30])
    invs, done, started = calls.invocations, calls.done, calls.started
    backend = LocalBackend(concurrency=1)
    backend.invoke_many(invs)
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = backend.worker_pids()
    t0 = time.monotonic()
    backend.shutdown(wait=False)
    assert time.monotonic() - t0 < 5
    assert sorted(done) == sorted(inv.key[1] for inv in invs)
    messages = [str(done[inv.key[1]].error) for inv in invs]
    assert "shut down before the call finished" in messages[0]
    assert all("shut down before the call started" in m for m in messages[1:])
    assert _wait_dead(pids, 1) == []
    with pytest.raises(wrenpack.WrenpackError, match="shut down"):
        backend.invoke_many(invs[:1])


# --------------------------------------------------------------------------- whole programs

_PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    import wrenpack

    @wrenpack.remote(memory=256, timeout=60)
    def work(x):
        {body}

    futures = work.map(range({n}))
    {after}
    """
)


def _program(tmp_path, body="return x * 2", n=6, after="print(wrenpack.get(futures))", **env):
    script = tmp_path / "prog.py"
    script.write_text(_PROGRAM.format(body=body, n=n, after=after))
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")},
        "PYTHONPATH": ROOT,
        "TMPDIR": str(tmp),
        "WRENPACK_STORAGE": str(tmp_path / "store"),
        "WRENPACK_CONCURRENCY": "2",
        "WRENPACK_PROGRESS": "false",
        **env,
    }
    return script, tmp, full_env


# Two runs by default (a second run in the same folder: what the first left would show); five with -m slow,
# for an exit race that shows once in a while
@pytest.mark.parametrize("runs", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_readme_programs_leave_nothing_behind(tmp_path, runs):
    script, tmp, env = _program(tmp_path)
    for run in range(runs):
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == str([x * 2 for x in range(6)])
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert glob.glob(str(tmp / "wrenpack-local-*")) == [], f"run {run}: temp directory left"
        assert _leftover_cgroups(proc.pid) == [], f"run {run}: cgroups left"


_LONG_CALLS = textwrap.dedent(
    """
    import subprocess
    subprocess.Popen(["sleep", "120"], start_new_session=True)  # a child of the call, in its own session
    time.sleep(120)
    """
).strip().replace("\n", "\n    ")

_SHOW_WORKERS = textwrap.dedent(
    """
    from wrenpack.executor import default_executor
    backend = default_executor().backend
    while len(backend.worker_pids()) < 2 or any(not w.inflight for w in backend._workers):
        time.sleep(0.05)
    print(" ".join(map(str, backend.worker_pids())), flush=True)
    time.sleep(120)
    """
).strip()


def _sleep_children(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are a call's ``sleep 120`` child."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).cmdline()[:2] == ["sleep", "120"]:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def _descendants_of(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            out += [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_workers_stop_when_the_driver_is_interrupted_or_killed(tmp_path, how):
    script, tmp, env = _program(tmp_path, body=_LONG_CALLS, n=4, after=_SHOW_WORKERS)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    try:
        line = proc.stdout.readline()
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 20
        while True:  # each worker runs a call that starts a child (the program waited 0.5 s for them before)
            everything = workers + _descendants_of(workers)
            if (len(everything) >= 4 and len(_sleep_children(everything)) >= 2) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(everything) >= 4 and len(_sleep_children(everything)) >= 2
        os.kill(proc.pid, how)
        proc.wait(timeout=10)
        assert _wait_dead(everything, 5) == [], "processes of the map outlived the driver"
        assert _leftover_cgroups(proc.pid) == []
        assert glob.glob(str(tmp / "wrenpack-local-*")) == []
        err = proc.stderr.read()
        if how == signal.SIGKILL:
            # The workers stop their calls on purpose: nothing is reported after the program ended.
            assert err == ""
        elif how == signal.SIGTERM:  # its calls stopped, then ended by SIGTERM (wrenpack.executor.termination)
            assert proc.returncode == -signal.SIGTERM
            assert err.splitlines() == ["wrenpack: 4 call(s) not finished at exit; stopping them and removing their "
                                        "objects from the store"], err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_cgroups_left_by_processes_that_are_gone_are_removed_and_live_ones_kept(tmp_path):
    """A driver killed together with its workers removes nothing: the next backend's start
    removes the empty groups of wrenpack processes that are gone (before, they stayed), and
    leaves those of a process that runs, or that hold a task."""
    bases = [f.base for f in (CgroupFactory.detect(), PidsCgroupFactory.detect()) if f is not None]
    if not bases:
        pytest.skip("no cgroups this process may make (cgroup v1 memory or pids), so none can be left behind")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        made = []
        for base in bases:
            for name in (f"wrenpack-{dead}-w1", f"wrenpack-probe-{dead}", f"wrenpack-{runner.pid}-w1"):
                os.mkdir(os.path.join(base, name))
                made.append(os.path.join(base, name))
        CgroupFactory.detect(), PidsCgroupFactory.detect()  # (what a local backend's start does)
        left = [p for p in made if os.path.isdir(p)]
        assert left == [os.path.join(b, f"wrenpack-{runner.pid}-w1") for b in bases]  # (its process runs)
    finally:
        runner.kill()
        runner.wait()
        for p in made:
            with contextlib.suppress(OSError):
                os.rmdir(p)


def _pid_of_call(_: int) -> int:
    return os.getpid()


def test_two_backends_in_one_process_each_hold_their_workers_to_their_own_cgroups(tmp_path):
    """Worker cgroups are named by the driver's pid and the worker's number: two
    backends alive at once (or one still being stopped) each numbered their first
    worker 1, and the second worker found the name taken and ran without limits."""
    first, second = LocalBackend(concurrency=1), LocalBackend(concurrency=1)
    if first._cgroups is None:
        first.shutdown()
        second.shutdown()
        pytest.skip("memory cgroups (v1, root) are unavailable here")
    executors = [wrenpack.Executor(storage=str(tmp_path / name), backend=b) for name, b in (("a", first), ("b", second))]
    try:
        for ex in executors:
            assert ex.submit(_pid_of_call, 0).result(timeout=60)
        (w1,), (w2,) = first._workers, second._workers
        assert w1.cgroup is not None and w2.cgroup is not None, "a worker runs without its memory cgroup"
        assert w1.cgroup.path != w2.cgroup.path
    finally:
        for ex in executors:
            ex.shutdown()


def _square(x):
    return x * x


def _tree_gone_soon(tree: list[int], within_s: float = 0.5) -> list[tuple[int, str]]:
    """Those of ``tree`` still there (zombies included) ``within_s`` later (none: at once)."""
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        left = []
        for pid in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                left.append((pid, psutil.Process(pid).status()))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_shutdown_leaves_no_process_of_the_pool_not_even_a_zombie(tmp_path):
    """A worker killed at shutdown could not collect its zygote, job process and spare:
    they became zombies of init, which here (and in a container whose first process is
    the driver) never collects them, so every executor left five behind for good. Idle
    workers now exit by themselves, collecting them first."""
    import psutil

    with wrenpack.Executor(concurrency=2, storage=str(tmp_path / "s")) as ex:
        assert list(ex.map(_square, range(4))) == [0, 1, 4, 9]
        workers = [psutil.Process(pid) for pid in ex.backend.worker_pids()]  # (this executor's, not the suite's)
        tree = workers + [p for w in workers for p in w.children(recursive=True)]
        assert len(tree) >= 4  # (two workers, each with its zygote and its job's process)
    # (this machine's init collects orphans within a second or two; one that never does would keep them)
    assert _tree_gone_soon([p.pid for p in tree]) == []


_EXIT_WITH_CALLS_RUNNING = """
import os, sys, time, psutil, wrenpack
def running(path):
    open(path, "a").close()
    time.sleep(60)
ex = wrenpack.Executor(concurrency=2, storage=sys.argv[1])
started = [os.path.join(sys.argv[1], f"started-{i}") for i in range(2)]
futs = [ex.submit(running, path) for path in started]
while not all(os.path.exists(p) for p in started):
    time.sleep(0.02)
workers = [psutil.Process(pid) for pid in ex.backend.worker_pids()]
print(" ".join(str(p.pid) for w in workers for p in [w, *w.children(recursive=True)]), flush=True)
"""


def test_an_exit_with_calls_running_leaves_no_zombie_either(tmp_path):
    """A worker busy with a call when the program ends (its last line, Ctrl-C, SIGTERM)
    was killed with its processes at once, so it could not collect them: its zygote, job
    process and spare became zombies of init (collected here a second or two later; by a
    container's first process that does not collect orphans, never). It is asked to end
    (SIGTERM): it ends its call's processes, collects them, and exits."""
    store = tmp_path / "s"
    store.mkdir()
    proc = subprocess.run([sys.executable, "-c", _EXIT_WITH_CALLS_RUNNING, str(store)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "WRENPACK_PROGRESS": "false", "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    tree = [int(pid) for pid in proc.stdout.split()]
    assert len(tree) >= 4, proc.stdout  # (two workers, each with its zygote and its job's process)
    assert _tree_gone_soon(tree) == []


def _runs_until_cancelled(path: str, ignore_sigterm: bool) -> int:
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(path, "a").close()
    time.sleep(60)
    return 0


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["worker-ends", "worker-ignores-sigterm"])
def test_a_cancelled_running_call_leaves_no_zombie_and_stops_even_where_sigterm_is_ignored(tmp_path, monkeypatch,
                                                                                           ignore_sigterm):
    """Cancelling a running call ends its worker, which is asked to end its processes and
    collect them (a worker killed with them at once left them zombies of init). One that
    does not end (a call run in the worker's own process that ignores SIGTERM, where
    ``fork`` is missing) is killed half a second later: the call stops all the same."""
    import psutil

    if ignore_sigterm:
        monkeypatch.setenv("WRENPACK_ZYGOTE", "1")  # (the calls run in the worker's own process)
    started = str(tmp_path / "started")
    with wrenpack.Executor(concurrency=1, storage=str(tmp_path / "s"), retries=0) as ex:
        fut = ex.submit(_runs_until_cancelled, started, ignore_sigterm)
        deadline = time.monotonic() + 60
        while not os.path.exists(started) and time.monotonic() < deadline:
            time.sleep(0.02)
        (worker,) = [psutil.Process(pid) for pid in ex.backend.worker_pids()]
        tree = [worker.pid] + [p.pid for p in worker.children(recursive=True)]
        began = time.monotonic()
        assert wrenpack.cancel(fut) == [True]
        with pytest.raises(cf.CancelledError):
            fut.result(timeout=10)
        assert time.monotonic() - began < 3
        assert _tree_gone_soon(tree) == []
        # (the worker that ended removed the backend's work folder, where the next worker starts, once empty)
        assert os.path.isdir(ex.backend.work_dir)
        assert ex.submit(_square, 3).result(timeout=60) == 9  # (a new worker takes the next call)


def test_work_folders_of_drivers_that_are_gone_are_removed_by_the_next_backend(tmp_path, monkeypatch):
    """A driver killed together with its workers (SIGKILL to its process group) removes
    nothing, and no worker is left to: its work folder (workers' /tmp) stayed in the
    temporary directory for good. The next local backend removes those of drivers that
    are gone, and leaves a running driver's alone."""
    import tempfile

    from wrenpack.backends.local.scheduler import WORK_DIR_PREFIX

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    # (a temporary directory of this test's own: in the shared /tmp, a backend the other test
    # process (-n 2) starts meanwhile could remove the stale folder, and this backend's removal went unchecked)
    root = str(tmp_path / "tmp")
    os.mkdir(root)
    monkeypatch.setattr(tempfile, "tempdir", root)
    stale = os.path.join(root, f"{WORK_DIR_PREFIX}{dead_pid}-abc123")
    live = os.path.join(root, f"{WORK_DIR_PREFIX}1-abc123")  # (pid 1 runs)
    for folder in (stale, live):
        os.makedirs(os.path.join(folder, "w1", "tmp"), exist_ok=True)
    try:
        with wrenpack.Executor(concurrency=1, storage=str(tmp_path / "s")) as ex:
            assert ex.submit(_square, 3).result(timeout=60) == 9
            assert os.path.basename(ex.backend.work_dir).startswith(f"{WORK_DIR_PREFIX}{os.getpid()}-")
        assert not os.path.exists(stale) and os.path.isdir(live)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


_RETURNS_A_FUTURE = textwrap.dedent("""
    import os, wrenpack

    @wrenpack.remote
    def f(x):
        return x + 1

    @wrenpack.remote
    def launcher(x):
        return f.remote(x)  # a job launched in the call's process, its future returned

    print(os.getpid(), flush=True)
    assert launcher.remote(1).result(timeout=60).result(timeout=60) == 2
""")


def test_a_program_whose_call_returns_a_future_leaves_nothing_behind(tmp_path):
    """A future returned from a remote call: the job it names was launched in the
    call's process, which is gone before anyone removed its result object (kept for
    the reference), and whose own local backend made its workers' cgroups inside the
    worker's. The store kept that object after the program's normal exit (with no
    owner record, so `clean --stale` kept it too), and the nested cgroups stayed, the
    worker's with them. The program that received the future removes its job at the
    end, and a worker's cgroups go with the ones inside them."""
    store = tmp_path / "store"
    script = tmp_path / "returns_a_future.py"
    script.write_text(_RETURNS_A_FUTURE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, WRENPACK_STORAGE=str(store)), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    left = [os.path.relpath(os.path.join(d, f), store) for d, _, files in os.walk(store) for f in files]
    assert left == [], left
    groups = glob.glob(f"/sys/fs/cgroup/**/wrenpack-{pid}-*", recursive=True)
    for group in sorted(groups, key=len, reverse=True):  # (removed for the next runs: deepest first)
        with contextlib.suppress(OSError):
            os.rmdir(group)
    assert groups == []


def _run_program(tmp_path, source: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``source`` as a program in ``tmp_path``, its store ``tmp_path/store``; it must exit 0."""
    script = tmp_path / "program.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, WRENPACK_STORAGE=str(tmp_path / "store")), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    return out


_RETURNS_A_RUNNING_FUTURE = textwrap.dedent("""
    import os, sys, time, wrenpack

    @wrenpack.remote(retries=0)
    def f(x, marker):
        open(marker, "w").close()
        time.sleep(1.0)
        return x + 1

    @wrenpack.remote
    def launcher(x, marker):
        fut = f.remote(x, marker)
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:  # its worker runs it now
            time.sleep(0.01)
        return fut

    @wrenpack.remote
    def launcher_and_sleeper(x, marker):
        import subprocess
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the call's own: it ends with it
        return launcher.local(x, marker), sleeper.pid

    assert launcher.remote(1, sys.argv[1]).result(timeout=60).result(timeout=60) == 2
    os.remove(sys.argv[1])
    fut, sleeper = launcher_and_sleeper.remote(2, sys.argv[1]).result(timeout=60)
    assert fut.result(timeout=60) == 3
    print(sleeper)
""")


def test_a_job_a_call_launched_runs_on_after_the_call(tmp_path):
    """A call's end ended every process below its job's process, the workers of the job
    the call launched among them: that job's running call died (SIGKILL) as soon as the
    launching call returned its future, and its retry too when it started while the
    processes were being ended (CI's intermittent failure of the test above). Those
    workers are not the call's processes: the job runs on, as its Lambda invocations would."""
    out = _run_program(tmp_path, _RETURNS_A_RUNNING_FUTURE, str(tmp_path / "running"))
    assert "worker died" not in out.stderr, out.stderr
    sleeper = int(out.stdout.split()[-1])
    assert not os.path.exists(f"/proc/{sleeper}"), "the call's own process outlived it"


_LOSES_ITS_LAUNCHER = textwrap.dedent("""
    import sys, time, wrenpack
    from wrenpack.backends.local import LocalBackend

    @wrenpack.remote(retries=0)
    def f(x):
        time.sleep(30)
        return x + 1

    def launcher(x):
        return f.remote(x)

    def g(x):
        return x * 10

    # One worker: g's calls end the process that ran launcher, and the job it launched with it.
    with wrenpack.Executor(backend=LocalBackend(concurrency=1)) as ex:
        nested = wrenpack.remote(launcher, executor=ex).remote(1).result(timeout=60)
        assert wrenpack.remote(g, executor=ex).remote(2).result(timeout=60) == 20
        t0 = time.monotonic()
        try:
            nested.result(timeout=25)
        except wrenpack.WorkerLost as exc:
            print(f"{time.monotonic() - t0:.1f}", exc)
""")


def test_a_reference_to_a_job_lost_with_its_launcher_fails_instead_of_waiting(tmp_path):
    """A job launched inside a local call runs on the call's process's own workers, which
    end with that process (here: a call of another function on the one worker replaced it).
    Its result never comes, and the reference to it waited for it forever (or the user's
    timeout). Once the job's owner record says its owner and workers are gone, and its
    calls do not outlive them (a local job's), the reference fails: WorkerLost, naming why."""
    out = _run_program(tmp_path, _LOSES_ITS_LAUNCHER)
    waited, _, message = out.stdout.strip().partition(" ")
    assert float(waited) < 10, out.stdout
    assert "f:" in message and "ended" in message, message
    left = [os.path.relpath(os.path.join(d, name), tmp_path / "store")
            for d, _, files in os.walk(tmp_path / "store") for name in files]
    assert left == [], left


_RETURNS_A_FUTURE_OF_ANOTHER_STORE = textwrap.dedent("""
    import os, sys, wrenpack
    from wrenpack.worker import refs

    def f(x):
        return x + 1

    def launcher(x):
        # launched through the call's own default executor: the workers' store (WRENPACK_STORAGE)
        return wrenpack.remote(f).remote(x)

    class Forged:  # a reference the call makes up: another store's job, said to be launched in it
        def __init__(self, ref):
            self.ref = ref
        def __reduce__(self):
            return refs.rebuild, (self.ref,)

    def forger(victim_root, victim_job):
        job = refs._current[0]
        return Forged({"job_id": victim_job, "call_id": "00000", "label": "x", "chain": [job],
                       "store": {"type": "local", "root": victim_root}, "result_job": victim_job,
                       "result_call": "00000", "item": None})

    with wrenpack.Executor(storage=sys.argv[1]) as ex:
        assert wrenpack.remote(launcher, executor=ex).remote(1).result(timeout=60).result(timeout=60) == 2
        wrenpack.remote(forger, executor=ex).remote(sys.argv[2], sys.argv[3]).result(timeout=60)
""")


def test_a_future_a_call_returns_of_a_job_in_another_store_leaves_nothing_there(tmp_path):
    """The call launched its job through its own default executor, whose store (the
    workers' WRENPACK_STORAGE) is not the program's executor's: that job's owner record and
    result stayed after shutdown (only jobs in the executor's own store were removed). Now
    they go, once its result verifies with the secret derived for it; a reference the call
    made up, naming another job elsewhere, removes nothing."""
    workers_store, program_store, victim_store = tmp_path / "workers", tmp_path / "program", tmp_path / "victim"
    victim = LocalStore(str(victim_store))
    victim_job = "20260101-000000-0000f00d"
    victim.put(f"jobs/{victim_job}/result/0/00000.res", b"someone else's result")
    script = tmp_path / "returns_a_future_elsewhere.py"
    script.write_text(_RETURNS_A_FUTURE_OF_ANOTHER_STORE)
    out = subprocess.run([sys.executable, str(script), str(program_store), str(victim_store), victim_job],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, WRENPACK_STORAGE=str(workers_store)), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    for store in (workers_store, program_store):
        left = [os.path.relpath(os.path.join(d, f), store) for d, _, files in os.walk(store) for f in files]
        assert left == [], (store, left)
    assert victim.get(f"jobs/{victim_job}/result/0/00000.res") == b"someone else's result"


#: a function that launches a job inside its call and returns its future (``ret_slow``)
_RET_SLOW = textwrap.dedent("""
    import time, wrenpack

    def slow_add(x, secs):
        time.sleep(secs)
        return x + 1

    def ret_slow(x, secs):
        return wrenpack.remote(slow_add).remote(x, secs)
""")

_TWO_LEVELS = _RET_SLOW + textwrap.dedent("""
    def level2_ret(x):
        return wrenpack.remote(ret_slow).remote(x, 1.0)

    outer = wrenpack.remote(level2_ret).remote(5)
    middle = outer.result(timeout=60)
    del outer  # (as `f.remote(x).result()` drops it)
    print(middle.result(timeout=60).result(timeout=60))
""")


def test_two_levels_of_returned_futures_read_and_leave_nothing(tmp_path):
    """A call returns the future of a call that returns the future of a job it launched
    (probe15's finding 5). With the outer future dropped, the innermost one raised "this
    process does not hold the secret" (derived from the dropped job's secret, forgotten
    with it); and the innermost job's owner record and result stayed after a normal exit.
    A reference in a result read through a reference now has its secret derived when it
    is read, and the job it names is removed with the program's executor."""
    store = tmp_path / "store"
    out = _run_program(tmp_path, _TWO_LEVELS)
    assert out.stdout.split() == ["6"], out.stdout
    left = [os.path.relpath(os.path.join(d, f), store) for d, _, files in os.walk(store) for f in files]
    assert left == [], left


_LOST_REF_PASSED_ON = _RET_SLOW + textwrap.dedent("""
    def use_fut(fut):
        t0 = time.monotonic()
        try:
            return fut.result(timeout=25)
        except wrenpack.WorkerLost:
            return f"lost after {time.monotonic() - t0:.1f}"

    wrenpack.configure(concurrency=1)  # (use_fut's call ends the process that ran ret_slow, and its job)
    inner = wrenpack.remote(ret_slow).remote(5, 1.0).result(timeout=60)
    print(wrenpack.remote(use_fut).remote(inner).result(timeout=60))
""")


def test_a_lost_job_s_reference_passed_into_a_call_fails_there_too(tmp_path):
    """probe15's finding 6: in the program, a reference to a call of a job lost with its
    launcher raised WorkerLost within seconds; passed into a call, it waited out the
    call's whole timeout there (its job process had not imported the client's owner
    records, which tell that the job's owner is gone)."""
    out = _run_program(tmp_path, _LOST_REF_PASSED_ON)
    words = out.stdout.split()
    assert words[:2] == ["lost", "after"] and float(words[2]) < 10, out.stdout


_NESTED_BIGGER = textwrap.dedent("""
    import wrenpack

    def hog(mb):
        b = bytearray(mb * 1024 * 1024)
        for i in range(0, len(b), 4096):
            b[i] = 1
        return mb

    @wrenpack.remote(memory=256, retries=0)
    def outer(mb):
        return wrenpack.remote(hog, memory=1024, retries=0).remote(mb).result(timeout=60)

    try:
        print(outer.remote(400).result(timeout=120))
    except wrenpack.MemoryLimitExceeded as exc:
        print(exc)
""")


def test_a_call_launched_inside_a_call_stopped_at_that_call_s_memory_says_so(tmp_path):
    """probe15's finding 7: a call launched inside a 256 MB call with memory=1024, stopped
    when it passed 256 MB (its worker's cgroup is inside the launching call's), was said to
    have exceeded its own 1024 MB limit, with a peak of 1024 MB: raising its memory= could
    not help. The error names the limit that stopped it, and whose it is."""
    from wrenpack.backends.local.linux import CgroupFactory

    if CgroupFactory.detect() is None:
        pytest.skip("no memory cgroups here: the nested call is not stopped by the launching call's limit")
    out = _run_program(tmp_path, _NESTED_BIGGER, timeout=180)
    assert "stopped at 256 MB, the memory limit of the call that launched it" in out.stdout, out.stdout


_KILLED_WITH_NESTED_CALLS = textwrap.dedent("""
    import os, sys, time, wrenpack

    def nested_slow(marks):
        open(os.path.join(marks, f"start-{os.getpid()}"), "w").close()
        time.sleep(30)

    @wrenpack.remote
    def outer(marks):
        return wrenpack.get(wrenpack.remote(nested_slow, retries=0).map([marks, marks]), timeout=60)

    print(os.getpid(), flush=True)
    outer.remote(sys.argv[1]).result(timeout=60)
""")


def test_a_program_killed_while_nested_calls_run_leaves_no_cgroup(tmp_path):
    """probe15's finding 10: SIGKILLed while calls launched inside a call ran, a program left
    its workers' cgroups (empty) until the next local backend started: the worker, ending
    when its driver died, could not remove its own group while the nested workers' groups
    were inside it. Without nested calls none stayed."""
    from wrenpack.backends.local.linux import CgroupFactory

    if CgroupFactory.detect() is None:
        pytest.skip("no memory cgroups here")
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_WITH_NESTED_CALLS)
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path),
                            env=dict(os.environ, WRENPACK_STORAGE=str(tmp_path / "store")))
    try:
        pid = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        while len(os.listdir(marks)) < 2:  # (both nested calls run)
            assert time.monotonic() < deadline and proc.poll() is None, "the nested calls did not start"
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    while (left := glob.glob(f"/sys/fs/cgroup/**/wrenpack-{pid}-*", recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in left:  # (removed for the next runs: the groups inside first)
        for below, _dirs, _files in os.walk(group, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(below)
    assert left == []


def _blocked_signals(_: int) -> list[int]:
    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_a_call_runs_with_no_signal_blocked(tmp_path):
    """A thread's blocked signals are inherited by the processes it starts, across exec:
    with them blocked in wrenpack's threads (tried against a stopped driver's SIGTERM), the
    workers the dispatcher thread starts ran with SIGTERM, SIGINT and SIGALRM blocked, and
    every call with them."""
    with wrenpack.Executor(concurrency=1, storage=str(tmp_path / "s")) as ex:
        assert ex.submit(_blocked_signals, 0).result(timeout=60) == []
