"""A call that launches calls of its own runs on Lambda as it runs locally.

Inside a call the default executor is built from the worker's environment: on
Lambda, which names no backend nor storage, a local backend whose workers run
in the call's own execution environment, its store a folder there. Those
workers inherited the whole environment of the Lambda function, its store pin
(``WRENPACK_STORE_URL``, the S3 location the function serves) among it, and a
local worker's handler enforces a pin: it refused every event of the nested
job ("the event names the store s3://None/, outside this worker's s3://...;
... redeploy with --storage", a fix that does not apply). Locally the same
program ran. Now the local backend's workers do not inherit the variables that
describe the Lambda function the driver runs in (``process.base_environment``).
"""
from __future__ import annotations

import os

import pytest

import wrenpack
from tests.aws import servers
from wrenpack.executor import Executor


def add(x, y=0):
    return x + y


def launches_its_own(x):
    """Calls of its own, on the executor its environment gives (the default one)."""
    return wrenpack.get(wrenpack.remote(add).map([x, x + 1]), timeout=60)


def sees(name):
    """``name`` in the environment of the worker that runs the call."""
    return os.environ.get(name)


def nested_worker_sees(name):
    """``name`` in the environment of a worker of a job launched inside the call."""
    return wrenpack.remote(sees).remote(name).result(timeout=60)


@pytest.fixture(scope="module")
def lam(moto_endpoint, bucket, lambda_endpoint):
    with Executor(backend="lambda", storage=f"s3://{bucket}/nested-{os.getpid()}", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                  aws_region=servers.REGION, timeout=servers.FUNCTION_TIMEOUT, concurrency=2, retries=0,
                  invocation_type="RequestResponse") as ex:
        yield ex


def test_a_call_that_launches_calls_of_its_own_runs_on_lambda(lam):
    assert wrenpack.remote(launches_its_own, executor=lam).remote(1).result(timeout=120) == [1, 2]


def test_the_nested_workers_do_not_inherit_the_lambda_functions_store_pin(lam):
    """The function's own variables stay the function's: its handler reads them, a local worker
    must not (the pin was the one that failed every call; the rest name a function it is not)."""
    assert wrenpack.remote(sees, executor=lam).remote("WRENPACK_STORE_URL").result(timeout=60)  # (pinned)
    seen = wrenpack.remote(nested_worker_sees, executor=lam).map(
        ["WRENPACK_STORE_URL", "WRENPACK_FUNCTION_FAMILY", "AWS_LAMBDA_RUNTIME_API"])
    assert wrenpack.get(seen, timeout=120) == [None, None, None]


def returns_a_nested_future(x):
    """The future of a call launched inside this call, returned (its job is the call's workers')."""
    return wrenpack.remote(add).remote(x, 1)


def test_a_future_of_a_job_launched_inside_a_lambda_call_cannot_leave_it(lam):
    """probe15's finding 4: returned from a call on Lambda, such a future named a folder of
    the Lambda environment, whose workers stop when the call returns: the program could
    never read it ("the program that launched the call ended", after a second), and made
    that folder on its own machine trying. Now the call fails, saying why and what to do."""
    with pytest.raises(wrenpack.WrenpackError, match="cannot leave the call.*wait for its result inside the call"):
        wrenpack.remote(returns_a_nested_future, executor=lam).remote(1).result(timeout=120)
    assert wrenpack.remote(launches_its_own, executor=lam).remote(2).result(timeout=120) == [2, 3]  # (waited inside)
