"""One driver at scale on Lambda, simulated: 100,000 calls at concurrency 1,000.

The real Lambda backend and its real boto3 clients (Lambda and S3) run
against the simulated service of tests/aws/sim_service.py, served over HTTP
on 127.0.0.1 by a process of its own (tests/aws/sim_server.py; AWS is not in
the driver's process either):
every Invoke waits ``--invoke-latency`` (25 ms) like a round trip, at most
``--concurrency`` calls run at once (Event calls beyond it wait in the
simulated queue, RequestResponse calls get 429), S3 refuses over 3,500
writes or 5,500 reads a second per prefix (503 SlowDown), and each call,
``--duration`` s long, writes the sealed result object a wrenpack worker
writes (tests/aws/sim_worker.py), which the client verifies.

Prints, per invocation type: invocations per second (calls / wall time from
map to the last result, the job's cleanup included), requests per call by
kind (S3 of the client and the workers, and Invoke), the driver's peak
resident memory (and how much of it is the simulated S3's objects, which
on AWS would not be in the driver), and driver CPU per call (the driver
process's CPU time, its HTTP included; the simulator's process's is shown
beside it). ``--in-process`` runs the simulator in the driver's process
instead, requests handed over inside botocore (no socket), its measured CPU
subtracted: how this benchmark ran before. ``--send-processes 0,2`` compares
the backend's sender processes (``LambdaBackend(send_processes=)``: boto3's
requests made in child processes), their CPU shown apart; "bounds" is the
rate the driver's one core supports (1 / its CPU per call) and the most this
machine could do with all the CPU a call takes (driver, senders, simulator).

Each round runs in a fresh process (a peak RSS is a high-water mark), the
invocation types alternating; median and min..max of the rounds. This
machine is shared (2 cores): figures are loaded ones, and the simulator's
process competes with the driver for them.

    python benchmarks/bench_lambda_scale.py [--calls 100000] [--concurrency 1000] [--rounds 5]
        [--kinds Event,RequestResponse] [--duration 0.1] [--invoke-latency 0.025] [--in-process]
        [--send-processes N[,M]]

Targets: >= 1,000 invocations/s with 25 ms invoke latency; driver peak < 300 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fair  # noqa: E402
import _simrun  # noqa: E402

#: the invocation types it runs (``--kinds``)
KINDS = ("Event", "RequestResponse")


def one(args: argparse.Namespace) -> None:
    import logging

    _simrun.fake_aws_env()
    logging.basicConfig(level=logging.WARNING)
    r = _simrun.run(args.one, args.calls, args.concurrency, args.duration, jitter=0.1,
                    invoke_latency=args.invoke_latency, measure_delays=False, in_process=args.in_process,
                    send_processes=args.send_processes[0])
    print(json.dumps({"wall": r.wall_s, "per_call": r.per_call, "cpu": r.driver_cpu_s, "sim_cpu": r.sim_cpu_s,
                      "senders_cpu": r.senders_cpu_s,
                      "peak": r.peak_rss_mb, "sim_peak": r.sim_peak_mb, "throttled": r.throttled,
                      "slowdowns": r.slowdowns}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=100_000)
    ap.add_argument("--concurrency", type=_fair.at_least(1, "a whole number of calls at once"), default=1000)
    ap.add_argument("--duration", type=_fair.positive("a number of seconds"), default=0.1, help="each call's run time, s (+-10%%)")
    ap.add_argument("--invoke-latency", type=_fair.at_least_real(0, "a number of seconds"), default=0.025)
    ap.add_argument("--kinds", type=_fair.names(KINDS, "invocation type"), default=",".join(KINDS))
    ap.add_argument("--in-process", action="store_true",
                    help="the simulator in the driver's process, requests handed over inside botocore (no socket; "
                         "its CPU subtracted), as this benchmark ran before")
    ap.add_argument("--send-processes", type=_fair.whole_numbers(0, "a whole number of sender processes"), default="0",
                    help="the backend's sender processes (LambdaBackend(send_processes=)): boto3's requests made "
                         "there, off the driver's GIL, their CPU shown apart; a list (0,2) compares them, alternating")
    ap.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    _fair.add_arguments(ap, hogs=False)
    args = _fair.parse_args(ap)
    if args.one:
        one(args)
        return 0
    kinds, senders = args.kinds, args.send_processes
    systems = [(kind, sp) for kind in kinds for sp in senders]
    runs: dict[tuple[str, int], list[dict]] = {system: [] for system in systems}
    for rnd in range(args.rounds):
        for kind, sp in _fair.order(systems, rnd):
            cmd = [sys.executable, __file__, "--one", kind, "--calls", str(args.calls), "--concurrency",
                   str(args.concurrency), "--duration", str(args.duration), "--invoke-latency", str(args.invoke_latency),
                   "--send-processes", str(sp)]
            if args.in_process:
                cmd.append("--in-process")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"round {rnd + 1} {kind} failed")
            runs[(kind, sp)].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {rnd + 1} of {args.rounds} done ({_fair.load_note()})", flush=True)

    n = args.calls
    cores = os.cpu_count() or 1
    print(f"\n{n} calls at concurrency {args.concurrency}, {args.duration:g} s each (+-10%), invoke latency "
          f"{args.invoke_latency * 1e3:g} ms; simulated Lambda + S3 "
          f"{'in the driver (no socket)' if args.in_process else 'in a process of its own, over HTTP'}, real boto3 "
          f"clients; {_fair.load_note()}")
    print(f"medians of {_fair.rounds_label(args.rounds)}, one process per round, the systems alternating (min..max)")
    for (kind, sp), got in runs.items():
        print(f"\n{kind}, {f'{sp} sender processes' if sp else 'sent from the driver'}")
        print(f"  invocations/s      {_fair.spread([n / g['wall'] for g in got], '/s', fmt='.0f')}")
        print(f"  wall               {_fair.spread([g['wall'] for g in got])}")
        print(f"  driver CPU / call  {_fair.spread([g['cpu'] / n for g in got], 'ms', 1e3, fmt='.3f')}"
              f" (the simulator's: {_fair.spread([g['sim_cpu'] / n for g in got], 'ms', 1e3, fmt='.3f')})")
        if sp:
            print(f"  senders' CPU/call  {_fair.spread([g['senders_cpu'] / n for g in got], 'ms', 1e3, fmt='.3f')}"
                  f" ({sp} sender processes, together)")
        driver = statistics.median(g["cpu"] / n for g in got)
        total = statistics.median((g["cpu"] + g["senders_cpu"] + g["sim_cpu"]) / n for g in got)
        print(f"  bounds             the driver's one core: {1 / driver:.0f}/s; this machine's {cores} cores, "
              f"everything on them (driver, senders, simulator: {total * 1e3:.3f} ms a call): {cores / total:.0f}/s")
        print(f"  driver peak RSS    {_fair.spread([g['peak'] for g in got], 'MB', fmt='.0f')}"
              f" (the simulated S3's objects at their peak{', in it' if args.in_process else ', in its process'}: {_fair.spread([g['sim_peak'] for g in got], 'MB', fmt='.0f')})")
        kinds_seen = sorted({k for g in got for k in g["per_call"]})
        per = {k: sorted(g["per_call"].get(k, 0.0) for g in got)[len(got) // 2] for k in kinds_seen}
        print("  requests / call    " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
        print(f"  throttled invokes  {[g['throttled'] for g in got]}; S3 SlowDown {[g['slowdowns'] for g in got]}")
    print("\ntargets: >= 1,000 invocations/s; driver peak < 300 MB")
    return 0


if __name__ == "__main__":
    _fair.main(main)
