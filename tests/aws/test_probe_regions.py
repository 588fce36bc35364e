"""A region AWS does not have is said in one line, before any request.

boto3 makes the host name from the region, so a mistyped region (an
availability zone, capitals, a typo) names a host that does not exist. Before,
a map, ``wrenpack doctor`` and ``wrenpack deploy`` each spent botocore's
retries on it (about 40 s a request) and then said "Could not connect to the
endpoint URL ... check the network and s3_endpoint_url": the wrong fix. No
server is needed here: the refusal comes before any connection.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import wrenpack
from wrenpack.backends.aws import clients
from wrenpack.backends.aws.doctor import doctor_checks
from wrenpack.config import current
from wrenpack.errors import ConfigError
from wrenpack.executor import Executor

MISTAKES = [
    ("us-east-1a", "availability zone of us-east-1: use us-east-1"),
    ("US-EAST-1", "regions are written us-east-1"),
    ("us_east_1", "regions are written us-east-1"),
    ("eu-wset-1", "did you mean eu-west-1"),
]


@pytest.fixture(autouse=True)
def _no_endpoints(monkeypatch):
    """The requests would go to AWS's own hosts (nothing here reaches them: none is made)."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_LAMBDA"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("region,why", MISTAKES)
def test_a_map_on_a_region_aws_does_not_have_fails_at_once_naming_the_region(region, why):
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:  # (at the executor's making, now: its store is made there)
        _run_one(Executor(backend="lambda", storage="s3://wrenpack-test/regions", aws_region=region, retries=0,
                          concurrency=2))
    message = str(info.value)
    assert f"aws_region {region!r} is not an AWS region" in message and why in message
    assert "--region" in message and "\n" not in message
    assert time.monotonic() - start < 10  # not botocore's retries against a host that does not exist


@pytest.mark.parametrize("region,why", MISTAKES[:2])
def test_doctor_says_the_region_in_each_check_at_once(region, why):
    start = time.monotonic()
    checks = doctor_checks(current(storage="s3://wrenpack-test/regions", aws_region=region))
    assert [c["check"] for c in checks] == ["credentials", "storage", "conditional writes"]
    for c in checks:
        assert not c["ok"] and why in c["detail"], c
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("argv", [["clean", "--all"], ["jobs"], ["jobs", "show", "20261205-143416-73377e87"]])
def test_the_store_commands_and_a_local_map_on_s3_say_the_region_at_once(argv, capsys):
    """`wrenpack clean`/`jobs` and the local backend with an S3 store went through
    the store alone, which did not check the region: ~40 s, then "check the network"."""
    from wrenpack.cli import main

    start = time.monotonic()
    code = main([*argv, "--storage", "s3://wrenpack-test/regions", "--region", "eu-wset-1"])
    err = capsys.readouterr().err
    assert code == 1 and "did you mean eu-west-1" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match="it names an availability zone of us-east-1"):
        Executor(backend="local", storage="s3://wrenpack-test/regions", aws_region="us-east-1a")
    assert time.monotonic() - start < 10


def test_deploy_refuses_the_region_before_any_request():
    cfg = current(storage="s3://wrenpack-test/regions", aws_region="eu-wset-1")
    with pytest.raises(ConfigError, match="did you mean eu-west-1"):
        clients.lambda_client(cfg)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "ap-southeast-5", None])
def test_every_region_aws_has_passes(region):
    clients.check_region(region, (None, "lambda"), (None, "s3"))


def test_a_server_of_the_users_own_may_name_any_region(monkeypatch):
    """MinIO, Ceph or an emulator: their region names are theirs (Ceph's is often 'default')."""
    clients.check_region("default", ("http://127.0.0.1:9000", "lambda"), ("http://127.0.0.1:9000", "s3"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    clients.check_region("default", (None, "s3"))
    # ... but a client that goes to AWS still needs one of AWS's
    with pytest.raises(ConfigError, match="'default' is not an AWS region"):
        clients.check_region("default", (None, "lambda"), (None, "s3"))
    cfg = SimpleNamespace(aws_profile=None, aws_region="default", lambda_endpoint_url="http://127.0.0.1:9",
                          s3_endpoint_url="http://127.0.0.1:9")
    assert clients.session(cfg).region_name == "default"


def test_a_region_from_the_profile_is_checked_too(tmp_path, monkeypatch):
    """The region in ~/.aws/config (no aws_region, no AWS_REGION): the store's first request used it."""
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1a\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="'eu-west-1a' is not an AWS region .*use eu-west-1"):
        _run_one(Executor(backend="lambda", storage="s3://wrenpack-test/regions", retries=0, concurrency=2))
    assert time.monotonic() - start < 10


def _run_one(ex: Executor) -> None:
    try:
        wrenpack.remote(abs, executor=ex).remote(-1).result(timeout=30)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def test_endpoints_boto3_is_told_to_ignore_are_not_checked_or_taken_as_the_users(monkeypatch):
    """probe10: with AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true boto3 skips AWS_ENDPOINT_URL*; a stale
    bad one made wrenpack refuse a working setup, and a good one skipped the real region's check."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL 'not a url' is not an endpoint URL"):
        clients.check_endpoint(None, "s3")
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    clients.check_endpoint(None, "s3")  # (ignored, as boto3 ignores it)
    assert not clients.custom_endpoint(None, "s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    with pytest.raises(ConfigError, match="not an AWS region"):
        clients.check_region("eu-wset-1", (None, "s3"))  # AWS's own endpoints: the region must be AWS's
    with pytest.raises(ConfigError, match="s3_endpoint_url 'not a url'"):
        clients.check_endpoint("not a url", "s3")  # (a setting of wrenpack's own: boto3 is given it, flag or not)


def _aws_config(monkeypatch, tmp_path, text: str, profile: str) -> None:
    path = tmp_path / "aws-config"
    path.write_text(text)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
    monkeypatch.setenv("AWS_PROFILE", profile)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_LAMBDA", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)


def test_endpoints_set_in_the_aws_config_are_the_users_as_boto3_takes_them(monkeypatch, tmp_path):
    """probe10: a profile whose `services` section points S3 and Lambda at an emulator, with the
    emulator's own region name, was refused as "not an AWS region ... upgrade boto3" (the checks saw
    only the settings and the environment), and a bad `endpoint_url` there ended in a traceback."""
    _aws_config(monkeypatch, tmp_path, "[profile emu]\nregion = local\nservices = emu-svc\n[services emu-svc]\n"
                "s3 =\n  endpoint_url = http://127.0.0.1:9000\nlambda =\n  endpoint_url = http://127.0.0.1:9001\n", "emu")
    assert clients.custom_endpoint(None, "s3") and clients.custom_endpoint(None, "lambda")
    clients.check_region("local", (None, "s3"), (None, "lambda"))  # the emulator's region: its own to name
    from wrenpack.storage import store_for_config

    store_for_config(current(storage="s3://bkt/p"))  # (a store on it opens)
    _aws_config(monkeypatch, tmp_path, "[default]\nregion = us-east-1\nendpoint_url = localhost:4566\n", "default")
    with pytest.raises(ConfigError, match=r"endpoint_url for s3 of profile default in the AWS config 'localhost:4566' "
                                          r"is not an endpoint URL"):
        clients.check_region("us-east-1", (None, "s3"))
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    clients.check_region("us-east-1", (None, "s3"))  # (boto3 skips it then)


def test_doctor_names_a_bad_sts_endpoint(monkeypatch):
    """probe10: a bad AWS_ENDPOINT_URL_STS showed as botocore's "ValueError: Invalid endpoint"
    in the credentials row, without the setting's name."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "localhost:4566")
    checks = doctor_checks(current(storage="s3://wrenpack-test/regions", aws_region="us-east-1"))
    row = next(c for c in checks if c["check"] == "credentials")
    assert not row["ok"] and "AWS_ENDPOINT_URL_STS 'localhost:4566' is not an endpoint URL" in row["detail"], row
