"""Workload for bench_profile_overhead: ~1 s of allocation-heavy pure Python, single-threaded."""
import time


def work(n: int = 400_000) -> int:
    t0 = time.perf_counter()
    rows = [{"k": i % 977, "v": str(i)} for i in range(n)]
    rows.sort(key=lambda r: (r["k"], r["v"]))
    total = sum(len(r["v"]) for r in rows)
    for _ in range(3):
        total += sum(hash(r["v"]) & 1 for r in rows)
    work.last_s = time.perf_counter() - t0
    return total


def nothing() -> None:
    """A call that costs nothing: what remains is the profiler's own cost."""
    return None
