"""deploy / iam-policy / doctor / clean against moto's Lambda, IAM, STS and S3
(moto's Lambda control plane records the function; it never runs code)."""
from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import zipfile

import boto3
import pytest

from wrenpack.cli import main
from wrenpack.cli.cmd_aws import handler_package


@pytest.fixture
def aws_cli(moto_endpoint, bucket, monkeypatch):
    monkeypatch.setenv("WRENPACK_STORAGE", f"s3://{bucket}/cli")
    monkeypatch.setenv("WRENPACK_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_LAMBDA_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", moto_endpoint)
    return moto_endpoint


@pytest.fixture(scope="module")
def role_arn(moto_endpoint):
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    return iam.create_role(RoleName="wrenpack-worker-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_handler_package_is_deterministic_and_self_contained(tmp_path):
    data = handler_package()
    assert data == handler_package()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "wrenpack/worker/handler.py" in names and "cloudpickle/__init__.py" in names
    assert not any(n.startswith(("wrenpack/cli", "wrenpack/backends", "wrenpack/executor")) for n in names)
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path)
    # Only the package's own files (plus the stdlib and boto3) are needed to load the handler.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import wrenpack.worker.handler, wrenpack.storage.s3, "
            "wrenpack.worker.runtime_archive, wrenpack; assert wrenpack.__file__.startswith(sys.argv[1]), wrenpack.__file__")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=tmp_path)


def test_deploy_creates_then_updates_the_function(aws_cli, role_arn, capsys, tmp_path):
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--json")
    assert code == 1 and "--role" in err  # creating needs the execution role
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--role", role_arn,
                         "--memory", "2048", "--timeout", "120", "--ephemeral-storage", "1024", "--json")
    assert code == 0, err
    assert json.loads(out)["action"] == "created"
    conf = lam.get_function_configuration(FunctionName="wp-fn")
    assert conf["Handler"] == "wrenpack.worker.handler.handler"
    assert conf["Runtime"] == "python%d.%d" % sys.version_info[:2]
    assert (conf["MemorySize"], conf["Timeout"], conf["EphemeralStorage"]["Size"]) == (2048, 120, 1024)
    assert lam.get_function_event_invoke_config(FunctionName="wp-fn")["MaximumRetryAttempts"] == 0
    # A runtime layer from a build-runtime output directory, on update.
    build = tmp_path / "build"
    build.mkdir()
    with zipfile.ZipFile(build / "layer.zip", "w") as zf:
        zf.writestr("python/some_dep.py", "X = 1\n")
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--runtime-dir", str(build), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["action"] == "updated" and ":layer:wp-fn-runtime:" in summary["layer"]
    conf = lam.get_function_configuration(FunctionName="wp-fn")
    assert [layer["Arn"] for layer in conf["Layers"]] == [summary["layer"]]


def test_runtime_archive_deploy_and_bootstrap(aws_cli, role_arn, capsys, tmp_path, monkeypatch, bucket):
    build = tmp_path / "build"
    (build / "python" / "wp_archived_pkg").mkdir(parents=True)
    (build / "python" / "wp_archived_pkg" / "__init__.py").write_text("VALUE = 42\n")
    code, out, err = run(capsys, "deploy", "--function-name", "wp-arch", "--role", role_arn,
                         "--runtime-archive", str(build), "--json")
    assert code == 0, err
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName="wp-arch")
    assert conf["Handler"] == "wrenpack.worker.runtime_archive.handler"
    env = conf["Environment"]["Variables"]
    # What the function would do on its first call in a container:
    from wrenpack.worker import runtime_archive

    monkeypatch.setattr(runtime_archive, "ROOT", str(tmp_path / "tmp-runtime"))
    monkeypatch.setattr(runtime_archive, "_ready", None)
    monkeypatch.setenv("WRENPACK_RUNTIME_ARCHIVE", env["WRENPACK_RUNTIME_ARCHIVE"])
    monkeypatch.setenv("WRENPACK_RUNTIME_SHA256", env["WRENPACK_RUNTIME_SHA256"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_cli)
    monkeypatch.setattr(sys, "path", list(sys.path))
    where = runtime_archive.ensure_runtime()
    assert where.endswith(env["WRENPACK_RUNTIME_SHA256"])
    assert importlib.import_module("wp_archived_pkg").VALUE == 42
    monkeypatch.setattr(runtime_archive, "_ready", None)
    assert runtime_archive.ensure_runtime() == where  # second container start: no download
    sys.modules.pop("wp_archived_pkg", None)


def test_iam_policy_is_scoped_to_prefix_and_function(aws_cli, capsys, bucket):
    code, out, _ = run(capsys, "iam-policy", "--account", "123456789012")
    assert code == 0
    policy = json.loads(out)
    resources = json.dumps(policy["Statement"])
    assert f"arn:aws:s3:::{bucket}/cli/jobs/*" in resources
    assert "arn:aws:lambda:us-east-1:123456789012:function:wrenpack-worker" in resources
    assert '"s3:*"' not in resources and '"Resource": "*"' not in resources
    code, out, _ = run(capsys, "iam-policy", "--for", "worker")
    assert "logs:PutLogEvents" in out and "lambda:InvokeFunction" not in out


def test_doctor_reports_problems_and_passes_after_deploy(aws_cli, role_arn, capsys):
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doctor", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert "function" in failed and "wrenpack deploy" in failed["function"]
    assert run(capsys, "deploy", "--function-name", "wp-doctor", "--role", role_arn)[0] == 0
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doctor", "--json")
    report = json.loads(out)
    assert code == 0, report
    assert {c["check"] for c in report["checks"]} == {"credentials", "storage", "function", "python version",
                                                      "runtime", "async retries"}
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doctor")
    assert code == 0 and "wrenpack doctor" in out


def test_clean_removes_jobs(aws_cli, capsys, bucket, tmp_path):
    from wrenpack.storage.s3 import S3Store

    store = S3Store(bucket, "cli", endpoint_url=aws_cli)
    for job in ("j1", "j2"):
        store.put(f"jobs/{job}/func.pkl", b"x")
        store.put(f"jobs/{job}/result/00000.res", b"x")
    code, out, _ = run(capsys, "clean", "j1", "--json")
    assert code == 0 and json.loads(out)["removed"] == 2
    assert store.list("jobs/") == ["jobs/j2/func.pkl", "jobs/j2/result/00000.res"]
    assert run(capsys, "clean", "--all")[0] == 0
    assert store.list("jobs/") == []
    code, _, err = run(capsys, "clean")
    assert code == 1 and "--all" in err
    # the local store works the same way
    local = tmp_path / "store"
    (local / "jobs" / "j3").mkdir(parents=True)
    (local / "jobs" / "j3" / "func.pkl").write_bytes(b"x")
    code, out, _ = run(capsys, "clean", "--all", "--storage", str(local))
    assert code == 0 and "removed 1 object" in out
