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
import threading
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


# -- a running call that finishes before its worker sees the cancel ------------------------------------
def finishes_on_signal(kind, ready_path, go_path):
    """Runs until the test's go file appears, then ends at once: returns "finished" (or raises,
    kind "raises"). Kind "checkpointed" saves and ends its first segment at its start, so it is
    the second segment that runs and finishes. Waits at most 4 s (within the 5 s function)."""
    if kind == "checkpointed":
        from wrenpack.worker.checkpoint import SegmentDone

        ckpt = wrenpack.checkpoint()
        if ckpt.restore(default=0) == 0:
            ckpt.save(1)
            raise SegmentDone()
    with open(ready_path, "a") as f:
        f.write("ready\n")
    deadline = time.monotonic() + 4.0
    while not os.path.exists(go_path) and time.monotonic() < deadline:
        time.sleep(0.002)
    if kind in ("raises", "retried"):
        raise ValueError("finished by raising")
    return "finished"


def _cancelled_or_result(fut, timeout=30):
    try:
        return ("result", fut.result(timeout=timeout))
    except cf.CancelledError:
        return ("cancelled", None)
    except ValueError as exc:
        return ("raised", str(exc))


@pytest.mark.backends("lambda")
@pytest.mark.parametrize("kind", ["plain", "checkpointed", "raises", "retried", "pickled"])
def test_a_call_that_finishes_before_its_worker_sees_the_cancel_ends_cancelled(make_executor, backend, monkeypatch,
                                                                               tmp_path, kind):
    """On Lambda ``wrenpack.cancel`` of a running call writes its cancel marker and says True;
    the handler looks for the marker only every few seconds, so the call may finish first.
    It still ends cancelled (``CallCancelled``, its status a cancelled call's), never with
    its result or its own error (it ended with them); "retried": an error its ``retry_on``
    names does not run it again (it did); "pickled": a reference to it read from the
    store afterwards says cancelled too, not the result its worker stored.
    Deterministic: the marker's write is dropped, as if the worker's next look came after
    the call's end."""
    # (checkpointed: with RequestResponse the first segment's reply says at once that it saved; an
    # Event call's segment record is looked for only near its timeout, where real segments end)
    ex = make_executor(concurrency=1, retries=1 if kind == "retried" else 0,
                       invocation_type="RequestResponse" if kind == "checkpointed" else "Event")
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    options = {"retry_on": (ValueError,)} if kind == "retried" else {}
    fut = wrenpack.remote(finishes_on_signal, executor=ex, **options).remote(kind, ready, go)
    ref = fut.__reduce__()[1][0] if kind == "pickled" else None  # (what pickling it makes: its job is kept)
    marker = keys.call_cancel_key(fut.job_id, fut.call_id)
    store, put = ex.backend.store, ex.backend.store.put
    dropped = []

    def put_but_the_marker(key, data, *args, **kwargs):
        if key == marker:
            dropped.append(key)
            return None
        return put(key, data, *args, **kwargs)

    monkeypatch.setattr(store, "put", put_but_the_marker)
    deadline = time.monotonic() + 60
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(ready), "the call never ran"
    try:
        said = wrenpack.cancel(fut)
    finally:
        open(go, "w").close()
    assert said == [True] and dropped == [marker], (said, dropped)
    assert _cancelled_or_result(fut) == ("cancelled", None)
    assert isinstance(fut.exception(0), wrenpack.CallCancelled)
    assert fut.status["exit"] == "error" and fut.status["error"] == "CallCancelled", fut.status
    assert fut.status.get("cancelled") is True, fut.status
    assert fut.segments == (2 if kind == "checkpointed" else 1)
    with open(ready) as f:
        assert f.read().split() == ["ready"]  # (it ran once: no attempt after the cancel)
    assert wrenpack.cancel(fut) == [False]  # (done already, as any call stopped while it ran)
    if ref is not None:
        from wrenpack.worker import refs

        assert isinstance(refs.CallRef(ref).exception(timeout=30), wrenpack.CallCancelled)


class _Hold:
    """Holds the thread that reaches ``hold()`` first until the test lets it go on."""

    def __init__(self):
        self.reached, self.go = threading.Event(), threading.Event()
        self.fired = False
        self.lock = threading.Lock()

    def hold(self):
        with self.lock:
            if self.fired:
                return
            self.fired = True
        self.reached.set()
        assert self.go.wait(30), "the test never let the call go on"

    def wait(self):
        assert self.reached.wait(60), "the call never reached the point the test holds it at"


@pytest.mark.parametrize("where", ["reported", "answering"])
def test_cancel_as_a_running_calls_outcome_comes_in_says_what_happens(make_executor, backend, monkeypatch, where):
    """``wrenpack.cancel`` of a call whose outcome is coming in: True iff the call ends
    cancelled. "reported": the backend has reported the outcome (it runs the call no
    more), the executor has not completed it: False, and the call ends with its result.
    "answering": the outcome is completed while the cancel waits for the backend's answer
    (which is then "not running"): the stop asked wins, True, and the call ends cancelled."""
    ex = make_executor(concurrency=1, retries=0)
    held = _Hold()
    on_done = ex._on_done

    def held_on_done(inv, result):
        if result.error is None and (result.status or {}).get("exit") == "ok":
            held.hold()
        return on_done(inv, result)

    monkeypatch.setattr(ex, "_on_done", held_on_done)  # (bound into each invocation as it is made)
    if where == "answering":
        backend_obj = ex.backend
        cancel_calls = backend_obj.cancel_calls

        def answer_once_it_ended(calls):
            held.go.set()  # its outcome is completed now, the stop asked already
            assert _wait_done(fut), "the call's outcome was not completed"
            return cancel_calls(calls)

        monkeypatch.setattr(backend_obj, "cancel_calls", answer_once_it_ended)
    fut = wrenpack.remote(square, executor=ex, timeout=30).remote(7)
    held.wait()
    try:
        assert fut.cancel() is False  # (it ran: fut.cancel() leaves it be)
        said = wrenpack.cancel(fut)
    finally:
        held.go.set()
    outcome = _cancelled_or_result(fut)
    assert outcome == (("cancelled", None) if said == [True] else ("result", 49)), (said, outcome)
    assert said == ([False] if where == "reported" else [True]), said
    if where == "answering":
        assert fut.status["exit"] == "error" and fut.status["error"] == "CallCancelled", fut.status


def _wait_done(fut, timeout=30):
    deadline = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < deadline:
        time.sleep(0.005)
    return fut.done()


@pytest.mark.parametrize("where", ["taking", "sending"])
def test_cancel_while_a_call_is_handed_to_the_backend_says_what_happens(make_executor, backend, monkeypatch, where):
    """A cancel that comes while the call is handed to the backend: "taking" (its arguments
    taken from the launch window, its invocation not made yet), "sending" (its invocation
    made and recorded, the backend not given it yet). ``fut.cancel()`` and ``wrenpack.cancel``
    answer what happens: True only if the call ends cancelled, else it runs to its result,
    and either way its future ends (none is left pending, no call lost)."""
    ex = make_executor(concurrency=1, retries=0)
    held = _Hold()
    jobs = []
    if where == "taking":
        invocation = ex._invocation

        def held_invocation(job, i, data):
            jobs.append(job)
            held.hold()
            return invocation(job, i, data)

        monkeypatch.setattr(ex, "_invocation", held_invocation)
    else:
        backend_obj = ex.backend
        invoke_many = backend_obj.invoke_many

        def held_invoke_many(invocations):
            jobs.append(ex._jobs[invocations[0].key[0]])
            held.hold()
            return invoke_many(invocations)

        monkeypatch.setattr(backend_obj, "invoke_many", held_invoke_many)
    launched = []
    launcher = threading.Thread(target=lambda: launched.append(wrenpack.remote(square, executor=ex, timeout=30).remote(6)))
    launcher.start()
    held.wait()
    try:
        fut = jobs[0].futures[keys.call_id(0)]
        took = fut.cancel()
        said = wrenpack.cancel(fut)
    finally:
        held.go.set()
        launcher.join(30)
    assert launched and launched[0] is fut
    outcome = _cancelled_or_result(fut)
    assert outcome == (("cancelled", None) if took or said == [True] else ("result", 36)), (took, said, outcome)
    # The executor goes on: its next call runs.
    assert wrenpack.remote(square, executor=ex, timeout=30).remote(5).result(timeout=60) == 25


@pytest.mark.backends("local")
def test_a_local_call_whose_reply_is_not_read_yet_is_cancelled_not_finished(make_executor, backend, tmp_path):
    """Locally the stop and the reply are decided under the backend's lock: a call that has
    returned, its reply waiting unread on its worker's socket, is stopped by
    ``wrenpack.cancel`` (True) and ends cancelled; its reply is dropped with the worker.
    (Deterministic: the test holds the backend's lock while the reply comes in.)"""
    import select

    ex = make_executor(concurrency=1, retries=0)
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    fut = wrenpack.remote(finishes_on_signal, executor=ex, timeout=30).remote("plain", ready, go)
    deadline = time.monotonic() + 60
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(ready), "the call never ran"
    backend_obj = ex.backend
    with backend_obj._lock:  # (the dispatcher reads no reply meanwhile)
        [worker] = [w for w in backend_obj._workers if w.inflight]
        open(go, "w").close()
        readable, _, _ = select.select([worker.sock], [], [], 30)
        assert readable, "the call's reply never came"
        said = wrenpack.cancel(fut)  # (the lock is reentrant: the backend's cancel runs under it)
    assert said == [True]
    assert _cancelled_or_result(fut) == ("cancelled", None)
    assert wrenpack.remote(square, executor=ex, timeout=30).remote(4).result(timeout=60) == 16


def test_cancel_takes_plain_futures_as_their_own_cancel_does():
    """``wrenpack.cancel`` of futures wrenpack did not make (a ThreadPoolExecutor's, one made by hand), as
    get/wait/as_completed take them: each is ``fut.cancel()``-ed (a pending one is cancelled, a running or
    done one is not). It raised AttributeError: 'Future' object has no attribute '_owner'."""
    started, gate = threading.Event(), threading.Event()

    def hold():
        started.set()
        return gate.wait(10)

    with cf.ThreadPoolExecutor(1) as pool:
        done = pool.submit(int, "5")
        assert done.result(timeout=10) == 5
        running = pool.submit(hold)
        assert started.wait(10)
        pending = pool.submit(int, "6")
        by_hand = cf.Future()
        try:
            assert wrenpack.cancel([running, pending, done, by_hand]) == [False, True, False, True]
            assert pending.cancelled() and by_hand.cancelled() and not running.cancelled()
            assert wrenpack.cancel(pending) == [True]  # (one future, as for wrenpack's)
        finally:
            gate.set()
        assert running.result(timeout=10) is True
