"""What a call costs on Lambda, in requests: count them, price them.

Runs 1,000 small calls (``square``) through the real Lambda backend against
local servers on 127.0.0.1 (moto for S3, the Lambda Runtime Interface
Emulator behind tests/aws/servers.Dispatcher), with every S3 request of the
client and the workers passing through a counting proxy. Four runs: Event and
RequestResponse, chunksize 1 and 10. Prints requests per call and dollars per
million calls: requests (Lambda invokes $0.20/M; S3 PUT/COPY/POST/LIST
$5.00/M; GET/HEAD $0.40/M; DELETE free; the Lambda control plane is not
billed per request) plus compute (GB-seconds at a stated duration and memory),
beside the designs of PyWren (~$13 per million in requests) and Lithops
(~$16), and wrenpack, earlier polling (~$6.2), as counted from their code.

    python benchmarks/bench_lambda_cost.py [--calls 1000] [--duration-s 1] [--memory 1024] [--rounds 5]
    python benchmarks/bench_lambda_cost.py --sim [--calls 1000] [--sim-concurrency 100] [--jitter 0.1] [--speed 20]

``--sim``: the same backend and boto3 clients against the simulated Lambda +
S3 of tests/aws/sim_service.py instead (benchmarks/_simrun.py), for calls
that really last 1 s and 60 s (the 60 s ones on a clock ``--speed`` times
faster than real time, which the client's poller is given too, so its
decisions keep their proportions), each call's duration uniform within
+-``--jitter`` of it, at concurrency 100: requests per call by kind, dollars
per million calls in requests (also without ``WATCH``, the GETs with which
the handler looks for a running call's cancel marker 2 s in, then after
gaps as long as it has run), and how late results were delivered (from the
call's end to its future's result, on the simulation's clock). The simulated
service runs in a process of its own (tests/aws/sim_server.py). Targets:
Event <= $6 per million calls (the result's PUT, $5, is the floor), and
RequestResponse <= $0.25.

The four runs are repeated ``--rounds`` times (default 5), their order
flipped every round; each count is the median of the rounds with its
min..max (counts barely move; the wall time, printed for scale, does). The
designs it is compared with are counted from their code, not run: there is no
measured baseline whose scheduling could differ (the output says so).

Needs the test extras (moto, awslambdaric; the emulator comes from the
aws-sam-cli wheel, see docs/aws.md). Not part of the test suite (~1-3 min a round).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fair  # noqa: E402

#: us-east-1, first tier (see /work/shared/reference or AWS's pricing pages)
PRICE = {"INVOKE": 0.20, "PUT": 5.00, "POST": 5.00, "LIST": 5.00, "GET": 0.40, "HEAD": 0.40, "DELETE": 0.0}
GB_S_X86 = 0.0000166667
#: Dollars per million calls in requests, by design (as read from their code).
DESIGNS = {"PyWren": 13.0, "Lithops": 16.0, "wrenpack, earlier polling": 6.2}


def square(x):
    return x * x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=_fair.at_least(1, "a whole number of calls"), default=1000)
    ap.add_argument("--duration-s", type=_fair.positive("a number of seconds"), default=1.0, help="assumed duration of one call, for GB-seconds")
    ap.add_argument("--memory", type=_fair.memory_mb, default=1024, help="MB, for GB-seconds")
    ap.add_argument("--environments", type=_fair.at_least(1, "a whole number of environments"), default=4, help="emulated execution environments")
    ap.add_argument("--sim", action="store_true", help="against the simulated service: 1 s and 60 s calls")
    ap.add_argument("--sim-concurrency", type=_fair.at_least(1, "a whole number of calls at once"), default=100)
    ap.add_argument("--jitter", type=_fair.at_least_real(0, "a fraction", below=1), default=0.1, help="--sim: durations uniform within +- this fraction")
    ap.add_argument("--speed", type=_fair.positive("a speed-up"), default=20.0, help="--sim: the 60 s calls' clock, times real time")
    _fair.add_arguments(ap, hogs=False)
    args = _fair.parse_args(ap)
    if args.sim:
        return simulated(args)

    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN")]:
        del os.environ[key]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
    import logging

    import boto3

    import wrenpack
    from tests.aws import servers
    from wrenpack.backends.aws.deploy import ENV_FAMILY, ENV_STORE, HANDLER, FunctionSettings, deploy_function, handler_package
    from wrenpack.executor import Executor

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="wrenpack-cost-"))
    moto, moto_url, moto_log = servers.start_moto(tmp / "moto.log")
    proxy = dispatcher = None
    try:
        proxy = servers.CountingProxy(moto_url)
        boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket="cost")
        iam = boto3.client("iam", endpoint_url=moto_url)
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENPACK_", "PYTEST_"))}
        env.update(LAMBDA_TASK_ROOT=str(servers.REPO), PYTHONPATH=str(servers.REPO))
        dispatcher = servers.Dispatcher(servers.rie_binary(), env, tmp, moto_url, per_function=args.environments)
        py = "%d.%d" % sys.version_info[:2]
        settings = FunctionSettings.for_call(args.memory, 30, 512)
        lam = boto3.client("lambda", endpoint_url=dispatcher.url)
        deploy_function(lam, settings.function_name("cost"), settings, {"ZipFile": handler_package()},
                        {"Runtime": f"python{py}", "Handler": HANDLER, "Layers": [], "Architectures": ["x86_64"]},
                        {ENV_FAMILY: "cost", ENV_STORE: "s3://cost", "WRENPACK_DEPLOYED_PYTHON": py}, role=role)
        runs: dict[tuple[str, int], list[tuple[dict[str, int], float]]] = {}
        configs = [(kind, chunksize) for kind in ("Event", "RequestResponse") for chunksize in (1, 10)]
        for rnd in range(args.rounds):
            for kind, chunksize in _fair.order(configs, rnd):
                with Executor(backend="lambda", storage=f"s3://cost/{kind}-{chunksize}", s3_endpoint_url=proxy.url,
                              lambda_endpoint_url=dispatcher.url, function_name="cost", aws_region="us-east-1",
                              memory=args.memory, timeout=30, retries=0, invocation_type=kind,
                              concurrency=4 * args.environments) as ex:
                    f = wrenpack.remote(square, executor=ex)
                    f.map(range(8))  # warm the runtimes and the clients; not counted
                    wrenpack.get(f.map(range(8)))
                    proxy.reset()
                    before = len(dispatcher.invocations)
                    t0 = time.perf_counter()
                    out = wrenpack.get(f.map(range(args.calls), chunksize=chunksize))
                    wall = time.perf_counter() - t0
                    assert out == [x * x for x in range(args.calls)]
                    time.sleep(0.5)  # the job's cleanup runs after its last result
                invokes = len(dispatcher.invocations) - before
                runs.setdefault((kind, chunksize), []).append((dict(proxy.counts, INVOKE=invokes), wall))
            print(f"round {rnd + 1} of {args.rounds} done", flush=True)
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        if proxy is not None:
            proxy.stop()
        servers.stop(moto)
        moto_log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # (the servers' logs and sandboxes: made here)

    n = args.calls
    compute = n * args.duration_s * args.memory / 1024 * GB_S_X86 * 1e6 / n
    print(f"\n{n} calls of square(x), 1 emulated account; per call (S3 counted through a proxy, Invoke at the endpoint)")
    print(f"compute at {args.duration_s:g} s x {args.memory} MB x86_64: ${compute:.2f} per million calls (same in every row)\n")
    kinds = ["INVOKE", "PUT", "GET", "HEAD", "LIST", "POST", "DELETE"]
    print(f"{'invocation':16} {'chunk':>5} " + " ".join(f"{k:>7}" for k in kinds) + f" {'$/M req':>8} {'$/M total':>9} {'vs PyWren':>9} {'vs Lithops':>10} {'wall s':>6}")
    for (kind, chunksize), got in runs.items():
        per = {k: statistics.median(c.get(k, 0) for c, _ in got) / n for k in kinds}
        dollars = sum(per[k] * PRICE[k] for k in kinds)
        wall = statistics.median(w for _, w in got)
        print(f"{kind:16} {chunksize:>5} " + " ".join(f"{per[k]:7.3f}" for k in kinds)
              + f" {dollars:8.2f} {dollars + compute:9.2f} {DESIGNS['PyWren'] / max(dollars, 1e-9):8.1f}x"
              f" {DESIGNS['Lithops'] / max(dollars, 1e-9):9.1f}x {wall:6.1f}")
    print(f"\nmedians of {_fair.rounds_label(args.rounds)} (order flipped every round); min..max of the rounds:")
    for (kind, chunksize), got in runs.items():
        req = [sum(c.get(k, 0) / n * PRICE[k] for k in kinds) for c, _ in got]
        print(f"  {kind:16} chunk {chunksize:>2}: $/M req {_fair.spread(req, '$', fmt='.2f')}; wall {_fair.spread([w for _, w in got])}")
    print("scheduling: no measured baseline (the other designs are counted from their code, not run), so none to align")
    print("\nrequest designs for comparison ($ per million calls, requests only): "
          + ", ".join(f"{k} ~${v:g}" for k, v in DESIGNS.items()))
    print("targets: RequestResponse small results < $1; Event < $6")
    return 0


def simulated(args: argparse.Namespace) -> int:
    """Event and RequestResponse, 1 s and 60 s calls, through the simulated service."""
    import logging

    import _simrun

    _simrun.fake_aws_env()
    logging.basicConfig(level=logging.WARNING)
    configs = [f"{kind}/{duration:g}" for duration in (1.0, 60.0) for kind in ("Event", "RequestResponse")]
    runs: dict[str, list[_simrun.SimRun]] = {c: [] for c in configs}
    for rnd in range(args.rounds):
        for config in _fair.order(configs, rnd):
            kind, duration = config.split("/")
            speed = 1.0 if float(duration) <= 1 else args.speed
            runs[config].append(_simrun.run(kind, args.calls, args.sim_concurrency, float(duration), jitter=args.jitter,
                                            speed=speed, seed=rnd))
        print(f"round {rnd + 1} of {args.rounds} done", flush=True)
    n = args.calls
    print(f"\n{n} calls per run at concurrency {args.sim_concurrency}, durations +-{args.jitter:.0%}; simulated Lambda + S3 "
          f"(real boto3 clients; 60 s calls on a clock {args.speed:g}x real time); {_fair.load_note()}")
    print("requests per call (S3 of the client and the workers, Invoke), medians of the rounds:\n")
    kinds = ["INVOKE", "PUT", "GET", "HEAD", "LIST", "POST", "DELETE", "WATCH"]
    print(f"{'invocation':16} {'call':>5} " + " ".join(f"{k:>7}" for k in kinds)
          + f" {'$/M req':>8} {'no WATCH':>8} {'delay p50':>9} {'p95':>6} {'max':>6}")
    for config, got in runs.items():
        kind, duration = config.split("/")
        per = {k: statistics.median(r.per_call.get(k, 0.0) for r in got) for k in kinds}
        print(f"{kind:16} {duration + ' s':>5} " + " ".join(f"{per[k]:7.3f}" for k in kinds)
              + f" {statistics.median(r.dollars for r in got):8.2f} {statistics.median(r.dollars_without_watch for r in got):8.2f}"
              f" {statistics.median(r.delay(0.5) for r in got):8.2f}s"
              f" {statistics.median(r.delay(0.95) for r in got):5.2f}s {statistics.median(max(r.delays) for r in got):5.2f}s")
    print(f"\nmedians of {_fair.rounds_label(args.rounds)} (order flipped every round); min..max of the rounds:")
    for config, got in runs.items():
        print(f"  {config:22}: $/M req {_fair.spread([r.dollars for r in got], '$', fmt='.2f')} "
              f"(without WATCH {_fair.spread([r.dollars_without_watch for r in got], '$', fmt='.2f')}); "
              f"delay p50 {_fair.spread([r.delay(0.5) for r in got], 's', fmt='.2f')}; wall {_fair.spread([r.wall_s for r in got])}")
    print("delay: from a call's end (its status) to its future's result, seconds of the simulation's clock")
    print("WATCH: the GETs with which the handler looks for a running call's cancel marker (2 s after its start, "
          "then after gaps as long as it has run: 4, 8, 16, 32 s...), counted, not simulated one by one; "
          "'no WATCH' is what a function launched with cancellable=False costs (its calls make none: "
          "tests/aws/test_aws_cancellable.py)")
    print("request designs for comparison ($ per million calls, requests only): "
          + ", ".join(f"{k} ~${v:g}" for k, v in DESIGNS.items()))
    print("targets: Event <= $6 per million calls; RequestResponse <= $0.25 ('$/M req' is the default, whose running "
          "calls can be stopped; 'no WATCH' is cancellable=False)")
    return 0


if __name__ == "__main__":
    _fair.main(main)
