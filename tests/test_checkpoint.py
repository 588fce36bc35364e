"""Checkpoint splitting: calls longer than their timeout finish, exactly."""
from __future__ import annotations

import json
import os
import signal
import statistics
import time

import cloudpickle
import pytest

import wrenpack
from wrenpack import auth, keys
from wrenpack.storage.local import LocalStore
from wrenpack.wire import checkpoint as wire_checkpoint
from wrenpack.wire.checkpoint import Saves
from wrenpack.wire.event import Event, inline_args
from wrenpack.wire.result import open_result
from wrenpack.worker import checkpoint as ck
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import handler


def stepper(n, step_s=0.01, log_path=None):
    """A plain loop that offers its state after every step."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "acc": 0})
    if log_path:
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "start_i": state["i"]}) + "\n")
    while state["i"] < n:
        t_end = time.perf_counter() + step_s
        while time.perf_counter() < t_end:  # busy work, like a real step
            pass
        state["acc"] += state["i"] ** 2
        state["i"] += 1
        cp.offer(state)
    return state["acc"]


def expected(n):
    return sum(i * i for i in range(n))


@pytest.mark.slow  # (10 s of timeouts; the emulated Lambda's checkpoint tests cover the path)
def test_ten_times_the_timeout_finishes_exactly(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path), concurrency=2, keep_objects=True)
    try:
        # What a hand-off may cost here and now: a trivial call's round trip on a warm worker.
        trivial = wrenpack.remote(abs, executor=ex)
        trivial.remote(-1).result(timeout=60)
        trips = []
        for _ in range(3):
            t = time.monotonic()
            trivial.remote(-1).result(timeout=60)
            trips.append(time.monotonic() - t)
        f = wrenpack.remote(stepper, executor=ex, timeout=1)
        fut = f.remote(1000, 0.01)  # ~10 s of work under a 1 s timeout
        assert fut.result(timeout=120) == expected(1000)
        assert fut.segments >= 10
        assert fut.status["segment"] == fut.segments - 1
        statuses = fut.segment_statuses + [fut.status]
        assert [s["segment"] for s in statuses] == list(range(fut.segments))
        # Each segment used most of its second (saving far earlier than needed would add segments) ...
        worked = sum(s["duration_s"] for s in statuses)
        assert fut.segments <= worked / 0.5, (fut.segments, worked)
        # ... and the next one started as soon as one ended: wall-clock bounds that hold on a
        # loaded machine, measured against this machine's own round trip rather than a fixed figure.
        gaps = sorted(b["start"] - a["end"] for a, b in zip(statuses, statuses[1:]))
        allowed = max(0.3, 5 * statistics.median(trips))
        assert gaps[len(gaps) // 2] < allowed, (gaps, trips)
        # the checkpoint is gone once the call completed
        assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))
    finally:
        ex.shutdown()


def test_killed_worker_resumes_from_last_checkpoint(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    log_path = str(tmp_path / "log.jsonl")
    try:
        f = wrenpack.remote(stepper, executor=ex, timeout=1, retries=2)
        fut = f.remote(200, 0.01, log_path)  # (2 s of steps: three segments, the second one killed)
        # wait until the second segment is running, then kill its worker
        deadline = time.time() + 30
        while time.time() < deadline:
            lines = open(log_path).read().splitlines() if os.path.exists(log_path) else []
            if len(lines) >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        second = json.loads(lines[1])
        os.kill(second["pid"], signal.SIGKILL)
        assert fut.result(timeout=60) == expected(200)
        starts = [json.loads(line) for line in open(log_path).read().splitlines()]
        # the invocation after the kill restarted from the same saved state as the killed one
        after_kill = starts[2]
        assert after_kill["pid"] != second["pid"]
        assert after_kill["start_i"] == second["start_i"] > 0
    finally:
        ex.shutdown()


def test_local_call_never_saves():
    assert stepper(20) == expected(20)
    cp = wrenpack.checkpoint()
    assert not cp.active and cp.restore(default=5) == 5


SECRET = b"k" * 32


def _event(store, fn, args, job="j1", call="00000"):
    store.put(keys.func_key(job), auth.seal(SECRET, keys.identity(job, "func"), cloudpickle.dumps(fn)))
    return Event(
        job_id=job, call_id=call, store=store.spec, secret=SECRET,
        args=inline_args(cloudpickle.dumps((args, {}))), function_name="stepper",
    ).to_dict()


def test_corrupt_checkpoint_fails_clearly(tmp_path):
    store = LocalStore(tmp_path / "s")
    event = _event(store, stepper, (50,))
    store.put(keys.checkpoint_key("j1", "00000"), b"WRCK2" + b"\0" * 36 + b"garbage")
    status = handler(event, LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30))
    assert status["exit"] == "error"
    _, outcome = open_result(SECRET, "j1", "00000", store.get(keys.result_key("j1", "00000")), "r")
    exc = outcome.rebuild("stepper")
    assert isinstance(exc, wrenpack.CorruptObject) and "failed authentication" in str(exc)
    assert "nothing was unpickled" in str(exc)


def _saves(segment, attempt, resume_from, call="00000"):
    return Saves(SECRET, "j1", call, segment, attempt, resume_from)


def saves_twice_and_ends(_):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    if state["i"]:
        return state["i"]
    cp.save({"i": 1})
    cp.save({"i": 2})
    raise ck.SegmentDone()  # (as an offer that saved does)


def test_the_handler_reports_its_last_save_and_resumes_only_from_it(tmp_path, monkeypatch):
    # (in the handler's own process; a local worker's job parent does the same for its child:
    # test_probe_checkpoint.py's test_an_earlier_save_copied_back_over_the_latest_is_refused)
    store = LocalStore(tmp_path / "s")
    key = keys.checkpoint_key("j-saves-twice", "00000")
    puts = []
    real_put = LocalStore.put

    def put(self, k, data, **kw):
        if k == key:
            puts.append(bytes(data))
        return real_put(self, k, data, **kw)

    monkeypatch.setattr(LocalStore, "put", put)
    event = _event(store, saves_twice_and_ends, (0,), job="j-saves-twice")  # (a job of its own: workers cache functions by job)
    context = lambda: LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)  # noqa: E731
    status = handler(event, context())
    assert status["exit"] == "checkpointed" and status["ckpt_last"] == [0, 0, 2] and len(puts) == 2
    real_put(store, key, puts[0])  # the first save copied back over the last
    status = handler(dict(event, segment=1, ckpt_from=status["ckpt_last"]), context())
    assert status["exit"] == "error"
    _, outcome = open_result(SECRET, "j-saves-twice", "00000", store.get(keys.result_key("j-saves-twice", "00000")), "r")
    exc = outcome.rebuild("f")
    assert isinstance(exc, wrenpack.CorruptObject) and "is save 1 of segment 0, not the latest save" in str(exc)
    store.delete(keys.result_key("j-saves-twice", "00000"))
    real_put(store, key, puts[1])
    status = handler(dict(event, segment=1, attempt=1, ckpt_from=[0, 0, 2]), context())
    assert status["exit"] == "ok" and "ckpt_last" not in status
    _, outcome = open_result(SECRET, "j-saves-twice", "00000", store.get(keys.result_key("j-saves-twice", "00000")), "r")
    assert outcome.value == 2


def test_checkpoint_roundtrip_and_tamper_detection():
    blob = ck.encode({"a": [1, 2, 3]}, SECRET, "j1", "00000", (3, 0, 2))
    assert ck.decode(blob, _saves(4, 0, (3, 0, 2)), "x") == {"a": [1, 2, 3]}  # the next segment, told of this save
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad, call in ((tampered, "00000"), (blob, "00001")):
        with pytest.raises(wrenpack.CorruptObject, match="failed authentication"):
            ck.decode(bad, _saves(4, 0, (3, 0, 2), call), "x")
    moved = bytearray(blob)
    moved[len(wire_checkpoint.MAGIC) + 3] = 4  # (its place says another segment: the MAC covers it)
    with pytest.raises(wrenpack.CorruptObject, match="failed authentication"):
        ck.decode(bytes(moved), _saves(5, 0, (4, 0, 2)), "x")


def _place_of(blob):
    return wire_checkpoint.open_checkpoint(SECRET, "j1", "00000", blob)[0]


def test_only_the_latest_save_is_accepted():
    # Every save is sealed for the call; what tells the latest from an earlier one is its place.
    def blob(place):
        return ck.encode({"at": place}, SECRET, "j1", "00000", place)

    latest = (2, 0, 3)
    for earlier in ((2, 0, 1), (2, 0, 2), (1, 0, 1), (0, 1, 4)):
        with pytest.raises(wrenpack.CorruptObject, match="not the latest save of this call, save 3 of segment 2") as info:
            ck.decode(blob(earlier), _saves(3, 0, latest), "x")
        assert "\n" not in str(info.value) and "checkpoint/00000.pkl" in str(info.value)
    assert ck.decode(blob(latest), _saves(3, 0, latest), "x") == {"at": latest}
    # a later attempt of the segment: also a save of an attempt the driver never heard the end of
    # (its worker died after saving), not one of an attempt before the last one it heard of
    assert ck.decode(blob((3, 0, 2)), _saves(3, 1, latest), "x") == {"at": (3, 0, 2)}
    assert ck.decode(blob((3, 1, 1)), _saves(3, 2, (3, 0, 5)), "x") == {"at": (3, 1, 1)}
    for stale, reader in (((3, 0, 2), _saves(3, 2, (3, 1, 1))), ((3, 1, 1), _saves(3, 1, latest)),
                          ((3, 0, 1), _saves(3, 0, latest))):
        with pytest.raises(wrenpack.CorruptObject, match="not the latest save"):
            ck.decode(blob(stale), reader, "x")
    # a first segment's first attempt expects none; a retry of it, a save of an attempt before it
    with pytest.raises(wrenpack.CorruptObject, match="save 1 of segment 0, where this invocation of the call expects none"):
        ck.decode(blob((0, 0, 1)), _saves(0, 0, None), "x")
    assert ck.decode(blob((0, 0, 1)), _saves(0, 1, None), "x") == {"at": (0, 0, 1)}
    # once an invocation saved, only its own latest save
    own = _saves(3, 0, latest)
    place, sealed = own.seal(ck.dumps_state({"mine": 1}))
    assert place == (3, 0, 1)
    own.saved(place)
    assert _place_of(sealed) == (3, 0, 1) and ck.decode(sealed, own, "x") == {"mine": 1}
    with pytest.raises(wrenpack.CorruptObject, match="not the latest save of this call, save 1 of segment 3"):
        ck.decode(blob(latest), own, "x")
    assert own.next_place() == (3, 0, 2)


def test_an_events_ckpt_from_is_checked():
    from wrenpack.errors import ProtocolError
    event = Event(job_id="j1", call_id="00000", store={"type": "local", "root": "/x"}, secret=SECRET,
                  args=inline_args(b""), segment=1).to_dict()
    assert Event.from_dict(dict(event, ckpt_from=[0, 0, 2])).extra["ckpt_from"] == [0, 0, 2]
    assert Event.from_dict(dict(event, ckpt_from=None)).extra["ckpt_from"] is None
    for bad in ([0, 0], [0, 0, 0], [0, -1, 1], [0, True, 1], ["0", 0, 1], [0, 0, 2**32]):
        with pytest.raises(ProtocolError, match="ckpt_from"):
            Event.from_dict(dict(event, ckpt_from=bad))


def test_each_segment_is_told_the_save_to_resume_from_and_a_worker_before_that_refuses(tmp_path, monkeypatch):
    from wrenpack.errors import ProtocolError
    from wrenpack.executor import calls
    from wrenpack.wire import event as event_format

    sent = []
    real = calls._resuming
    monkeypatch.setattr(calls, "_resuming", lambda event, status: sent.append(real(event, status)) or sent[-1])
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1, retries=0)
    try:
        fut = wrenpack.remote(stepper, executor=ex, timeout=1).remote(150, 0.01)
        assert fut.result(timeout=60) == expected(150)
    finally:
        ex.shutdown()
    later = [e for e in sent if e["segment"] > 0]
    assert later and len(later) == fut.segments - 1
    for event, before in zip(later, fut.segment_statuses):
        # (the status says where its segment saved last: the worker counts the saves it sealed)
        assert before["ckpt_last"][:2] == [before["segment"], before["attempt"]] and before["ckpt_last"][2] >= 1
        assert event["ckpt_from"] == before["ckpt_last"]
    # a worker deployed before ckpt_from cannot honour it: it refuses the event, runs nothing
    monkeypatch.setattr(event_format, "_FIELDS", {k: v for k, v in event_format._FIELDS.items() if k != "ckpt_from"})
    with pytest.raises(ProtocolError, match="unknown field.*ckpt_from.*versions differ"):
        Event.from_dict(dict(later[0], secret=auth.encode_secret(SECRET)))


def test_step_longer_than_the_time_left_is_a_clear_timeout(remote):
    def one_long_step(_):
        cp = wrenpack.checkpoint()
        cp.restore(default=None)
        time.sleep(3)
        cp.offer({})

    with pytest.raises(wrenpack.TaskTimeout, match="offer more often"):
        remote(one_long_step, timeout=1).remote(0).result()


def test_profile_predicts_segments_and_warns_without_checkpoint(tmp_path, monkeypatch, caplog):
    import logging

    from wrenpack.profiler import store
    from wrenpack.profiler.codehash import code_hash

    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))

    def plain_loop(n):
        total = 0
        for i in range(n):
            total += i
        return total

    for fn in (stepper, plain_loop):
        store.save({"code_hash": code_hash(fn), "duration_s": 4.0, "cpu_user_s": 4.0, "recommended": {"memory_mb": 128}})
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    try:
        with caplog.at_level(logging.INFO, logger="wrenpack"):
            fut = wrenpack.remote(stepper, executor=ex, timeout=1).remote(5, 0.001)
            assert fut.expected_segments == 5  # 4 s / (1 s x 0.85)
            assert fut.result() == expected(5)
            fut = wrenpack.remote(plain_loop, executor=ex, timeout=1).remote(10)
            assert fut.result() == 45
        messages = [r.getMessage() for r in caplog.records]
        assert any("expect about 5 checkpointed segments" in m for m in messages)
        assert any("plain_loop" in m and "will fail with TaskTimeout" in m for m in messages)
    finally:
        ex.shutdown()


def test_expected_segments_are_kept_between_calls_and_follow_a_new_profile(tmp_path, monkeypatch):
    # .remote() in a loop does not look for the profile on every call,
    # and a profile saved since (here, or a changed function) is seen at once.
    from wrenpack.executor import launch
    from wrenpack.profiler import store
    from wrenpack.profiler.codehash import code_hash

    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))
    looked = []
    real = launch.profiled_duration
    monkeypatch.setattr(launch, "profiled_duration", lambda *a: looked.append(1) or real(*a))
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    futs = []
    try:
        f = wrenpack.remote(stepper, executor=ex, timeout=1)
        futs += [f.remote(2, 0.0) for _ in range(3)]
        assert [fut.expected_segments for fut in futs] == [1, 1, 1] and len(looked) == 1
        store.save({"code_hash": code_hash(stepper), "duration_s": 4.0, "cpu_user_s": 4.0, "recommended": {"memory_mb": 128}})
        futs.append(f.remote(2, 0.0))
        assert futs[-1].expected_segments == 5 and len(looked) == 2
        defaults = stepper.__defaults__
        stepper.__defaults__ = (0.0, None)  # a changed function is looked up again
        try:
            futs.append(f.remote(2, 0.0))
            assert len(looked) == 3
        finally:
            stepper.__defaults__ = defaults
        monkeypatch.setattr(launch, "SEGMENTS_KEPT_S", 0.0)
        futs.append(f.remote(2, 0.0))
        assert len(looked) == 4  # (kept no longer than that)
        assert [fut.result() for fut in futs] == [expected(2)] * len(futs)
    finally:
        ex.shutdown()


# -- a save that cannot finish before the deadline ------------------------------------------------
def _timed(tmp_path, segment, left, learned=None, resume_from=None):
    store = LocalStore(tmp_path / "s")
    ev = Event(job_id="j1", call_id="00000", store=store.spec, secret=SECRET, segment=segment, checkpoint=learned,
               args=inline_args(cloudpickle.dumps(((), {}))), function_name="f", extra={"ckpt_from": resume_from})
    deadline = time.time() + left
    cp = ck.Checkpoint(store, keys.checkpoint_key("j1", "00000"), lambda: deadline, label="f", learned=learned, event=ev)
    return cp, store


def test_a_due_save_measured_too_slow_for_the_time_left_is_not_begun(tmp_path):
    # (a later segment: the last save took 1 s and 0.3 s are left) It began the save anyway, and the
    # kill at the deadline stopped it halfway; now the segment ran out of time at once, saying why.
    cp, store = _timed(tmp_path, 1, 0.3, {"save_s": 1.0, "step_s": 0.01})
    cp.restore(default=None)
    with pytest.raises(ck.SaveTooLate):
        cp.offer({"i": 1})
    assert cp.saves == 0 and cp.late is not None
    with pytest.raises(ck.SaveTooLate):
        cp.offer({"i": 2})  # (in another thread too: the segment ran out of time)


def test_after_its_timing_save_a_segment_ends_on_it_when_another_would_not_finish(tmp_path):
    cp, store = _timed(tmp_path, 0, 0.4)  # (a first segment, of about 0.4 s: past its half at once)
    cp.restore(default=None)
    cp._begun -= 10  # (the segment began long ago: the first offer saves once, to time it)
    cp.offer({"i": 1})
    assert cp.saves == 1 and not cp.ended
    cp.save_s = 5.0  # (that save took longer than the time left)
    with pytest.raises(ck.SegmentDone):
        cp.offer({"i": 2})
    assert cp.saves == 1 and cp.ended  # the next segment resumes from the timing save


def test_reading_a_state_is_not_counted_as_the_first_step(tmp_path):
    cp, store = _timed(tmp_path, 0, 100)
    cp.save({"i": 1})
    assert cp.last_save == (0, 0, 1)
    cp, _ = _timed(tmp_path, 1, 100, {"save_s": 0.001}, resume_from=[0, 0, 1])
    fetch = cp._fetch

    def slow_fetch():
        time.sleep(0.3)  # (a state of hundreds of MB)
        return fetch()

    cp._fetch = slow_fetch
    assert cp.restore(default=None) == {"i": 1}
    cp.offer({"i": 2})
    assert cp.stats()["step_s"] < 0.2


def test_a_timeout_of_a_call_that_checkpoints_says_what_a_save_takes(tmp_path):
    from wrenpack.worker import handler as h

    cp, store = _timed(tmp_path, 1, 100, {"save_s": 1.25})
    cp.restore(default=None)
    ev = Event(job_id="j1", call_id="00000", store=store.spec, secret=SECRET, segment=0, timeout_s=3,
               args=inline_args(cloudpickle.dumps(((), {}))), function_name="f")
    told = str(cloudpickle.loads(h._timeout_outcome(ev, True, ckpt=cp, due_left=0.4)))
    assert "the last one took 1.25 s of the 3 s timeout" in told and "resumable" not in told
    cp._saving_since = time.perf_counter() - 2.0  # (a save under way at the deadline)
    told = str(cloudpickle.loads(h._timeout_outcome(ev, True, ckpt=cp)))
    assert "save was under way for 2.0" in told and "resumable" not in told


def test_a_first_segment_stopped_at_its_deadline_after_a_save_is_not_told_to_checkpoint(tmp_path):
    # (the driver kills a worker stuck in a large save; a first segment's message advised checkpointing)
    from types import SimpleNamespace

    from wrenpack.backends.base import Invocation
    from wrenpack.backends.local.process import Worker

    cp, store = _timed(tmp_path, 0, 100)
    cp.save({"i": 1})
    worker = SimpleNamespace(kill_reason="timeout", oom_kills=lambda: 0)
    inv = Invocation(event={"segment": 0, "checkpoint": None, "store": store.spec, "job_id": "j1", "call_id": "00000"},
                     on_done=lambda *a: None, timeout_s=3, extra={"label": "big"})
    told = str(Worker.death_error(worker, inv))
    assert "though it checkpoints" in told and "make it resumable" not in told
    store.delete(keys.checkpoint_key("j1", "00000"))
    told = str(Worker.death_error(worker, inv))
    assert "make it resumable" in told and "save a smaller state" in told
