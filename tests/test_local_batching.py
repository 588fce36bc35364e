"""Automatic batching and pipelining in the local backend keep every call's
own outcome and limits: batched calls fail one by one, a memory limit or a
timeout stops only the call that broke it, nothing waits behind a long call."""
from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

import wrenpack


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=2)


def _batched(ex, calls: int) -> float:
    """The map's calls per message the backend sent: above 1 when calls went
    grouped (in one invocation, or several invocations per message)."""
    return calls / max(1, ex.backend.messages_sent)


def picky(x):
    if x % 7 == 3:
        raise ValueError(f"item {x} is bad")
    return x * 10


def test_batched_calls_fail_one_by_one(ex):
    futs = wrenpack.remote(picky, executor=ex).map(range(300))
    for x, fut in enumerate(futs):
        if x % 7 == 3:
            with pytest.raises(ValueError, match=f"item {x} is bad"):
                fut.result(timeout=60)
        else:
            assert fut.result(timeout=60) == x * 10
    assert _batched(ex, 300) > 2, "short calls were not grouped"


def hog_or_not(x):
    if x == 150:
        block = bytearray(400 * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
    return x


def test_memory_limit_stops_only_the_batched_call_that_broke_it(ex):
    futs = wrenpack.remote(hog_or_not, executor=ex, memory=256).map(range(300))
    for x, fut in enumerate(futs):
        if x == 150:
            with pytest.raises(wrenpack.MemoryLimitExceeded, match="256 MB"):
                fut.result(timeout=60)
        else:
            assert fut.result(timeout=60) == x
    assert _batched(ex, 300) > 2


def sleepy_or_not(x):
    if x == 100:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # only the hard kill stops it
        time.sleep(30)
    return x


def test_timeout_is_per_call_in_a_batch(ex):
    t0 = time.monotonic()
    futs = wrenpack.remote(sleepy_or_not, executor=ex, timeout=1).map(range(200))
    for x, fut in enumerate(futs):
        if x == 100:
            with pytest.raises(wrenpack.TaskTimeout):
                fut.result(timeout=60)
        else:
            assert fut.result(timeout=60) == x
    assert time.monotonic() - t0 < 10
    assert _batched(ex, 200) > 2


def nap(s):
    time.sleep(s)
    return s


def test_long_calls_are_not_queued_behind_a_running_one(ex):
    f = wrenpack.remote(nap, executor=ex)
    wrenpack.get(f.map([0.0, 0.0]))  # both workers warm
    items = [0.01] * 8 + [1.0, 0.01, 0.01, 0.01, 0.01, 1.0, 0.01, 0.01]
    t0 = time.monotonic()
    wrenpack.get(f.map(items))
    elapsed = time.monotonic() - t0
    # Ideal: the two 1 s calls on different workers, the short ones beside them.
    assert elapsed < 1.0 + 0.6, f"{elapsed:.2f} s: a call waited behind a long one"


def steady_nap(s):
    time.sleep(s)
    return s


def test_steady_longer_calls_go_to_a_worker_just_before_its_running_call_ends(ex):
    """A function whose calls take about the same time each has its next call sent
    to a worker shortly before the running one is expected to end, so the worker
    starts it without a round trip through the driver; every result is its own."""
    f = wrenpack.remote(steady_nap, executor=ex)
    ahead = ex.backend.calls_sent_ahead
    items = [0.2 + i * 1e-6 for i in range(12)]
    assert wrenpack.get(f.map(items)) == items
    assert ex.backend.calls_sent_ahead > ahead, "no call of a steady function was sent ahead of its worker's reply"


def varied_nap(s):
    time.sleep(s)
    return s


def test_calls_whose_times_vary_are_never_sent_ahead(ex):
    f = wrenpack.remote(varied_nap, executor=ex)
    ahead = ex.backend.calls_sent_ahead
    items = [0.05, 0.3] * 6
    assert wrenpack.get(f.map(items)) == items
    assert ex.backend.calls_sent_ahead == ahead


def _wait_for_a_call_sent_ahead(ex, ahead: int) -> None:
    """Until the backend sent a call to a worker ahead of its running call's end
    (``calls_sent_ahead`` past ``ahead``), 20 s at most."""
    deadline = time.monotonic() + 20
    while ex.backend.calls_sent_ahead == ahead and time.monotonic() < deadline:
        time.sleep(0.002)


def test_cancelling_a_map_whose_calls_were_sent_ahead_ends_every_call(ex):
    """Cancelled while calls wait in the workers behind running ones: each future
    ends, cancelled or with its own result, and nothing hangs."""
    f = wrenpack.remote(steady_nap, executor=ex)
    ahead = ex.backend.calls_sent_ahead
    futs = f.map([0.15] * 24)  # (steady after its first calls: later ones go ahead)
    _wait_for_a_call_sent_ahead(ex, ahead)
    for fut in futs:
        fut.cancel()
    outcomes = []
    for fut in futs:
        try:
            outcomes.append(fut.result(timeout=30))
        except concurrent.futures.CancelledError:
            outcomes.append("cancelled")
    assert set(outcomes) <= {0.15, "cancelled"} and "cancelled" in outcomes
    assert ex.backend.calls_sent_ahead > ahead


def test_cancelling_calls_stops_those_waiting_in_a_worker_behind_a_running_one(ex):
    """``wrenpack.cancel`` of a map whose next call already waits in a worker (sent
    ahead of a steady call's end): that call is cancelled too, not put back in the
    queue to run after the worker is stopped."""
    f = wrenpack.remote(steady_nap, executor=ex)
    ahead = ex.backend.calls_sent_ahead
    futs = f.map([0.3] * 12)  # (steady after its first calls: later ones go ahead)
    _wait_for_a_call_sent_ahead(ex, ahead)
    assert ex.backend.calls_sent_ahead > ahead
    done_before = [fut.done() for fut in futs]
    wrenpack.cancel(futs)
    for fut, was_done in zip(futs, done_before):
        if was_done:
            continue
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(timeout=30)


def nap_and_mark(args):
    seconds, mark = args
    time.sleep(seconds)
    with open(mark, "w") as f:
        f.write("ran to its end")
    return seconds


def test_a_longer_call_cancelled_while_it_waits_in_a_worker_does_not_run(ex, tmp_path):
    """Cancelled while it waits behind a running call that is not: it never runs to
    its end (taken back from its worker; or, had the worker claimed it already,
    stopped at once when its turn comes, its worker replaced)."""
    f = wrenpack.remote(nap_and_mark, executor=ex)
    ahead = ex.backend.calls_sent_ahead
    items = [(0.3, str(tmp_path / f"call{i}")) for i in range(12)]  # (steady after its first calls: later ones go ahead)
    futs = f.map(items)
    _wait_for_a_call_sent_ahead(ex, ahead)
    with ex.backend._lock:
        waiting = [w.inflight[1].key for w in ex.backend._workers if len(w.inflight) > 1]
    assert waiting, "no call was sent ahead"
    victim = next(i for i, fut in enumerate(futs) if (fut.job_id, fut.call_id) == waiting[0])
    wrenpack.cancel([futs[victim]])
    with pytest.raises(concurrent.futures.CancelledError):
        futs[victim].result(timeout=30)
    for i, fut in enumerate(futs):
        if i != victim:
            assert fut.result(timeout=30) == 0.3
    assert not (tmp_path / f"call{victim}").exists(), "the cancelled call ran to its end"


def nap_and_sum(args):
    seconds, block, runs = args
    time.sleep(seconds)
    with open(runs, "a") as f:
        f.write(f"{seconds}\n")
    return seconds, sum(block[::4096])


def test_a_call_sent_ahead_of_an_overrunning_call_goes_to_a_worker_left_idle(ex, tmp_path):
    """A steady function's call sent to a worker ahead of its running call's end
    waits behind it when that call runs far past the usual time. Once the other
    worker is idle with nothing queued, it takes that call (taken back before it
    started: it runs once, there): the short calls end long before the long one.
    Its arguments travel as sealed memfds beside its message (hand-off): the worker
    it was taken from closes those it received, and the idle one gets them again."""
    runs = tmp_path / "runs"
    f = wrenpack.remote(nap_and_sum, executor=ex)
    blocks = [bytes([i]) * (3 << 20) for i in range(16)]  # (3 MiB each: past the hand-off size)
    items = [(0.1 + i * 1e-6, blocks[i], str(runs)) for i in range(16)]
    items[8] = (3.0, blocks[8], str(runs))  # (after the first calls were timed: the map's calls are steady by then)
    recalled = ex.backend.calls_recalled
    futs = f.map(items)
    short = futs[:8] + futs[9:]
    _done, waiting = concurrent.futures.wait(short, timeout=2.6)
    assert not waiting, f"{len(waiting)} short call(s) still waited behind the long one after 2.6 s"
    assert not futs[8].done()
    assert ex.backend.calls_recalled > recalled
    assert [fut.result(timeout=30) for fut in futs] == [(s, sum(b[::4096])) for s, b, _ in items]
    ran = runs.read_text().split()
    assert len(ran) == len(items) and len(set(ran)) == len(items), f"a call taken back ran where it was sent as well: {ran}"


def test_a_call_sent_ahead_and_cancelled_is_taken_back_without_stopping_its_worker(ex, tmp_path):
    """Cancelling a call that waits in a worker behind a running one (sent ahead of
    its end) takes it back: the running call ends with its own result on the same
    worker, which is not replaced, and the cancelled call never runs."""
    f = wrenpack.remote(nap_and_mark, executor=ex)
    items = [(0.3 + i * 1e-6, str(tmp_path / f"call{i}")) for i in range(16)]
    items[8] = (2.0, str(tmp_path / "call8"))  # (steady by then; the call sent ahead of it waits ~1.7 s, the queue not empty)
    futs = f.map(items)
    deadline = time.monotonic() + 20
    victim = None
    while victim is None and time.monotonic() < deadline:
        long_key = (futs[8].job_id, futs[8].call_id)  # (read once launched)
        with ex.backend._lock:
            held = [w.inflight[1].key for w in ex.backend._workers
                    if len(w.inflight) == 2 and w.inflight[0].key == long_key and w.ahead is w.inflight[1]]
            starts, recalled = ex.backend.worker_starts, ex.backend.calls_recalled
        if held:
            victim = next(i for i, fut in enumerate(futs) if (fut.job_id, fut.call_id) == held[0])
        else:
            time.sleep(0.005)
    assert victim is not None, "no call was sent ahead of the long one"
    wrenpack.cancel([futs[victim]])
    with pytest.raises(concurrent.futures.CancelledError):
        futs[victim].result(timeout=30)
    for i, fut in enumerate(futs):
        if i != victim:
            assert fut.result(timeout=30) == items[i][0]
    assert not (tmp_path / f"call{victim}").exists(), "the cancelled call ran"
    assert ex.backend.calls_recalled >= recalled + 1  # (and any the map's tail took back for an idle worker)
    assert ex.backend.worker_starts == starts, "a worker was stopped and replaced to cancel a call that had not started"


def test_a_call_its_worker_gives_back_unrun_is_sent_again(ex, caplog):
    """A call sent ahead whose byte in the ahead pipe is gone when its turn comes (read
    by something of the worker's, not by the driver) is answered ``withdrawn`` without
    running: the driver sends it again, rather than waiting for it until its deadline."""
    f = wrenpack.remote(steady_nap, executor=ex, timeout=30)
    ahead = ex.backend.calls_sent_ahead
    futs = f.map([0.2 + i * 1e-6 for i in range(12)])
    stolen = b""
    for _ in range(5):
        if stolen:
            break
        _wait_for_a_call_sent_ahead(ex, ahead)
        ahead = ex.backend.calls_sent_ahead
        with ex.backend._lock:
            holder = next((w for w in ex.backend._workers if w.ahead is not None), None)
            try:
                stolen = holder is not None and os.read(holder._ahead_r, 1)  # (as a thief in the worker would)
            except BlockingIOError:  # (its worker claimed it a moment ago: the next one)
                pass
    assert stolen, "no call was waiting sent ahead"
    t0 = time.monotonic()
    assert [fut.result(timeout=30) for fut in futs] == [0.2 + i * 1e-6 for i in range(12)]
    assert time.monotonic() - t0 < 10
    assert "gave it back unrun" in caplog.text
