"""The profiler leaves nothing in the temp directory, and prints no traceback, however its caller or
launcher ends: a call that kills its launcher, a caller stopped by SIGTERM while it owns the job's folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, pidfd, signal masks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]),
                WRENPACK_PROFILE_DIR=str(tmp_path / "profiles"), WRENPACK_CACHE_DIR=str(tmp_path / "cache")), tmp


def _left(tmp):
    return [n for n in os.listdir(tmp) if n.startswith("wrenpack-profile-")]


def test_a_call_that_kills_its_launcher_is_one_line_and_leaves_nothing(tmp_path):
    # the runner, in a session of its own, outlived the launcher it killed and wrote its result into the
    # folder the caller was removing: a FileNotFoundError traceback (result.json.part), or a folder left
    (tmp_path / "killer.py").write_text(textwrap.dedent("""\
        import os, signal, time

        def kill_parent(n=1):
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(0.05)
            return n
        """))
    env, tmp = _env(tmp_path)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "wrenpack", "profile", "killer:kill_parent", "--no-save"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "launcher failed" in proc.stderr, proc.stderr
        assert _left(tmp) == []


CALLER = """\
import os, signal, sys, tempfile, time
from wrenpack.profiler import launcher

when = sys.argv[1]
if when == "after-mkdtemp":  # the caller is stopped while it creates the folder
    real = tempfile.mkdtemp

    def mkdtemp(*a, **k):
        path = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    tempfile.mkdtemp = mkdtemp
job = launcher.job_spec("tgt:quick")
started = launcher.start_job(job, {"args": (), "kwargs": {}}, plain=True)
if when == "after-launcher":  # ... or once the launcher finished, before it removed the folder
    while not os.path.exists(os.path.join(started.jobdir, "launch.json")) or started.proc.poll() is None:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
print(started.wait()[0].get("duration_s"))
"""


@pytest.mark.parametrize("when", ["after-mkdtemp", "after-launcher"])
def test_a_caller_stopped_by_sigterm_leaves_nothing(when, tmp_path):
    # `timeout -s TERM 2 wrenpack profile fn --repeat 1000` left /tmp/wrenpack-profile-* about 1 run in 8
    (tmp_path / "tgt.py").write_text("def quick():\n    return 1\n")
    (tmp_path / "caller.py").write_text(CALLER)
    env, tmp = _env(tmp_path)
    proc = subprocess.run([sys.executable, str(tmp_path / "caller.py"), when], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, (proc.stdout, proc.stderr)  # (still ended by the signal)
    assert _left(tmp) == []
    assert "Traceback" not in proc.stderr


def test_the_measured_call_runs_with_the_callers_signal_mask(tmp_path):
    # the caller holds SIGTERM and SIGHUP while the launcher starts: the call itself must not inherit that
    out = tmp_path / "mask.txt"
    (tmp_path / "tgt.py").write_text(textwrap.dedent(f"""\
        import signal

        def blocked():
            with open({str(out)!r}, "w") as f:
                f.write(repr(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ()))))
        """))
    env, tmp = _env(tmp_path)
    code = ("import signal; from wrenpack.profiler import launcher; "
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); "
            "s = launcher.start_job(launcher.job_spec('tgt:blocked'), {'args': (), 'kwargs': {}}, plain=True); "
            "s.wait(); print(sorted(int(x) for x in signal.pthread_sigmask(signal.SIG_BLOCK, ())))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == f"[{int(signal.SIGUSR1)}]"  # the call: the caller's own mask
    assert proc.stdout.strip() == f"[{int(signal.SIGUSR1)}]"  # the caller's mask is as it was after the run
    assert _left(tmp) == []


def _open_fds() -> dict[str, str]:
    """This process's open descriptors and what each is."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # (the listing's own, closed by now)
    return out


def test_waiting_holds_no_descriptor_and_no_signal_after_it(tmp_path, monkeypatch):
    from wrenpack.profiler import launcher

    (tmp_path / "tgt2.py").write_text("def quick():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    fds = _open_fds()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    for _ in range(2):
        started = launcher.start_job(launcher.job_spec("tgt2:quick"), {"args": (), "kwargs": {}}, plain=True)
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ())  # (held while the folder is ours)
        result, launch = started.wait()
        assert result["duration_s"] >= 0 and launch["exit_code"] == 0
    # (descriptors opened meanwhile and still open: one an earlier test's object held may have been
    # closed meanwhile by the garbage collector, and a count then came out short: CI saw 58 == 60)
    assert {fd: target for fd, target in _open_fds().items() if fds.get(fd) != target} == {}
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == mask
    assert _left(tmp_path) == []
