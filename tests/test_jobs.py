"""Spawned jobs: ``f.spawn_map`` / ``f.spawn``, ``wrenpack.attach``, ``wrenpack jobs``
and what ``wrenpack clean`` does with them.

The default suite checks the records and their seals without processes, and one
small spawned job end to end; the acceptance runs (a driver SIGKILLed right after
``spawn_map``, on the local backend and on the emulated Lambda; cancel) are slow.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import wrenpack
from tests.processes import alive, interruptible
from wrenpack import keys
from wrenpack.errors import ConfigError, ConfigTypeError, CorruptObject
from wrenpack.executor import Executor
from wrenpack.executor.owner import owner_record, user_key
from wrenpack.job import Job, NotSpawned, attach
from wrenpack.job.client import check_retention, open_job, removal_state
from wrenpack.wire import job_record

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (so subprocesses share them)."""
    store = tmp_path / "store"
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(store))
    return tmp_path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``wrenpack ARGS``: in another process with ``env``, else in this one (quicker)."""
    if env is not None:
        return subprocess.run([sys.executable, "-m", "wrenpack", *args], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env=env)
    from wrenpack.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            rc = int(exc.code or 0)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _record(job_id: str, created: float | None = None, retention_s: float = 3600.0, calls: int = 2) -> dict:
    return {"job_id": job_id, "function": "f", "calls": calls, "created": time.time() if created is None else created,
            "owner": {"user": "me", "host": "h"}, "backend": "local", "spawned": True, "retention_s": retention_s,
            "settings": {"memory": 128, "timeout": 3.0, "ephemeral_storage": 512, "retries": 0, "architecture": "x86_64"}}


def _plant(store, job_id: str, key: bytes, **record) -> Job:
    """A spawned job's record as spawn_map writes it (no supervisor)."""
    store.put(keys.job_record_key(job_id), job_record.seal_job(key, job_id, _record(job_id, **record)))
    return open_job(store, job_id)


def _finish(job: Job, state: str = "done") -> None:
    progress = {"state": state, "done": job.calls, "failed": 0, "running": 0, "queued": 0, "cancelled": 0,
                "invocations": job.calls, "billed_ms": 10, "updated": time.time(), "ended": time.time()}
    job.store.put(keys.progress_key(job.id), job_record.seal_progress(job._secret, job.id, progress))


def _store():
    from wrenpack.config import current
    from wrenpack.storage import store_for_config

    return store_for_config(current())


# -- records, seals and retention (no processes) ----------------------------------------------
def test_a_forged_job_record_is_refused_and_listed_as_untrusted(home):
    store = _store()
    stranger = os.urandom(32)  # someone with store access but not this user's key
    store.put(keys.job_record_key("20260101-000000-0000beef"),
              job_record.seal_job(stranger, "20260101-000000-0000beef", _record("20260101-000000-0000beef")))
    mine = _plant(store, "20260101-000000-0000cafe", user_key())
    # a genuine record with one field changed
    data = json.loads(store.get(keys.job_record_key(mine.id)))
    data["calls"] = 1000
    store.put(keys.job_record_key(mine.id), json.dumps(data).encode())
    for job_id in ("20260101-000000-0000beef", mine.id):
        with pytest.raises(CorruptObject, match="not sealed with your owner key") as err:
            attach(job_id)
        assert "\n" not in str(err.value)
    listed = _cli("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)["jobs"]}
    assert {r["state"] for r in rows.values()} == {"untrusted"}
    # ... and clean --stale keeps what it cannot trust
    cleaned = _cli("clean", "--stale", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["jobs"] == 0 and store.exists(keys.job_record_key(mine.id))


def test_a_cancel_marker_without_the_jobs_secret_cancels_nothing(home):
    store = _store()
    job = _plant(store, "20260101-000000-00000001", user_key())
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: this process
    store.put(keys.cancel_key(job.id), job_record.seal_cancel(os.urandom(32), job.id, {"at": 1.0}))
    assert not job.cancelled()
    assert job.cancel() and job.cancelled()


def test_clean_keeps_live_and_retained_spawned_jobs_and_removes_expired_ones(home):
    store = _store()
    key = user_key()
    live = _plant(store, "20260101-000000-0000aaaa", key)
    # its supervisor: a live process of this user (this one), as a sealed owner record says
    store.put(keys.owner_key(live.id), json.dumps(owner_record("f", live.id)).encode())
    retained = _plant(store, "20260101-000000-0000bbbb", key)
    _finish(retained)
    expired = _plant(store, "20260101-000000-0000cccc", key, created=time.time() - 7200, retention_s=3600)
    _finish(expired)
    # a live supervisor keeps its job even after the retention
    old_live = _plant(store, "20260101-000000-0000dddd", key, created=time.time() - 7200, retention_s=3600)
    store.put(keys.owner_key(old_live.id), json.dumps(owner_record("f", old_live.id)).encode())
    assert removal_state(store, live.id, key)[0] == "live"
    assert removal_state(store, retained.id, key)[0] == "retained"
    assert removal_state(store, expired.id, key)[0] == "expired"
    assert removal_state(store, old_live.id, key)[0] == "live"
    # (a record without an owner record, whose supervisor never started: tests/test_jobs_orphans.py)

    out = _cli("clean", "--stale", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["jobs"] == 1 and not store.list(keys.job_prefix(expired.id))
    assert retained.id in report["skipped"]
    # a running one is skipped too, saying why (before, --json left it out)
    assert live.id in report["skipped"] and "still runs" in report["skipped_why"][live.id]
    for refused in (("clean", "--all"), ("clean", "--all", "--force"), ("clean", live.id, "--force")):
        out = _cli(*refused)
        assert out.returncode == 1 and "still running" in out.stderr, out
        assert store.exists(keys.job_record_key(live.id)) and store.exists(keys.job_record_key(old_live.id))
    out = _cli("clean", retained.id)  # named: removed though retained
    assert out.returncode == 0 and not store.list(keys.job_prefix(retained.id))


def test_a_done_job_can_be_cleaned_while_its_supervisor_stops_its_workers(home):
    """Its final record written, its supervisor still stopping its workers (a second or two): `clean ID`
    refused ("still running; cancel them first") while `jobs cancel` said it had already ended."""
    store = _store()
    key = user_key()
    job = _plant(store, "20260101-000000-0000d0e0", key)
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: this process
    assert removal_state(store, job.id, key)[0] == "live"
    _finish(job)
    assert removal_state(store, job.id, key)[0] == "retained"
    cancel = _cli("jobs", "cancel", job.id)
    assert cancel.returncode == 1 and "already ended" in cancel.stderr, cancel
    out = _cli("clean", job.id)
    assert out.returncode == 0, out.stderr
    assert not store.list(keys.job_prefix(job.id))


def test_retention_and_spawn_arguments_are_checked_before_anything_runs(home):
    assert check_retention(None) == 7 * 24 * 3600
    assert check_retention("12h") == 12 * 3600 and check_retention(30) == 30.0
    for bad in (0, -1, "soon", float("nan"), True):
        with pytest.raises(ConfigError, match="retention="):
            check_retention(bad)
    f = wrenpack.remote(_square, executor=Executor(backend="local"))
    with pytest.raises(ConfigError, match="no items"):
        f.spawn_map([])
    with pytest.raises(ConfigError, match="'auto' is not supported"):
        f.options(memory="auto").spawn_map([1])
    with pytest.raises(ConfigError, match="retention="):
        f.spawn_map([1], retention="forever")
    with pytest.raises(ConfigError, match="chunksize="):
        f.spawn_map([1], chunksize=10)
    assert not _store().list(keys.JOBS)  # nothing was written
    # the setting: the default when spawn_map is not given one, checked where it is read
    assert Executor(backend="local", job_retention="2d").config.job_retention == 2 * 86400
    with pytest.raises(ConfigError, match="job_retention"):
        Executor(backend="local", job_retention="soon")


def test_attach_on_a_plain_maps_job_says_to_use_spawn_map(home):
    with Executor(backend="local", keep_objects=True, concurrency=1) as ex:
        futs = wrenpack.remote(_square, executor=ex).map([1, 2])
        assert wrenpack.get(futs) == [1, 4]
    with pytest.raises(NotSpawned, match=r"spawn_map") as err:
        attach(futs[0].job_id)
    assert "\n" not in str(err.value)
    out = _cli("jobs", "show", futs[0].job_id)
    assert out.returncode == 1 and "spawn_map" in out.stderr and out.stderr.count("\n") == 1
    assert _cli("jobs", "show", "no-such-job").returncode == 1
    assert _cli("jobs", "cancel", "no-such-job").returncode == 1
    assert _cli("jobs", "show").returncode == 2 and _cli("jobs", "--bogus").returncode == 2
    for args in (("jobs", "--help"), ("jobs", "show", "--help"), ("jobs", "cancel", "--help")):
        out = _cli(*args)
        assert out.returncode == 0 and out.stdout.startswith("usage: wrenpack jobs"), args


def test_attach_to_a_running_local_map_or_a_missing_store_says_why_in_one_line(home, tmp_path):
    """A local .map() keeps nothing in the store while it runs: attach() said only "no job
    ... `wrenpack jobs` lists the jobs there", not that only spawned jobs can be attached
    to. And attach(id, storage=<a folder that does not exist>) made that folder."""
    from wrenpack.job import JobNotFound

    with Executor(backend="local", concurrency=1) as ex:
        fut = ex.submit(time.sleep, 3)
        with pytest.raises(JobNotFound, match="spawn_map") as err:
            attach(fut.job_id)
        assert "\n" not in str(err.value)
        fut.cancel() or wrenpack.cancel(fut)
    missing = tmp_path / "no" / "such" / "store"
    with pytest.raises(JobNotFound, match="there is no store at"):
        attach("20260101-000000-0000abcd", storage=str(missing))
    assert not (tmp_path / "no").exists()


# -- one small spawned job, end to end --------------------------------------------------------
def _square(x):
    return x * x


def _fails(x):
    print(f"hello {x}")
    if x == 2:
        raise ValueError(f"bad {x}")
    return x


def test_a_spawned_job_runs_detached_and_its_results_come_from_the_store(home):
    ex = Executor(backend="local", concurrency=1, timeout=10)
    job = wrenpack.remote(_fails, executor=ex).spawn_map([1, 2, 3])
    assert isinstance(job, wrenpack.Job) and job.calls == 3 and job.function.endswith("_fails")
    # a timeout that is no number: one line, as job.results(timeout="x") (it was a TypeError from cf.wait)
    for bad in ("x", True):
        with pytest.raises(ConfigTypeError, match=r"job.wait\(timeout=.*must be a number of seconds"):
            job.wait(bad)
    futs = job.futures()
    done, pending = cf.wait(futs, timeout=60)
    assert not pending
    assert futs[0].result() == 1 and futs[2].result() == 3
    with pytest.raises(ValueError, match="bad 2"):
        futs[1].result()
    assert futs[0].status["exit"] == "ok" and "hello 1" in futs[0].logs  # what the call printed
    # another Job for the same id (as another process gets it) sees the same
    again = attach(job.id)
    assert again.results(timeout=30, return_exceptions=True)[0::2] == [1, 3]
    assert [s["state"] for s in again.statuses()] == ["done", "failed", "done"]
    assert all(s["start"] <= s["end"] for s in again.statuses())
    alive_now, owner = again.supervisor()
    status = again.status()
    assert (status["done"], status["failed"], status["state"]) == (2, 1, "failed") and status["cost"] > 0
    _gone([owner["pid"]])
    # its report: every call, its state and the cost, from the store; the CLI writes the same
    report = again.report().to_json()
    assert report["job"]["calls"] == 3 and report["job"]["states"]["failed"] == 1
    assert [c["state"] for c in report["calls"]] == ["finished", "failed", "finished"]
    assert report["cost"]["estimated"] is True and report["cost"]["invocations"] == 3
    shown = _cli("jobs", "show", job.id, "--plot", str(home / "job.json"))
    assert shown.returncode == 0, shown.stderr
    assert json.loads((home / "job.json").read_text())["calls"] == report["calls"]
    assert not ex._jobs  # the driver's executor ran nothing itself
    assert f"{job.id}" in _cli("jobs").stdout
    single = wrenpack.remote(_square, executor=ex).spawn(7)
    assert single.results(timeout=60) == [49]


def _nap(seconds):
    time.sleep(seconds)
    return seconds


def test_cancelling_an_uncancellable_spawned_job_lets_its_running_call_finish(home):
    """``cancellable=False``: the job's cancel takes back its queued calls, and the running
    one runs to its end and keeps its result (on Lambda its invocation never looks for the
    job's cancel marker)."""
    ex = Executor(backend="local", concurrency=1, timeout=30)
    job = wrenpack.remote(_nap, executor=ex, cancellable=False).spawn_map([2.0, 0.0])
    futs = job.futures()
    deadline = time.monotonic() + 30
    while (job.status() or {}).get("running", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.cancel()
    cf.wait(futs, timeout=60)
    assert futs[0].result() == 2.0
    with pytest.raises(cf.CancelledError):
        futs[1].result()
    assert job.status()["state"] == "cancelled"


def test_cancelling_a_spawned_job_stops_its_running_call_as_wrenpack_cancel_does(home):
    """``job.cancel()`` (and `wrenpack jobs cancel`) of a job with a running call: the call ended
    "failed" with "the local backend shut down before the call finished" (its supervisor stopped
    its executor as at the interpreter's exit; on Lambda: WorkerLost), not CancelledError as the
    README says; the queued call raised CancelledError but said cancelled() False; and the running
    call's run was not billed (billed_ms 0), though Lambda bills a cancelled call's run."""
    ex = Executor(backend="local", concurrency=1, timeout=30)
    job = wrenpack.remote(_nap, executor=ex).spawn_map([30.0, 0.0])
    futs = job.futures()
    deadline = time.monotonic() + 30
    while (job.status() or {}).get("running", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # (it runs a second at least: that is billed)
    assert job.cancel()
    assert job.wait(20)
    with pytest.raises(wrenpack.CallCancelled):
        futs[0].result()
    with pytest.raises(cf.CancelledError):
        futs[1].result()
    assert futs[1].cancelled()  # (never ran: cancelled, as a queued call wrenpack.cancel takes back)
    status = job.status()
    assert (status["state"], status["failed"], status["cancelled"], status["invocations"]) == ("cancelled", 0, 2, 1)
    assert 1000 <= status["billed_ms"] < 30000, status
    assert [s["state"] for s in job.statuses()] == ["cancelled", "cancelled"]
    assert job.report().to_json()["cost"]["billed_ms"] == status["billed_ms"]


class BrokenBackend:
    """A backend that cannot start (registered at run time, as a plug-in is)."""

    @classmethod
    def from_config(cls, config):
        raise ConfigError("this backend is broken on purpose; pick another")


def test_a_spawned_job_that_cannot_launch_fails_every_call_with_the_reason(home):
    from wrenpack.backends import register_backend

    register_backend("brokenjobs", BrokenBackend)
    job = wrenpack.remote(_square, executor=Executor(backend="brokenjobs")).spawn_map([1, 2])
    outcomes = job.results(timeout=60, return_exceptions=True)
    assert [type(e) for e in outcomes] == [ConfigError, ConfigError] and "broken on purpose" in str(outcomes[0])
    assert job.status()["state"] == "failed"


# -- acceptance: the driver dies at once, the job goes on ---------------------------------------
def _children_of(pids: set[int]) -> set[int]:
    """Every live descendant of ``pids`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _gone(pids, within: float = 20.0) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "a process of the job outlived it"


#: a driver that spawns a map of {calls} calls, prints the job's id and waits to be killed
DRIVER = """
import time, wrenpack

def slow_square(x):
    time.sleep(0.05)
    return x * x

job = wrenpack.remote(slow_square).spawn_map(range({calls}))
print(job.id, flush=True)
time.sleep(600)
"""


def _env_of(settings: dict) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.items():
        env[f"WRENPACK_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow
@pytest.mark.backends("local", "lambda")
def test_a_sigkilled_drivers_spawned_map_finishes_and_another_process_attaches(backend, backend_settings, home,
                                                                                monkeypatch):
    settings, env = _settings_in_env(backend, backend_settings, home, monkeypatch,
                                     concurrency=2 if backend == "local" else 8)
    script = home / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(calls=40)))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=home)
    job_id = driver.stdout.readline().strip()
    driver.send_signal(signal.SIGKILL)  # at once: the job must go on without it
    driver.wait(10)
    assert job_id, "the driver printed no job id"

    listed = _cli("jobs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout)["jobs"] if r["id"] == job_id)
    assert row["spawned"] and row["calls"] == 40 and row["function"] == "slow_square"
    assert row["state"] in ("starting", "running", "done")

    job = wrenpack.attach(job_id, storage=settings["storage"])
    alive_now, owner = job.supervisor()
    seen = {owner["pid"]} if owner else set()
    futs = job.futures()
    while not all(f.done() for f in futs):  # the supervisor's processes while the job runs
        seen |= _children_of({owner["pid"]}) if owner else set()
        cf.wait(futs, timeout=0.1)
    assert [f.result() for f in futs] == [x * x for x in range(40)]
    _gone(seen)  # the supervisor ends once it has seen the last call end (after this process may have)
    status = job.status()
    assert status["state"] == "done" and status["done"] == 40 and status["invocations"] == 40
    if backend == "local":
        assert len(seen) > 1  # the supervisor and its workers were seen, and are gone


CANCEL_DRIVER = """
import time, wrenpack

def sleepy(x):
    time.sleep(1.0)
    return x

job = wrenpack.remote(sleepy).spawn_map(range(40))
print(job.id, flush=True)
"""


def _settings_in_env(backend, backend_settings, home, monkeypatch, **overrides) -> tuple[dict, dict[str, str]]:
    """Settings for ``backend`` (a local store under ``home``), in this process's environment and
    in the returned one (for the driver and CLI subprocesses)."""
    settings = backend_settings(**overrides)
    settings.pop("lambda_auto_deploy", None)  # (the emulator's default function serves these calls)
    if backend == "local":
        settings["storage"] = str(home / "store")
    for name, value in settings.items():
        monkeypatch.setenv(f"WRENPACK_{name.upper()}", str(value))
    return settings, _env_of(settings)


@pytest.mark.slow
@pytest.mark.backends("local", "lambda")
def test_cancel_stops_a_spawned_job_and_clean_never_removed_it_while_live(backend, backend_settings, home, monkeypatch):
    _settings, env = _settings_in_env(backend, backend_settings, home, monkeypatch, concurrency=2)
    script = home / "driver.py"
    script.write_text(textwrap.dedent(CANCEL_DRIVER))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=home, timeout=120)
    job_id = out.stdout.strip()
    assert out.returncode == 0 and job_id, out.stderr  # the driver exited normally; the job goes on
    job = wrenpack.attach(job_id)
    futs = job.futures()
    cf.wait(futs, timeout=60, return_when=cf.FIRST_COMPLETED)
    _alive, owner = job.supervisor()
    seen = {owner["pid"]} | _children_of({owner["pid"]})
    # clean never removes it while its supervisor runs
    for args in (("clean", "--stale"), ("clean", "--all"), ("clean", "--all", "--force"), ("clean", job_id, "--force")):
        _cli(*args)  # (in this process, whose environment has the same settings: quick while the job runs)
        assert job.store.exists(keys.job_record_key(job_id)), args
    cancelled = _cli("jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    cf.wait(futs, timeout=30)
    outcomes = [("ok" if not f.cancelled() and f.exception() is None else "cancelled") for f in futs]
    assert "ok" in outcomes and outcomes[-1] == "cancelled"  # what ended before the cancel keeps its result
    for fut in futs:
        if outcomes[int(fut.call_id)] == "cancelled":
            with pytest.raises(cf.CancelledError):
                fut.result()
    # the calls it stopped while they ran end CallCancelled (not "the local backend shut down", nor
    # WorkerLost on Lambda), with their run billed; those it took back before they ran are cancelled()
    for fut in futs:
        if outcomes[int(fut.call_id)] == "cancelled" and not fut.cancelled():
            assert isinstance(fut.exception(), wrenpack.CallCancelled) and fut.status.get("duration_s", 0) > 0, fut.status
    assert sum(f.cancelled() for f in futs) >= len(futs) - 8, outcomes
    _gone(seen)
    status = job.status()
    assert status["state"] == "cancelled" and status["failed"] == 0, status
    assert status["done"] == outcomes.count("ok") and status["cancelled"] == outcomes.count("cancelled"), status
    assert status["billed_ms"] == job.report().to_json()["cost"]["billed_ms"] > 0, status
    assert _cli("jobs", "cancel", job_id, env=env).returncode == 1  # already ended


@pytest.mark.slow
def test_a_job_whose_supervisor_is_killed_fails_its_remaining_calls_as_lost(home):
    env = _env_of({"concurrency": 2, "timeout": 30})
    script = home / "driver.py"
    script.write_text(textwrap.dedent(CANCEL_DRIVER))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=home, timeout=120)
    job = wrenpack.attach(out.stdout.strip())
    futs = job.futures()
    _alive, owner = job.supervisor()
    seen = {owner["pid"]} | _children_of({owner["pid"]})
    os.kill(owner["pid"], signal.SIGKILL)
    _gone(seen)  # its workers end with it
    cf.wait(futs, timeout=30)
    assert all(f.done() for f in futs)
    with pytest.raises(wrenpack.WorkerLost, match="ended before this call finished"):
        futs[-1].result()
    assert job.status()["state"] == "lost"
    assert [s["state"] for s in job.statuses()][-1] == "lost"




@pytest.mark.slow
def test_a_terminals_ctrl_c_stops_the_driver_but_not_its_spawned_job(home):
    env = _env_of({"concurrency": 2, "timeout": 30})
    script = home / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(calls=20)))
    # the driver leads a process group, as a shell's foreground job does; ^C is SIGINT to that group
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=home, start_new_session=True, preexec_fn=interruptible)
    job_id = driver.stdout.readline().strip()
    os.killpg(driver.pid, signal.SIGINT)
    assert driver.wait(30) != 0 and "KeyboardInterrupt" in driver.stderr.read()
    job = wrenpack.attach(job_id)
    assert job.results(timeout=60) == [x * x for x in range(20)]


LAMBDA_LOST_DRIVER = """
import time, wrenpack

def sleepy(x):
    time.sleep(2.0)
    return x

job = wrenpack.remote(sleepy).spawn_map(range(6))
print(job.id, flush=True)
"""


@pytest.mark.slow
@pytest.mark.backends("lambda")
def test_on_lambda_calls_sent_before_the_supervisor_died_still_resolve(backend, backend_settings, home, monkeypatch):
    _settings, env = _settings_in_env(backend, backend_settings, home, monkeypatch, concurrency=2)
    script = home / "driver.py"
    script.write_text(textwrap.dedent(LAMBDA_LOST_DRIVER))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=home, timeout=120)
    job = wrenpack.attach(out.stdout.strip())
    end = time.monotonic() + 30
    while len((job.progress() or {}).get("in_flight") or ()) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    progress = job.progress()
    assert progress["outlive"] and len(progress["in_flight"]) == 2 and progress["done"] == 0, progress
    _alive, owner = job.supervisor()
    os.kill(owner["pid"], signal.SIGKILL)
    _gone([owner["pid"]])
    futs = job.futures()
    cf.wait(futs, timeout=60)
    sent = set(progress["in_flight"])
    for fut in futs:
        if fut.call_id in sent:
            assert fut.result() == int(fut.call_id)  # ran on in Lambda and landed in the store
        else:
            with pytest.raises(wrenpack.WorkerLost):
                fut.result()
    assert job.status()["state"] == "lost"


def test_a_job_pickles_as_its_store_and_id_and_another_process_loads_it(home):
    """A Job handed to another process (a multiprocessing pool, a script): before, pickling
    failed on its lock. Its secret stays out of the pickle; the loading process attaches
    with the user's owner key, and refuses as attach does without it."""
    import pickle

    store = _store()
    key = user_key(create=True)
    job = _plant(store, "j-pickled01", key)
    _finish(job)
    blob = pickle.dumps(job)
    assert job._secret not in blob and key not in blob
    same = pickle.loads(blob)
    assert (same.id, same.calls, same.progress()["state"]) == (job.id, 2, "done")
    code = "import pickle, sys; j = pickle.loads(sys.stdin.buffer.read()); print(j.id, j.calls, j.progress()['state'])"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60, cwd=ROOT)
    assert out.stdout.decode().split() == [job.id, "2", "done"], out.stderr.decode()[-2000:]
    # Another user (no owner key here): the loading fails as attach() does, naming the key.
    env = dict(os.environ, WRENPACK_CACHE_DIR=str(home / "elsewhere"))
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60, cwd=ROOT, env=env)
    assert out.returncode != 0 and "owner key" in out.stderr.decode(), out.stderr.decode()[-2000:]


@pytest.mark.parametrize("how", ["wait", "results", "futures"])
def test_status_right_after_wait_or_results_says_how_the_job_ended(home, monkeypatch, how):
    """Every call's result is read from the store a moment before the supervisor, which looks
    for results in rounds (on Lambda), writes the job's final record: status() right after
    wait() returned True said "running, 0 done" (2 of 4 runs on the emulated Lambda). status()
    now gives the supervisor that moment once the job's futures have all ended."""
    import threading

    store = _store()
    key = user_key(create=True)
    job = _plant(store, "20260101-000000-00005e77", key)
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: this process
    running = {"state": "running", "done": 0, "failed": 0, "running": 2, "queued": 0, "cancelled": 0,
               "invocations": 0, "billed_ms": 0, "updated": time.time()}
    store.put(keys.progress_key(job.id), job_record.seal_progress(job._secret, job.id, running))
    futs = []
    for i in range(job.calls):
        fut: cf.Future = cf.Future()
        fut.set_result(i)
        futs.append(fut)
    job._futures = futs  # (the job's own futures, both results read already)
    monkeypatch.setattr(job, "futures", lambda: futs)
    late = threading.Timer(0.4, _finish, args=(job,))  # the supervisor's final record, its next round
    late.start()
    try:
        if how == "futures":  # (concurrent.futures.wait on them: seen once in CI after a cancel, "cancelling")
            assert not cf.wait(job.futures(), timeout=30).not_done
        else:
            assert (job.wait(timeout=30) is True) if how == "wait" else job.results(timeout=30) == [0, 1]
        assert job.status()["state"] == "done" and job.status()["done"] == 2
    finally:
        late.join()
