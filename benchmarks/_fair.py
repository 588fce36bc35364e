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
  ``ShuffleStages`` (what ``map_reduce`` logs per run).

Benchmarks only: the library never imports this.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

#: the fewest rounds a benchmark runs by default
ROUNDS = 5


def add_arguments(ap: argparse.ArgumentParser, rounds: int = ROUNDS, hogs: bool = True) -> None:
    """``--rounds`` (default at least ``ROUNDS``) and, where load makes sense, ``--hogs N``."""
    ap.add_argument("--rounds", type=int, default=max(rounds, ROUNDS),
                    help=f"rounds, systems alternating in each (default {max(rounds, ROUNDS)})")
    if hogs:
        ap.add_argument("--hogs", type=int, default=0,
                        help="busy-looping processes in this benchmark's own session for the whole run (a busy machine)")


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
        if reference:
            align(reference, [proc.pid])
        sched = Scheduling.of(proc.pid)
        out, err = proc.communicate()
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
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()

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
