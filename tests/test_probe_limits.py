"""Probes of the local backend's Lambda limits, from the outside: each limit is
Lambda's, fails only the call that broke it, and leaves the pool working."""
from __future__ import annotations

import os
import time

import pytest

import wrenpack
from wrenpack import keys
from wrenpack.backends.local import LocalBackend


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    ex = wrenpack.Executor(storage=str(tmp_path_factory.mktemp("store")), backend=LocalBackend(concurrency=2))
    yield ex
    ex.shutdown()


def open_files(n):
    """Open ``n`` descriptors at once; how many it got (closed again before returning)."""
    opened = []
    try:
        for _ in range(n):
            opened.append(os.open(os.devnull, os.O_RDONLY))
        return len(opened)
    finally:
        for fd in opened:
            os.close(fd)


def test_a_call_is_held_to_lambdas_1024_file_descriptors(pool):
    """Lambda gives a call 1,024 file descriptors (EMFILE past them); the local
    worker gave it the machine's limit (20,000 here), so a call that opened
    2,000 files worked locally and failed on Lambda."""
    f = wrenpack.remote(open_files, executor=pool)
    futs = f.map([100, 2000, 100])
    assert futs[0].result(timeout=60) == 100 and futs[2].result(timeout=60) == 100
    with pytest.raises(OSError) as info:
        futs[1].result(timeout=60)
    assert info.value.errno == 24  # EMFILE, as on Lambda
    assert f.remote(500).result(timeout=60) == 500  # the worker serves the next call


def count_to(x):
    """Item 1 counts to 150 in 10 ms steps (1.5 s: two segments under a 1 s
    timeout), the others to 3; each returns its own x and how far it counted."""
    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default={"x": x, "i": 0})
    n = 150 if x == 1 else 3
    while state["i"] < n:
        time.sleep(0.01)
        state["i"] += 1
        ckpt.offer(state)
    return state["x"], state["i"]


def test_a_checkpoint_in_a_chunk_is_restored_only_by_the_call_that_saved_it(pool):
    """The calls of a chunksize=k group share one invocation and so one checkpoint
    key: the next segment ran the group again from its first call, whose restore()
    returned the state the second one had saved. Its future then resolved, without
    an error, to the other call's result ((1, 72) for x=0)."""
    f = wrenpack.remote(count_to, executor=pool, timeout=1)
    futs = f.map([0, 1, 2, 3], chunksize=2)
    assert [fut.result(timeout=60) for fut in futs] == [(0, 3), (1, 150), (2, 3), (3, 3)]
    assert futs[1].segments >= 2


def test_no_cgroups_false_keeps_the_pids_cgroup_as_it_keeps_the_memory_one(monkeypatch):
    """WRENPACK_NO_CGROUPS is a boolean word (``env_flag``) for the memory group, but the
    pids group read any non-empty value as yes: with WRENPACK_NO_CGROUPS=0 a call's
    processes and threads were only sampled every 0.1 s (a fork bomb got past 1,024
    before the kill) while its memory stayed in a cgroup."""
    from wrenpack.backends.local.linux import CgroupFactory, PidsCgroupFactory

    monkeypatch.delenv("WRENPACK_NO_CGROUPS", raising=False)
    if PidsCgroupFactory.detect() is None:
        pytest.skip("this machine gives no pids cgroups (cgroup v1 as root)")
    monkeypatch.setenv("WRENPACK_NO_CGROUPS", "0")
    assert CgroupFactory.detect() is not None
    assert PidsCgroupFactory.detect() is not None
    monkeypatch.setenv("WRENPACK_NO_CGROUPS", "yes")
    assert PidsCgroupFactory.detect() is None
    monkeypatch.setenv("WRENPACK_NO_CGROUPS", "maybe")
    with pytest.raises(wrenpack.ConfigError, match="must be a boolean word"):
        PidsCgroupFactory.detect()


def test_a_file_with_several_names_in_tmp_counts_once(tmp_path):
    """/tmp holds a hard-linked file's blocks once (``git clone`` of a local repository
    links its objects, ``cp -al`` its files); dir_usage counted them once per name."""
    from wrenpack.worker.memory import dir_usage

    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(os.urandom(2 * 1024 * 1024))
    os.link(tmp_path / "a", tmp_path / "b")
    os.link(tmp_path / "a", tmp_path / "sub" / "c")
    (tmp_path / "d").write_bytes(os.urandom(1024 * 1024))
    used = dir_usage(str(tmp_path))
    assert 3 * 1024 * 1024 <= used < 3.5 * 1024 * 1024


def link_twice(mb):
    """Write ``mb`` MB to /tmp under one name and link two more names to it."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "data")
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"x" * (1 << 20))
    os.link(path, path + ".copy1")
    os.link(path, path + ".copy2")
    time.sleep(0.3)  # (the worker's /tmp is measured every 0.1 s while the call runs)
    for name in (path, path + ".copy1", path + ".copy2"):
        os.remove(name)
    return mb


def test_a_call_whose_tmp_holds_one_file_under_three_names_is_within_its_storage(pool):
    """200 MB linked under three names is 200 MB of a 512 MB /tmp, as on Lambda,
    not 600 MB: the call was stopped with EphemeralStorageExceeded."""
    f = wrenpack.remote(link_twice, executor=pool, ephemeral_storage=512)
    assert f.remote(200).result(timeout=60) == 200


def state_with_a_lock(n):
    """A checkpointed loop whose state holds a lock, which no pickle can carry."""
    import threading

    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default={"i": 0, "lock": threading.Lock()})
    while state["i"] < n:
        time.sleep(0.01)
        state["i"] += 1
        ckpt.offer(state)
    return state["i"]


def test_a_checkpoint_state_that_cannot_be_pickled_is_a_one_line_serialization_error(pool):
    """The save's pickling error came back as the user's own bare TypeError ('cannot
    pickle _thread.lock object'), naming neither the checkpoint nor a fix."""
    f = wrenpack.remote(state_with_a_lock, executor=pool, timeout=1)
    fut = f.remote(200)
    with pytest.raises(wrenpack.SerializationError) as info:
        fut.result(timeout=60)
    message = str(info.value)
    assert "\n" not in message
    assert "checkpoint" in message and "_thread.lock" in message and "restore()" in message
    assert not pool.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))  # (nothing saved is left)
    assert f.remote(0).result(timeout=60) == 0  # the worker serves the next call


def save_then_stuck(_):
    """Saves its state, then is stuck where the soft deadline cannot reach it
    (a process descheduled on a loaded machine, or a step in C) past its timeout."""
    import signal

    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default=None)
    if state is not None:
        return state
    ckpt.save("resumed from the save")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    time.sleep(3)
    return "not stopped"


def test_a_call_stopped_at_its_deadline_after_a_save_goes_on_from_the_save(pool):
    """A segment whose process the worker gave up on at the deadline failed the call
    with TaskTimeout ('signals could not reach it') although it had saved its state:
    a segment that overran after a save in Python goes on from the save, and so
    does this one now. (On a loaded machine a checkpointing loop whose save and
    reply came a few tens of ms late failed so: tests/test_checkpoint.py's
    test_killed_worker_resumes_from_last_checkpoint failed 1 run in 5 here.)"""
    fut = wrenpack.remote(save_then_stuck, executor=pool, timeout=1).remote(0)
    assert fut.result(timeout=60) == "resumed from the save"
    assert fut.segments == 2


def restore_then_stuck(_):
    """Checkpoints (restore, offer), then one step is stuck past the timeout where
    the soft deadline cannot reach it."""
    import signal

    ckpt = wrenpack.checkpoint()
    ckpt.restore(default=None)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    time.sleep(3)
    ckpt.offer({})


def test_a_checkpointing_call_stopped_at_its_deadline_is_told_to_offer_more_often(pool):
    """The timeout of a call stopped from outside told it to 'make it resumable with
    wrenpack.checkpoint', which it was: the fix is a shorter step between offers."""
    with pytest.raises(wrenpack.TaskTimeout) as info:
        wrenpack.remote(restore_then_stuck, executor=pool, timeout=1).remote(0).result(timeout=60)
    assert "offer more often" in str(info.value) and "make it resumable" not in str(info.value)


def restore_when_told(gate):
    """Waits for ``gate`` to exist, then restores its checkpoint."""
    while not os.path.exists(gate):
        time.sleep(0.01)
    return wrenpack.checkpoint().restore(default="nothing saved")


def test_a_planted_checkpoint_fails_its_call_alone_with_a_one_line_corrupt_object(pool, tmp_path):
    """A checkpoint at a running call's key that wrenpack did not seal for it (garbage,
    or one sealed with another job's secret) fails that call with CorruptObject before
    anything is unpickled; the message read 'CorruptObject: jobs/...' (the type twice)."""
    import cloudpickle

    from wrenpack import keys
    from wrenpack.wire.checkpoint import seal_checkpoint

    store = pool.store
    f = wrenpack.remote(restore_when_told, executor=pool, timeout=30)
    planted = {
        "garbage": b"WRCK2\0\0\0\0" + b"x" * 64,
        "another job's": seal_checkpoint(os.urandom(32), "20261206-000000-00000000", "00000", (0, 0, 1), cloudpickle.dumps("planted")),
    }
    for name, blob in planted.items():
        gate = str(tmp_path / name)
        fut = f.remote(gate)
        while not fut.running():
            time.sleep(0.01)
        store.put(keys.checkpoint_key(fut.job_id, fut.call_id), blob)
        open(gate, "w").close()
        with pytest.raises(wrenpack.CorruptObject) as info:
            fut.result(timeout=60)
        message = str(info.value)
        assert "nothing was unpickled" in message and "\n" not in message
        assert "CorruptObject" not in message, message
    ok = f.remote(str(tmp_path / "garbage"))  # (its gate is there: it runs at once)
    assert ok.result(timeout=60) == "nothing saved"


class SlowToSave:
    """A piece of state that takes 0.25 s to pickle, as a few hundred MB of arrays do."""

    def __reduce__(self):
        time.sleep(0.25)
        return (SlowToSave, ())


def steps_with_a_slow_state(n):
    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default={"i": 0, "big": SlowToSave()})
    while state["i"] < n:
        time.sleep(0.01)
        state["i"] += 1
        ckpt.offer(state)
    return state["i"]


def test_a_state_slower_to_save_than_guessed_is_measured_before_the_first_segment_ends(pool):
    """The first segment guessed 50 ms for a save it had never timed: a state that
    takes longer (0.25 s here; a few hundred MB on Lambda's S3) began its first save
    too late, the deadline stopped it halfway and the call failed with TaskTimeout
    ('offer more often'), though each step took 10 ms. Halfway through a first segment
    with no save timed yet, an offer saves once (the segment goes on) to time it."""
    fut = wrenpack.remote(steps_with_a_slow_state, executor=pool, timeout=2).remote(200)
    assert fut.result(timeout=60) == 200
    assert fut.segments >= 2


def fill_tmp(name, mb, keep):
    """Write ``mb`` MB to /tmp/<name>; remove it again unless ``keep`` (kept, the /tmp at the
    call's end holds it: the meter samples while it runs and may miss a short-lived file)."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), name)
    block = b"z" * (1024 * 1024)
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(block)
    if not keep:
        os.remove(path)
    return mb


def test_a_full_tmp_says_what_earlier_calls_left_counts(tmp_path):
    """/tmp outlives a call on a warm worker, as on Lambda: 300 MB one call left and 250 MB
    the next writes are over 512 MB. The error named the second call as having written all
    550 MB; it says what the worker's /tmp held and that earlier calls' files count."""
    ex = wrenpack.Executor(storage=str(tmp_path / "s"), backend=LocalBackend(concurrency=1), retries=0)
    try:
        f = wrenpack.remote(fill_tmp, executor=ex, ephemeral_storage=512, memory=256)
        assert f.remote("left", 300, True).result(timeout=60) == 300
        with pytest.raises(wrenpack.EphemeralStorageExceeded, match="more than ephemeral_storage=512 MB") as info:
            f.remote("mine", 250, True).result(timeout=60)
        message = str(info.value)
        assert "worker's /tmp held" in message and "earlier calls on this warm worker" in message, message
        assert " wrote " not in message
    finally:
        ex.shutdown()


def grows_past(mb):
    time.sleep(0.3)
    block = bytearray(mb * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


def will_not_stop():
    while True:
        try:
            time.sleep(10)
        except BaseException:  # noqa: BLE001 - swallows the handler's deadline too: only the kill ends it
            pass


def keeps_writing_tmp(mb):
    time.sleep(0.3)
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "filler"), "wb") as f:
        for _ in range(mb):
            f.write(b"x" * (1024 * 1024))
            f.flush()
        time.sleep(30)  # (held open, past the limit: only the backend's stop ends it)


@pytest.mark.parametrize("use_cgroups", [None, False], ids=["cgroup", "sampled"])
def test_a_call_stopped_at_a_limit_reports_its_run(tmp_path, use_cgroups):
    """A call the backend stops at its memory, timeout or /tmp limit has a status with its run
    (the one its worker recorded, else start to stop), as Lambda bills it. Before, a call the
    backend killed had none, and a job's cost counted 0 ms for it. The memory limit is met
    on three paths (the kernel stops the call's process and the worker replies; the kernel
    stops the worker; without cgroups, the driver's sampling stops it): each reports a run."""
    ex = wrenpack.Executor(storage=str(tmp_path / "s"), backend=LocalBackend(concurrency=3, use_cgroups=use_cgroups),
                           retries=0)
    try:
        big = wrenpack.remote(grows_past, executor=ex, memory=128).remote(400)
        stuck = wrenpack.remote(will_not_stop, executor=ex, timeout=1).remote()
        full = wrenpack.remote(keeps_writing_tmp, executor=ex, ephemeral_storage=512).remote(600)
        for fut, error, least in ((big, wrenpack.MemoryLimitExceeded, 0.25), (stuck, wrenpack.TaskTimeout, 0.9),
                                  (full, wrenpack.EphemeralStorageExceeded, 0.25)):
            with pytest.raises(error):
                fut.result(timeout=90)
            status = fut.status
            if error is wrenpack.TaskTimeout:  # (a worker's own record of a timeout names no error)
                assert status["exit"] == "timeout" and status.get("error") in (None, "TaskTimeout"), status
            else:
                assert status["exit"] == "error" and status["error"] == error.__name__, status
            assert least <= status["duration_s"] < 60, status
    finally:
        ex.shutdown()
