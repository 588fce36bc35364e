"""Automatic grouping of short calls (``wrenpack.grouping``): a map
of short calls goes in a few invocations, yet every call keeps its own future,
outcome, limits, cancellation and travelling reference."""
from __future__ import annotations

import os
import pickle
import time

import pytest

import wrenpack
from wrenpack.backends.local import LocalBackend


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=2, retries=0)


def double(x):
    return 2 * x


def test_short_calls_go_in_groups_and_keep_their_own_results(ex):
    f = wrenpack.remote(double, executor=ex)
    first = f.map(range(400))  # a new function: its first calls are timed, the rest grouped
    assert wrenpack.get(first) == [2 * x for x in range(400)]
    before = ex.backend.messages_sent
    futs = f.map(range(2000))  # timed before: grouped at once
    assert wrenpack.get(futs) == [2 * x for x in range(2000)]
    assert ex.backend.messages_sent - before <= 64, "2,000 short calls were not grouped"
    status = futs[7].status
    assert status["group"]["size"] > 1 and 0 <= status["duration_s"] < 0.05
    assert list(ex.map(double, range(50))) == [2 * x for x in range(50)]


def crash_on(x, bad):
    if x == bad:
        os._exit(3)
    return x


def test_a_call_that_kills_its_group_fails_alone(ex):
    f = wrenpack.remote(crash_on, executor=ex)
    wrenpack.get(f.map(range(20), bad=-1))  # timed: short
    futs = f.map(range(200), bad=123)
    for x, fut in enumerate(futs):
        if x == 123:
            with pytest.raises(wrenpack.WorkerCrashed):
                fut.result(timeout=60)
        else:
            assert fut.result(timeout=60) == x


def test_cancelling_one_call_of_a_waiting_group_cancels_only_it(tmp_path):
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=1), retries=0) as ex:
        f = wrenpack.remote(double, executor=ex)
        wrenpack.get(f.map(range(20)))  # timed: short
        blocker = ex.submit(time.sleep, 1.0)
        futs = f.map(range(100))
        assert futs[50].cancel()
        assert futs[50].cancelled()
        blocker.result(timeout=60)
        for x, fut in enumerate(futs):
            if x != 50:
                assert fut.result(timeout=60) == 2 * x


def test_shutdown_cancelling_futures_ends_every_call(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=1), retries=0)
    f = wrenpack.remote(double, executor=ex)
    blocker = ex.submit(time.sleep, 0.5)
    deadline = time.monotonic() + 30
    while not blocker.running() and not blocker.done() and time.monotonic() < deadline:
        time.sleep(0.005)  # a call its worker has not started yet is cancelled too (as a pool's)
    assert blocker.running() or blocker.done()
    futs = f.map(range(300))  # new function: most calls are held back for the timing
    ex.shutdown(wait=True, cancel_futures=True)
    assert blocker.result(timeout=5) is None
    assert all(fut.done() for fut in futs)
    done = [fut for fut in futs if not fut.cancelled()]
    assert all(fut.result() == 2 * x for x, fut in enumerate(futs) if fut in done)


def read_future(fut):
    return fut.result()


def test_a_held_back_future_travels(ex):
    f = wrenpack.remote(double, executor=ex)
    futs = f.map(range(300))  # new function: the last calls wait for the first to be timed
    assert wrenpack.remote(read_future, executor=ex).remote(futs[-1]).result(timeout=60) == 598
    pickle.loads(pickle.dumps(futs[-2]))  # pickled by the user too
    assert wrenpack.get(futs) == [2 * x for x in range(300)]


def sleepy(x):
    time.sleep(0.02)
    return x


def test_calls_known_to_be_long_go_one_per_invocation(ex):
    f = wrenpack.remote(sleepy, executor=ex)
    wrenpack.get(f.map(range(10)))
    futs = f.map(range(10))
    assert wrenpack.get(futs) == list(range(10))
    assert all("group" not in fut.status for fut in futs)


def _learned_after_group(ex, seconds, waited):
    """What a plan learns from one group of ``double`` that took ``seconds``,
    ``waited`` of it for a CPU."""
    from wrenpack.executor import Prepared
    from wrenpack.executor.grouping import _Plan
    from wrenpack.executor.profiled import code_key
    from wrenpack.futures import WrenFuture
    from wrenpack.worker.batch import Outcomes

    n = len(seconds)
    plan = _Plan(ex, double, None, "double", code_key(double), Prepared(b"", [b""] * n), 2)  # type: ignore[arg-type]
    plan.make_items()
    outcomes = Outcomes([("ok", 2 * i) for i in range(n)])
    outcomes.seconds, outcomes.waited = seconds, waited
    gfut = WrenFuture("job", "call", "double[group]")
    gfut._resolve(True, outcomes)
    plan._group_done(gfut, list(range(n)))
    assert [item.result(timeout=1) for item in plan.items] == [2 * i for i in range(n)]
    return ex.call_seconds[plan.key]


def test_a_call_preempted_by_a_busy_machine_does_not_shrink_the_next_groups(ex):
    # A CI run under load: one call of a group of fifty 5 us calls preempted for
    # 30 ms made the learned mean 0.6 ms, and the next map of 2,000 calls went in
    # 131 invocations. The time the worker waited for a CPU is not the calls'.
    stalled = [5e-6] * 49 + [0.03]
    assert _learned_after_group(ex, stalled, waited=0.0299) < 20e-6
    # A stall the kernel does not count as waiting (reclaim, a collector pass) in
    # one or two calls of a group is not the function's either.
    for waited in (0.0, None):
        ex.call_seconds.clear()
        assert _learned_after_group(ex, [5e-6] * 48 + [0.03, 0.05], waited=waited) < 20e-6
    # Calls that really take 30 ms, more than two in a group, still count: such maps ungroup.
    ex.call_seconds.clear()
    assert _learned_after_group(ex, [5e-6] * 40 + [0.03] * 10, waited=0.0) > 2e-3
    ex.call_seconds.clear()
    assert _learned_after_group(ex, [5e-6] * 3 + [0.03], waited=None) > 2e-3  # too few calls to leave one out


_CONTENDED = r"""
import os, time
from wrenpack.worker.batch import Batch
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
hog = os.fork()
if hog == 0:
    while True:
        pass
def spin(s):
    end = time.perf_counter() + s
    while time.perf_counter() < end:
        pass
out = Batch(spin)([((0.05,), {})] * 6)
os.kill(hog, 9)
os.waitpid(hog, 0)
print(sum(out.seconds), out.waited)
"""


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="the kernel does not report run-queue wait")
def test_a_batch_reports_the_time_it_waited_for_a_cpu():
    import subprocess
    import sys

    total, waited = map(float, subprocess.run([sys.executable, "-c", _CONTENDED], check=True, capture_output=True,
                                              text=True, timeout=60).stdout.split())
    # Sharing one CPU with a spinning process: about half the wall time is waiting.
    assert 0.2 * total < waited < total


def sleep_on(x, long_one, marker):
    if x == long_one:
        open(marker, "w").close()
        time.sleep(30)
    return x


def _wait_for(path, timeout=30.0):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


def test_stopping_one_running_call_of_an_explicit_chunk_stops_the_chunk(tmp_path):
    """``wrenpack.cancel`` of a running item of a ``chunksize=k`` map: the chunk
    is one invocation, so it is stopped and all its items end cancelled (as
    cancelling a waiting item takes back the chunk); other chunks keep their
    results. It answered [False] and the item ran to its end."""
    marker = str(tmp_path / "running")
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=2), retries=0) as ex:
        f = wrenpack.remote(sleep_on, executor=ex)
        futs = f.map([0, 1, 2, 3], long_one=1, marker=marker, chunksize=2)
        _wait_for(marker)
        t0 = time.monotonic()
        assert wrenpack.cancel(futs[1]) == [True]
        for fut in futs[:2]:
            with pytest.raises(wrenpack.CallCancelled):
                fut.result(timeout=20)
        assert time.monotonic() - t0 < 15, "the chunk ran on after it was stopped"
        assert [fut.result(timeout=20) for fut in futs[2:]] == [2, 3]


def test_stopping_one_running_call_of_an_automatic_group_stops_only_it(tmp_path):
    """Calls grouped automatically keep their own cancellation: stopping one that
    runs stops its group's invocation, and the group's other calls run again,
    each with its own result."""
    marker = str(tmp_path / "running")
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=1), retries=0) as ex:
        f = wrenpack.remote(sleep_on, executor=ex)
        wrenpack.get(f.map(range(40), long_one=-1, marker=marker))  # timed: short, so grouped from now on
        futs = f.map(range(60), long_one=30, marker=marker)
        _wait_for(marker)
        assert type(futs[30]._owner).__name__ == "_Group", "the call did not run in a group: the test proves nothing"
        assert wrenpack.cancel(futs[30]) == [True]
        with pytest.raises(wrenpack.CallCancelled):
            futs[30].result(timeout=20)
        for x, fut in enumerate(futs):
            if x != 30:
                assert fut.result(timeout=20) == x


def slow_probes(x):
    """The map's first calls (its probes) take 6 ms, as on a busy machine; the rest 0."""
    if x < 2:
        time.sleep(0.006)
    return x


def test_probes_slowed_by_a_busy_machine_do_not_send_a_map_alone(ex):
    """A new function's first calls are timed before the rest are grouped. Two
    probes slowed to a few milliseconds sent every other call of a map alone (a
    100,000-call map took 41.8 s instead of 2.2 s); now the next calls probe again,
    and the map goes in groups."""
    f = wrenpack.remote(slow_probes, executor=ex)
    before = ex.backend.messages_sent
    assert wrenpack.get(f.map(range(3000))) == list(range(3000))
    assert ex.backend.messages_sent - before <= 300, f"{ex.backend.messages_sent - before} messages: the map went alone"
