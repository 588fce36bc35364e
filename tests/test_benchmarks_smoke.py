"""The benchmarks run to their end on small inputs: a figure quoted from one must
come from a script that still works. Each runs as users run it (a fresh
interpreter, its own command line), with inputs small enough for seconds."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _temporary(root) -> set[str]:
    """What the benchmarks could leave in the temporary directory ``root`` (their folders, tempfile's)."""
    return {n for n in os.listdir(root) if n.startswith(("tmp", "wrenpack-bench-", "wrenpack-cost-", "bench-spawn-"))}


def _run(tmp_path, script: str, *args: str, timeout: float = 240) -> str:
    # (a temporary directory of the benchmark's own: the suite runs in two processes (-n 2), and what
    # the other's tests make meanwhile in the shared /tmp is not this benchmark's leftover)
    root = tmp_path / "tmp"
    root.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(BENCH), env=dict(os.environ, TMPDIR=str(root)))
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    # (a benchmark leaves nothing behind either: latency_path left an empty store folder per driver run)
    left = sorted(_temporary(root))
    assert left == [], f"{script} left {left} in the temporary directory"
    return proc.stdout


def test_checkpoint_overhead_with_calls_too_short_to_save_says_so(tmp_path):
    """Calls that end before their first checkpoint save nothing: the benchmark used to
    end in a StatisticsError (the median of no save times) after its timings."""
    out = _run(tmp_path, "bench_checkpoint_overhead.py", "--steps", "10", "--step-ms", "5", "--timeout", "1.0", "--rounds", "5")
    assert "no checkpoint was saved" in out
    assert "overhead ratio checkpointed/uninterrupted" in out


def test_s3_shuffle_plan_prints_its_plan(tmp_path):
    out = _run(tmp_path, "bench_s3_shuffle_plan.py", "--size", "10GB", "--functions", "20")
    assert "prefix" in out.lower()


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("bench_map_vs_processpool.py", ["--rounds", "1", "--calls", "50", "--many-calls", "200", "--latency-calls", "50",
                                     "--data-calls", "5", "--data-mib", "1", "--cpu-calls", "4", "--cpu-s", "0.02",
                                     "--scale", "0.1"]),
    ("bench_sort.py", ["--size", "20MB", "--rounds", "1"]),
    ("bench_wordcount.py", ["--size", "5MB", "--rounds", "1"]),
    ("latency_path.py", ["--rounds", "1", "--calls", "100"]),
    ("bench_spawn.py", ["--calls", "4", "--rounds", "1"]),
    ("bench_auth_overhead.py", ["--calls", "50", "--big-calls", "2", "--mib", "1", "--rounds", "1"]),
    ("bench_lambda_cost.py", ["--sim", "--calls", "50", "--rounds", "1"]),
    ("bench_lambda_scale.py", ["--calls", "500", "--concurrency", "50", "--rounds", "1"]),
    ("bench_shuffle_path.py", ["--size", "20MB", "--rounds", "1"]),
    ("sort_stages.py", ["--size", "20MB"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_benchmark_runs_on_small_inputs(script, args, tmp_path):
    _run(tmp_path, script, *args, timeout=600)


# --------------------------------------------------------------------------- SIGTERM


def _bench_env(tmp_path) -> dict[str, str]:
    """A benchmark's environment: its own temporary directory and store, to see what it leaves."""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(TMPDIR=str(tmp_path / "tmp"), WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false",
               PYTHONPATH=os.path.dirname(BENCH) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _hogs(proc: "psutil.Process") -> list:  # noqa: F821
    import psutil

    try:
        return [c for c in proc.children(recursive=True) if "while True: pass" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def _alive(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE  # (an orphan's zombie: ended, its new parent not reaping)
    except psutil.Error:
        return False


def _cmd(p) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())[:100]
    except psutil.Error:
        return f"pid {p.pid}"


def _sigterm_when_loaded(tmp_path, script: str, *args: str, start_s: float = 60) -> tuple[int, str, list, int]:
    """Start ``script --hogs 1 ...``, SIGTERM it as soon as its hog runs; returns its exit
    status, its output, the processes it had then that are still alive 10 s after it
    ended (killed here, so a failing run leaves no spinning orphan behind), and its pid."""
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, os.path.join(BENCH, script), "--hogs", "1", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_bench_env(tmp_path), cwd=tmp_path)
    me = psutil.Process(proc.pid)
    family: list = []
    try:
        deadline = time.monotonic() + start_s
        while not _hogs(me):
            assert proc.poll() is None and time.monotonic() < deadline, f"{script} never started its hog"
            time.sleep(0.05)
        family = me.children(recursive=True)
        proc.send_signal(15)
        try:  # (its children hold its stdout: it ends only when they all have)
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            out = f"(stdout still open 30 s after SIGTERM: {len([p for p in family if p.is_running()])} processes "\
                  "of it alive)"
        psutil.wait_procs(family, timeout=10)
        return proc.poll(), out, [_cmd(p) for p in family if _alive(p)], proc.pid
    finally:
        for p in family + [me]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait()


def test_sigterm_ends_a_benchmark_with_its_hog_and_temporary_folder(tmp_path):
    """SIGTERM ended the driver at once (wrenpack's handler: its cleanup, then SIGTERM's
    default action), so no ``with`` block ran: the ``--hogs`` busy loop spun on at 100% of a
    CPU, an orphan holding the benchmark's stdout (a ``$(...)`` or ``| tee`` of it never
    ended), and the store folder stayed in $TMPDIR."""
    status, out, alive, _ = _sigterm_when_loaded(tmp_path, "bench_checkpoint_overhead.py", "--rounds", "50",
                                              "--steps", "200", "--step-ms", "5")
    assert alive == [], f"left running: {alive}\n{out}"
    assert status == 128 + 15, out
    assert "SIGTERM: stopping" in out and "Traceback" not in out, out
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.slow
def test_sigterm_ends_bench_map_vs_processpool_with_all_its_pools(tmp_path):
    """ProcessPoolExecutor, multiprocessing.Pool and loky (joblib) workers and their
    resource trackers outlived the driver, with the hog."""
    status, out, alive, pid = _sigterm_when_loaded(tmp_path, "bench_map_vs_processpool.py", "--only", "cpu,latency",
                                                   "--rounds", "50", "--cpu-calls", "10", "--cpu-s", "0.05")
    assert alive == [], f"left running: {alive}\n{out}"
    assert status == 128 + 15, out
    assert os.listdir(tmp_path / "tmp") == []
    # (joblib's memmapping folders and loky's semaphores, which its resource tracker removes)
    shm = "/dev/shm"
    left = [n for n in os.listdir(shm) if n.startswith((f"joblib_memmapping_folder_{pid}_", f"sem.loky-{pid}-"))] \
        if os.path.isdir(shm) else []
    assert left == []


def test_a_hog_ends_with_its_benchmark_even_when_it_is_killed(tmp_path):
    """SIGKILL runs no cleanup at all: the hog asks the kernel to end it with its parent."""
    import time

    import psutil

    code = (f"import sys, time; sys.path.insert(0, {BENCH!r}); import _fair\n"
            "with _fair.Hogs(1) as h:\n    print(h.pids[0], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_bench_env(tmp_path))
    hog = psutil.Process(int(proc.stdout.readline()))
    try:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(hog) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(hog), "the hog outlived its benchmark"
    finally:
        if _alive(hog):
            hog.kill()  # (a failed run's hog: not left spinning)
        proc.stdout.close()


def test_sigterm_removes_the_auth_benchmarks_store_folder(tmp_path):
    """bench_auth_overhead's one-process part left its wrenpack-bench-* store in $TMPDIR
    (and, as the worker's handler it calls turns a SystemExit into the call's result, ran on)."""
    import time

    proc = subprocess.Popen([sys.executable, os.path.join(BENCH, "bench_auth_overhead.py"), "--inproc-only",
                             "--rounds", "100", "--calls", "200", "--big-calls", "2", "--mib", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_bench_env(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not os.listdir(tmp_path / "tmp"):
            assert proc.poll() is None and time.monotonic() < deadline, "no store folder made"
            time.sleep(0.02)
        time.sleep(0.2)  # (inside its rounds)
        proc.send_signal(15)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert os.listdir(tmp_path / "tmp") == [], out
    assert proc.returncode == 128 + 15 and "Traceback" not in out, out


def test_a_failed_latency_driver_removes_its_store_folder(tmp_path):
    """latency_path's driver removed its store's folder only after a run that went well:
    one that failed (``--calls 0``, a ZeroDivisionError before the argument was checked)
    left ``$TMPDIR/wrenpack-bench-*`` behind (probe 7)."""
    import ast

    with open(os.path.join(BENCH, "latency_path.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    driver = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "_DRIVER" for t in node.targets))
    proc = subprocess.run([sys.executable, "-c", driver, "wrenpack", "0"], capture_output=True, text=True, timeout=120,
                          env=_bench_env(tmp_path), cwd=tmp_path)
    assert proc.returncode != 0 and "ZeroDivisionError" in proc.stderr, proc.stderr[-2000:]
    assert os.listdir(tmp_path / "tmp") == []
