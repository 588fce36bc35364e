"""A diagnostic: where one warm call's latency goes, process by process.

Each round runs three drivers in turn (order flipped every round, as ``_fair``
does), each a fresh process in this benchmark's session, timing ``--calls``
warm ``.remote(i).result()`` (or ``submit(i).result()``) one after another:

- ``wrenpack``: the local backend as users get it: the worker's parent process
  holds the job's secret and relays each call to the job's process of its
  isolation domain and back (``wrenpack.worker.isolation``);
- ``wrenpack, no job process``: the same, with the worker running calls in its
  own process, as it does where ``fork`` is missing. Not a setting users have
  (it gives up the isolation of jobs from each other): the zygote's own marker
  (``WRENPACK_ZYGOTE=1``) in the workers' environment stops them forking one.
  It measures what the relay through the job's process costs;
- ``processpool``: ``ProcessPoolExecutor(2)``, the baseline of
  ``bench_map_vs_processpool.py``'s latency.

Per driver: the median call's latency (each call timed), and the CPU each
process used per call over the loop (``psutil``: the driver, and its workers'
processes summed by role). Medians of the rounds, with min..max.

    python benchmarks/latency_path.py [--rounds 5] [--calls 3000]

No target: the figure the issue's latency target compares is
``bench_map_vs_processpool.py --only latency``'s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fair  # noqa: E402

_DRIVER = r"""
import json, os, shutil, statistics, sys, tempfile, time
import concurrent.futures as cf
import psutil

def trivial(x):
    return x + 1

def main(kind, calls):
    # (the store's folder is removed however the driver ends: one that failed left it behind)
    where = None if kind == "processpool" else tempfile.mkdtemp(prefix="wrenpack-bench-")
    try:
        measure(kind, calls, where)
    finally:
        if where is not None:
            shutil.rmtree(where, ignore_errors=True)  # (the store's folder: this driver made it)

def measure(kind, calls, where):
    me = psutil.Process()
    if kind == "processpool":
        ex = cf.ProcessPoolExecutor(2)
        one = lambda i: ex.submit(trivial, i).result()
    else:
        import wrenpack
        from wrenpack.backends.local import LocalBackend
        ex = wrenpack.Executor(storage=where, backend=LocalBackend(concurrency=2))
        f = wrenpack.remote(trivial, executor=ex)
        one = lambda i: f.remote(i).result()
    try:
        figures = timed(kind, calls, me, one)
    except BaseException:  # (stopped before its store's folder goes: no worker writes to it after)
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()
    print(json.dumps(figures))

def timed(kind, calls, me, one):
    for i in range(300):
        assert one(i) == i + 1
    procs = me.children(recursive=True)

    def cpu():
        out = {"driver": sum(me.cpu_times()[:2])}
        for p in procs:
            try:
                out[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return out

    c0 = cpu()
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        one(i)
        samples.append(time.perf_counter() - t0)
    c1 = cpu()
    used = {k: (c1[k] - c0.get(k, 0.0)) / calls for k in c1}
    # The busiest worker process is the one the calls went to (a warm call goes to the worker
    # that ran the last); its job process is its busiest child.
    roles = {"driver": used.pop("driver")}
    busy = sorted(used.items(), key=lambda kv: -kv[1])
    if kind == "processpool":
        roles["worker"] = sum(v for _, v in busy)
    else:
        by_pid = {p.pid: p for p in procs}
        workers = [(pid, v) for pid, v in busy if by_pid[pid].ppid() == me.pid]
        roles["worker"] = sum(v for _, v in workers)
        roles["job process"] = sum(v for pid, v in busy if by_pid[pid].ppid() != me.pid)
    return {"latency_s": statistics.median(samples), "cpu_s": roles}

main(sys.argv[1], int(sys.argv[2]))
"""

SYSTEMS = {
    "wrenpack": ("wrenpack", {}),
    "wrenpack, no job process": ("wrenpack", {"WRENPACK_ZYGOTE": "1"}),
    "processpool": ("processpool", {}),
}


def run(name: str, calls: int) -> dict[str, Any]:
    kind, extra_env = SYSTEMS[name]
    env = dict(os.environ, **extra_env)
    proc = subprocess.run([sys.executable, "-c", _DRIVER, kind, str(calls)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fair.add_arguments(ap)
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=3000, help="timed warm calls per driver (default 3000)")
    args = _fair.parse_args(ap)
    print(f"one warm call's path, {args.calls} calls per driver, {_fair.rounds_label(args.rounds)}; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}

    def system(name: str) -> Any:
        def one_round() -> None:
            out = run(name, args.calls)
            got[name].append(out)
            cpu = ", ".join(f"{role} {s * 1e6:.0f} us" for role, s in out["cpu_s"].items())
            print(f"  {name}: {out['latency_s'] * 1e3:.3f} ms; CPU per call: {cpu}", flush=True)
        return one_round

    hogs = _fair.run_rounds({name: system(name) for name in SYSTEMS}, args.rounds, args.hogs)
    print(f"{hogs.describe()}; every driver is a child of this process, in its session")
    base = statistics.median(o["latency_s"] for o in got["processpool"])
    for name, outs in got.items():
        lat = [o["latency_s"] for o in outs]
        print(f"  {name:26s} latency {_fair.spread(lat, 'ms', 1e3)}  ({statistics.median(lat) / base:.2f}x processpool)")
        for role in outs[0]["cpu_s"]:
            print(f"  {'':26s}   {role + ' CPU per call':24s} {_fair.spread([o['cpu_s'][role] for o in outs], 'us', 1e6, '.0f')}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _fair.main(main)
