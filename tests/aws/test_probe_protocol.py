"""A function whose handler speaks another event protocol is said before any call is sent.

The scenario: wrenpack is upgraded on the client and the functions are not
redeployed. The handler refuses every event of another protocol version
without writing anything, so before, an ``Event`` call failed only after its
timeout plus 30 s as ``WorkerLost`` blaming "Lambda's timeout or its memory
limit", and a ``RequestResponse`` call as ``WorkerCrashed``, retried. Deploy now
records the handler's protocol in the function's environment, and the backend
(and ``wrenpack doctor``) compare it with the client's first.

Here the client is made to speak protocol ``VERSION + 1`` (a newer wrenpack);
the emulated functions run the checkout's handler, which speaks ``VERSION``.
"""
from __future__ import annotations

import time

import pytest

import wrenpack
from tests.aws import servers
from wrenpack.backends.aws import deploy
from wrenpack.backends.aws.doctor import doctor_checks
from wrenpack.config import current
from wrenpack.errors import ConfigError, ProtocolError
from wrenpack.executor import Executor
from wrenpack.wire import event as event_format

#: the function these tests deploy (no other test deploys this memory)
MEMORY = 1856


@pytest.fixture(scope="module")
def function(lambda_endpoint, stop_pools):
    name = lambda_endpoint.deploy(memory=MEMORY)
    yield name
    stop_pools(lambda n: n == name)


def _settings(moto_endpoint, bucket, lambda_endpoint, prefix, **kw):
    return dict(backend="lambda", storage=f"s3://{bucket}/protocol-{prefix}", s3_endpoint_url=moto_endpoint,
                lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                aws_region=servers.REGION, memory=MEMORY, timeout=servers.FUNCTION_TIMEOUT, **kw)


def test_deploy_records_the_handlers_protocol(function, lambda_endpoint):
    import boto3

    conf = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name=servers.REGION).get_function_configuration(
        FunctionName=function)
    variables = conf["Environment"]["Variables"]
    assert variables[deploy.ENV_PROTOCOL] == str(event_format.VERSION)
    assert variables[deploy.ENV_VERSION] == wrenpack.__version__
    assert deploy.protocol_refusal(conf) is None


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_a_client_of_another_protocol_is_told_to_redeploy_before_anything_is_sent(
        kind, function, moto_endpoint, bucket, lambda_endpoint, monkeypatch):
    monkeypatch.setattr(event_format, "VERSION", event_format.VERSION + 1)  # a newer client
    before = len(lambda_endpoint.invocations)
    start = time.monotonic()
    with Executor(**_settings(moto_endpoint, bucket, lambda_endpoint, kind, invocation_type=kind, retries=1,
                              concurrency=2)) as ex:
        with pytest.raises(ConfigError) as info:
            wrenpack.remote(abs, executor=ex).remote(-1).result(timeout=90)
    message = str(info.value)
    assert f"speaks event protocol {event_format.VERSION - 1}" in message and "redeploy it with this wrenpack" in message
    assert f"wrenpack deploy --function-name {lambda_endpoint.function_name} --memory {MEMORY}" in message
    assert "\n" not in message
    assert len(lambda_endpoint.invocations) == before  # nothing was sent
    assert time.monotonic() - start < 10


def test_doctor_says_the_function_needs_redeploying(function, moto_endpoint, bucket, lambda_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    monkeypatch.setattr(event_format, "VERSION", event_format.VERSION + 1)
    cfg = current(**_settings(moto_endpoint, bucket, lambda_endpoint, "doctor"))
    check = next(c for c in doctor_checks(cfg) if c["check"] == "function")
    assert not check["ok"] and "redeploy it with this wrenpack" in check["detail"]


def test_unknown_protocols_are_not_judged():
    """Functions deployed before deploy recorded it, and images (whatever wrenpack they carry)."""
    assert deploy.protocol_refusal({"FunctionName": "f", "Environment": {"Variables": {}}}) is None
    assert deploy.protocol_refusal({}) is None


def test_a_refusal_the_check_could_not_foresee_is_not_retried_as_a_crash(function, moto_endpoint, bucket, lambda_endpoint,
                                                                          monkeypatch):
    """A function deployed before deploy recorded its protocol: the handler's refusal comes back
    as a ProtocolError naming the fix, once (it was WorkerCrashed, and sent again on each retry)."""
    monkeypatch.setattr(event_format, "VERSION", event_format.VERSION + 1)
    monkeypatch.setattr(deploy, "protocol_refusal", lambda conf: None)  # nothing recorded
    with Executor(**_settings(moto_endpoint, bucket, lambda_endpoint, "rr-refused", invocation_type="RequestResponse",
                              retries=2, concurrency=1)) as ex:
        fut = wrenpack.remote(abs, executor=ex).remote(-1)
        with pytest.raises(ProtocolError, match="refused the call: .*redeploy the worker") as info:
            fut.result(timeout=60)
        ran = [a for _, j, c, _, a in lambda_endpoint.calls if (j, c) == (fut.job_id, fut.call_id)]
    assert "\n" not in str(info.value)
    assert ran == [0]  # sent once: not retried
