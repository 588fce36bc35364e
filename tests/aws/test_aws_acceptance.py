"""``wrenpack doctor --acceptance`` end to end against moto and the emulated Lambda.

The run is meant for a real account: several of its checks (memory kills,
throttling at a reserved concurrency) test what the emulator does not do, and
their rows say so. Here it must deploy its functions (zip, layer and archive
from a tiny built runtime), run every check, print its table, and leave
nothing behind in moto: no function, no layer version, no log group, no object.
The timeout check waits for the emulator's 10 s hard limit: it runs with -m slow.
"""
from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest

from tests.aws import servers
from tests.aws.runtime_dates import deploy_as_of_a_live_day
from wrenpack.cli import main

#: under WRENPACK_TEST_IAM=enforce these run as the acceptance identity (tests/aws/iam_proxy.py)
pytestmark = pytest.mark.iam_identity("acceptance")

ORDER = ["cold start: zip", "cold start: layer", "cold start: archive", "cold start: image", "sdk", "payload",
         "requests", "throttling", "queue", "memory", "timeout", "cleanup"]


@pytest.fixture(autouse=True)
def _deploys_this_python(monkeypatch):
    """The emulator runs this interpreter: the run deploys its Python as of a day Lambda took it."""
    deploy_as_of_a_live_day(monkeypatch)


@pytest.fixture
def runtime_dir(tmp_path):
    """A `wrenpack build-runtime` output in miniature: python/, layer.zip, manifest.json."""
    out = tmp_path / "runtime"
    (out / "python").mkdir(parents=True)
    (out / "python" / "acceptance_marker.py").write_text("VALUE = 1\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("python/acceptance_marker.py", "VALUE = 1\n")
    (out / "layer.zip").write_bytes(buf.getvalue())
    (out / "manifest.json").write_text(json.dumps({"target": {"python": servers.PYTHON, "arch": "x86_64"},
                                                   "cache_key": "acceptance-test"}))
    return out


@pytest.fixture
def acceptance_env(monkeypatch, moto_endpoint, bucket, lambda_endpoint, tmp_path, stop_pools):
    for name, value in (("STORAGE", f"s3://{bucket}/acceptance"), ("S3_ENDPOINT_URL", moto_endpoint),
                        ("LAMBDA_ENDPOINT_URL", lambda_endpoint.url), ("AWS_REGION", servers.REGION)):
        monkeypatch.setenv(f"WRENPACK_{name}", value)
    for service in ("STS", "CLOUDWATCH_LOGS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto_endpoint)
    # The archive's bootstrap downloads with a plain boto3 client, and unpacks under its root.
    base = dict(lambda_endpoint.base_env)
    lambda_endpoint.base_env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"))
    per_function = lambda_endpoint.per_function
    lambda_endpoint.per_function = 2  # each new function's execution environments take a second to start
    yield
    lambda_endpoint.per_function = per_function
    lambda_endpoint.base_env.clear()
    lambda_endpoint.base_env.update(base)
    stop_pools(lambda name: "-acc" in name)  # the run deleted these functions


def _what_moto_holds(moto_endpoint, bucket):
    lam = boto3.client("lambda", endpoint_url=moto_endpoint, region_name=servers.REGION)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=servers.REGION)
    logs = boto3.client("logs", endpoint_url=moto_endpoint, region_name=servers.REGION)
    functions = {f["FunctionName"] for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]}
    layers = {(layer["LayerName"], v["Version"]) for layer in lam.list_layers()["Layers"]
              for v in lam.list_layer_versions(LayerName=layer["LayerName"])["LayerVersions"]}
    objects = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
               for o in page.get("Contents", ())}
    groups = {g["logGroupName"] for g in logs.describe_log_groups().get("logGroups", [])}
    return functions, layers, objects, groups


def _run(capsys, role_arn, runtime_dir, *extra):
    code = main(["doctor", "--acceptance", "--role", role_arn, "--runtime-dir", str(runtime_dir), "--memory", "128",
                 *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _check_rows(code, report, skipped=()):
    rows = {r["check"]: r for r in report["checks"]}
    assert list(rows) == [name for name in ORDER if name not in skipped]
    assert all(set(r) == {"check", "ok", "detail", "seconds"} and r["detail"] for r in rows.values())
    for name in ("cold start: zip", "cold start: layer", "cold start: archive", "sdk", "requests", "queue", "cleanup"):
        assert rows[name]["ok"] is True, rows[name]
    assert rows["cold start: image"]["ok"] is None and "--image-uri" in rows["cold start: image"]["detail"]
    assert "20 calls: 1.00 Invoke," in rows["requests"]["detail"]
    assert "botocore" in rows["sdk"]["detail"] and "needs botocore >=" in rows["sdk"]["detail"]
    # what the emulator cannot do is reported, not hidden
    if rows["throttling"]["ok"] is False:
        assert "was not throttled" in rows["throttling"]["detail"]
    if rows["memory"]["ok"] is False:
        assert "touching 256 MB" in rows["memory"]["detail"]
    assert report["ok"] == (not any(r["ok"] is False for r in rows.values()))
    assert code == (0 if report["ok"] else 1)
    return rows


@pytest.mark.slow
def test_the_acceptance_run_checks_and_leaves_nothing_behind(acceptance_env, capsys, role_arn, runtime_dir,
                                                            moto_endpoint, bucket):
    before = _what_moto_holds(moto_endpoint, bucket)
    code, out, err = _run(capsys, role_arn, runtime_dir, "--skip", "timeout", "--json")
    _check_rows(code, json.loads(out), skipped=("timeout",))
    assert "PASS  cleanup" in err  # progress, a line per check
    assert _what_moto_holds(moto_endpoint, bucket) == before


@pytest.mark.slow
def test_the_full_acceptance_run_prints_its_table(acceptance_env, capsys, role_arn, runtime_dir, moto_endpoint, bucket):
    before = _what_moto_holds(moto_endpoint, bucket)
    code, out, err = _run(capsys, role_arn, runtime_dir, "--json")
    rows = _check_rows(code, json.loads(out))
    assert rows["timeout"]["ok"] is True, rows["timeout"]  # the soft stop, and the emulator's hard limit
    assert _what_moto_holds(moto_endpoint, bucket) == before
    code, out, err = _run(capsys, role_arn, runtime_dir, "--skip", "timeout", "--skip", "queue")
    assert "wrenpack acceptance" in out and "cleanup" in out and "PASS" in out
    assert _what_moto_holds(moto_endpoint, bucket) == before


def test_the_acceptance_run_needs_a_role_and_an_s3_store(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path))
    code = main(["doctor", "--acceptance", "--role", "arn:aws:iam::1:role/r"])
    assert code == 1 and "not an S3 location" in capsys.readouterr().err
    monkeypatch.setenv("WRENPACK_STORAGE", "s3://wrenpack-test/p")
    code = main(["doctor", "--acceptance"])
    assert code == 1 and "--role" in capsys.readouterr().err


def test_an_interrupted_run_still_deletes_what_it_created(acceptance_env, role_arn, moto_endpoint, bucket):
    """Ctrl-C (SIGTERM too, through the command line) in the middle of the checks: cleanup runs, then it propagates."""
    from wrenpack.backends.aws.acceptance import CHECKS, AcceptanceOptions, run_acceptance
    from wrenpack.config import current

    before = _what_moto_holds(moto_endpoint, bucket)
    seen = []

    def interrupt_after_the_first_row(row):
        seen.append(row)
        if len(seen) == 1:
            raise KeyboardInterrupt

    options = AcceptanceOptions(role=role_arn, memory=128, skip=tuple(c for c in CHECKS if c not in ("cold-start", "sdk")))
    with pytest.raises(KeyboardInterrupt):
        run_acceptance(current(), options, on_row=interrupt_after_the_first_row)
    assert [r["check"] for r in seen] == ["cold start: zip", "cleanup"] and seen[-1]["ok"] is True
    assert "deleted 1 function(s)" in seen[-1]["detail"]
    assert _what_moto_holds(moto_endpoint, bucket) == before
