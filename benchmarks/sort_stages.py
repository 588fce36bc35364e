"""Where a shuffle sort's task CPU goes, step by step, inside one local worker.

    python benchmarks/sort_stages.py --size 300MB [--mappers 8] [--partitions 8] [--passes 2]

A diagnostic, not a comparison: one remote call runs every mapper and then
every reducer of ``examples/sort.py``'s sort one after another (no other task
beside it, so each step's figures are its own), through the same functions
the shuffle runs (``split`` and ``merge``'s steps, ``shuffle.put_sections`` and
``get_section``), and reports per step: wall seconds, user and system CPU
seconds and minor page faults (``getrusage``). ``--passes 2`` runs it twice in
the same worker process: the second pass shows what a warm worker pays (memory
already touched in that process). System time per fault tells first touch on
this VM: ~2 ms per MB for a page the balloon had handed back, ~0.1 ms else.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _fair  # noqa: E402
import sort as sort_example  # noqa: E402

import wrenpack  # noqa: E402


def profile(prefix: str, mappers: int, partitions: int, passes: int) -> list[dict]:
    """Runs in the worker: every mapper, then every reducer, step by step."""
    import numpy as np

    import sort as ex
    from wrenpack import auth
    from wrenpack.worker import shuffle

    store = shuffle._store()
    reuse = getattr(shuffle, "reuse_freed_memory", None)
    if reuse is not None:  # what every shuffle task does first
        reuse()
    data = wrenpack.store()
    rows: list[dict] = []
    inputs = data.objects(f"{prefix}/in/", record_size=ex.RECORD)

    class Step:
        def __init__(self, name: str, n_pass: int) -> None:
            self.name, self.n_pass = name, n_pass

        def __enter__(self) -> "Step":
            self.r0, self.t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            return self

        def __exit__(self, *exc: object) -> None:
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            rows.append({"pass": self.n_pass, "step": self.name, "wall": t1 - self.t0,
                         "user": r1.ru_utime - self.r0.ru_utime, "sys": r1.ru_stime - self.r0.ru_stime,
                         "minflt": r1.ru_minflt - self.r0.ru_minflt})

    for n_pass in range(passes):
        sid = f"stages{uuid.uuid4().hex[:8]}"
        secret = auth.new_secret()
        wheres = []
        for m, chunk in enumerate(inputs):
            with Step("map: mapped input", n_pass):
                buf = chunk.buffer()
            with Step("map: partition_of", n_pass):
                records = ex.as_records(buf)
                where = ex.partition_of(records, partitions)
            with Step("map: argsort", n_pass):
                order = np.argsort(where, kind="stable")
                counts = np.bincount(where, minlength=partitions)
            with Step("map: take (grouped)", n_pass):
                grouped = np.take(records, order, axis=0)
            edges = np.concatenate(([0], np.cumsum(counts)))
            parts = [grouped[edges[i]: edges[i + 1]] for i in range(partitions)]
            with Step("map: frame+seal+write", n_pass):
                wheres.append(shuffle.put_sections(store, sid, m, secret, parts))
            del parts, buf, records, grouped
        for p in range(partitions):
            read = [(m, w[p]) for m, w in enumerate(wheres) if w[p] is not None]
            with Step("reduce: map+verify+unpickle", n_pass):
                got = [shuffle._read_section(store, sid, m, p, secret, at) for m, at in read]
            parts, mappings = [g[0] for g in got], [g[1] for g in got]
            del got
            with Step("reduce: concatenate", n_pass):
                records = np.concatenate(parts)
            with Step("reduce: sort_records", n_pass):
                out = ex.sort_records(records)
            with Step("reduce: write output", n_pass):
                data.put(f"{prefix}/stages-out/{p:05d}", memoryview(out))
            del records, out, parts
            with Step("reduce: release sections", n_pass):
                shuffle._release_sections(store, sid, read, mappings)
        store.delete_prefixes(shuffle.prefixes(sid, len(inputs)))
        data.delete_prefix(f"{prefix}/stages-out/")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=sort_example.parse_size, default=sort_example.parse_size("300MB"))
    ap.add_argument("--mappers", type=sort_example.at_least_one, default=8, help="input objects / map tasks (default 8)")
    ap.add_argument("--partitions", type=sort_example.partition_count, default=8, help="reduce tasks (default 8)")
    ap.add_argument("--passes", type=_fair.at_least(1, "a whole number of passes"), default=2,
                    help="passes over the same data in one worker process (default 2)")
    ap.add_argument("--memory", type=sort_example.memory_mb, default=3008, help="MB for the profiling call (default 3008)")
    args = _fair.parse_args(ap)
    prefix = f"sort-stages-{uuid.uuid4().hex[:8]}"
    try:
        sort_example.generate_input(args.size, args.mappers, prefix, memory=args.memory)
        rows = wrenpack.remote(profile, memory=args.memory, timeout=600).remote(
            prefix, args.mappers, args.partitions, args.passes).result()
    finally:
        wrenpack.store().delete_prefix(f"{prefix}/")
    mb = args.size / 1e6
    for n_pass in range(args.passes):
        print(f"pass {n_pass + 1} ({'a fresh' if n_pass == 0 else 'the same'} worker process), {mb:.0f} MB, "
              f"{args.mappers} mappers then {args.partitions} reducers, one after another; sums over the tasks:")
        print(f"  {'step':28s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'minflt':>8s} {'MB faulted':>10s}")
        totals = [0.0, 0.0, 0.0, 0]
        names = list(dict.fromkeys(r["step"] for r in rows if r["pass"] == n_pass))
        for name in names:
            sel = [r for r in rows if r["pass"] == n_pass and r["step"] == name]
            wall, user, sys_, flt = (sum(r[k] for r in sel) for k in ("wall", "user", "sys", "minflt"))
            totals = [totals[0] + wall, totals[1] + user, totals[2] + sys_, totals[3] + flt]
            print(f"  {name:28s} {wall:7.3f} {user:7.3f} {sys_:7.3f} {flt:8d} {flt * 4096 / 1e6:10.0f}")
        print(f"  {'total':28s} {totals[0]:7.3f} {totals[1]:7.3f} {totals[2]:7.3f} {totals[3]:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
