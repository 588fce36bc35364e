"""The Lambda client path against the simulated Lambda + S3 (``sim_service``,
``sim_server``): long RequestResponse calls reply with their results, the
synchronous connections probe while idle, and a job's cleanup removes every
object without listing the ones its driver already knows."""
from __future__ import annotations

import socket

import pytest

import wrenpack
from wrenpack.executor import Executor

from tests.aws.sim_service import ScaledClock, SimService
from tests.aws.sim_worker import WrenpackFunction


def _square(x):
    return x * x


def _backend(sim, kind: str, concurrency: int, clock=None, s3_url=None, lambda_url=None):
    from wrenpack.backends.aws.backend import LambdaBackend
    from wrenpack.storage.s3 import S3Store

    store = S3Store("simbucket", "t", endpoint_url=s3_url or sim.s3_url, region="us-east-1")
    return LambdaBackend(store, function_name="sim", endpoint_url=lambda_url or sim.lambda_url, region="us-east-1",
                         concurrency=concurrency, invocation_type=kind, clock=clock)


def _executor(sim, backend, kind: str, concurrency: int, timeout: int = 300, s3_url=None, lambda_url=None) -> Executor:
    return Executor(backend=backend, storage="s3://simbucket/t", s3_endpoint_url=s3_url or sim.s3_url,
                    lambda_endpoint_url=lambda_url or sim.lambda_url, function_name="sim", aws_region="us-east-1",
                    memory=1024, timeout=timeout, retries=0, invocation_type=kind, concurrency=concurrency)


def test_a_request_response_call_past_60_s_returns_in_its_reply(fake_credentials):
    """Calls of 90 s (on a clock 60x real time): each result comes back in its
    reply, with no S3 request at all (they used to be stored past 60 s: a PUT
    and a GET each, $5.40 per million calls), and the calls' statuses say they
    ran that long."""
    clock = ScaledClock(60)
    n = 6
    with SimService(clock, function=WrenpackFunction(_square, duration=90.0), concurrency=10, invoke_latency=0.0) as sim:
        sim.s3.create_bucket("simbucket")
        backend = _backend(sim, "RequestResponse", 10, clock=clock)
        with _executor(sim, backend, "RequestResponse", 10) as ex:
            f = wrenpack.remote(_square, executor=ex)
            sim.reset_counts()
            futures = f.map(range(n))
            assert wrenpack.get(futures) == [x * x for x in range(n)]
            assert all(fut.status["end"] - fut.status["start"] >= 80 for fut in futures)
        # (the worker wrote nothing; it only looked for the calls' cancel markers while they ran)
        assert set(sim.requests("worker")) <= {"WATCH"}, sim.requests("worker")
        client = sim.requests("client")
        assert client.get("INVOKE") == n
        # (per job, not per call: its owner record, and its cleanup's listing and delete)
        assert client.get("GET", 0) == 0 and client.get("HEAD", 0) == 0 and client.get("PUT", 0) <= 1, client


def test_request_response_connections_probe_while_idle(fake_credentials):
    """The synchronous client's sockets (a real one, to the simulator served over
    HTTP) carry keepalive probes after 60 idle seconds, well under a NAT's 350 s:
    the kernel's default would wait 2 hours, and the connection of a long call
    would be dropped while it waits for the reply."""
    from tests.aws.sim_server import serve
    from wrenpack.backends.aws import backend as lambda_backend

    if not hasattr(socket, "TCP_KEEPIDLE"):
        pytest.skip("this platform's socket module has no TCP_KEEPIDLE")
    with SimService(function=WrenpackFunction(_square, duration=0.0), invoke_latency=0.0) as sim:
        sim.s3.create_bucket("simbucket")
        s3, lam = serve(sim)
        try:
            backend = _backend(sim, "RequestResponse", 4, s3_url=s3.base, lambda_url=lam.base)
            client = backend.client
            client.get_account_settings()  # opens a connection, returned to the pool
            pool = client._endpoint.http_session._manager.connection_from_url(lam.base)
            conn = pool._get_conn()
            try:
                sock = conn.sock
                assert sock is not None
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == lambda_backend.KEEPALIVE_IDLE_S
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == lambda_backend.KEEPALIVE_INTERVAL_S
            finally:
                pool._put_conn(conn)
            backend.shutdown()
        finally:
            for server in (s3, lam):
                server.shutdown()
                server.server_close()


class _WritesExtra(WrenpackFunction):
    """A worker that also leaves an object nobody reads for every tenth call (as
    a late start mark is): the job's cleanup must find and delete it."""

    def finish(self, event, ctx):
        if int(event["call_id"]) % 10 == 0:
            self._put(ctx, event, f"jobs/{event['job_id']}/start/{event['call_id']}", b"x")
        return super().finish(event, ctx)


def test_a_jobs_cleanup_leaves_nothing_and_lists_only_what_it_did_not_read(fake_credentials, monkeypatch):
    """300 Event calls, 30 of them leaving an extra object: after the job no object
    is left under its prefix, and its cleanup listed only the objects its driver had
    not written or read (20 keys a page here: 2 pages), not the whole job (17)."""
    from wrenpack.storage.s3 import S3Store

    monkeypatch.setattr(S3Store, "list_page_size", 20)
    n = 300
    with SimService(function=_WritesExtra(_square, duration=0.05), concurrency=100, invoke_latency=0.0) as sim:
        sim.s3.create_bucket("simbucket")
        listed: list[str] = []
        handle = sim.s3.handle

        def counting(request):
            if "list-type=2" in request.url:
                listed.append(request.url)
            return handle(request)

        sim.s3.handle = counting
        backend = _backend(sim, "Event", 100)
        with _executor(sim, backend, "Event", 100) as ex:
            f = wrenpack.remote(_square, executor=ex)
            futures = f.map(range(n))
            job_id = futures[0].job_id
            assert wrenpack.get(futures) == [x * x for x in range(n)]
        assert sim.s3.keys("simbucket", "t/jobs/") == []
        job_listings = [u for u in listed if f"jobs%2F{job_id}%2F&" in u or u.endswith(f"jobs%2F{job_id}%2F")]
        assert 1 <= len(job_listings) <= 2, job_listings


@pytest.mark.parametrize("kind", ["RequestResponse", "Event"])
def test_a_map_after_a_small_one_runs_at_full_concurrency(fake_credentials, kind):
    """A map of 2 calls, then one of 60 calls of 0.3 s at concurrency 20: the second
    has its 20 calls running at once. The sender threads the first map started were
    counted as waiting while the second queued its calls, so no thread was added:
    its calls went 2 at a time (RequestResponse: a thread holds its call)."""
    with SimService(function=WrenpackFunction(_square, duration=0.3), concurrency=100, invoke_latency=0.01) as sim:
        sim.s3.create_bucket("simbucket")
        backend = _backend(sim, kind, 20)
        with _executor(sim, backend, kind, 20, timeout=60) as ex:
            f = wrenpack.remote(_square, executor=ex)
            assert wrenpack.get(f.map(range(2))) == [0, 1]
            sim.lambda_.peak_running = 0
            assert wrenpack.get(f.map(range(60))) == [x * x for x in range(60)]
        assert sim.lambda_.peak_running >= 18, sim.lambda_.peak_running


def test_a_cleanup_takes_only_the_known_keys_under_its_prefix():
    """The keys a driver remembers are handed to the cleanup of the prefix they are
    under, once: a sub-prefix of a job, a job, all jobs; nothing outside ``jobs/``,
    nothing of a location that did not ask for it."""
    from wrenpack.storage.s3 import _KnownKeys

    known = _KnownKeys()
    here, elsewhere = (None, "b", "p"), (None, "b", "q")
    known.enable(here)
    for key in ["jobs/j1/func.pkl", "jobs/j1/result/0/00000.res", "jobs/j1/input/00001.pkl",
                "jobs/j2/result/1/00001.res", "data/x"]:
        known.add(here, key)
        known.add(elsewhere, key)
    assert known.take(elsewhere, "jobs/") == []
    assert known.take(here, "jobs/j1/result/") == ["jobs/j1/result/0/00000.res"]
    assert known.take(here, "jobs/j1/") == ["jobs/j1/func.pkl", "jobs/j1/input/00001.pkl"]
    assert known.take(here, "jobs/") == ["jobs/j2/result/1/00001.res"]
    assert known.take(here, "jobs/") == []
