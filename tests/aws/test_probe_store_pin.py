"""A function that serves another store is said before any call is sent.

A deployed function knows its store (``WRENPACK_STORE_URL``) and refuses an
event naming another bucket or a prefix outside it, without writing anything.
Before, a client whose ``storage`` lay elsewhere sent its calls anyway: an
``Event`` call then failed only after its timeout plus 30 s, as ``WorkerLost``
blaming "Lambda's timeout or its 1024 MB memory limit" (the wrong fix), and a
``RequestResponse`` call as ``WorkerCrashed``, retried. Locally the same
program runs. Now the backend compares the two stores when it first reads the
function's configuration, and ``wrenpack doctor`` shows it.

The function here serves one prefix of the test bucket and the client's store is
another (within the IAM scope of the suite's identities).
"""
from __future__ import annotations

import time

import boto3
import pytest

import wrenpack
from tests.aws import servers
from wrenpack.backends.aws.deploy import store_refusal
from wrenpack.backends.aws.doctor import doctor_checks
from wrenpack.config import current
from wrenpack.errors import ConfigError
from wrenpack.executor import Executor

#: the settings of the function that serves only PINNED (no other test deploys this memory)
MEMORY = 1728


@pytest.fixture(scope="module")
def pinned(bucket, lambda_endpoint, stop_pools):
    name = lambda_endpoint.deploy(memory=MEMORY, store_url=f"s3://{bucket}/pinned-here")
    yield f"s3://{bucket}/pinned-here"
    stop_pools(lambda n: n == name)


def _settings(moto_endpoint, lambda_endpoint, storage, **kw):
    return dict(backend="lambda", storage=storage, s3_endpoint_url=moto_endpoint, lambda_endpoint_url=lambda_endpoint.url,
                function_name=lambda_endpoint.function_name, aws_region=servers.REGION, memory=MEMORY,
                timeout=servers.FUNCTION_TIMEOUT, **kw)


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_a_call_whose_store_the_function_does_not_serve_fails_at_once_and_nothing_is_sent(
        kind, moto_endpoint, bucket, lambda_endpoint, pinned):
    before = len(lambda_endpoint.invocations)
    start = time.monotonic()
    elsewhere = f"s3://{bucket}/pinned-elsewhere-{kind}"
    with Executor(**_settings(moto_endpoint, lambda_endpoint, elsewhere, invocation_type=kind, retries=1,
                              concurrency=2)) as ex:
        with pytest.raises(ConfigError) as info:
            wrenpack.remote(abs, executor=ex).remote(-1).result(timeout=60)
    message = str(info.value)
    assert f"serves the store {pinned}" in message and f"({elsewhere} here)" in message
    assert f"--storage {elsewhere}" in message and "\n" not in message
    assert len(lambda_endpoint.invocations) == before  # nothing was sent
    assert time.monotonic() - start < 10
    left = boto3.client("s3", endpoint_url=moto_endpoint, region_name=servers.REGION).list_objects_v2(
        Bucket=bucket, Prefix=elsewhere.split("/", 3)[3])
    assert not left.get("Contents")  # and nothing was left


def test_doctor_says_the_function_serves_another_store(moto_endpoint, bucket, lambda_endpoint, pinned, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    cfg = current(**_settings(moto_endpoint, lambda_endpoint, f"s3://{bucket}/pinned-elsewhere"))
    function = next(c for c in doctor_checks(cfg) if c["check"] == "function")
    assert not function["ok"] and f"serves the store {pinned}" in function["detail"]
    inside = current(**_settings(moto_endpoint, lambda_endpoint, f"{pinned}/run-1"))
    assert next(c for c in doctor_checks(inside) if c["check"] == "function")["ok"]


def test_stores_inside_the_functions_store_are_served():
    def conf_of(**variables):
        return {"FunctionName": "f", "Environment": {"Variables": {"WRENPACK_FUNCTION_FAMILY": "fam", **variables}}}

    conf = conf_of(WRENPACK_STORE_URL="s3://bkt/team")
    assert store_refusal(conf, "s3://bkt/team") is None
    assert store_refusal(conf, "s3://bkt/team/run-1") is None
    assert "serves the store s3://bkt/team" in store_refusal(conf, "s3://bkt/teammate")
    assert "serves the store s3://bkt/team" in store_refusal(conf, "s3://cde/team")
    assert store_refusal(conf_of(WRENPACK_STORE_URL="s3://bkt"), "s3://bkt/x") is None
    assert "deployed without a store" in store_refusal(conf_of(), "s3://bkt/x")
    # nothing is known: the configuration could not be read, its variables could not (KMS), or
    # the function was not deployed by wrenpack
    assert store_refusal({}, "s3://bkt/x") is None
    assert store_refusal({"FunctionName": "f", "Environment": {"Error": {"ErrorCode": "AccessDeniedException"}}},
                         "s3://bkt/x") is None
    assert store_refusal({"FunctionName": "f"}, "s3://bkt/x") is None
