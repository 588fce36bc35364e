"""Lambda's Python runtime dates, one-line set-up errors, event age and printed
deploy commands, as a user meets them: ``wrenpack deploy`` / ``doctor`` /
``iam-policy`` against moto on 127.0.0.1 (moto records functions, never runs them)."""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

import wrenpack.backends.aws.runtimes as runtimes
from tests.aws import servers
from tests.aws.runtime_dates import PYTHON, deploy_as_of_a_live_day
from wrenpack.backends.aws.deploy import MAX_EVENT_AGE_S
from wrenpack.cli import main

#: under WRENPACK_TEST_IAM=enforce these run as the deploy identity (tests/aws/iam_proxy.py)
pytestmark = pytest.mark.iam_identity("deploy")

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/wrenpack-worker-role"
#: days in python3.10/3.11's life cycle (deprecated 2026-06-30, create blocked 2026-07-31, update blocked 2026-08-31)
SUPPORTED_DAY, DEPRECATED_DAY, CREATE_BLOCKED_DAY = datetime.date(2026, 5, 1), datetime.date(2026, 7, 10), datetime.date(2026, 8, 10)
BLOCKED_DAY = datetime.date(2026, 12, 5)


@pytest.fixture
def aws_cli(moto_endpoint, bucket, role_arn, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WRENPACK_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WRENPACK_STORAGE", f"s3://{bucket}/runtimes")
    monkeypatch.setenv("WRENPACK_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_LAMBDA_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    return moto_endpoint


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def on_day(monkeypatch, day):
    monkeypatch.setattr(runtimes, "today", lambda: day)


def family(endpoint, base):
    lam = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1")
    names = [f["FunctionName"] for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]]
    return sorted(n for n in names if n.startswith(base + "-"))


def error_line(err):
    """The one line a failed command printed (besides its warnings), and that it printed only that."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("wrenpack: error: "), err
    return lines[0]


# -- the table ------------------------------------------------------------------------
def test_the_table_holds_the_python_runtimes_with_their_dates_and_glibc():
    rows = {r.python: r for r in runtimes.table()}
    assert {"3.10", "3.11", "3.12", "3.13"} <= set(rows)
    for old in ("3.10", "3.11"):
        r = rows[old]
        assert (r.os, r.glibc) == ("Amazon Linux 2", "2.26")
        assert (r.deprecated, r.block_create, r.block_update) == (
            datetime.date(2026, 6, 30), datetime.date(2026, 7, 31), datetime.date(2026, 8, 31))
    for new in ("3.12", "3.13"):
        assert (rows[new].os, rows[new].glibc) == ("Amazon Linux 2023", "2.34")
        assert rows[new].block_update.year >= 2028
    r = rows["3.11"]
    assert [r.state(d) for d in (SUPPORTED_DAY, DEPRECATED_DAY, CREATE_BLOCKED_DAY, BLOCKED_DAY)] == [
        runtimes.SUPPORTED, runtimes.DEPRECATED, runtimes.CREATE_BLOCKED, runtimes.BLOCKED]
    assert runtimes.live(BLOCKED_DAY)[-1] == "3.12" and "3.11" not in runtimes.live(BLOCKED_DAY)
    assert "3.11" in runtimes.live(SUPPORTED_DAY)


def test_refusal_names_the_ways_out_and_only_when_due():
    why = runtimes.refusal("3.11", BLOCKED_DAY)
    assert "python3.11" in why and "2026-07-31" in why and "2026-08-31" in why and "\n" not in why
    assert "3.12" in why and "--image-uri" in why and "build-runtime --docker --python 3.11" in why
    assert runtimes.refusal("python3.10", BLOCKED_DAY, creating=False)
    assert runtimes.refusal("3.11", DEPRECATED_DAY) is None and "2026-07-31" in runtimes.warning("3.11", DEPRECATED_DAY)
    # from the block-create date only updates go on
    assert runtimes.refusal("3.11", CREATE_BLOCKED_DAY) and runtimes.refusal("3.11", CREATE_BLOCKED_DAY, creating=False) is None
    assert runtimes.refusal("3.12", BLOCKED_DAY) is None and runtimes.warning("3.12", BLOCKED_DAY) is None
    assert "not among the Lambda runtimes" in runtimes.refusal("3.9", BLOCKED_DAY)
    with pytest.raises(Exception, match="X.Y"):
        runtimes.refusal("3", BLOCKED_DAY)


# -- deploy refuses a blocked runtime before any AWS request ---------------------------
@pytest.mark.parametrize("python", ["3.11", "3.10"])
def test_deploy_of_a_blocked_python_is_one_line_and_creates_nothing(aws_cli, capsys, monkeypatch, python):
    on_day(monkeypatch, BLOCKED_DAY)
    counter = servers.CountingProxy(aws_cli)  # every AWS request deploy makes would pass here
    try:
        code, _, err = run(capsys, "deploy", "--function-name", "wp-blocked", "--role", ROLE, "--python", python,
                           "--lambda-endpoint-url", counter.url, "--s3-endpoint-url", counter.url)
    finally:
        counter.stop()
    line = error_line(err)
    assert code == 2 and f"python{python}" in line and "3.12" in line and "container image" in line and "--image-uri" in line
    assert sum(counter.counts.values()) == 0, counter.log  # refused before any AWS request
    assert family(aws_cli, "wp-blocked") == []


def test_deploy_defaults_to_the_clients_python_and_refuses_it_when_blocked(aws_cli, capsys, monkeypatch):
    on_day(monkeypatch, BLOCKED_DAY)
    code, _, err = run(capsys, "deploy", "--function-name", "wp-default", "--role", ROLE)
    if PYTHON in ("3.10", "3.11"):
        assert code == 2 and f"python{PYTHON}" in error_line(err) and family(aws_cli, "wp-default") == []
    else:
        assert code == 0, err


def test_deploy_of_a_live_python_creates_it_with_events_kept_at_most_an_hour(aws_cli, capsys, monkeypatch):
    on_day(monkeypatch, BLOCKED_DAY)
    code, out, err = run(capsys, "deploy", "--function-name", "wp-live", "--role", ROLE, "--python", "3.12", "--json")
    assert code == 0, err
    (done,) = json.loads(out)["functions"]
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName=done["function"])
    assert conf["Runtime"] == "python3.12" and done["python"] == "3.12"
    invoke = lam.get_function_event_invoke_config(FunctionName=done["function"])
    assert invoke["MaximumRetryAttempts"] == 0 and invoke["MaximumEventAgeInSeconds"] == MAX_EVENT_AGE_S <= 3600
    if PYTHON != "3.12":  # a client that cannot call them is told so
        assert "only a python3.12 client can call them" in err


def test_a_deprecated_runtime_deploys_with_a_warning_naming_the_block_date(aws_cli, capsys, monkeypatch):
    on_day(monkeypatch, DEPRECATED_DAY)
    code, out, err = run(capsys, "deploy", "--function-name", "wp-deprecated", "--role", ROLE, "--python", "3.11", "--json")
    assert code == 0, err
    assert "python3.11 is deprecated since 2026-06-30" in err and "2026-07-31" in err
    # between the two blocks: the function updates, a new settings set is refused
    on_day(monkeypatch, CREATE_BLOCKED_DAY)
    code, out, err = run(capsys, "deploy", "--function-name", "wp-deprecated", "--python", "3.11", "--json")
    assert code == 0 and json.loads(out)["functions"][0]["action"] == "updated", err
    code, _, err = run(capsys, "deploy", "--function-name", "wp-deprecated", "--role", ROLE, "--python", "3.11",
                       "--memory", "2048")
    assert code == 1 and "does not exist yet" in error_line(err) and "2026-07-31" in err
    assert len(family(aws_cli, "wp-deprecated")) == 1


def test_a_container_image_carries_a_blocked_python(aws_cli, capsys, monkeypatch):
    on_day(monkeypatch, BLOCKED_DAY)
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/wrenpack-runtime:py311"
    code, out, err = run(capsys, "deploy", "--function-name", "wp-image", "--role", ROLE, "--python", "3.11",
                         "--image-uri", uri, "--json")
    assert code == 0, err
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName=json.loads(out)["functions"][0]["function"])
    assert conf["PackageType"] == "Image" and "Runtime" not in conf


# -- one-line errors --------------------------------------------------------------------
def _cli(*argv, drop=(), **env):
    """``wrenpack ARGV`` in a new process, as a user runs it: (exit code, stdout, stderr)."""
    full = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("WRENPACK_")}
    full.update(env, AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "wrenpack", *argv], capture_output=True, text=True, env=full,
                          cwd=str(REPO), timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_deploy_and_doctor_without_region_or_credentials_say_so_in_one_line(moto_endpoint, bucket):
    common = ("--storage", f"s3://{bucket}/oneline", "--lambda-endpoint-url", moto_endpoint,
              "--s3-endpoint-url", moto_endpoint, "--role", ROLE, "--python", "3.12")
    # five commands that change nothing (each fails before it would), run at once: each one's
    # time is mostly its interpreter's start and imports
    regionless, keyless = ("AWS_DEFAULT_REGION", "AWS_REGION"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        no_region, no_credentials, no_role, doctor_json, doctor = [
            pool.submit(_cli, "deploy", *common, drop=regionless),
            pool.submit(_cli, "deploy", *common, "--region", "us-east-1", drop=keyless),
            pool.submit(_cli, "deploy", *common[:-4], "--python", "3.12", "--region", "us-east-1",
                        "--function-name", "wp-norole"),
            pool.submit(_cli, "doctor", "--json", *common[:6], drop=regionless),
            pool.submit(_cli, "doctor", *common[:6], drop=regionless),
        ]
    code, _, err = no_region.result()
    assert code == 1 and "no AWS region" in error_line(err) and "--region" in err
    code, _, err = no_credentials.result()
    assert code == 1 and "no AWS credentials" in error_line(err) and "AWS_PROFILE" in err
    code, _, err = no_role.result()
    assert code == 1 and "--role ARN" in error_line(err)
    code, out, err = doctor_json.result()
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and "Traceback" not in err and "no AWS region" in checks["credentials"]["detail"]
    code, out, err = doctor.result()
    assert code == 1 and "Traceback" not in err and "[tool.wrenpack]" in out  # the table prints details as text


def test_launching_on_lambda_without_a_region_is_refused_before_anything_is_stored(moto_endpoint, bucket, monkeypatch):
    """Each call used to be launched, its job's objects stored, and its future then failed."""
    import wrenpack
    from wrenpack.errors import ConfigError
    from wrenpack.executor import Executor
    from wrenpack.storage.s3 import S3Store

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    with Executor(backend="lambda", storage=f"s3://{bucket}/noregion", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=moto_endpoint, retries=0) as ex:
        with pytest.raises(ConfigError, match="no AWS region") as info:
            wrenpack.remote(abs, executor=ex).remote(-1)
    assert "\n" not in str(info.value) and "--region" in str(info.value)
    assert S3Store(bucket, "noregion", endpoint_url=moto_endpoint, region="us-east-1").list("jobs/") == []
    # A spawned job's supervisor makes its backend: the driver checks the settings it will run with
    # (its job was stored and its supervisor started, and every call then failed in it).
    with Executor(backend="lambda", storage=f"s3://{bucket}/noregion", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=moto_endpoint, retries=0) as ex:
        with pytest.raises(ConfigError, match="no AWS region"):
            wrenpack.remote(abs, executor=ex).spawn_map([-1])
    assert S3Store(bucket, "noregion", endpoint_url=moto_endpoint, region="us-east-1").list("jobs/") == []


# -- doctor ------------------------------------------------------------------------------
def test_doctor_shows_the_runtimes_state(aws_cli, capsys, monkeypatch):
    deploy_as_of_a_live_day(monkeypatch)
    assert run(capsys, "deploy", "--function-name", "wp-doc-rt", "--role", ROLE)[0] == 0
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doc-rt", "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 0 and f"python{PYTHON} (Amazon Linux" in checks["python version"]["detail"]
    assert f"MaximumEventAgeInSeconds={MAX_EVENT_AGE_S}" in checks["async retries"]["detail"]
    row = runtimes.find(PYTHON)
    on_day(monkeypatch, row.block_update + datetime.timedelta(days=1))
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doc-rt", "--json")
    python_check = {c["check"]: c for c in json.loads(out)["checks"]}["python version"]
    assert python_check.get("warning") and str(row.block_update) in python_check["detail"]
    assert "container image" in python_check["detail"]


# -- iam-policy ---------------------------------------------------------------------------
def test_generated_policies_hold_account_settings_and_list_functions(aws_cli, capsys):
    def actions(role):
        code, out, _ = run(capsys, "iam-policy", "--for", role, "--account", "123456789012")
        assert code == 0
        return {a for st in json.loads(out)["Statement"] for a in st["Action"]}

    client, deploy_, worker = actions("client"), actions("deploy"), actions("worker")
    assert "lambda:GetAccountSettings" in client and "lambda:ListFunctions" not in client
    assert {"lambda:GetAccountSettings", "lambda:ListFunctions"} <= deploy_
    assert not any(a.startswith("lambda:") for a in worker)


# -- the printed deploy command ---------------------------------------------------------
def test_the_deploy_command_printed_for_a_missing_settings_set_runs_as_printed(moto_endpoint, bucket, lambda_endpoint,
                                                                                monkeypatch, capsys):
    import wrenpack
    from wrenpack.errors import ConfigError
    from wrenpack.executor import Executor

    deploy_as_of_a_live_day(monkeypatch)
    settings = dict(backend="lambda", storage=f"s3://{bucket}/printed", s3_endpoint_url=moto_endpoint,
                    lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                    aws_region="us-east-1", timeout=5, retries=0, concurrency=2)
    with Executor(**settings) as ex:
        fut = wrenpack.remote(abs, executor=ex, memory=1664).remote(-3)
        with pytest.raises(ConfigError) as info:
            fut.result(timeout=60)
    message = str(info.value)
    cmd = re.search(r"`(wrenpack deploy [^`]*)`", message).group(1)
    assert "\n" not in message and "ROLE_ARN" not in cmd
    for needed in ("--role", "--region us-east-1", f"--storage s3://{bucket}/printed", "--memory 1664", "--python"):
        assert needed in cmd, cmd
    # Run it as printed: no wrenpack setting or AWS region from the environment helps it.
    for key in [k for k in os.environ if k.startswith("WRENPACK_")] + ["AWS_DEFAULT_REGION", "AWS_REGION"]:
        monkeypatch.delenv(key, raising=False)
    argv = shlex.split(cmd)
    assert argv[:2] == ["wrenpack", "deploy"]
    code, _, err = run(capsys, *argv[1:])
    assert code == 0, err
    with Executor(**settings) as ex:
        assert wrenpack.get(wrenpack.remote(abs, executor=ex, memory=1664).map([-1, -2])) == [1, 2]


def test_auto_deploy_without_a_function_to_copy_prints_a_complete_command(aws_cli, capsys, monkeypatch):
    from wrenpack.backends.aws.deploy import FunctionSettings, auto_deploy
    from wrenpack.errors import ConfigError

    deploy_as_of_a_live_day(monkeypatch)
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    settings = FunctionSettings.for_call(1024, 60, 512)
    where = {"region": "us-east-1", "storage": "s3://wrenpack-test/runtimes"}
    with pytest.raises(ConfigError, match="no deployed function of 'wp-nothing'") as info:
        auto_deploy(lam, settings.function_name("wp-nothing"), settings, "wp-nothing", where=where)
    assert "--role ROLE_ARN" in str(info.value) and "--region us-east-1" in str(info.value)
    assert "wrenpack iam-policy --for worker" in str(info.value)
