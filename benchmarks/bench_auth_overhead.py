"""What authenticating store objects costs: the same maps with
sealing on and off, in one run, alternating, medians.

Two local executors with their own warm workers: one as shipped, one whose
client and workers skip sealing (``wrenpack.auth._enabled = False``; the workers
get it from ``_WRENPACK_BENCHMARK_NO_AUTH``, a switch only this benchmark sets).

* ``1000 calls``: the 1,000 trivial calls of bench_map_vs_processpool.
* ``10 MiB``: calls that take a 10 MiB argument (a sealed input object) and
  return a 10 MiB result (a sealed result object): four MACs of 10 MiB per call.
  (Its local backends are made with ``handoff=False``: by default large data
  moves as sealed memfds over the worker's socket, with no MAC and no store.)

Target: under 5% extra. Measured here (2 shared cores, load average ~7 from
other work, so wall times swing by +-15% round to round): 1,000 calls within
noise (in one process +0.5% CPU: two HMACs of ~200 bytes per call); 10 MiB
in and out +8..11% in the map (median of per-round ratios) and +25..34% CPU in
one process: four HMAC-SHA256 passes over 10 MiB (~7.5 ms each, ~1.4 GB/s with
SHA extensions) against a path that otherwise mostly copies memory.

Both executors' workers are wrenpack's, in this process's session; the "no
auth" ones get the nice value and CPUs of the "auth" ones (``_fair``) and the
output shows what each had. Medians and min..max of the rounds.

    python benchmarks/bench_auth_overhead.py [--rounds 7] [--big-calls 8] [--hogs 0]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fair  # noqa: E402

import wrenpack  # noqa: E402
from wrenpack import auth  # noqa: E402


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
    _fair.add_arguments(ap, rounds=7)
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=1000)
    ap.add_argument("--big-calls", type=_fair.at_least(1, "a whole number of calls"), default=8)
    ap.add_argument("--mib", type=_fair.at_least(1, "a whole number of MiB"), default=10)
    ap.add_argument("--workers", type=_fair.at_least(1, "a whole number of workers"), default=2)
    ap.add_argument("--store", default=None, help="object store location (default: wrenpack's default)")
    ap.add_argument("--inproc-only", action="store_true", help="only the one-process CPU measurement")
    args = _fair.parse_args(ap)
    inproc(args)  # first: no executor threads alive to blur its CPU times
    if args.inproc_only:
        return

    small = list(range(args.calls))
    big = [os.urandom(args.mib * 2**20) for _ in range(args.big_calls)]
    from wrenpack.backends.local import LocalBackend

    executors = {}
    try:  # (the executors shut down however the run ends: SIGTERM and Ctrl-C too)
        for mode in ("auth", "no auth"):
            if mode == "no auth":
                os.environ["_WRENPACK_BENCHMARK_NO_AUTH"] = "1"  # inherited by this executor's workers
                auth._enabled = False
            # handoff=False: large data through sealed store objects, the path this measures
            # (by default the local backend hands it over as memfds, with no MAC at all).
            ex = wrenpack.Executor(storage=args.store, backend=LocalBackend(concurrency=args.workers, handoff=False))
            fs = (wrenpack.remote(trivial, executor=ex, memory=256, timeout=120),
                  wrenpack.remote(echo_big, executor=ex, memory=1024, timeout=120))
            executors[mode] = (ex, fs)
            _time(fs[0], small[:50])  # start the workers (with this mode's environment)
            _time(fs[1], big[:2])
            os.environ.pop("_WRENPACK_BENCHMARK_NO_AUTH", None)
            auth._enabled = True

        rows: dict[str, list[float]] = {f"{w} {m}": [] for w in ("1000 calls", f"{args.mib} MiB") for m in executors}
        pids = {mode: ex.backend.worker_pids() for mode, (ex, _) in executors.items()}
        problems = _fair.align(pids["auth"], pids["no auth"])
        with _fair.Hogs(args.hogs) as hogs:
            for r in range(args.rounds):
                for mode in _fair.order(list(executors), r):  # alternate who goes first
                    _, (f_small, f_big) = executors[mode]
                    auth._enabled = mode == "auth"
                    rows[f"1000 calls {mode}"].append(_time(f_small, small))
                    rows[f"{args.mib} MiB {mode}"].append(_time(f_big, big))
                auth._enabled = True
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()), flush=True)
            scheduling = _fair.check({mode: ex.backend.worker_pids() for mode, (ex, _) in executors.items()})
    except BaseException:  # (SIGTERM, Ctrl-C: see _fair.shut_down_after)
        for ex, _ in executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        auth._enabled = True
    for ex, _ in executors.values():
        ex.shutdown()
    print(f"\n{scheduling}; {hogs.describe()}; {_fair.load_note()}")
    for p in problems:
        print(f"  not aligned: {p}")

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nmedians over {_fair.rounds_label(args.rounds)} ({args.calls} trivial calls; {args.big_calls} calls moving "
          f"{args.mib} MiB each way):")
    for name in ("1000 calls", f"{args.mib} MiB"):
        a, b = med[f"{name} auth"], med[f"{name} no auth"]
        paired = statistics.median(x / y for x, y in zip(rows[f"{name} auth"], rows[f"{name} no auth"]))
        print(f"  {name:<11} auth {a:.3f} s   no auth {b:.3f} s   ratio of medians {a / b:.3f} ({(a / b - 1) * 100:+.1f}%)"
              f"   median of per-round ratios {paired:.3f}")
        for mode in executors:
            print(f"    {mode:<8} {_fair.spread(rows[f'{name} {mode}'])}")


def inproc(args: argparse.Namespace) -> None:
    """The same object path in one process, without workers, sockets or scheduling, in CPU time:
    client seals the input, the real handler verifies it, runs, seals and writes the
    result, the client verifies and unpickles it. Everything but sealing is the same
    in both modes, so this ratio bounds what sealing adds to a real map from above."""
    import tempfile

    from wrenpack.storage.local import LocalStore

    where = tempfile.mkdtemp(prefix="wrenpack-bench-")
    try:  # (its folder removed however the run ends: SIGTERM and Ctrl-C too, see _fair.parse_args)
        _inproc(args, LocalStore(where))
    finally:
        auth._enabled = True
        shutil.rmtree(where, ignore_errors=True)  # (its folder: made here)


def _inproc(args: argparse.Namespace, store: Any) -> None:
    import cloudpickle

    from wrenpack import keys
    from wrenpack.wire.event import Event, inline_args
    from wrenpack.wire.result import open_result
    from wrenpack.worker.context import LocalContext
    from wrenpack.worker.handler import handler

    cases = {"1000 calls": (trivial, [(i,) for i in range(args.calls)]),
             f"{args.mib} MiB": (echo_big, [(os.urandom(args.mib * 2**20),) for _ in range(args.big_calls)])}
    times: dict[str, list[float]] = {f"{c} {m}": [] for c in cases for m in ("auth", "no auth")}
    for r in range(args.rounds):
        for mode in (("auth", "no auth") if r % 2 == 0 else ("no auth", "auth")):
            auth._enabled = mode == "auth"
            for case, (fn, calls) in cases.items():
                secret, job = auth.new_secret(), f"bench-{r}-{mode.replace(' ', '')}-{case.split()[0]}"
                t0 = time.process_time()  # CPU time: what sealing costs, not what the neighbours do
                store.put(keys.func_key(job), auth.seal(secret, keys.identity(job, "func"), cloudpickle.dumps(fn)))
                for i, a in enumerate(calls):
                    cid = keys.call_id(i)
                    data = cloudpickle.dumps((a, {}))
                    if len(data) > 65536:
                        store.put(keys.input_key(job, cid), auth.seal(secret, keys.identity(job, "input", cid), data))
                        spec = {"key": keys.input_key(job, cid)}
                    else:
                        spec = inline_args(data)
                    event = Event(job_id=job, call_id=cid, store=store.spec, secret=secret, args=spec).to_dict()
                    handler(event, LocalContext(function_name="b", memory_mb=1024, deadline=time.time() + 60))
                    _fair.raise_if_signalled()  # (the handler turns a SystemExit into the call's result)
                    open_result(secret, job, cid, store.get(keys.result_key(job, cid)), "r")
                times[f"{case} {mode}"].append(time.process_time() - t0)
                store.delete_prefix(keys.job_prefix(job))
    auth._enabled = True
    print(f"\nin one process (the handler called directly), CPU seconds, medians over {_fair.rounds_label(args.rounds)}:")
    for case in cases:
        a, b = statistics.median(times[f"{case} auth"]), statistics.median(times[f"{case} no auth"])
        print(f"  {case:<11} auth {a:.3f} s   no auth {b:.3f} s   ratio {a / b:.3f}  ({(a / b - 1) * 100:+.1f}%); "
              f"auth {_fair.spread(times[f'{case} auth'])}, no auth {_fair.spread(times[f'{case} no auth'])}")


if __name__ == "__main__":
    _fair.main(main)
