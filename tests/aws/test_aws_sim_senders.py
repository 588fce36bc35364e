"""The Lambda backend's sender processes (``send_processes``), against the simulated
Lambda + S3 served by a process of its own (``sim_server``: the in-process
simulator reaches only this process's botocore). The requests they make are
the ones the driver's threads made, counted the same; what goes wrong in them
reaches the backend's decisions as it did; a sender that dies fails no call."""
from __future__ import annotations

import os
import signal
import time

import pytest

import wrenpack
from wrenpack.executor import Executor

from tests.aws.sim_server import RemoteSim

#: the simulated service's concurrency (a backend allowed more gets 429 on its synchronous calls)
SIM_CONCURRENCY = 20


@pytest.fixture(scope="module")
def sim():
    with RemoteSim(duration=0.02, concurrency=SIM_CONCURRENCY, invoke_latency=0.002, buckets=("simbucket",)) as remote:
        yield remote


def _executor(sim, kind: str, concurrency: int = SIM_CONCURRENCY, senders: int = 1):
    from wrenpack.backends.aws.backend import LambdaBackend
    from wrenpack.storage.s3 import S3Store

    store = S3Store("simbucket", "t", endpoint_url=sim.s3_url, region="us-east-1")
    backend = LambdaBackend(store, function_name="sim", endpoint_url=sim.lambda_url, region="us-east-1",
                            concurrency=concurrency, invocation_type=kind, send_processes=senders)
    ex = Executor(backend=backend, storage="s3://simbucket/t", s3_endpoint_url=sim.s3_url,
                  lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                  timeout=60, retries=0, invocation_type=kind, concurrency=concurrency)
    return ex, backend


def _identity(x):
    return x


@pytest.mark.parametrize("kind", ["Event", pytest.param("RequestResponse", marks=pytest.mark.slow)])
def test_sender_processes_make_the_requests_the_driver_made(fake_credentials, sim, kind):
    """Every Invoke (and every Event result's GET) goes through the sender process,
    none through the driver's own Lambda client; the requests per call are the
    same as from the driver (one Invoke; Event: the worker's PUT and the GET that
    reads it); the results are verified as before, the job's objects are all
    deleted (without listing the results a sender read), and the sender process
    ends with the backend."""
    n = 120
    ex, backend = _executor(sim, kind)
    in_driver = []
    backend.client.meta.events.register("before-call.lambda.Invoke", lambda **kw: in_driver.append(1))
    with ex:
        f = wrenpack.remote(_identity, executor=ex)
        assert wrenpack.get(f.map(range(4))) == list(range(4))
        sim.reset_counts()
        assert wrenpack.get(f.map(range(n))) == list(range(n))
        client, worker = sim.requests("client"), sim.requests("worker")
        children = [c.proc for c in backend._senders._children]
    assert not in_driver
    assert client["INVOKE"] == n and "THROTTLED" not in client, client
    if kind == "Event":
        assert worker.get("PUT") == n
        assert n <= client["GET"] <= 2 * n, client
    else:
        assert client.get("GET", 0) == 0 and worker.get("PUT", 0) == 0, (client, worker)
    # the cleanup: nothing left, and no listing of the results the sender read (a page at most)
    assert sim.keys("simbucket", "t/jobs/") == []
    assert sim.requests("client").get("LIST", 0) - client.get("LIST", 0) <= 2
    assert all(proc.poll() is not None for proc in children)


@pytest.mark.slow
def test_throttled_invokes_in_a_sender_are_retried_by_the_backend(fake_credentials, sim):
    """Two drivers' synchronous calls together go beyond the service's concurrency: the
    calls beyond it get 429 in the sender processes; each backend reads the code as
    from its own client and sends them again."""
    n = 300
    (ex1, _), (ex2, _) = _executor(sim, "RequestResponse"), _executor(sim, "RequestResponse")
    with ex1, ex2:
        f1, f2 = wrenpack.remote(_identity, executor=ex1), wrenpack.remote(_identity, executor=ex2)
        assert wrenpack.get(f1.map(range(2))) + wrenpack.get(f2.map(range(2))) == [0, 1, 0, 1]  # (senders started)
        sim.reset_counts()
        futures1, futures2 = f1.map(range(n)), f2.map(range(n, 2 * n))
        assert wrenpack.get(futures1) + wrenpack.get(futures2) == list(range(2 * n))
        client = sim.requests("client")
    assert client.get("THROTTLED", 0) > 0, dict(client)
    assert client["INVOKE"] == 2 * n, dict(client)


@pytest.mark.slow
def test_a_sender_process_that_dies_fails_no_call(fake_credentials, sim):
    """The sender is killed while Event calls are in flight: the Invokes it carried
    are sent again from the driver (a duplicate is harmless: the result is written
    once), the reads it carried are made by the store, and every call returns."""
    n = 150
    ex, backend = _executor(sim, "Event")
    with ex:
        f = wrenpack.remote(_identity, executor=ex)
        assert wrenpack.get(f.map(range(2))) == [0, 1]
        futures = f.map(range(n))
        time.sleep(0.05)
        os.kill(backend._senders._children[0].proc.pid, signal.SIGKILL)
        assert wrenpack.get(futures, timeout=60) == list(range(n))
        assert backend._sender_processes() is None  # this process sends from now on
    assert sim.keys("simbucket", "t/jobs/") == []


def test_a_failed_request_in_a_sender_reads_as_botocores():
    """The error a sender reports is raised under its class name with botocore's
    ``response`` shape (what the backend's decisions read); wrenpack's own errors as themselves."""
    from wrenpack.backends.aws.sender import _remote_error
    from wrenpack.errors import ObjectNotFound
    from wrenpack.storage.s3 import _code

    exc = _remote_error({"error": "ClientError", "code": "TooManyRequestsException", "http": 429, "message": "slow down"})
    assert type(exc).__name__ == "ClientError" and _code(exc) == "TooManyRequestsException"
    exc = _remote_error({"error": "ReadTimeoutError", "message": "Read timed out."})
    assert type(exc).__name__ == "ReadTimeoutError" and _code(exc) is None
    assert isinstance(_remote_error({"error": "ObjectNotFound", "message": "gone"}), ObjectNotFound)


def test_the_lambda_send_processes_setting_sends_from_child_processes(fake_credentials, sim):
    """The setting (``lambda_send_processes``, or WRENPACK_LAMBDA_SEND_PROCESSES) reaches the
    backend an executor builds from its settings; a bad value is one line, before anything runs."""
    with pytest.raises(wrenpack.ConfigError, match=r"^lambda_send_processes=-1 \(from argument\) must be"):
        Executor(backend="lambda", lambda_send_processes=-1)
    with Executor(backend="lambda", storage="s3://simbucket/t", s3_endpoint_url=sim.s3_url,
                  lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                  timeout=60, retries=0, concurrency=SIM_CONCURRENCY, lambda_send_processes=1) as ex:
        in_driver = []
        ex.backend.client.meta.events.register("before-call.lambda.Invoke", lambda **kw: in_driver.append(1))
        assert wrenpack.get(wrenpack.remote(_identity, executor=ex).map(range(8))) == list(range(8))
        assert ex.backend.send_processes == 1 and len(ex.backend._senders._children) == 1
    assert not in_driver
