"""``wrenpack iam-policy`` makes policies that can match what they name.

Before, ``--account 12`` (or a pasted account with a space) and ``--worker-role
"my role"`` printed a policy IAM accepts and that then matches nothing, so every
request under it is denied with no hint why; and in China or GovCloud every ARN
said ``arn:aws:``, another partition's, which grants nothing there.
"""
from __future__ import annotations

import json

import pytest

from wrenpack.backends.aws.iam import ROLES, iam_policy
from wrenpack.cli import main
from wrenpack.config import current
from wrenpack.errors import ConfigError


def _resources(policy: dict) -> list[str]:
    out = []
    for st in policy["Statement"]:
        res = st["Resource"]
        out += [res] if isinstance(res, str) else res
    return out


@pytest.mark.parametrize("account", ["12", "12345678901x", "1234 5678 9012"])
def test_an_account_id_no_arn_can_hold_is_refused_in_one_line(account):
    with pytest.raises(ConfigError, match="is not an AWS account id \\(12 digits"):
        iam_policy(current(storage="s3://wrenpack-test/p"), "client", account)


def test_a_worker_role_that_is_no_role_name_is_refused():
    with pytest.raises(ConfigError, match="neither a role ARN nor a role name"):
        iam_policy(current(storage="s3://wrenpack-test/p"), "deploy", "123456789012", worker_role="my role")
    ok = iam_policy(current(storage="s3://wrenpack-test/p"), "deploy", "123456789012", worker_role="wrenpack-worker")
    passed = next(st for st in ok["Statement"] if st["Sid"] == "PassWorkerRole")
    assert passed["Resource"] == "arn:aws:iam::123456789012:role/wrenpack-worker"


@pytest.mark.parametrize("region,partition", [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
                                              ("eu-west-1", "aws"), (None, "aws")])
def test_every_arn_is_in_the_regions_partition(region, partition):
    cfg = current(storage="s3://wrenpack-test/p", aws_region=region) if region else current(storage="s3://wrenpack-test/p")
    for role in ROLES:
        arns = [r for r in _resources(iam_policy(cfg, role, "123456789012", worker_role="w")) if r != "*"]
        assert arns and all(r.startswith(f"arn:{partition}:") for r in arns), (role, arns)


@pytest.mark.parametrize("where", ["AWS_REGION", "AWS_DEFAULT_REGION", "profile"])
def test_the_partition_of_a_region_set_outside_wrenpack_counts_too(where, monkeypatch, tmp_path):
    """AWS_REGION=cn-north-1 (or the profile's region), which boto3 and deploy use, gave arn:aws:
    ARNs and region '*': a policy that grants nothing in China. Only aws_region counted."""
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    if where == "profile":
        config = tmp_path / "config"
        config.write_text("[default]\nregion = cn-north-1\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    else:
        monkeypatch.setenv(where, "cn-north-1")
    policy = iam_policy(current(storage="s3://wrenpack-test/p"), "client", "123456789012")
    arns = [r for r in _resources(policy) if r != "*"]
    assert all(r.startswith("arn:aws-cn:") for r in arns), arns
    assert any(r.startswith("arn:aws-cn:lambda:cn-north-1:") for r in arns), arns


def test_the_command_line_exits_2_with_the_line(capsys):
    """Bad settings: exit 2, as deploy and undeploy (it was 1)."""
    assert main(["iam-policy", "--storage", "s3://wrenpack-test/p", "--account", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wrenpack: error: --account '12' is not an AWS account id") and "\n" not in err
    assert main(["iam-policy", "--storage", "s3://wrenpack-test/p", "--account", "123456789012"]) == 0
    assert json.loads(capsys.readouterr().out)["Statement"]
