"""What authenticating store objects costs (issue 14): the same maps with
sealing on and off, in one run, alternating, medians.

Two local executors with their own warm workers: one as shipped, one whose
client and workers skip sealing (``wrenpack.auth._enabled = False``; the workers
get it from ``_WRENPACK_BENCHMARK_NO_AUTH``, a switch only this benchmark sets).

* ``1000 calls``: the 1,000 trivial calls of bench_map_vs_processpool.
* ``10 MiB``: calls that take a 10 MiB argument (a sealed input object) and
  return a 10 MiB result (a sealed result object): four MACs of 10 MiB per call.

Target: under 5% extra.

    python benchmarks/bench_auth_overhead.py [--rounds 7] [--big-calls 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import wrenpack
from wrenpack import auth


def trivial(x):
    return x + 1


def echo_big(data: bytes) -> bytes:
    return data[::-1]


def _time(f: wrenpack.RemoteFunction, items: list) -> float:
    t0 = time.perf_counter()
    out = wrenpack.get(f.map(items), progress=False)
    elapsed = time.perf_counter() - t0
    assert len(out) == len(items)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--big-calls", type=int, default=8)
    ap.add_argument("--mib", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--store", default=None, help="object store location (default: wrenpack's default)")
    args = ap.parse_args()

    small = list(range(args.calls))
    big = [os.urandom(args.mib * 2**20) for _ in range(args.big_calls)]
    kw = dict(storage=args.store, concurrency=args.workers)
    executors = {}
    for mode in ("auth", "no auth"):
        if mode == "no auth":
            os.environ["_WRENPACK_BENCHMARK_NO_AUTH"] = "1"  # inherited by this executor's workers
            auth._enabled = False
        ex = wrenpack.Executor(**kw)
        fs = (wrenpack.remote(trivial, executor=ex, memory=256, timeout=120),
              wrenpack.remote(echo_big, executor=ex, memory=1024, timeout=120))
        _time(fs[0], small[:50])  # start the workers (with this mode's environment)
        _time(fs[1], big[:2])
        executors[mode] = (ex, fs)
        os.environ.pop("_WRENPACK_BENCHMARK_NO_AUTH", None)
        auth._enabled = True

    rows: dict[str, list[float]] = {f"{w} {m}": [] for w in ("1000 calls", f"{args.mib} MiB") for m in executors}
    try:
        for r in range(args.rounds):
            order = list(executors) if r % 2 == 0 else list(reversed(executors))  # alternate who goes first
            for mode in order:
                _, (f_small, f_big) = executors[mode]
                auth._enabled = mode == "auth"
                rows[f"1000 calls {mode}"].append(_time(f_small, small))
                rows[f"{args.mib} MiB {mode}"].append(_time(f_big, big))
            auth._enabled = True
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()), flush=True)
    finally:
        auth._enabled = True
        for ex, _ in executors.values():
            ex.shutdown()

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nmedians over {args.rounds} rounds ({args.calls} trivial calls; {args.big_calls} calls moving "
          f"{args.mib} MiB each way):")
    for name in ("1000 calls", f"{args.mib} MiB"):
        a, b = med[f"{name} auth"], med[f"{name} no auth"]
        print(f"  {name:<11} auth {a:.3f} s   no auth {b:.3f} s   ratio {a / b:.3f}  ({(a / b - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
