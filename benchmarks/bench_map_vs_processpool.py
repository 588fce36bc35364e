"""1,000 trivial calls: wrenpack's local backend (limits enforced) against
``concurrent.futures.ProcessPoolExecutor(2)`` on the same work, in the same run.

Prints per-round times, medians and the ratio (wrenpack / process pool), for
"warm" (pool or workers already started) and "cold" (started inside the timing).
Target (issue 2): within 5x of the process pool.

    python benchmarks/bench_map_vs_processpool.py [--calls 1000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import time

import wrenpack


def trivial(x):
    return x + 1


def time_pool(pool: cf.ProcessPoolExecutor, n: int) -> float:
    t0 = time.perf_counter()
    futs = [pool.submit(trivial, i) for i in range(n)]
    results = [f.result() for f in futs]
    elapsed = time.perf_counter() - t0
    assert results == [i + 1 for i in range(n)]
    return elapsed


def time_wrenpack(f: wrenpack.RemoteFunction, n: int) -> float:
    t0 = time.perf_counter()
    results = wrenpack.get(f.map(range(n)), progress=False)
    elapsed = time.perf_counter() - t0
    assert results == [i + 1 for i in range(n)]
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--store", default=None, help="object store location (default: wrenpack's default)")
    args = ap.parse_args()
    n = args.calls
    # The default store (a memory-backed directory where the machine has one), as users get it;
    # --store DIR measures another.
    store = args.store

    rows: dict[str, list[float]] = {"pool warm": [], "wrenpack warm": [], "pool cold": [], "wrenpack cold": []}
    with cf.ProcessPoolExecutor(args.workers) as pool, wrenpack.Executor(storage=store, concurrency=args.workers) as ex:
        f = wrenpack.remote(trivial, executor=ex, memory=256, timeout=60)
        time_pool(pool, 50)
        time_wrenpack(f, 50)
        for _ in range(args.rounds):
            # alternate so drift on a noisy machine hits both alike
            rows["pool warm"].append(time_pool(pool, n))
            rows["wrenpack warm"].append(time_wrenpack(f, n))
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        with cf.ProcessPoolExecutor(args.workers) as pool:
            time_pool(pool, n)
        rows["pool cold"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with wrenpack.Executor(storage=store, concurrency=args.workers) as ex:
            time_wrenpack(wrenpack.remote(trivial, executor=ex, memory=256, timeout=60), n)
        rows["wrenpack cold"].append(time.perf_counter() - t0)

    print(f"{n} trivial calls, {args.workers} workers, {args.rounds} rounds (seconds)")
    for name, values in rows.items():
        print(f"  {name:14s} median {statistics.median(values):.3f}  all {' '.join(f'{v:.3f}' for v in values)}")
    for kind in ("warm", "cold"):
        ratio = statistics.median(rows[f"wrenpack {kind}"]) / statistics.median(rows[f"pool {kind}"])
        print(f"ratio wrenpack/processpool ({kind}, medians): {ratio:.2f}x  (target <= 5x)")


if __name__ == "__main__":
    main()
