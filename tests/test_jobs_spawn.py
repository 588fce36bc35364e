"""``spawn_map`` cut short: a driver interrupted (^C) or killed while it hands a job to
its supervisor. It never returned the job, so nobody has its id: nothing of the job may
run on, or stay in the store.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

import wrenpack
from tests.processes import alive
from tests.test_jobs import ROOT, _store
from wrenpack import keys
from wrenpack.errors import ConfigError
from wrenpack.executor import Executor
from wrenpack.job import attach, spawn


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (as in test_jobs)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path


def _square(x):
    return x * x


def _wait_gone(pid: int, within: float = 30.0) -> None:
    end = time.monotonic() + within
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not alive(pid), f"the supervisor (pid {pid}) outlived a spawn_map that never returned"


def test_a_spawn_map_interrupted_before_its_supervisor_answered_leaves_nothing(home, monkeypatch):
    """^C while spawn_map waited for the supervisor's "ok": the job's objects were removed,
    and then the supervisor, left running, wrote its owner record (an "orphaned" job)."""
    started: list[subprocess.Popen] = []

    class Popen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spawn, "subprocess", types.SimpleNamespace(Popen=Popen, PIPE=subprocess.PIPE,
                                                                   TimeoutExpired=subprocess.TimeoutExpired))
    monkeypatch.setattr(spawn, "select", types.SimpleNamespace(select=interrupted))
    with pytest.raises(KeyboardInterrupt):
        wrenpack.remote(_square, executor=Executor(backend="local")).spawn_map([1, 2])
    (proc,) = started
    _wait_gone(proc.pid)
    assert _store().list(keys.JOBS) == []
    assert os.listdir(home / "cache" / "jobs") == []  # (its log: nobody was told of the job)


DYING_DRIVER = """
import os, signal, subprocess, types, wrenpack
from wrenpack.job import spawn

class Popen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print(self.pid, flush=True)

def killed(*_args, **_kwargs):  # the spec is written; the supervisor's answer is never read
    os.kill(os.getpid(), signal.SIGKILL)

spawn.subprocess = types.SimpleNamespace(Popen=Popen, PIPE=subprocess.PIPE)
spawn.select = types.SimpleNamespace(select=killed)

def square(x):
    return x * x

wrenpack.remote(square).spawn_map(range(3))
"""


@pytest.mark.parametrize("kind, why", [("mode", r"others can read or write it \(mode 644"),
                                       ("link", "it is a symbolic link"), ("short", "it is 1 bytes long, not 32"),
                                       ("folder", "it is not a regular file")])
def test_an_owner_key_that_is_not_trusted_is_named_with_its_reason(home, monkeypatch, kind, why):
    """spawn_map said "there is no usable owner key ...; make its directory writable" of a
    writable directory: the reason (mode, link, size) was only in a log line before it."""
    from wrenpack.executor import owner

    monkeypatch.setattr(owner, "_key", None)
    path = owner.key_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if kind == "link":
        (home / "elsewhere.key").write_bytes(os.urandom(32))
        os.chmod(home / "elsewhere.key", 0o600)
        os.symlink(home / "elsewhere.key", path)
    elif kind == "folder":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(32) if kind == "mode" else b"x")
        os.chmod(path, 0o644 if kind == "mode" else 0o600)
    with pytest.raises(wrenpack.WrenpackError, match=f"the owner key {path} that would seal the job is not used, as "
                                                     f"{why}.*; remove it so a new one is made") as info:
        wrenpack.remote(_square, executor=Executor(backend="local")).spawn_map([1])
    assert "\n" not in str(info.value) and "make its directory writable" not in str(info.value)


def test_a_driver_killed_inside_spawn_map_leaves_no_job_behind(home):
    """SIGKILL between handing the job over and reading the supervisor's "ok": the job's
    record and owner record stayed, listed as a lost job for its whole retention (7 days)."""
    _killed_driver_leaves_nothing(home, DYING_DRIVER)


def _killed_driver_leaves_nothing(home, source: str) -> None:
    """Run the driver ``source`` (it prints its supervisor's pid, then is SIGKILLed inside
    spawn_map): no job in the store, no job log, once that supervisor is gone."""
    script = home / "driver.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=home, timeout=120)
    assert out.returncode == -9, out.stderr
    _wait_gone(int(out.stdout.split()[0]))
    assert _store().list(keys.JOBS) == []
    assert os.listdir(home / "cache" / "jobs") == []


def _nap(seconds):
    time.sleep(seconds)
    return seconds


def _plus_one(fut):
    return fut.result() + 1


def test_futures_of_calls_that_end_with_the_program_are_refused_as_arguments(home):
    """A future of a running ``.map()`` call, passed to ``spawn_map``, was a reference to a
    call that the driver's exit stops (and whose objects it removes): the spawned calls
    waited on it until their timeout and failed with TaskTimeout."""
    ex = Executor(backend="local", concurrency=1)
    try:
        running = wrenpack.remote(_nap, executor=ex).map([30.0])
        with pytest.raises(ConfigError, match=r"has not finished .*wrenpack\.get") as err:
            wrenpack.remote(_plus_one, executor=ex).spawn_map(running)
        assert "\n" not in str(err.value)
        assert not [k for k in _store().list(keys.JOBS) if k.endswith("/job.json")]  # nothing was spawned
    finally:
        ex.stop()  # (its running call: not waited for)
    # a done one travels with its result
    with Executor(backend="local", concurrency=1) as ex:
        done = wrenpack.remote(_nap, executor=ex).map([0.0])
        wrenpack.get(done)
        assert wrenpack.remote(_plus_one, executor=ex).spawn_map(done).results(timeout=60) == [1.0]


def test_futures_of_a_spawned_job_are_arguments_another_spawned_job_reads(home):
    ex = Executor(backend="local", concurrency=2)
    first = wrenpack.remote(_nap, executor=ex).spawn_map([1.0])
    # (its supervisor names the job on its command line: `ps`, `pgrep -f ID` find it)
    _alive, owner = first.supervisor()
    with open(f"/proc/{owner['pid']}/cmdline", "rb") as f:
        assert first.id in f.read().decode().split("\0")
    second = wrenpack.remote(_plus_one, executor=ex).spawn_map(first.futures())
    assert second.results(timeout=60) == [2.0]
    # (its log said "256 at a time at most", the calls handed ahead to its 2 workers)
    with open(first.log_path) as f:
        assert "(2 at a time at most)" in f.read()


def _two(x, y=0):
    return x + y


def test_calls_the_function_cannot_take_are_refused_before_anything_is_spawned(home):
    """f.spawn(1, retention="3d") spawned a job whose call failed later, detached, with
    TypeError (spawn passes every keyword to the function), as did a missing argument."""
    f = wrenpack.remote(_two, executor=Executor(backend="local"))
    for spawn_it, expected in ((lambda: f.spawn(1, retention="3d"), "for a retention use f.spawn_map"),
                               (lambda: f.spawn(), "missing a required argument: 'x'"),
                               (lambda: f.spawn_map([1, 2], z=3), "call 0 does not fit")):
        with pytest.raises(ConfigError, match=expected) as err:
            spawn_it()
        assert "\n" not in str(err.value)
    assert _store().list(keys.JOBS) == []


def _quiet(fn):
    @functools.wraps(fn)
    def wrapper(*args, verbose=False, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@_quiet
def _wrapped(x):
    return x


def test_a_wrapper_is_checked_by_its_own_signature_not_its_functions(home):
    """functools.wraps makes inspect.signature show the wrapped function's: a keyword only the
    wrapper takes would have been refused."""
    job = wrenpack.remote(_wrapped, executor=Executor(backend="local")).spawn(3, verbose=True)
    assert job.results(timeout=60) == [3]


def test_the_final_progress_record_is_tried_again_after_a_store_error(tmp_path, monkeypatch):
    """A store error on the supervisor's last progress write left the job "lost" to every
    attached process, although every call's result was stored: it was tried once."""
    import threading

    from wrenpack.job import supervisor as sup_module
    from wrenpack.storage.local import LocalStore
    from wrenpack.wire import job_record

    class Flaky(LocalStore):
        fails = 2

        def put(self, key, data, if_absent=False):
            if key.endswith("progress.json") and Flaky.fails:
                Flaky.fails -= 1
                raise OSError("the store hiccupped")
            return super().put(key, data, if_absent=if_absent)

    sup = object.__new__(sup_module.Supervisor)
    sup.job_id, sup.secret, sup.store = "20261206-050000-abcdef12", b"s" * 32, Flaky(str(tmp_path / "s"))
    sup.futures, sup.stopped, sup.cancelled = [], set(), False
    sup.billed_ms, sup.invocations, sup.outlive = 0, 0, False
    sup._lock, sup._written = threading.Lock(), None
    monkeypatch.setattr(sup_module.Supervisor, "FINAL_RETRIES_S", (0.0, 0.0, 0.0))
    assert sup._write_final("done") is True and Flaky.fails == 0
    from wrenpack import keys
    record = job_record.open_progress(sup.secret, sup.job_id, sup.store.get(keys.progress_key(sup.job_id)))
    assert record["state"] == "done"


def _noisy(x):
    print("stdout of call", x)
    print("stderr of call", x, file=sys.stderr)
    return x


def test_the_job_log_holds_what_the_calls_print_on_stdout_and_stderr(home):
    """The supervisor pointed its fd 1 at /dev/null: the calls' stderr lines reached the job's
    log, their print() lines went nowhere (only fut.logs' 64 KB tail kept them)."""
    job = wrenpack.remote(_noisy, executor=Executor(backend="local", concurrency=2)).spawn_map([0, 1])
    _alive, owner = job.supervisor()
    assert job.results(timeout=60) == [0, 1]
    _wait_gone(owner["pid"])  # (its relay writes a call's lines before it ends)
    with open(job.log_path) as f:
        text = f.read()
    for x in (0, 1):
        assert f"stdout of call {x}\n" in text and f"stderr of call {x}\n" in text, text


def _started(job, n: int = 1, within: float = 60.0) -> None:
    end = time.monotonic() + within
    while job.status()["running"] < n and time.monotonic() < end:
        time.sleep(0.05)
    assert job.status()["running"] >= n, job.status()


#: the reason a supervisor that got SIGTERM gives (``supervisor.SIGTERM_REASON``)
SIGTERM_REASON = "the supervisor got SIGTERM"


def test_sigterm_to_a_supervisor_cancels_its_job_and_says_why(home):
    """`kill PID` (systemctl stop, docker stop) of a spawned job's supervisor ended it at once
    (SIGTERM's default action): the job was "lost", its calls failed with WorkerLost, and its log
    stopped at "running 3 call(s)" without a word on why. Now it stops its calls as a cancel
    does, records the end and the reason, and exits."""
    from tests.test_jobs import _cli
    job = wrenpack.remote(_nap, executor=Executor(backend="local", concurrency=1)).spawn_map([30.0, 30.0, 30.0])
    _alive, owner = job.supervisor()
    _started(job)
    t0 = time.monotonic()
    os.kill(owner["pid"], signal.SIGTERM)
    _wait_gone(owner["pid"], within=20.0)
    assert time.monotonic() - t0 < 10.0  # (its running call is stopped, not waited for)
    status = job.status()
    assert (status["state"], status.get("why"), status["cancelled"]) == ("cancelled", SIGTERM_REASON, 3), status
    attached = attach(job.id)  # (a process that attaches afterwards: each call's error names the reason)
    outcomes = wrenpack.get(attached.futures(), timeout=30, return_exceptions=True)
    for out in outcomes:
        assert isinstance(out, cf.CancelledError) and SIGTERM_REASON in str(out), outcomes
    with open(job.log_path) as f:
        text = f.read()
    assert f"{SIGTERM_REASON}: stopping its calls" in text and f"cancelled ({SIGTERM_REASON})" in text, text
    shown = _cli("jobs", "show", job.id)
    assert f"state      cancelled ({SIGTERM_REASON}): 0 done" in shown.stdout, shown


def test_a_sigterm_to_the_supervisors_whole_session_cancels_without_retrying_its_calls(home):
    """`systemctl stop` (or a `docker stop` of a container holding it) sends SIGTERM to every
    process at once: the supervisor and its local workers. The workers died of it while the
    supervisor had only noted the signal, so its executor took them for lost and ran their calls
    again ("worker died ...; retrying (attempt 2 of 2)"), and the calls' runs were not billed.
    A queued call started meanwhile too. Now a call whose worker goes after the supervisor's
    SIGTERM ends cancelled, with that reason and its run so far, and nothing starts."""
    job = wrenpack.remote(_nap, executor=Executor(backend="local", concurrency=2)).spawn_map([30.0, 30.0, 30.0])
    _alive, owner = job.supervisor()
    _started(job, 2)
    time.sleep(1.0)  # (each running call has run a while: its run is billed)
    session = os.getsid(owner["pid"])
    everyone = [int(p) for p in os.listdir("/proc") if p.isdigit() and _session_of(int(p)) == session]
    assert owner["pid"] in everyone and len(everyone) > 2, everyone
    for pid in everyone:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _wait_gone(owner["pid"], within=20.0)
    status = job.status()
    assert (status["state"], status.get("why"), status["cancelled"]) == ("cancelled", SIGTERM_REASON, 3), status
    with open(job.log_path) as f:
        text = f.read()
    assert "retrying" not in text and "worker died" not in text, text
    runs = [s for s in job.statuses() if s.get("duration_s")]
    assert len(runs) == 2 and all(s["duration_s"] >= 0.5 for s in runs), job.statuses()
    outcomes = wrenpack.get(attach(job.id).futures(), timeout=30, return_exceptions=True)
    assert all(isinstance(o, cf.CancelledError) and SIGTERM_REASON in str(o) for o in outcomes), outcomes


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_a_second_sigterm_ends_the_supervisor_at_once(home):
    """A job spawned with cancellable=False lets its running call run to its end after the first
    SIGTERM; a second one ends the supervisor now, and the job's futures name the first."""
    job = wrenpack.remote(_nap, executor=Executor(backend="local", concurrency=1),
                          cancellable=False).spawn_map([30.0, 30.0])
    futs = job.futures()
    _alive, owner = job.supervisor()
    _started(job)
    os.kill(owner["pid"], signal.SIGTERM)
    time.sleep(1.5)
    assert alive(owner["pid"])  # (waiting for its running call)
    assert job.status()["state"] == "cancelling"
    t0 = time.monotonic()
    os.kill(owner["pid"], signal.SIGTERM)
    _wait_gone(owner["pid"], within=5.0)
    assert time.monotonic() - t0 < 2.0
    outcomes = wrenpack.get(futs, timeout=30, return_exceptions=True)
    assert all(SIGTERM_REASON in str(out) for out in outcomes), outcomes
    with open(job.log_path) as f:
        assert "got SIGTERM again: ending now" in f.read()


KILLED_AFTER_OK = """
import os, signal, subprocess, types, wrenpack
from wrenpack.job import spawn

class Popen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print(self.pid, flush=True)

class Job:  # made once the supervisor said "ok", before spawn_map returns it: killed there
    def __init__(self, *_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

spawn.subprocess = types.SimpleNamespace(Popen=Popen, PIPE=subprocess.PIPE)
spawn.Job = Job

def square(x):
    return x * x

wrenpack.remote(square).spawn_map(range(3))
"""


def test_a_driver_killed_after_the_supervisors_ok_leaves_no_job_running(home):
    """spawn_map went on for 75-140 ms after the supervisor's "ok" (freeing the pickled
    arguments, making the Job): a driver killed then never returned the job, yet the job ran
    all its calls. The supervisor now waits for spawn_map's last step, "go"."""
    _killed_driver_leaves_nothing(home, KILLED_AFTER_OK)


def _recording_popen(monkeypatch) -> list[subprocess.Popen]:
    started: list[subprocess.Popen] = []

    class Popen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(spawn, "subprocess", types.SimpleNamespace(Popen=Popen, PIPE=subprocess.PIPE,
                                                                   TimeoutExpired=subprocess.TimeoutExpired))
    return started


def test_a_spawn_map_interrupted_after_the_supervisors_ok_leaves_nothing(home, monkeypatch):
    """^C after the "ok", before the "go": the supervisor is ended, and the job's objects and log removed."""
    started = _recording_popen(monkeypatch)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spawn, "Job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wrenpack.remote(_square, executor=Executor(backend="local")).spawn_map([1, 2])
    (proc,) = started
    _wait_gone(proc.pid)
    assert _store().list(keys.JOBS) == []
    assert os.listdir(home / "cache" / "jobs") == []


def test_a_supervisor_stopped_before_its_go_runs_nothing_and_says_why(home, monkeypatch):
    """A SIGTERM between the supervisor's "ok" and spawn_map's "go": the job spawn_map returns
    ends cancelled, none of its calls run, and each call's error names the SIGTERM."""
    started = _recording_popen(monkeypatch)
    real_job = spawn.Job

    def sigterm_first(*args, **kwargs):
        os.kill(started[0].pid, signal.SIGTERM)
        time.sleep(0.3)  # (its handler has run)
        return real_job(*args, **kwargs)

    monkeypatch.setattr(spawn, "Job", sigterm_first)
    job = wrenpack.remote(_square, executor=Executor(backend="local")).spawn_map([1, 2])
    outcomes = wrenpack.get(job.futures(), timeout=30, return_exceptions=True)
    assert all(isinstance(o, cf.CancelledError) and SIGTERM_REASON in str(o) for o in outcomes), outcomes
    _wait_gone(started[0].pid)
    status = job.status()
    assert (status["state"], status["why"], status["done"], status["cancelled"]) == ("cancelled", SIGTERM_REASON, 0, 2)
    assert not [k for k in _store().list(keys.result_prefix(job.id)) if k.endswith(".res")]  # (nothing ran)
