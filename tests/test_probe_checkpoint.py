"""Probes of checkpoint splitting the way a demanding user (or an attacker) would try it:
calls longer than their timeout, states that cannot be pickled or change type, loops
that never restore, exceptions and cancellation between segments, tampered and
moved checkpoints, and what is left behind. Local backend, short timeouts."""
from __future__ import annotations

import concurrent.futures as cf
import glob
import json
import os
import re
import threading
import time

import pytest

import wrenpack
from tests.test_checkpoint import expected, stepper
from wrenpack import keys


def _lines(path):
    return [json.loads(line) for line in open(path).read().splitlines()] if os.path.exists(path) else []


@pytest.fixture
def ex(tmp_path):
    made = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2, retries=0)
    yield made
    made.shutdown()


def _wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


#: where wrenpack puts things in memory: the default store (``wrenpack-<uid>``) and, where TMPDIR is
#: /dev/shm, a local backend's work folder (``wrenpack-local-<driver's pid>-*``)
_SHM = "/dev/shm"


def _shm() -> set[str]:
    return set(glob.glob(f"{_SHM}/wrenpack-*"))


def _left_in_shm(before: set[str], job_ids, pids) -> list[str]:
    """What this test left in /dev/shm: its jobs' folders in the default store, and the
    ``wrenpack-*`` entries new since ``before``, but for what the other test process (-n 2)
    makes there meanwhile: the default store itself (any test that uses it makes it on a
    fresh machine; this test's objects in it are looked for by job), another driver's work
    folder (its pid in the name) and a benchmark's folder (test_benchmarks_smoke, -m slow)."""
    default = f"{_SHM}/wrenpack-{os.getuid()}"
    left = [path for path in (f"{default}/store/jobs/{job}" for job in job_ids) if os.path.lexists(path)]
    for path in sorted(_shm() - before):
        name = os.path.basename(path)
        driver = re.fullmatch(r"wrenpack-local-(\d+)-.*", name)
        if path == default or (driver and int(driver[1]) not in pids) or name.startswith("wrenpack-bench-"):
            continue
        left.append(path)
    return left


# -- the headline: longer than the timeout, finished exactly ---------------------------------------
def test_call_three_times_its_timeout_finishes_exactly(ex, tmp_path):
    log_path = str(tmp_path / "log")
    fut = wrenpack.remote(stepper, executor=ex, timeout=1).remote(250, 0.01, log_path)
    assert fut.result(timeout=60) == expected(250)
    starts = _lines(log_path)
    assert fut.segments == len(starts) >= 3
    assert [s["start_i"] for s in starts] == sorted(s["start_i"] for s in starts)  # never went backwards
    # (a segment late to save on a loaded machine runs again once: an invocation more, its status a retried one)
    assert len(fut.segment_statuses) == fut.segments - 1 - len(fut.retried_statuses)
    assert [s["segment"] for s in fut.segment_statuses + [fut.status]] == list(range(len(fut.segment_statuses) + 1))
    assert all(s["exit"] == "checkpointed" for s in fut.segment_statuses) and fut.status["exit"] == "ok"
    assert all(s["duration_s"] < 1.0 for s in fut.segment_statuses)
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


def changes_type(n):
    cp = wrenpack.checkpoint()
    state = cp.restore(default=0)
    while True:
        if isinstance(state, int):
            time.sleep(0.05)
            state += 1
            if state >= n:
                state = [state]
        elif isinstance(state, list):
            time.sleep(0.05)
            state.append(len(state))
            if len(state) >= n:
                state = ("done", tuple(state))
        else:
            return state
        cp.offer(state)


def test_state_that_changes_type_between_segments(ex):
    fut = wrenpack.remote(changes_type, executor=ex, timeout=1).remote(20)
    value = fut.result(timeout=60)
    assert value == ("done", (20, *range(1, 20)))
    assert fut.segments >= 2


# -- bad states ----------------------------------------------------------------------------------
def unpicklable_state(n):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "lock": threading.Lock()})
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        cp.offer(state)
    return state["i"]


@pytest.mark.slow  # (test_probe_limits's test_a_checkpoint_state_that_cannot_be_pickled_is_a_one_line_serialization_error: the same lock in the state, the same line, nothing left in the store)
def test_state_that_cannot_be_pickled_fails_in_one_line(ex):
    fut = wrenpack.remote(unpicklable_state, executor=ex, timeout=1).remote(200)
    with pytest.raises(wrenpack.SerializationError) as info:
        fut.result(timeout=60)
    msg = str(info.value)
    assert "\n" not in msg and "checkpoint" in msg and "lock" in msg.lower(), msg
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


# -- loops that cannot make progress ----------------------------------------------------------------
def never_restores(n):
    cp = wrenpack.checkpoint()
    state = {"i": 0}  # forgot cp.restore(): every segment starts over
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        cp.offer(state)
    return state["i"]


@pytest.mark.slow  # (test_checkpoint_progress's test_a_loop_that_never_calls_restore_is_named_once: the same refusal, its message in full, within 15 s)
def test_a_loop_that_never_restores_is_stopped_and_told_why(ex):
    fut = wrenpack.remote(never_restores, executor=ex, timeout=1).remote(10_000)
    t0 = time.monotonic()
    with pytest.raises(wrenpack.WrenpackError) as info:
        fut.result(timeout=30)
    assert time.monotonic() - t0 < 15
    msg = str(info.value)
    assert "\n" not in msg and "restore" in msg, msg


def never_checkpoints(seconds):
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        pass
    return "done"


def test_no_checkpoint_past_the_timeout_is_a_timeout_naming_the_fix(ex):
    fut = wrenpack.remote(never_checkpoints, executor=ex, timeout=1).remote(5)
    with pytest.raises(wrenpack.TaskTimeout) as info:
        fut.result(timeout=30)
    msg = str(info.value)
    assert "\n" not in msg and "wrenpack.checkpoint" in msg and "timeout=" in msg, msg
    assert fut.segments == 1


# -- after a resume ------------------------------------------------------------------------------
class Boom(Exception):
    pass


def fails_after_resume(n, fail_at):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        if state["i"] == fail_at:
            raise Boom(f"failed at {state['i']}")
        cp.offer(state)
    return state["i"]


def test_exception_after_a_resume_is_the_users(ex):
    fut = wrenpack.remote(fails_after_resume, executor=ex, timeout=1).remote(500, 80)
    with pytest.raises(Boom, match="failed at 80"):
        fut.result(timeout=60)
    assert fut.segments >= 2
    tb = fut.exception().__cause__
    assert isinstance(tb, wrenpack.errors.RemoteTraceback) and "fails_after_resume" in str(tb)
    assert "raise Boom" in str(tb)
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))
    assert fut.status["exit"] == "error"


# -- many at once -------------------------------------------------------------------------------
def test_map_of_checkpointing_calls_keeps_each_calls_state(tmp_path):
    """... and leaves nothing behind once its executor is shut down (test_nothing_left_behind's check)."""
    before = _shm()
    store = tmp_path / "store"
    ns = [40 + 8 * k for k in range(4)]
    with wrenpack.Executor(storage=str(store), concurrency=2, retries=0) as ex:
        futs = wrenpack.remote(stepper, executor=ex, timeout=1).map(ns, step_s=0.02)
        assert wrenpack.get(futs, timeout=120) == [expected(n) for n in ns]
        assert max(f.segments for f in futs) >= 2
    left = [p for p in glob.glob(str(store / "**"), recursive=True) if os.path.isfile(p)]
    assert not left, left
    assert _left_in_shm(before, {f.job_id for f in futs}, {os.getpid()}) == []


@pytest.mark.slow  # (test_checkpoint_progress's test_a_chunksize_groups_calls_that_ended_are_not_run_again_in_its_next_segment: a group's call resumed across segments, every result checked)
def test_chunksize_group_of_checkpointing_calls(ex):
    ns = [40, 45, 50, 55]
    futs = wrenpack.remote(stepper, executor=ex, timeout=1).map(ns, step_s=0.02, chunksize=2)
    assert wrenpack.get(futs, timeout=120) == [expected(n) for n in ns]


# -- cancellation ------------------------------------------------------------------------------
@pytest.mark.slow  # (test_checkpoint_progress's test_a_call_cancelled_while_its_segments_run_launches_no_more[local]: the same cancel, no segment after, no checkpoint left)
def test_cancel_between_segments(ex, tmp_path):
    log_path = str(tmp_path / "log")
    fut = wrenpack.remote(stepper, executor=ex, timeout=1).remote(100_000, 0.01, log_path)
    assert _wait_for(lambda: len(_lines(log_path)) >= 2)
    assert wrenpack.cancel(fut) == [True]
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=15)
    seen = len(_lines(log_path))
    time.sleep(1.5)  # (segments last 1 s: one let through after the cancel would have started by then)
    assert len(_lines(log_path)) == seen  # no further segment launched
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


_EXITS_MID_CALL = """
import os, sys, time
sys.path.insert(0, {root!r})
import wrenpack
from tests.test_probe_checkpoint import stepper, _lines
ex = wrenpack.Executor(storage={store!r}, concurrency=1)
fut = wrenpack.remote(stepper, executor=ex, timeout=1).remote(100_000, 0.01, {log!r})
while len(_lines({log!r})) < 2:
    time.sleep(0.02)
print("exiting", fut.job_id, os.getpid(), flush=True)
"""


def test_a_program_that_exits_mid_call_leaves_nothing_behind(tmp_path):
    """A program that ends while its checkpointed call runs (between or during segments):
    the call is stopped, no further segment starts, and its objects are gone."""
    import subprocess
    import sys

    store, log = str(tmp_path / "store"), str(tmp_path / "log")
    before = _shm()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _EXITS_MID_CALL.format(root=root, store=store, log=log)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "exiting" in out.stdout, out.stderr
    _, job_id, pid = next(line for line in out.stdout.splitlines() if line.startswith("exiting")).split()
    seen = len(_lines(log))
    time.sleep(1.5)  # (segments last 1 s: one let through after the exit would have started by then)
    assert len(_lines(log)) == seen
    left = [p for p in glob.glob(store + "/**", recursive=True) if os.path.isfile(p)]
    assert not left, left
    assert _left_in_shm(before, {job_id}, {int(pid)}) == []


# -- security: the checkpoint in the store -------------------------------------------------------------
def gated_stepper(n, step_s, log_path, gate):
    """``stepper`` whose later segments wait for ``gate`` (a file) before restoring: the test
    changes the stored checkpoint between two segments."""
    cp = wrenpack.checkpoint()
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid()}) + "\n")
    if len(_lines(log_path)) > 1:
        while not os.path.exists(gate):
            time.sleep(0.01)
    state = cp.restore(default={"i": 0, "acc": 0})
    while state["i"] < n:
        time.sleep(step_s)
        state["acc"] += state["i"] ** 2
        state["i"] += 1
        cp.offer(state)
    return state["acc"]


def _between_segments(ex, tmp_path, change):
    """Run ``gated_stepper``; once its first segment saved, ``change(store, key)``, then let it go on."""
    log_path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    # (1 s segments: the first saves near 0.9 s; the second waits at the gate for the few ms the change takes)
    fut = wrenpack.remote(gated_stepper, executor=ex, timeout=1).remote(300, 0.01, log_path, gate)
    assert _wait_for(lambda: len(_lines(log_path)) >= 2)  # the second segment waits at the gate
    change(ex.store, keys.checkpoint_key(fut.job_id, fut.call_id))
    open(gate, "w").close()
    return fut


def test_a_flipped_bit_in_a_stored_checkpoint_is_refused(ex, tmp_path):
    def flip(store, key):
        bad = bytearray(store.get(key))
        bad[len(bad) // 2] ^= 0x01
        store.put(key, bytes(bad))

    fut = _between_segments(ex, tmp_path, flip)
    with pytest.raises(wrenpack.CorruptObject) as info:
        fut.result(timeout=60)
    assert "\n" not in str(info.value) and "failed authentication" in str(info.value)
    assert fut.segments == 2


def test_a_checkpoint_of_another_job_is_refused(ex, tmp_path):
    a = wrenpack.remote(stepper, executor=ex, timeout=1).remote(150, 0.01)  # (two segments: it saves once)
    a_key = keys.checkpoint_key(a.job_id, a.call_id)
    assert _wait_for(lambda: ex.store.exists(a_key))
    stolen = ex.store.get(a_key)
    # job B, the same function and call number, at the same segment: A's checkpoint moved into B's place
    b = _between_segments(ex, tmp_path, lambda store, key: store.put(key, stolen))
    with pytest.raises(wrenpack.CorruptObject, match="failed authentication"):
        b.result(timeout=60)
    assert a.result(timeout=60) == expected(150)


def replayed_stepper(n, step_s, log_path, copied, gate):
    """``gated_stepper`` that also stops once right after the first save of its first segment
    (the save halfway that times one), until ``copied`` (a file) exists: the test copies that
    save then. Each segment logs the step it resumed from."""
    cp = wrenpack.checkpoint()
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid()}) + "\n")
    later = len(_lines(log_path)) > 1
    if later:
        while not os.path.exists(gate):
            time.sleep(0.01)
    state = cp.restore(default={"i": 0, "acc": 0})
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"start_i": state["i"]}) + "\n")
    while state["i"] < n:
        time.sleep(step_s)
        state["acc"] += state["i"] ** 2
        state["i"] += 1
        cp.offer(state)
        if not later and cp.saves == 1 and not os.path.exists(copied):
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"saved_i": state["i"]}) + "\n")
            while not os.path.exists(copied):
                time.sleep(0.005)
    return state["acc"]


def _replay_the_first_save(ex, tmp_path, timeout):
    """Run ``replayed_stepper`` (two segments); copy its first segment's first save back over
    that segment's last save once the segment ended; the call must fail, not resume from it."""
    log_path, copied, gate = str(tmp_path / "log"), str(tmp_path / "copied"), str(tmp_path / "gate")
    other = wrenpack.remote(stepper, executor=ex, timeout=timeout).remote(150, 0.01)  # (left alone)
    fut = wrenpack.remote(replayed_stepper, executor=ex, timeout=timeout).remote(150 * timeout, 0.01, log_path, copied, gate)
    key = keys.checkpoint_key(fut.job_id, fut.call_id)
    assert _wait_for(lambda: any("saved_i" in line for line in _lines(log_path)), 60)
    first = ex.store.get(key)  # the timing save, sealed for this call and this segment
    open(copied, "w").close()
    assert _wait_for(lambda: sum("pid" in line for line in _lines(log_path)) >= 2, 60)  # the second segment waits at the gate
    assert ex.store.get(key) != first  # (the segment's last save replaced it)
    ex.store.put(key, first)
    open(gate, "w").close()
    with pytest.raises(wrenpack.CorruptObject) as info:
        fut.result(timeout=60)
    message = str(info.value)
    assert "\n" not in message and key in message and "save 1 of segment 0" in message, message
    assert "nothing was unpickled" in message
    assert [line["start_i"] for line in _lines(log_path) if "start_i" in line] == [0]  # never resumed from it
    assert fut.segments == 2
    assert other.result(timeout=60) == expected(150)  # another call's checkpoints are not touched


def test_an_earlier_save_copied_back_over_the_latest_is_refused(ex, tmp_path):
    # (probe5 finding 2) A first segment saves twice: halfway (to time a save) and at its end.
    # Whoever can write to the store copied the first save back over the last one after the
    # segment ended, and the next segment resumed from the older state, authentic as it is:
    # its steps, and their side effects, ran twice, with no error.
    _replay_the_first_save(ex, tmp_path, timeout=1)


@pytest.mark.slow  # (test_map_of_checkpointing_calls_keeps_each_calls_state makes the same checks after a map of such calls)
def test_nothing_left_behind(tmp_path):
    before = _shm()
    store = tmp_path / "store"
    with wrenpack.Executor(storage=str(store), concurrency=2, retries=0) as ex:
        f = wrenpack.remote(stepper, executor=ex, timeout=1)
        futs = [f.remote(120, 0.01), f.remote(50, 0.0)]
        assert wrenpack.get(futs, timeout=60) == [expected(120), expected(50)]
    left = [p for p in glob.glob(str(store / "**"), recursive=True) if os.path.isfile(p)]
    assert not left, left
    assert _left_in_shm(before, {f.job_id for f in futs}, {os.getpid()}) == []


# -- the checkpoint API -------------------------------------------------------------------------------
def test_outside_a_remote_call_checkpoint_is_a_no_op():
    cp = wrenpack.checkpoint()
    assert not cp.active
    assert cp.restore() is None and cp.restore(default=3) == 3
    cp.offer({"x": 1})
    cp.save({"x": 1})
    assert cp.time_left() == float("inf")


def test_wrong_arguments_to_the_checkpoint_api():
    with pytest.raises(TypeError):
        wrenpack.checkpoint(5)
    cp = wrenpack.checkpoint()
    with pytest.raises(TypeError):
        cp.offer()


# (test_chunksize_group_of_checkpointing_calls's groups [40, 45] and [50, 55] are calls that each need most
# of a segment too, and more of them: the same bug's check in the default run)
@pytest.mark.slow
def test_chunksize_group_whose_calls_each_need_most_of_a_segment(ex):
    # two calls of ~0.9 s each in one group under a 1 s timeout: each call must keep its progress
    futs = wrenpack.remote(stepper, executor=ex, timeout=1).map([45, 45], step_s=0.02, chunksize=2)
    assert wrenpack.get(futs, timeout=40) == [expected(45)] * 2


# -- a later segment that runs out of time before it saves ---------------------------------------------
def late_once(n, marker, always=False):
    """A loop whose second segment, once (or ``always``), takes one step longer than the time left."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    if state["i"] and (always or not os.path.exists(marker)):
        open(marker, "a").close()
        time.sleep(5)  # (a busy machine that kept the process from the CPU looks the same)
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        cp.offer(state)
    return state["i"]


def test_a_late_segment_runs_again_from_the_last_save(ex, tmp_path):
    # (60 steps of 20 ms: more than a 1 s segment holds, so a second segment comes)
    fut = wrenpack.remote(late_once, executor=ex, timeout=1).remote(60, str(tmp_path / "m"))
    assert fut.result(timeout=60) == 60
    assert [s["error"].split(":")[0] for s in fut.retried_statuses] == ["TaskTimeout"]
    assert fut.retried_statuses[0]["segment"] == 1
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


def test_a_segment_late_every_time_fails_after_one_rerun(ex, tmp_path):
    fut = wrenpack.remote(late_once, executor=ex, timeout=1).remote(80, str(tmp_path / "m"), always=True)
    t0 = time.monotonic()
    with pytest.raises(wrenpack.TaskTimeout, match="offer more often") as info:
        fut.result(timeout=60)
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)
    assert len(fut.retried_statuses) == 1
    assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))


# -- the same on the emulated Lambda (tests/aws: moto's S3, the Runtime Interface Emulator) ------------
@pytest.mark.slow  # (~13 s: deploys a 2 s function; test_aws_lambda covers a plain checkpointed call by default)
@pytest.mark.backends("lambda")
def test_on_lambda_groups_finish_and_a_loop_that_never_restores_is_refused(make_executor, backend):
    lam = make_executor(concurrency=2, retries=0)
    futs = wrenpack.remote(stepper, executor=lam, timeout=2).map([70, 70], step_s=0.02, chunksize=2)
    assert wrenpack.get(futs, timeout=120) == [expected(70)] * 2
    fut = wrenpack.remote(never_restores, executor=lam, timeout=2).remote(10_000)
    with pytest.raises(wrenpack.TaskError, match="without calling restore"):
        fut.result(timeout=60)


@pytest.mark.slow  # (deploys a 2 s function, as the test above)
@pytest.mark.backends("lambda")
def test_on_lambda_an_earlier_save_copied_back_over_the_latest_is_refused(make_executor, backend, tmp_path):
    _replay_the_first_save(make_executor(concurrency=2, retries=0), tmp_path, timeout=2)


# -- an offer made in a thread of the call ----------------------------------------------------------
def _thread_work(n, out):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        cp.offer(state)
    out.append(state["i"])


def offers_in_a_thread(n):
    out = []
    t = threading.Thread(target=_thread_work, args=(n, out))
    t.start()
    t.join()
    return out


def offers_in_a_thread_then_raises(n):
    out = offers_in_a_thread(n)
    return out[0]  # (an IndexError in a segment a save in the thread ended)


def offers_in_a_pool(n):
    with cf.ThreadPoolExecutor(1) as pool:
        out = []
        pool.submit(_thread_work, n, out).result()
        return out


@pytest.mark.parametrize("fn", [offers_in_a_thread, offers_in_a_thread_then_raises, offers_in_a_pool])
def test_a_save_in_a_thread_ends_the_segment_whatever_the_function_does_then(ex, fn):
    # A save raises SegmentDone in the thread that offered; a plain Thread ends there, and the
    # function went on to return [] (or raise) as the call's result. Now the segment ends
    # checkpointed whatever the function does after the save, and the next one resumes from it.
    fut = wrenpack.remote(fn, executor=ex, timeout=1).remote(70)  # (1.4 s of steps: two segments or more)
    want = 70 if fn is offers_in_a_thread_then_raises else [70]
    assert fut.result(timeout=60) == want
    assert fut.segments >= 2
    assert all(s["exit"] == "checkpointed" for s in fut.segment_statuses)


# -- two loops of one call that each checkpoint ----------------------------------------------------
def _checkpointing_helper(n):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        cp.offer(state)
    return state["i"]


def two_checkpoint_users():
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "total": 0})
    while state["i"] < 3:
        state["total"] += _checkpointing_helper(25)
        state["i"] += 1
        cp.offer(state)
    return state["i"], state["total"]


def helper_called_three_times():
    return sum(_checkpointing_helper(25) + k for k in range(3))


def test_two_loops_that_each_checkpoint_fail_in_one_line_not_with_a_wrong_result(ex):
    # The outer loop resumed from the helper's {"i": ...} and returned a wrong result, no error; or
    # the helper's second run restored its first run's state (saved to time a save) and skipped its work.
    assert two_checkpoint_users() == (3, 75)  # (locally)
    fut = wrenpack.remote(two_checkpoint_users, executor=ex, timeout=1).remote()
    with pytest.raises(wrenpack.errors.TaskError, match="another checkpoint user|called again in segment") as info:
        fut.result(timeout=60)
    assert "\n" not in str(info.value) and "_checkpointing_helper" in str(info.value)


def test_a_checkpointing_helper_called_twice_is_refused_not_resumed_from_its_first_run(ex):
    fut = wrenpack.remote(helper_called_three_times, executor=ex, timeout=1).remote()
    with pytest.raises(wrenpack.errors.TaskError, match="called again in segment 0") as info:
        fut.result(timeout=60)
    assert "\n" not in str(info.value) and "_checkpointing_helper" in str(info.value)


def _offer_elsewhere(state):
    wrenpack.checkpoint().offer(state)


def restores_here_offers_there(n):
    state = wrenpack.checkpoint().restore(default={"i": 0})
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        _offer_elsewhere(state)
    return state["i"]


def test_one_loop_may_restore_in_one_function_and_offer_in_another(ex):
    fut = wrenpack.remote(restores_here_offers_there, executor=ex, timeout=1).remote(70)
    assert fut.result(timeout=60) == 70 and fut.segments >= 2


def saves_then_reads_back(n):
    """One run of a loop restores, saves and reads its own save back (as the AWS IAM test's
    ``stepper`` does): the same run's second restore is answered with what it saved."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    state["i"] += n
    cp.save(state)
    return cp.restore()["i"]


def test_the_same_run_may_read_back_what_it_saved(ex):
    assert wrenpack.remote(saves_then_reads_back, executor=ex, timeout=5).remote(5).result(timeout=60) == 5


# -- retry_on in a later segment -------------------------------------------------------------------
class Transient(Exception):
    pass


def fails_once_in_a_later_segment(n, log_path, fail_at, always=False):
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "acc": 0})
    with open(log_path, "a") as fh:
        fh.write(f"start {state['i']}\n")
    while state["i"] < n:
        time.sleep(0.02)
        state["i"] += 1
        state["acc"] += state["i"]
        if state["i"] == fail_at and (always or "boom" not in open(log_path).read()):
            with open(log_path, "a") as fh:
                fh.write("boom\n")
            raise Transient(f"at {fail_at}")
        cp.offer(state)
    return state["acc"]


def test_a_retry_on_error_in_a_later_segment_resumes_from_the_last_save(tmp_path):
    # It began again from scratch (start 0 after the error) though a worker crash at the same point resumed.
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2, retries=2)
    try:
        log_path = str(tmp_path / "log")
        f = wrenpack.remote(fails_once_in_a_later_segment, executor=ex, timeout=1, retry_on=(Transient,))
        fut = f.remote(60, log_path, 50)  # (a 1 s segment holds about 45 steps: 50 is in a later one)
        assert fut.result(timeout=60) == sum(range(61))
        lines = open(log_path).read().splitlines()
        boom = lines.index("boom")
        assert lines[0] == "start 0" and boom >= 2  # (it failed in a later segment)
        assert lines[boom + 1] == lines[boom - 1] != "start 0"  # the retry resumed from the save before the error
        assert [s["error"].split(":")[0] for s in fut.retried_statuses] == ["Transient"]
        # a call whose last attempt fails too leaves no checkpoint behind
        fut = f.options(retries=1).remote(60, str(tmp_path / "log2"), 50, always=True)
        with pytest.raises(Transient):
            fut.result(timeout=60)
        assert not ex.store.exists(keys.checkpoint_key(fut.job_id, fut.call_id))
    finally:
        ex.shutdown()
