"""The futures contract Python users know, on every backend
(local, toy and the emulated lambda: see ``backends`` in tests/conftest.py).

``wrenpack.Executor`` is a ``concurrent.futures.Executor``; its futures are
PENDING until the call starts, RUNNING while it runs; a queued call can be
cancelled; futures travel between calls; retry_on, env, return_exceptions and
a call's captured output."""
from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import sys
import threading
import time

import pytest

import wrenpack
from wrenpack.errors import ExecutorShutdown, TaskTimeout

# The toy backend (a process per call, results through the store) takes the path of the emulated
# Lambda's Event calls here, so its variants run with -m slow; what is its own (registration, the
# deadline kill, a crashed call tried again) is tests/test_toy_backend.py's, in the default run.
pytestmark = pytest.mark.backends(slow=("toy",))


def square(x):
    return x * x


def sleeper(s):
    time.sleep(s)
    return s


def held(path, value):
    """``value`` once ``path`` exists: the test creates it when it is done looking at the running
    call (under pytest's tmp, which the emulated Lambda's sandboxes see too); 4 s at most."""
    deadline = time.monotonic() + 4  # (within the emulated Lambda's 5 s timeout)
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def keywords(self=None, fn=None, items=None, chunk=None):
    return {"self": self, "fn": fn, "items": items}


@pytest.fixture
def one_worker(make_executor):
    """An executor that runs one call at a time: the second call waits in the queue."""
    return make_executor(concurrency=1, retries=0)


@pytest.mark.slow_variants("lambda")  # (Lambda: test_aws_lambda's test_submit_and_futures_between_calls_on_lambda and test_chunksize_5_*)
def test_is_a_concurrent_futures_executor(executor):
    assert isinstance(executor, cf.Executor)
    fut = executor.submit(square, 7)
    assert isinstance(fut, cf.Future) and fut.result(timeout=60) == 49
    assert list(executor.map(square, [1, 2, 3])) == [1, 4, 9]
    assert list(executor.map(pow, [2, 3], [5, 2])) == [32, 9]
    assert list(executor.map(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]


@pytest.mark.slow_variants("lambda")  # (names bound by the driver; by value on Lambda: test_aws_lambda's test_chunksize_5_*)
def test_keyword_names_reach_the_function(executor, remote):
    assert executor.submit(keywords, self=1, fn=2, items=3).result(timeout=60) == {"self": 1, "fn": 2, "items": 3}
    f = remote(keywords)
    assert f.remote(self=4, fn=5, items=6).result(timeout=60) == {"self": 4, "fn": 5, "items": 6}
    assert f(self=7, fn=8) == {"self": 7, "fn": 8, "items": None}
    assert [x["fn"] for x in wrenpack.get(f.map([1, 2], fn=9, items=10))] == [9, 9]


@pytest.mark.slow_variants("lambda")  # (the driver's wait; Lambda adds nothing to it)
def test_map_timeout_raises_timeout_error(executor):
    # 1.5 s, not 5: it cannot end within the 1 s timeout either way, and it runs on after the test
    # (a running call is not taken back), holding one of the module executor's two slots from the next
    results = executor.map(sleeper, [0.01, 1.5], timeout=1.0)
    assert next(results) == 0.01
    with pytest.raises(TimeoutError):
        next(results)


@pytest.mark.slow_variants("lambda")  # (Lambda: test_aws_lambda's test_cancel_of_a_call_not_yet_invoked_on_lambda)
def test_states_cancel_and_callbacks(one_worker, tmp_path):
    ex = one_worker
    release = str(tmp_path / "release")
    first = ex.submit(held, release, 1.0)  # runs until released below
    queued = ex.submit(sleeper, 0.01)
    deadline = time.monotonic() + 30
    while not first.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.running() and not first.done()
    assert not queued.running() and not queued.done()  # PENDING: waiting for the worker
    assert "state=pending" in repr(queued) and repr(queued).startswith("<WrenFuture at 0x")
    seen = []
    queued.add_done_callback(lambda f: seen.append(f.cancelled()))
    assert queued.cancel() and queued.cancelled() and queued.done()
    assert seen == [True]
    with pytest.raises(cf.CancelledError):
        queued.result()
    assert not first.cancel()  # running: too late
    open(release, "w").close()
    assert first.result(timeout=30) == 1.0
    assert "state=finished returned float" in repr(first)
    done, not_done = cf.wait([first, queued], timeout=5)
    assert not not_done


# (Lambda, by default: test_lifecycle's test_shutdown_without_wait_drains_in_the_background[lambda] runs the
# same three queued calls to their end after the executor's shutdown, and its
# test_on_start_cancel_and_draining_shutdown[lambda] the backend's shutdown(wait=True) that drains them)
@pytest.mark.backends(slow=("toy", "lambda"))
def test_shutdown_wait_runs_queued_calls(one_worker):
    futs = [one_worker.submit(sleeper, 0.2) for _ in range(3)]
    one_worker.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futs] == [0.2, 0.2, 0.2]


def test_shutdown_cancel_futures(one_worker):
    running = one_worker.submit(sleeper, 0.5)
    deadline = time.monotonic() + 30
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = [one_worker.submit(square, i) for i in range(3)]
    one_worker.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=0) == 0.5
    assert all(f.cancelled() for f in queued)


@pytest.mark.slow_variants("lambda")  # (refused by the driver before any backend; Lambda's shutdown: test_shutdown_cancel_futures)
def test_runtime_error_after_shutdown(make_executor):
    ex = make_executor(concurrency=1)
    with ex:
        assert ex.submit(square, 3).result(timeout=60) == 9
    for launch in (lambda: ex.submit(square, 1), lambda: ex.map(square, [1]),
                   lambda: wrenpack.remote(square, executor=ex).remote(1)):
        with pytest.raises(RuntimeError, match="after shutdown"):
            launch()
    assert issubclass(ExecutorShutdown, wrenpack.WrenpackError)


@pytest.mark.slow_variants("lambda")  # (the driver's wait, as test_map_timeout_raises_timeout_error's; Lambda adds nothing to it)
def test_future_result_timeout(executor):
    fut = executor.submit(sleeper, 0.3)  # (six times the wait below: it cannot end within it)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    assert fut.result(timeout=30) == 0.3


# -- futures travel ---------------------------------------------------------------
def add_one_to(fut):
    return fut.result(timeout=60) + 1


def give_back(x):
    return x


@pytest.mark.slow_variants("lambda")  # (Lambda: test_aws_lambda's test_submit_and_futures_between_calls_on_lambda)
def test_futures_pass_into_and_out_of_calls(executor, remote):
    slow = executor.submit(sleeper, 0.3)  # (still running when it is passed on, just below)
    # a future passed into a call resolves there (read from the store)
    assert remote(add_one_to).remote(slow).result(timeout=60) == 1.3
    # a future returned from a call is this process's own future again
    pending = executor.submit(sleeper, 0.2)
    back = remote(give_back).remote(pending).result(timeout=60)
    assert back is pending and back.result(timeout=60) == 0.2
    # a map whose calls return futures resolves to their results when asked
    inner = [executor.submit(square, i) for i in range(3)]
    outer = remote(give_back).map(inner)
    assert wrenpack.get(outer) == [0, 1, 4]


@pytest.mark.slow_variants("lambda")  # (a reference read from S3 in another process: test_aws_lambda's test_submit_and_futures_between_calls_on_lambda)
def test_pickled_future_resolves_in_another_process(executor):
    import subprocess
    import sys

    fut = executor.submit(sleeper, 0.3)
    blob = pickle.dumps(fut)
    code = "import pickle,sys; f = pickle.loads(sys.stdin.buffer.read()); print(type(f).__name__, f.result(timeout=60))"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120, check=True)
    assert out.stdout.decode().split() == ["CallRef", "0.3"]
    # a finished future travels with its value
    done = executor.submit(square, 5)
    done.result(timeout=60)
    again = pickle.loads(pickle.dumps(done))
    assert again.result(timeout=0) == 25


def dies_after(s):
    time.sleep(s)
    os._exit(9)


def reads_its_future(fut):
    """What ``fut.result()`` gives inside a call: (outcome or exception type, message, seconds it took)."""
    start = time.monotonic()
    try:
        return "result", fut.result(), round(time.monotonic() - start, 1)
    except BaseException as exc:  # noqa: BLE001 - the test looks at what came
        return type(exc).__name__, str(exc), round(time.monotonic() - start, 1)


@pytest.mark.slow_variants("lambda")  # (there a dead call is WorkerLost after its timeout plus 30 s)
def test_a_future_passed_into_a_call_fails_there_as_its_call_did(make_executor):
    """A call whose process died ends with no result object of its own; a call reading its
    future gets that call's error at once (it used to wait for a result until its own timeout)."""
    producers, readers = make_executor(concurrency=1, retries=0), make_executor(concurrency=1, retries=0)
    doomed = producers.submit(dies_after, 0.5)
    reader = wrenpack.remote(reads_its_future, executor=readers, timeout=120).remote(doomed)
    error = doomed.exception(timeout=120)
    assert isinstance(error, (wrenpack.WorkerCrashed, wrenpack.WorkerLost)), error
    kind, message, took = reader.result(timeout=120)
    assert kind == type(error).__name__ and "dies_after" in message, message
    assert took < 60


# (Lambda with -m slow only: a reference to a cancelled call, read from S3, says cancelled in
# test_cancel's test_a_call_that_finishes_before_its_worker_sees_the_cancel_ends_cancelled[lambda-pickled];
# a future read inside a call on Lambda: test_aws_lambda's test_submit_and_futures_between_calls_on_lambda)
@pytest.mark.slow_variants("lambda")
def test_a_future_passed_into_a_call_and_cancelled_before_it_ran(make_executor, tmp_path):
    producers, readers = make_executor(concurrency=1, retries=0), make_executor(concurrency=1, retries=0)
    release = str(tmp_path / "release")
    blocker = producers.submit(held, release, 1)  # the producers' one worker is busy...
    queued = producers.submit(square, 3)  # ...so this waits
    reader = wrenpack.remote(reads_its_future, executor=readers, timeout=60).remote(queued)
    time.sleep(0.5)
    assert queued.cancel()
    open(release, "w").close()
    kind, message, took = reader.result(timeout=60)
    assert kind == "CallCancelled" and "cancelled before it ran" in message, message
    assert issubclass(wrenpack.CallCancelled, cf.CancelledError)
    assert blocker.result(timeout=60) == 1


def test_a_pickled_future_whose_job_is_gone_says_so(make_executor):
    """The launcher pickled a running call's future, read its result and shut its executor down,
    which removed the job's objects: the reference, read in another process later, fails in one
    line instead of waiting for ever."""
    import subprocess
    import sys

    ex = make_executor(concurrency=1)
    fut = ex.submit(sleeper, 0.3)
    blob = pickle.dumps(fut)
    assert fut.result(timeout=60) == 0.3
    ex.shutdown()
    code = ("import pickle,sys,time; f = pickle.loads(sys.stdin.buffer.read()); t = time.monotonic()\n"
            "try: f.result(timeout=60)\nexcept Exception as e: print(type(e).__name__, round(time.monotonic() - t), e)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120, check=True)
    kind, took, message = out.stdout.decode().strip().split(" ", 2)
    assert kind == "ObjectNotFound" and "is gone from" in message and ".spawn()" in message, out
    assert int(took) < 20


def test_a_future_that_is_no_call_cannot_travel_until_done():
    fut = wrenpack.WrenFuture("job", "call", "combined")
    with pytest.raises(TypeError, match="once it is done"):
        pickle.dumps(fut)
    fut._resolve(True, 5)
    assert pickle.loads(pickle.dumps(fut)).result(timeout=0) == 5


def test_pickled_future_of_a_batched_call(executor, remote):
    futs = remote(sleeper).map([0.1, 0.15, 0.2], chunksize=3)  # (pickled below while their batch runs)
    blobs = [pickle.dumps(f) for f in futs]
    assert wrenpack.get(futs) == [0.1, 0.15, 0.2]
    assert remote(add_one_to).remote(pickle.loads(blobs[2])).result(timeout=60) == 1.2


# -- retries you choose -----------------------------------------------------------
def flaky(path):
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    if n < 2:
        raise ConnectionError(f"attempt {n} failed")
    return n


def test_retry_on_retries_listed_exceptions(executor, remote, tmp_path):
    counter = str(tmp_path / "n")
    fut = remote(flaky, retries=3, retry_on=(ConnectionError,)).remote(counter)
    assert fut.result(timeout=60) == 2
    assert fut.status["attempt"] == 2 and len(fut.status["retried"]) == 2
    assert "ConnectionError" in fut.status["retried"][0]
    # not listed: no retry
    os.remove(counter)
    with pytest.raises(ConnectionError):
        remote(flaky, retries=3, retry_on=(KeyError,)).remote(counter).result(timeout=60)
    # listed but retries=1: fails on the second attempt
    os.remove(counter)
    fut = remote(flaky, retries=1, retry_on=ConnectionError).remote(counter)
    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        fut.result(timeout=60)
    assert fut.status["attempt"] == 1


def slow_first_time(path):
    if not os.path.exists(path):
        open(path, "w").close()
        time.sleep(30)
    return "second try"


@pytest.mark.slow_variants("lambda")  # (4 s there; Lambda's TaskTimeout: test_aws_lambda's test_errors_match_the_local_backend)
def test_retry_on_task_timeout(executor, remote, tmp_path):
    fut = remote(slow_first_time, timeout=1, retries=1, retry_on=(TaskTimeout,)).remote(str(tmp_path / "m"))
    assert fut.result(timeout=60) == "second try"
    assert fut.status["attempt"] == 1 and "TaskTimeout" in fut.status["retried"][0]


def test_bad_retry_on_and_env_are_config_errors():
    with pytest.raises(wrenpack.ConfigError, match=r"retry_on=.*\(from @wrenpack.remote\) must be an exception type"):
        wrenpack.remote(square, retry_on="ConnectionError")
    with pytest.raises(wrenpack.ConfigError, match=r"env=.*\(from options\(\)\) must be a dict"):
        wrenpack.remote(square).options(env={"A": object()})
    # (no environment variable holds a NUL: each call failed in its worker with a bare ValueError)
    with pytest.raises(wrenpack.ConfigError, match=r"env\['BAD'\] \(from options\(\)\) holds a NUL byte"):
        wrenpack.remote(square).options(env={"GOOD": "1", "BAD": "x\0y"})


def env_of_a_child(name):
    import subprocess
    import sys

    return len(subprocess.run([sys.executable, "-c", f"import os; print(os.environ[{name!r}])"],
                              capture_output=True, text=True, check=True).stdout.strip())


def test_an_env_too_large_is_refused_before_launch_and_one_that_fits_reaches_the_calls_programs(executor, remote):
    """``env=`` of 1 MiB or more killed the worker ("look for a crash in native code"), and one
    variable of 128 KiB or more could not be given to any program the call started (E2BIG).
    Both are refused in one line before anything launches; a large one that fits works."""
    f = remote(env_of_a_child)
    with pytest.raises(wrenpack.ConfigError, match=r"env\['BIG'\] \(from options\(\)\) is 131,072 bytes as NAME=value; one "
                       r"variable must be under 131,072 bytes") as info:
        f.options(env={"BIG": "e" * (128 * 1024 - 4)})
    assert "\n" not in str(info.value) and "wrenpack.store()" in str(info.value)
    with pytest.raises(wrenpack.ConfigError, match=r"env= \(from options\(\)\) is 1,100 KiB as it travels .*the most is 256 KiB"):
        f.options(env={f"V{i}": "e" * (100 * 1024) for i in range(11)})
    # Counted as it travels (JSON): 62 KiB of control characters is 372 KiB there (an Event payload
    # over Lambda's 1 MB came of 248 KiB of them, and its error blamed the arguments).
    with pytest.raises(wrenpack.ConfigError, match=r"is 372 KiB as it travels"):
        f.options(env={"CTRL": "\x01" * (62 * 1024)})
    assert f.options(env={"BIG": "e" * (100 * 1024)}).remote("BIG").result(timeout=60) == 100 * 1024


def test_a_variable_that_cannot_be_set_leaves_none_set_for_the_next_call(monkeypatch):
    """The worker's side: an event's env set in part (one the process cannot hold, from a client
    that did not check) is undone with the call, not left for the next call on the worker."""
    from wrenpack.worker.callscope import CallScope

    monkeypatch.delenv("WP_GOOD", raising=False)
    with pytest.raises(ValueError):
        CallScope({"env": {"WP_GOOD": "set", "WP_BAD": "x\0y"}}).run(os.environ.get, "WP_GOOD")
    assert "WP_GOOD" not in os.environ


class GroupedAppError(Exception):
    """An exception whose __init__ takes other arguments than it passes up: it travels by its state."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def raises_a_group(_):
    raise ExceptionGroup("two", [GroupedAppError(7, "a"), ValueError("c")])  # noqa: F821 - Python 3.11's


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11's")
def test_an_exception_group_keeps_a_sub_exception_that_travels_by_its_state(executor, remote):
    """A group holding an exception that cannot be rebuilt by calling its type became a bare
    RemoteError ("the exception type could not be rebuilt here"): except* matched nothing. Each
    sub-exception now travels as it would alone."""
    with pytest.raises(ExceptionGroup) as info:  # noqa: F821
        remote(raises_a_group).remote(1).result(timeout=60)
    group = info.value
    app = group.subgroup(GroupedAppError)
    assert group.message == "two" and app is not None, repr(group)
    assert app.exceptions[0].code == 7 and str(app.exceptions[0]) == "a"
    assert group.subgroup(ValueError) is not None and len(group.exceptions) == 2


# -- env, return_exceptions, logs ---------------------------------------------------
def read_env(name):
    return os.environ.get(name)


def test_env_is_set_for_the_call_and_restored(executor, remote):
    f = remote(read_env)
    assert f.options(env={"WP_TEST_VAR": "hello"}).remote("WP_TEST_VAR").result(timeout=60) == "hello"
    assert wrenpack.get(f.options(env={"WP_TEST_VAR": 3}).map(["WP_TEST_VAR"] * 2)) == ["3", "3"]
    # the next call on the same warm worker does not see it
    assert wrenpack.get(f.map(["WP_TEST_VAR"] * 4)) == [None] * 4
    assert executor.submit(wrenpack.remote(read_env, env={"WP_B": "b"}), "WP_B").result(timeout=60) == "b"


def fails_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_get_return_exceptions(remote):
    futs = remote(fails_on_odd).map(range(4))
    out = wrenpack.get(futs, return_exceptions=True)
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], ValueError) and str(out[1]) == "odd 1" and isinstance(out[3], ValueError)
    with pytest.raises(ValueError, match="odd 1") as info:
        wrenpack.get(futs)
    # the call's exception, its type and args kept, names the call in a note (a map's failure said not which)
    assert info.value.args == ("odd 1",) and type(info.value) is ValueError
    assert info.value.__notes__ == [f"raised by fails_on_odd[1] (job {futs[1].job_id})"]
    assert out[3].__notes__ == [f"raised by fails_on_odd[3] (job {futs[3].job_id})"]
    with pytest.raises(ValueError) as again:  # (once: a second read adds none)
        futs[1].result()
    assert again.value.__notes__ == info.value.__notes__


class BadStrError(Exception):
    def __str__(self):
        raise RuntimeError("str fails")


def raises_bad_str(_):
    raise BadStrError()


def test_an_exception_whose_str_raises_is_the_calls_error_on_every_backend(remote):
    """The worker's handler, shared by every backend, formatted its message: the call's process
    died ("exit code 0") and the call was retried and reported as a crash (WorkerCrashed)."""
    fut = remote(raises_bad_str, retries=1).remote(0)
    assert isinstance(fut.exception(timeout=120), BadStrError)
    assert "raises_bad_str" in str(fut.exception().__cause__)


def chatty(x):
    import sys

    print("hello from", x)
    print("x" * 100_000)  # more than the 64 KB kept
    print("last words", x, file=sys.stderr)
    sys.stdout.buffer.write(b"raw bytes %d\n" % x)  # (a Python-level write too)
    sys.stdout.flush()
    if x == 2:
        raise RuntimeError("boom")
    return x


def test_logs_are_captured_and_shown_with_errors(remote):
    futs = remote(chatty).map([1, 2])
    assert futs[0].result(timeout=60) == 1
    logs = futs[0].logs
    assert "last words 1" in logs and "raw bytes 1" in logs and 60_000 < len(logs.encode()) <= 64 * 1024
    with pytest.raises(RuntimeError) as info:
        futs[1].result(timeout=60)
    assert "last words 2" in futs[1].logs
    assert "last words 2" in str(info.value.__cause__)


def logs_through_logging(x):
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(message)s")  # (the first call's sets it up)
    logging.getLogger("app").info("info line %s", x)
    return x


def test_a_logging_handler_a_call_set_up_is_captured_in_every_later_call(make_executor):
    """``logging.basicConfig`` in a call: its handler holds the ``sys.stderr`` of the call
    that made it, and each call had a capture of its own, so the warm process's later
    calls lost their log lines from ``fut.logs`` (kept in the first call's capture)."""
    f = wrenpack.remote(logs_through_logging, executor=make_executor(concurrency=1))
    for x in range(3):
        fut = f.remote(x)
        assert fut.result(timeout=120) == x
        assert f"INFO:info line {x}" in fut.logs, (x, fut.logs)


def test_concurrent_threads_submit(executor):
    out = []

    def run(k):
        out.append(sorted(executor.map(square, range(k, k + 3))))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [[0, 1, 4], [1, 4, 9], [4, 9, 16]]


def _files_containing(store, needles):
    """The objects of ``store`` that hold any of ``needles``: every file under a
    local store's root (its temporary files too), every key of another."""
    hits = []
    if store.spec["type"] == "local":
        for dirpath, _, names in os.walk(store.spec["root"]):
            for name in names:
                data = open(os.path.join(dirpath, name), "rb").read()
                hits += [os.path.join(dirpath, name) for n in needles if n in data]
        return hits
    for key in store.list(""):
        data = store.get(key)
        hits += [key for n in needles if n in data]
    return hits


def test_a_future_in_stored_arguments_carries_no_secret_into_the_store(make_executor, tmp_path):
    """The authentication rule holds for travelling futures: the referenced job's secret
    travels in the invocation, never inside an object in the store."""
    import base64

    ex = make_executor(inline_limit=0, keep_objects=True)
    release = str(tmp_path / "release")
    slow = ex.submit(held, release, 1.5)  # runs until released below
    secret = ex._jobs[slow.job_id].secret
    # pickled by the user, the reference keeps its secret (the user holds that pickle)
    assert base64.b64encode(secret) in pickle.dumps(slow)
    out = ex.submit(add_one_to, slow)
    assert not slow.done()  # it travelled as a reference, not with its value
    open(release, "w").close()
    assert out.result(timeout=60) == 2.5
    assert _files_containing(ex.store, [secret, base64.b64encode(secret)]) == []


def test_a_job_launched_inside_a_call_derives_its_secret_from_the_call():
    """A future returned from a call names its job's chain, not its secret; the
    client, which holds the root job's secret, derives it again."""
    from wrenpack.worker import refs

    refs.enter_call("20260101-000000-aaaaaaaa", b"r" * 32)
    try:
        sub_secret, chain = refs.new_job_secret("20260101-000000-bbbbbbbb")
    finally:
        refs.enter_call(None)
    assert chain == ["20260101-000000-aaaaaaaa"] and sub_secret != b"r" * 32
    ref = {"job_id": "20260101-000000-bbbbbbbb", "call_id": "00000", "store": {"type": "local", "root": "/nonexistent"},
           "chain": chain, "result_job": "20260101-000000-bbbbbbbb", "result_call": "00000", "item": None}
    with refs.sealing_scope() as seen:
        blob = pickle.dumps(refs.CallRef(ref))
    assert sub_secret not in blob and seen == {("20260101-000000-bbbbbbbb", tuple(chain))}
    # The call ended: the worker forgot the secrets it brought (its job's and the sub-job's).
    assert refs.secret_for("20260101-000000-bbbbbbbb") is None and refs.secret_for("20260101-000000-aaaaaaaa") is None
    refs.remember("20260101-000000-aaaaaaaa", b"r" * 32)  # the client, which launched the root job
    assert refs.secret_for("20260101-000000-bbbbbbbb", chain) == sub_secret
    # without the root's secret nothing can be derived
    with refs._keyring_lock:
        refs._keyring.pop("20260101-000000-aaaaaaaa", None)
    assert refs.secret_for("20260101-000000-bbbbbbbb", chain) is None


def keyring_size():
    from wrenpack.worker import refs

    return len(refs.kept_secrets())


@pytest.mark.backends(slow=("toy", "lambda"))  # 52 calls one after another: 7 s on toy, 14 s on lambda
def test_a_warm_worker_forgets_each_calls_secrets(one_worker):
    # The helper found one keyring entry per call kept for good in a warm worker
    # (and every call's memory counts against its limit there).
    f = wrenpack.remote(square, executor=one_worker)
    for i in range(50):
        assert f.remote(i).result(timeout=60) == i * i
    arg = f.remote(3)
    assert wrenpack.remote(add_one_to, executor=one_worker).remote(arg).result(timeout=60) == 10  # a ref's secret came in
    assert wrenpack.remote(keyring_size, executor=one_worker).remote().result(timeout=60) <= 1  # its own call's


@pytest.mark.backends(slow=("toy", "lambda"))  # 60 calls one after another: 6 s on toy, 14 s on lambda
def test_the_driver_forgets_a_jobs_secret_with_its_last_future(one_worker):
    import gc

    from wrenpack.worker import refs

    f = wrenpack.remote(square, executor=one_worker)
    futs = [f.remote(i) for i in range(20)] + f.map(range(40))
    assert [x.result(timeout=60) for x in futs[:20]] == [i * i for i in range(20)]
    wrenpack.get(futs[20:], timeout=60)
    jobs = {x.job_id for x in futs}
    kept = futs[3]
    assert refs.secret_for(kept.job_id) is not None  # a live future can still travel
    del futs
    gc.collect()
    assert refs.kept_secrets() & jobs == {kept.job_id}, "secrets of jobs whose futures are gone are still kept"
    assert pickle.loads(pickle.dumps(kept)).result(timeout=60) == 9
