"""What every benchmark here shares, so that none can flatter wrenpack.

A comparison is only as fair as the CPU each side gets. On Linux with
autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) every
session is a scheduling group of its own with its own CPU share: processes in a
session of their own get a share as large as all of the user's session
together, so a system whose processes sit in another session than the
baseline's wins on a busy machine for a reason no user would see. The nice
value and the CPU affinity decide the rest. So each benchmark:

- runs at least ``ROUNDS`` rounds by default (``add_arguments``), the systems
  alternating within each round (``order``), so drift on a shared machine hits
  all of them alike;
- reports the median and the min..max of the rounds (``spread``);
- gives the baseline's processes the scheduling of wrenpack's (``align``: the
  nice value and CPU set of wrenpack's workers; a session cannot be changed
  from outside, so a difference there is reported, never hidden) and prints
  what each side had (``check``: one line that says "alike" or "NOT alike");
- can load the machine with CPU hogs in its own session (``Hogs``), where the
  user's other programs run, to show what a busy machine does to each side;
- runs its rounds with ``run_rounds`` (the alternation and the hogs in one
  place), and a shuffle benchmark prints where wrenpack's time went with
  ``ShuffleStages`` (what ``map_reduce`` logs per run);
- refuses a bad ``--rounds`` or ``--hogs`` in one line before anything runs (and
  gives the scripts' own options checked types: ``at_least``, ``positive``,
  ``names``, ``size``...), and
  says so when a run has fewer than ``ROUNDS`` rounds (``parse_args``,
  ``rounds_label``): its ratios are a quick look, not a figure against a target;
- ends cleanly on SIGTERM and SIGINT (``parse_args``: the signal raises
  ``SystemExit`` in the main thread, so every ``with`` and ``finally`` runs): no
  hog, pool worker or temporary folder is left behind.

Benchmarks only: the library never imports this.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from wrenpack.process_state import descendants

#: the fewest rounds a benchmark runs by default
ROUNDS = 5


def at_least(least: int, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse ``type``: a whole number, at least ``least`` (so argparse refuses
    anything else in one line, before anything runs)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}, at least {least}")
        return n

    parse.__name__ = f"at least {least}"
    return parse


def at_least_real(least: float, what: str = "a number", above: bool = False,
                  below: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number, at least ``least`` (more than it with
    ``above``) and, with ``below``, less than that, refused by argparse in one line
    otherwise, before anything runs."""
    bound = f"{'more than' if above else 'at least'} {least:g}" + ("" if below is None else f" and less than {below:g}")

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or x < least or (above and x == least) or (below is not None and x >= below):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}, {bound}")
        return x

    parse.__name__ = bound
    return parse


def positive(what: str = "a number of seconds") -> Callable[[str], float]:
    """An argparse ``type`` for a duration and the like: a finite number more than 0
    (``nan``, ``inf``, 0 and below are refused in one line: a call of 0 s measures
    nothing, and a ratio over it flatters)."""
    return at_least_real(0, what, above=True)


def names(known: Sequence[str], what: str = "name") -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list of some of ``known`` (in the order
    given, each once). An unknown or missing name is refused in one line that lists
    the known ones: a misspelt one used to run nothing and end with status 0."""
    choices = ",".join(known)

    def parse(text: str) -> list[str]:
        got = [n.strip() for n in text.split(",")]
        unknown = [n for n in got if n not in known]
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{text!r} names no {what}; give one or more of {choices}, separated by commas")
        if unknown:
            where = f" in {text!r}" if len(got) > 1 else ""
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, unknown))}{where}; give one or "
                                             f"more of {choices}, separated by commas")
        return list(dict.fromkeys(got))

    parse.__name__ = f"{what} list"
    return parse


def whole_numbers(least: int, what: str = "a whole number") -> Callable[[str], list[int]]:
    """An argparse ``type``: a comma-separated list of whole numbers, each at least
    ``least`` (``at_least``), in the order given, each once."""
    one = at_least(least, what)

    def parse(text: str) -> list[int]:
        return list(dict.fromkeys(one(n.strip()) for n in text.split(",")))

    parse.__name__ = f"list of {one.__name__}"
    return parse


def memory_mb(text: str) -> int:
    """An argparse ``type``: MB per call, in Lambda's range (wrenpack's own check, so
    the message is the one a user of ``memory=`` gets), refused in one line."""
    from wrenpack.errors import WrenpackError
    from wrenpack.limits import check_memory

    try:
        return check_memory(int(text) if text.strip().lstrip("-").isdigit() else text, name="memory")
    except WrenpackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: the units ``size`` takes (decimal, as the README's sizes: 1 MB is 1,000,000 bytes)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}


def size(text: str) -> int:
    """An argparse ``type``: a size in bytes, ``500KB``, ``100MB``, ``1GB`` or a
    number (B, KB, MB, GB: powers of 1,000), at least 1 byte."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    n = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; give a number with B, KB, MB or GB (powers of 1,000), "
                                         "e.g. 500KB, 100MB or 1GB")
    return n


def add_arguments(ap: argparse.ArgumentParser, rounds: int = ROUNDS, hogs: bool = True) -> None:
    """``--rounds`` (default at least ``ROUNDS``; at least 1) and, where load makes sense,
    ``--hogs N`` (at least 0). Parse with ``parse_args``."""
    ap.add_argument("--rounds", type=at_least(1, "a whole number of rounds"), default=max(rounds, ROUNDS),
                    help=f"rounds, systems alternating in each (default {max(rounds, ROUNDS)}; fewer than {ROUNDS} "
                         "is a quick look whose ratios do not count against the targets)")
    if hogs:
        ap.add_argument("--hogs", type=at_least(0, "a whole number of CPU hogs"), default=0,
                        help="busy-looping processes in this benchmark's own session for the whole run (a busy machine)")


def parse_args(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``ap.parse_args``, then: SIGTERM and SIGINT end the benchmark cleanly
    (``end_on_signals``), and a run of fewer than ``ROUNDS`` rounds says, in one
    line before it starts, that its ratios do not count against the targets."""
    args = ap.parse_args(argv)
    end_on_signals()
    rounds = getattr(args, "rounds", None)
    if rounds is not None and rounds < ROUNDS:
        print(f"NOTE: {rounds} round{'' if rounds == 1 else 's'}, fewer than {ROUNDS}: a quick look, whose ratios do "
              f"not count against the targets (measured over at least {ROUNDS} rounds: leave out --rounds, or give "
              f"{ROUNDS} or more)", flush=True)
    return args


def rounds_label(rounds: int) -> str:
    """``5 rounds``; below ``ROUNDS``, marked as not counting: for the results' header."""
    text = f"{rounds} round{'' if rounds == 1 else 's'}"
    return text if rounds >= ROUNDS else f"{text} [QUICK LOOK, fewer than {ROUNDS}: not counted against the targets]"


#: the process that installed ``_end_cleanly`` (a child forked from it inherits the handler)
_installed_in: int | None = None
#: when the first SIGTERM or SIGINT came (monotonic clock), None before
_signalled: float | None = None
#: a signal this soon after the first is the same request sent twice (``timeout`` signals the
#: program, then its process group; Ctrl-C reaches the whole foreground group) (s)
_REPEAT_S = 1.0
#: how long the cleanup after a signal may take before the processes are killed and the
#: benchmark ends anyway (it takes a second or two; a pool's shutdown can hang) (s)
_CLEANUP_S = 15.0
#: which of them it was
_signum = signal.SIGTERM


def _end_cleanly(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT: ``SystemExit`` in the main thread, so the ``with`` blocks and
    ``finally`` clauses stop the hogs, shut the pools down and remove the temporary
    folders, and the exit hooks run. A repeat within ``_REPEAT_S`` is ignored (the
    cleanup runs on); a later one, or a cleanup still running after ``_CLEANUP_S``,
    kills every process the benchmark started and ends it at once (``_end_now``)."""
    global _signalled, _signum
    if os.getpid() != _installed_in:  # a pool's worker forked from the benchmark: the signal's default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    now = time.monotonic()
    if _signalled is not None:
        if now - _signalled < _REPEAT_S:
            return
        _end_now(signum, "asked again")
        return
    _signalled, _signum = now, signum
    name = signal.Signals(signum).name
    print(f"\n{name}: stopping the hogs and pools, removing temporary files, then ending", file=sys.stderr, flush=True)
    watchdog = threading.Timer(_CLEANUP_S, _end_now, (signum, f"the cleanup still ran after {_CLEANUP_S:g} s"))
    watchdog.daemon = True
    watchdog.start()
    raise SystemExit(128 + signum)


def _end_now(signum: int, why: str) -> None:
    """End at once, but not leaving a process behind: every process this one started
    (and theirs) is killed first, then this one ends (the signal's default action, or
    ``os._exit`` with its status from the watchdog's thread)."""
    print(f"{signal.Signals(signum).name}: {why}: killing the benchmark's processes and ending", file=sys.stderr,
          flush=True)
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if threading.current_thread() is threading.main_thread():  # (the handler: end as the signal would)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)
    os._exit(128 + signum)  # (the watchdog's thread may not change a signal's action)


def main(fn: Callable[[], "int | None"]) -> None:
    """Run a benchmark's ``main`` and exit with its status. After SIGTERM or SIGINT (see
    ``parse_args``), the status is 128 + the signal's number, without a traceback, whatever
    exception the signal's ``SystemExit`` became on its way out (wrenpack turns one raised
    while it pickles a call into a ``SerializationError``)."""
    try:
        status = fn()
    except BaseException as exc:
        if _signalled is None or os.getpid() != _installed_in:
            raise
        if not isinstance(exc, SystemExit):
            print(f"({signal.Signals(_signum).name} came inside code that made it a {type(exc).__name__})",
                  file=sys.stderr)
        status = 128 + _signum
    sys.exit(status)


@contextlib.contextmanager
def shut_down_after(ex: Any) -> Iterator[Any]:
    """``with`` block for a ``wrenpack.Executor``: shut down at its end, waited for; after an
    exception (a signal's ``SystemExit``), not waited for: a map the signal interrupted
    can leave a call that never resolves, and ``shutdown(wait=True)`` then waited for it
    for good. wrenpack's exit hook stops what is left, with a bounded wait."""
    try:
        yield ex
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()


def raise_if_signalled() -> None:
    """``SystemExit`` again if a signal came: for a loop around code that catches it (the
    worker's handler called in-process turns its function's ``SystemExit`` into a result)."""
    if _signalled is not None and os.getpid() == _installed_in:
        raise SystemExit(128 + _signum)


def end_on_signals() -> None:
    """Install ``_end_cleanly`` for SIGTERM and SIGINT (main thread only). With its own
    SIGTERM handler set first, wrenpack leaves it alone (its own would end the process
    after wrenpack's cleanup, with no ``finally`` of the benchmark run: hogs and pools left)."""
    global _installed_in
    _installed_in = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _end_cleanly)


def order(names: Sequence[str], rnd: int) -> list[str]:
    """The systems in round ``rnd``: as given in even rounds, reversed in odd ones.
    (With more than two systems every one of them also moves off the first place.)"""
    names = list(names)
    return names if rnd % 2 == 0 else names[::-1]


def run_rounds(systems: dict[str, Callable[[], None]], rounds: int, hogs: int = 0) -> "Hogs":
    """Run every system once per round, ``rounds`` rounds, alternating (``order``), under
    ``hogs`` CPU hogs; returns the ``Hogs`` (its ``describe`` goes beside the results)."""
    with Hogs(hogs) as load:
        for rnd in range(rounds):
            print(f" round {rnd + 1}:", flush=True)
            for name in order(list(systems), rnd):
                systems[name]()
    return load


def spread(values: Sequence[float], unit: str = "s", scale: float = 1.0, fmt: str = ".3f") -> str:
    """``median 0.123 s (min 0.101 .. max 0.140)`` of ``values`` times ``scale``."""
    v = [x * scale for x in values]
    if not v:
        return "no rounds"
    return f"median {statistics.median(v):{fmt}} {unit} (min {min(v):{fmt}} .. max {max(v):{fmt}})"


# --------------------------------------------------------------------------- scheduling


def autogroup_enabled() -> bool | None:
    """Whether the kernel groups the CPU by session (None: no such kernel setting here)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


@dataclass(frozen=True)
class Scheduling:
    """What decides a process's CPU share against the others on the machine."""

    session: int
    autogroup: str | None  # "/autogroup-123 nice 0", or None where the kernel has none
    nice: int
    cpus: tuple[int, ...]

    @classmethod
    def of(cls, pid: int) -> "Scheduling | None":
        """The process's scheduling, or None if it is gone."""
        try:
            session = os.getsid(pid)
            nice = os.getpriority(os.PRIO_PROCESS, pid)
            cpus = tuple(sorted(os.sched_getaffinity(pid)))
        except (ProcessLookupError, PermissionError, OSError):
            return None
        group = None
        try:
            with open(f"/proc/{pid}/autogroup") as f:
                group = f.read().strip()
        except OSError:
            pass
        return cls(session, group, nice, cpus)

    def key(self) -> tuple[Any, ...]:
        return (self.session, self.autogroup, self.nice, self.cpus)

    def describe(self, driver: "Scheduling | None" = None) -> str:
        same = " (the driver's)" if driver is not None and driver.session == self.session else ""
        group = f", autogroup {self.autogroup.split()[0]}" if self.autogroup else ""
        return f"session {self.session}{same}{group}, nice {self.nice}, CPUs {cpu_list(self.cpus)}"


def cpu_list(cpus: Iterable[int]) -> str:
    cpus = sorted(cpus)
    if cpus and cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1:
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def align(reference: Sequence[int], others: Sequence[int]) -> list[str]:
    """Give ``others`` the nice value and CPU set of ``reference[0]`` (wrenpack's worker).
    Returns what could not be made alike, one line per kind (a session cannot be changed
    from outside; only root may lower a nice value)."""
    ref = next((s for s in map(Scheduling.of, reference) if s is not None), None)
    if ref is None:
        return ["no wrenpack worker to align with"]
    kept: dict[str, list[int]] = {}
    for pid in others:
        mine = Scheduling.of(pid)
        if mine is None:
            continue
        if mine.nice != ref.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, ref.nice)
            except OSError as exc:
                kept.setdefault(f"nice {mine.nice} kept, not {ref.nice} ({exc.strerror})", []).append(pid)
        if mine.cpus != ref.cpus:
            try:
                os.sched_setaffinity(pid, ref.cpus)
            except OSError as exc:
                kept.setdefault(f"CPUs {cpu_list(mine.cpus)} kept, not {cpu_list(ref.cpus)} ({exc.strerror})", []).append(pid)
        if mine.session != ref.session:
            kept.setdefault(f"in session {mine.session}, wrenpack's worker in {ref.session} "
                            "(a session cannot be changed from outside)", []).append(pid)
    return [f"{len(pids)} baseline process{'es' if len(pids) > 1 else ''} {what}" for what, pids in kept.items()]


def check(groups: dict[str, Sequence["int | Scheduling | None"]]) -> str:
    """One line: the scheduling of each side's processes (pids, or the ``Scheduling`` a
    process that has ended ran with), and whether they are all alike."""
    driver = Scheduling.of(os.getpid())
    seen: dict[str, set[Scheduling]] = {}
    for name, items in groups.items():
        scheds = (x if isinstance(x, Scheduling) or x is None else Scheduling.of(x) for x in items)
        seen[name] = {s for s in scheds if s is not None}
    distinct = set().union(*seen.values()) if seen else set()
    auto = autogroup_enabled()
    note = {True: "autogroup on: the CPU is shared per session", False: "autogroup off",
            None: "no autogroup in this kernel"}[auto]
    if len(distinct) == 1:
        (only,) = distinct
        return f"scheduling: {', '.join(seen)} alike: {only.describe(driver)} ({note})"
    parts = []
    for name, scheds in seen.items():
        desc = "; ".join(sorted(s.describe(driver) for s in scheds)) or "no live process"
        parts.append(f"{name}: {desc}")
    return f"scheduling: NOT alike ({note}): " + " | ".join(parts)


def run_like(reference: Sequence[int], argv: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess, Scheduling | None]:
    """``subprocess.run`` of a baseline process, aligned with ``reference`` as soon as it
    exists (it inherits this process's session, nice and CPUs anyway); also returns the
    scheduling it ran with."""
    kwargs.setdefault("check", True)
    check_rc = kwargs.pop("check")
    capture = kwargs.pop("capture_output", False)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    with subprocess.Popen(argv, **kwargs) as proc:
        try:
            if reference:
                align(reference, [proc.pid])
            sched = Scheduling.of(proc.pid)
            out, err = proc.communicate()
        except BaseException:  # (SIGTERM, Ctrl-C: the baseline stops too, as subprocess.run does)
            proc.kill()
            raise
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check_rc:
        done.check_returncode()
    return done, sched


# --------------------------------------------------------------------------- load


class Hogs:
    """``n`` busy-looping processes in this process's session (so in its autogroup,
    where the user's other programs are), stopped when the block ends."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Hogs":
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", self.code()]))
        except BaseException:  # (a signal while starting them: the started ones stop too)
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()

    @staticmethod
    def code() -> str:
        """A busy loop that ends with this process however it ends (SIGKILL too): Linux's
        parent-death signal, asked for before the loop; on a system without it, the
        hog still stops when the block ends. Ctrl-C, which reaches the whole foreground
        process group, is left to the benchmark (a hog printed a KeyboardInterrupt traceback)."""
        return ("import ctypes, os, signal\n"
                "try:\n"
                "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
                "except (OSError, AttributeError):\n"
                "    pass\n"
                f"if os.getppid() != {os.getpid()}:  # (the parent ended before prctl)\n"
                "    raise SystemExit\n"
                "signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C: the benchmark stops it, no traceback)\n"
                "while True: pass")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def describe(self) -> str:
        if not self.n:
            return "no CPU hogs"
        return f"{self.n} CPU hog{'s' if self.n > 1 else ''} in the benchmark's own session"


class ShuffleStages(logging.Handler):
    """The statistics each ``map_reduce`` shuffle logs at DEBUG (bytes, requests, seconds
    per stage), one dict per run; ``attach`` starts collecting, ``print_breakdown`` prints them."""

    LOGGER = "wrenpack.executor.mapreduce"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.runs: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        stats = getattr(record, "wrenpack_shuffle", None)
        if stats is not None:
            self.runs.append(stats)

    def attach(self) -> "ShuffleStages":
        log = logging.getLogger(self.LOGGER)
        log.addHandler(self)
        log.setLevel(logging.DEBUG)
        return self

    def cpu(self) -> list[float]:
        """Each run's task CPU seconds (the "[cpu]" stages, summed over the tasks)."""
        return [sum(v for k, v in r["stages"].items() if k.endswith("[cpu]")) for r in self.runs]

    def print_breakdown(self) -> None:
        """Median and min..max of every stage over the runs, then the last run's shuffle."""
        if not self.runs:
            return
        print(f"where wrenpack's time goes (median of the rounds; task stages are summed over the tasks, "
              f"i.e. CPU-ish seconds on {os.cpu_count()} cores; the phases are wall time):")
        for name in self.runs[-1]["stages"]:
            print(f"  {name:34s} {spread([r['stages'][name] for r in self.runs if name in r['stages']])}")
        last = self.runs[-1]
        mb = last["bytes"] / 1e6
        print(f"  shuffle: {mb:.{0 if mb >= 100 else 1}f} MB in {last['puts']} objects written, {last['gets']} sections "
              f"read; reducers started early, per round: {[r.get('early_reducers', 0) for r in self.runs]}")


def load_note() -> str:
    """The machine's load, printed beside results on a shared machine."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
