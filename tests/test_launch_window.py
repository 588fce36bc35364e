"""A map's calls are handed to the backend a window at a time (``RunningJob``,
``CallTable._fill``): the futures exist at once, each call's event and
invocation only from its launch to its end, so a driver of 100,000 calls
holds small futures and pickles, not 100,000 events. And the futures
themselves are small (``WrenFuture``: slots, one shared lock, a condition of
their own only when waited on, packed status records)."""
from __future__ import annotations

import gc
import json
import os
import pickle
import threading
import time
import tracemalloc

import pytest

import wrenpack
from wrenpack.backends import Backend, Capabilities, Invocation, InvocationResult
from wrenpack.errors import WorkerLost, WrenpackError
from wrenpack.executor.calls import MIN_WINDOW, WINDOW_PER_SLOT
from wrenpack.futures import WrenFuture


class Holding(Backend):
    """Runs nothing: holds what it is handed until the test ends a call (``fail``)."""

    name = "holding"

    def __init__(self, concurrency: int = 8) -> None:
        self.concurrency = concurrency
        self.lock = threading.Lock()
        self.held: dict[tuple[str, str], Invocation] = {}
        self.seen: list[str] = []  # call ids, in the order they were handed over
        self.most = 0  # the most calls held at once

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(concurrency=self.concurrency)

    def invoke(self, invocation: Invocation) -> None:
        with self.lock:
            self.held[invocation.key] = invocation
            self.seen.append(invocation.key[1])
            self.most = max(self.most, len(self.held))

    def cancel(self, invocation: Invocation) -> bool:
        with self.lock:
            return self.held.pop(invocation.key, None) is not None

    def fail(self, count: int) -> None:
        """End the first ``count`` calls held (a failure: no result object to forge)."""
        with self.lock:
            ending = list(self.held.values())[:count]
            for inv in ending:
                del self.held[inv.key]
        for inv in ending:
            inv.on_done(inv, InvocationResult(error=WrenpackError(f"{inv.label} ended by the test")))

    def shutdown(self, wait: bool = True) -> None:
        with self.lock:
            left, self.held = list(self.held.values()), {}
        for inv in left:
            inv.on_done(inv, InvocationResult(error=WorkerLost("the holding backend shut down")))


def nothing(x):
    return x


@pytest.fixture
def holding(tmp_path):
    backend = Holding(concurrency=8)
    ex = wrenpack.Executor(backend=backend, storage=str(tmp_path / "store"))
    yield ex, backend
    ex.shutdown(wait=True, cancel_futures=True)


def test_a_map_of_20000_calls_holds_a_window_of_invocations_and_small_futures(holding):
    ex, backend = holding
    f = wrenpack.remote(nothing, executor=ex)
    for fut in f.map(range(10)):  # (the function pickled, the backend started: not counted)
        assert fut.cancel()
    backend.seen, backend.most = [], 0
    gc.collect()
    tracemalloc.start()
    try:
        futs = f.map(range(20_000))
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_call = used / len(futs)
    # Before the window: every call's event, invocation, closures and a Condition per
    # future, about 5 KB a call. Now a slotted future, its ids and label, its pickle.
    assert per_call < 1200, f"{per_call:.0f} bytes per pending call"
    window = max(MIN_WINDOW, WINDOW_PER_SLOT * backend.concurrency)
    assert len(backend.seen) == window and backend.most == window
    assert all(not fut.done() for fut in futs)


def test_the_window_refills_as_calls_end_and_a_queued_call_cancels(holding):
    ex, backend = holding
    futs = wrenpack.remote(nothing, executor=ex).map(range(1000))
    window = len(backend.seen)
    assert window < 1000
    queued = futs[-1]
    assert queued.cancel() and queued.cancelled()  # never handed to the backend
    assert futs[0].cancel()  # handed over, not started: the backend gives it back
    backend.fail(window // 2)  # half the window ends: the next calls go, in order
    wrenpack.wait(futs[1 : window // 2 + 1], timeout=30)  # (the window is filled before a future resolves)
    assert len(backend.seen) > window
    assert backend.seen == sorted(backend.seen)
    assert backend.most <= window
    # The rest end; every call but the cancelled ones was launched exactly once.
    deadline = time.monotonic() + 30
    while not all(fut.done() for fut in futs) and time.monotonic() < deadline:
        backend.fail(len(backend.held))  # (the collector launches the next ones meanwhile)
        time.sleep(0.01)
    assert futs[-1].call_id not in backend.seen
    assert len(backend.seen) == len(set(backend.seen)) == 999
    assert all(isinstance(fut.exception(), WrenpackError) for fut in futs[1:-1])


def test_a_future_pickled_before_its_launch_is_launched_at_once(holding):
    ex, backend = holding
    futs = wrenpack.remote(nothing, executor=ex).map(range(1000))
    late = futs[900]
    assert late.call_id not in backend.seen
    ref = pickle.loads(pickle.dumps(late))  # a call reading it must not wait ahead of it
    assert ref is late and late.call_id in backend.seen


def test_shutdown_cancels_the_calls_not_launched_and_ends_the_job(tmp_path):
    backend = Holding(concurrency=2)
    ex = wrenpack.Executor(backend=backend, storage=str(tmp_path / "store"))
    futs = wrenpack.remote(nothing, executor=ex).map(range(600))
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(fut.cancelled() for fut in futs)
    assert not ex._jobs and len(backend.seen) == MIN_WINDOW


def flaky_once(x, marks):
    """Fails the first time for every hundredth item (``retry_on`` retries it)."""
    mark = os.path.join(marks, str(x))
    if x % 100 == 0 and not os.path.exists(mark):
        open(mark, "w").close()
        raise KeyError(x)
    return x * 2


def test_a_windowed_map_on_workers_keeps_order_retries_and_reports_progress(make_executor, tmp_path, capsys):
    ex = make_executor(concurrency=2, retries=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    n = MIN_WINDOW * 3  # (retry_on: one invocation per call, three windows of them)
    f = wrenpack.remote(flaky_once, executor=ex, retry_on=(KeyError,), retries=1)
    futs = f.map(range(n), marks=str(marks))
    assert wrenpack.get(futs, progress="log") == [2 * x for x in range(n)]
    assert futs[100].status["attempt"] == 1 and futs[100].status["retried"] == ["KeyError: 100"]
    assert len(futs[100].retried_statuses) == 1 and futs[101].status["attempt"] == 0
    assert f"{n}/{n} calls done" in capsys.readouterr().err
    report = wrenpack.job_report(futs, executor=ex)
    assert len(report.calls) == n


def test_a_done_future_keeps_its_status_packed_until_read():
    record = {"job_id": "20261205-172058-95652d0b", "call_id": "00003", "attempt": 0, "segment": 0, "exit": "ok",
              "start": 1796491258.5, "end": 1796491258.6, "duration_s": 0.1, "peak_rss_mb": 17.2,
              "children_peak_rss_mb": None, "host": "vm", "pid": 10369, "python": "3.11", "request_id": "10369-1",
              "run_s": 4.2e-05, "first": True, "memory_mb": 1024, "timeout_s": 300.0}
    text = json.dumps(record)
    gc.collect()
    tracemalloc.start()
    try:
        futs = []
        for i in range(5000):
            fut = WrenFuture("20261205-172058-95652d0b", f"{i:05d}", f"f[{i}]", register=False)  # (as the executor makes them)
            fut.status = json.loads(text)  # (a record as a worker's reply brings it)
            fut.set_result(i)
            futs.append(fut)
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A future with its own Condition and status dict took about 3 KB.
    assert used / len(futs) < 1100, f"{used / len(futs):.0f} bytes per done future"
    status = futs[7].status
    assert status == record and futs[7].status is status  # read once, then the same dict
    status["note"] = "kept"
    assert futs[7].status["note"] == "kept"


def test_futures_of_many_calls_wait_each_for_its_own():
    futs = [WrenFuture("job", f"{i:05d}", f"f[{i}]") for i in range(50)]
    got: dict[int, object] = {}

    def waiter(i):
        got[i] = futs[i].result(timeout=30)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(0, 50, 7)]
    for t in threads:
        t.start()
    for i, fut in enumerate(futs):
        fut.set_result(i)
    for t in threads:
        t.join(30)
    assert got == {i: i for i in range(0, 50, 7)}
    with pytest.raises(TimeoutError):
        WrenFuture().result(timeout=0.05)


def test_a_thread_waiting_on_its_future_is_not_woken_by_the_others(monkeypatch):
    """Threads each blocked on a future of their own (a thread pool around
    ``.remote()``) are woken by their own future's end only: with one condition
    for all, every call's end woke every waiting thread."""
    import wrenpack.futures as futures_module

    wakeups = []

    class Counting(threading.Condition):
        def wait(self, timeout=None):
            out = super().wait(timeout)
            wakeups.append(1)
            return out

    monkeypatch.setattr(futures_module, "_CONDITION", Counting(futures_module._LOCK))
    monkeypatch.setattr(futures_module, "_own_condition", lambda: Counting(futures_module._LOCK))
    futs = [WrenFuture("job", f"{i:05d}", f"f[{i}]") for i in range(400)]
    waiting = futs[:8]
    threads = [threading.Thread(target=f.result, args=(30,)) for f in waiting]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while sum(len(f._condition._waiters) for f in waiting) < len(waiting):
        assert time.monotonic() < deadline, "the waiters did not block"
        time.sleep(0.005)
    for i, fut in enumerate(futs[len(waiting):]):  # 392 other futures end
        fut.set_result(i)
    time.sleep(0.1)
    assert len(wakeups) == 0, f"{len(wakeups)} wake-ups of threads whose futures had not ended"
    for fut in waiting:
        fut.set_result("mine")
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(wakeups) == len(waiting)


@pytest.mark.parametrize("profiled, chunksize, expected", [(None, None, None), (3.0, None, 3.0), (3.0, 2, 6.0), (100.0, None, 60.0)])
def test_the_profiles_run_time_goes_with_each_invocation(holding, monkeypatch, profiled, chunksize, expected):
    """A backend's completion checks start from the saved profile's run time (a
    Lambda poller then checks a 60 s call near its end): a batch's is its calls'
    together, a call past its timeout's is the timeout (one segment)."""
    import wrenpack.executor.launch as launch

    monkeypatch.setattr(launch, "profiled_duration", lambda *a, **k: profiled)
    ex, backend = holding
    f = wrenpack.remote(nothing, executor=ex, timeout=60)
    futs = f.map(range(4), chunksize=chunksize)
    deadline = time.monotonic() + 10
    while not backend.held and time.monotonic() < deadline:
        time.sleep(0.01)
    held = list(backend.held.values())
    assert held
    assert {inv.extra.get("expected_s") for inv in held} == {expected}
    for fut in futs:
        fut.cancel()


def test_cancelling_the_calls_of_a_batch_waiting_to_start(holding):
    """A batch's member cancelled before it starts: the batch is taken back and
    its members told, once (cancel() raised "Future in unexpected state" when the
    member, told already, was told again)."""
    ex, backend = holding
    futs = wrenpack.remote(nothing, executor=ex).map(range(4), chunksize=2)
    deadline = time.monotonic() + 10
    while not backend.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [fut.cancel() for fut in futs] == [True] * 4
    assert all(fut.cancelled() for fut in futs)
