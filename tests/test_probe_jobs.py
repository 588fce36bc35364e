"""Spawned jobs probed from outside (the probe-jobs helper): what an attached
process and ``wrenpack jobs`` are told, in the cases the other job tests leave out.

Each test failed before the fix its docstring names.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import wrenpack
from tests.test_jobs import _cli, _record, _store
from wrenpack import keys
from wrenpack.executor.owner import user_key
from wrenpack.job.client import open_job
from wrenpack.wire import job_record, owner as owner_wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (so subprocesses share them)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lost_job(store, job_id: str, progress: dict, calls: int = 6, timeout: float = 3.0):
    """A spawned job whose supervisor (a process that has ended) last wrote ``progress``."""
    key = user_key()
    record = _record(job_id, calls=calls)
    record["settings"]["timeout"] = timeout
    store.put(keys.job_record_key(job_id), job_record.seal_job(key, job_id, record))
    owner = {"host": socket.gethostname(), "pid": _dead_pid(), "start": "1", "created": time.time(), "label": "f"}
    store.put(keys.owner_key(job_id), owner_wire.dumps(owner_wire.seal(key, job_id, owner)))
    job = open_job(store, job_id)
    progress = dict({"state": "running", "invocations": 0, "billed_ms": 0, "updated": time.time(), "ended": None},
                    **progress)
    store.put(keys.progress_key(job_id), job_record.seal_progress(job._secret, job_id, progress))
    return job


def test_a_lost_jobs_counts_say_that_nothing_of_it_runs_or_waits(home):
    """A job whose supervisor died showed its last counts ("lost: 1 done, 0 failed, 2 running,
    3 queued" in `wrenpack jobs show`, 1/0/2/3 in the list) although nothing of it runs any more
    and its futures have all failed with WorkerLost: the calls it had not finished count as failed."""
    store = _store()
    job = _lost_job(store, "20260101-000000-10570001",
                    {"done": 1, "failed": 0, "running": 2, "queued": 3, "cancelled": 0, "in_flight": []})
    _store_ok(job, keys.call_id(0), 0)  # (the call its last counts say is done)
    status = job.status()
    assert status["state"] == "lost"
    assert (status["done"], status["failed"], status["running"], status["queued"]) == (1, 5, 0, 0), status
    listed = _cli("jobs", "--json")
    row = next(r for r in json.loads(listed.stdout)["jobs"] if r["id"] == job.id)
    assert (row["state"], row["running"], row["queued"], row["failed"]) == ("lost", 0, 0, 5), row
    shown = _cli("jobs", "show", job.id)
    assert "lost: 1 done, 5 failed, 0 running, 0 queued" in shown.stdout, shown.stdout

    # On Lambda the calls it had sent run on: they count as running until the latest they could end.
    sent = _lost_job(store, "20260101-000000-10570002",
                     {"done": 1, "failed": 0, "running": 2, "queued": 3, "cancelled": 0, "outlive": True,
                      "in_flight": [keys.call_id(1), keys.call_id(2)]})
    _store_ok(sent, keys.call_id(0), 0)
    status = sent.status()
    assert (status["state"], status["running"], status["queued"], status["failed"]) == ("lost", 2, 0, 3), status


def _store_ok(job, call_id: str, value, duration_s: float = 0.5) -> None:
    """``call_id``'s result object, as its worker writes it."""
    import cloudpickle

    from wrenpack.wire import result as result_format, status as status_record

    now = time.time()
    record = status_record.record(job.id, call_id, 0, 0, "ok", now - duration_s, now, duration_s, None, "h", 1,
                                  "3.12", None)
    job.store.put(keys.result_key(job.id, call_id),
                  result_format.seal_result(job._secret, job.id, call_id, record, cloudpickle.dumps(("ok", value))))


def test_a_lost_jobs_counts_and_cost_are_those_of_its_results(home):
    """Its supervisor killed just after two calls ended, before its next progress record: status(),
    `jobs show` and `jobs --json` said "0 done, 4 failed" and cost $0, while results() gave
    [0, 1, WorkerLost, WorkerLost]: the counts were its last progress record's."""
    store = _store()
    job = _lost_job(store, "20260101-000000-10570003",
                    {"done": 0, "failed": 0, "running": 4, "queued": 0, "cancelled": 0, "in_flight": []}, calls=4)
    for i in (0, 1):
        _store_ok(job, keys.call_id(i), i)
    status = job.status()
    assert (status["state"], status["done"], status["failed"], status["running"], status["queued"]) == \
        ("lost", 2, 2, 0, 0), status
    assert status["billed_ms"] == 1000 and status["invocations"] == 2 and status["cost"] > 0, status
    results = job.results(timeout=10, return_exceptions=True, progress=False)
    assert results[:2] == [0, 1] and all(isinstance(r, wrenpack.WorkerLost) for r in results[2:]), results
    row = next(r for r in json.loads(_cli("jobs", "--json").stdout)["jobs"] if r["id"] == job.id)
    assert (row["done"], row["failed"]) == (2, 2), row
    shown = _cli("jobs", "show", job.id)
    assert "lost: 2 done, 2 failed, 0 running, 0 queued" in shown.stdout, shown.stdout


def test_a_job_whose_progress_record_was_tampered_with_shows_its_results_and_warns_once(home):
    """Its supervisor gone, every call done, its progress record overwritten: `jobs show` said
    "lost: 0 done, 2 failed" over two calls that were done, and printed the same WARNING 9 times."""
    store = _store()
    job = _lost_job(store, "20260101-000000-7a3e0001",
                    {"state": "done", "done": 2, "failed": 0, "running": 0, "queued": 0, "cancelled": 0}, calls=2)
    for i in (0, 1):
        _store_ok(job, keys.call_id(i), i)
    sealed = store.get(keys.progress_key(job.id))
    store.put(keys.progress_key(job.id), sealed.replace(b'"done":2', b'"done":0').replace(b'"failed":0', b'"failed":2'))
    assert job.progress() is None
    status = job.status()
    assert (status["state"], status["done"], status["failed"]) == ("done", 2, 0), status
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shown = subprocess.run([sys.executable, "-m", "wrenpack", "jobs", "show", job.id], capture_output=True, text=True,
                           timeout=60, env=env, cwd=ROOT)
    assert "done: 2 done, 0 failed" in shown.stdout, shown.stdout
    warnings = [line for line in shown.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, shown.stderr


def test_a_failure_its_supervisor_records_names_the_call_once(home):
    """A call that failed without a result of its own (here its worker died) read
    "crash[0]: crash[0]: the worker process died ..." in an attached process: the supervisor
    stored the executor's message, which names the call, and the attached side named it again."""

    def crash(x):
        if x == 0:
            os._exit(3)
        return x

    job = wrenpack.remote(crash).options(retries=0, timeout=30).spawn_map(range(2))
    futs = job.futures()
    with pytest.raises(wrenpack.WorkerCrashed) as err:
        futs[0].result(timeout=60)
    assert str(err.value).startswith(f"{futs[0].label}: the worker process died"), str(err.value)
    assert futs[1].result(timeout=60) == 1


def test_calls_a_job_sent_to_lambda_are_running_to_an_attached_process(home, monkeypatch):
    """On Lambda a call writes a start mark only after it waited in Lambda's queue (the backend sets
    the event's mark_start_after), so an attached process showed every running call of a spawned job
    there as queued: futures never running(), statuses() and `jobs show` "queued" while the job's
    counts said "4 running" (seen on the emulated Lambda). The calls its supervisor has sent (its
    progress record's in_flight) are running; once it died, until the latest they could end."""
    from wrenpack.executor.owner import owner_record
    from wrenpack.job import client

    monkeypatch.setattr(client, "LIVENESS_S", 0.2)  # (its watcher reads the final record at its next look: 1 s)
    store = _store()
    job = _lost_job(store, "20260101-000000-5e070001",
                    {"done": 0, "failed": 0, "running": 2, "queued": 4, "cancelled": 0, "outlive": True,
                     "in_flight": [keys.call_id(0), keys.call_id(1)]})
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: this process
    assert job.status()["state"] == "running"
    assert [s["state"] for s in job.statuses()] == ["running"] * 2 + ["queued"] * 4
    futs = job.futures()
    end = time.monotonic() + 10
    while not futs[1].running() and time.monotonic() < end:
        time.sleep(0.05)
    assert [f.running() for f in futs] == [True] * 2 + [False] * 4
    store.put(keys.progress_key(job.id), job_record.seal_progress(job._secret, job.id, {  # (its watcher ends)
        "state": "cancelled", "done": 0, "failed": 0, "running": 0, "queued": 0, "cancelled": 6, "invocations": 0,
        "billed_ms": 0, "updated": time.time(), "ended": time.time()}))
    assert job.wait(10)

    # its supervisor died: the calls it had sent may still end; the others are lost
    lost = _lost_job(store, "20260101-000000-5e070002",
                     {"done": 0, "failed": 0, "running": 2, "queued": 4, "cancelled": 0, "outlive": True,
                      "in_flight": [keys.call_id(0), keys.call_id(1)]})
    assert lost.status()["state"] == "lost"
    assert [s["state"] for s in lost.statuses()] == ["running"] * 2 + ["lost"] * 4


def test_a_call_stopped_by_the_jobs_cancel_is_shown_cancelled_not_failed(home):
    """On Lambda a running call that a cancel stops ends with an outcome of its own (CallCancelled,
    its status record marked cancelled); `jobs show` of the cancelled job listed it as
    "failed 2.181 s, peak None MB, attempts 1 (error)" under "0 failed, 6 cancelled" (seen on the
    emulated Lambda)."""
    import cloudpickle

    from wrenpack.errors import CallCancelled
    from wrenpack.wire import result as result_format, status as status_record
    from wrenpack.wire.outcome import error_tuple

    store = _store()
    job = _lost_job(store, "20260101-000000-ca9ce101",
                    {"state": "cancelled", "done": 0, "failed": 0, "running": 0, "queued": 0, "cancelled": 2,
                     "ended": time.time()}, calls=2)
    now = time.time()
    record = status_record.record(job.id, keys.call_id(0), 0, 0, "error", now - 2.0, now, None, None, "h", 1, "3.11", None)
    record["cancelled"] = True
    outcome = cloudpickle.dumps(error_tuple(CallCancelled("f[0] was cancelled while it ran"), "wrenpack", ""))
    store.put(keys.result_key(job.id, keys.call_id(0)), result_format.seal_result(job._secret, job.id, keys.call_id(0),
                                                                                    record, outcome))
    assert [s["state"] for s in job.statuses()] == ["cancelled", "cancelled"]
    assert [c["state"] for c in job.report().to_json()["calls"]] == ["cancelled", "cancelled"]
    shown = _cli("jobs", "show", job.id)
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith(keys.call_id(0)))
    assert "cancelled" in line and "failed" not in line and "(error)" not in line and "None" not in line, line


def test_a_cancelled_jobs_cost_counts_the_calls_its_cancel_stopped(tmp_path):
    """On Lambda the calls a cancel stops run on until they see the marker, are billed, and end
    with an outcome of their own; the supervisor counted nothing of them ("billed; 3 invocations,
    0.000 s" for three calls billed 2.2 s each on the emulated Lambda), and counted a call that
    finished before it saw the marker as cancelled ("0 done, 3 cancelled" beside three results).
    Its executor now stops them as ``wrenpack.cancel`` does and waits for those outcomes, so each
    call's future ends as the call did: its run billed, a call taken back before it ran not."""
    import threading

    from wrenpack.errors import CallCancelled
    from wrenpack.futures import WrenFuture
    from wrenpack.job import supervisor as sup_module
    from wrenpack.storage.local import LocalStore
    from wrenpack.wire import status as status_record

    sup = object.__new__(sup_module.Supervisor)
    sup.job_id, sup.secret, sup.store = "20261206-050000-abcdef13", b"s" * 32, LocalStore(str(tmp_path / "s"))
    sup.stopped, sup.cancelled, sup.stops_running = set(), True, True
    sup.billed_ms, sup.invocations, sup.outlive = 0, 0, True
    sup._lock, sup._written = threading.Lock(), None
    now = time.time()
    futs = [WrenFuture(sup.job_id, keys.call_id(i), f"f[{i}]") for i in range(4)]
    # call 0 saw the marker 2.2 s in; call 2 finished before it did; call 1 was taken back before it was
    # sent (its future cancelled), call 3 too (Lambda's backend ends such a call CallCancelled, no record of a run)
    futs[0].status = dict(status_record.record(sup.job_id, keys.call_id(0), 0, 0, "error", now - 2.2, now, None, None,
                                               "h", 1, "3.11", None), cancelled=True)
    futs[2].status = status_record.record(sup.job_id, keys.call_id(2), 0, 0, "ok", now - 1.0, now, None, None, "h", 1,
                                          "3.11", None)
    futs[3].status = {"attempt": 0, "exit": "error", "error": "CallCancelled"}
    for fut in futs:
        fut.add_done_callback(sup._ended)
    futs[0]._resolve(False, CallCancelled("f[0] was cancelled while it ran"))
    assert futs[1].cancel()
    futs[2]._resolve(True, 2)
    futs[3]._resolve(False, CallCancelled("f[3] was cancelled (wrenpack.cancel) before it ran"))
    sup.futures = futs
    assert 3200 <= sup.billed_ms <= 3201 and sup.invocations == 2  # (ceils of 2.2 s and 1 s as floats)
    assert sup._write_final("cancelled")
    record = job_record.open_progress(sup.secret, sup.job_id, sup.store.get(keys.progress_key(sup.job_id)))
    assert {k: record[k] for k in ("done", "failed", "cancelled", "billed_ms", "invocations")} == \
        {"done": 1, "failed": 0, "cancelled": 3, "billed_ms": sup.billed_ms, "invocations": 2}


def test_a_running_job_whose_record_was_overwritten_is_not_removed_by_clean(home):
    """Whoever can write to the store could replace a running spawned job's record (job.json) with
    anything: `clean` then judged the job "unknown", so `wrenpack clean ID` and `clean --stale --force`
    removed it while its supervisor ran, which went on writing into the removed folder (objects no
    record owns, kept by every later --stale). Its sealed owner record still says that it runs."""
    from wrenpack.executor.owner import owner_record

    store = _store()
    job_id = "20260101-000000-f0a9ed01"
    store.put(keys.owner_key(job_id), json.dumps(owner_record("f", job_id)).encode())  # its supervisor: this process
    store.put(keys.job_record_key(job_id), b'{"spawned": true, "calls": 1}')  # a stranger's
    for args in (("clean", job_id), ("clean", job_id, "--force"), ("clean", "--stale", "--force"),
                 ("clean", "--all", "--force")):
        _cli(*args)
        assert store.exists(keys.owner_key(job_id)) and store.exists(keys.job_record_key(job_id)), args


def test_a_call_that_finishes_while_its_job_is_being_cancelled_keeps_its_result(home, monkeypatch):
    """An attached process failed every call not yet done with CancelledError as soon as it saw the
    cancel marker; on Lambda the stopped calls run on until they see it, and one that finishes first
    stores its result: another process attached later got that result, statuses() said "done",
    and the first process had called it cancelled. Futures now end with the job's final record."""
    import concurrent.futures as cf

    import cloudpickle

    from wrenpack.executor.owner import owner_record
    from wrenpack.wire import result as result_format, status as status_record

    from wrenpack.job import client

    # The watcher looks for the marker and the job's state every LIVENESS_S (1 s): every 0.2 s
    # here, so that the wait below sees two looks or more in 0.6 s, not 1.5 s.
    monkeypatch.setattr(client, "LIVENESS_S", 0.2)
    store = _store()
    job = _lost_job(store, "20260101-000000-ca9ce102",
                    {"done": 0, "failed": 0, "running": 2, "queued": 0, "cancelled": 0}, calls=2)
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: this process
    futs = job.futures()
    assert job.cancel()
    time.sleep(0.6)
    assert not any(f.done() for f in futs)
    assert job.status()["state"] == "cancelling"
    now = time.time()
    record = status_record.record(job.id, keys.call_id(0), 0, 0, "ok", now - 1, now, None, None, "h", 1, "3.11", None)
    store.put(keys.result_key(job.id, keys.call_id(0)), result_format.seal_result(
        job._secret, job.id, keys.call_id(0), record, cloudpickle.dumps(("ok", 42))))
    store.put(keys.progress_key(job.id), job_record.seal_progress(job._secret, job.id, {
        "state": "cancelled", "done": 1, "failed": 0, "running": 0, "queued": 0, "cancelled": 1, "invocations": 2,
        "billed_ms": 0, "updated": time.time(), "ended": time.time()}))
    assert futs[0].result(timeout=10) == 42
    with pytest.raises(cf.CancelledError):
        futs[1].result(timeout=10)
