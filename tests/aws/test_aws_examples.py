"""sort and wordcount --small, unchanged, on the emulated Lambda path with the (moto) S3 store.

Marked slow (``python -m pytest -m slow tests/aws/test_aws_examples.py``): each
cold emulated runtime imports numpy/boto3 inside the emulator's 3 s timeout,
which a loaded 2-core machine misses. The scripts run as the user runs them,
configured only by WRENPACK_* variables:
their calls go through boto3 invoke -> the Runtime Interface Emulator ->
awslambdaric -> wrenpack's handler, and every object (inputs, shuffle
partitions, outputs) lives in S3.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.aws.runtime_dates import day_this_python_deploys

REPO = Path(__file__).resolve().parents[2]
#: under WRENPACK_TEST_IAM=enforce these run as the deploy identity (they auto-deploy; tests/aws/iam_proxy.py)
pytestmark = pytest.mark.iam_identity("deploy")


def _run(name, moto_endpoint, bucket, lambda_endpoint, prefix):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(
        WRENPACK_BACKEND="lambda",
        WRENPACK_STORAGE=f"s3://{bucket}/{prefix}",
        WRENPACK_S3_ENDPOINT_URL=moto_endpoint,
        WRENPACK_LAMBDA_ENDPOINT_URL=lambda_endpoint.url,
        WRENPACK_FUNCTION_NAME=lambda_endpoint.function_name,
        WRENPACK_AWS_REGION="us-east-1",
        WRENPACK_TIMEOUT="3",  # the emulated function's timeout
        WRENPACK_CONCURRENCY="3",
        WRENPACK_PROGRESS="false",
        WRENPACK_LAMBDA_AUTO_DEPLOY="true",  # calls run on a function per settings set (e.g. sort's 3008 MB)
        PYTHONPATH=str(REPO),
    )
    # The script runs as `python examples/NAME --small` would, on a day Lambda still took this
    # interpreter's Python: the emulator runs this interpreter, and auto-deploy refuses a blocked one.
    script = str(REPO / "examples" / name)
    code = ("import datetime, runpy, sys; import wrenpack.backends.aws.runtimes as runtimes; "
            f"runtimes.today = lambda: datetime.date.fromisoformat({day_this_python_deploys().isoformat()!r}); "
            f"sys.argv = [{script!r}, '--small']; sys.path.insert(0, {str(REPO / 'examples')!r}); "
            f"runpy.run_path({script!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        logs = "".join(Path(e.log.name).read_text(errors="replace")[-1500:] for e in lambda_endpoint.emulators)
        pytest.fail(f"{name} --small on Lambda failed:\n{proc.stdout}\n{proc.stderr[-3000:]}\nemulator logs:\n{logs}")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    assert left == [], f"{name} left objects in S3: {left[:5]}"
    return proc.stdout


@pytest.mark.slow
def test_sort_small_on_lambda(moto_endpoint, bucket, lambda_endpoint):
    pytest.importorskip("numpy")
    out = _run("sort.py", moto_endpoint, bucket, lambda_endpoint, "examples-sort")
    assert "sorted and verified" in out


@pytest.mark.slow
def test_wordcount_small_on_lambda(moto_endpoint, bucket, lambda_endpoint):
    out = _run("wordcount.py", moto_endpoint, bucket, lambda_endpoint, "examples-wordcount")
    assert "matches the local count" in out
