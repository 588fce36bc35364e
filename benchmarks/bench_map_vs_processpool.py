"""wrenpack's local backend (limits enforced, default settings) against the
process pools users compare it with, in one run, systems alternating in
every round, medians reported:

- ``trivial``: 1,000 calls of ``x + 1`` (``--calls``), warm pools
- ``many``: the same, 10,000 calls (``--many-calls``)
- ``latency``: one warm call, submit to result (median of ``--latency-calls``)
- ``data``: 100 calls (``--data-calls``) each taking and returning 10 MiB of bytes
  (``--data-mib``; the same object for every call; ``--data-distinct``: one object
  per call), plus the driver's peak memory above its start (RSS sampled every 5 ms)
- ``cpu``: 40 CPU-bound calls (``--cpu-calls``) of about 0.1 s each (``--cpu-s``:
  a loop calibrated once in the driver to take that long)
- ``mixed``: 200 calls, 190 x 10 ms and 10 x 2 s (``--scale`` shrinks the times)
  against the ideal schedule max(total / workers, longest call)

Peers: ``concurrent.futures.ProcessPoolExecutor(2)`` (the ratio's baseline),
``multiprocessing.Pool(2)`` and joblib (``pip install joblib``; skipped if absent).
Every peer's processes get the scheduling of wrenpack's workers (session, so
autogroup; nice value; CPU set: ``_fair``), and the output says what each had.
Targets: trivial <= 1.0x ProcessPoolExecutor; latency <= 1.5x; data <= 0.5x
at 10 MiB, and at 1 MiB (``--data-mib 1``) <= 1.0x with a driver peak no
higher than ProcessPoolExecutor's; cpu <= 1.03x; mixed <= 1.05x ideal.

``--hogs N`` runs N busy loops in the benchmark's own session for the whole
run: the user's other programs on a busy machine. ``--only latency --hogs 1``
is the latency-under-load check (a driver whose workers take CPU from its own
session's programs, or sit in a session of their own, shows it here).

    python benchmarks/bench_map_vs_processpool.py [--rounds 5] [--hogs 0] [--only trivial,many,latency,data,cpu,mixed]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fair  # noqa: E402

import wrenpack  # noqa: E402

MiB = 1024 * 1024
#: the workloads, as ``--only`` names them
WORKLOADS = ("trivial", "many", "latency", "data", "cpu", "mixed")


def trivial(x):
    return x + 1


def echo(data):
    return data


def nap(s):
    time.sleep(s)
    return s


def spin(n):
    """CPU-bound work: ``n`` rounds of a pure-Python loop (no I/O, no allocation to speak of)."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


def spin_rounds(seconds: float) -> int:
    """The rounds of ``spin`` that take about ``seconds`` here (timed in this process, best of 3)."""
    n = 200_000
    best = min(_timed(spin, n) for _ in range(3))
    return max(1, int(n * seconds / best))


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _release_freed_heap() -> None:
    """Give the heap that earlier rounds freed back to the OS before a round
    measures its peak: glibc keeps freed chunks (and after the first free of a
    large block raises its mmap threshold), so a system's later rounds would
    reuse memory already counted in the start figure, and whichever system ran
    its first round later would look leaner."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # (not glibc: nothing to release this way)
        pass


class PeakRSS:
    """The process's resident memory peak above its value at start, sampled in
    a thread; the start is taken after the freed heap went back to the OS."""

    def __init__(self) -> None:
        import psutil

        _release_freed_heap()
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / MiB


class Systems:
    """The systems under test, each with its pool warm, mapping one function over items."""

    def __init__(self, workers: int) -> None:
        self.closed = False
        self.ex = wrenpack.Executor(concurrency=workers)
        self.ppe = cf.ProcessPoolExecutor(workers)
        self.mpp = mp.get_context("fork").Pool(workers)
        try:
            import joblib

            self.joblib = joblib.Parallel(n_jobs=workers, return_as="list")
            self._delayed = joblib.delayed
        except ImportError:
            self.joblib = None
        self.remote = {fn: wrenpack.remote(fn, executor=self.ex, memory=1024, timeout=60) for fn in (trivial, echo, nap, spin)}

    def names(self) -> list[str]:
        return ["wrenpack", "processpool", "mp.Pool"] + (["joblib"] if self.joblib is not None else [])

    def map(self, name: str, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        if name == "wrenpack":
            return wrenpack.get(self.remote[fn].map(items), progress=False)
        if name == "processpool":
            return list(self.ppe.map(fn, items))
        if name == "mp.Pool":
            return self.mpp.map(fn, items)
        with self.joblib:
            return self.joblib(self._delayed(fn)(x) for x in items)

    def one(self, name: str, x: int) -> Any:
        if name == "wrenpack":
            return self.remote[trivial].remote(x).result()
        if name == "processpool":
            return self.ppe.submit(trivial, x).result()
        if name == "mp.Pool":
            return self.mpp.apply(trivial, (x,))
        return self.joblib([self._delayed(trivial)(x)])[0]

    def pids(self, exclude: list[int]) -> dict[str, list[int]]:
        """Each system's worker processes (joblib's: this process's other children)."""
        import psutil

        out = {"wrenpack": self.ex.backend.worker_pids(),
               "processpool": list(self.ppe._processes or {}),
               "mp.Pool": [p.pid for p in self.mpp._pool]}
        known = set(exclude).union(*out.values())
        if self.joblib is not None:
            out["joblib"] = [p.pid for p in psutil.Process().children() if p.pid not in known]
        return out

    def close(self, wait: bool = True) -> None:
        """Every pool stopped, whatever the others do (also when a signal ended the run midway:
        a pool left running kept its workers, and they the benchmark's stdout, after it ended). Once."""
        if self.closed:
            return
        self.closed = True
        # (after a signal, wrenpack's executor is not waited for: see _fair.shut_down_after)
        # (mp.Pool: closed, so its workers end at its sentinels; terminate() SIGTERMs them, and under a CPU
        # hog one was left blocked on the task queue's lock, which its killed sibling held, and join()
        # waited for it for good: the whole run's output lost)
        stops = [lambda: self.ex.shutdown(wait=wait, cancel_futures=True), lambda: self.ppe.shutdown(cancel_futures=True),
                 self.mpp.close if wait else self.mpp.terminate, self.mpp.join]
        if self.joblib is not None:  # (loky's reusable executor: its workers and resource tracker)
            from joblib.externals.loky import get_reusable_executor

            stops.append(lambda: get_reusable_executor().shutdown(wait=True, kill_workers=True))
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - the other pools still stop
                print(f"closing the pools: {exc!r}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fair.add_arguments(ap)
    ap.add_argument("--workers", type=_fair.at_least(1), default=2)
    ap.add_argument("--calls", type=_fair.at_least(1), default=1000)
    ap.add_argument("--many-calls", type=_fair.at_least(1), default=10000)
    ap.add_argument("--latency-calls", type=_fair.at_least(1), default=200)
    ap.add_argument("--data-calls", type=_fair.at_least(1), default=100)
    ap.add_argument("--data-mib", type=_fair.at_least(1), default=10)
    ap.add_argument("--data-distinct", action="store_true",
                    help="data: a different object per call (no argument is shared between calls)")
    ap.add_argument("--cpu-calls", type=_fair.at_least(1), default=40)
    ap.add_argument("--cpu-s", type=_fair.positive("a number of seconds"), default=0.1, help="cpu: seconds of work per call")
    ap.add_argument("--scale", type=_fair.positive("a scale factor"), default=1.0, help="multiplies the mixed workload's call durations")
    ap.add_argument("--only", type=_fair.names(WORKLOADS, "workload"), default=",".join(WORKLOADS))
    args = _fair.parse_args(ap)
    only = set(args.only)
    systems = Systems(args.workers)
    try:
        run(args, only, systems)
    except BaseException:  # (SIGTERM and Ctrl-C too: _fair.parse_args makes them a SystemExit)
        systems.close(wait=False)
        raise
    systems.close()


def run(args: argparse.Namespace, only: set[str], systems: Systems) -> None:
    names = systems.names()
    times: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, list[float]] = {n: [] for n in names}

    blob = os.urandom(args.data_mib * MiB)
    mixed = [2.0 * args.scale if i % 20 == 10 else 0.01 * args.scale for i in range(200)]
    ideal = max(sum(mixed) / args.workers, max(mixed))
    workloads: dict[str, Callable[[str], float]] = {}

    def trivial_calls(name: str, n: int) -> float:
        t0 = time.perf_counter()
        out = systems.map(name, trivial, list(range(n)))
        elapsed = time.perf_counter() - t0
        assert out == [i + 1 for i in range(n)]
        return elapsed

    def trivial_run(name: str) -> float:
        return trivial_calls(name, args.calls)

    many_memory: dict[str, list[float]] = {n: [] for n in names}

    def many_run(name: str) -> float:
        with PeakRSS() as peak:
            elapsed = trivial_calls(name, args.many_calls)
        many_memory[name].append(peak.mb)
        return elapsed

    def latency_run(name: str) -> float:
        samples = []
        for i in range(args.latency_calls):
            t0 = time.perf_counter()
            assert systems.one(name, i) == i + 1
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    # (os.urandom leaves no freed temporaries between them, which would hide the peak RSS)
    distinct = [os.urandom(args.data_mib * MiB) for _ in range(args.data_calls)] if args.data_distinct else None

    def data_run(name: str) -> float:
        # The same object in every call, or --data-distinct ones.
        items = distinct if distinct is not None else [blob] * args.data_calls
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            out = systems.map(name, echo, items)
            elapsed = time.perf_counter() - t0
            assert len(out) == len(items) and out[0] == items[0] and out[-1] == items[-1]
            del out
        memory[name].append(peak.mb)
        return elapsed

    rounds = spin_rounds(args.cpu_s) if "cpu" in only else 0
    cpu_items = [rounds] * args.cpu_calls
    cpu_answer = spin(rounds) if "cpu" in only else None

    def cpu_run(name: str) -> float:
        t0 = time.perf_counter()
        out = systems.map(name, spin, cpu_items)
        elapsed = time.perf_counter() - t0
        assert out == [cpu_answer] * len(cpu_items)
        return elapsed

    def mixed_run(name: str) -> float:
        t0 = time.perf_counter()
        systems.map(name, nap, mixed)
        return (time.perf_counter() - t0) / ideal

    for key, fn in (("trivial", trivial_run), ("many", many_run), ("latency", latency_run), ("data", data_run),
                    ("cpu", cpu_run), ("mixed", mixed_run)):
        if key in only:
            workloads[key] = fn
            times[key] = {n: [] for n in names}
    # warm every pool (workers started, modules imported)
    for name in names:
        systems.map(name, trivial, list(range(50)))
        systems.map(name, echo, [b"x"] * 4)
        systems.map(name, nap, [0.0] * 4)
        systems.map(name, spin, [1] * 4)
    with _fair.Hogs(args.hogs) as hogs:
        groups = systems.pids(hogs.pids)
        problems = _fair.align(groups["wrenpack"], [p for n, ps in groups.items() if n != "wrenpack" for p in ps])
        for r in range(args.rounds):
            for key, run in workloads.items():
                for name in _fair.order(names, r):  # alternate, so drift hits all alike
                    times[key][name].append(run(name))
        # after the rounds: the processes that ran them (a pool may have replaced one)
        scheduling = _fair.check(systems.pids(hogs.pids))
        load = _fair.load_note()
    systems.close()

    print(f"{args.workers} workers, {_fair.rounds_label(args.rounds)} (systems alternating), {hogs.describe()}; {load} at the end")
    print(scheduling)
    for p in problems:
        print(f"  not aligned: {p}")
    print("medians of the rounds (min .. max of the rounds)")
    units = {"trivial": ("s", 1.0), "many": ("s", 1.0), "latency": ("ms", 1e3), "data": ("s", 1.0), "cpu": ("s", 1.0),
             "mixed": ("x ideal", 1.0)}
    titles = {
        "trivial": f"{args.calls} trivial calls",
        "many": f"{args.many_calls} trivial calls",
        "latency": "one warm call's latency",
        "data": f"{args.data_calls} calls x {args.data_mib} MiB in and out" + (" (distinct objects)" if args.data_distinct else ""),
        "cpu": f"{args.cpu_calls} CPU-bound calls of {args.cpu_s:g} s (ideal {args.cpu_calls * args.cpu_s / args.workers:.2f} s)",
        "mixed": f"200 calls, 190 x {10 * args.scale:g} ms + 10 x {2 * args.scale:g} s (ideal {ideal:.2f} s)",
    }
    for key in workloads:
        unit, mul = units[key]
        base = statistics.median(times[key]["processpool"])
        print(f"\n{titles[key]}")
        for name in names:
            values = times[key][name]
            med = statistics.median(values)
            ratio = f"  {med / base:5.2f}x processpool" if key != "mixed" else ""
            extra = f"  driver peak +{statistics.median(memory[name]):.0f} MB" if key == "data" else ""
            if key == "many":
                extra = f"  driver peak +{statistics.median(many_memory[name]):.0f} MB"
            print(f"  {name:12s} {med * mul:9.3f} {unit}{ratio}{extra}  (min {min(values) * mul:.3f} .. max {max(values) * mul:.3f})")
    data_target = "data <= 1.0x processpool and driver peak <= processpool's" if args.data_mib <= 1 else "data <= 0.5x processpool"
    print(f"\ntargets: trivial <= 1.0x processpool, latency <= 1.5x processpool, {data_target}, cpu <= 1.03x processpool, "
          "mixed <= 1.05x ideal")


if __name__ == "__main__":
    _fair.main(main)
