"""The emulated Lambda path under each Python the machine has (3.10 to 3.13).

A function travels as cloudpickle bytecode, which only the Python minor
version that made it can run: client and worker must share it. For each
version, the worker runs in the Runtime Interface Emulator under that
version's ``awslambdaric`` and a client subprocess on the same version (its
venv: tests/aws/pythons.py) runs a map, a call that raises and a checkpointed
call; the worker's status must name the same version. A client on this
interpreter then calls that worker, deployed for this interpreter's Python
(as an image built with another Python would be), and must get wrenpack's
one-line version-mismatch error: a worker on 3.11 to 3.13 unpickles another's
bytecode and crashes or misbehaves running it, unless it refuses the call.

3.12 runs in the default suite, 3.10, 3.11 and 3.13 with ``-m slow``. A
missing interpreter or package skips its version with the reason. The
``slow`` test runs the whole of tests/aws under another Python
(``WRENPACK_SUITE_PYTHONS``, default 3.12).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import wrenpack
from tests.aws import pythons, servers
from tests.aws.python_client import shape  # what the client's map computes, computed here
from tests.aws.servers import REGION, REPO, Unavailable
from wrenpack.errors import SerializationError

CLIENT = Path(__file__).resolve().parent / "python_client.py"
SUITE_PYTHONS = [v.strip() for v in os.environ.get("WRENPACK_SUITE_PYTHONS", "3.12").split(",") if v.strip()]
#: the client's function's timeout: its checkpointed call's first segment waits it out (5 s on the default function)
CLIENT_TIMEOUT = 2


@pytest.fixture(scope="session")
def python_env() -> Callable[..., pythons.PythonEnv]:
    """``python_env(version, flavor="worker")``: that Python with the flavor's packages
    (``pythons.ensure``, once per session), or a skip saying what is missing."""
    made: dict[tuple[str, str], Any] = {}

    def get(version: str, flavor: str = "worker") -> pythons.PythonEnv:
        key = (version, flavor)
        if key not in made:
            try:
                made[key] = pythons.ensure(version, flavor)
            except Unavailable as exc:
                made[key] = exc
        found = made[key]
        if isinstance(found, Unavailable):
            pytest.skip(str(found))
        return found

    return get


def _subprocess_env() -> dict[str, str]:
    """This process's environment (dummy AWS credentials included) for a child on
    another interpreter: wrenpack from this checkout, nothing of pytest's or our venv's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(REPO)
    return env


@contextlib.contextmanager
def endpoint_for(env: pythons.PythonEnv, session_endpoint: servers.LambdaEndpoint, log_dir: Path) -> Iterator[servers.LambdaEndpoint]:
    """A Lambda endpoint whose runtimes run ``env``'s Python, with the client's function
    (``CLIENT_TIMEOUT``) deployed: the session's own when that is the same interpreter,
    else a new one beside it (the same moto, emulator binary and role), stopped afterwards."""
    if env.python == session_endpoint.python:
        session_endpoint.deploy(timeout=CLIENT_TIMEOUT)
        yield session_endpoint
        return
    endpoint = servers.LambdaEndpoint(session_endpoint.binary, dict(session_endpoint.base_env), log_dir,
                                      session_endpoint.moto_url, per_function=2)
    endpoint.python, endpoint.python_version = env.python, env.version
    endpoint.function_name = f"wrenpack-py{env.version.replace('.', '')}"
    endpoint.role_arn = session_endpoint.role_arn
    try:
        endpoint.deploy(timeout=CLIENT_TIMEOUT)
        yield endpoint
    finally:
        endpoint.stop()


#: the default run keeps two Pythons (the suite's own and the oldest live Lambda runtime); the others
#: run with -m slow (the default suite's time): 3.12 by default, the Python Lambda still creates
#: functions for that is not the suite's own (every other Lambda test runs client and worker on that)
DEFAULT_VERSIONS = ("3.12",)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", [v if v in DEFAULT_VERSIONS else pytest.param(v, marks=pytest.mark.slow)
                                     for v in pythons.VERSIONS])
def test_client_and_worker_on_each_python(version, python_env, lambda_endpoint, bucket, tmp_path_factory):
    env = python_env(version)
    with endpoint_for(env, lambda_endpoint, tmp_path_factory.mktemp(f"rie-py{version}")) as endpoint:
        conf = {"storage": f"s3://{bucket}/pythons-{version}", "s3_endpoint_url": endpoint.moto_url,
                "lambda_endpoint_url": endpoint.url, "function_name": endpoint.function_name, "aws_region": REGION,
                "timeout": CLIENT_TIMEOUT, "invocation_type": "RequestResponse"}
        client = subprocess.Popen([env.python, str(CLIENT), json.dumps(conf)], cwd=str(REPO), env=_subprocess_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if version != pythons.RUNNING:  # (while the client waits for its checkpointed call)
                _check_mismatch_is_one_line(endpoint, bucket, version)
            stdout, stderr = client.communicate(timeout=600)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
    assert client.returncode == 0, stderr[-4000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    # Both sides ran the Python under test.
    assert out["python"] == version
    assert out["worker_pythons"] == [version]
    assert out["map"] == [shape(x) for x in range(8)]
    assert out["closure"] == [11, 12]
    raised = out["raised"]
    assert (raised["type"], raised["message"], raised.get("code")) == ("Boom", "no good: 3", 3), raised
    assert "in explode" in raised["remote_traceback"], raised
    # the call named in a note, on 3.10 too (no add_note there: the __notes__ list it would keep)
    assert any(n.startswith("raised by explode") for n in raised["notes"] or ()), raised
    # split, the state (with its lambda) restored in each later segment
    assert out["checkpoint"] == {"acc": sum(i * i + 1 for i in range(50)), "segments_seen": out["segments"]}
    assert out["segments"] >= 2


def _check_mismatch_is_one_line(endpoint: servers.LambdaEndpoint, bucket: str, version: str) -> None:
    """A function deployed for this interpreter's Python whose runtime runs ``version`` (as a
    container image built with another Python would), called from here: wrenpack's one line,
    naming both versions. (A client finds only functions deployed for its own Python: their
    names hash it.)"""
    endpoint.python_version = pythons.RUNNING
    try:
        endpoint.deploy(environments=1)
    finally:
        endpoint.python_version = version
    with wrenpack.Executor(backend="lambda", storage=f"s3://{bucket}/pythons-mismatch-{version}", s3_endpoint_url=endpoint.moto_url,
                           lambda_endpoint_url=endpoint.url, function_name=endpoint.function_name, aws_region=REGION,
                           timeout=servers.FUNCTION_TIMEOUT, retries=0, invocation_type="RequestResponse") as ex:
        fut = wrenpack.remote(lambda n: [i * i for i in range(n)], executor=ex).remote(4)
        with pytest.raises(SerializationError) as info:
            fut.result(timeout=120)
        assert fut.status["python"] == version
    message = str(info.value)
    assert "\n" not in message, message
    assert f"Python {pythons.RUNNING}" in message and f"Python {version}" in message, message


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("version", SUITE_PYTHONS)
def test_the_aws_suite_passes_under_another_python(version, python_env, tmp_path):
    """``python -m pytest tests/aws`` in that Python's ``tests`` venv (its default run, not -m slow)."""
    if version == pythons.RUNNING:
        pytest.skip(f"Python {version} is the one running this suite")
    env = python_env(version, "tests")
    log = tmp_path / "pytest.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run([env.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/aws"], cwd=str(REPO),
                              env=_subprocess_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=3500)
    text = log.read_text()
    lines = text.strip().splitlines() or ["no output"]
    skipped = "".join(f"\n  {line}" for line in lines if line.startswith("SKIPPED"))
    print(f"tests/aws under Python {version}: {lines[-1]} ({time.monotonic() - start:.0f} s, venv built in {env.built_s} s){skipped}",
          file=sys.stderr)
    assert proc.returncode == 0, text[-6000:]
