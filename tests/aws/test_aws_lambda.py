"""The Lambda backend end to end: ``f.map`` -> boto3 ``invoke`` -> the AWS
Runtime Interface Emulator -> awslambdaric -> wrenpack's handler -> moto S3 -> back.

The emulated function's configured timeout is 3 s (the RIE enforces it), so
every map here uses ``timeout=3``, the setting ``wrenpack deploy`` would give it.
"""
from __future__ import annotations

import json
import os
import time

import boto3
import pytest

import wrenpack
from wrenpack import keys
from wrenpack.backends.aws_lambda import LambdaBackend
from wrenpack.errors import ConfigError, TaskTimeout, WorkerCrashed, WorkerLost
from wrenpack.executor import Executor

TIMEOUT = 3


def square(x):
    return x * x


def fails(x):
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


def sleeps(x):
    time.sleep(x)
    return x


def dies(x):
    os._exit(7)  # the runtime vanishes without writing a result


def whoami(x):
    return {"pid": os.getpid(), "fn": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "x": x}


def _executor(moto_endpoint, bucket, lambda_endpoint, prefix, **overrides):
    settings = dict(
        backend="lambda",
        storage=f"s3://{bucket}/{prefix}",
        s3_endpoint_url=moto_endpoint,
        lambda_endpoint_url=lambda_endpoint.url,
        function_name=lambda_endpoint.function_name,
        aws_region="us-east-1",
        concurrency=8,
        timeout=TIMEOUT,
        retries=0,
    )
    settings.update(overrides)
    return Executor(**settings)


@pytest.fixture(scope="module", params=["Event", "RequestResponse"])
def lam(request, moto_endpoint, bucket, lambda_endpoint):
    ex = _executor(moto_endpoint, bucket, lambda_endpoint, f"e2e-{request.param}", invocation_type=request.param)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def local_executor(tmp_path_factory):
    ex = Executor(backend="local", storage=str(tmp_path_factory.mktemp("local-store")), concurrency=2, retries=0, timeout=TIMEOUT)
    yield ex
    ex.shutdown()


def test_map_50_items_through_the_emulator(lam, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    f = wrenpack.remote(square, executor=lam)
    futures = f.map(range(50))
    assert wrenpack.get(futures) == [x * x for x in range(50)]
    kinds = {k for k, _ in lambda_endpoint.invocations[before:]}
    assert kinds == {lam.config.invocation_type}
    assert futures[0].status["exit"] == "ok" and futures[0].status["python"]


def test_runs_inside_the_lambda_runtime(lam):
    out = wrenpack.remote(whoami, executor=lam).map([1, 2])
    values = wrenpack.get(out)
    assert {v["fn"] for v in values} == {"wrenpack-worker"}
    assert all(v["pid"] != os.getpid() for v in values)


def test_errors_match_the_local_backend(lam, local_executor):
    """The same user exception and the same timeout error type on both backends."""
    outcomes = {}
    for name, ex in (("lambda", lam), ("local", local_executor)):
        errs = wrenpack.remote(fails, executor=ex).map([1, 2, 3])
        assert errs[0].result() == 1
        with pytest.raises(ValueError, match="bad input 3") as user:
            errs[2].result()
        slow = wrenpack.remote(sleeps, executor=ex, timeout=TIMEOUT).map([0.1, 10])
        assert slow[0].result() == 0.1
        with pytest.raises(TaskTimeout) as timeout:
            slow[1].result()
        outcomes[name] = (type(user.value), type(timeout.value))
    assert outcomes["lambda"] == outcomes["local"] == (ValueError, TaskTimeout)


def test_throttling_is_retried_with_backoff(lam, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    lambda_endpoint.throttle_next = 4
    assert wrenpack.get(wrenpack.remote(square, executor=lam).map([1, 2, 3])) == [1, 4, 9]
    seen = [outcome for _, outcome in lambda_endpoint.invocations[before:]]
    assert seen.count("throttled") == 4 and len(seen) == 7


def test_unknown_function_is_a_config_error(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "nofn", function_name="no-such-function") as ex:
        fut = wrenpack.remote(square, executor=ex).map([1])[0]
        with pytest.raises(ConfigError, match="run `wrenpack deploy`"):
            fut.result(timeout=30)


def test_duplicate_delivery_keeps_the_first_result(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "dup", keep_objects=True,
                   invocation_type="RequestResponse") as ex:
        sent = []
        invoke_many = ex.backend.invoke_many
        ex.backend.invoke_many = lambda invs: (sent.extend(dict(i.event) for i in invs), invoke_many(invs))[1]
        fut = wrenpack.remote(whoami, executor=ex).map([5])[0]
        first = fut.result()
        job_id, call_id = fut.job_id, fut.call_id
        stored = ex.store.get(keys.result_key(job_id, call_id))
        # Deliver the same call again, as Lambda may do with an async event.
        event = dict(sent[0], attempt=1)
        client = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name="us-east-1")
        reply = client.invoke(FunctionName=lambda_endpoint.function_name, Payload=json.dumps(event))
        status = json.loads(reply["Payload"].read())
        assert status["exit"] == "ok" and status["first"] is False
        assert ex.store.get(keys.result_key(job_id, call_id)) == stored
        assert first["x"] == 5
        ex.store.delete_prefix(keys.job_prefix(job_id))


def test_vanished_worker_is_reported(moto_endpoint, bucket, lambda_endpoint):
    """Event: no result by timeout + margin -> WorkerLost. RequestResponse: the
    reply says the runtime died -> WorkerCrashed at once."""
    for kind, expected in (("Event", WorkerLost), ("RequestResponse", WorkerCrashed)):
        with _executor(moto_endpoint, bucket, lambda_endpoint, f"lost-{kind}", invocation_type=kind) as ex:
            backend = LambdaBackend(
                ex.store, function_name=lambda_endpoint.function_name, endpoint_url=lambda_endpoint.url,
                region="us-east-1", invocation_type=kind, poll_interval=0.2, deadline_margin_s=0.5,
            )
            ex._backend = backend
            start = time.monotonic()
            fut = wrenpack.remote(dies, executor=ex).map([1])[0]
            with pytest.raises(expected) as info:
                fut.result(timeout=30)
            elapsed = time.monotonic() - start
            assert "\n" not in str(info.value)
            if kind == "Event":
                assert TIMEOUT <= elapsed < TIMEOUT + 5
                assert "CloudWatch" in str(info.value)


def test_concurrency_cap_limits_calls_in_flight(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cap", concurrency=2) as ex:
        lambda_endpoint.max_background = 0
        assert wrenpack.get(wrenpack.remote(sleeps, executor=ex).map([0.3] * 6)) == [0.3] * 6
        assert 1 <= lambda_endpoint.max_background <= 2


def test_servers_listen_on_loopback_only(moto_endpoint, lambda_endpoint, listening):
    ports = {int(moto_endpoint.rsplit(":", 1)[1]), int(lambda_endpoint.url.rsplit(":", 1)[1])}
    for emu in lambda_endpoint.emulators:
        ports |= {emu.port, emu.api_port}
    bound = {port: addr for addr, port in listening() if port in ports}
    assert set(bound) == ports
    assert set(bound.values()) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0


def _plus_one(fut):
    return fut.result(timeout=20) + 1


def test_submit_and_futures_between_calls_on_lambda(moto_endpoint, bucket, lambda_endpoint):
    """Issue 11 on the emulated Lambda path: the concurrent.futures API, and a
    future passed into a call resolves there (read and verified from S3)."""
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cf", invocation_type="RequestResponse") as ex:
        assert ex.submit(square, 6).result(timeout=30) == 36
        assert list(ex.map(square, [1, 2, 3], timeout=60)) == [1, 4, 9]
        first = ex.submit(sleeps, 0.5)
        assert ex.submit(_plus_one, first).result(timeout=30) == 1.5
        # a returned future resolves to its call's result when asked
        assert wrenpack.get(ex.submit(_identity, first), timeout=30) == 0.5
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def _identity(x):
    return x
