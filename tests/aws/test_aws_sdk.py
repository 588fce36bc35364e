"""The worker's AWS SDK: wrenpack's handler under the oldest botocore it accepts, and one older.

On Lambda the worker runs the runtime's bundled boto3, which can be older than
the test venv's. Here the exact versions are installed from the package index
into temporary directories (``pip install --target``) and the real handler
runs in a subprocess with one of them first on ``sys.path``, against moto's S3:
with 1.35.2 (the first botocore whose PutObject takes IfNoneMatch) a call
runs and its result is written once, first-write-wins; with 1.35.1 the call
fails in one line naming both versions and the fix, and that refusal still
reaches the store.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import boto3
import pytest

from tests.aws import servers
from tests.aws.iam_proxy import credentials
from tests.aws.servers import REGION, REPO
from wrenpack import auth, keys
from wrenpack.errors import SdkTooOld
from wrenpack.storage.s3 import S3Store
from wrenpack.wire.result import open_result
from wrenpack.worker import sdk

OLDEST = sdk.MIN_BOTOCORE_TEXT
OLDER = "1.35.1"


def _install(version: str, root) -> str:
    """boto3 and botocore ``version`` in a directory of their own: kept in the test cache
    (``servers.CACHE``, as the emulator's binary is) once complete, so a session installs
    each version only the first time; else in ``root``."""
    cached: Path | None = servers.CACHE.resolve() / "old-sdk" / f"botocore-{version}"
    if cached.is_relative_to("/tmp"):  # a sandbox's /tmp is its own: the runtime would not see it there
        cached, target = None, root / f"botocore-{version}"
    elif (cached / COMPLETE).exists():
        return str(cached)
    else:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            target = Path(tempfile.mkdtemp(prefix=f".botocore-{version}-", dir=cached.parent))
            target.chmod(0o755)  # (mkdtemp's 0700) readable by whoever runs a runtime
        except OSError:  # no writable cache: this session's own copy
            cached, target = None, root / f"botocore-{version}"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(target),
         f"boto3=={version}", f"botocore=={version}"],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        from tests.conftest import aws_unavailable

        if cached is not None:
            shutil.rmtree(target, ignore_errors=True)
        aws_unavailable(f"`pip install --target ... botocore=={version}` failed: {proc.stderr.strip()[-300:]}")
    if cached is None:
        return str(target)
    (target / COMPLETE).touch()
    try:
        target.rename(cached)  # atomic: another session's complete copy or none
    except OSError:  # another session's copy is there
        if (cached / COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)
            return str(cached)
        return str(target)
    return str(cached)


#: the marker of a complete install in the cache
COMPLETE = ".installed"


@pytest.fixture(scope="module")
def old_sdks(tmp_path_factory):
    """{version: directory} of boto3+botocore at the oldest accepted version and the one before."""
    root = tmp_path_factory.mktemp("old-sdk")
    return {v: _install(v, root) for v in (OLDEST, OLDER)}


_WORKER = textwrap.dedent("""
    import base64, hashlib, json, sys
    sys.path.insert(0, sys.argv[1])
    import botocore
    assert botocore.__file__.startswith(sys.argv[1]), botocore.__file__
    import cloudpickle
    from wrenpack import auth
    from wrenpack.wire.event import Event, inline_args
    from wrenpack.worker.handler import handler

    spec, job, secret = json.loads(sys.argv[2]), sys.argv[3], auth.decode_secret(sys.argv[4])
    fn = cloudpickle.dumps(lambda x: x * x)
    event = Event(job_id=job, call_id="00000", store=spec, secret=secret,
                  args=inline_args(cloudpickle.dumps(((7,), {})))).to_dict()
    event["func_hash"] = hashlib.sha256(fn).hexdigest()
    event["func_inline"] = base64.b64encode(fn).decode()
    first = handler(dict(event), None)
    again = handler(dict(event, attempt=1), None)  # a second delivery of the same call
    print(json.dumps({"botocore": botocore.__version__, "first": first, "again": again}))
""")


def _run_handler(sdk_dir: str, store: S3Store, job: str, secret: bytes) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, sdk_dir, json.dumps(store.spec), job, auth.encode_secret(secret)],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _outcome(store: S3Store, job: str, secret: bytes):
    return open_result(secret, job, "00000", store.get(keys.result_key(job, "00000")), "result")


def test_the_oldest_accepted_botocore_runs_a_call_and_writes_its_result_once(old_sdks, moto_endpoint, bucket):
    store = S3Store(bucket, "sdk-oldest", endpoint_url=moto_endpoint, region=REGION)
    job, secret = "oldest", auth.new_secret()
    out = _run_handler(old_sdks[OLDEST], store, job, secret)
    assert out["botocore"] == OLDEST
    assert out["first"]["exit"] == "ok" and out["first"]["first"] is True
    assert out["first"]["botocore"] == OLDEST  # the status records the worker's SDK
    # the second delivery's conditional PUT was refused (412): the first result stays
    assert out["again"]["first"] is False
    status, outcome = _outcome(store, job, secret)
    assert outcome.ok and outcome.value == 49 and status["attempt"] == 0
    store.delete_prefix(keys.job_prefix(job))


def test_an_older_botocore_fails_the_call_in_one_line(old_sdks, moto_endpoint, bucket):
    store = S3Store(bucket, "sdk-older", endpoint_url=moto_endpoint, region=REGION)
    job, secret = "older", auth.new_secret()
    out = _run_handler(old_sdks[OLDER], store, job, secret)
    assert out["botocore"] == OLDER
    assert out["first"]["exit"] == "error" and out["first"]["botocore"] == OLDER
    # The refusal reached the store, conditionally (the header went by hand): first write wins.
    assert out["first"]["first"] is True and out["again"]["first"] is False
    status, outcome = _outcome(store, job, secret)
    err = outcome.rebuild("square")
    assert isinstance(err, SdkTooOld)
    message = str(err)
    assert "\n" not in message
    assert f"botocore is {OLDER}" in message and OLDEST in message
    assert "wrenpack build-runtime --keep-boto3 boto3" in message and "--runtime-dir" in message
    assert "run_s" not in status  # the user's code never ran
    store.delete_prefix(keys.job_prefix(job))


def test_the_version_check():
    assert sdk.problem_with(OLDEST) is None and sdk.problem_with("1.44.0") is None
    assert sdk.problem_with("1.34.162") and sdk.problem_with(OLDER)
    assert "no botocore" in sdk.problem_with(None)
    assert sdk.parse_version("1.35.2rc1") == (1, 35, 2) and sdk.parse_version("2") == (2,)
    assert sdk.check({"type": "local", "root": "/x"}) is None


# -- through the emulated Lambda: doctor's probe, and a call on a function whose worker has an old SDK ----------
def _doctor(capsys, monkeypatch, moto_endpoint, bucket, lambda_endpoint, function_name):
    from wrenpack.cli import main
    from tests.aws.servers import FUNCTION_TIMEOUT

    for name, value in (("STORAGE", f"s3://{bucket}/sdk-doctor"), ("S3_ENDPOINT_URL", moto_endpoint),
                        ("LAMBDA_ENDPOINT_URL", lambda_endpoint.url), ("AWS_REGION", REGION),
                        ("TIMEOUT", str(FUNCTION_TIMEOUT)), ("FUNCTION_NAME", function_name)):
        monkeypatch.setenv(f"WRENPACK_{name}", value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, {c["check"]: c for c in report["checks"]}


def test_doctor_shows_the_workers_sdk(capsys, monkeypatch, moto_endpoint, bucket, lambda_endpoint):
    import botocore

    code, checks = _doctor(capsys, monkeypatch, moto_endpoint, bucket, lambda_endpoint, lambda_endpoint.function_name)
    assert code == 0, checks
    assert f"botocore {botocore.__version__}" in checks["runtime"]["detail"]
    assert f"needs botocore >= {OLDEST}" in checks["runtime"]["detail"]


@pytest.fixture(scope="module")
def old_sdk_function(old_sdks, lambda_endpoint, stop_pools):
    """A function of its own family whose worker imports botocore 1.35.1 (first on its PYTHONPATH)."""
    import boto3

    from tests.aws import servers
    from wrenpack.backends.aws.deploy import ENV_FAMILY, ENV_STORE, HANDLER, FunctionSettings, deploy_function

    base = "wp-oldsdk"
    settings = FunctionSettings.for_call(1024, servers.FUNCTION_TIMEOUT, 512)
    lam = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name=REGION)
    env = {"WRENPACK_DEPLOYED_PYTHON": servers.PYTHON, ENV_FAMILY: base, ENV_STORE: "s3://wrenpack-test",
           "PYTHONPATH": f"{old_sdks[OLDER]}:{servers.REPO}"}
    package = {"Runtime": f"python{servers.PYTHON}", "Handler": HANDLER, "Layers": [], "Architectures": ["x86_64"]}
    lambda_endpoint.environments[settings.function_name(base)] = 1
    deploy_function(lam, settings.function_name(base), settings, {"ZipFile": servers._package()}, package, env,
                    role=lambda_endpoint.role_arn)
    yield base
    stop_pools(lambda name: name.startswith(base))


def test_a_call_on_a_worker_with_an_old_sdk_fails_in_one_line(old_sdk_function, moto_endpoint, bucket, lambda_endpoint,
                                                              capsys, monkeypatch):
    import wrenpack
    from tests.aws import servers
    from wrenpack.executor import Executor

    ex = Executor(backend="lambda", storage=f"s3://{bucket}/sdk-e2e", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=lambda_endpoint.url, function_name=old_sdk_function, aws_region=REGION,
                  timeout=servers.FUNCTION_TIMEOUT, retries=0, concurrency=2)
    ex.backend.poll_interval = 0.2
    try:
        future = wrenpack.remote(abs, executor=ex).map([-3])[0]
        with pytest.raises(SdkTooOld) as info:
            future.result(timeout=60)
        assert "\n" not in str(info.value) and f"botocore is {OLDER}" in str(info.value)
        assert future.status["botocore"] == OLDER
    finally:
        ex.shutdown()
    code, checks = _doctor(capsys, monkeypatch, moto_endpoint, bucket, lambda_endpoint, old_sdk_function)
    assert code == 1 and not checks["runtime"]["ok"]
    assert f"botocore is {OLDER}" in checks["runtime"]["detail"] and "--keep-boto3" in checks["runtime"]["detail"]


@pytest.mark.iam_identity("deploy")  # it uploads a runtime archive, as deploy does
def test_a_runtime_archive_with_its_own_botocore_replaces_the_bundled_one(tmp_path, moto_endpoint, bucket):
    """The archive's bootstrap imports the bundled boto3 to download it; a runtime
    built with --keep-boto3 then brings the botocore the worker must use."""
    import hashlib

    from wrenpack.backends.aws.deploy import runtime_tar_gz

    python = tmp_path / "python"
    (python / "botocore").mkdir(parents=True)
    (python / "botocore" / "__init__.py").write_text("__version__ = '9.9.9'\n")
    data = runtime_tar_gz(python)
    sha = hashlib.sha256(data).hexdigest()
    store = S3Store(bucket, "sdk-archive", endpoint_url=moto_endpoint, region=REGION)
    store.put("runtimes/rt.tar.gz", data)
    script = ("import boto3, botocore, sys; before = botocore.__version__\n"
              "from wrenpack.worker import runtime_archive, sdk\n"
              "runtime_archive.ensure_runtime()\n"
              "import botocore; print(before, botocore.__version__, sdk.botocore_version())\n")
    # the bootstrap runs in the worker: with the worker's credentials
    env = dict(os.environ, AWS_ENDPOINT_URL_S3=moto_endpoint, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"),
               WRENPACK_RUNTIME_ARCHIVE=f"s3://{bucket}/sdk-archive/runtimes/rt.tar.gz", WRENPACK_RUNTIME_SHA256=sha,
               **credentials("worker"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, seen = proc.stdout.split()
    assert before != "9.9.9" and after == seen == "9.9.9"
    boto3.client("s3", endpoint_url=moto_endpoint).delete_object(Bucket=bucket, Key="sdk-archive/runtimes/rt.tar.gz")
