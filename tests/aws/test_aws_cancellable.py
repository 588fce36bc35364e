"""``cancellable=False`` on the simulated Lambda + S3: a call that cannot be stopped
names no cancel marker, so its invocation makes no S3 GET looking for one (the
requests that put 60 s Event calls at ~$7.9 per million instead of ~$5.9)."""
from __future__ import annotations

import pytest

import wrenpack
from wrenpack.executor import Executor

from tests.aws.sim_service import ScaledClock, SimService
from tests.aws.sim_worker import WrenpackFunction


def _square(x):
    return x * x


@pytest.mark.parametrize("cancellable", [True, False])
def test_uncancellable_calls_make_no_cancel_marker_looks(fake_credentials, cancellable):
    from wrenpack.backends.aws.backend import LambdaBackend
    from wrenpack.storage.s3 import S3Store

    n, clock = 20, ScaledClock(60)
    with SimService(clock, function=WrenpackFunction(_square, duration=30.0), concurrency=20,
                    invoke_latency=0.025) as sim:
        sim.s3.create_bucket("simbucket")
        store = S3Store("simbucket", "t", endpoint_url=sim.s3_url, region="us-east-1")
        backend = LambdaBackend(store, function_name="sim", endpoint_url=sim.lambda_url, region="us-east-1",
                                concurrency=n, invocation_type="Event", clock=clock)
        with Executor(backend=backend, storage="s3://simbucket/t", s3_endpoint_url=sim.s3_url,
                      lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                      timeout=300, retries=0, invocation_type="Event", concurrency=n) as ex:
            f = wrenpack.remote(_square, executor=ex, cancellable=cancellable)
            sim.reset_counts()
            assert wrenpack.get(f.map(range(n))) == [x * x for x in range(n)]
        looks = sim.requests("worker").get("WATCH", 0)
    # (30 s calls look at 2, 4, 8 and 16 s when they can be stopped)
    assert looks == (4 * n if cancellable else 0)
