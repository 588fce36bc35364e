"""`wrenpack profile` as a demanding user meets it: bad options refused before anything runs, user text
shown as written, and nothing the measured call started (or the measuring processes) left running."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from wrenpack.cli import main as cli_main
from wrenpack.errors import ProfileError
from wrenpack.profiler import Profile, launcher, predict_scaling, recommend, run_profile

import profiler_targets as targets

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)


@pytest.fixture(autouse=True)
def _profiles_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything is launched."""
    def refuse(*a, **k):
        raise AssertionError("a run was launched for bad input")

    monkeypatch.setattr(launcher, "start_job", refuse)


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie nobody runs) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return True
        if stat[stat.rindex(b")") + 2:].split()[0] == b"Z":
            return True
        time.sleep(0.02)
    return False


def _wait_for_file(path, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            text = open(path).read()
        except OSError:
            text = ""
        if text.endswith("\n"):
            return text
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written within {within} s")


# ---------------------------------------------------------------- --max-time


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_max_time_that_is_not_positive_is_refused_before_anything_runs(value, capsys, no_launch, monkeypatch):
    # --max-time 0 meant "no limit" (a hung call ran forever); -1 ran the call, then said it "did not finish
    # within -1 s"
    monkeypatch.chdir(TESTS_DIR)
    with pytest.raises(SystemExit) as info:
        cli_main(["profile", "profiler_targets:tiny", "--max-time", value, "--no-save"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--max-time" in err and "positive" in err, err


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_api_timeout_that_is_not_positive_is_refused_before_anything_runs(value, no_launch):
    with pytest.raises(ProfileError, match="timeout must be a positive number of seconds"):
        run_profile(targets.tiny, timeout=value, save=False)
    with pytest.raises(ProfileError, match="timeout must be a positive number of seconds"):
        predict_scaling(targets.known_growth, targets.make_input, [1, 2, 3], 10, timeout=value, save=False)


# ---------------------------------------------------------------- user text in the tables


def test_report_shows_arguments_source_lines_and_notes_as_written():
    # rich read them as markup: "b[i] = 1" showed as "b = 1", and an argument '[/x]' crashed the
    # report with a MarkupError traceback after the run
    from rich.console import Console

    from wrenpack.profiler.report import render

    rec = recommend.recommend(50.0, 0.5, 0.1, 0.0)
    rec["notes"].append("a note about [red]x[/red]")
    prof = Profile(target="mod:[bold]fn", peak_memory_mb=50.0, duration_s=0.5, args="'[/x]', [1, 2]",
                   recommended=rec, packages=[{"name": "pkg[extra]", "version": "1[.0"}], local_modules=["[m]"],
                   lines=[{"file": "f.py", "line": 3, "source": "    b[i] = 1", "mem_mb": 1.0, "increment_mb": 0.0,
                           "occurrences": 1}])
    buf = io.StringIO()
    render(prof, console=Console(file=buf, width=200, emoji=False), saved="/p/[x].json")
    out = buf.getvalue()
    for text in ("mod:[bold]fn('[/x]', [1, 2])", "b[i] = 1", "a note about [red]x[/red]", "pkg[extra]", "1[.0",
                 "[m] (project module)", "/p/[x].json"):
        assert text in out, (text, out)


def test_cli_argument_with_brackets_is_shown_not_parsed(capsys, monkeypatch):
    monkeypatch.chdir(TESTS_DIR)
    code = cli_main(["profile", "profiler_targets:make_input", "'[/x]'", "--no-save"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "profiler_targets:make_input('[/x]')" in out


# ---------------------------------------------------------------- nothing left running


SPAWNER = textwrap.dedent("""\
    import os, subprocess, sys, time

    def _sleeper(pidfile, **kw):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **kw)
        with open(pidfile, "w") as f:
            f.write(f"{p.pid}\\n")
        return p

    def leaves_a_new_session(pidfile):
        _sleeper(pidfile, start_new_session=True)
        return 1

    def leaves_a_daemon(pidfile):
        # double fork: the sleeper's parent exits at once, so it is nobody's child in the call's tree
        pid = os.fork()
        if pid == 0:
            os.setsid()
            _sleeper(pidfile)
            os._exit(0)
        os.waitpid(pid, 0)
        return 1

    def hangs_on_a_new_session(pidfile):
        _sleeper(pidfile, start_new_session=True).wait()

    def hangs(pidfile):
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(60)
""")


@pytest.fixture
def spawner(tmp_path, monkeypatch):
    (tmp_path / "spawner.py").write_text(SPAWNER)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("fn", ["leaves_a_new_session", "leaves_a_daemon"])
def test_processes_the_call_leaves_behind_end_with_the_run(fn, spawner):
    # a child the call started in a session of its own (or daemonised) outlived the profile
    pidfile = spawner / "pid"
    run_profile(f"spawner:{fn}", (str(pidfile),), save=False)
    pid = int(pidfile.read_text())
    assert _gone(pid), f"the call's process {pid} is still running after the profile"


def test_a_timed_out_call_ends_its_children_in_other_sessions(spawner):
    pidfile = spawner / "pid"
    with pytest.raises(ProfileError, match="did not finish within"):
        run_profile("spawner:hangs_on_a_new_session", (str(pidfile),), timeout=1.5, save=False)
    pid = int(pidfile.read_text())
    assert _gone(pid), f"the timed-out call's child {pid} is still running"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_command_leaves_no_run_and_no_job_folder(sig, spawner):
    # `kill <pid>` of `wrenpack profile` left the launcher and the hung call running for ever, and its
    # job folder in the temp directory
    tmp = spawner / "tmp"
    tmp.mkdir()
    pidfile = spawner / "pid"
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "wrenpack", "profile", "spawner:hangs", repr(str(pidfile)), "--no-save"]
    proc = subprocess.Popen(cmd, env=env, cwd=spawner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runner = int(_wait_for_file(pidfile))
        proc.send_signal(sig)
        proc.wait(10)
        assert _gone(runner, within=10), f"the profiled call {runner} still runs after the command was killed"
        deadline = time.monotonic() + 10
        while os.listdir(tmp) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.listdir(tmp) == [], "the job folder was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- --plot


def test_plot_path_that_cannot_be_written_is_refused_before_anything_runs(capsys, no_launch, monkeypatch):
    # the call was profiled first, and only then did writing the picture fail
    monkeypatch.chdir(TESTS_DIR)
    code = cli_main(["profile", "profiler_targets:tiny", "--plot", "/nonexistent-dir/m.png", "--no-save"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--plot" in lines[0] and "/nonexistent-dir" in lines[0], err


def test_plot_without_matplotlib_is_refused_before_anything_runs(capsys, no_launch, monkeypatch):
    monkeypatch.chdir(TESTS_DIR)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli_main(["profile", "profiler_targets:tiny", "--plot", "m.png", "--no-save"])
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'wrenpack[plot]'" in err, err


# ---------------------------------------------------------------- recommendations


@pytest.mark.parametrize("tmp_mb", [400, 460, 500, 511, 512, 513, 600, 1000])
def test_ephemeral_storage_keeps_its_margin_just_below_512(tmp_mb):
    # a call that wrote 500 MB under /tmp was recommended 512 MB (2% headroom) while one that wrote 513 MB got
    # 581: the margin (x 1.10 + 16 MB) applied only above 512 MB of use
    r = recommend.recommend(peak_mb=100, wall_s=1, cpu_s=0, tmp_peak_mb=tmp_mb)
    want = max(512, -(-(tmp_mb * 1.1 + 16) // 1))
    assert r["ephemeral_storage_mb"] == want, r["ephemeral_storage_mb"]
    assert isinstance(r["ephemeral_storage_mb"], int) and 512 <= r["ephemeral_storage_mb"] <= 10240
    assert any("ephemeral storage" in n for n in r["notes"]) == (want > 512)


# ---------------------------------------------------------------- threads


THREADS = textwrap.dedent("""\
    import threading, time

    def many_threads(n, hold=0.5):
        ev = threading.Event()
        ts = [threading.Thread(target=ev.wait) for _ in range(n)]
        for t in ts:
            t.start()
        time.sleep(hold)
        ev.set()
        for t in ts:
            t.join()
        return n
""")


def test_more_threads_than_lambda_allows_are_counted_and_noted(tmp_path, monkeypatch):
    # 1,100 threads profiled as fine (a 33 MB peak, no note): on Lambda (1,024 processes and threads per
    # execution environment) and on the local backend the call fails to start its threads
    (tmp_path / "threads_mod.py").write_text(THREADS)
    monkeypatch.chdir(tmp_path)
    prof = run_profile("threads_mod:many_threads", (1100,), save=False)
    assert prof.threads >= 1100, prof.threads
    assert prof.to_dict()["threads"] == prof.threads
    assert any("1,024" in n and "threads" in n for n in prof.recommended["notes"]), prof.recommended["notes"]
    few = run_profile("threads_mod:many_threads", (4, 0.2), save=False)
    assert 5 <= few.threads < 50, few.threads
    assert not any("1,024" in n for n in few.recommended["notes"]), few.recommended["notes"]


# ---------------------------------------------------------------- path/to/file.py targets


def test_a_file_inside_a_package_is_loaded_as_its_module_so_relative_imports_work(tmp_path, monkeypatch, capsys):
    # `wrenpack profile pkg/mod.py:f` on a module with `from . import helper` failed: "attempted relative
    # import with no known parent package" (the file was loaded as a top-level module `mod`)
    pkg = tmp_path / "proj" / "pkgx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("X = 41\n")
    (pkg / "sub" / "mod.py").write_text("from .. import helper\n\ndef f():\n    return helper.X + 1\n")
    monkeypatch.chdir(tmp_path)
    code = cli_main(["profile", "proj/pkgx/sub/mod.py:f", "--no-save", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"result_bytes"' in out
    # a file outside any package is still loaded as a top-level module
    (tmp_path / "plain.py").write_text("def g():\n    return 1\n")
    assert cli_main(["profile", "plain.py:g", "--no-save", "--json"]) == 0, capsys.readouterr().err


ORPHANS = textwrap.dedent("""\
    import os, time

    def short_daemons(n):
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # a daemon's double fork: the grandchild outlives its parent by a moment
                if os.fork() == 0:
                    time.sleep(0.005)
                os._exit(0)
            os.waitpid(pid, 0)
            time.sleep(0.01)
        time.sleep(0.3)
        return n
""")


def test_ended_orphans_are_collected_not_counted_as_running(tmp_path, monkeypatch):
    # the launcher adopts the call's orphans; those that ended stayed zombies under it until the run's end,
    # each counted as a process (and a thread): 60 short daemons read as 60 processes at once
    (tmp_path / "orphans_mod.py").write_text(ORPHANS)
    monkeypatch.chdir(tmp_path)
    prof = run_profile("orphans_mod:short_daemons", (60,), save=False)
    assert prof.processes < 20 and prof.threads < 30, (prof.processes, prof.threads)


#: a runner that daemonises a sleeper at once, before the launcher could have finished its own imports
_QUICK_DAEMON = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    sleeper = os.fork()
    if sleeper == 0:
        time.sleep(60)
        os._exit(0)
    with open(sys.argv[1] + "/daemon.pid", "w") as f:
        f.write("%d" % sleeper)
    os._exit(0)
os.wait()
"""


def test_a_daemon_the_call_starts_before_the_launcher_is_ready_still_ends_with_the_run(tmp_path, monkeypatch):
    """The launcher made itself the call's child subreaper only after its own imports, while the
    runner, started first, was already running: a daemon the call started before then was handed
    to init and outlived the profile (CI, with two test processes: ``leaves_a_daemon`` above). It
    is the subreaper before it starts the runner."""
    import json

    monkeypatch.setattr(launcher, "RUNNER_ARGS", ["-S", "-c", _QUICK_DAEMON])
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    (jobdir / "job.json").write_text(json.dumps({"bare": True}))
    subprocess.run(launcher.launcher_command(str(jobdir)), timeout=60, check=True)
    pid = int((jobdir / "daemon.pid").read_text())
    gone = _gone(pid, within=2.0)
    if not gone:
        os.kill(pid, signal.SIGKILL)  # (what the old launcher left)
    assert gone, f"the daemon {pid} outlived the profile"
