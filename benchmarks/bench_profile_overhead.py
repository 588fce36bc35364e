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

    python benchmarks/bench_profile_overhead.py [--rounds 7] [--fn nothing|work] [--n 400000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _workload  # noqa: E402

from wrenpack.profiler import run_profile  # noqa: E402


def bare(fn: str, n: int | None) -> float:
    call = f"_workload.{fn}({'' if n is None else n})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import _workload; {call}"], cwd=HERE, check=True)
    return time.perf_counter() - t0


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


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fn", choices=("nothing", "work"), default="nothing")
    ap.add_argument("--n", type=int, default=None, help="the argument of work (default: its own)")
    args = ap.parse_args()
    n = args.n if args.fn == "work" else None
    warm = {name: way(args.fn, n) for name, way in WAYS.items()}
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    names = list(WAYS)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            times[name].append(WAYS[name](args.fn, n))
    print(f"call: _workload.{args.fn}({'' if n is None else n}); {args.rounds} rounds, order rotated each round, after one warm-up")
    print("warm-up (first run; builds the package map's disk cache if absent): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in warm.items()))
    for name in names:
        print(f"{name:<5} {spread(times[name])}")
    for name in ("cli", "api"):
        extra = [p - b for p, b in zip(times[name], times["bare"])]
        print(f"{name} extra over bare: {spread(extra).replace(' s', ' s', 1)}  (goal <= +0.150 s)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machine: other load moves these)")


if __name__ == "__main__":
    main()
