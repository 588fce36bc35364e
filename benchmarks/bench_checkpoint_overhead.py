"""Checkpoint splitting overhead: the same ~10 s of work run as one uninterrupted
call (timeout 60 s) and split by checkpoints under a 1 s timeout, in the same run,
the two alternating (which goes first flips every round).

Both run on the same warm worker (one executor, concurrency 1), so they have the
same scheduling by construction; the output shows it. Prints median and
min..max of each, the overhead ratio of the medians (split / uninterrupted;
target <= 1.05x) and of each round, segment count, save time and state size.

    python benchmarks/bench_checkpoint_overhead.py [--steps 1000] [--step-ms 10] [--rounds 5] [--state-kb 64] [--hogs 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fair  # noqa: E402

import wrenpack  # noqa: E402


def work(steps: int, step_s: float, state_kb: int) -> float:
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "acc": 0.0, "payload": [0.5] * (state_kb * 1024 // 8)})
    while state["i"] < steps:
        t_end = time.perf_counter() + step_s
        x = 0.0
        while time.perf_counter() < t_end:
            x += 1.0
        state["acc"] += state["i"] * 0.5
        state["i"] += 1
        cp.offer(state)
    return state["acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=_fair.at_least(1, "a whole number of steps"), default=1000)
    ap.add_argument("--step-ms", type=_fair.positive("a number of milliseconds"), default=10.0)
    _fair.add_arguments(ap)
    ap.add_argument("--state-kb", type=_fair.at_least(0, "a whole number of KB"), default=64)
    ap.add_argument("--timeout", type=_fair.positive("a number of seconds"), default=1.0)
    args = _fair.parse_args(ap)
    step_s = args.step_ms / 1000
    expected = sum(i * 0.5 for i in range(args.steps))
    whole, split, segments, stats = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="wrenpack-bench-") as where, \
            _fair.shut_down_after(wrenpack.Executor(storage=where, concurrency=1)) as ex, _fair.Hogs(args.hogs) as hogs:
        long_run = wrenpack.remote(work, executor=ex, timeout=60)
        short_run = wrenpack.remote(work, executor=ex, timeout=args.timeout)
        long_run.remote(5, step_s, 1).result()  # warm the worker
        seen: list[_fair.Scheduling | None] = []

        def uninterrupted() -> None:
            t0 = time.perf_counter()
            assert long_run.remote(args.steps, step_s, args.state_kb).result() == expected
            whole.append(time.perf_counter() - t0)

        def checkpointed() -> None:
            t0 = time.perf_counter()
            fut = short_run.remote(args.steps, step_s, args.state_kb)
            assert fut.result() == expected
            split.append(time.perf_counter() - t0)
            segments.append(fut.segments)
            stats.extend(s.get("checkpoint", {}) for s in fut.segment_statuses)

        systems = {"uninterrupted": uninterrupted, "checkpointed": checkpointed}
        for rnd in range(args.rounds):
            for name in _fair.order(list(systems), rnd):
                systems[name]()
                seen.extend(map(_fair.Scheduling.of, ex.backend.worker_pids()))
        scheduling = _fair.check({"uninterrupted and checkpointed (one worker)": seen})
        load = _fair.load_note()
    ratio = statistics.median(split) / statistics.median(whole)
    print(f"{_fair.rounds_label(args.rounds)}, the two alternating; {hogs.describe()}; {load} at the end")
    print(scheduling)
    print(f"{args.steps} steps x {args.step_ms:g} ms, state ~{args.state_kb} KB, timeout {args.timeout:g} s")
    print(f"  uninterrupted   {_fair.spread(whole)}")
    print(f"  checkpointed    {_fair.spread(split)}")
    print(f"  segments        {segments}")
    saves = [s["save_s"] for s in stats if s.get("saves")]
    sizes = [s["state_bytes"] for s in stats if s.get("saves")]
    if saves:
        print(f"  save time median {statistics.median(saves) * 1000:.2f} ms (max {max(saves) * 1000:.2f} ms) over {len(saves)} saves, "
              f"state {statistics.median(sizes) / 1024:.1f} KB")
    else:  # (a run shorter than its timeout's checkpoint point: nothing to time)
        print(f"  no checkpoint was saved: each call ended before its first save; give --steps x --step-ms "
              f"well over --timeout {args.timeout:g} s to measure them")
    print(f"overhead ratio checkpointed/uninterrupted (medians): {ratio:.3f}x  (target <= 1.05x); per round: "
          f"{_fair.spread([b / a for a, b in zip(whole, split)], 'x')}")


if __name__ == "__main__":
    _fair.main(main)
