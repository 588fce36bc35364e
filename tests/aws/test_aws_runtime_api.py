"""A job's code on a warm Lambda worker cannot take another job's invocation
through the Lambda Runtime API (probe4, finding 1).

The Runtime API (``$AWS_LAMBDA_RUNTIME_API``, 127.0.0.1:9001 on Lambda) answers
whoever asks on loopback. Job A's code leaves threads in its (warm, kept)
process that long-poll ``/runtime/invocation/next``; when the handler's
invocation ends and the runtime asks for the next event, a request of A's may
be served first and get job B's event: B's secret, function and arguments,
with which it can seal a forged result for B. The handler stops the kept
process tree at the end of each invocation and ends it if it holds a
connection to the Runtime API (``isolation.freeze_child``), so B's calls are
its own and A never sees B's event.
"""
from __future__ import annotations

import json
import os
import time

import pytest

import wrenpack
from wrenpack import auth
from wrenpack.executor import Executor
from tests.aws.runtime_dates import deploy_as_of_a_live_day

#: this test's own function (one execution environment: job A and job B share its warm worker)
MEMORY = 1344
TIMEOUT = 5


@pytest.fixture(autouse=True)
def _deploys_this_python(monkeypatch):
    deploy_as_of_a_live_day(monkeypatch)


def plant(outdir, own_prefix, threads, daemon=False):
    """Job A: leave ``threads`` requests waiting on the Runtime API's next invocation (with
    ``daemon``, from a double-forked process of the call's); each one that gets another job's
    event saves its job and secret in ``outdir`` and answers the invocation with a result
    forged under that secret. Returns once all wait."""
    import http.client
    import select
    import threading

    if daemon:
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork():
                os._exit(0)
            plant(outdir, own_prefix, threads)
            os.write(w, b"x")
            while True:
                time.sleep(60)
        os.close(w)
        select.select([r], [], [], 5)
        os.close(r)
        return "planted"

    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    host, port = api.rsplit(":", 1)
    waiting = threading.Semaphore(0)

    def forge(rid, ev):
        import cloudpickle
        from wrenpack import auth
        from wrenpack.wire.result import seal_result, to_reply
        from wrenpack.wire.status import record

        secret = auth.decode_secret(ev["secret"])
        now = time.time()
        status = record(ev["job_id"], ev["call_id"], ev.get("attempt", 0), ev.get("segment", 0), "ok", now, now,
                        None, None, "thief", os.getpid(), ev.get("python"), rid)
        blob = seal_result(secret, ev["job_id"], ev["call_id"], status, cloudpickle.dumps(("ok", "FORGED")))
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response",
                     body=json.dumps(dict(status, first=True, result=to_reply(blob, text=True))))
        conn.getresponse().read()

    def steal(n):
        for attempt in range(20):
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                conn.request("GET", "/2018-06-01/runtime/invocation/next")
                if attempt == 0:
                    waiting.release()
                resp = conn.getresponse()
                rid = resp.headers.get("Lambda-Runtime-Aws-Request-Id")
                ev = json.loads(resp.read())
            except Exception:  # noqa: BLE001 - the thief keeps trying
                time.sleep(0.05)
                continue
            if not isinstance(ev, dict) or ev.get("store", {}).get("prefix", "").endswith(own_prefix):
                continue  # job A's own next call: let it be
            with open(os.path.join(outdir, f"stolen-{os.getpid()}-{n}-{attempt}.json"), "w") as f:
                json.dump({"job_id": ev.get("job_id"), "secret": ev.get("secret")}, f)
            try:
                forge(rid, ev)
            except Exception:  # noqa: BLE001
                pass

    for n in range(threads):
        threading.Thread(target=steal, args=(n,), daemon=True).start()
    for _ in range(threads):
        waiting.acquire(timeout=5)  # every request is sent and waits for an event
    return "planted"


def honest(x):
    return f"honest {x}"


def counter_pid(_x):
    """(pid, count) of a counter thread that the first call starts and that ticks every
    10 ms while the process runs: a warm process keeps it from call to call."""
    import sys
    import threading

    state = sys.modules.setdefault("_counter_state", type(sys)("_counter_state"))
    if not hasattr(state, "count"):
        state.count = 0

        def tick():
            while True:
                state.count += 1
                time.sleep(0.01)

        threading.Thread(target=tick, daemon=True).start()
    time.sleep(0.05)
    return os.getpid(), state.count


def _executor(moto_endpoint, bucket, lambda_endpoint, prefix, invocation_type):
    return Executor(backend="lambda", storage=f"s3://{bucket}/{prefix}", s3_endpoint_url=moto_endpoint,
                    lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                    aws_region="us-east-1", concurrency=4, timeout=TIMEOUT, retries=0, invocation_type=invocation_type)


def test_a_jobs_code_cannot_take_the_next_jobs_invocation(moto_endpoint, bucket, lambda_endpoint, tmp_path, stop_pools):
    name = lambda_endpoint.deploy(memory=MEMORY, environments=1)
    loot = tmp_path / "loot"
    loot.mkdir()
    os.chmod(loot, 0o777)
    secrets_b: set[str] = set()
    jobs_b: set[str] = set()
    try:
        for rnd in range(3):
            prefix_a = f"rtapi-a{rnd}"
            with _executor(moto_endpoint, bucket, lambda_endpoint, prefix_a, "RequestResponse") as exa:
                # (the second round's requests wait in an orphaned process of the call's, not in its own)
                got = wrenpack.remote(plant, executor=exa, memory=MEMORY).remote(str(loot), prefix_a, 4, rnd == 1).result(timeout=60)
                assert got == "planted"
            for kind, calls in (("RequestResponse", 2), ("Event", 1)):
                with _executor(moto_endpoint, bucket, lambda_endpoint, f"rtapi-b{rnd}{kind[0]}", kind) as exb:
                    exb.backend.poll_interval = 0.1  # (its result is seen sooner: the test's pace)
                    f = wrenpack.remote(honest, executor=exb, memory=MEMORY)
                    for i in range(calls):
                        fut = f.remote(i)
                        jobs_b.add(fut.job_id)
                        secrets_b.add(auth.encode_secret(fut._owner.secret))  # (as its event carries it)
                        assert fut.result(timeout=60) == f"honest {i}", (rnd, kind, i)
        stolen = [json.loads(p.read_text()) for p in loot.iterdir()]
        assert not [s for s in stolen if s["job_id"] in jobs_b or s["secret"] in secrets_b], stolen
        assert not stolen, stolen

        # Honest code keeps its warm process across invocations: stopped, then continued.
        with _executor(moto_endpoint, bucket, lambda_endpoint, "rtapi-warm", "RequestResponse") as ex:
            f = wrenpack.remote(counter_pid, executor=ex, memory=MEMORY)
            pid1, count1 = f.remote(0).result(timeout=60)
            time.sleep(0.5)
            pid2, count2 = f.remote(1).result(timeout=60)
            pid3, count3 = f.remote(2).result(timeout=60)
        assert pid1 == pid2 == pid3  # (the same process, and its thread goes on counting)
        assert count1 < count2 < count3
        # Stopped between invocations: the 0.5 s between the first two calls counts no 50 ticks.
        assert count2 - count1 < 25, (count1, count2)
    finally:
        stop_pools(lambda n: n == name)



def test_connections_to_the_runtime_api_are_found(monkeypatch):
    """``isolation._api_connections`` finds the TCP connections to the Runtime API's port (IPv4 and
    IPv4-mapped IPv6) and no other, from netlink's socket diagnostics and from /proc/net alike."""
    import socket

    from wrenpack.worker import isolation

    with socket.create_server(("127.0.0.1", 0)) as api, socket.create_server(("127.0.0.1", 0)) as other:
        monkeypatch.setattr(isolation, "_runtime_api", ("127.0.0.1", api.getsockname()[1]))
        monkeypatch.setattr(isolation, "_api_addrs", frozenset({socket.inet_aton("127.0.0.1")}))
        to_api = [socket.create_connection(("127.0.0.1", api.getsockname()[1]))]
        mapped = socket.socket(socket.AF_INET6)
        mapped.connect(("::ffff:127.0.0.1", api.getsockname()[1]))
        to_api.append(mapped)
        elsewhere = socket.create_connection(("127.0.0.1", other.getsockname()[1]))
        try:
            want = {os.fstat(s.fileno()).st_ino for s in to_api}
            assert isolation._diag() == want
            assert isolation._proc_net("/proc/net/tcp") | isolation._proc_net("/proc/net/tcp6") == want
            assert isolation._sockets_of("self") >= want | {os.fstat(elsewhere.fileno()).st_ino}
        finally:
            for s in (*to_api, elsewhere):
                s.close()
