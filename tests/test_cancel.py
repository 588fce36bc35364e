"""Cancelling calls that run: ``wrenpack.cancel(futures)``, locally and on the emulated Lambda.

PyWren's ``test_cancel`` scenario: a 30 s call cancelled after 2 s ends within a
few seconds, its future fails with ``concurrent.futures.CancelledError``, and
the worker takes the next call. ``fut.cancel()`` keeps the standard library's
contract (pending calls only). Locally every process the call started ends
with it; on Lambda the handler ends the call on seeing its cancel marker,
which only the job's secret can seal.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time

import pytest

import wrenpack
from wrenpack import auth, keys
from wrenpack.worker import cancel as cancel_marker

pytestmark = pytest.mark.backends("local", "lambda", slow=("lambda",))


def long_call(seconds, pid_file):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with open(pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        os.replace(pid_file + ".tmp", pid_file)
    except OSError:
        pass  # (a sandbox whose /tmp is not the test's)
    time.sleep(seconds)
    child.kill()
    return "finished"


def square(x):
    return x * x


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie not yet reaped
    except OSError:
        return True


def test_a_running_call_is_cancelled_and_the_worker_is_reusable(make_executor, backend, tmp_path):
    ex = make_executor(concurrency=1, retries=0)
    f = wrenpack.remote(long_call, executor=ex, timeout=60)
    pid_file = str(tmp_path / "pids")
    fut = f.remote(30, pid_file)
    queued = ex.submit(square, 3)  # waits behind it (one call at a time)
    deadline = time.monotonic() + 60
    while not fut.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fut.running()
    if backend == "local":  # cancelled once it has started its child (2 s of sleep took that for granted)
        while not os.path.exists(pid_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(pid_file)
    else:
        time.sleep(3.0)
    assert not fut.cancel()  # the standard contract: a running call is not taken back by cancel()
    assert wrenpack.cancel([queued]) == [True] and queued.cancelled()
    t0 = time.monotonic()
    assert wrenpack.cancel(fut) == [True]
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=30)
    took = time.monotonic() - t0
    assert took < (3.0 if backend == "local" else 8.0), f"the cancelled call took {took:.1f} s to end"
    assert isinstance(fut.exception(0), wrenpack.CallCancelled)
    if backend == "local" and os.path.exists(pid_file):
        pids = [int(p) for p in open(pid_file).read().split()]
        end = time.monotonic() + 5
        while not all(_gone(p) for p in pids) and time.monotonic() < end:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids), "a process the cancelled call started outlived it"
    # The worker (or its replacement) takes the next call.
    assert ex.submit(square, 7).result(timeout=60) == 49
    assert wrenpack.cancel(fut) == [False]  # done already


def nap(seconds):
    time.sleep(seconds)
    return "finished"


def test_a_call_launched_with_cancellable_false_runs_to_its_end(make_executor, backend):
    """``cancellable=False`` (no cancel-marker looks on Lambda): a running call keeps
    ``concurrent.futures``' contract on every backend, a queued one is still taken back."""
    ex = make_executor(concurrency=1, retries=0)
    f = wrenpack.remote(nap, executor=ex, timeout=60, cancellable=False)
    # (it runs on ~1 s after the cancel below; on Lambda, whose start is seen later, ~2 s)
    fut = f.remote(1.5 if backend == "local" else 2.5)
    queued = f.remote(0)
    deadline = time.monotonic() + 60
    while not fut.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fut.running()
    time.sleep(0.5)
    assert wrenpack.cancel([fut, queued]) == [False, True]
    assert queued.cancelled()
    assert fut.result(timeout=60) == "finished"


def test_cancellable_must_be_a_bool():
    with pytest.raises(wrenpack.ConfigError, match=r"^cancellable='no' \(from @wrenpack.remote\) must be True or False"):
        wrenpack.remote(square, cancellable="no")


def test_cancel_marker_is_sealed_with_the_job_secret():
    secret, other = auth.new_secret(), auth.new_secret()
    key = keys.call_cancel_key("job1", "00003")
    marker = cancel_marker.seal_marker(secret, "job1", key, ["00003"])
    assert cancel_marker.names_call(secret, "job1", key, marker, "00003")
    assert not cancel_marker.names_call(secret, "job1", key, marker, "00004")
    # A stranger without the secret, a marker moved to another key or job: ignored.
    assert not cancel_marker.names_call(secret, "job1", key, cancel_marker.seal_marker(other, "job1", key), "00003")
    assert not cancel_marker.names_call(secret, "job1", keys.call_cancel_key("job1", "00004"), marker, "00003")
    assert not cancel_marker.names_call(secret, "job2", keys.call_cancel_key("job2", "00003"), marker, "00003")
    assert not cancel_marker.names_call(secret, "job1", key, b"garbage", "00003")
    # The job's marker (what a job's cancel writes: any record, sealed as the job's "cancel" object) stops every call.
    job_key = keys.cancel_key("job1")
    record = json.dumps({"at": 1.0, "host": "h", "pid": 1}).encode()
    job_marker = auth.seal(secret, keys.identity("job1", "cancel"), record)
    assert cancel_marker.names_call(secret, "job1", job_key, job_marker, "00042")
    assert not cancel_marker.names_call(secret, "job1", job_key, auth.seal(other, keys.identity("job1", "cancel"), record), "00042")
    assert not cancel_marker.names_call(secret, "job1", job_key, marker, "00042")  # a call's marker moved there


def test_a_running_call_looks_for_its_cancel_marker_less_often_as_it_runs():
    """A GET per look on S3: looks 2 s in, then after gaps as long as the call has
    run, so a long call's looks grow with the log of its run time (every 2 s was 30
    GETs, $12 per million 60 s calls), and a call cancelled t s in ends by about 2t."""
    from wrenpack.worker.handler import cancel_look_after, cancel_looks

    assert cancel_looks(1.9) == 0
    assert cancel_looks(2.0) == 1
    assert cancel_looks(30.0) == 4  # 2, 4, 8, 16
    assert cancel_looks(60.0) == 5  # and 32
    assert cancel_looks(900.0) <= 20  # gaps at most 60 s
    for elapsed in (2.0, 5.0, 30.0, 600.0):
        assert cancel_look_after(elapsed) <= max(elapsed, 2.0)
