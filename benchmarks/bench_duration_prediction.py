"""How well a scaling run predicts a call at 8x its largest measured size, quiet and under load.

Two systems, alternated within each round (their order flips every round):

* wall:     the earlier method: one call per size, its wall time fitted
            (``scaling.time_fit``), as the settings used to be made
* cpu+wait: the current method: CPU time and non-CPU wait fitted apart, short
            calls repeated on fresh inputs (``scaling.predicted.duration_s``)

Each round then measures the call at 8x in a fresh process, as a user's call
would run. The truth is that call's duration on a core of its own: its CPU
time plus its non-CPU wait (its wall time minus the time it waited for a core,
which is the machine's load, not the call's; on a quiet machine the two agree).
The error is prediction / truth - 1; the goal is within +-30%.

    python benchmarks/bench_duration_prediction.py [--rounds 5] [--hogs 2]

``--hogs N`` runs N busy-looping processes for the whole run (they are stopped
at the end). The machine may be shared: the load average is printed.
Both methods and the truth run the function the same way (the profiler's
runner, in a session of its own, at this process's nice value and CPUs), so
their scheduling is alike by construction; the output says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _duration_targets as t  # noqa: E402
import _fair  # noqa: E402

from wrenpack.profiler import api  # noqa: E402

#: name -> (function, make_input, measured sizes); the target is 8x the largest
CASES = {
    "O(n)": (t.linear, t.make_n, [200_000, 400_000, 600_000, 800_000]),
    "O(n log n)": (t.nlogn, t.make_floats, [25_000, 50_000, 75_000, 100_000]),
    "O(n^2)": (t.quadratic, t.make_n, [300, 600, 900, 1200]),
}
FACTOR = 8
GOAL = 0.30


def predict(system: str, fn, make, sizes: list[int], target: int) -> float:
    if system == "wall":
        saved = api.MIN_TIMED_S
        api.MIN_TIMED_S = 0.0  # one call per size, as before
        try:
            sc = api.predict_scaling(fn, make, sizes, target, save=False).scaling
        finally:
            api.MIN_TIMED_S = saved
        return sc["time_fit"]["upper"]["prediction"]
    sc = api.predict_scaling(fn, make, sizes, target, save=False).scaling
    return sc["predicted"]["duration_s"]


def actual(fn, make, target: int) -> dict[str, float]:
    r = api._measure(fn, {"args": (), "kwargs": {}}, make_input=make, size=target)
    return {"wall": r["duration_s"], "truth": r["cpu_s"] + (r["wait_s"] or 0.0), "cpu": r["cpu_s"], "runq": r["runq_s"] or 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _fair.add_arguments(ap)
    args = _fair.parse_args(ap)
    errors: dict[tuple[str, str], list[float]] = {}
    walls: dict[str, list[float]] = {}
    truths: dict[str, list[float]] = {}
    started = time.perf_counter()
    with _fair.Hogs(args.hogs) as busy:
        for rnd in range(args.rounds):
            order = _fair.order(("wall", "cpu+wait"), rnd)
            for name, (fn, make, sizes) in CASES.items():
                target = FACTOR * sizes[-1]
                preds = {system: predict(system, fn, make, sizes, target) for system in order}
                got = actual(fn, make, target)
                walls.setdefault(name, []).append(got["wall"])
                truths.setdefault(name, []).append(got["truth"])
                for system, p in preds.items():
                    errors.setdefault((name, system), []).append(p / got["truth"] - 1)
                print(f"round {rnd + 1} {name:<10} truth {got['truth']:.3f} s (wall {got['wall']:.3f}, waited for a core "
                      f"{got['runq']:.3f}); predicted: " + ", ".join(f"{s} {preds[s]:.3f}" for s in order), flush=True)
    print()
    print(f"{_fair.rounds_label(args.rounds)}, hogs={args.hogs}, target = {FACTOR}x the largest measured size, "
          f"{time.perf_counter() - started:.0f} s; {_fair.load_note()} at the end")
    me = _fair.Scheduling.of(os.getpid())
    print(f"scheduling: both methods and the truth alike: the profiler's runner, in a session of its own, nice {me.nice}, "
          f"CPUs {_fair.cpu_list(me.cpus)} (this process's); {busy.describe()}")
    print(f"{'function':<11} {'truth (median)':>14}  {'wall':>7}  {'system':<9} {'median error':>12}  {'min .. max':>17}  within +-{GOAL:.0%}")
    for name in CASES:
        for system in ("wall", "cpu+wait"):
            e = errors[(name, system)]
            ok = all(abs(x) <= GOAL for x in e)
            print(f"{name:<11} {statistics.median(truths[name]):>12.3f} s  {statistics.median(walls[name]):>5.3f} s  {system:<9} "
                  f"{statistics.median(e):>+12.1%}  {min(e):>+7.1%} .. {max(e):>+7.1%}  {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    _fair.main(main)
