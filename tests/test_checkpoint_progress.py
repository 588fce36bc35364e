"""A checkpointed call whose segments make no progress is stopped with one line saying
what happened and the fix, not re-run forever (on Lambda each segment is a paid
invocation of up to 15 minutes); a loop that progresses, however unevenly, is not.
1 s timeouts: loops with long steps end their segments early to keep the tests short.
The headline runs on the emulated Lambda too (with -m slow)."""
from __future__ import annotations

import concurrent.futures as cf
import pickle
import random
import threading
import time

import cloudpickle
import pytest

import wrenpack
from wrenpack import keys
from wrenpack.storage.local import LocalStore
from wrenpack.wire.checkpoint import open_checkpoint
from wrenpack.wire.event import Event, inline_args
from wrenpack.worker import checkpoint as ck


# -- loops that start over every segment ---------------------------------------------------------------
def ignores_restore(n):
    """The defect as users write it: restore() on a line of its own, the loop from 0."""
    ckpt = wrenpack.checkpoint()
    ckpt.restore(default=0)
    total = 0
    for i in range(n):
        total += i
        ckpt.offer(i)
    return total


def _error(fut):
    """The call's exception; a call still running after 15 s (what the defect did) is cancelled
    (a stuck call would keep its executor's shutdown waiting) and the test fails."""
    try:
        exc = fut.exception(timeout=15)
    finally:
        if not fut.done():
            wrenpack.cancel(fut)
    assert isinstance(exc, wrenpack.TaskError), repr(exc)
    return exc


def _refused(fut, segments):
    msg = str(_error(fut))
    assert "\n" not in msg, msg
    assert f"segment {segments - 1}" in msg and "began from the same state as" in msg, msg
    assert "start the loop from the state restore() returns" in msg, msg
    # (invocations: a segment that ran out of time before its first save is run once more from the
    # same checkpoint, ``checkpoint.LATE_RERUNS``, under the same number: on a loaded machine the
    # first offer can come after the 1 s timeout; CI saw 4 for 3 once)
    assert segments <= fut.segments <= segments + ck.LATE_RERUNS, fut.segments
    return msg


@pytest.mark.backends("local", "lambda", slow=("lambda",))
def test_a_loop_that_ignores_what_restore_returns_is_stopped_in_its_third_segment(make_executor, backend):
    # Each segment ends wherever the timeout finds its counter (rarely twice on the same i),
    # but begins from the same state: segments 1 and 2 repeat segment 0, and segment 2 is
    # refused at its first offer rather than at its end.
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(ignores_restore, executor=ex, timeout=1).remote(10**12)
    msg = _refused(fut, 3)
    assert msg.startswith("ignores_restore: segment 2 began from the same state as segments 0 and 1"), msg
    assert [s["checkpoint"]["repeats"] for s in fut.segment_statuses] == [0, 1]
    assert fut.segment_statuses[0]["checkpoint"]["start"] == ck.fingerprint(0)
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


def forgets_to_update(n):
    """Restores, but never writes its progress into the state it offers."""
    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default={"i": 0})
    for _i in range(state["i"], n):
        time.sleep(0.4)  # (a step this long ends each 1 s segment after one step)
        ckpt.offer(state)
    return n


def test_a_state_that_never_changes_is_stopped(make_executor):
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(forgets_to_update, executor=ex, timeout=1).remote(1000)
    _refused(fut, 3)


def ignores_restore_slowly(n):
    ckpt = wrenpack.checkpoint()
    ckpt.restore(default=0)
    for i in range(n):
        time.sleep(0.4)
        ckpt.offer(i)
    return n


def test_a_chunksize_group_whose_call_starts_over_is_stopped(make_executor):
    ex = make_executor(concurrency=1, retries=0)
    futs = wrenpack.remote(ignores_restore_slowly, executor=ex, timeout=1).map([1000, 1000], chunksize=2)
    msg = _refused(futs[0], 3)
    assert msg.startswith("ignores_restore_slowly[0:2]: segment 2 of call 0 of its group began"), msg
    with pytest.raises(wrenpack.TaskError, match="of call 0 of its group"):
        futs[1].result(timeout=5)  # (the group's other call fails with it)


def never_restores(n):
    ckpt = wrenpack.checkpoint()
    for i in range(n):
        time.sleep(0.4)
        ckpt.offer(i)
    return n


def test_a_loop_that_never_calls_restore_is_named_once(make_executor):
    # (the refusal that was there before: its message named the call twice, as "f: f saved ...")
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(never_restores, executor=ex, timeout=1).remote(1000)
    msg = str(_error(fut))
    assert msg.startswith("never_restores: segment 1 saved a checkpoint without calling restore() first"), msg
    assert fut.segments == 2


# -- loops that progress are not refused ---------------------------------------------------------------
def one_long_step_first(n, long_s):
    """Offers at the top of its loop; its first step takes most of a segment, the others 10 ms."""
    ckpt = wrenpack.checkpoint()
    state = ckpt.restore(default={"i": 0})
    while state["i"] < n:
        ckpt.offer(state)
        time.sleep(long_s if state["i"] == 0 else 0.01)
        state["i"] += 1
    return state["i"]


def test_a_segment_that_ends_at_its_first_offer_is_not_taken_for_no_progress(make_executor):
    # Segment 0 saves {"i": 1} after its long step; segment 1, which learned that a step may
    # take 0.6 s, finds too little time left at its first offer (it never has more than 0.9 s
    # of its 1 s, and wants 1.5 x (0.6 s + a save)) and saves {"i": 1} again at once; segment 2
    # (its steps now timed at 10 ms) begins from {"i": 1} as segment 1 did, and goes on to
    # finish. One such repeat is not refused (``checkpoint.STUCK_REPEATS``).
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(one_long_step_first, executor=ex, timeout=1).remote(20, 0.6)
    assert fut.result(timeout=30) == 20
    assert fut.segments == 3
    starts = [s["checkpoint"]["start"] for s in fut.segment_statuses]
    assert starts == [ck.fingerprint({"i": 0}), ck.fingerprint({"i": 1})]
    assert [s["checkpoint"]["saves"] for s in fut.segment_statuses] == [1, 1]


# -- the backstop -----------------------------------------------------------------------------------
def never_the_same(n):
    """Starts over every segment, with a state never the same twice (an unseeded generator)."""
    ckpt = wrenpack.checkpoint()
    ckpt.restore(default=None)
    rng = random.Random()
    total = 0.0
    for i in range(n):
        time.sleep(0.4)
        total += rng.random()
        ckpt.offer({"i": i, "total": total})
    return total


def test_max_segments_stops_what_the_fingerprints_cannot_see(make_executor, monkeypatch):
    monkeypatch.setattr(ck, "MAX_SEGMENTS", 3)  # (read by the client when a segment saved)
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(never_the_same, executor=ex, timeout=1).remote(1000)
    msg = str(_error(fut))
    assert "\n" not in msg and msg.startswith("never_the_same ran 3 checkpointed segments without finishing"), msg
    assert "MAX_SEGMENTS" in msg and "restore() returns" in msg, msg
    assert fut.segments == 3 and [s["checkpoint"]["repeats"] for s in fut.segment_statuses] == [0, 0, 0]
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))
    # Its status says how it ended, as any failed call's does (it was None): its last
    # invocation's record, failed with the error's type.
    status = fut.status
    assert status is not None, "a call stopped by MAX_SEGMENTS has no status"
    assert status["exit"] == "error" and status["error"] == "TaskError", status
    assert status["segment"] == 2 and status["call_id"] == fut.call_id and status["timeout_s"] == 1, status
    assert status["start"] == fut.segment_statuses[-1]["start"]  # (no invocation of its own: none ran)
    report = ex.report([fut])
    assert report.calls[0]["state"] == "failed" and report.calls[0]["invocations"] == 3, report.calls[0]


def test_a_bad_max_segments_is_refused_before_anything_launches(make_executor, monkeypatch, tmp_path):
    # (each bad value on one executor, then a good value on it: one call runs, not one per value)
    ex = make_executor(concurrency=1, retries=0)
    ran = tmp_path / "ran"
    f = wrenpack.remote(runs_once, executor=ex, timeout=1)
    for bad in (0, -1, "5", 2.5, None, True):
        monkeypatch.setattr(ck, "MAX_SEGMENTS", bad)
        for launch in (lambda: f.remote(("returns", 0), str(ran)), lambda: f.map([("returns", 0)] * 3, log_path=str(ran)),
                       lambda: f.map([("returns", 0)] * 3, log_path=str(ran), chunksize=2)):
            with pytest.raises(wrenpack.errors.ConfigError) as info:
                launch()
            msg = str(info.value)
            assert "\n" not in msg and msg.startswith(f"wrenpack.worker.checkpoint.MAX_SEGMENTS = {bad!r}"), msg
            assert "whole number of at least 1" in msg and "set it to" in msg, msg
        assert not ran.exists(), f"a call ran with MAX_SEGMENTS = {bad!r}"
    monkeypatch.setattr(ck, "MAX_SEGMENTS", 1000)
    assert f.remote(("returns", 0), str(ran)).result(timeout=30) == 0


def test_a_max_segments_made_bad_while_a_call_runs_fails_it_at_its_next_segment(make_executor, monkeypatch):
    # (read again where a segment saved: the call fails with the same line, not a TypeError from inside)
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(counts_on, executor=ex, timeout=1).remote(10_000)
    monkeypatch.setattr(ck, "MAX_SEGMENTS", "many")
    with pytest.raises(wrenpack.errors.ConfigError) as info:
        fut.result(timeout=15)
    msg = str(info.value)
    assert "\n" not in msg and "wrenpack.worker.checkpoint.MAX_SEGMENTS = 'many'" in msg, msg
    assert fut.segments == 1 and fut.status["exit"] == "error", fut.status
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


# -- the rule, on a Checkpoint driven directly ------------------------------------------------------------
SECRET = b"k" * 32


def _checkpoint(tmp_path, segment, learned=None):
    store = LocalStore(tmp_path / "s")
    key = keys.checkpoint_key("j1", "00000")
    # (the save in the store, as the driver would tell the next invocation of it)
    last = list(open_checkpoint(SECRET, "j1", "00000", store.get(key))[0]) if store.exists(key) else None
    ev = Event(job_id="j1", call_id="00000", store=store.spec, secret=SECRET, segment=segment, checkpoint=learned,
               args=inline_args(cloudpickle.dumps(((), {}))), function_name="f", extra={"ckpt_from": last})
    return ck.Checkpoint(store, keys.checkpoint_key("j1", "00000"), lambda: time.time() + 100, label="f",
                         learned=learned, event=ev)


def test_the_second_repeat_in_a_row_is_refused_at_the_first_offer(tmp_path):
    state = {"i": 0, "data": list(range(50))}
    start = ck.fingerprint(state)
    cp = _checkpoint(tmp_path, 4, {"save_s": 0.001, "start": start, "repeats": 1})
    cp.restore(default=None)
    with pytest.raises(ck.Refused) as info:
        cp.offer(state)
    assert str(info.value.error).startswith("segment 4 began from the same state as segments 2 and 3")
    # the first repeat goes on, and hands its count to the next segment
    cp = _checkpoint(tmp_path, 4, {"save_s": 0.001, "start": start, "repeats": 0})
    cp.restore(default=None)
    cp.offer(state)
    state["i"] += 1
    cp.save(state)  # (the state the segment began from counts, not the one it saves)
    assert (cp.stats()["start"], cp.stats()["repeats"]) == (start, 1)
    # another state, or another call of the group that began from that state, is no repeat
    for learned_item, item, offered in ((None, None, {"i": 9}), (0, 1, state), (None, 0, state)):
        cp = _checkpoint(tmp_path, 4, {"save_s": 0.001, "start": ck.fingerprint(offered if item is None else state),
                                       "repeats": 1, "item": learned_item})
        if item is not None:
            cp.begin_item(item)
        cp.restore(default=None)
        cp.offer(state)
        cp.save(state)
        assert cp.stats()["repeats"] == 0 and cp.stats().get("item") == item


def test_a_save_before_any_offer_counts_as_the_state_the_segment_began_from(tmp_path):
    cp = _checkpoint(tmp_path, 1, {"save_s": 0.001, "start": ck.fingerprint([1, 2]), "repeats": 0})
    cp.restore(default=None)
    cp.save([1, 2])
    assert cp.stats()["repeats"] == 1
    cp = _checkpoint(tmp_path, 2, {"save_s": 0.001, "start": ck.fingerprint([1, 2]), "repeats": 1})
    cp.restore(default=None)
    with pytest.raises(ck.Refused):
        cp.save([1, 2])


def test_fingerprints_match_the_saved_pickle_and_cost_little_in_a_first_segment(tmp_path):
    # (an array's data reaches the hash as a PickleBuffer, as numpy's does)
    for state in (0, {"a": [1.5, "x"], "b": b"\0" * 3_000_000}, ("t", {3, 4}),
                  {"array": pickle.PickleBuffer(bytearray(b"\1" * 300_000))}):
        assert ck.fingerprint(state) == ck._digest(ck.dumps_state(state))
    big = {"b": b"\1" * (ck.FIRST_FINGERPRINT_BYTES + 1)}
    assert ck.fingerprint(big, ck.FIRST_FINGERPRINT_BYTES) is None
    assert ck.fingerprint({"lock": threading.Lock()}) is None  # (a save, if one is due, says why)
    # segment 0 fingerprints a large state no further than the budget; a later segment in full
    cp = _checkpoint(tmp_path, 0)
    cp.restore(default=None)
    cp.offer(big)
    assert cp._start is None
    cp = _checkpoint(tmp_path, 1)
    cp.restore(default=None)
    cp.offer(big)
    assert cp._start == ck.fingerprint(big)
    # a state that cannot be pickled is no error until a save is due (a call that never splits)
    cp = _checkpoint(tmp_path, 0)
    cp.offer({"lock": threading.Lock()})
    assert cp._start is None


# -- cancel between segments ------------------------------------------------------------------------------
def counts_on(n):
    """Progresses one short step at a time, saving its counter near each 1 s segment's end."""
    ckpt = wrenpack.checkpoint()
    i = ckpt.restore(default=0)
    while i < n:
        time.sleep(0.02)
        i += 1
        ckpt.offer(i)
    return i


@pytest.mark.backends("local", "lambda")
def test_a_call_cancelled_while_its_segments_run_launches_no_more(make_executor, backend):
    """``wrenpack.cancel`` of a checkpointed call: it ends cancelled, and no segment is
    launched after. A worker looks for a running call's cancel marker only 2 s into a
    segment, so on Lambda a call whose segments end sooner (a 1 s timeout) never saw it:
    the client launched segment after segment, the call ran to its end (here 200 s of
    work), and an executor's shutdown waited for it."""
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(counts_on, executor=ex, timeout=1).remote(10_000)
    deadline = time.monotonic() + 30
    while fut.segments < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fut.segments >= 1, "the call never ended a segment"
    time.sleep(0.3)  # (its next segment running: a cancel as one segment ends is not this test's case)
    assert wrenpack.cancel(fut) == [True]
    try:
        with pytest.raises(wrenpack.errors.CallCancelled):
            fut.result(timeout=10)  # (was: still running)
    finally:
        if not fut.done():
            ex.shutdown(wait=False, cancel_futures=True)
    ended_after = fut.segments
    time.sleep(1.5)
    assert fut.segments == ended_after, "a segment ran after the call was cancelled"
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


# -- a chunksize group's finished calls are not run again in its later segments ----------------------------
def runs_once(spec, log_path):
    """Appends its name to ``log_path`` each time it runs; "raises" fails, "returns" returns at
    once, "long" counts on over two 1 s segments (saving its counter near the first's end)."""
    kind, n = spec
    with open(log_path, "a") as f:
        f.write(kind + "\n")
    if kind == "raises":
        raise ValueError("raised in the first segment")
    ckpt = wrenpack.checkpoint()
    i = ckpt.restore(default=0)
    while i < n:
        time.sleep(0.02)
        i += 1
        ckpt.offer(i)
    return i


def test_a_chunksize_groups_calls_that_ended_are_not_run_again_in_its_next_segment(make_executor, tmp_path):
    # The group's third call needs two segments; the first two ended in the first segment, one
    # by raising. The next segment runs the group from its first call again: a call that
    # returned is given its saved result, and one that raised must likewise keep its saved
    # error, not run again (its side effects would repeat).
    ex = make_executor(concurrency=1, retries=0)
    log_path = str(tmp_path / "runs.log")
    futs = wrenpack.remote(runs_once, executor=ex, timeout=1).map(
        [("raises", 0), ("returns", 0), ("long", 60)], log_path=log_path, chunksize=3)
    assert futs[2].result(timeout=30) == 60
    assert futs[2].segments >= 2, "the group never checkpointed: this test's case did not happen"
    with pytest.raises(ValueError, match="raised in the first segment") as info:
        futs[0].result(timeout=5)
    remote = str(info.value.__cause__)  # (the traceback it raised with, in the segment it ran in)
    assert "runs_once" in remote and "raised in the first segment" in remote, remote
    assert futs[1].result(timeout=5) == 0
    with open(log_path) as f:
        runs = f.read().split()
    assert runs.count("raises") == 1, runs
    assert runs.count("returns") == 1, runs
    assert runs.count("long") == futs[2].segments, runs


# -- cancel at the exact boundary between two segments ------------------------------------------------------
class _Boundary:
    """Holds a checkpointed call at one point between its first two segments (``where``):
    "reported" (the segment's checkpointed reply is in, not yet completed), "continuing"
    (completed; the next segment not yet decided on) or "launching" (decided; about to be
    handed to the backend). The test acts there, then lets it go on."""

    def __init__(self, ex, monkeypatch, where):
        self.reached, self.go = threading.Event(), threading.Event()
        self.where, self.fired = where, False
        self.inside = threading.local()
        complete, go_on, live = ex._complete, ex._continue, ex._live_backend

        def held_complete(inv, result):
            if where == "reported" and (result.status or {}).get("exit") == "checkpointed":
                self._hold()
            return complete(inv, result)

        def held_continue(inv, status):
            if where == "continuing":
                self._hold()
            self.inside.on = True
            try:
                return go_on(inv, status)
            finally:
                self.inside.on = False

        def held_live():
            if where == "launching" and getattr(self.inside, "on", False):
                self._hold()
            return live()

        monkeypatch.setattr(ex, "_complete", held_complete)
        monkeypatch.setattr(ex, "_continue", held_continue)
        monkeypatch.setattr(ex, "_live_backend", held_live)

    def _hold(self):
        if self.fired:
            return
        self.fired = True
        self.reached.set()
        assert self.go.wait(30), "the test never let the call go on"

    def wait(self):
        assert self.reached.wait(30), f"the call never reached {self.where}"


def _outcome(fut, timeout=15):
    """("result", value) or ("cancelled", None) (CancelledError, or CallCancelled, which is one)."""
    try:
        return ("result", fut.result(timeout=timeout))
    except cf.CancelledError:
        return ("cancelled", None)


@pytest.mark.backends("local", "lambda", slow=("lambda",))
@pytest.mark.parametrize("where", ["reported", "continuing", "launching"])
def test_cancel_at_a_segment_boundary_says_what_happens_to_the_call(make_executor, backend, monkeypatch, where):
    """``wrenpack.cancel`` of a checkpointed call between two segments: True iff the call
    ends cancelled (``concurrent.futures``' rule). It answered False (the backend ran no
    segment of it then) but kept the call marked, so the next segment that saved ended it
    cancelled all the same; ``fut.cancel()`` (pending calls only) is False there, and the
    call runs on to its result."""
    ex = make_executor(concurrency=1, retries=0)
    boundary = _Boundary(ex, monkeypatch, where)
    fut = wrenpack.remote(counts_on, executor=ex, timeout=1).remote(100)  # (three segments)
    boundary.wait()
    try:
        assert fut.cancel() is False  # (it runs: fut.cancel() leaves it be)
        said = wrenpack.cancel(fut)
    finally:
        boundary.go.set()
    outcome = _outcome(fut)
    assert outcome == (("cancelled", None) if said == [True] else ("result", 100)), (said, outcome)
    # Where the next segment was not decided on yet, it is never launched: the cancel wins.
    if where != "launching":
        assert said == [True] and fut.segments == 1, (said, fut.segments)
        assert fut.status["exit"] == "error" and fut.status["error"] == "CallCancelled", fut.status
        assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


def sleeps(seconds):
    time.sleep(seconds)
    return seconds


def test_a_call_whose_next_segment_waits_for_a_worker_is_cancelled(make_executor):
    """A checkpointed call whose next segment waits in the backend's queue (the one worker is
    busy with another call): ``wrenpack.cancel`` takes that segment back, and the call ends
    cancelled."""
    ex = make_executor(concurrency=1, retries=0)
    fut = wrenpack.remote(counts_on, executor=ex, timeout=1).remote(10_000)
    other = wrenpack.remote(sleeps, executor=ex, timeout=10).remote(1.0)  # (runs once the first segment ends)
    deadline = time.monotonic() + 15
    while not (fut.segments >= 1 and other.running()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fut.segments >= 1 and other.running(), (fut.segments, other.running())
    ran = fut.segments
    assert wrenpack.cancel(fut) == [True]
    assert _outcome(fut, timeout=5) == ("cancelled", None)  # (was: no outcome, ever)
    assert fut.segments == ran and fut.status["error"] == "CallCancelled", fut.status
    assert other.result(timeout=10) == 1.0
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))
