"""Runtimes that Lambda would refuse, or that would fill /tmp, are refused by
``wrenpack deploy`` in one line before anything is uploaded.

Neither moto nor the emulator enforce these: moto takes a layer of any size, and
the emulated sandbox's /tmp is not limited to the function's ephemeral storage.
So before, such a deploy "worked" here and failed on AWS: a layer over the 250 MB
unzipped limit was published and then the function refused (or, for an archive
larger than /tmp, every call failed on its cold start with a full disk).

The endpoints here are a closed port: with the check, no request is made at all
(without it, the deploy reached for the port and failed otherwise).
"""
from __future__ import annotations

import os
import zipfile

import pytest

from wrenpack.backends.aws import deploy
from wrenpack.backends.aws.deploy import DeployRequest, FunctionSettings, deploy_functions
from wrenpack.config import current
from wrenpack.errors import ConfigError
from tests.aws.runtime_dates import deploy_as_of_a_live_day

MIB = 1024 * 1024
NOWHERE = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture(autouse=True)
def _live_python(monkeypatch):
    deploy_as_of_a_live_day(monkeypatch)


def _cfg():
    return current(storage="s3://wrenpack-test/sizes", aws_region="us-east-1", s3_endpoint_url=NOWHERE,
                   lambda_endpoint_url=NOWHERE)


def _no_request(monkeypatch):
    """Any AWS client made from here on fails the test at its first request."""
    import botocore.endpoint

    def refuse(*args, **kwargs):
        raise AssertionError("deploy made an AWS request before refusing the runtime")

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", refuse)


def _layer(root, unzipped_mb: int) -> str:
    """A build-runtime-like output whose layer.zip unzips to ``unzipped_mb`` MiB (zeros: a small zip)."""
    out = root / "build"
    out.mkdir()
    with zipfile.ZipFile(out / "layer.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("python/big.bin", "w", force_zip64=True) as f:
            chunk = bytes(MIB)
            for _ in range(unzipped_mb):
                f.write(chunk)
    return str(out)


def test_a_layer_over_250_mb_unzipped_is_refused_before_it_is_uploaded(tmp_path, monkeypatch):
    runtime = _layer(tmp_path, 251)
    _no_request(monkeypatch)
    with pytest.raises(ConfigError) as info:
        deploy_functions(_cfg(), DeployRequest(runtime_dir=runtime, role="arn:aws:iam::123456789012:role/w"))
    message = str(info.value)
    assert "unzips to 251.0 MiB" in message and "over Lambda's 250 MiB limit" in message
    assert "--runtime-archive" in message and "--image-uri" in message and "\n" not in message


def test_a_layer_under_the_limit_passes_the_check(tmp_path):
    data = (tmp_path / "l.zip")
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("python/x.py", b"x = 1\n")
    deploy.check_layer_fits(data, data.read_bytes(), deploy.handler_package())


def test_a_runtime_archive_larger_than_tmp_is_refused_naming_the_ephemeral_storage_that_fits(tmp_path, monkeypatch):
    python_dir = tmp_path / "build" / "python"
    python_dir.mkdir(parents=True)
    with open(python_dir / "big.so", "wb") as f:  # sparse: 600 MiB to stat, nothing on disk
        f.truncate(600 * MIB)
    os.link(python_dir / "big.so", python_dir / "same.so")  # a hard link is stored and extracted once
    _no_request(monkeypatch)
    with pytest.raises(ConfigError) as info:
        deploy_functions(_cfg(), DeployRequest(runtime_archive=str(tmp_path / "build"), ephemeral_storage=[512],
                                               role="arn:aws:iam::123456789012:role/w"))
    message = str(info.value)
    assert "needs 600 MB of /tmp" in message and "ephemeral_storage=512 MB" in message
    assert "--ephemeral-storage 600 or more" in message and "\n" not in message


def test_an_archive_that_fits_every_functions_tmp_passes(tmp_path):
    small, large = (FunctionSettings.for_call(1024, 60, mb) for mb in (512, 2048))
    assert deploy.check_archive_fits(tmp_path, 400 * MIB, [small, large]) == 400
    with pytest.raises(ConfigError, match=r"needs 550 MB of /tmp .*ephemeral_storage=512 MB"):
        deploy.check_archive_fits(tmp_path, 550 * MIB, [large, small])
    with pytest.raises(ConfigError, match="over Lambda's largest /tmp"):
        deploy.check_archive_fits(tmp_path, 11000 * MIB, [large])


@pytest.mark.parametrize("role", ["wrenpack-worker", "arn:aws:iam::12:role/w", "arn:aws:iam::123456789012:user/w"])
def test_a_role_that_is_no_role_arn_is_refused_before_any_request(role, monkeypatch):
    _no_request(monkeypatch)
    with pytest.raises(ConfigError, match="is not an IAM role ARN"):
        deploy_functions(_cfg(), DeployRequest(role=role))


def test_role_arns_of_every_partition_and_with_paths_pass():
    for role in ("arn:aws:iam::123456789012:role/w", "arn:aws-cn:iam::123456789012:role/service-role/w_1+=,.@-"):
        assert deploy.ROLE_ARN.fullmatch(role)


# -- lambda_auto_deploy copies a runtime archive only to functions whose /tmp holds it ----------------
@pytest.mark.iam_identity("deploy")
def test_deploy_records_the_tmp_a_runtime_archive_needs(tmp_path, monkeypatch, moto_endpoint, bucket):
    python_dir = tmp_path / "build" / "python"
    python_dir.mkdir(parents=True)
    with open(python_dir / "big.so", "wb") as f:
        f.truncate(100 * MIB)  # sparse: 100 MiB to stat
    made = []
    monkeypatch.setattr(deploy, "deploy_function", lambda lam, name, settings, code, package, env, **kw: made.append(env) or {})
    # (moto's Lambda: deploy reads whether the function exists, and which store it serves, first)
    cfg = current(storage=f"s3://{bucket}/sizes", aws_region="us-east-1", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=moto_endpoint)
    deploy_functions(cfg, DeployRequest(runtime_archive=str(tmp_path / "build"), ephemeral_storage=[1024]))
    assert made[0][deploy.ENV_RUNTIME_TMP] == "100"  # the extracted tree
    s3 = __import__("boto3").client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="sizes/").get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=obj["Key"])


class _Family:
    """A Lambda client that lists one deployed function of family ``fam``: a runtime archive needing 600 MB of /tmp."""

    def __init__(self, settings: FunctionSettings) -> None:
        import dataclasses
        import json

        self.conf = {"FunctionName": "fam-template", "Role": "arn:aws:iam::123456789012:role/w", "Runtime": "python3.12",
                     "Handler": deploy.ARCHIVE_HANDLER, "Environment": {"Variables": {
                         deploy.ENV_FAMILY: "fam", deploy.ENV_SETTINGS: json.dumps(dataclasses.asdict(settings)),
                         deploy.ENV_RUNTIME_TMP: "600", "WRENPACK_RUNTIME_ARCHIVE": "s3://bkt/runtimes/r.tar.gz"}}}

    def list_functions(self, **kw):
        return {"Functions": [self.conf]}

    def create_function(self, **kw):
        raise AssertionError("auto-deploy created a function whose /tmp cannot hold its runtime archive")

    get_function_configuration = create_function


def test_auto_deploy_refuses_a_copy_whose_tmp_cannot_hold_the_runtime_archive():
    template = FunctionSettings.for_call(1024, 60, 1024, python="3.12")
    wanted = FunctionSettings.for_call(3008, 60, 512, python="3.12")
    with pytest.raises(ConfigError) as info:
        deploy.auto_deploy(_Family(template), wanted.function_name("fam"), wanted, "fam", on=deploy_day())
    message = str(info.value)
    assert "needs 600 MB of /tmp" in message and "ephemeral_storage=600 or more" in message and "\n" not in message


def deploy_day():
    from datetime import date

    return date(2026, 12, 6)
