"""The Lambda backend end to end: ``f.map`` -> boto3 ``invoke`` -> the AWS
Runtime Interface Emulator -> awslambdaric -> wrenpack's handler -> moto S3 -> back.

The default emulated function's timeout is 5 s, so the maps here use
``timeout=5`` and run on it (other settings select other functions).
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import boto3
import pytest

import wrenpack
from wrenpack import auth, keys
from wrenpack.backends.aws import FunctionSettings, LambdaBackend
from wrenpack.errors import ConfigError, CorruptObject, MemoryLimitExceeded, TaskTimeout, WorkerCrashed, WorkerLost
from wrenpack.executor import Executor
from wrenpack.wire import start as start_mark
from tests.aws.runtime_dates import deploy_as_of_a_live_day

TIMEOUT = 5
#: the timeout of the function the tests that wait a timeout out deploy (5 s each time on the default)
SHORT_TIMEOUT = 2


@pytest.fixture(autouse=True)
def _deploys_this_python(monkeypatch):
    """The emulator runs this interpreter: deploy and auto-deploy its Python as of a day Lambda took it."""
    deploy_as_of_a_live_day(monkeypatch)


def square(x):
    return x * x


def fails(x):
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


def sleeps(x):
    time.sleep(x)
    return x


def dies(x):
    os._exit(7)  # the runtime vanishes without writing a result


def segfaults(x):
    import ctypes

    ctypes.string_at(0)


def crashes_once(path):
    """Dies on its first attempt, returns on the next (``path``: a file in the shared temporary folder)."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(3)
    return "ran again"


def crashes_at_4(x):
    if x == 4:
        os._exit(5)
    return x


def vanishes(x):
    """Ends the worker itself (the call runs in a child of it), as Lambda's timeout or
    memory limit ends a whole sandbox: nothing can write the call's status."""
    import signal

    os.kill(os.getppid(), signal.SIGABRT)
    time.sleep(60)


def chatty(x):
    import logging

    logging.basicConfig(level=logging.INFO)
    logging.getLogger("app").info("info line %s", x)
    logging.getLogger("app").warning("warning line %s", x)
    return x


def whoami(x):
    return {"pid": os.getpid(), "fn": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "x": x}


def _executor(moto_endpoint, bucket, lambda_endpoint, prefix, **overrides):
    settings = dict(
        backend="lambda",
        storage=f"s3://{bucket}/{prefix}",
        s3_endpoint_url=moto_endpoint,
        lambda_endpoint_url=lambda_endpoint.url,
        function_name=lambda_endpoint.function_name,
        aws_region="us-east-1",
        concurrency=8,
        timeout=TIMEOUT,
        retries=0,
    )
    settings.update(overrides)
    return Executor(**settings)


@pytest.fixture(scope="module", params=["Event-moto", "RequestResponse-moto", "Event-rclone", "RequestResponse-rclone"])
def lam(request, moto_endpoint, bucket, lambda_endpoint):
    """An executor on the emulated Lambda, its store on moto's S3 or on the
    stricter ``rclone serve s3`` (the same bucket name, so the deployed
    function's pinned store matches)."""
    kind, server = request.param.split("-")
    endpoint = moto_endpoint if server == "moto" else request.getfixturevalue("rclone_endpoint")
    ex = _executor(endpoint, bucket, lambda_endpoint, f"e2e-{request.param}", invocation_type=kind)
    if kind == "Event":
        # Poll the store every 0.2 s, not 0.5: a slot frees only when its result has been seen,
        # so the default's poll and probe delays (0.5, 1, 2, 4, 7 s after a send) set these maps'
        # pace. The default interval runs in the other Event tests here (each builds its own executor).
        ex.backend.poll_interval = 0.2
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def local_executor(tmp_path_factory):
    ex = Executor(backend="local", storage=str(tmp_path_factory.mktemp("local-store")), concurrency=2, retries=0, timeout=TIMEOUT)
    yield ex
    ex.shutdown()


def test_map_50_items_through_the_emulator(lam, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    f = wrenpack.remote(square, executor=lam)
    futures = f.map(range(50))
    assert wrenpack.get(futures) == [x * x for x in range(50)]
    kinds = {k for k, _ in lambda_endpoint.invocations[before:]}
    assert kinds == {lam.config.invocation_type}
    # one invocation per call: nothing was sent twice
    job = futures[0].job_id
    assert sorted(c for _, j, c, _, _ in lambda_endpoint.calls if j == job) == [keys.call_id(i) for i in range(50)]
    assert futures[0].status["exit"] == "ok" and futures[0].status["python"]


def test_runs_inside_the_lambda_runtime(lam):
    out = wrenpack.remote(whoami, executor=lam).map([1, 2])
    values = wrenpack.get(out)
    assert {v["fn"] for v in values} == {FunctionSettings.for_call(1024, TIMEOUT, 512).function_name("wrenpack-worker")}
    assert all(v["pid"] != os.getpid() for v in values)


def _launch_error_calls(ex):
    """Launch the calls ``_error_outcomes`` reads: each backend's wait for its timeout
    overlaps the other's (the outcomes are the same as launched one after the other)."""
    errs = wrenpack.remote(fails, executor=ex).map([1, 2, 3])
    slow = wrenpack.remote(sleeps, executor=ex, timeout=SHORT_TIMEOUT).map([0.1, 10])
    return errs, slow


def _error_outcomes(launched):
    """(type of a user exception, type of a timeout) as ``result()`` raises them for ``launched``."""
    errs, slow = launched
    assert errs[0].result() == 1
    with pytest.raises(ValueError, match="bad input 3") as user:
        errs[2].result()
    assert slow[0].result() == 0.1
    with pytest.raises(TaskTimeout) as timeout:
        slow[1].result()
    return type(user.value), type(timeout.value)


@pytest.fixture(scope="module")
def local_outcomes(local_executor):
    """``local_outcomes()``: the local backend's outcomes, launched once for the four Lambda
    variants (a second run would repeat its timeout) and read when first asked, so they
    run while the first variant's calls do."""
    launched = _launch_error_calls(local_executor)
    read: list[tuple[type, type]] = []

    def get() -> tuple[type, type]:
        if not read:
            read.append(_error_outcomes(launched))
        return read[0]

    return get


def test_errors_match_the_local_backend(lam, local_outcomes, lambda_endpoint):
    """The same user exception and the same timeout error type on both backends."""
    lambda_endpoint.deploy(memory=1024, timeout=SHORT_TIMEOUT)
    assert _error_outcomes(_launch_error_calls(lam)) == local_outcomes() == (ValueError, TaskTimeout)


def test_throttling_is_retried_with_backoff(lam, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    lambda_endpoint.throttle_next = 4
    assert wrenpack.get(wrenpack.remote(square, executor=lam).map([1, 2, 3])) == [1, 4, 9]
    seen = [outcome for _, outcome in lambda_endpoint.invocations[before:]]
    assert seen.count("throttled") == 4 and len(seen) == 7


@pytest.mark.iam_refusals("the client may not list functions: the error names the deploy command without copying one")
def test_unknown_function_is_a_config_error(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "nofn", function_name="no-such-function") as ex:
        fut = wrenpack.remote(square, executor=ex).map([1])[0]
        with pytest.raises(ConfigError, match="wrenpack deploy --function-name no-such-function --memory 1024"):
            fut.result(timeout=30)


def test_duplicate_delivery_keeps_the_first_result(moto_endpoint, bucket, lambda_endpoint):
    # Event: the result goes to the store (a RequestResponse reply would carry it instead)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "dup", keep_objects=True, invocation_type="Event") as ex:
        sent = []
        invoke_many = ex.backend.invoke_many
        ex.backend.invoke_many = lambda invs: (sent.extend(dict(i.event) for i in invs), invoke_many(invs))[1]
        fut = wrenpack.remote(whoami, executor=ex).map([5])[0]
        first = fut.result()
        job_id, call_id = fut.job_id, fut.call_id
        stored = ex.store.get(keys.result_key(job_id, call_id))
        # Its calls run on after a killed driver: the owner record says for how long at most, for
        # `wrenpack clean --stale` (an Event's wait to start, Lambda's longest timeout, the margins).
        owner = json.loads(ex.store.get(keys.owner_key(job_id)))
        assert owner["late_s"] == ex.backend.capabilities.late_writes_s == 600 + 900 + 2 * 30
        # Deliver the same call again, as Lambda may do with an async event.
        event = dict(sent[0], attempt=1)
        client = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name="us-east-1")
        name = FunctionSettings.for_call(1024, TIMEOUT, 512).function_name(lambda_endpoint.function_name)
        reply = client.invoke(FunctionName=name, Payload=json.dumps(event))
        status = json.loads(reply["Payload"].read())
        assert status["exit"] == "ok" and status["first"] is False
        assert ex.store.get(keys.result_key(job_id, call_id)) == stored
        assert first["x"] == 5
        ex.store.delete_prefix(keys.job_prefix(job_id))


def test_vanished_worker_is_reported(moto_endpoint, bucket, lambda_endpoint):
    """Event: no result by timeout + margin -> WorkerLost. RequestResponse: the
    reply says the runtime died -> WorkerCrashed at once. (The worker itself ends:
    one whose call's process died writes that: ``test_a_crash_in_the_call_...``.)"""
    lambda_endpoint.deploy(memory=1024, timeout=SHORT_TIMEOUT)
    for kind, expected in (("Event", WorkerLost), ("RequestResponse", WorkerCrashed)):
        with _executor(moto_endpoint, bucket, lambda_endpoint, f"lost-{kind}", invocation_type=kind,
                       timeout=SHORT_TIMEOUT) as ex:
            backend = LambdaBackend(
                ex.store, function_name=lambda_endpoint.function_name, endpoint_url=lambda_endpoint.url,
                region="us-east-1", invocation_type=kind, poll_interval=0.2, deadline_margin_s=0.5,
            )
            ex._backend = backend
            start = time.time()
            fut = wrenpack.remote(vanishes, executor=ex).map([1])[0]
            with pytest.raises(expected) as info:
                fut.result(timeout=60)
            ended = time.time()
            assert "\n" not in str(info.value)
            if kind == "Event":
                # Not before the timeout, counted from before the launch; and soon after it,
                # counted from the invocation's arrival at the endpoint: the launch itself (boto3
                # clients, the function's configuration) takes seconds on a loaded machine.
                sent = lambda_endpoint.arrived[(fut.job_id, fut.call_id)]
                assert ended - start >= SHORT_TIMEOUT and ended - sent < SHORT_TIMEOUT + 5, (start, sent, ended)
                assert "CloudWatch" in str(info.value)


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_a_crash_in_the_call_fails_at_once_as_on_the_local_backend(moto_endpoint, bucket, lambda_endpoint,
                                                                    local_executor, kind):
    """The call's process dies (an exit, a segfault) under a worker that lives on: the
    worker writes the local backend's WorkerCrashed, naming the exit code or signal,
    before it ends the same way. An Event call failed only after its timeout + 30 s,
    as WorkerLost blaming Lambda's timeout or memory limit (RequestResponse said
    WorkerCrashed, in the runtime's words)."""
    with _executor(moto_endpoint, bucket, lambda_endpoint, f"crash-{kind}", invocation_type=kind) as ex:
        for fn, how in ((dies, "exit code 7"), (segfaults, "signal SIGSEGV")):
            start = time.time()
            with pytest.raises(WorkerCrashed) as got:
                wrenpack.remote(fn, executor=ex).remote(1).result(timeout=60)
            took = time.time() - start
            with pytest.raises(WorkerCrashed) as local:
                wrenpack.remote(fn, executor=local_executor).remote(1).result(timeout=60)
            assert str(got.value) == str(local.value)
            assert f"died ({how}) on 1 attempt;" in str(got.value) and "\n" not in str(got.value)
            assert took < 25, took  # (not its timeout + 30 s)


@pytest.mark.parametrize("kind", ["Event", "RequestResponse"])
def test_a_crashed_call_is_run_again_as_retries_allow(moto_endpoint, bucket, lambda_endpoint, tmp_path, kind):
    """As on the local backend: a crashed call runs again (its crash's result object goes
    first, or it would win the retry's write), and the last crash counts the attempts."""
    with _executor(moto_endpoint, bucket, lambda_endpoint, f"crash-retry-{kind}", invocation_type=kind, retries=1) as ex:
        once = wrenpack.remote(crashes_once, executor=ex).remote(str(tmp_path / "crashed"))
        assert once.result(timeout=60) == "ran again"
        fut = wrenpack.remote(dies, executor=ex).remote(1)
        with pytest.raises(WorkerCrashed, match=r"died \(exit code 7\) on 2 attempts;"):
            fut.result(timeout=60)
        for f in (once, fut):
            assert [a for _, j, c, _, a in lambda_endpoint.calls if (j, c) == (f.job_id, f.call_id)] == [0, 1]


def test_a_group_with_a_crashing_call_fails_at_once_as_locally(moto_endpoint, bucket, lambda_endpoint, local_executor):
    """chunksize: a group one of whose calls crashes fails its calls with the crash, named
    as the local backend names it (Event: after the timeout + 30 s, WorkerLost)."""
    def outcomes(ex):
        got = wrenpack.get(wrenpack.remote(crashes_at_4, executor=ex).map(range(6), chunksize=3), return_exceptions=True)
        return [f"{type(x).__name__}: {x}" if isinstance(x, BaseException) else x for x in got]

    with _executor(moto_endpoint, bucket, lambda_endpoint, "crash-group", invocation_type="Event") as ex:
        start = time.time()
        on_lambda = outcomes(ex)
        assert time.time() - start < 25
    crashed = ("WorkerCrashed: crashes_at_4[3:6]: the worker process died (exit code 5) on 1 attempt; look for a crash "
               "in native code or an external kill, or raise retries=")
    assert on_lambda == outcomes(local_executor) == [0, 1, 2, crashed, crashed, crashed]


def test_logging_in_a_call_is_captured_as_on_the_local_backend(moto_endpoint, bucket, lambda_endpoint, tmp_path):
    """``logging.basicConfig`` in a call configures the root logger of the call's process,
    which on Lambda held the runtime client's handler (level WARNING, Lambda's format),
    so the call's INFO lines were dropped there and kept locally. (Fresh executors: a
    warm process keeps the first call's logging set-up, on both backends.)"""
    with _executor(moto_endpoint, bucket, lambda_endpoint, "logging", invocation_type="Event") as ex, \
            Executor(backend="local", storage=str(tmp_path / "store"), concurrency=1, retries=0, timeout=TIMEOUT) as here:
        on_lambda = wrenpack.remote(chatty, executor=ex).remote(1)
        local = wrenpack.remote(chatty, executor=here).remote(1)
        assert on_lambda.result(timeout=60) == local.result(timeout=60) == 1
        assert on_lambda.logs == local.logs == "INFO:app:info line 1\nWARNING:app:warning line 1\n"


def test_a_call_cancelled_while_it_runs_says_so_as_locally(moto_endpoint, bucket, lambda_endpoint, local_executor):
    """The message of a running call cancelled on Lambda named the call twice ("sleeps:
    sleeps was cancelled while it ran"); it reads as the local backend's."""
    said = []
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cancel-running", invocation_type="Event") as ex:
        for executor in (ex, local_executor):
            fut = wrenpack.remote(sleeps, executor=executor).remote(4)
            deadline = time.time() + 30
            while not fut.running() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            wrenpack.cancel([fut])
            with pytest.raises(wrenpack.CallCancelled) as info:
                fut.result(timeout=60)
            said.append(str(info.value))
    assert said[0] == said[1] == "sleeps was cancelled (wrenpack.cancel) and stopped, with every process it started"


def test_a_forged_start_mark_cannot_hold_a_lost_call(moto_endpoint, bucket, lambda_endpoint, caplog):
    """A start mark moves a queued call's deadline. One that is not the call's own
    (unsealed, or sealed for another call) is ignored and logged, and so is a genuine
    one whose start is far ahead: a lost call is still reported lost after its timeout
    (before start marks were sealed, the unsealed one held its call for ever)."""
    lambda_endpoint.deploy(memory=1024, timeout=SHORT_TIMEOUT)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "forged-start", invocation_type="Event",
                   timeout=SHORT_TIMEOUT) as ex:
        backend = LambdaBackend(
            ex.store, function_name=lambda_endpoint.function_name, endpoint_url=lambda_endpoint.url,
            region="us-east-1", invocation_type="Event", poll_interval=0.2, deadline_margin_s=0.5,
        )
        ex._backend = backend
        sent: list[Any] = []
        invoke_many = backend.invoke_many
        backend.invoke_many = lambda invs: (sent.extend(invs), invoke_many(invs))[1]
        stop = threading.Event()

        def plant() -> None:
            # Again and again: the worker's own mark (it starts late on a cold emulator) must not win.
            while not stop.wait(0.05):
                for inv in list(sent):
                    job, cid = inv.key
                    secret, ahead = auth.decode_secret(inv.event["secret"]), time.time() + 1e12
                    forged = {
                        keys.call_id(0): json.dumps({"start": ahead, "attempt": 0}).encode(),  # a third party's
                        keys.call_id(1): start_mark.seal_start(secret, job, keys.call_id(0), ahead, 0),  # another call's
                        keys.call_id(2): start_mark.seal_start(secret, job, cid, ahead, 0),  # its own, a clock gone wrong
                    }[cid]
                    ex.store.put(keys.start_key(job, cid), forged)

        planter = threading.Thread(target=plant)
        planter.start()
        try:
            with caplog.at_level("WARNING", logger="wrenpack.backends.aws"):
                futs = wrenpack.remote(vanishes, executor=ex).map([1, 2, 3])
                for fut in futs:
                    with pytest.raises(WorkerLost, match="CloudWatch"):
                        fut.result(timeout=60)
                    arrived = lambda_endpoint.arrived[(fut.job_id, fut.call_id)]
                    assert time.time() - arrived < SHORT_TIMEOUT + 10
        finally:
            stop.set()
            planter.join()
        ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
        assert any("failed authentication" in m for m in ignored) and any("clock" in m for m in ignored), ignored


def _most_in_flight(lambda_endpoint, futs) -> int:
    """The most of ``futs`` in flight at once, each from the arrival of its invocation
    request at the endpoint (queued or not) to the end its handler recorded.

    The client frees a call's slot only once it has seen the call's result, which the
    handler writes after recording its end: with the cap honoured, a later request
    always arrives after an earlier call's end. (Counting requests until the emulator
    answers instead would overlap the next request with that answer's way back, which
    a loaded machine stretches.)"""
    edges = []
    for fut in futs:
        edges.append((lambda_endpoint.arrived[(fut.job_id, fut.call_id)], 1))
        edges.append((fut.status["end"], -1))
    most = now = 0
    for _, step in sorted(edges):  # at a tie an end (-1) sorts before an arrival
        now += step
        most = max(most, now)
    return most


def test_concurrency_cap_limits_calls_in_flight(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cap", concurrency=2) as ex:
        lambda_endpoint.max_background = 0
        futs = wrenpack.remote(sleeps, executor=ex).map([0.3] * 6)
        assert wrenpack.get(futs) == [0.3] * 6
        assert lambda_endpoint.max_background >= 1  # they ran as Event invocations
        # the function has 3 execution environments: without the cap up to 6 would be in flight
        assert 1 <= _most_in_flight(lambda_endpoint, futs) <= 2


def test_servers_listen_on_loopback_only(moto_endpoint, lambda_endpoint, listening):
    ports = {int(moto_endpoint.rsplit(":", 1)[1]), int(lambda_endpoint.url.rsplit(":", 1)[1])}
    for emu in lambda_endpoint.emulators:
        ports |= {emu.port, emu.api_port}
    bound = {port: addr for addr, port in listening() if port in ports}
    assert set(bound) == ports
    assert set(bound.values()) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0


# -- the settings a call asked for -------------------------------------
def memory_seen(x):
    time.sleep(0.2)
    return int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0)), os.environ.get("AWS_LAMBDA_FUNCTION_NAME")


@pytest.mark.slow  # (test_aws_concurrency's test_two_memory_sizes_share_the_accounts_unreserved_concurrency[Event] checks the same, and the shared budget)
def test_two_maps_with_different_memory_at_once(moto_endpoint, bucket, lambda_endpoint):
    """Each call runs on the function deployed for its memory and sees it."""
    # 10 s: six runtimes starting at once on a small machine need more than 3 s (RIE counts init in the timeout)
    lambda_endpoint.deploy(memory=1024, timeout=10)
    lambda_endpoint.deploy(memory=2048, timeout=10)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "two-mem", timeout=10) as ex:
        small = wrenpack.remote(memory_seen, executor=ex, memory=1024).map(range(6))
        big = wrenpack.remote(memory_seen, executor=ex, memory=2048).map(range(6))
        small_seen, big_seen = wrenpack.get(small), wrenpack.get(big)
    assert {m for m, _ in small_seen} == {1024} and {m for m, _ in big_seen} == {2048}
    assert len({n for _, n in small_seen} | {n for _, n in big_seen}) == 2


@pytest.mark.iam_refusals("the client may not list functions: the error names the deploy command without copying one")
def test_settings_without_a_function_fail_before_launch(moto_endpoint, bucket, lambda_endpoint):
    before = len(lambda_endpoint.invocations)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "nofn-mem") as ex:
        futs = wrenpack.remote(square, executor=ex, memory=1536).map([1, 2])
        for fut in futs:
            with pytest.raises(ConfigError, match=f"wrenpack deploy --function-name wrenpack-worker --memory 1536 --timeout {TIMEOUT}") as info:
                fut.result(timeout=30)
        assert "\n" not in str(info.value)
    assert len(lambda_endpoint.invocations) == before  # nothing was sent


@pytest.mark.iam_identity("deploy")  # auto-deploys
@pytest.mark.slow  # (test_memory_auto_runs_with_the_profiled_memory auto-deploys a function and checks its settings the same way)
def test_auto_deploy_creates_the_function_on_first_use(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "autodeploy", lambda_auto_deploy=True, timeout=10) as ex:
        seen = wrenpack.get(wrenpack.remote(memory_seen, executor=ex, memory=1792).map([1, 2]))
    assert {m for m, _ in seen} == {1792}
    lam = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName=seen[0][1])
    assert (conf["MemorySize"], conf["Timeout"]) == (1792, 10)


@pytest.mark.iam_identity("deploy")  # auto-deploys
def test_memory_auto_runs_with_the_profiled_memory(moto_endpoint, bucket, lambda_endpoint, tmp_path, monkeypatch):
    from wrenpack.profiler import auto_settings

    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))
    with _executor(moto_endpoint, bucket, lambda_endpoint, "auto-mem", lambda_auto_deploy=True, timeout=10) as ex:
        fut = wrenpack.remote(memory_seen, executor=ex, memory="auto").remote(1)
        memory, name = fut.result(timeout=120)
    assert memory == auto_settings(memory_seen, (1,))["memory_mb"]
    # the function was made on first use, with the call's settings (as test_auto_deploy_creates_the_function_on_first_use)
    lam = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name="us-east-1")
    conf = lam.get_function_configuration(FunctionName=name)
    assert (conf["MemorySize"], conf["Timeout"]) == (memory, 10)


# -- concurrency and deadlines -------------------------------------------
def test_queued_calls_are_not_lost_or_sent_twice(moto_endpoint, bucket, lambda_endpoint):
    """7 calls of 0.35 s behind one execution environment wait up to ~2.5 s in
    Lambda's queue: the last two start past the 1 s timeout + 0.5 s margin counted
    from the send (10 calls under a 2 s timeout took a second longer to show it)."""
    lambda_endpoint.deploy(memory=1088, timeout=1, environments=1)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "queued", concurrency=7) as ex:
        ex._backend = LambdaBackend(
            ex.store, function_name=lambda_endpoint.function_name, endpoint_url=lambda_endpoint.url,
            region="us-east-1", concurrency=7, poll_interval=0.2, deadline_margin_s=0.5,
        )
        futs = wrenpack.remote(sleeps, executor=ex, memory=1088, timeout=1).map([0.35] * 7)
        assert wrenpack.get(futs) == [0.35] * 7
        job = futs[0].job_id
    starts = sorted(f.status["start"] for f in futs)
    assert starts[-1] - lambda_endpoint.arrived[(job, futs[0].call_id)] > 1.5  # (a call did wait past its deadline)
    sent = [(c, a) for _, j, c, _, a in lambda_endpoint.calls if j == job]
    assert sorted(sent) == [(keys.call_id(i), 0) for i in range(7)]  # each call once, first attempt
    assert ex.store.list(keys.job_prefix(job)) == []  # start marks are cleaned up with the job


def test_concurrency_is_capped_by_reserved_and_account_concurrency(moto_endpoint, bucket, lambda_endpoint, caplog):
    lambda_endpoint.deploy(memory=1152, reserved=2)
    with _executor(moto_endpoint, bucket, lambda_endpoint, "reserved", concurrency=8) as ex:
        with caplog.at_level("WARNING", logger="wrenpack.backends.aws"):
            futs = wrenpack.remote(sleeps, executor=ex, memory=1152).map([0.3] * 6)
            assert wrenpack.get(futs) == [0.3] * 6
        # requests waiting in the endpoint's queue count too: 2 environments alone would not show a broken cap
        assert 1 <= _most_in_flight(lambda_endpoint, futs) <= 2
    assert "concurrency=8 lowered to 2" in caplog.text and "reserved concurrency 2" in caplog.text
    lambda_endpoint.account_concurrency = 3
    try:
        with _executor(moto_endpoint, bucket, lambda_endpoint, "account", concurrency=8) as ex:
            with caplog.at_level("WARNING", logger="wrenpack.backends.aws"):
                assert wrenpack.get(wrenpack.remote(square, executor=ex).map([1, 2])) == [1, 4]
        assert "the account's unreserved Lambda concurrency is 3" in caplog.text
    finally:
        lambda_endpoint.account_concurrency = 1000


# -- completion -----------------------------------------------------------
def waits_for(path, x):
    """``x`` after ``x`` seconds and, given a ``path``, once it exists: the test creates it when
    it is ready (under pytest's temporary directory, which every sandbox sees), 4 s at most."""
    time.sleep(x)
    deadline = time.time() + 4
    while path is not None and not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)
    return x


def test_a_corrupt_result_object_fails_only_its_call(moto_endpoint, bucket, lambda_endpoint, tmp_path):
    release = str(tmp_path / "release")
    with _executor(moto_endpoint, bucket, lambda_endpoint, "corrupt", keep_objects=False) as ex:
        futs = wrenpack.remote(waits_for, executor=ex).starmap([(release if i == 3 else None, 0.05) for i in range(12)])
        # Written first, the garbage wins the conditional write, as a broken store's object would.
        ex.store.put(keys.result_key(futs[3].job_id, futs[3].call_id), b"not a result object")
        open(release, "w").close()  # only now may call 3 end and write its result
        for i, fut in enumerate(futs):
            if i == 3:
                with pytest.raises(CorruptObject, match="corrupt"):
                    fut.result(timeout=30)
            else:
                assert fut.result(timeout=30) == 0.05


def test_oom_is_memory_limit_exceeded_with_the_functions_memory(moto_endpoint, bucket, lambda_endpoint):
    with _executor(moto_endpoint, bucket, lambda_endpoint, "oom", invocation_type="RequestResponse") as ex:
        fut = wrenpack.remote(killed, executor=ex).remote(1)
        with pytest.raises(MemoryLimitExceeded, match="1024 MB memory limit"):
            fut.result(timeout=30)


def killed(x):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # how Lambda ends a runtime over its memory


# -- chunksize, checkpointing, map_reduce on Lambda ----------------------
def stepper(n, step_s):
    """A loop that offers its state after every step (see wrenpack.checkpoint)."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "acc": 0})
    while state["i"] < n:
        time.sleep(step_s)
        state["acc"] += state["i"] ** 2
        state["i"] += 1
        cp.offer(state)
    return state["acc"]


def word_pairs(line):
    return [(w, 1) for w in line.split()]


def count(key, values):
    return sum(values)


def test_chunksize_5_with_a_function_from_the_users_module(lam, lambda_endpoint):
    """``square`` lives in this test module, which the runtime cannot import:
    it must travel by value inside the batch (it failed with MissingDependency)."""
    before = len(lambda_endpoint.calls)
    futs = wrenpack.remote(square, executor=lam).map(range(12), chunksize=5)
    assert wrenpack.get(futs) == [x * x for x in range(12)]
    job = futs[0].job_id
    assert len([c for c in lambda_endpoint.calls[before:] if c[1] == job]) == 3  # 12 calls in 3 invocations


def test_checkpointed_call_goes_on_across_invocations(lam, lambda_endpoint):
    lambda_endpoint.deploy(memory=1024, timeout=SHORT_TIMEOUT)
    # >= 2.8 s of work (sleeps) under a 2 s timeout
    fut = wrenpack.remote(stepper, executor=lam, timeout=SHORT_TIMEOUT).remote(140, 0.02)
    assert fut.result(timeout=120) == sum(i * i for i in range(140))
    assert fut.segments >= 2


def test_map_reduce_with_a_shuffle(lam):
    lines = ["a b a", "b c", "a"]
    fut = wrenpack.map_reduce(word_pairs, lines, count, partitions=2, executor=lam)
    assert fut.result(timeout=120) == {"a": 3, "b": 2, "c": 1}
    assert wrenpack.map_reduce(square, range(5), sum, executor=lam).result(timeout=120) == 30


def _plus_one(fut):
    return fut.result(timeout=20) + 1


def test_submit_and_futures_between_calls_on_lambda(moto_endpoint, bucket, lambda_endpoint):
    """On the emulated Lambda path: the concurrent.futures API, and a
    future passed into a call resolves there (read and verified from S3)."""
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cf", invocation_type="RequestResponse") as ex:
        assert ex.submit(square, 6).result(timeout=30) == 36
        assert list(ex.map(square, [1, 2, 3], timeout=60)) == [1, 4, 9]
        first = ex.submit(sleeps, 0.5)
        assert ex.submit(_plus_one, first).result(timeout=30) == 1.5
        # a returned future resolves to its call's result when asked
        assert wrenpack.get(ex.submit(_identity, first), timeout=30) == 0.5
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def _identity(x):
    return x


def test_cancel_of_a_call_not_yet_invoked_on_lambda(moto_endpoint, bucket, lambda_endpoint, tmp_path):
    """On the emulated Lambda path: with one call in flight at a time,
    the next one has not been invoked yet, so cancel() takes it back (its
    callbacks run, Lambda never sees it); a running call cannot be cancelled."""
    release = str(tmp_path / "release")
    with _executor(moto_endpoint, bucket, lambda_endpoint, "cancel", invocation_type="RequestResponse",
                   concurrency=1) as ex:
        running = ex.submit(waits_for, release, 0.1)  # runs until released below
        queued = ex.submit(square, 3)
        seen = []
        queued.add_done_callback(lambda f: seen.append(f.cancelled()))
        deadline = time.time() + 20
        while not running.running() and time.time() < deadline:
            time.sleep(0.05)
        assert running.running() and not queued.running()
        assert queued.cancel() is True
        assert queued.cancelled() and seen == [True]
        assert running.cancel() is False
        open(release, "w").close()
        assert running.result(timeout=30) == 0.1
        # the slot is free again: the next call runs
        assert ex.submit(square, 4).result(timeout=30) == 16


def test_request_response_small_results_make_no_s3_put_per_call(moto_endpoint, bucket, lambda_endpoint):
    """Small results come back in the reply: every S3 request of the client and
    the workers goes through a counting proxy, and none is a per-call PUT."""
    from tests.aws.servers import CountingProxy

    proxy = CountingProxy(moto_endpoint)
    try:
        with _executor(proxy.url, bucket, lambda_endpoint, "rr-noput", invocation_type="RequestResponse") as ex:
            f = wrenpack.remote(square, executor=ex)
            assert wrenpack.get(f.map(range(2))) == [0, 1]  # warm: clients and function caches
            proxy.reset()
            assert wrenpack.get(f.map(range(20))) == [x * x for x in range(20)]
        puts = [path for kind, path in proxy.log if kind == "PUT"]
        assert not [p for p in puts if "/result/" in p]
        assert len(puts) <= 2, puts  # the job's function object (and its owner record), not one per call
        assert proxy.counts["GET"] <= 4, proxy.log  # the function, once per warm runtime at most
    finally:
        proxy.stop()


def test_a_straggler_is_probed_less_and_less_often():
    from wrenpack.backends.aws.backend import _probe_gap

    at, times = 0.5, [0.5]  # the first probe, half a second after the send
    for probes in range(1, 16):
        at += _probe_gap(0.5, probes)
        times.append(at)
    assert times[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 13.0]
    assert all(b - a == 5.0 for a, b in zip(times[5:], times[6:]))
    # A minute-long call costs about sixteen GETs, not one every poll interval after 7 s.
    assert sum(1 for t in times if t <= 60) < 16
