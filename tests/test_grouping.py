"""Automatic grouping of short calls (issue 15, ``wrenpack.grouping``): a map
of short calls goes in a few invocations, yet every call keeps its own future,
outcome, limits, cancellation and travelling reference."""
from __future__ import annotations

import os
import pickle
import time

import pytest

import wrenpack
from wrenpack.backends.local import LocalBackend


@pytest.fixture
def ex(tmp_path):
    e = wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=2), retries=0)
    yield e
    e.shutdown()


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
