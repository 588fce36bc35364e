"""Start the measured process from a small, freshly exec'd launcher, and watch it.

Process layout::

    caller (any size) --spawn--> launcher (small: stdlib only)
                                   |  private TMPDIR, samples every ~10 ms:
                                   |  process-tree RSS, descendants' VmHWM;
                                   |  every ~50 ms: new descendants, TMPDIR bytes
                                   +--spawn--> runner (wrenpack.profiler.runner): load, call, report

Why a launcher: the kernel carries ``ru_maxrss`` across fork/exec, so a
process spawned directly by a 2 GB caller can report a 2 GB peak before it
does anything. Spawned from the small launcher, the runner starts clean.

The caller side is :func:`run_job`; the launcher side is :func:`main`.
Only the standard library is imported here (psutil where /proc is missing), and
``wrenpack.worker.memory``: the same /proc reader and directory usage as the
worker and the local backend, so all three count alike.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported where used: the launcher itself, started -I -S, never needs it, and it is
    import subprocess  # the largest of its imports, on the core the measured call shares with the caller)

from wrenpack.boot import NO_CWD
from wrenpack.worker.memory import dir_usage, proc_status


#: Sampling period of the memory curve and the process-tree sum.
DEFAULT_INTERVAL_S = 0.01
#: TMPDIR is walked, and the process tree re-scanned, every this many samples
#: (each costs ~1 ms; reading the known processes' /proc/<pid>/status costs ~20 us).
TMP_EVERY = 5
SCAN_EVERY = 5


# --------------------------------------------------------------------------- caller side


class JobFailed(Exception):
    """The launcher or runner could not produce a result (raised to api.py)."""


#: the directory holding the ``wrenpack`` package (the launcher's only import path)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: the runner's command line after the interpreter: ``[*RUNNER_ARGS, JOBDIR]`` (not ``-m``: runpy's imports)
RUNNER_ARGS = ["-c", NO_CWD + "from wrenpack.profiler.runner import main;sys.stdout.flush();sys.exit(main(sys.argv[1]))"]
#: the launcher's first lines: start the runner, then import the sampler (see ``launcher_command``)
_BOOT = """\
import ctypes, os, sys, time
try:  # the call's child subreaper before the call can start anything: see _adopt_orphans
    ctypes.CDLL(None, use_errno=True).prctl({subreaper}, 1, 0, 0, 0)
except (OSError, AttributeError):
    pass
t_start = time.time()
tmp = os.path.join({jobdir!r}, "tmp")
os.makedirs(tmp, exist_ok=True)
env = dict(os.environ, TMPDIR=tmp, TEMP=tmp, TMP=tmp)
pid = os.posix_spawn(sys.executable, [sys.executable, *{runner_args!r}, {jobdir!r}], env,
                     file_actions={actions}, setsid=True{sigmask})
sys.path.insert(0, {root!r})
from wrenpack.profiler.launcher import main
sys.exit(main({jobdir!r}, pid, t_start))
"""


def launcher_command(jobdir: str, stdout_to_stderr: bool = False, runner_mask: list[int] | None = None) -> list[str]:
    """The launcher's command line: isolated and without ``site`` (``-I -S``),
    starting the runner before it imports anything.

    The launcher imports only the standard library and ``wrenpack.worker.memory``,
    so it needs neither site-packages nor the .pth hooks ``site`` runs (an
    editable install's finder alone took ~10 ms of a ~25 ms start). It starts
    the runner (in a session of its own, ``TMPDIR`` private, stdout to stderr
    for ``--json``) with ``os.posix_spawn`` first, so its own imports overlap
    the runner's start instead of preceding it; the runner gets the ordinary
    interpreter and environment, and ``runner_mask`` as its blocked signals (the caller's own: the
    launcher starts with the caller's stop signals blocked, see ``start_job``)."""
    if not hasattr(os, "posix_spawn"):  # pragma: no cover - not POSIX
        boot = (f"import sys; sys.path.insert(0, {_ROOT!r}); from wrenpack.profiler.launcher import main; "
                f"sys.exit(main({jobdir!r}))")
    else:
        actions = "[(os.POSIX_SPAWN_DUP2, 2, 1)]" if stdout_to_stderr else "None"
        sigmask = "" if runner_mask is None else f", setsigmask={sorted(runner_mask)!r}"
        boot = _BOOT.format(jobdir=jobdir, root=_ROOT, actions=actions, runner_args=RUNNER_ARGS, sigmask=sigmask,
                            subreaper=PR_SET_CHILD_SUBREAPER)
    return [sys.executable, "-I", "-S", "-c", boot]


def job_spec(target: str | None, *, quiet_stdout: bool = False, lines: bool = False) -> dict[str, Any]:
    """The runner's job: this process's import path and working directory; a
    ``"module:fn"`` target is looked up from the working directory first (as ``python -m``)."""
    path = [os.getcwd() if p == "" else p for p in sys.path]
    job: dict[str, Any] = {"sys_path": path, "cwd": os.getcwd(), "stdout_to_stderr": quiet_stdout, "lines": lines}
    if target is not None:
        job["target"] = target
        job["sys_path"] = [os.getcwd()] + path
    return job


#: the signals that end a caller without running its cleanup (their default action): held while the caller
#: owns a job's folder, so it always removes it (see ``start_job``)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: how often a caller that holds the stop signals looks whether one came (its latency to stop)
PENDING_CHECK_S = 0.1


def _hold_stop_signals() -> set[int]:
    """Block :data:`STOP_SIGNALS` in this thread; the ones this blocked (not blocked before)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        return set()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    return {int(s) for s in STOP_SIGNALS if s not in before}


def _release_stop_signals(held: set[int]) -> None:
    """Unblock what :func:`_hold_stop_signals` blocked: a stop signal that came meanwhile acts now."""
    if held:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


class Started:
    """A measured call under way: the job's folder and its launcher process.

    From ``start_job`` until ``wait`` returns, the calling thread holds SIGTERM and SIGHUP (blocked):
    whoever owns the folder removes it. A caller ended by one (``timeout``, a cancelled CI job) while
    creating the folder, or after the launcher had finished and before removing it, left
    /tmp/wrenpack-profile-* behind; the launcher, started with them blocked, takes them once its own
    handler (which ends the run and removes the folder) is in place. ``wait`` looks for one every
    ``PENDING_CHECK_S``; one that came ends the run, and acts once the folder is gone."""

    def __init__(self, jobdir: str, proc: subprocess.Popen, held: set[int] | None = None) -> None:
        self.jobdir = jobdir
        self.proc = proc
        self.held = held or set()

    def wait(self) -> tuple[dict, dict]:
        """Wait for the run; ``(runner_result, launcher_report)``; the job's folder is removed."""
        import shutil

        proc = self.proc
        launch = None
        try:
            try:
                stopped = self._wait_or_stop()
            except BaseException:
                _end_launcher(proc)
                raise
            if stopped:
                _end_launcher(proc)
                raise JobFailed(f"stopped by signal {min(stopped)}")
            launch = _read_json(os.path.join(self.jobdir, "launch.json"))
            result = _read_json(os.path.join(self.jobdir, "result.json"))
            if launch is None:
                raise JobFailed(f"the profiling launcher failed (exit {proc.returncode})")
            return result or {}, launch
        finally:
            if launch is None:  # the launcher did not finish: a runner it left (a call that killed it) ends first
                _end_runner(self.jobdir)
            for _ in range(5):  # (a folder something still wrote into while it was removed: again)
                shutil.rmtree(self.jobdir, ignore_errors=True)
                if not os.path.lexists(self.jobdir):
                    break
            held, self.held = self.held, set()
            _release_stop_signals(held)  # (a stop signal that came acts here, the folder gone)

    def _wait_or_stop(self) -> set[int]:
        """Wait for the launcher to exit; the held stop signals that came first, if any (then it still runs)."""
        import subprocess

        proc = self.proc
        if not self.held:
            proc.wait()
            return set()
        try:  # (woken when the launcher exits: a run ends when it does, not up to PENDING_CHECK_S later)
            fd: int | None = os.pidfd_open(proc.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            fd = None
        try:
            while proc.poll() is None:
                pending = signal.sigpending() & self.held
                if pending:
                    return {int(s) for s in pending}
                if fd is not None:
                    select.select([fd], [], [], PENDING_CHECK_S)
                else:
                    try:
                        proc.wait(PENDING_CHECK_S)
                    except subprocess.TimeoutExpired:
                        pass
            return set()
        finally:
            if fd is not None:
                os.close(fd)


def _end_launcher(proc: subprocess.Popen) -> None:
    """Stop a launcher (its handler ends the run and removes the folder) and collect it."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _end_runner(jobdir: str) -> None:
    """SIGKILL the runner of ``jobdir`` (and its process group) if it outlived its launcher, and wait until it
    is gone: a call that killed its launcher left the runner (in a session of its own) writing into the
    folder while the caller removed it (a FileNotFoundError traceback, or a folder left with its
    result.json). The runner is the process whose last argument is ``jobdir`` (Linux: /proc)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - no /proc: the runner's writes into a removed folder fail quietly
        return
    want = os.fsencode(jobdir)
    for entry in entries:
        if not entry.isdigit() or not _is_runner(int(entry), want):
            continue
        pid = int(entry)
        try:  # a pidfd pins the process: checked again through it, the kill cannot reach another one
            fd: int | None = os.pidfd_open(pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            fd = None
        try:
            if not _is_runner(pid, want):
                continue
            try:
                if os.getpgid(pid) == pid:  # (its session's leader: the call's processes in its group too)
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            deadline = time.monotonic() + END_ALL_S
            while time.monotonic() < deadline and _alive(pid):
                if fd is not None:
                    select.select([fd], [], [], 0.05)
                else:
                    time.sleep(0.005)
        finally:
            if fd is not None:
                os.close(fd)


def _is_runner(pid: int, jobdir: bytes) -> bool:
    """Process ``pid`` is the runner of ``jobdir`` (``[python, *RUNNER_ARGS, jobdir]``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if argv and argv[-1] == b"":
        argv.pop()
    return len(argv) >= 2 and argv[-1] == jobdir


def _alive(pid: int) -> bool:
    """Running still (not gone, not a zombie: a zombie writes nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] != b"Z"


def start_job(job: dict[str, Any], call: dict[str, Any], timeout: float | None = None, plain: bool = False) -> Started:
    """Start one measured call and return at once (``Started.wait`` for its figures, which must follow:
    the calling thread holds SIGTERM and SIGHUP until it returns, see ``Started``).

    ``plain``: the call holds only plain values (the command line's literals), so
    the standard pickle writes it and cloudpickle need not be imported here; a
    function or anything defined in ``__main__`` needs cloudpickle (by value)."""
    import tempfile

    before = signal.pthread_sigmask(signal.SIG_BLOCK, ()) if hasattr(signal, "pthread_sigmask") else None
    held = _hold_stop_signals()
    try:
        jobdir = tempfile.mkdtemp(prefix="wrenpack-profile-")
    except BaseException:
        _release_stop_signals(held)
        raise
    try:
        with open(os.path.join(jobdir, "job.json"), "w") as f:
            # parent_pid: a launcher whose caller died ends the run and removes this folder (``_adopt_orphans``);
            # unblock: the stop signals it starts with blocked (the caller's), taken once its handler is in place
            json.dump(dict(job, timeout_s=timeout, parent_pid=os.getpid(), unblock=sorted(held)), f)
        with open(os.path.join(jobdir, "call.pkl"), "wb") as f:
            if plain:
                import pickle

                pickle.dump(call, f, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                import cloudpickle

                cloudpickle.dump(call, f)
        import subprocess

        mask = None if before is None else [int(s) for s in before]
        # stdin: nothing (a function that reads it waited for as long as the caller's stdin stayed open)
        proc = subprocess.Popen(launcher_command(jobdir, bool(job.get("stdout_to_stderr")), mask), cwd=job.get("cwd"),
                                stdin=subprocess.DEVNULL)
    except BaseException:
        import shutil

        shutil.rmtree(jobdir, ignore_errors=True)
        _release_stop_signals(held)
        raise
    return Started(jobdir, proc, held)


def run_job(job: dict[str, Any], call: dict[str, Any], timeout: float | None = None) -> tuple[dict, dict]:
    """Run one measured call; return ``(runner_result, launcher_report)``."""
    return start_job(job, call, timeout).wait()


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- launcher side


def _status(pid: int) -> tuple[int, int, int, int]:
    """(VmRSS, VmHWM, RssFile in kB, Threads) from /proc; zeros once the process is gone."""
    got = proc_status(pid, (b"VmHWM:", b"VmRSS:", b"RssFile:", b"Threads:"))
    return got.get(b"VmRSS:", 0), got.get(b"VmHWM:", 0), got.get(b"RssFile:", 0), got.get(b"Threads:", 0)


_dir_bytes = dir_usage


class _Tree:
    """The processes the measured call started, from a parent-pid scan of /proc (psutil where /proc is
    absent): every descendant of ``root`` but ``exclude``.

    The root is the launcher, not the runner: the launcher is the call's child subreaper
    (``_adopt_orphans``), so a process the call daemonised (a double fork) is reparented to it and is
    still found, measured and ended. A scan reads every process's stat file (~1.5 ms for ~100
    processes), so it runs every ``SCAN_EVERY`` samples; the descendants found are read every sample.
    """

    def __init__(self, pid: int, exclude: int | None = None) -> None:
        self.pid = pid
        self.exclude = exclude
        self._proc = os.path.isdir("/proc/self")
        self._root = None
        if not self._proc:
            try:
                import psutil

                self._root = psutil.Process(pid)
            except Exception:  # noqa: BLE001 - psutil absent or the process gone: the root alone
                self._root = None

    def descendants(self, live: bool = False) -> list[int]:
        """``live``: without zombies (ended, waiting to be collected: nothing of them runs)."""
        if not self._proc:
            try:
                kids = [p.pid for p in self._root.children(recursive=True)] if self._root else []
            except Exception:  # noqa: BLE001
                return []
            return [k for k in kids if k != self.exclude]
        kids: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        data = f.read()
                    state, ppid_text = data[data.rindex(b")") + 2 :].split(None, 2)[:2]
                    ppid = int(ppid_text)
                except (OSError, ValueError, IndexError):
                    continue
                if live and state == b"Z":
                    continue
                kids.setdefault(ppid, []).append(int(entry))
        out: list[int] = []
        todo = list(kids.get(self.pid, ()))
        while todo:
            pid = todo.pop()
            if pid != self.exclude:
                out.append(pid)
            todo.extend(kids.get(pid, ()))
        return out


class _Started:
    """The runner the boot lines started (``pid``), as much of a Popen as ``main`` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def main(jobdir: str, pid: int | None = None, t_start: float | None = None) -> int:
    """Sample the runner until it exits; write launch.json. ``pid``: the runner,
    already started by the boot lines (``launcher_command``); else started here."""
    with open(os.path.join(jobdir, "job.json")) as f:
        job = json.load(f)
    interval = float(job.get("interval_s") or DEFAULT_INTERVAL_S)
    sample = not job.get("bare")
    timeout = job.get("timeout_s")
    tmpdir = os.path.join(jobdir, "tmp")
    # The sampler keeps its normal priority: at nice 10 a loaded machine starved it and it missed
    # short-lived children (the kernel's figures below now cover those, but the curve needs samples).
    proc: Any
    if pid is None:
        os.makedirs(tmpdir, exist_ok=True)
        env = dict(os.environ, TMPDIR=tmpdir, TEMP=tmpdir, TMP=tmpdir)
        cmd = [sys.executable, *RUNNER_ARGS, jobdir]
        stdout = 2 if job.get("stdout_to_stderr") else None
        t_start = time.time()
        import subprocess

        _adopt_orphans()  # (before the call can start anything)
        proc = subprocess.Popen(cmd, env=env, cwd=job.get("cwd"), stdin=subprocess.DEVNULL, stdout=stdout,
                                start_new_session=True)
    else:
        proc = _Started(pid)
    assert t_start is not None

    tree = _Tree(os.getpid(), exclude=proc.pid)
    parent = job.get("parent_pid")

    def _stop(signum: int, frame: Any) -> None:
        # Once only: a killed multi-threaded caller sends the death signal once per thread that ends (each
        # time the launcher is handed on), and a second stop inside the first one's import broke it half-way.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _end_all(proc.pid, tree)
        # A stopped run's figures are never read, so its folder goes here too: when the caller died, nobody
        # else removes it. (Not "if getppid() changed": the death signal comes when the caller's *thread*
        # ends, and another of its threads may adopt the launcher meanwhile.)
        _remove_tree(jobdir)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if job.get("unblock") and hasattr(signal, "pthread_sigmask"):  # (one that came meanwhile stops the run here)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, job["unblock"])
    _adopt_orphans()
    if parent is not None and os.getppid() != parent:  # the caller died before the line above
        _stop(signal.SIGTERM, None)

    exited = _exit_waiter(proc.pid)
    result_path = os.path.join(jobdir, "result.json")
    times: list[float] = []
    rss_curve: list[float] = []
    tree_peak_kb = 0
    curve_peak_kb = file_at_peak_kb = 0
    max_procs = 1
    max_threads = 1  # (Lambda allows 1,024 processes and threads together)
    tmp_peak = 0
    timed_out = False
    tick = 0
    kids: list[int] = []
    next_t = time.monotonic()
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if sample and os.path.exists(result_path):
            sample = False  # the runner has its figures; what it does next is bookkeeping
        if sample:
            now = time.time()
            rss, _, file_kb, threads = _status(proc.pid)
            curve_kb = rss
            peak_kb = rss
            if tick % SCAN_EVERY == 0:
                _reap(kids)  # adopted orphans that ended: collected (as init would), not counted as running
                kids = tree.descendants()
            for kid in kids:
                k_rss, k_hwm, k_file, k_threads = _status(kid)
                file_kb += k_file
                curve_kb += k_rss
                peak_kb += max(k_rss, k_hwm)  # a child's own high-water mark catches its spikes between samples
                threads += k_threads
            max_procs = max(max_procs, 1 + len(kids))
            max_threads = max(max_threads, threads)
            if curve_kb > curve_peak_kb:
                curve_peak_kb, file_at_peak_kb = curve_kb, file_kb
            tree_peak_kb = max(tree_peak_kb, peak_kb)
            if rss:
                times.append(round(now - t_start, 4))
                rss_curve.append(round(curve_kb / 1024.0, 2))
            if tick % TMP_EVERY == 0:
                tmp_peak = max(tmp_peak, _dir_bytes(tmpdir))
            tick += 1
        if timeout and time.time() - t_start > timeout:
            timed_out = True
            _end_all(proc.pid, tree)
        # Not sampling any more (the runner has its figures): only its exit and the timeout are waited for.
        next_t += interval if sample else max(interval, IDLE_WAIT_S)
        delay = next_t - time.monotonic()
        if delay > 0:
            exited(delay)
        else:
            next_t = time.monotonic()
    wall = time.time() - t_start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tmp_final = _dir_bytes(tmpdir)
    report = {
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "t_start": t_start,
        "wait4_maxrss_mb": ru.ru_maxrss / 1024.0,
        "interval_s": interval,
        "samples": {"t": times, "rss_mb": rss_curve},
        "tree_peak_mb": tree_peak_kb / 1024.0,
        "file_mapped_at_peak_mb": file_at_peak_kb / 1024.0,
        "max_processes": max_procs,
        "max_threads": max_threads,
        "tmp_peak_mb": max(tmp_peak, tmp_final) / 2**20,
        "tmp_final_mb": tmp_final / 2**20,
    }
    _end_all(proc.pid, tree)  # what the call left behind: its group, other sessions, daemons
    with open(os.path.join(jobdir, "launch.json.part"), "w") as f:
        json.dump(report, f)
    os.replace(os.path.join(jobdir, "launch.json.part"), os.path.join(jobdir, "launch.json"))
    return 0


#: how often a launcher that no longer samples looks at the clock for the timeout
IDLE_WAIT_S = 0.1


def _exit_waiter(pid: int) -> Any:
    """``wait(seconds)``: sleep that long, or less if process ``pid`` exits first.

    A pidfd wakes the launcher when the runner exits, so a run ends when the
    call does, not up to a sampling period later (Linux >= 5.3; elsewhere a
    plain sleep)."""
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return time.sleep

    def wait(seconds: float) -> None:
        try:
            select.select([fd], [], [], seconds)
        except (OSError, ValueError):
            time.sleep(seconds)

    return wait


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: how long the launcher keeps ending the call's processes (one may fork while it is being killed)
END_ALL_S = 2.0


def _adopt_orphans() -> None:
    """Make the launcher the child subreaper of the call's processes, and have it stopped (SIGTERM,
    which ends them) when its caller dies.

    Killing the runner's process group missed what the call started in a session of its own
    (``start_new_session=True``, a daemon's double fork): such processes outlived the profile, and a
    timed-out call's kept running. As subreaper the launcher inherits every orphan of the call, so
    ``_Tree`` finds them and ``_end_all`` ends them. And a caller killed outright (``kill``, SIGKILL:
    no ``Started.wait`` runs) left the launcher sampling a hung call for ever, and its job folder in
    the temp directory. The death signal goes when the *thread* that started the launcher ends: the
    caller waits for it in that thread (``Started.wait``). Linux only; elsewhere a no-op.

    The boot lines (``_BOOT``) make the launcher the subreaper before they start the runner: made
    here only, after the launcher's imports, a daemon the call started first (a quick call, or a
    slow launcher on a busy machine) went to init and outlived the run (~3 ms of ctypes on the
    start, against a call's process that escapes)."""
    try:
        import ctypes  # (~3 ms, after the runner was started: its start does not wait for this)

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass


def _end_all(runner: int, tree: _Tree) -> None:
    """SIGKILL the runner's process group and every other process of the call's tree, then reap the
    orphans adopted (``_adopt_orphans``). Repeated until none is left (a process may fork between the
    scan and its kill), for at most ``END_ALL_S``."""
    _kill_group(runner)
    deadline = time.monotonic() + END_ALL_S
    while True:
        left = tree.descendants(live=True)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap(left)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def _remove_tree(path: str) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` without importing shutil (in a signal handler, on the
    launcher's small set of imports)."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            try:
                os.unlink(os.path.join(dirpath, name))
            except OSError:
                pass
        for name in dirnames:
            full = os.path.join(dirpath, name)
            try:
                os.unlink(full) if os.path.islink(full) else os.rmdir(full)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those of ``pids`` that are the launcher's children (the orphans it
    adopted) and ended. Never a wait for any child: the sampling loop's ``wait4`` takes the runner's."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except OSError:  # not its child (a descendant's), or already collected
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
