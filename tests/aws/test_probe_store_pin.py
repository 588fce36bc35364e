"""A function that serves another store is said before any call is sent.

A deployed function knows its store (``WRENPACK_STORE_URL``) and refuses an
event naming another bucket or a prefix outside it, without writing anything.
Before, a client whose ``storage`` lay elsewhere sent its calls anyway: an
``Event`` call then failed only after its timeout plus 30 s, as ``WorkerLost``
blaming "Lambda's timeout or its 1024 MB memory limit" (the wrong fix), and a
``RequestResponse`` call as ``WorkerCrashed``, retried. Locally the same
program runs. Now the backend compares the two stores when it first reads the
function's configuration, and ``wrenpack doctor`` shows it.
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

OTHER = "wrenpack-probe-other"


@pytest.fixture(scope="module")
def other_bucket(moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=servers.REGION)
    s3.create_bucket(Bucket=OTHER)
    yield OTHER
    s3.delete_bucket(Bucket=OTHER)


def _settings(moto_endpoint, lambda_endpoint, storage, **kw):
    return dict(backend="lambda", storage=storage, s3_endpoint_url=moto_endpoint, lambda_endpoint_url=lambda_endpoint.url,
                function_name=lambda_endpoint.function_name, aws_region=servers.REGION, concurrency=2,
                timeout=servers.FUNCTION_TIMEOUT, retries=1, **kw)


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_a_call_whose_store_the_function_does_not_serve_fails_at_once_and_nothing_is_sent(
        kind, moto_endpoint, bucket, lambda_endpoint, other_bucket):
    before = len(lambda_endpoint.invocations)
    start = time.monotonic()
    with Executor(**_settings(moto_endpoint, lambda_endpoint, f"s3://{other_bucket}/x", invocation_type=kind)) as ex:
        with pytest.raises(ConfigError) as info:
            wrenpack.remote(abs, executor=ex).remote(-1).result(timeout=60)
    message = str(info.value)
    assert "serves the store s3://wrenpack-test" in message and f"(s3://{other_bucket}/x here)" in message
    assert "--storage s3://" in message and "\n" not in message
    assert len(lambda_endpoint.invocations) == before  # nothing was sent
    assert time.monotonic() - start < 10
    assert not boto3.client("s3", endpoint_url=moto_endpoint, region_name=servers.REGION).list_objects_v2(
        Bucket=other_bucket).get("Contents")  # and nothing was left


def test_doctor_says_the_function_serves_another_store(moto_endpoint, lambda_endpoint, other_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    cfg = current(**{k: v for k, v in _settings(moto_endpoint, lambda_endpoint, f"s3://{other_bucket}/x").items()
                     if k not in ("backend", "concurrency", "retries")})
    function = next(c for c in doctor_checks(cfg) if c["check"] == "function")
    assert not function["ok"] and "serves the store s3://wrenpack-test" in function["detail"]


def test_stores_inside_the_functions_store_are_served():
    conf = {"FunctionName": "f", "Environment": {"Variables": {"WRENPACK_STORE_URL": "s3://bkt/team"}}}
    assert store_refusal(conf, "s3://bkt/team") is None
    assert store_refusal(conf, "s3://bkt/team/run-1") is None
    assert "serves the store s3://bkt/team" in store_refusal(conf, "s3://bkt/teammate")
    assert "serves the store s3://bkt/team" in store_refusal(conf, "s3://cde/team")
    assert store_refusal({"FunctionName": "f", "Environment": {"Variables": {"WRENPACK_STORE_URL": "s3://bkt"}}}, "s3://bkt/x") is None
    assert "deployed without a store" in store_refusal({"FunctionName": "f"}, "s3://bkt/x")
    assert store_refusal({}, "s3://bkt/x") is None  # the configuration could not be read: nothing is known
