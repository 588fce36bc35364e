"""Word count of 100 MB of stored text on the local backend vs one process counting the same chunks.

    python benchmarks/bench_wordcount.py                   # 100MB, 5 rounds, median and min..max
    python benchmarks/bench_wordcount.py --size 20MB --partitions 4 [--hogs 0]

wrenpack side: ``examples/wordcount.py``'s ``map_reduce(count_words, chunks, add,
partitions=4)`` over ``wrenpack.objects`` chunks of the stored text (``--chunk-size``),
from the stored text to the driver's ``{word: count}``. Baseline, in the same
run: a child process runs the same ``count_words`` over the same chunks one
after another and adds the counters (what one process would do), and its
result is checked against wrenpack's. The two alternate (which goes first flips
every round) and the baseline process gets the scheduling of wrenpack's workers
(``_fair``); the output shows what each had, and where wrenpack's time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _fair  # noqa: E402
import wordcount as example  # noqa: E402

import wrenpack  # noqa: E402
from wrenpack.executor import default_executor  # noqa: E402

_BASELINE = r"""
import collections, json, sys, time
sys.path.insert(0, sys.argv[1])
import wordcount as ex
import wrenpack
chunks = wrenpack.store().objects(sys.argv[2], chunk_size=int(sys.argv[3]))
t0 = time.perf_counter()
total = collections.Counter()
for chunk in chunks:
    total.update(dict(ex.count_words(chunk)))
elapsed = time.perf_counter() - t0
print(json.dumps({"s": elapsed, "counts": dict(total)}))
"""


def make_text(part: int, size: int, prefix: str) -> int:
    """One stored text object of about ``size`` bytes: words of a 5,000-word vocabulary, Zipf-like."""
    import random

    rng = random.Random(part)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz'") for _ in range(rng.randrange(2, 10)))
             for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    lines, n = [], 0
    while n < min(size, 2_000_000):  # 2 MB of lines, then the same lines shuffled (drawing words is slow)
        line = " ".join(rng.choices(vocab, weights, k=12))
        lines.append(line.capitalize() if rng.random() < 0.1 else line)
        n += len(line) + 1
    blocks = []
    for _ in range(max(1, round(size / n))):
        rng.shuffle(lines)
        blocks.append("\n".join(lines))
    data = "\n".join(blocks).encode()
    wrenpack.store().put(f"{prefix}{part:04d}.txt", data)
    return len(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=_fair.size, default=100_000_000,
                    help="bytes of text: 100MB, 500KB, 1GB or a number (B, KB, MB, GB: powers of 1,000; default 100MB)")
    _fair.add_arguments(ap)
    ap.add_argument("--partitions", type=_fair.at_least(1, "a whole number of reducers"), default=4,
                    help="reducers (default 4)")
    ap.add_argument("--chunk-size", type=_fair.size, default=16_000_000, help="bytes per map call (default 16MB)")
    ap.add_argument("--objects", type=_fair.at_least(1, "a whole number of objects"), default=8,
                    help="stored text objects (default 8)")
    args = _fair.parse_args(ap)
    stages = _fair.ShuffleStages().attach()

    cores = os.cpu_count()
    prefix = f"bench-wc-{uuid.uuid4().hex[:8]}/"
    store = wrenpack.store()
    ours: list[float] = []
    base: list[float] = []
    w_sched: list[_fair.Scheduling | None] = []
    b_sched: list[_fair.Scheduling | None] = []
    ok = True

    def workers() -> list[int]:
        return default_executor().backend.worker_pids()

    def run_wrenpack() -> None:
        nonlocal counts
        chunks = store.objects(prefix, chunk_size=args.chunk_size)
        t0 = time.perf_counter()
        counts = example.wordcount(chunks, args.partitions)
        ours.append(time.perf_counter() - t0)
        w_sched.extend(map(_fair.Scheduling.of, workers()))
        print(f"  wrenpack {ours[-1]:.2f} s ({len(chunks)} mappers, {args.partitions} reducers)", flush=True)

    def run_one() -> None:
        nonlocal ok
        proc, sched = _fair.run_like(workers(), [sys.executable, "-c", _BASELINE, str(REPO / "examples"), prefix,
                                                 str(args.chunk_size)], capture_output=True, text=True, check=True)
        b_sched.append(sched)
        b = json.loads(proc.stdout)
        base.append(b["s"])
        same = True
        if counts is not None:
            same = b["counts"] == counts
            ok = ok and same
        print(f"  one process {b['s']:.2f} s (same counts as wrenpack: {same})", flush=True)

    counts: dict[str, int] | None = None
    systems = {"wrenpack": run_wrenpack, "one process": run_one}
    try:
        t0 = time.perf_counter()
        sizes = wrenpack.get(wrenpack.remote(make_text, memory=1024).map(
            range(args.objects), size=args.size // args.objects, prefix=prefix), progress=False)
        print(f"word count {sum(sizes) / 1e6:.0f} MB in {args.objects} objects (made in {time.perf_counter() - t0:.1f} s), "
              f"chunks of {args.chunk_size / 1e6:g} MB, {args.partitions} partitions, "
              f"{wrenpack.Executor().config.concurrency or cores} local workers on {cores} cores; {_fair.load_note()}")
        hogs = _fair.run_rounds(systems, args.rounds, args.hogs)
    finally:
        store.delete_prefix(prefix)
    print(_fair.check({"wrenpack's workers": w_sched, "one-process baseline": b_sched}) + f"; {hogs.describe()}")
    print(f"{_fair.rounds_label(args.rounds)}, alternating")
    print(f"  wrenpack     {_fair.spread(ours)}")
    print(f"  one process  {_fair.spread(base)}")
    print(f"ratio wrenpack / one process: {statistics.median(ours) / statistics.median(base):.2f}x (target <= 0.60x); "
          f"counts {'the same' if ok else 'DIFFER'}; {_fair.load_note()}")
    stages.print_breakdown()
    return 0 if ok else 1


if __name__ == "__main__":
    _fair.main(main)
