"""The local backend holds each call to Lambda's limits and loses nothing."""
from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest

import wrenpack
from tests.processes import alive
from wrenpack.backends.local import LocalBackend


def allocate(mb):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block) // (1024 * 1024)


def test_memory_limit(remote):
    f = remote(allocate, memory=256)
    futs = f.map([32, 400, 16])
    assert futs[0].result() == 32 and futs[2].result() == 16
    with pytest.raises(wrenpack.MemoryLimitExceeded, match=r"memory limit of 256 MB .*raise memory="):
        futs[1].result()


def test_tmp_checks_come_as_often_as_the_room_left_needs():
    """A running call's /tmp is looked at every 0.1 s near its limit, less often far below it
    (each look costs the driver every descriptor of the worker's processes), never past 0.5 s."""
    from wrenpack.backends.local import process

    mib = 1024 * 1024
    assert process.tmp_check_interval(0) == process.TMP_CHECK_S == 0.1
    assert process.tmp_check_interval(100 * mib) == 0.1  # (100 MB left: full in 0.05 s at 2 GiB/s)
    assert process.tmp_check_interval(512 * mib) == pytest.approx(0.25)
    assert process.tmp_check_interval(10240 * mib) == process.TMP_CHECK_MAX_S == 0.5


def nap_for(seconds):
    time.sleep(seconds)
    return seconds


def test_a_call_far_below_its_tmp_limit_is_not_looked_at_ten_times_a_second(tmp_path, monkeypatch):
    """With nothing in its /tmp and 512 MB of room, a 1 s call is looked at about every
    0.25 s, not every 0.1 s (ten looks, each ~0.4 ms of the driver's CPU)."""
    from wrenpack.backends.local import process

    looks = []
    real = process.open_deleted_bytes
    monkeypatch.setattr(process, "open_deleted_bytes", lambda *a: looks.append(1) or real(*a))
    ex = wrenpack.Executor(storage=str(tmp_path), backend=LocalBackend(concurrency=1))
    try:
        f = wrenpack.remote(nap_for, executor=ex, ephemeral_storage=512)
        assert f.remote(1.0).result(timeout=60) == 1.0
    finally:
        ex.shutdown()
    assert 1 <= len(looks) <= 6, f"{len(looks)} looks at a 1 s call's /tmp"


def test_memory_limit_without_cgroups_uses_high_water_mark(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path), backend=LocalBackend(concurrency=1, use_cgroups=False))
    try:
        f = wrenpack.remote(allocate, executor=ex, memory=200)
        assert f.remote(20).result() == 20
        with pytest.raises(wrenpack.MemoryLimitExceeded, match="200 MB"):
            f.remote(300).result()
        assert f.remote(10).result() == 10
    finally:
        ex.shutdown()


def test_lambda_environment_variables(remote):
    def env(_):
        import tempfile

        keys = ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_NAME", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT")
        return {k: os.environ.get(k) for k in keys} | {"tmp": tempfile.gettempdir()}

    out = remote(env, memory=384).remote(0).result()
    assert out["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "384"
    assert out["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert out["AWS_LAMBDA_FUNCTION_NAME"] and out["LAMBDA_TASK_ROOT"]
    assert out["tmp"] != "/tmp" and "wrenpack-local" in out["tmp"]


def test_timeout_in_python_code(remote):
    def nap(s):
        time.sleep(s)
        return s

    f = remote(nap, timeout=1)
    t0 = time.monotonic()
    futs = f.map([0.1, 5])
    assert futs[0].result() == 0.1
    with pytest.raises(wrenpack.TaskTimeout, match="1 s timeout.*checkpoint"):
        futs[1].result()
    assert time.monotonic() - t0 < 4


def test_timeout_where_signals_cannot_reach(remote):
    def spin_in_c(_):
        import signal as sig

        sig.pthread_sigmask(sig.SIG_BLOCK, [sig.SIGALRM])  # the soft deadline cannot fire
        time.sleep(10)

    t0 = time.monotonic()
    with pytest.raises(wrenpack.TaskTimeout, match="was stopped"):
        remote(spin_in_c, timeout=1).remote(0).result()
    assert time.monotonic() - t0 < 5


def test_tmp_limit(remote):
    def write(mb):
        import tempfile

        block = os.urandom(1024 * 1024)  # (one random MB written again and again: 600 MB of urandom took 1.5 s)
        with open(os.path.join(tempfile.gettempdir(), "blob"), "wb") as fh:
            for _ in range(mb):
                fh.write(block)
        return mb

    f = remote(write, ephemeral_storage=512)
    with pytest.raises(wrenpack.EphemeralStorageExceeded, match="more than ephemeral_storage=512 MB"):
        f.remote(600).result()
    assert f.remote(8).result() == 8


def test_worker_killed_mid_call_is_retried_and_nothing_lost(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2, keep_objects=True)
    marks = str(tmp_path / "marks")
    os.mkdir(marks)
    try:

        def slow_square(x):
            # Call 5's first attempt says which worker runs it (the parent of the job's
            # process the call runs in), then waits there to be killed: the kill lands
            # mid-call however slowly a loaded machine gets there.
            if x == 5 and not os.path.exists(os.path.join(marks, "killed")):
                with open(os.path.join(marks, "victim.tmp"), "w") as fh:
                    fh.write(str(os.getppid()))
                os.replace(os.path.join(marks, "victim.tmp"), os.path.join(marks, "victim"))
                time.sleep(60)
            time.sleep(0.15)
            return x * x

        f = wrenpack.remote(slow_square, executor=ex, retries=2)
        futs = f.map(range(16))
        backend = ex.backend
        killed = []

        def killer():
            victim = os.path.join(marks, "victim")
            deadline = time.monotonic() + 60
            while not os.path.exists(victim) and time.monotonic() < deadline:
                time.sleep(0.01)
            if os.path.exists(victim):
                pid = int(open(victim).read())
                killed.append((pid, pid in backend.worker_pids()))
                open(os.path.join(marks, "killed"), "w").close()  # the retry runs normally
                os.kill(pid, signal.SIGKILL)

        t = threading.Thread(target=killer)
        t.start()
        results = wrenpack.get(futs, timeout=120)
        t.join()
        assert killed and killed[0][1], f"no worker was killed mid-call: {killed}"
        assert results == [x * x for x in range(16)]
        # exactly one result object per call, and the killed call was retried (once)
        store = ex.store
        # (a map's first calls, timed to decide on grouping, are a job of their own)
        assert sum(len(store.list(f"jobs/{job}/result/")) for job in {f.job_id for f in futs}) == 16
        assert futs[5].status["attempt"] == 1 and futs[5].status["pid"] != killed[0][0]
        resolved = [fut.done() for fut in futs]
        assert all(resolved)
    finally:
        ex.shutdown()


def test_crash_after_retries_is_worker_crashed(remote):
    def die(_):
        os.kill(os.getpid(), signal.SIGSEGV)

    futs = remote(die, retries=1).map([0])
    with pytest.raises(wrenpack.WorkerCrashed, match="SIGSEGV.*2 attempts"):
        futs[0].result()


def test_worker_replaced_after_crash(remote, tmp_path):
    def die_once(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "ok"

    marker = str(tmp_path / "m")
    assert remote(die_once, retries=1).remote(marker).result() == "ok"


def test_memory_held_in_a_child_process_counts(remote):
    def child_hog(mb):
        import subprocess
        import sys

        code = f"b = bytearray({mb} * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1"
        subprocess.run([sys.executable, "-c", code], check=True)
        return mb

    f = remote(child_hog, memory=256)
    assert f.remote(50).result() == 50
    with pytest.raises(wrenpack.MemoryLimitExceeded, match="256 MB"):
        f.remote(400).result()


def test_child_memory_without_cgroups_counts_after_the_call(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path), backend=LocalBackend(concurrency=1, use_cgroups=False))
    try:

        def short_lived_child(mb):
            import subprocess
            import sys

            code = f"b = bytearray({mb} * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1"
            subprocess.run([sys.executable, "-c", code], check=True)
            return mb

        f = wrenpack.remote(short_lived_child, executor=ex, memory=200)
        first = f.remote(150)
        assert first.result() == 150
        second = f.remote(10)
        assert second.result() == 10  # the earlier child's peak does not count against a later call
        # (a job's calls run in a process of its own: its children's peak is its own, never the earlier job's)
        assert second.status["pid"] == first.status["pid"] and (second.status["children_peak_rss_mb"] or 0) < 100
        with pytest.raises(wrenpack.MemoryLimitExceeded, match="200 MB"):
            f.remote(300).result()
    finally:
        ex.shutdown()


# -- processes and threads: Lambda's 1,024, and none outlives its call -------------------
def forks(n, linger=0.0):
    """Fork ``n`` children that sleep; (how many it made, the errno that stopped it, their pids)."""
    pids, err = [], None
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as exc:
            err = exc.errno
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        pids.append(pid)
    time.sleep(linger)
    return len(pids), err, pids


def fork_bomb(n):
    for _ in range(n):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_a_call_is_held_to_1024_processes_and_none_outlives_it(tmp_path):
    """As on Lambda, a call's fork past 1,024 processes and threads fails with EAGAIN;
    and what a call started ends with it, at its normal end too (not at shutdown)."""
    from wrenpack.backends.local.linux import PidsCgroupFactory

    if PidsCgroupFactory.detect() is None:
        pytest.skip("needs a pids cgroup (root on cgroup v1); the sampled limit is tested below")
    ex = wrenpack.Executor(storage=str(tmp_path), concurrency=1, retries=0)
    pids = []
    try:
        made, err, pids = wrenpack.remote(forks, executor=ex, memory=3008).remote(1100).result(timeout=120)
        assert err == errno.EAGAIN and 1000 < made < 1024, (made, err)
        assert [p for p in pids if alive(p)] == [], "children outlived their call"
        with pytest.raises(BlockingIOError, match=r"\[Errno 11\] Resource temporarily unavailable") as info:
            wrenpack.remote(fork_bomb, executor=ex, memory=3008).remote(1100).result(timeout=120)
        assert "\n" not in str(info.value)
        # A call that leaves a few children behind, well within the limit: they end with it.
        made, err, pids = wrenpack.remote(forks, executor=ex).remote(3).result(timeout=60)
        assert (made, err) == (3, None) and [p for p in pids if alive(p)] == []
        assert wrenpack.remote(forks, executor=ex).remote(1).result(timeout=60)[:2] == (1, None)  # the worker goes on
    finally:
        _kill(pids)
        ex.shutdown()


def test_without_cgroups_a_call_past_1024_processes_is_stopped_and_its_children_end(tmp_path):
    pytest.importorskip("psutil")
    ex = wrenpack.Executor(storage=str(tmp_path), backend=LocalBackend(concurrency=1, use_cgroups=False), retries=0)
    pidfile = str(tmp_path / "pids")

    def forks_and_waits(n):
        # Small children (sampled memory counts each one's resident pages, shared or not).
        with open(pidfile, "w") as fh:
            for _ in range(n):
                fh.write(f"{os.posix_spawn('/bin/sleep', ['sleep', '60'], os.environ)}\n")
                fh.flush()
        time.sleep(30)  # (the sampling clock sees them meanwhile)

    pids = []
    try:
        with pytest.raises(wrenpack.TaskError, match=r"more than Lambda's 1024 .*EAGAIN.*start fewer") as info:
            wrenpack.remote(forks_and_waits, executor=ex, memory=3008).remote(1100).result(timeout=120)
        assert "\n" not in str(info.value)
        with open(pidfile) as fh:
            pids = [int(line) for line in fh.read().split()]
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in pids if alive(p)] == []
        # Without cgroups too, what a call leaves ends with it.
        made, err, pids = wrenpack.remote(forks, executor=ex).remote(3).result(timeout=60)
        assert (made, err) == (3, None) and [p for p in pids if alive(p)] == []
    finally:
        _kill(pids)
        ex.shutdown()


_KEPT: list = []


def keep_then_allocate(keep_mb, mb):
    """Keeps ``keep_mb`` in the warm job process (a module-level list, as a cache would), then allocates ``mb``."""
    if keep_mb:
        _KEPT.append(allocate_block(keep_mb))
    return allocate(mb)


def allocate_block(mb):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def test_a_lower_memory_setting_is_held_on_a_worker_warm_with_more(tmp_path):
    """A call with memory=512 after one with memory=2048 that kept 700 MB in its
    warm process: on Lambda another memory size is another environment, so the
    512 MB call is held to 512 MB (it ran unlimited here: the cgroup could not be
    lowered below what the warm process held, and the limit was dropped)."""
    from wrenpack.backends.local.linux import CgroupFactory

    if CgroupFactory.detect() is None:
        pytest.skip("needs memory cgroups (without them the limit is sampled per call, from the call's own peak)")
    ex = wrenpack.Executor(storage=str(tmp_path), backend=LocalBackend(concurrency=1))
    try:
        f = wrenpack.remote(keep_then_allocate, executor=ex)
        assert f.options(memory=2048).remote(700, 10).result(timeout=60) == 10
        assert f.options(memory=512).remote(0, 100).result(timeout=60) == 100  # a fresh environment: it fits
        with pytest.raises(wrenpack.MemoryLimitExceeded, match="512 MB"):
            f.options(memory=512).remote(0, 700).result(timeout=60)
    finally:
        ex.shutdown()


def write_tmp(mb):
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "blob")
    with open(path, "wb") as fh:
        chunk = b"\1" * (1024 * 1024)
        for _ in range(mb):
            fh.write(chunk)
    os.remove(path)
    return mb


def test_tmp_on_tmpfs_does_not_count_as_the_calls_memory(tmp_path, monkeypatch):
    """Where the temporary directory is a tmpfs (as /tmp is on Fedora or Arch, or
    TMPDIR=/dev/shm), a call's /tmp pages were charged to its memory cgroup: a
    memory=256 call writing 400 MB to /tmp failed with MemoryLimitExceeded ("raise
    memory="), where on Lambda /tmp is storage of its own. The workers' /tmp goes
    on a disk-backed folder (/var/tmp) instead."""
    import tempfile

    from wrenpack.backends.local import linux

    if linux.CgroupFactory.detect() is None:
        pytest.skip("needs memory cgroups (without them /tmp is never counted as memory)")
    if linux.filesystem_type("/dev/shm") != "tmpfs" or linux.filesystem_type("/var/tmp") in (None, "tmpfs"):
        pytest.skip("needs /dev/shm on tmpfs and /var/tmp on a disk-backed file system")
    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
    ex = wrenpack.Executor(storage=str(tmp_path / "s"), backend=LocalBackend(concurrency=1))
    try:
        assert linux.filesystem_type(ex.backend.work_dir) != "tmpfs"
        f = wrenpack.remote(write_tmp, executor=ex, memory=256, ephemeral_storage=1024)
        assert f.remote(400).result(timeout=60) == 400
    finally:
        ex.shutdown()


def test_a_call_killed_at_its_memory_limit_is_told_once_not_also_on_the_terminal(tmp_path, capfd):
    """The kernel's OOM kill of a call's process is the call's MemoryLimitExceeded;
    the worker also printed "the process running the call died (wait status 9)"
    on the user's terminal (its stderr), beside the progress bar."""
    from wrenpack.backends.local import linux

    if linux.CgroupFactory.detect() is None:
        pytest.skip("needs memory cgroups (without them the call is stopped by the driver, not killed by the kernel)")
    ex = wrenpack.Executor(storage=str(tmp_path / "s"), backend=LocalBackend(concurrency=1), retries=0)
    try:
        with pytest.raises(wrenpack.MemoryLimitExceeded):
            wrenpack.remote(allocate, executor=ex, memory=128).remote(400).result(timeout=60)
    finally:
        ex.shutdown()
    assert "the process running the call died" not in capfd.readouterr().err


def write_and_hold_deleted(mb, hold_s):
    """Writes ``mb`` MB to a ``tempfile.TemporaryFile()`` (deleted at once, its blocks
    taken while it is open) and holds it ``hold_s`` s; kept open after the call if
    ``hold_s`` is negative (in a global, as a cache would)."""
    import tempfile

    fh = tempfile.TemporaryFile()
    chunk = b"\1" * (1024 * 1024)
    for _ in range(mb):
        fh.write(chunk)
    fh.flush()
    if hold_s < 0:
        _KEPT.append(fh)
    else:
        time.sleep(hold_s)
        fh.close()
    return mb


@pytest.mark.parametrize("hold_s", [0.5, -1], ids=["held-during-the-call", "kept-after-the-call"])
def test_a_deleted_file_still_open_counts_against_tmp(tmp_path, hold_s):
    """A 600 MB ``TemporaryFile()`` under ephemeral_storage=512: on Lambda the write
    fails with ENOSPC; locally it went unseen (it is in no directory listing), and
    the call succeeded."""
    ex = wrenpack.Executor(storage=str(tmp_path / "s"), backend=LocalBackend(concurrency=1), retries=0)
    try:
        f = wrenpack.remote(write_and_hold_deleted, executor=ex, ephemeral_storage=512, memory=256)
        with pytest.raises(wrenpack.EphemeralStorageExceeded, match="ephemeral_storage=512 MB"):
            f.remote(600, hold_s).result(timeout=60)
        assert f.remote(8, 0).result(timeout=60) == 8  # the worker serves the next call
    finally:
        ex.shutdown()


def test_a_worker_killed_at_the_timeout_of_a_later_segment_says_to_offer_more_often():
    """A worker the driver had to kill at the deadline (its parent stuck storing a
    large save, say) told a checkpointing call to "make it resumable with
    wrenpack.checkpoint", which it was: a later segment's timeout names the fix
    that applies. A first segment's still names checkpointing."""
    from types import SimpleNamespace

    from wrenpack.backends.base import Invocation
    from wrenpack.backends.local.process import Worker

    worker = SimpleNamespace(kill_reason="timeout", oom_kills=lambda: 0)
    later = Invocation(event={"segment": 2, "checkpoint": {"save_s": 1.5}}, on_done=lambda *a: None, timeout_s=60,
                       extra={"label": "step[3]"})
    first = Invocation(event={"segment": 0, "checkpoint": None}, on_done=lambda *a: None, timeout_s=60, extra={"label": "step[3]"})
    told = str(Worker.death_error(worker, later))
    assert "offer more often" in told and "make it resumable" not in told and "step[3]" in told
    assert "make it resumable with wrenpack.checkpoint" in str(Worker.death_error(worker, first))
