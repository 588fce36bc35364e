"""The test servers themselves (tests/aws/servers.py): the emulated Lambda is as
strict as Lambda where wrenpack's tests depend on it.

Each test invokes small functions that run ``tests/aws/probe_handler.py`` (no
wrenpack inside) through boto3, as any Lambda client would, and checks what
Lambda's documentation says comes back. How wrenpack handles each behaviour is
tested in test_aws_strict.py.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.aws import servers
from tests.aws.servers import REGION, free_port

_names = itertools.count()


def test_free_ports_are_never_handed_out_twice():
    # Emulators start together; a port offered twice made one die at start
    # ("bind: address already in use") while the other answered for both.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_the_test_processes_are_never_handed_the_same_port():
    """Under -n 2 each test process remembers only the ports it handed out: the other's,
    handed out but not yet bound by its server, could be offered to it too."""
    import subprocess
    import sys

    code = "from tests.aws.servers import free_port; print(*(free_port() for _ in range(300)))"
    handed = []
    for worker in ("gw0", "gw1"):
        env = dict(os.environ, PYTEST_XDIST_WORKER=worker, PYTEST_XDIST_WORKER_COUNT="2")
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=servers.REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        handed.append(set(map(int, out.stdout.split())))
    assert len(handed[0]) == len(handed[1]) == 300 and handed[0].isdisjoint(handed[1])


@pytest.fixture(scope="module")
def client(lambda_endpoint):
    """A Lambda client that never retries by itself (each answer is seen as it was given)."""
    cfg = Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=60)
    return boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name=REGION, config=cfg)


def probe(lambda_endpoint, **kwargs) -> str:
    return lambda_endpoint.deploy_probe(f"probe-{os.getpid()}-{next(_names)}", **kwargs)


def invoke(client, name: str, event: dict, kind: str = "RequestResponse") -> tuple[dict, object]:
    """(Lambda's answer, its payload as JSON or None)."""
    resp = client.invoke(FunctionName=name, InvocationType=kind, Payload=json.dumps(event))
    body = resp["Payload"].read()
    return resp, (json.loads(body) if body else None)


@pytest.fixture(scope="module")
def small(lambda_endpoint):
    """One 128 MB probe function with two execution environments."""
    return probe(lambda_endpoint, environments=2)


# -- payloads ---------------------------------------------------------------------------------
def test_requests_over_the_payload_limits_are_413(client, small):
    overhead = len(json.dumps({"op": "echo", "pad": ""}))
    for kind, limit in (("RequestResponse", servers.SYNC_REQUEST_LIMIT), ("Event", servers.EVENT_REQUEST_LIMIT)):
        at_limit = {"op": "echo", "pad": "p" * (limit - overhead)}
        assert len(json.dumps(at_limit)) == limit
        resp = client.invoke(FunctionName=small, InvocationType=kind, Payload=json.dumps(at_limit))
        assert resp["StatusCode"] == (200 if kind == "RequestResponse" else 202)
        with pytest.raises(ClientError) as info:
            client.invoke(FunctionName=small, InvocationType=kind, Payload=json.dumps(dict(at_limit, pad="p" * (limit - overhead + 1))))
        # (botocore's model calls it RequestTooLargeException; Lambda's answers say this)
        assert info.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
        assert str(limit) in str(info.value)


def test_a_response_over_6_mb_is_lambdas_function_error(client, small):
    ok, body = invoke(client, small, {"op": "reply", "n": 6 * 1024 * 1024})  # 6 MB + 2 quotes: within 100 bytes
    assert "FunctionError" not in ok and len(body) == 6 * 1024 * 1024
    resp, doc = invoke(client, small, {"op": "reply", "n": 6 * 1024 * 1024 + 100})
    assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
    assert doc["errorType"] == "Function.ResponseSizeTooLarge"
    assert "exceeded maximum allowed payload size (6291556 bytes)" in doc["errorMessage"]


def test_a_handlers_exception_is_flagged_as_a_function_error(client, small):
    resp, doc = invoke(client, small, {"op": "no-such-op"})
    assert resp["FunctionError"] == "Unhandled" and doc["errorType"] == "ValueError"
    resp, doc = invoke(client, small, {"op": "echo"})
    assert "FunctionError" not in resp and doc == {"size": 0}


# -- out of memory ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def confined(lambda_endpoint, small, client):
    """Which confinements this machine allows the emulator (root and cgroup v1 give them all)."""
    invoke(client, small, {"op": "echo"})
    return lambda_endpoint.pools[small].emulators[0].sandbox.confined


#: Lambda's present shape in the default run; every other with -m slow (0.4 s each).
@pytest.mark.parametrize("shape", [s if s == "out-of-memory" else pytest.param(s, marks=pytest.mark.slow)
                                   for s in sorted(servers.OOM_SHAPES)])
def test_the_kernel_kills_a_runtime_over_its_memory_and_lambdas_reply_says_so(lambda_endpoint, client, small, confined,
                                                                             shape):
    if not confined["memory"]:
        pytest.skip("no memory cgroup v1 here: the emulator cannot hold a runtime to its memory")
    lambda_endpoint.oom_shape = shape
    try:
        resp, doc = invoke(client, small, {"op": "allocate", "mb": 200})  # a 128 MB function
        assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
        rid = doc.get("requestId") or doc["errorMessage"].split()[1]
        assert doc == json.loads(servers.oom_reply(shape, rid))
        # under the limit it runs, in a fresh runtime
        resp, doc = invoke(client, small, {"op": "allocate", "mb": 40})
        assert doc == {"allocated": 40 * 1024 * 1024}
    finally:
        lambda_endpoint.oom_shape = "out-of-memory"


# -- concurrency ----------------------------------------------------------------------------------
def _occupy(client, name: str, seconds: float) -> threading.Thread:
    """A RequestResponse call that holds one of ``name``'s concurrency for ``seconds``."""
    t = threading.Thread(target=invoke, args=(client, name, {"op": "sleep", "s": seconds}))
    t.start()
    return t


def _hold(client, name: str, release) -> threading.Thread:
    """A RequestResponse call that holds one of ``name``'s concurrency until the file
    ``release`` exists (at most 8 s, within the probe's 10 s hard limit): as long as a loaded
    machine needs, no longer."""
    t = threading.Thread(target=invoke, args=(client, name, {"op": "hold", "s": 8, "until": str(release)}))
    t.start()
    return t


def _wait_running(lambda_endpoint, name: str, n: int = 1) -> None:
    deadline = time.time() + 20
    while lambda_endpoint.pools.get(name) is None or lambda_endpoint.pools[name].running < n:
        assert time.time() < deadline
        time.sleep(0.02)


def test_request_response_beyond_reserved_or_account_concurrency_is_429(lambda_endpoint, client, tmp_path):
    name = probe(lambda_endpoint, reserved=1)
    busy = _hold(client, name, tmp_path / "release-reserved")
    _wait_running(lambda_endpoint, name)
    with pytest.raises(client.exceptions.TooManyRequestsException) as info:
        invoke(client, name, {"op": "echo"})
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert info.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    (tmp_path / "release-reserved").touch()
    busy.join()
    assert invoke(client, name, {"op": "echo"})[1] == {"size": 0}
    # the account's concurrency: every function's calls count
    other = probe(lambda_endpoint)
    invoke(client, other, {"op": "echo"})  # its environment started
    lambda_endpoint.drain()
    lambda_endpoint.account_concurrency = 1
    try:
        busy = _hold(client, name, tmp_path / "release-account")
        _wait_running(lambda_endpoint, name)
        try:
            with pytest.raises(client.exceptions.TooManyRequestsException) as info:
                invoke(client, other, {"op": "echo"})
            assert info.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
        finally:
            (tmp_path / "release-account").touch()
        busy.join()
    finally:
        lambda_endpoint.account_concurrency = 1000


def test_throttled_events_are_retried_with_backoff_then_dropped_at_their_maximum_age(lambda_endpoint, client):
    name = probe(lambda_endpoint, reserved=1)
    lambda_endpoint.async_backoff = (0.1, 0.4)
    try:
        busy = _occupy(client, name, 0.8)
        _wait_running(lambda_endpoint, name)
        resp, _ = invoke(client, name, {"op": "sleep", "s": 0, "tag": "late"}, kind="Event")
        assert resp["StatusCode"] == 202
        busy.join()
        lambda_endpoint.drain()
        seen = [(what, reply) for fn, _, _, what, reply in lambda_endpoint.queue_log if fn == name]
        assert [w for w, _ in seen[:-1]] == ["throttled"] * (len(seen) - 1) and len(seen) >= 3  # after 0.1, 0.2, 0.4 s
        assert seen[-1][0] == "ran" and seen[-1][1]["tag"] == "late"
        # older than its maximum age: dropped, never run
        lambda_endpoint.max_event_age = 0.3
        busy = _occupy(client, name, 0.8)
        _wait_running(lambda_endpoint, name)
        before = len(lambda_endpoint.queue_log)
        invoke(client, name, {"op": "sleep", "s": 0, "tag": "dropped"}, kind="Event")
        busy.join()
        lambda_endpoint.drain()
        seen = [what for fn, _, _, what, _ in lambda_endpoint.queue_log[before:] if fn == name]
        assert seen[-1] == "dropped" and "ran" not in seen
    finally:
        lambda_endpoint.async_backoff = servers.ASYNC_BACKOFF
        lambda_endpoint.max_event_age = None


def test_duplicate_delivery_is_a_knob(lambda_endpoint, client, small):
    before = len(lambda_endpoint.queue_log)
    lambda_endpoint.duplicates = 1.0
    try:
        invoke(client, small, {"op": "sleep", "s": 0, "tag": "twice"}, kind="Event")
    finally:
        lambda_endpoint.duplicates = 0.0
    invoke(client, small, {"op": "sleep", "s": 0, "tag": "once"}, kind="Event")
    lambda_endpoint.drain()
    ran = [reply["tag"] for fn, _, _, what, reply in lambda_endpoint.queue_log[before:] if fn == small and what == "ran"]
    assert sorted(ran) == ["once", "twice", "twice"]


# -- the sandbox -----------------------------------------------------------------------------------
def test_a_sandbox_runs_at_most_1024_processes_and_threads(client, small, confined):
    if not confined["pids"]:
        pytest.skip("no pids cgroup here: the emulator cannot limit a runtime's threads")
    _, doc = invoke(client, small, {"op": "threads", "n": 1100})
    assert 1000 < doc["started"] < 1024 and "can't start new thread" in doc["error"]
    _, doc = invoke(client, small, {"op": "threads", "n": 500})  # all of them ended: the runtime goes on
    assert doc == {"started": 500, "error": None}


def test_the_filesystem_is_read_only_but_a_private_tmp(client, small, confined, tmp_path):
    if not confined["read_only"]:
        pytest.skip("no mount namespace here (not root): the emulator cannot make the filesystem read-only")
    shared = tmp_path / "handed-over"  # under the session's temporary directory, which tests share with calls
    paths = ["/tmp/probe-file", str(servers.REPO / "probe-file"), "/var/tmp/probe-file", "/dev/shm/probe-file",
             "/etc/probe-file", str(shared)]
    _, doc = invoke(client, small, {"op": "write", "paths": paths})
    assert doc == {"/tmp/probe-file": "ok", str(servers.REPO / "probe-file"): "EROFS", "/var/tmp/probe-file": "EROFS",
                   "/dev/shm/probe-file": "EROFS", "/etc/probe-file": "EROFS", str(shared): "ok"}
    assert shared.read_text() == "written inside the sandbox"
    assert not os.path.exists("/tmp/probe-file")  # the sandbox's /tmp is its own
    _, doc = invoke(client, small, {"op": "read", "paths": ["/tmp/probe-file"]})
    # two environments: the file is in the one that wrote it
    assert doc["/tmp/probe-file"] in ("written inside the sandbox", None)


def test_the_runtime_sees_lambdas_environment_variables(lambda_endpoint, client, small):
    _, env = invoke(client, small, {"op": "env"})
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == small
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == REGION
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{servers.PYTHON}"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{small}"
    assert "[$LATEST]" in env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["LAMBDA_TASK_ROOT"] == str(servers.REPO) and env["_HANDLER"] == servers.PROBE_HANDLER
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["TZ"] == ":UTC" and env["LANG"] == "en_US.UTF-8"
    # nothing of this machine's environment but what the emulator needs
    leaked = set(env) & (set(os.environ) - {"PATH", "PYTHONPATH", "LANG", "TZ"})
    assert not {k for k in leaked if not k.startswith("AWS_")}, leaked


def test_the_emulator_is_fetched_by_one_process_at_a_time(tmp_path, monkeypatch):
    """The suite's two test processes (-n 2) both fetch the emulator on a fresh cache (CI):
    without a lock both downloaded into the same folder and wrote the same ``.tmp`` file, and
    one could replace the target while the other still wrote it. One that finds the lock
    held waits, then takes what the other made."""
    import fcntl
    import zipfile

    monkeypatch.setattr(servers, "CACHE", tmp_path)
    with zipfile.ZipFile(tmp_path / "aws_sam_cli-0.0.0-py3-none-any.whl", "w") as zf:  # (no download: a wheel is there)
        zf.writestr(servers.RIE_MEMBER, b"#!/bin/sh\n")
    target = tmp_path / "aws-lambda-rie-x86_64"
    got: list = []
    with open(tmp_path / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process fetching it
        fetcher = threading.Thread(target=lambda: got.append(servers.rie_binary()))
        fetcher.start()
        fetcher.join(1.0)
        assert fetcher.is_alive() and not target.exists() and not target.with_suffix(".tmp").exists()
    fetcher.join(10)
    assert got == [target] and target.read_bytes() == b"#!/bin/sh\n" and os.access(target, os.X_OK)


def test_a_closed_port_stays_closed_while_a_test_uses_it(closed_port):
    """A test that wants a refused connection: a port found free and closed again could be
    bound meanwhile by a server of the other test process (-n 2); ``closed_port`` keeps it."""
    import socket

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=5).close()
    with socket.socket() as server, pytest.raises(OSError, match="in use"):
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as http.server's and moto's do)
        server.bind(("127.0.0.1", closed_port))


def test_a_closed_port_is_of_this_test_process_share(monkeypatch, request):
    """probe10: ``closed_port`` bound any free port, so as one of two test processes half of its
    ports were in the other's share, whose server then failed to bind it (EADDRINUSE)."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    ports = [request.getfixturevalue("closed_port")]
    assert all(port // 2 % 2 == 1 for port in ports), ports
