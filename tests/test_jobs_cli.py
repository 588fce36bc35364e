"""``wrenpack jobs`` / ``wrenpack clean`` / ``attach`` with the input a user (or someone
careless) gives them: job ids that are not ids, options before the action, messages
that name the fix. Records are planted as ``spawn_map`` writes them (no processes),
so each test takes a fraction of a second.
"""
from __future__ import annotations

import json
import os
import time

import cloudpickle
import pytest

from tests.test_jobs import _cli, _finish, _plant, _record, _store
from wrenpack import keys
from wrenpack.errors import ConfigError
from wrenpack.executor.owner import owner_record, user_key
from wrenpack.job import Job, JobNotFound, attach
from wrenpack.job.client import open_job
from wrenpack.wire import job_record, owner as owner_wire, result as result_format, start as start_mark, status as status_record

@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (as in test_jobs)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path


JOB = "20260101-000000-0000abcd"

#: what users paste by mistake, and what an attacker names on purpose
NOT_IDS = ("..", "../x", f"{JOB}/result", f"{JOB}/..", ".", " ", "-x", "x" * 300, f"{JOB}\n")


def test_a_job_id_that_is_not_one_is_named_as_such_in_one_line_before_the_store_is_read(home):
    store = _store()
    _plant(store, JOB, user_key())
    for bad in NOT_IDS:
        with pytest.raises(ConfigError, match="is not a job id") as err:
            attach(bad)
        assert "\n" not in str(err.value)
        for args in (("jobs", "show", "--", bad), ("jobs", "cancel", "--", bad)):
            out = _cli(*args)
            assert out.returncode == 1 and "is not a job id" in out.stderr and out.stderr.count("\n") == 1, (args, out)
    # a trailing slash (a folder name completed by the shell) is the job
    out = _cli("jobs", "show", f"{JOB}/", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB, out.stderr


def test_clean_never_removes_part_of_a_job_named_by_a_path(home):
    """``wrenpack clean JOB/result`` removed the results of a job, while its supervisor ran."""
    store = _store()
    job = _plant(store, JOB, user_key())
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: live
    store.put(keys.result_key(job.id, "00000"), b"a result")
    for bad in (f"{JOB}/result", f"{JOB}/result/0", "..", f"{JOB}/start/.."):
        out = _cli("clean", "--", bad)
        assert out.returncode == 1 and "is not a job id" in out.stderr and out.stderr.count("\n") == 1, (bad, out)
        assert store.exists(keys.result_key(job.id, "00000")), bad
    # named with a trailing slash, as before, it is the job (refused while its supervisor runs)
    out = _cli("clean", f"{JOB}/")
    assert out.returncode == 1 and "still running" in out.stderr


def test_options_given_before_the_action_are_not_dropped(home, tmp_path):
    """``wrenpack jobs --json show ID`` printed text, and ``wrenpack jobs --storage S cancel ID``
    used the default store: the action's parser reset the options given before it."""
    store = _store()
    job = _plant(store, JOB, user_key())
    _finish(job)
    out = _cli("jobs", "--json", "show", JOB)
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB, out
    elsewhere = tmp_path / "elsewhere"
    out = _cli("jobs", "--storage", str(elsewhere), "show", JOB)
    assert out.returncode == 1 and str(elsewhere) in out.stderr, out
    running = _plant(store, "20260101-000000-0000beef", user_key(), created=time.time())
    out = _cli("jobs", "--storage", str(elsewhere), "cancel", running.id)
    assert out.returncode == 1 and not running.cancelled(), out
    # given after the action, as before
    out = _cli("jobs", "show", JOB, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB


def _plant_with(store, job_id: str, **settings) -> Job:
    record = _record(job_id)
    record["settings"] = dict(record["settings"], **settings)
    store.put(keys.job_record_key(job_id), job_record.seal_job(user_key(), job_id, record))
    return open_job(store, job_id)


def _supervised(job: Job, alive: bool = True, outlive: bool = False) -> None:
    """Its supervisor: this process (alive), or one that is gone; and a progress record saying it runs."""
    record = owner_record("f", None)
    if not alive:
        record["start"] = "0"  # (this pid, another process: the one that had it is gone)
    job.store.put(keys.owner_key(job.id), json.dumps(owner_wire.seal(user_key(), job.id, record)).encode())
    progress = {"state": "running", "done": 0, "failed": 0, "running": 1, "queued": job.calls - 1, "cancelled": 0,
                "invocations": 1, "billed_ms": 0, "updated": time.time(), "ended": None, "outlive": outlive,
                "in_flight": ["00000"] if outlive else []}
    job.store.put(keys.progress_key(job.id), job_record.seal_progress(job._secret, job.id, progress))


def test_clean_of_a_running_spawned_job_says_to_cancel_it_not_to_force(home):
    """It said "pass --force", and --force then said "cancel them first"."""
    store = _store()
    job = _plant(store, JOB, user_key())
    _supervised(job)
    for args in (("clean", JOB), ("clean", "--all")):
        out = _cli(*args)
        assert out.returncode == 1 and "wrenpack jobs cancel" in out.stderr and "--force" not in out.stderr, out
        assert store.exists(keys.job_record_key(JOB))


def test_cancel_says_what_happens_to_the_running_calls_and_refuses_a_lost_job(home):
    store = _store()
    kept = _plant_with(store, JOB, cancellable=False)
    _supervised(kept)
    out = _cli("jobs", "cancel", JOB)
    # it said "running ones are stopped", which a cancellable=False job's are not
    assert out.returncode == 0 and "run to their end" in out.stdout and "stopped" not in out.stdout, out
    out = _cli("jobs", "cancel", JOB)
    assert out.returncode == 0 and "already cancelled" in out.stdout, out
    # a lost job (its supervisor gone, and its local calls with it) has nothing left to cancel
    lost = _plant(store, "20260101-000000-0000dead", user_key())
    _supervised(lost, alive=False)
    assert lost.status()["state"] == "lost" and not lost.cancel() and not lost.cancelled()
    out = _cli("jobs", "cancel", lost.id)
    assert out.returncode == 1 and "already ended (lost)" in out.stderr and out.stderr.count("\n") == 1, out
    # ... but one whose calls outlive it (Lambda) may still have calls running: the marker stops them
    sent = _plant(store, "20260101-000000-0000beef", user_key())
    _supervised(sent, alive=False, outlive=True)
    assert sent.cancel() and sent.cancelled()


def test_jobs_show_says_how_a_failed_call_ended(home):
    store = _store()
    job = _plant(store, JOB, user_key(), calls=1)
    now = time.time()
    status = status_record.record(JOB, "00000", 0, 0, "timeout", now - 3, now, 20.0, None, "h", 1, "3.12", None)
    store.put(keys.result_key(JOB, "00000"),
              result_format.seal_result(job._secret, JOB, "00000", status, cloudpickle.dumps(None)))
    _finish(job, "failed")
    out = _cli("jobs", "show", JOB)
    assert out.returncode == 0 and "00000  failed" in out.stdout and "(timeout)" in out.stdout, out


def test_one_unreadable_job_does_not_hide_the_others(home, caplog):
    """An object of one job that cannot be read (here: a FIFO, which wrenpack never
    writes, where its progress record should be) made `wrenpack jobs` and `wrenpack
    clean --stale` fail as a whole. (A folder there was the test's unreadable object
    before: a folder is no object now, as on S3.)"""
    store = _store()
    good = _plant(store, JOB, user_key())
    _finish(good)
    broken = _plant(store, "20260101-000000-0000dead", user_key())
    os.mkfifo(home / "store" / keys.progress_key(broken.id))
    out = _cli("jobs", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)["jobs"]}
    assert rows[JOB]["state"] == "done" and broken.id in rows
    assert "progress.json" in caplog.text and "not a regular file" in caplog.text
    out = _cli("jobs")
    assert out.returncode == 0 and broken.id in out.stdout and JOB in out.stdout, out.stderr
    out = _cli("clean", "--stale", "--json")
    assert out.returncode == 0, out.stderr
    assert store.exists(keys.job_record_key(JOB))  # (done, kept for its retention)


@pytest.mark.parametrize("name", ["job.json", "owner.json"])
def test_a_folder_where_a_jobs_record_would_be_does_not_hide_the_others(home, name):
    """`mkdir jobs/ID/job.json` (any store writer can) made `wrenpack jobs` and `jobs --json`
    fail as a whole with "no job 'ID' in the store; `wrenpack jobs` lists the jobs there"."""
    store = _store()
    good = _plant(store, JOB, user_key())
    _finish(good)
    junk = "20260101-000000-00000002"
    (home / "store" / "jobs" / junk / name).mkdir(parents=True)
    out = _cli("jobs", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)["jobs"]}
    assert rows[JOB]["state"] == "done"
    assert rows[junk]["state"] == "unreadable" and "no job record" in rows[junk]["why"], rows[junk]
    out = _cli("jobs")
    assert out.returncode == 0 and junk in out.stdout and JOB in out.stdout, out.stderr
    assert "unreadable" in out.stdout


def test_a_store_path_that_does_not_exist_is_not_created_by_jobs_or_clean(home, tmp_path):
    """`wrenpack jobs --storage TYPO` made the directory TYPO (and its parents) and said "no jobs".
    Its --json (and clean's) told a missing store from an empty one only in the text
    output: ``store_exists`` says it."""
    typo = tmp_path / "no" / "such" / "store"
    out = _cli("jobs", "--storage", str(typo))
    assert out.returncode == 0 and "no store there" in out.stdout, out
    out = _cli("jobs", "--json", "--storage", str(typo))
    assert out.returncode == 0 and json.loads(out.stdout) == {"store": f"file://{typo}", "store_exists": False, "jobs": []}
    for args in (("jobs", "show", JOB), ("jobs", "cancel", JOB), ("clean", JOB)):
        out = _cli(*args, "--storage", str(typo))
        assert out.returncode == 1 and "there is no store at" in out.stderr and out.stderr.count("\n") == 1, out
    for args in (("clean", "--stale"), ("clean", "--all")):
        out = _cli(*args, "--json", "--storage", str(typo))
        assert out.returncode == 0 and json.loads(out.stdout)["removed"] == 0, out
        assert json.loads(out.stdout)["store_exists"] is False
    assert not (tmp_path / "no").exists()
    out = _cli("clean", "--stale", "--json", "--storage", str(tmp_path))
    assert json.loads(out.stdout)["store_exists"] is True
    assert json.loads(_cli("jobs", "--json", "--storage", str(tmp_path)).stdout)["store_exists"] is True


def _store_result(job: Job, call_id: str, value) -> None:
    now = time.time()
    status = status_record.record(job.id, call_id, 0, 0, "ok", now, now, 20.0, None, "h", 1, "3.12", None)
    job.store.put(keys.result_key(job.id, call_id),
                  result_format.seal_result(job._secret, job.id, call_id, status, cloudpickle.dumps(("ok", value))))


def test_results_of_an_attached_job_show_progress_as_get_does(home, monkeypatch, capsys):
    """Job.results() passed progress=False to wrenpack.get: waiting on a spawned job (hours,
    perhaps) showed nothing, whatever the `progress` setting said."""
    job = _plant(_store(), JOB, user_key(), calls=2)
    _store_result(job, "00000", 10)
    _store_result(job, "00001", 11)
    _finish(job)
    monkeypatch.setenv("WRENPACK_PROGRESS", "log")
    assert attach(JOB).results(timeout=30) == [10, 11]
    assert "wrenpack: 2/2 calls done" in capsys.readouterr().err
    assert attach(JOB).results(timeout=30, progress=False) == [10, 11]
    assert capsys.readouterr().err == ""


def test_cancel_takes_json_as_the_other_actions_do(home):
    """`wrenpack jobs cancel ID --json` was a usage error, and `wrenpack jobs --json cancel ID`
    printed text."""
    job = _plant(_store(), JOB, user_key())
    _supervised(job)
    for args, already in ((("jobs", "cancel", JOB, "--json"), False), (("jobs", "--json", "cancel", JOB), True)):
        out = _cli(*args)
        assert out.returncode == 0, out
        assert json.loads(out.stdout) == {"id": JOB, "cancelled": True, "already": already, "stops_running": True}
    assert job.cancelled()


def _mark_start(job: Job, call_id: str) -> None:
    job.store.put(keys.start_key(job.id, call_id), start_mark.seal_start(job._secret, job.id, call_id, time.time(), 0))


def test_the_calls_of_a_running_job_are_running_or_queued_not_lost(home):
    """`wrenpack jobs show` (Job.statuses, the report) called every unfinished call of a job
    that was running normally "lost": any progress state, "running" too, counted as its end."""
    store = _store()
    job = _plant(store, JOB, user_key(), calls=3)
    _supervised(job)
    _store_result(job, "00000", 1)
    _mark_start(job, "00001")
    assert [s["state"] for s in job.statuses()] == ["done", "running", "queued"]
    out = _cli("jobs", "show", JOB, "--json")
    assert [c["state"] for c in json.loads(out.stdout)["calls_status"]] == ["done", "running", "queued"]
    assert [c["state"] for c in job.report().to_json()["calls"]][1:] == ["running", "queued"]
    _finish(job)  # (ended without results for two calls)
    assert [s["state"] for s in job.statuses()] == ["done", "lost", "lost"]
    cancelled = _plant(store, "20260101-000000-0000beef", user_key(), calls=2)
    _supervised(cancelled)
    _mark_start(cancelled, "00000")
    assert cancelled.cancel()
    assert [s["state"] for s in cancelled.statuses()] == ["cancelled", "cancelled"]
    kept = _plant_with(store, "20260101-000000-0000cafe", cancellable=False)
    _supervised(kept)
    _mark_start(kept, "00000")
    assert kept.cancel()
    assert [s["state"] for s in kept.statuses()] == ["running", "cancelled"]  # (runs to its end)


def test_clean_says_there_is_no_owner_key_rather_than_calling_a_job_forged(home, monkeypatch, tmp_path):
    """Run where there is no owner key (another machine, a new cache directory), `clean --stale`
    kept each spawned job as 'not sealed with your owner key (another user's, or forged)'."""
    _plant(_store(), JOB, user_key())
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "elsewhere"))
    out = _cli("clean", "--stale", "--json")
    assert out.returncode == 0, out.stderr
    why = json.loads(out.stdout)["skipped_why"][JOB]
    assert "there is no owner key" in why and "forged" not in why, why
    assert not (tmp_path / "elsewhere" / "owner.key").exists()  # (no key was made by looking)


def test_the_job_list_prints_no_control_characters_from_the_store(home):
    """A job's id is a folder name anyone who can write to the store picks: `wrenpack jobs`
    printed it raw, so an escape sequence in it reached the terminal and a newline forged a row."""
    store = _store()
    _plant(store, JOB, user_key())
    for name in ("evil\x1b]0;owned\x07", f"x\n{JOB}  f  done"):
        store.put(f"jobs/{name}/func.pkl", b"x")
    out = _cli("jobs")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert len(out.stdout.splitlines()) == 4 and "\\x1b]0;owned\\x07" in out.stdout, out.stdout
    out = _cli("clean", "--stale")  # (it names the jobs it keeps)
    assert out.returncode == 0 and "\x1b" not in out.stdout and "\\x1b" in out.stdout, out


def test_a_retention_beyond_any_date_is_refused_and_one_in_the_store_breaks_nothing(home):
    """retention=1e300 was accepted; then `wrenpack jobs show` and `wrenpack clean --stale`
    (for every job in the store) failed with OverflowError: timestamp out of range."""
    from wrenpack.job.client import check_retention

    for huge in (1e300, "1000000000d", 101 * 365 * 86400):
        with pytest.raises(ConfigError, match="longer than 100 years") as err:
            check_retention(huge)
        assert "\n" not in str(err.value)
    assert check_retention("36500d") == 36500 * 86400
    with pytest.raises(ConfigError, match="job_retention"):
        check_retention(None, 1e300)
    # a record that holds one (written before this check) is shown and kept
    job = _plant(_store(), JOB, user_key(), retention_s=1e300)
    _finish(job)
    out = _cli("jobs", "show", JOB)
    assert out.returncode == 0 and "kept until -" in out.stdout, out
    out = _cli("clean", "--stale", "--json")
    assert out.returncode == 0 and JOB in json.loads(out.stdout)["skipped"], out


def test_a_job_removed_while_held_says_so_instead_of_waiting(home):
    """A Job held across `wrenpack clean ID` (a notebook's, say): its futures waited, the job
    "starting" for 5 minutes, then failed as if its supervisor had died."""
    store = _store()
    job = _plant(store, JOB, user_key(), calls=2)
    _supervised(job)
    store.delete_prefix(keys.job_prefix(JOB))
    assert job.status()["state"] == "removed"
    start = time.monotonic()
    outcomes = job.results(timeout=20, return_exceptions=True)
    assert time.monotonic() - start < 10
    assert all(isinstance(o, JobNotFound) and "was removed from the store" in str(o) for o in outcomes), outcomes


@pytest.mark.parametrize("billed,said", [(False, "estimated: what they would cost on Lambda"), (True, "(billed;")])
def test_jobs_show_says_what_its_cost_holds(home, billed, said):
    """`jobs show` printed "cost $0.000011" where the job's report said "$0.000048 (estimated)":
    the line holds Lambda's price of the invocations only, and on a local backend an estimate."""
    store = _store()
    job = _plant_with(store, JOB, billed=billed)
    _supervised(job)
    out = _cli("jobs", "show", JOB)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("cost"))
    assert said in line and "S3 requests not counted" in line and "--plot" in line, line


def test_jobs_help_shows_the_action_as_optional():
    """`wrenpack jobs` alone lists the jobs: its usage said `ACTION ...` as if one were required."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "wrenpack", "jobs", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "[ACTION]" in out.stdout.split("\n\n")[0], out.stdout


def test_show_gives_a_checkpointed_calls_whole_run_as_its_report_does(home):
    """A call checkpointed across three segments was shown as its last segment alone,
    `done 0.105 s, attempts 1`, while `--plot FILE.json` said segments 3 and run_s 3.55."""
    from wrenpack.wire import segment as segment_format

    store = _store()
    job = _plant(store, JOB, user_key(), calls=1)
    t0 = time.time() - 10
    for segment, (start, end, peak) in enumerate([(t0, t0 + 2.0, 30.0), (t0 + 2.1, t0 + 3.55, 25.0)]):
        status = status_record.record(job.id, "00000", 0, segment, "checkpointed", start, end, peak, None, "h", 1, "3.12", None)
        store.put(keys.segment_key(job.id, "00000", segment),
                  segment_format.seal_segment(job._secret, job.id, "00000", segment, status))
    last = status_record.record(job.id, "00000", 0, 2, "ok", t0 + 3.6, t0 + 3.7, 20.0, None, "h", 1, "3.12", None)
    store.put(keys.result_key(job.id, "00000"),
              result_format.seal_result(job._secret, job.id, "00000", last, cloudpickle.dumps(("ok", 70))))
    _finish(job)
    call = job.report().to_json()["calls"][0]
    assert call["segments"] == 3 and round(call["run_s"], 3) == 3.55
    line = next(x for x in _cli("jobs", "show", JOB).stdout.splitlines() if x.strip().startswith("00000"))
    assert line.split() == ["00000", "done", "3.550", "s", "in", "3", "segments,", "peak", "30.0", "MB,", "attempts", "1"]
    shown = json.loads(_cli("jobs", "show", JOB, "--json").stdout)["calls_status"][0]
    assert (shown["segments"], round(shown["call_run_s"], 3), shown["peak_rss_mb"]) == (3, 3.55, call["peak_rss_mb"])
