"""How wrenpack handles what Lambda does and the emulator now does too
(tests/aws/test_servers.py tests the emulator itself): out-of-memory replies in
every shape, 429 throttling, payload limits, duplicate async deliveries, events
that arrive after their deadline, dropped connections, and the sandbox's limits.
"""
from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid

import pytest

import wrenpack
from tests.aws import sandbox, servers
from wrenpack import keys
from wrenpack.backends.aws import FunctionSettings, backend as aws_backend
from wrenpack.backends.aws.backend import LambdaBackend, _reply_error
from wrenpack.backends.base import Invocation
from wrenpack.errors import MemoryLimitExceeded, PayloadTooLarge, TaskTimeout, WorkerCrashed
from wrenpack.executor import Executor
from wrenpack.wire.result import open_result
from wrenpack.worker import refs

TIMEOUT = servers.FUNCTION_TIMEOUT


def _executor(moto_endpoint, bucket, lambda_endpoint, prefix, **overrides):
    settings = dict(
        backend="lambda", storage=f"s3://{bucket}/strict-{prefix}", s3_endpoint_url=moto_endpoint,
        lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name, aws_region=servers.REGION,
        concurrency=4, timeout=TIMEOUT, retries=0,
    )
    settings.update(overrides)
    ex = Executor(**settings)
    ex.backend.poll_interval = 0.2
    return ex


def _runs(lambda_endpoint, fut) -> list[int]:
    """The attempts of ``fut``'s call that the emulator ran."""
    return [a for _, j, c, _, a in lambda_endpoint.calls if (j, c) == (fut.job_id, fut.call_id)]


def square(x):
    return x * x


def sleeps(x):
    time.sleep(x)
    return x


def allocates(mb):
    block = b"\x01" * (mb * 1024 * 1024)
    return len(block)


# -- out of memory -----------------------------------------------------------------------------
def _inv() -> Invocation:
    return Invocation(event={"job_id": "j1", "call_id": "00003", "function_name": "simulate"}, on_done=lambda i, r: None,
                      memory_mb=256, timeout_s=30)


@pytest.mark.parametrize("shape", sorted(servers.OOM_SHAPES))
def test_every_shape_of_lambdas_out_of_memory_reply_is_memory_limit_exceeded(shape):
    error = _reply_error(servers.oom_reply(shape, "1a2b"), "Unhandled", _inv(), "wrenpack-worker-x", 256)
    assert type(error) is MemoryLimitExceeded
    assert "256 MB memory limit" in str(error) and "raise memory=" in str(error) and "\n" not in str(error)


def test_other_runtime_failures_keep_their_errors():
    def err(doc):
        return _reply_error(json.dumps(doc).encode(), "Unhandled", _inv(), "wrenpack-worker-x", 256)

    assert type(err({"errorType": "Runtime.ExitError",
                     "errorMessage": "RequestId: 1 Error: Runtime exited with error: exit status 7"})) is WorkerCrashed
    assert type(err({"errorMessage": "RequestId: 1 Error: Task timed out after 5.00 seconds"})) is TaskTimeout
    too_large = err({"errorType": "Function.ResponseSizeTooLarge",
                     "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes)."})
    assert type(too_large) is PayloadTooLarge and "\n" not in str(too_large)
    assert "6291556-byte response limit" in str(too_large) and "wrenpack.store()" in str(too_large)


@pytest.fixture(scope="module")
def small_function(lambda_endpoint):
    """A 256 MB function (two execution environments): its runtimes can be pushed over their memory."""
    lambda_endpoint.deploy(memory=256, environments=2)
    return 256


#: One shape in the default run (the one taken for a crash before, and retried); every other with -m slow (1 s each).
@pytest.mark.parametrize("shape", [s if s == "process-exited" else pytest.param(s, marks=pytest.mark.slow)
                                   for s in sorted(servers.OOM_SHAPES)])
def test_a_call_over_its_memory_is_memory_limit_exceeded_and_not_retried(moto_endpoint, bucket, lambda_endpoint,
                                                                          small_function, shape):
    _needs("memory", "hold a runtime to its memory")
    lambda_endpoint.oom_shape = shape
    try:
        with _executor(moto_endpoint, bucket, lambda_endpoint, f"oom-{shape}", invocation_type="RequestResponse",
                       memory=256, retries=1) as ex:
            fut = wrenpack.remote(allocates, executor=ex).remote(400)
            with pytest.raises(MemoryLimitExceeded, match="256 MB memory limit") as info:
                fut.result(timeout=60)
            assert "\n" not in str(info.value)
            assert _runs(lambda_endpoint, fut) == [0]  # not tried again at the same memory
            assert wrenpack.remote(allocates, executor=ex).remote(20).result(timeout=60) == 20 * 1024 * 1024
    finally:
        lambda_endpoint.oom_shape = "out-of-memory"


def test_an_event_call_whose_process_the_oom_killer_ends_is_memory_limit_exceeded_at_once(
        moto_endpoint, bucket, lambda_endpoint, small_function):
    """The kernel's OOM killer ends the call's process (the largest in the sandbox) and the
    worker lives on: it sees the sandbox's OOM count rise and writes the memory error, so
    an Event call fails now, as the local backend says it, not after its timeout + 30 s
    as WorkerLost (and is not run again at the same memory)."""
    _needs("memory", "hold a runtime to its memory")
    with _executor(moto_endpoint, bucket, lambda_endpoint, "oom-event", invocation_type="Event", memory=256,
                   retries=1) as ex:
        start = time.time()
        fut = wrenpack.remote(allocates, executor=ex).remote(400)
        with pytest.raises(MemoryLimitExceeded, match="256 MB memory limit") as info:
            fut.result(timeout=60)
        assert time.time() - start < 25 and "\n" not in str(info.value)
        assert _runs(lambda_endpoint, fut) == [0]
        assert wrenpack.remote(allocates, executor=ex).remote(20).result(timeout=60) == 20 * 1024 * 1024


# -- throttling ------------------------------------------------------------------------------------
def test_request_response_throttling_is_retried_until_the_function_has_room(moto_endpoint, bucket, lambda_endpoint):
    lambda_endpoint.deploy(memory=1216, reserved=1)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "rr-429-a", invocation_type="RequestResponse", memory=1216) as busy, \
            _executor(moto_endpoint, bucket, lambda_endpoint, "rr-429-b", invocation_type="RequestResponse", memory=1216) as ex:
        assert wrenpack.remote(square, executor=ex).remote(2).result(timeout=60) == 4  # both clients are ready
        first = wrenpack.remote(sleeps, executor=busy).remote(1.0)
        deadline = time.time() + 30
        while not first.running() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        before = len(lambda_endpoint.invocations)
        fut = wrenpack.remote(square, executor=ex).remote(7)
        assert fut.result(timeout=60) == 49
        assert first.result(timeout=60) == 1.0
        assert ("RequestResponse", "throttled") in lambda_endpoint.invocations[before:]
        assert _runs(lambda_endpoint, fut) == [0]


# -- payload limits ------------------------------------------------------------------------------
def echo(x):
    return len(x)


def test_an_argument_whose_event_would_pass_lambdas_limit_travels_through_the_store(moto_endpoint, bucket,
                                                                                    lambda_endpoint):
    """inline_limit above what Lambda's request holds (1 MiB Event, 6 MB RequestResponse;
    an inline argument is base64, 4/3 its size): arguments on either side of what fits go
    inline or through the store, and every call runs, as it does locally. (Each call
    failed with PayloadTooLarge at send, "lower inline_limit".)"""
    for kind, sizes in (("Event", range(770_000, 795_000, 4_000)),
                        ("RequestResponse", range(4_702_000, 4_727_000, 4_000))):
        with _executor(moto_endpoint, bucket, lambda_endpoint, f"big-{kind}", invocation_type=kind,
                       inline_limit=8 * 1024 * 1024, keep_objects=True) as ex:
            futs = wrenpack.remote(echo, executor=ex).map([b"\x00" * size for size in sizes])
            assert [fut.result(timeout=60) for fut in futs] == list(sizes)
            stored = [ex.store.exists(keys.input_key(fut.job_id, fut.call_id)) for fut in futs]
            assert stored[0] is False and stored[-1] is True and stored == sorted(stored), (kind, stored)
    # the event's other fields count too: a large env= leaves less room for the argument
    with _executor(moto_endpoint, bucket, lambda_endpoint, "big-env", inline_limit=8 * 1024 * 1024) as ex:
        fut = wrenpack.remote(echo, executor=ex, env={"BIG": "e" * 120_000}).remote(b"\x00" * 700_000)
        assert fut.result(timeout=60) == 700_000


def test_a_413_from_lambda_fails_the_call_in_one_line_without_retries(moto_endpoint, bucket, lambda_endpoint, monkeypatch):
    monkeypatch.setattr(aws_backend, "EVENT_PAYLOAD_LIMIT", 4 * 1024 * 1024)  # a client that misjudges the limit
    with _executor(moto_endpoint, bucket, lambda_endpoint, "big-413", inline_limit=8 * 1024 * 1024, retries=2) as ex:
        before = len(lambda_endpoint.invocations)
        fut = wrenpack.remote(echo, executor=ex).remote(b"\x00" * 1_000_000)
        with pytest.raises(PayloadTooLarge, match="RequestEntityTooLargeException") as info:
            fut.result(timeout=60)
        assert "\n" not in str(info.value)
        assert lambda_endpoint.invocations[before:] == [("Event", "too-large")]


def loud_and_large(n):
    print("\x01" * (64 * 1024), end="")  # a log tail that JSON escapes to six times its size
    return b"r" * n


def test_a_result_near_the_reply_limit_with_a_large_log_tail_still_arrives(moto_endpoint, bucket, lambda_endpoint):
    """The reply would pass Lambda's 6 MB response limit with the escaped log tail
    beside the result: the handler stores the result instead (one GET)."""
    with _executor(moto_endpoint, bucket, lambda_endpoint, "reply-size", invocation_type="RequestResponse",
                   timeout=10) as ex:
        lambda_endpoint.deploy(memory=1024, timeout=10)
        # the result object holds the status too: with it the object just fits in the reply
        n = aws_backend.REPLY_LIMIT - 6 * 64 * 1024 - 5_000
        fut = wrenpack.remote(loud_and_large, executor=ex, timeout=10).remote(n)
        assert fut.result(timeout=60) == b"r" * n


# -- duplicate deliveries ------------------------------------------------------------------------
def token(i):
    return f"{i}-{uuid.uuid4().hex}-{os.getpid()}"


def test_a_duplicate_async_delivery_never_changes_a_result(moto_endpoint, bucket, lambda_endpoint):
    """Every event is delivered twice, the second up to a second later; each delivery
    computes another value. The first result written wins: what the client read is
    what the store holds once every delivery ended."""
    lambda_endpoint.duplicates, lambda_endpoint.duplicate_delay = 1.0, 1.0
    try:
        with _executor(moto_endpoint, bucket, lambda_endpoint, "dup2", keep_objects=True) as ex:
            futs = wrenpack.remote(token, executor=ex).map(range(6))
            seen = {}
            for fut in futs:
                value = fut.result(timeout=60)
                seen[fut.call_id] = (value, ex.store.get(keys.result_key(fut.job_id, fut.call_id)))
            lambda_endpoint.drain()
            job = futs[0].job_id
            secret = refs.secret_for(job)  # the client's, while the job's futures live
            for fut in futs:
                value, stored = seen[fut.call_id]
                assert value.split("-")[0] == str(int(fut.call_id))
                assert ex.store.get(keys.result_key(job, fut.call_id)) == stored  # no later delivery replaced it
                assert open_result(secret, job, fut.call_id, stored, "t")[1].value == value
                replies = [r for _, j, c, what, r in lambda_endpoint.queue_log if (j, c) == (job, fut.call_id) and what == "ran"]
                assert len(replies) == 2 and sorted(r["first"] for r in replies) == [False, True], replies
            ex.store.delete_prefix(keys.job_prefix(job))
    finally:
        lambda_endpoint.duplicates, lambda_endpoint.duplicate_delay = 0.0, 0.3


# -- deadlines ---------------------------------------------------------------------------------------
def test_an_event_started_after_its_deadline_is_refused_and_sent_again(moto_endpoint, bucket, lambda_endpoint):
    """The call waits in Lambda's queue (its function's one slot is busy, and the queue
    tries again only after 2 s) past its 1 s deadline: the handler refuses it without
    running it, and the client sends it again once it is past its deadline."""
    lambda_endpoint.deploy(memory=1280, timeout=2, reserved=1)
    lambda_endpoint.async_backoff = (2.0, 2.0)
    try:
        with _executor(moto_endpoint, bucket, lambda_endpoint, "deadline-busy", invocation_type="RequestResponse",
                       memory=1280, timeout=2) as busy, \
                _executor(moto_endpoint, bucket, lambda_endpoint, "deadline", memory=1280, timeout=2, retries=1) as ex:
            ex._backend = LambdaBackend(ex.store, function_name=lambda_endpoint.function_name, endpoint_url=lambda_endpoint.url,
                                        region=servers.REGION, poll_interval=0.2, deadline_margin_s=0.5, throttle_give_up_s=1.0)
            first = wrenpack.remote(sleeps, executor=busy, memory=1280, timeout=2).remote(1.0)
            while not first.running():
                time.sleep(0.02)
            time.sleep(0.2)
            fut = wrenpack.remote(square, executor=ex, memory=1280, timeout=2).remote(9)
            assert fut.result(timeout=60) == 81
            assert fut.status["attempt"] == 1
            first.result(timeout=30)
        lambda_endpoint.drain()
        ran = [r for _, j, c, what, r in lambda_endpoint.queue_log if (j, c) == (fut.job_id, fut.call_id) and what == "ran"]
        assert [r["exit"] for r in ran] == ["expired", "ok"] and ran[0]["attempt"] == 0
    finally:
        lambda_endpoint.async_backoff = servers.ASYNC_BACKOFF


# -- dropped connections ----------------------------------------------------------------------------------
def test_the_request_response_client_never_invokes_a_call_twice_after_a_dropped_connection(moto_endpoint, bucket,
                                                                                         lambda_endpoint):
    lambda_endpoint.pool(FunctionSettings.for_call(1024, TIMEOUT, 512).function_name(lambda_endpoint.function_name))
    proxy = servers.IdleDroppingProxy(lambda_endpoint.url, idle_s=0.5)
    try:
        with _executor(moto_endpoint, bucket, lambda_endpoint, "dropped", invocation_type="RequestResponse",
                       lambda_endpoint_url=proxy.url) as ex:
            cfg = ex.backend.client.meta.config
            assert cfg.tcp_keepalive is True and cfg.retries["total_max_attempts"] == 1 and cfg.read_timeout > 900
            ex.backend.reply_within_s = 0.3  # (60 s by default)
            assert wrenpack.remote(square, executor=ex).remote(3).result(timeout=60) == 9  # quick: nothing dropped
            assert proxy.dropped == 0
            fut = wrenpack.remote(sleeps, executor=ex).remote(1.2)
            assert fut.result(timeout=60) == 1.2  # from the store, where the call left it
            assert proxy.dropped == 1
            assert _runs(lambda_endpoint, fut) == [0]
    finally:
        proxy.stop()


# -- the sandbox ----------------------------------------------------------------------------------
def many_threads(n):
    stop = threading.Event()
    threads = []
    try:
        for _ in range(n):
            t = threading.Thread(target=stop.wait)
            t.start()
            threads.append(t)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return len(threads)


def writes(path):
    with open(path, "w") as f:
        f.write("x")
    return path


def lambda_env():
    names = ("AWS_EXECUTION_ENV", "AWS_REGION", "AWS_LAMBDA_FUNCTION_VERSION", "LAMBDA_TASK_ROOT", "TZ", "WP_STRICT", "HOME")
    return {name: os.environ.get(name) for name in names}


@pytest.fixture(scope="module")
def sandboxed(moto_endpoint, bucket, lambda_endpoint):
    ex = _executor(moto_endpoint, bucket, lambda_endpoint, "sandbox", invocation_type="RequestResponse")
    yield ex
    ex.shutdown()


def _needs(confinement: str, why: str) -> None:
    if not sandbox.capabilities()[confinement]:
        pytest.skip(f"the emulator cannot {why} here (it needs root and cgroup v1)")


def test_a_call_cannot_start_more_than_1024_threads(sandboxed, lambda_endpoint):
    _needs("pids", "limit a runtime's threads")
    with pytest.raises(RuntimeError, match="can't start new thread"):
        wrenpack.remote(many_threads, executor=sandboxed).remote(1100).result(timeout=60)
    assert wrenpack.remote(many_threads, executor=sandboxed).remote(100).result(timeout=60) == 100


def test_a_call_can_write_only_under_tmp(sandboxed):
    _needs("read_only", "make the filesystem read-only")
    with pytest.raises(OSError) as info:
        wrenpack.remote(writes, executor=sandboxed).remote(str(servers.REPO / "written-by-a-call")).result(timeout=60)
    assert info.value.errno == errno.EROFS
    assert wrenpack.remote(writes, executor=sandboxed).remote("/tmp/written-by-a-call").result(timeout=60)
    assert not os.path.exists(servers.REPO / "written-by-a-call")


def test_a_call_sees_lambdas_environment(sandboxed):
    env = wrenpack.remote(lambda_env, executor=sandboxed, env={"WP_STRICT": "1"}).remote().result(timeout=60)
    assert env == {"AWS_EXECUTION_ENV": f"AWS_Lambda_python{servers.PYTHON}", "AWS_REGION": servers.REGION,
                   "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "LAMBDA_TASK_ROOT": str(servers.REPO), "TZ": ":UTC",
                   "WP_STRICT": "1", "HOME": None}
