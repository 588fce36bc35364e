"""A storage that is not on S3 is refused on the Lambda side before anything runs.

Lambda's workers reach only S3: the handler opens the event's store in the
function, and a deployed function serves one S3 location (``WRENPACK_STORE_URL``).
The default storage is a folder on this machine whatever the backend, so
``WRENPACK_BACKEND=lambda`` alone named one. Before:

* the lambda backend sent every call: an ``Event`` call failed after its timeout
  plus 30 s as ``WorkerLost`` blaming Lambda's timeout or memory, a
  ``RequestResponse`` call with a ``ProtocolError`` naming the store "s3://None/";
* ``wrenpack doctor`` said all was well, and made the folder (a doctor/ in it);
* ``wrenpack deploy`` exited 0 having created functions its own warning said
  "refuse every call" (``undeploy`` with the same settings refused, exit 2).

Now each says so in one line, before any request, naming the fix.
"""
from __future__ import annotations

import json
import time

import pytest

import wrenpack
from tests.aws import servers, test_aws_cli
from tests.aws.test_aws_runtimes import family, run
from wrenpack.backends import backend_class, create_backend
from wrenpack.backends.aws.doctor import doctor_checks
from wrenpack.config import current, default_storage
from wrenpack.errors import ConfigError
from wrenpack.executor import Executor

pytestmark = pytest.mark.iam_identity("deploy")  # (deploy's case: an identity that may create functions)

aws_cli = test_aws_cli.aws_cli  # the fixture (moto's endpoints in the settings, this Python deployable), shared


def _lambda(lambda_endpoint, moto_endpoint, **kw):
    return dict(backend="lambda", s3_endpoint_url=moto_endpoint, lambda_endpoint_url=lambda_endpoint.url,
                function_name=lambda_endpoint.function_name, aws_region=servers.REGION,
                timeout=servers.FUNCTION_TIMEOUT, lambda_auto_deploy=True, **kw)


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_the_lambda_backend_refuses_a_local_store_before_anything_is_sent(kind, tmp_path, moto_endpoint, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    start = time.monotonic()
    store = tmp_path / "store"
    with Executor(**_lambda(lambda_endpoint, moto_endpoint, storage=str(store), invocation_type=kind, retries=1)) as ex:
        for launch in (lambda: wrenpack.remote(abs, executor=ex).remote(-1), lambda: wrenpack.remote(abs, executor=ex).map([-1]),
                       lambda: ex.submit(abs, -1)):
            with pytest.raises(ConfigError) as info:
                launch()
            message = str(info.value)
            assert message.startswith("the lambda backend needs storage s3://BUCKET/PREFIX, and storage is "
                                       f"{str(store)!r}") and "WRENPACK_STORAGE" in message and "\n" not in message
    assert len(lambda_endpoint.invocations) == before  # nothing was sent
    assert time.monotonic() - start < 10
    assert not (store / "jobs").exists() or not any((store / "jobs").iterdir())  # nor stored


def test_the_default_storage_is_named_as_the_default(moto_endpoint, lambda_endpoint, monkeypatch):
    """``WRENPACK_BACKEND=lambda`` alone: the storage is the default folder, refused before it is opened."""
    monkeypatch.setenv("WRENPACK_BACKEND", "lambda")
    settings = current(**{k: v for k, v in _lambda(lambda_endpoint, moto_endpoint).items() if k != "backend"})
    assert settings.backend == "lambda" and settings.storage == default_storage()
    with pytest.raises(ConfigError, match=r"storage is '.*' \(the default, a folder on this machine\), which Lambda's"):
        create_backend("lambda", settings)
    # (a spawned job's supervisor makes its backend elsewhere: the driver checks the settings first)
    with pytest.raises(ConfigError, match=r"the lambda backend needs storage s3://.* \(the default"):
        backend_class("lambda").check_config(settings)


def test_doctor_fails_the_storage_check_of_a_local_store_and_makes_nothing(aws_cli, capsys, tmp_path):
    where = tmp_path / "not" / "made"
    checks = {c["check"]: c for c in doctor_checks(current(storage=str(where)))}
    assert not checks["storage"]["ok"] and f"storage is {str(where)!r}, not on S3" in checks["storage"]["detail"]
    assert "s3://BUCKET/PREFIX" in checks["storage"]["detail"]
    assert "conditional writes" not in checks  # (nothing there to write to)
    code, out, err = run(capsys, "doctor", "--json", "--storage", str(where))
    doc = json.loads(out)
    storage = next(c for c in doc["checks"] if c["check"] == "storage")
    assert code == 1 and doc["ok"] is False and storage["ok"] is False and "not on S3" in storage["detail"], out
    assert "Traceback" not in err
    assert not (tmp_path / "not").exists()  # no folder, no doctor/ probe left in it


def test_deploy_refuses_a_local_storage_before_anything_is_created(aws_cli, role_arn, capsys, tmp_path):
    where = tmp_path / "local"
    counter = servers.CountingProxy(aws_cli)  # every AWS request deploy makes would pass here
    try:
        for extra in ((), ("--json",)):
            code, out, err = run(capsys, "deploy", "--function-name", "wp-localstore", "--role", role_arn, "--storage", str(where),
                                 "--lambda-endpoint-url", counter.url, "--s3-endpoint-url", counter.url, *extra)
            assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
            assert f"storage is {str(where)!r}, not an S3 location" in err and "--storage s3://BUCKET/PREFIX" in err
            if extra:
                doc = json.loads(out)
                assert doc["ok"] is False and doc["error"] == "ConfigError" and "not an S3 location" in doc["message"]
            else:
                assert out == ""
    finally:
        counter.stop()
    assert sum(counter.counts.values()) == 0, counter.log  # refused before any AWS request
    assert family(aws_cli, "wp-localstore") == [] and not where.exists()
    # (undeploy with the same settings: refused the same way, as before)
    code, _, err = run(capsys, "undeploy", "--function-name", "wp-localstore", "--storage", str(where), "--yes")
    assert code == 2 and "not an S3 location" in err


def test_deploy_without_a_storage_names_the_default(aws_cli, role_arn, capsys, monkeypatch):
    monkeypatch.delenv("WRENPACK_STORAGE")
    code, _, err = run(capsys, "deploy", "--function-name", "wp-nostorage", "--role", role_arn)
    assert code == 2 and "(the default, a folder on this machine), not an S3 location" in err, err
    assert family(aws_cli, "wp-nostorage") == []
