"""Wall-time overhead of ``wrenpack profile`` against a bare run of the same call.

Both sides start a fresh Python process for the call, from this process:

* bare:     python -c "import cloudpickle, _workload; _workload.work(N)"
* profiled: wrenpack.profiler.run_profile(_workload.work, (N,), save=False)
            (launcher process + runner process + 10 ms sampling + package mapping)

The runs alternate, after one warm-up of each; medians are reported, and the
ratio profiled/bare end to end (target <= 1.10), the same for the fastest
runs, plus the call's own wall and CPU time inside each (the sampler runs in
another process, so those should be ~1.00).

    python benchmarks/bench_profile_overhead.py [--runs 7] [--n 400000]
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


def bare(n: int) -> tuple[float, float, float]:
    code = (
        "import os, sys, time; sys.path.insert(0, %r); import cloudpickle, _workload; "
        "c0 = sum(os.times()[:2]); _workload.work(%d); print(_workload.work.last_s, sum(os.times()[:2]) - c0)" % (HERE, n)
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    call_s, cpu_s = map(float, out.stdout.split())
    return time.perf_counter() - t0, call_s, cpu_s


def profiled(n: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    prof = run_profile(_workload.work, (n,), save=False)
    return time.perf_counter() - t0, prof.duration_s, prof.cpu_user_s + prof.cpu_sys_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=400_000)
    args = ap.parse_args()
    bare(args.n), profiled(args.n)  # warm-up: page cache, .pyc, packages_distributions()
    b_wall, b_call, b_cpu, p_wall, p_call, p_cpu = [], [], [], [], [], []
    for _ in range(args.runs):
        w, c, u = bare(args.n)
        b_wall.append(w)
        b_call.append(c)
        b_cpu.append(u)
        w, c, u = profiled(args.n)
        p_wall.append(w)
        p_call.append(c)
        p_cpu.append(u)
    med = statistics.median
    print(f"workload: _workload.work({args.n:,}), {args.runs} runs each, alternating, after one warm-up")
    print(f"bare      end to end: median {med(b_wall):.3f} s  (min {min(b_wall):.3f}, max {max(b_wall):.3f}); call {med(b_call):.3f} s")
    print(f"profiled  end to end: median {med(p_wall):.3f} s  (min {min(p_wall):.3f}, max {max(p_wall):.3f}); call {med(p_call):.3f} s")
    ratio = med(p_wall) / med(b_wall)
    print(f"overhead ratio, end to end (median profiled / median bare): {ratio:.3f}x  (target <= 1.10x)")
    print(f"overhead ratio, end to end, fastest runs (min / min):      {min(p_wall) / min(b_wall):.3f}x")
    print(f"overhead ratio, the call itself (wall):                    {med(p_call) / med(b_call):.3f}x")
    if med(b_cpu) > 0:
        print(f"overhead ratio, the call itself (CPU, user+sys):           {med(p_cpu) / med(b_cpu):.3f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other load makes wall times noisy)")
    print(f"absolute extra per profile: {med(p_wall) - med(b_wall):+.3f} s")


if __name__ == "__main__":
    main()
