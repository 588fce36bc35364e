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

from tests.aws.runtime_dates import deploy_as_of_a_live_day
from wrenpack.cli import main
from wrenpack.backends.aws.deploy import handler_package

#: under WRENPACK_TEST_IAM=enforce these run as the deploy identity (tests/aws/iam_proxy.py)
pytestmark = pytest.mark.iam_identity("deploy")


@pytest.fixture
def aws_cli(moto_endpoint, bucket, monkeypatch):
    deploy_as_of_a_live_day(monkeypatch)  # these deploy this interpreter's Python (see runtime_dates)
    monkeypatch.setenv("WRENPACK_STORAGE", f"s3://{bucket}/cli")
    monkeypatch.setenv("WRENPACK_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_LAMBDA_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("WRENPACK_AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", moto_endpoint)
    return moto_endpoint


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


def _name(memory, timeout, storage=512, arch="x86_64", runtime=None, base="wp-fn"):
    from wrenpack.backends.aws import FunctionSettings

    return FunctionSettings.for_call(memory, timeout, storage, arch, runtime).function_name(base)


def test_deploy_creates_one_function_per_settings_set_then_updates(aws_cli, role_arn, capsys, tmp_path, bucket):
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--json")
    assert code == 1 and "--role" in err  # creating needs the execution role
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--role", role_arn, "--memory", "2048",
                         "--memory", "3008", "--timeout", "120", "--ephemeral-storage", "1024",
                         "--reserved-concurrency", "5", "--json")
    assert code == 0, err
    done = json.loads(out)["functions"]
    assert [d["action"] for d in done] == ["created", "created"]
    assert [d["function"] for d in done] == [_name(2048, 120, 1024), _name(3008, 120, 1024)]
    for d in done:
        conf = lam.get_function_configuration(FunctionName=d["function"])
        assert conf["Handler"] == "wrenpack.worker.handler.handler"
        assert conf["Runtime"] == "python%d.%d" % sys.version_info[:2]
        assert (conf["MemorySize"], conf["Timeout"], conf["EphemeralStorage"]["Size"]) == (d["memory"], 120, 1024)
        env = conf["Environment"]["Variables"]
        assert env["WRENPACK_FUNCTION_FAMILY"] == "wp-fn" and env["WRENPACK_STORE_URL"] == f"s3://{bucket}/cli"
        assert json.loads(env["WRENPACK_FUNCTION_SETTINGS"])["memory"] == d["memory"]
        assert lam.get_function_event_invoke_config(FunctionName=d["function"])["MaximumRetryAttempts"] == 0
        assert lam.get_function_concurrency(FunctionName=d["function"])["ReservedConcurrentExecutions"] == 5
    # A runtime layer from a build-runtime output directory: a new runtime, so a new function.
    build = tmp_path / "build"
    build.mkdir()
    with zipfile.ZipFile(build / "layer.zip", "w") as zf:
        zf.writestr("python/some_dep.py", "X = 1\n")
    py = "%d.%d" % sys.version_info[:2]
    (build / "manifest.json").write_text(json.dumps({"target": {"python": py, "arch": "arm64"}, "cache_key": "abc123"}))
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--role", role_arn, "--runtime-dir", str(build))
    assert code == 2 and "built for arm64" in err and "--architecture arm64" in err  # (bad settings, before any request)
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--role", role_arn, "--runtime-dir", str(build),
                         "--architecture", "arm64", "--memory", "2048", "--timeout", "120", "--json")
    assert code == 0, err
    (d,) = json.loads(out)["functions"]
    assert d["function"] == _name(2048, 120, 512, "arm64", str(build)) and ":layer:wp-fn-runtime:" in d["layer"]
    conf = lam.get_function_configuration(FunctionName=d["function"])
    assert [layer["Arn"] for layer in conf["Layers"]] == [d["layer"]] and conf["Architectures"] == ["arm64"]
    (layer,) = [v for v in lam.list_layer_versions(LayerName="wp-fn-runtime")["LayerVersions"]
                if v["LayerVersionArn"] == d["layer"]]
    assert layer["CompatibleArchitectures"] == ["arm64"]
    # Deploying the same settings again updates that function.
    code, out, err = run(capsys, "deploy", "--function-name", "wp-fn", "--memory", "2048", "--timeout", "120",
                         "--ephemeral-storage", "1024", "--json")
    assert code == 0, err and json.loads(out)["functions"][0]["action"] == "updated"


def test_deploy_from_saved_profiles(aws_cli, role_arn, capsys, tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "abc.json").write_text(json.dumps({"target": "m:f", "peak_memory_mb": 90.0, "duration_s": 1.0,
                                                   "recommended": {"memory_mb": 256, "timeout_s": 30}}))
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(profiles))
    code, out, err = run(capsys, "deploy", "--function-name", "wp-prof", "--role", role_arn, "--from-profiles", "--json")
    assert code == 0, err
    assert [d["function"] for d in json.loads(out)["functions"]] == [_name(256, 30, base="wp-prof")]


def test_runtime_archive_deploy_and_bootstrap(aws_cli, role_arn, capsys, tmp_path, monkeypatch, bucket):
    build = tmp_path / "build"
    (build / "python" / "wp_archived_pkg").mkdir(parents=True)
    (build / "python" / "wp_archived_pkg" / "__init__.py").write_text("VALUE = 42\n")
    code, out, err = run(capsys, "deploy", "--function-name", "wp-arch", "--role", role_arn,
                         "--runtime-archive", str(build), "--json")
    assert code == 0, err
    lam = boto3.client("lambda", endpoint_url=aws_cli, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName=json.loads(out)["functions"][0]["function"])
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
    # A second runtime start in the container trusts nothing an earlier process left in /tmp
    # (a job's code could have changed it): the tree is extracted afresh, without what was planted.
    import os
    import stat

    pkg = os.path.join(where, "wp_archived_pkg")
    os.chmod(pkg, os.stat(pkg).st_mode | stat.S_IWUSR)  # (the tree's folders are read-only: a job's code can undo that)
    with open(os.path.join(pkg, "planted.py"), "w") as fh:
        fh.write("PLANTED = True\n")
    monkeypatch.setattr(runtime_archive, "_ready", None)
    assert runtime_archive.ensure_runtime() == where
    assert not os.path.exists(os.path.join(pkg, "planted.py"))
    sys.modules.pop("wp_archived_pkg", None)


def test_iam_policy_is_scoped_to_prefix_and_function(aws_cli, capsys, bucket):
    code, out, _ = run(capsys, "iam-policy", "--account", "123456789012")
    assert code == 0
    policy = json.loads(out)
    # GetAccountSettings takes no resource ARN: its statement is the one with "*"
    (account,) = [st for st in policy["Statement"] if st["Resource"] == "*"]
    assert account["Action"] == ["lambda:GetAccountSettings"]
    resources = json.dumps([st for st in policy["Statement"] if st is not account])
    assert f"arn:aws:s3:::{bucket}/cli/jobs/*" in resources
    assert "arn:aws:lambda:us-east-1:123456789012:function:wrenpack-worker-*" in resources
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
    assert {c["check"] for c in report["checks"]} == {"credentials", "storage", "conditional writes", "function",
                                                      "python version", "runtime", "async retries"}
    assert not any(c.get("warning") for c in report["checks"])  # moto honours If-None-Match
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doctor")
    assert code == 0 and "wrenpack doctor" in out


def test_doctor_with_endpoints_of_ones_own_and_no_sts_endpoint_says_so_and_runs_every_check(aws_cli, role_arn, capsys,
                                                                                              monkeypatch):
    """With s3_endpoint_url/lambda_endpoint_url set (MinIO, emulators) and no AWS_ENDPOINT_URL_STS,
    GetCallerIdentity goes to AWS's STS: the credentials row failed (after botocore's retries) and
    the function, Python, runtime and async rows were left out. Now it is a warning naming
    AWS_ENDPOINT_URL_STS, and every check runs."""
    assert run(capsys, "deploy", "--function-name", "wp-doctor-sts", "--role", role_arn)[0] == 0
    monkeypatch.delenv("AWS_ENDPOINT_URL_STS")
    for name in ("https_proxy", "http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # AWS's STS out of reach, as from a closed network
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # (the endpoints here are reached directly)
    code, out, _ = run(capsys, "doctor", "--function-name", "wp-doctor-sts", "--json")
    rows = {c["check"]: c for c in json.loads(out)["checks"]}
    assert set(rows) == {"credentials", "storage", "conditional writes", "function", "python version", "runtime",
                         "async retries"}, rows
    credentials = rows["credentials"]
    assert credentials["ok"] and credentials.get("warning"), credentials
    assert "AWS_ENDPOINT_URL_STS" in credentials["detail"] and "\n" not in credentials["detail"]
    assert code == 0, rows


def test_clean_removes_jobs(aws_cli, capsys, bucket, tmp_path, monkeypatch):
    from wrenpack.cli import cmd_clean
    from wrenpack.storage.s3 import S3Store

    store = S3Store(bucket, "cli", endpoint_url=aws_cli)
    j1, j2, j3 = (f"20260101-000000-0000000{i}" for i in (1, 2, 3))  # (--all removes only ids of wrenpack's form)
    for job in (j1, j2):
        store.put(f"jobs/{job}/func.pkl", b"x")
        store.put(f"jobs/{job}/result/00000.res", b"x")
    code, out, _ = run(capsys, "clean", j1, "--json")
    assert code == 0 and json.loads(out)["removed"] == 2
    assert store.list("jobs/") == [f"jobs/{j2}/func.pkl", f"jobs/{j2}/result/00000.res"]
    assert run(capsys, "clean", "--all")[0] == 0  # (no owner record and just written: kept, a job may be starting)
    assert store.list("jobs/") == [f"jobs/{j2}/func.pkl", f"jobs/{j2}/result/00000.res"]
    monkeypatch.setattr(cmd_clean, "TMP_AGE_S", 0.0)  # as if unchanged for five minutes
    assert run(capsys, "clean", "--all")[0] == 0
    assert store.list("jobs/") == []
    with pytest.raises(SystemExit) as usage:  # (naming nothing is a usage error: 2, as its --help says)
        run(capsys, "clean")
    assert usage.value.code == 2 and "--all" in capsys.readouterr().err
    # the local store works the same way
    local = tmp_path / "store"
    (local / "jobs" / j3).mkdir(parents=True)
    (local / "jobs" / j3 / "func.pkl").write_bytes(b"x")
    code, out, _ = run(capsys, "clean", "--all", "--storage", str(local))
    assert code == 0 and "removed 1 object" in out


def test_clean_keeps_a_folder_without_owner_record_until_unchanged_for_five_minutes_on_s3(aws_cli, capsys, bucket,
                                                                                           monkeypatch):
    """On S3 as on a local store: a job's (or map_reduce's) objects without an owner record that
    changed within five minutes (by S3's clock) may be one being started: --all, --all --force and
    --stale --force keep them (before: removed at once). Once older they go, each looked at again
    right before its removal: a record that appeared after clean read the job's state keeps it."""
    import uuid

    from wrenpack import keys
    from wrenpack.cli import cmd_clean
    from wrenpack.storage.s3 import S3Store

    where = f"unowned-{uuid.uuid4().hex[:8]}"
    storage = ("--storage", f"s3://{bucket}/{where}")
    store = S3Store(bucket, where, endpoint_url=aws_cli)
    job, other, sid = "20261205-143416-0000beef", "20261205-143416-0000cafe", "0123456789ab"
    store.put(keys.cancel_key(job), b"x")  # (a call's cancel marker, its job's record not yet written)
    store.put(keys.shuffle_part_key(sid, 3), b"x")
    for argv in (("--all",), ("--all", "--force"), ("--stale", "--force")):
        code, out, _ = run(capsys, "clean", *argv, *storage, "--json")
        out = json.loads(out)
        assert code == 0 and out["removed"] == 0 and out["skipped"] == [job, f"map_reduce {sid}"], (argv, out)
        assert "no owner record" in out["skipped_why"][job], out
    assert len(store.list("")) == 2
    assert 0 <= store.unchanged_for(keys.job_prefix(job)) < 60 and store.unchanged_for("jobs/nothing/") is None
    code, out, _ = run(capsys, "clean", "--all", *storage)
    assert code == 0 and "kept 2 job(s) or map_reduce(s) with no owner record" in out, out
    monkeypatch.setattr(cmd_clean, "TMP_AGE_S", 0.0)  # as if unchanged for five minutes
    store.put(keys.func_key(other), b"x")
    judge = cmd_clean.job_state

    def then_a_writer_starts(store_, j, key=None):
        state = judge(store_, j, key)
        if j == other:
            store.put(keys.owner_key(other), b"{}")
        return state

    monkeypatch.setattr(cmd_clean, "job_state", then_a_writer_starts)
    code, out, _ = run(capsys, "clean", "--all", *storage, "--json")
    out = json.loads(out)
    assert code == 0 and out["jobs"] == 1 and out["map_reduces"] == 1 and out["removed"] == 2, out
    assert out["skipped"] == [other] and "appeared" in out["skipped_why"][other], out
    assert store.list("") == [keys.func_key(other), keys.owner_key(other)]
    store.delete_prefix("")


def test_clean_aborts_old_unfinished_uploads_under_wrenpacks_prefixes(aws_cli, capsys, bucket, monkeypatch):
    """A writer stopped mid-upload (a call killed while it saved a large checkpoint, or
    wrote user data through wrenpack.store()) leaves an unfinished multipart upload
    that S3 bills until it is aborted, and no object listing shows: `clean` now aborts
    those over a day old under jobs/, shuffle/ and data/, never others (another
    application's, under the same store prefix), never recent ones."""
    import datetime

    import boto3

    from wrenpack.cli import cmd_clean

    client = boto3.client("s3", endpoint_url=aws_cli, region_name="us-east-1")
    started = {}
    for key in ("cli/jobs/j9/checkpoint/00000", "cli/data/big.bin", "cli/other-app/upload"):
        started[key] = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def uploads() -> list[dict]:
        return client.list_multipart_uploads(Bucket=bucket, Prefix="cli/").get("Uploads") or []

    try:
        # Uploads started a moment ago may be writers at work: kept (moto dates every upload
        # 2010-11-10, as if a day old, so only a server that tells their age shows this).
        if all(u["Initiated"] > datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1) for u in uploads()):
            code, out, _ = run(capsys, "clean", "--stale", "--json")
            assert code == 0 and json.loads(out)["tmp_swept"] == 0
            assert {u["Key"] for u in uploads()} == set(started)
        monkeypatch.setattr(cmd_clean, "UPLOAD_AGE_S", 0.0)  # as if they had started a day ago
        code, out, _ = run(capsys, "clean", "--stale")
        assert code == 0 and "2 unfinished upload(s) over a day old" in out, out
        assert {u["Key"] for u in uploads()} == {"cli/other-app/upload"}
    finally:
        for u in uploads():
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])


def test_doctor_warns_when_the_store_ignores_if_none_match(rclone_endpoint):
    """rclone serve s3 answers a second conditional write with 200: first-write-wins would be lost."""
    from wrenpack.backends.aws.doctor import _check_conditional_writes

    class Cfg:
        storage = "s3://wrenpack-test/doctor"
        s3_endpoint_url = rclone_endpoint
        aws_region = "us-east-1"
        aws_profile = None

    ok, detail, _ = _check_conditional_writes(Cfg())
    assert ok is None and "ignores If-None-Match" in detail and "conditional_writes" in detail
