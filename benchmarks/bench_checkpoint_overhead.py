"""Checkpoint splitting overhead: the same ~10 s of work run as one uninterrupted
call (timeout 60 s) and split by checkpoints under a 1 s timeout, in the same run.

Prints medians, the overhead ratio (split / uninterrupted; target <= 1.05x),
segment count, save time and state size.

    python benchmarks/bench_checkpoint_overhead.py [--steps 1000] [--step-ms 10] [--rounds 3] [--state-kb 64]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import wrenpack


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
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--step-ms", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--state-kb", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args()
    step_s = args.step_ms / 1000
    expected = sum(i * 0.5 for i in range(args.steps))
    whole, split, segments, stats = [], [], [], []
    with wrenpack.Executor(storage=tempfile.mkdtemp(prefix="wrenpack-bench-"), concurrency=1) as ex:
        long_run = wrenpack.remote(work, executor=ex, timeout=60)
        short_run = wrenpack.remote(work, executor=ex, timeout=args.timeout)
        long_run.remote(5, step_s, 1).result()  # warm the worker
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            assert long_run.remote(args.steps, step_s, args.state_kb).result() == expected
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fut = short_run.remote(args.steps, step_s, args.state_kb)
            assert fut.result() == expected
            split.append(time.perf_counter() - t0)
            segments.append(fut.segments)
            stats.extend(s.get("checkpoint", {}) for s in fut.segment_statuses)
    ratio = statistics.median(split) / statistics.median(whole)
    print(f"{args.steps} steps x {args.step_ms:g} ms, state ~{args.state_kb} KB, timeout {args.timeout:g} s, {args.rounds} rounds")
    print(f"  uninterrupted   median {statistics.median(whole):.3f} s  all {' '.join(f'{v:.3f}' for v in whole)}")
    print(f"  checkpointed    median {statistics.median(split):.3f} s  all {' '.join(f'{v:.3f}' for v in split)}")
    print(f"  segments        {segments}")
    saves = [s["save_s"] for s in stats if s.get("saves")]
    sizes = [s["state_bytes"] for s in stats if s.get("saves")]
    print(f"  save time median {statistics.median(saves) * 1000:.2f} ms (max {max(saves) * 1000:.2f} ms) over {len(saves)} saves, "
          f"state {statistics.median(sizes) / 1024:.1f} KB")
    print(f"overhead ratio checkpointed/uninterrupted (medians): {ratio:.3f}x  (target <= 1.05x)")


if __name__ == "__main__":
    main()
