"""A diagnostic: where the CPU-bound figure of ``bench_map_vs_processpool.py`` goes.

Each round runs two drivers in turn (order flipped every round, as ``_fair``
does), each a fresh process in this benchmark's session: wrenpack's local
backend and ``ProcessPoolExecutor(2)``, each mapping ``--calls`` CPU-bound calls
of about ``--call-s`` seconds over 2 workers, ``--maps`` times. Every call
returns its worker's pid and its own start and end, so per map the driver
reports:

- the share of the map's wall time its workers spent inside calls (busy time
  of both workers over twice the wall time): what the scheduler, the gaps
  between calls and the tail of the map leave unused;
- the median gap a worker leaves between the end of one call and the start of
  its next;
- the calls each worker ran, and how long before the map's end the first
  worker to finish ran out of calls (the tail);
- the driver process's own CPU over the map (its threads compete with the
  workers for the 2 cores).

Medians over rounds and maps, with min..max.

    python benchmarks/cpu_busy_share.py [--rounds 5] [--maps 3] [--calls 40] [--call-s 0.1] [--hogs N]

No target: the figure the issue's target compares is ``bench_map_vs_processpool.py --only cpu``'s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fair  # noqa: E402

_DRIVER = r"""
import json, os, statistics, sys, time
import concurrent.futures as cf

def spin(n):
    t0 = time.time()
    total = 0
    for i in range(n):
        total = (total + i * i) % 1000003
    return (os.getpid(), t0, time.time())

def main(kind, maps, calls, n):
    if kind == "processpool":
        ex = cf.ProcessPoolExecutor(2)
        list(ex.map(spin, [1] * 4))
        run = lambda: list(ex.map(spin, [n] * calls))
    else:
        import wrenpack
        ex = wrenpack.Executor(concurrency=2)
        f = wrenpack.remote(spin, executor=ex, memory=1024, timeout=60)
        wrenpack.get(f.map([1] * 4), progress=False)
        run = lambda: wrenpack.get(f.map([n] * calls), progress=False)
    out = []
    for _ in range(maps):
        c0 = sum(os.times()[:2])
        t0 = time.time()
        got = run()
        t1 = time.time()
        driver_cpu = sum(os.times()[:2]) - c0
        by = {}
        for pid, a, b in got:
            by.setdefault(pid, []).append((a, b))
        gaps, busy, ends, counts = [], 0.0, [], []
        for spans in by.values():
            spans.sort()
            counts.append(len(spans))
            busy += sum(b - a for a, b in spans)
            gaps += [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
            ends.append(spans[-1][1])
        out.append({"wall": t1 - t0, "busy_share": busy / (2 * (t1 - t0)), "gap": statistics.median(gaps) if gaps else 0.0,
                    "counts": sorted(counts), "tail": max(ends) - min(ends) if len(ends) > 1 else t1 - t0,
                    "driver_cpu": driver_cpu})
    ex.shutdown()
    print(json.dumps(out))

main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
"""

SYSTEMS = ("wrenpack", "processpool")


def _spins_for(call_s: float) -> int:
    """Loop rounds of ``spin`` that take about ``call_s`` here (timed in a fresh process, best of 3)."""
    code = ("import time\nbest=9e9\nfor _ in range(3):\n t=time.perf_counter();total=0\n for i in range(200000):\n"
            "  total=(total+i*i)%1000003\n best=min(best,time.perf_counter()-t)\nprint(best)")
    best = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return max(1, int(200000 * call_s / best))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fair.add_arguments(ap)
    ap.add_argument("--maps", type=_fair.at_least(1, "a whole number of maps"), default=3, help="maps per driver and round (default 3)")
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=40, help="calls per map (default 40)")
    ap.add_argument("--call-s", type=_fair.positive("a number of seconds"), default=0.1, help="seconds of CPU per call, roughly (default 0.1)")
    args = _fair.parse_args(ap)
    n = _spins_for(args.call_s)
    print(f"{args.calls} CPU-bound calls of ~{args.call_s:g} s on 2 workers, {args.maps} maps per driver, {_fair.rounds_label(args.rounds)}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}

    def system(name: str) -> Any:
        def one_round() -> None:
            proc = subprocess.run([sys.executable, "-c", _DRIVER, name, str(args.maps), str(args.calls), str(n)],
                                  capture_output=True, text=True, check=True)
            maps = json.loads(proc.stdout.strip().splitlines()[-1])
            got[name].extend(maps)
            print(f"  {name}: " + "; ".join(f"{m['wall']:.3f} s, busy {m['busy_share']:.3f}, calls {m['counts']}"
                                           for m in maps), flush=True)
        return one_round

    hogs = _fair.run_rounds({name: system(name) for name in SYSTEMS}, args.rounds, args.hogs)
    print(f"{hogs.describe()}; every driver is a child of this process, in its session")
    for name, maps in got.items():
        print(f"  {name}")
        print(f"    map wall time          {_fair.spread([m['wall'] for m in maps])}")
        print(f"    workers' busy share    {_fair.spread([m['busy_share'] for m in maps], '', 1.0, '.3f').replace('  ', ' ')}")
        print(f"    gap between calls      {_fair.spread([m['gap'] for m in maps], 'ms', 1e3, '.2f')}")
        print(f"    tail (first idle)      {_fair.spread([m['tail'] for m in maps], 'ms', 1e3, '.1f')}")
        print(f"    driver CPU per map     {_fair.spread([m['driver_cpu'] for m in maps], 'ms', 1e3, '.0f')}")
        print(f"    calls per worker       {sorted({tuple(m['counts']) for m in maps})}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _fair.main(main)
