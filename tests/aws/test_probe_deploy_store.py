"""Deploy and the store its functions serve; the Lambda backend's ends (an outside probe's findings).

* ``wrenpack deploy --storage s3://<mistyped bucket>`` exited 0 and re-pointed the
  family's existing functions (``WRENPACK_STORE_URL``) at it: every current caller
  was refused from then on. Now deploy lists the store once and refuses a bucket
  that does not exist, and refuses to re-point a function that serves another
  store unless ``--replace-store``; each line it prints names the store.
* ``lambda_auto_deploy`` from a client on store B whose family serves store A made
  a copy serving A, which then refused the very client that made it.
* A program ending with Lambda calls running sometimes printed a "polling the store
  for call status failed" traceback (the poller submitting to a reader pool that
  shutdown had closed).
* A store that cannot be used at a job's first call printed a second line, from
  deleting the objects of a job that had written none.

Against moto (functions, S3) and the emulated Lambda (tests/conftest.py).
"""
from __future__ import annotations

import json
import logging
import threading

import boto3
import pytest

import wrenpack
from tests.aws import servers
from tests.aws.runtime_dates import deploy_as_of_a_live_day
from wrenpack.backends.aws.deploy import ENV_STORE, FunctionSettings, auto_deploy
from wrenpack.cli import main
from wrenpack.errors import StoreError, WorkerLost
from wrenpack.executor import Executor


@pytest.fixture(autouse=True)
def _live_python(monkeypatch):
    deploy_as_of_a_live_day(monkeypatch)  # the emulator runs this interpreter's Python


@pytest.fixture
def deploy(moto_endpoint, role_arn, capsys):
    """``deploy(lambda_url, base, storage, *options)``: `wrenpack deploy` of ``base`` for
    ``storage`` (on moto's S3), as (exit code, stdout, stderr)."""

    def run(lambda_url, base, storage, *extra):
        code = main(["deploy", "--function-name", base, "--role", role_arn, "--storage", storage,
                     "--region", servers.REGION, "--lambda-endpoint-url", lambda_url, "--s3-endpoint-url",
                     moto_endpoint, "--timeout", str(servers.FUNCTION_TIMEOUT), *extra])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _store_of(endpoint, name):
    lam = boto3.client("lambda", endpoint_url=endpoint, region_name=servers.REGION)
    return lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"].get(ENV_STORE)


def _error_line(err):
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("wrenpack: error: "), err
    return lines[0]


@pytest.mark.iam_identity("deploy")
@pytest.mark.iam_refusals("a bucket outside the policy's is refused by IAM, as AWS would")
def test_deploy_refuses_a_bucket_that_does_not_exist_before_changing_anything(moto_endpoint, bucket, deploy):
    base = "wp-typo"
    name = FunctionSettings.for_call(1024, servers.FUNCTION_TIMEOUT, 512).function_name(base)
    code, out, err = deploy(moto_endpoint, base, f"s3://{bucket}/team")
    assert code == 0, err
    assert out.strip().endswith(f"serving s3://{bucket}/team"), out  # the line names the store
    code, out, err = deploy(moto_endpoint, base, "s3://wrenpack-tset/team")
    assert code == 1 and out == ""
    line = _error_line(err)
    assert "s3://wrenpack-tset/team" in line and "nothing was deployed" in line
    assert "bucket 'wrenpack-tset' does not exist" in line or "access denied" in line, line
    assert _store_of(moto_endpoint, name) == f"s3://{bucket}/team"  # the function still serves its callers


@pytest.mark.iam_identity("deploy")
def test_deploy_refuses_to_repoint_a_function_serving_another_store_unless_asked(moto_endpoint, bucket, deploy):
    base = "wp-repin"
    name = FunctionSettings.for_call(1024, servers.FUNCTION_TIMEOUT, 512).function_name(base)
    assert deploy(moto_endpoint, base, f"s3://{bucket}/store-a")[0] == 0
    # The same store again (a redeploy) is no change of store.
    code, out, err = deploy(moto_endpoint, base, f"s3://{bucket}/store-a/")
    assert code == 0 and out.startswith(f"updated Lambda function {name} ") and "before" not in out, (out, err)
    code, out, err = deploy(moto_endpoint, base, f"s3://{bucket}/store-b")
    assert code == 1 and out == ""
    line = _error_line(err)
    assert f"{name!r} serves the store s3://{bucket}/store-a" in line and f"s3://{bucket}/store-b" in line
    assert "--replace-store" in line and "--function-name" in line
    assert _store_of(moto_endpoint, name) == f"s3://{bucket}/store-a"
    code, out, err = deploy(moto_endpoint, base, f"s3://{bucket}/store-b", "--replace-store", "--json")
    assert code == 0, err
    (done,) = json.loads(out)["functions"]
    assert (done["store"], done["previous_store"]) == (f"s3://{bucket}/store-b", f"s3://{bucket}/store-a")
    assert _store_of(moto_endpoint, name) == f"s3://{bucket}/store-b"


@pytest.mark.iam_identity("deploy")  # auto-deploys
def test_auto_deploy_makes_the_function_serve_the_clients_store(moto_endpoint, bucket, lambda_endpoint, deploy,
                                                                 stop_pools):
    base = "wp-autostore"
    assert deploy(lambda_endpoint.url, base, f"s3://{bucket}/auto-a")[0] == 0
    settings = dict(backend="lambda", storage=f"s3://{bucket}/auto-b", s3_endpoint_url=moto_endpoint,
                    lambda_endpoint_url=lambda_endpoint.url, function_name=base, aws_region=servers.REGION,
                    timeout=servers.FUNCTION_TIMEOUT, retries=0, lambda_auto_deploy=True)
    made = FunctionSettings.for_call(1152, servers.FUNCTION_TIMEOUT, 512).function_name(base)
    lambda_endpoint.environments[made] = 1
    try:
        with Executor(**settings) as ex:
            assert wrenpack.remote(abs, executor=ex, memory=1152).remote(-7).result(timeout=90) == 7
        assert _store_of(moto_endpoint, made) == f"s3://{bucket}/auto-b"
        # A client whose store lies inside the family's: the copy keeps serving the family's store
        # (its other clients' too), as before.
        lam = boto3.client("lambda", endpoint_url=moto_endpoint, region_name=servers.REGION)
        inside = FunctionSettings.for_call(1216, servers.FUNCTION_TIMEOUT, 512)
        auto_deploy(lam, inside.function_name(base), inside, base, store_url=f"s3://{bucket}/auto-a/run-1")
        assert _store_of(moto_endpoint, inside.function_name(base)) == f"s3://{bucket}/auto-a"
    finally:
        stop_pools(lambda n: n.startswith(base + "-"))


def _sleeps(x):
    import time

    time.sleep(x)
    return x


@pytest.mark.parametrize("closer", ["interpreter exit", "backend shutdown"])
def test_the_poller_stops_quietly_when_the_reader_pool_closes_during_a_round(closer, moto_endpoint, bucket,
                                                                            lambda_endpoint, caplog):
    """At exit the reader pool closes while the poller may be in a round: its next read was refused
    ("cannot schedule new futures after shutdown") and logged as a failed poll with a traceback
    (3 runs in 8 of a program ending with calls running). The pool closes first by the interpreter's
    own exit hook (concurrent.futures marks every pool shut down before the executor's exit hook
    runs), or by the backend's shutdown. Here it closes exactly there, at the poller's first read."""
    ex = Executor(backend="lambda", storage=f"s3://{bucket}/poll-race", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                  aws_region=servers.REGION, timeout=servers.FUNCTION_TIMEOUT, retries=0, invocation_type="Event")
    backend = ex.backend
    backend.poll_interval = 0.2
    raced = threading.Event()

    class ClosingPool:
        """The reader pool, closed just before the poller's first read."""

        def __init__(self, pool):
            self.pool = pool

        def submit(self, *args, **kwargs):
            if threading.current_thread().name == "wrenpack-lambda-poll" and not raced.is_set():
                raced.set()
                if closer == "interpreter exit":
                    self.pool._shutdown = True  # what concurrent.futures' exit hook leaves: a pool marked shut down
                else:
                    backend.shutdown(wait=False)  # what the executor's exit does, from another thread
            return self.pool.submit(*args, **kwargs)

        def shutdown(self, *args, **kwargs):
            return self.pool.shutdown(*args, **kwargs)

    backend._readers = ClosingPool(backend._readers)
    caplog.set_level(logging.DEBUG, logger="wrenpack.backends.aws.backend")
    try:
        fut = wrenpack.remote(_sleeps, executor=ex).remote(1)
        assert raced.wait(30)
        backend._poller.join(timeout=10)
        assert not backend._poller.is_alive()
        backend.shutdown(wait=False)  # (the executor's exit: it reports the calls still running)
        with pytest.raises(WorkerLost, match="still running when the Lambda backend shut down"):
            fut.result(timeout=60)
    finally:
        backend.shutdown(wait=False)  # (before the fix the poller went on: nothing would read the call's end)
        ex.shutdown()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("wrenpack.backends")]
    assert noisy == [], [r.getMessage() for r in noisy]


@pytest.mark.iam_refusals("a bucket outside the policy's is refused by IAM, as AWS would")
def test_a_store_that_cannot_be_used_at_the_first_call_is_said_once(moto_endpoint, lambda_endpoint, caplog):
    """The call's StoreError, and nothing from deleting the objects of the job, which wrote none."""
    caplog.set_level(logging.INFO, logger="wrenpack")
    with Executor(backend="lambda", storage="s3://no-such-bucket-zz/p", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                  aws_region=servers.REGION, timeout=servers.FUNCTION_TIMEOUT, retries=0) as ex:
        with pytest.raises(StoreError) as info:
            wrenpack.remote(abs, executor=ex).remote(-1).result(timeout=60)
    assert "no-such-bucket-zz" in str(info.value) and "\n" not in str(info.value)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [], said
