"""The Lambda backend at scale, against the simulated Lambda + S3 (``sim_service``):
real boto3 clients, genuine sealed results, every request counted."""
from __future__ import annotations


import pytest

import wrenpack
from wrenpack.executor import Executor

from tests.aws.sim_service import ScaledClock, SimFunction, SimService
from tests.aws.sim_worker import WrenpackFunction


def _square(x):
    return x * x


def _run(sim: SimService, kind: str, n: int, concurrency: int, **backend: object) -> list[int]:
    with Executor(backend="lambda", storage="s3://simbucket/t", s3_endpoint_url=sim.s3_url,
                  lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                  timeout=60, retries=0, invocation_type=kind, concurrency=concurrency) as ex:
        for name, value in backend.items():
            setattr(ex.backend, name, value)
        f = wrenpack.remote(_square, executor=ex)
        wrenpack.get(f.map(range(4)))  # the function is looked up once: not counted
        sim.reset_counts()
        out = wrenpack.get(f.map(range(n)))
    return out


@pytest.mark.parametrize("kind,n", [("Event", 500), pytest.param("RequestResponse", 500, marks=pytest.mark.slow)])
def test_sim_calls_results_and_requests_per_call(fake_credentials, kind, n):
    """500 calls at concurrency 200 (2.5 rounds): every result right, and what each call cost in
    requests: one Invoke; Event: the worker's one PUT, the client's GET that reads
    it plus at most one GET that came too early (a fraction of one on a quiet machine), and
    hardly any LIST (the old poller listed every shard every 0.5 s: 0.2 LISTs a call here);
    RequestResponse: no S3 request per call."""
    with SimService(function=WrenpackFunction(_square, duration=0.05), concurrency=200, invoke_latency=0.005) as sim:
        sim.s3.create_bucket("simbucket")
        out = _run(sim, kind, n, 200)
        assert out == [x * x for x in range(n)]
        client, worker = sim.requests("client"), sim.requests("worker")
        assert client["INVOKE"] == n
        assert "THROTTLED" not in client
        if kind == "Event":
            assert worker == {"PUT": n}
            assert n <= client["GET"] <= 2 * n, client
            assert client.get("LIST", 0) <= 0.05 * n, client  # (the old poller: 0.15-0.2)
        else:
            assert worker == {}
            assert client.get("GET", 0) == 0, client
            assert client.get("LIST", 0) + client.get("PUT", 0) <= 20, client
        assert not sim.lambda_.errors
        assert sim.lambda_.peak_running <= 200


def test_sim_s3_slows_down_beyond_a_prefix_rate(fake_credentials):
    """Over its writes a second to one prefix (3,500 on S3; 350 here, to be quick) S3 answers
    503 SlowDown; another prefix is not affected."""
    import boto3
    from botocore.config import Config

    with SimService(clock=ScaledClock(1e-6), put_rate=350) as sim:  # (almost) stopped: the buckets do not refill
        sim.s3.create_bucket("simbucket")
        s3 = boto3.client("s3", endpoint_url=sim.s3_url, config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        codes = []
        for i in range(360):
            try:
                s3.put_object(Bucket="simbucket", Key=f"a/{i}", Body=b"x")
                codes.append(200)
            except s3.exceptions.ClientError as exc:
                codes.append(exc.response["Error"]["Code"])
        assert codes[:350] == [200] * 350
        assert set(codes[350:]) == {"SlowDown"}
        s3.put_object(Bucket="simbucket", Key="b/0", Body=b"y")
        assert s3.get_object(Bucket="simbucket", Key="b/0")["Body"].read() == b"y"
        listed = s3.list_objects_v2(Bucket="simbucket", Prefix="a/", StartAfter="a/298", MaxKeys=20)
        stored = sorted(f"a/{i}" for i, code in enumerate(codes) if code == 200)
        assert [o["Key"] for o in listed["Contents"]] == [k for k in stored if k > "a/298"][:20]
        # (each listed with its own ETag, as S3 lists it: a listed range's reads are checked against it)
        head = s3.head_object(Bucket="simbucket", Key=listed["Contents"][0]["Key"])
        assert listed["Contents"][0]["ETag"] == head["ETag"] != '"0"'


def test_sim_lambda_throttles_sync_calls_beyond_concurrency(fake_credentials):
    """A RequestResponse call beyond the concurrency limit gets TooManyRequestsException;
    Event calls wait in the queue instead."""
    import threading

    import boto3
    from botocore.config import Config

    class Slow(SimFunction):
        def duration(self, event):
            return 0.3

        def finish(self, event, ctx):
            return {"ok": True}

    with SimService(function=Slow(), concurrency=2, invoke_latency=0.0) as sim:
        lam = boto3.client("lambda", endpoint_url=sim.lambda_url, config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        codes = []

        def call():
            try:
                lam.invoke(FunctionName="f", InvocationType="RequestResponse", Payload=b"{}")
                codes.append("ok")
            except lam.exceptions.TooManyRequestsException:
                codes.append("throttled")

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == ["ok", "ok", "throttled", "throttled"]
        for _ in range(4):
            assert lam.invoke(FunctionName="f", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
        assert sim.lambda_.running == 2 and sim.lambda_.peak_running == 2


def _run_backend(sim: SimService, kind: str, n: int, concurrency: int, clock=None) -> list[int]:
    """``n`` calls on a LambdaBackend built here (so it can be given the simulation's clock)."""
    from wrenpack.backends.aws.backend import LambdaBackend
    from wrenpack.storage.s3 import S3Store

    store = S3Store("simbucket", "t", endpoint_url=sim.s3_url, region="us-east-1")
    backend = LambdaBackend(store, function_name="sim", endpoint_url=sim.lambda_url, region="us-east-1",
                            concurrency=concurrency, invocation_type=kind, clock=clock)
    with Executor(backend=backend, storage="s3://simbucket/t", s3_endpoint_url=sim.s3_url,
                  lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                  timeout=300, retries=0, invocation_type=kind, concurrency=concurrency) as ex:
        f = wrenpack.remote(_square, executor=ex)
        wrenpack.get(f.map(range(4)))
        sim.reset_counts()
        out = wrenpack.get(f.map(range(n)))
        before = sim.requests(None)
        sim.clock.sleep(5.0)
        idle = {k: v - before.get(k, 0) for k, v in sim.requests(None).items() if v != before.get(k, 0)}
    return out, idle


def test_sim_checks_of_long_calls_do_not_grow_with_their_duration(fake_credentials):
    """200 calls of 30 s (+-10%) at concurrency 100, on a clock 60x real time: each call costs
    its Invoke, its worker's PUT and under three GETs, and the job a few LISTs, however long
    the calls run (every shard listed every 0.5 s would be ~0.8 LIST a call); and
    nothing is asked of S3 once nothing is in flight."""
    import random

    rng = random.Random(1)
    n = 200
    clock = ScaledClock(60)
    fn = WrenpackFunction(_square, duration=lambda event: 30.0 * (0.9 + 0.2 * rng.random()))
    with SimService(clock, function=fn, concurrency=100, invoke_latency=0.025) as sim:
        sim.s3.create_bucket("simbucket")
        out, idle = _run_backend(sim, "Event", n, 100, clock=clock)
        assert out == [x * x for x in range(n)]
        assert idle == {}
        client = sim.requests("client")
        # (and the handler's looks for each call's cancel marker while it runs: at 2, 4, 8, 16
        # s, and 32 s in the sixth of the calls that run that long; every 2 s was 15 in 30 s)
        worker = sim.requests("worker")
        # One PUT a call, its result; and a start mark from a queued call that started later than
        # the driver asked to be told of (the lost-call check): none on time, a few when a loaded
        # machine's delays, 60x on this clock, hold a queued call back.
        assert client["INVOKE"] == n and worker.pop("PUT") == n + fn.start_marks and set(worker) == {"WATCH"}
        assert 4 * n <= worker["WATCH"] <= 4.4 * n, worker
        # (the GETs are of the results, some asked before they were written: a call the driver expects
        # to have ended is looked for again. 266-524 in 10 runs here, 1.3-2.6 a call, as the machine's
        # delays, 60x on this clock, move the calls' ends; the bound was 2n, and failed 1 run in 5.
        # Looked for every 2 s, a 30 s call would cost 15)
        assert n <= client["GET"] <= 3 * n, client
        # (the job's LISTs: one per poll round in which many of its calls are due; how many rounds
        # that is depends on how fast the driver's clients are on this 60x clock: 8-9 here when
        # every boto3 session parsed botocore's models again, 9-11 since the tests share them;
        # every shard listed every 0.5 s would be ~160)
        assert client.get("LIST", 0) <= 0.1 * n, client
        assert client.get("HEAD", 0) == 0, client


@pytest.mark.slow
def test_sim_20000_calls_at_concurrency_1000(fake_credentials):
    """20,000 calls at concurrency 1,000 (25 ms invokes): all results, one Invoke and one
    worker PUT each, at most 1.5 GETs and hardly any LIST per call, the concurrency kept."""
    n = 20_000
    with SimService(function=WrenpackFunction(_square, duration=0.1), concurrency=1000, invoke_latency=0.025) as sim:
        sim.s3.create_bucket("simbucket")
        out = _run(sim, "Event", n, 1000)
        assert out == [x * x for x in range(n)]
        client = sim.requests("client")
        assert client["INVOKE"] == n and sim.requests("worker") == {"PUT": n}
        assert client["GET"] <= 2 * n and client.get("LIST", 0) <= 0.05 * n, client
        assert sim.lambda_.peak_running <= 1000 and not sim.lambda_.errors
        assert sum(sim.s3.slowdowns.values()) == 0
