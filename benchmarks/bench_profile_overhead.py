"""What ``wrenpack profile`` costs over a plain run of the same call.

Three ways of running the call, each a fresh process started from here, in
alternated order (the order rotates every round), after one warm-up of each:

* bare:     python -c "import _workload; _workload.FN()"
* cli:      python -m wrenpack profile _workload:FN --no-save   (what a user types)
* api:      wrenpack.profiler.run_profile(_workload.FN, save=False), from this process
            (launcher process + runner process + sampling + package mapping)

Printed: each one's median and min..max wall time, and the extra over bare
(median and min..max of the per-round differences). The goal is <= +0.15 s
for a function that does nothing (the default). The warm-up's figures are
printed too: the first profile in an environment builds the package map's
disk cache.

wrenpack's and ``_workload``'s bytecode is compiled first, as an installed wheel
has it: with PYTHONDONTWRITEBYTECODE set (or a read-only tree) every run would
otherwise compile the profiler's modules from source, ~0.1 s that no installed
copy pays.

Then, where strace is installed (``--phases N``, default 5; 0 skips), N more
CLI runs and N bare runs under ``strace -f --seccomp-bpf -e trace=execve,exit_group``
(only process starts and exits stop the tracee) give the time of each phase:
the CLI's start until it starts the launcher, the launcher until it spawns the
runner, the runner's life (beside a bare run's), the launcher's last report,
and the CLI's reading and printing of the figures.

The profiler runs the call in a session of its own (``launcher.py`` starts
its runner with ``setsid``), so with autogroup scheduling it gets a CPU share
of its own: bare runs in a session of its own too, with this process's nice
value and CPUs as the runner has them (``_fair``); the output says so.

    python benchmarks/bench_profile_overhead.py [--rounds 7] [--fn nothing|work] [--n 400000] [--hogs 0] [--phases 5]
"""
from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _fair  # noqa: E402
import _workload  # noqa: E402

from wrenpack.profiler import run_profile  # noqa: E402


#: the scheduling each bare run had (its own session, as the profiler's runner)
BARE_SCHEDULING: list[_fair.Scheduling | None] = []
#: CPU seconds (user + system, this process and its waited-for children) of each way's runs
CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(name: str, way, fn: str, n: int | None) -> float:
    """Run one way; its wall seconds (its CPU seconds, all processes, go to ``CPU``)."""
    c0 = _cpu()
    wall = way(fn, n)
    CPU.setdefault(name, []).append(_cpu() - c0)
    return wall


def bare(fn: str, n: int | None) -> float:
    call = f"_workload.{fn}({'' if n is None else n})"
    t0 = time.perf_counter()
    _, sched = _fair.run_like([], [sys.executable, "-c", f"import _workload; {call}"], cwd=HERE,
                              start_new_session=True)  # as the profiler's runner: launcher.py's setsid
    elapsed = time.perf_counter() - t0
    BARE_SCHEDULING.append(sched)
    return elapsed


def cli(fn: str, n: int | None) -> float:
    argv = [sys.executable, "-m", "wrenpack", "profile", f"_workload:{fn}", "--no-save"] + ([] if n is None else [str(n)])
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=HERE, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def api(fn: str, n: int | None) -> float:
    t0 = time.perf_counter()
    run_profile(getattr(_workload, fn), () if n is None else (n,), save=False)
    return time.perf_counter() - t0


WAYS = {"bare": bare, "cli": cli, "api": api}


def compile_bytecode() -> None:
    """Write the bytecode an installed wheel would have (compileall writes it whatever PYTHONDONTWRITEBYTECODE says)."""
    import wrenpack

    compileall.compile_dir(os.path.dirname(wrenpack.__file__), quiet=1)
    compileall.compile_file(os.path.join(HERE, "_workload.py"), quiet=1)


#: (label, from event, to event); events are (process, "exec"|"exit"), processes in the order they start
PHASES = [
    ("CLI start until it starts the launcher (interpreter, site, argparse, arguments)", ("cli", "exec"), ("launcher", "exec")),
    ("launcher (python -I -S) until it spawns the runner", ("launcher", "exec"), ("runner", "exec")),
    ("runner: interpreter, site, cloudpickle, load, call, result, code hash", ("runner", "exec"), ("runner", "exit")),
    ("launcher's last report after the runner exits", ("runner", "exit"), ("launcher", "exit")),
    ("CLI after the launcher: figures, package map, report (rich), exit", ("launcher", "exit"), ("cli", "exit")),
]


def _traced(argv: list[str], strace: str) -> dict[tuple[str, str], float]:
    """Run ``argv`` under strace; {(process, event): seconds since the first exec}."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run([strace, "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,exit_group", "-o", out.name, *argv],
                       cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        events, order = {}, []
        for line in out.read().splitlines():
            fields = line.split(None, 2)
            if len(fields) < 3 or "resumed" in line:
                continue
            kind = "exec" if fields[2].startswith("execve(") else "exit" if fields[2].startswith("exit_group(") else None
            if kind is None or (kind == "exec" and "= -1" in fields[2]):
                continue
            if fields[0] not in order:
                order.append(fields[0])
            events.setdefault((fields[0], kind), float(fields[1]))
    names = dict(zip(order, ("cli", "launcher", "runner")))
    t0 = min(events.values())
    return {(names.get(pid, pid), kind): t - t0 for (pid, kind), t in events.items()}


def phases(fn: str, n: int | None, runs: int) -> None:
    """The CLI's time by phase, from process starts and exits (strace), beside a bare run's."""
    strace = shutil.which("strace")
    if runs <= 0:
        return
    if strace is None:
        print("phases: strace is not installed; no per-phase breakdown")
        return
    call = f"_workload.{fn}({'' if n is None else n})"
    cli_argv = [sys.executable, "-m", "wrenpack", "profile", f"_workload:{fn}", "--no-save"] + ([] if n is None else [str(n)])
    bare_argv = [sys.executable, "-c", f"import _workload; {call}"]
    got: list[dict] = []
    bare_s: list[float] = []
    try:
        for _ in range(runs):
            got.append(_traced(cli_argv, strace))
            bare_s.append(_traced(bare_argv, strace)[("cli", "exit")])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"phases: strace could not trace here ({exc}); no per-phase breakdown")
        return
    print(f"phases of the CLI, {runs} runs under strace (process starts and exits only), median ms:")
    for label, a, b in PHASES:
        xs = [(g[b] - g[a]) * 1000 for g in got if a in g and b in g]
        if xs:
            print(f"  {statistics.median(xs):7.1f}  {label}")
    print(f"  {statistics.median([g[('cli', 'exit')] for g in got]) * 1000:7.1f}  the whole CLI run; a bare run "
          f"(interpreter, site, import, call): {statistics.median(bare_s) * 1000:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _fair.add_arguments(ap, rounds=7)
    ap.add_argument("--fn", choices=("nothing", "work"), default="nothing")
    ap.add_argument("--n", type=_fair.at_least(1, "a whole number of rows"), default=None, help="the argument of work (default: its own)")
    ap.add_argument("--phases", type=_fair.at_least(0, "a whole number of runs"), default=5, help="CLI runs under strace for the per-phase breakdown (0: none)")
    args = _fair.parse_args(ap)
    n = args.n if args.fn == "work" else None
    compile_bytecode()
    with _fair.Hogs(args.hogs) as hogs:
        warm = {name: way(args.fn, n) for name, way in WAYS.items()}
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        names = list(WAYS)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                times[name].append(timed(name, WAYS[name], args.fn, n))
    me = _fair.Scheduling.of(os.getpid())
    ran = [sch for sch in BARE_SCHEDULING if sch is not None]
    own = bool(ran) and all(sch.session != me.session for sch in ran)
    alike = all((sch.nice, sch.cpus) == (me.nice, me.cpus) for sch in ran)
    auto = {True: "autogroup on", False: "autogroup off", None: "no autogroup"}[_fair.autogroup_enabled()]
    print(f"scheduling: bare ran {'in a session of its own' if own else 'NOT in a session of its own'} as the profiler's "
          f"runner does (setsid), {'with' if alike else 'NOT with'} this process's nice {me.nice} and CPUs "
          f"{_fair.cpu_list(me.cpus)}, which the runner inherits ({auto}); {hogs.describe()}")
    print("bytecode: wrenpack's modules and _workload compiled beforehand, as an installed wheel has them"
          + (" (PYTHONDONTWRITEBYTECODE is set here)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""))
    print(f"call: _workload.{args.fn}({'' if n is None else n}); {_fair.rounds_label(args.rounds)}, order rotated each round, after one warm-up")
    print("warm-up (first run; builds the package map's disk cache if absent): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in warm.items()))
    for name in names:
        print(f"{name:<5} {_fair.spread(times[name])}")
    for name in ("cli", "api"):
        extra = [p - b for p, b in zip(times[name], times["bare"])]
        print(f"{name} extra over bare: {_fair.spread(extra)}  (goal <= +0.150 s)")
    # CPU time moves less with other load than wall time: what each way costs, all its processes together
    print("CPU per run (user + system, all processes; less moved by other load than wall time): " + ", ".join(
        f"{name} {statistics.median(CPU[name]) * 1000:.0f} ms ({min(CPU[name]) * 1000:.0f}-{max(CPU[name]) * 1000:.0f})"
        for name in names))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machine: other load moves these)")
    phases(args.fn, n, args.phases)


if __name__ == "__main__":
    _fair.main(main)
