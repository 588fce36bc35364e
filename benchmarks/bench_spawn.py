"""What spawning a job costs against a plain map on the local backend.

Per round, alternating (``_fair.order``), each on a fresh executor and store:

- ``map``: ``f.map(range(N))`` then ``wrenpack.get``; the calls end with this process;
- ``spawn``: ``f.spawn_map(range(N))`` (a supervisor process started, the calls handed
  to it, its "ok" awaited) then ``job.results()`` (read from the store).

Prints the time until ``spawn_map``/``map`` returns and until every result is in, as
median (min..max) over the rounds, and the load average. Scheduling differs by design:
a spawned job's supervisor and its workers sit in a session of their own (so a
terminal's ^C does not reach them), which autogroup scheduling gives a CPU share of
its own; the map's workers stay in this process's session. The line says so.

    python benchmarks/bench_spawn.py [--calls 40] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wrenpack  # noqa: E402
from benchmarks import _fair  # noqa: E402
from wrenpack.executor import Executor  # noqa: E402


def square(x: int) -> int:
    return x * x


def run(system: str, calls: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as store:
        os.chmod(store, 0o700)
        ex = Executor(backend="local", storage=store, concurrency=2)
        f = wrenpack.remote(square, executor=ex)
        t0 = time.perf_counter()
        if system == "map":
            futs = f.map(range(calls))
            launched = time.perf_counter() - t0
            results = wrenpack.get(futs, progress=False)
        else:
            job = f.spawn_map(range(calls))
            launched = time.perf_counter() - t0
            results = job.results()
        total = time.perf_counter() - t0
        ex.shutdown()
        assert results == [x * x for x in range(calls)]
        return launched, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=40)
    _fair.add_arguments(ap, hogs=False)
    args = _fair.parse_args(ap)
    made = None
    if "WRENPACK_CACHE_DIR" not in os.environ:  # (the spawned jobs' logs and owner key: removed at the end)
        made = os.environ["WRENPACK_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-spawn-cache-")
    got: dict[str, list[tuple[float, float]]] = {"map": [], "spawn": []}
    try:
        for rnd in range(args.rounds):
            for system in _fair.order(list(got), rnd):
                got[system].append(run(system, args.calls))
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    print(f"{args.calls} trivial calls, concurrency 2, {_fair.rounds_label(args.rounds)}; {_fair.load_note()}")
    print("scheduling: NOT alike by design: the spawned job's supervisor and workers have a session of their own")
    for system, rows in got.items():
        print(f"{system:6} returns: {_fair.spread([r[0] for r in rows])}; all results: {_fair.spread([r[1] for r in rows])}")
    return 0


if __name__ == "__main__":
    _fair.main(main)
