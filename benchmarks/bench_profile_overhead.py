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

The profiler runs the call in a session of its own (``launcher.py`` starts
its runner with ``setsid``), so with autogroup scheduling it gets a CPU share
of its own: bare runs in a session of its own too, with this process's nice
value and CPUs as the runner has them (``_fair``); the output says so.

    python benchmarks/bench_profile_overhead.py [--rounds 7] [--fn nothing|work] [--n 400000] [--hogs 0]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _fair  # noqa: E402
import _workload  # noqa: E402

from wrenpack.profiler import run_profile  # noqa: E402


#: the scheduling each bare run had (its own session, as the profiler's runner)
BARE_SCHEDULING: list[_fair.Scheduling | None] = []


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _fair.add_arguments(ap, rounds=7)
    ap.add_argument("--fn", choices=("nothing", "work"), default="nothing")
    ap.add_argument("--n", type=int, default=None, help="the argument of work (default: its own)")
    args = ap.parse_args()
    n = args.n if args.fn == "work" else None
    with _fair.Hogs(args.hogs) as hogs:
        warm = {name: way(args.fn, n) for name, way in WAYS.items()}
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        names = list(WAYS)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                times[name].append(WAYS[name](args.fn, n))
    me = _fair.Scheduling.of(os.getpid())
    ran = [sch for sch in BARE_SCHEDULING if sch is not None]
    own = bool(ran) and all(sch.session != me.session for sch in ran)
    alike = all((sch.nice, sch.cpus) == (me.nice, me.cpus) for sch in ran)
    auto = {True: "autogroup on", False: "autogroup off", None: "no autogroup"}[_fair.autogroup_enabled()]
    print(f"scheduling: bare ran {'in a session of its own' if own else 'NOT in a session of its own'} as the profiler's "
          f"runner does (setsid), {'with' if alike else 'NOT with'} this process's nice {me.nice} and CPUs "
          f"{_fair.cpu_list(me.cpus)}, which the runner inherits ({auto}); {hogs.describe()}")
    print(f"call: _workload.{args.fn}({'' if n is None else n}); {args.rounds} rounds, order rotated each round, after one warm-up")
    print("warm-up (first run; builds the package map's disk cache if absent): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in warm.items()))
    for name in names:
        print(f"{name:<5} {_fair.spread(times[name])}")
    for name in ("cli", "api"):
        extra = [p - b for p, b in zip(times[name], times["bare"])]
        print(f"{name} extra over bare: {_fair.spread(extra)}  (goal <= +0.150 s)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machine: other load moves these)")


if __name__ == "__main__":
    main()
