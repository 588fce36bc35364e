"""A small result comes back over the local worker's private socketpair as its
outcome's pickle with the whole status beside it (no result object is
sealed by the worker and opened by the driver per call); what leaves the driver
again (a pinned job's result in the store) is sealed, and replies that go
anywhere else (contract 2 on Lambda, an event's own reply_limit) stay sealed."""
from __future__ import annotations

import pickle
import time

import pytest

import wrenpack
from wrenpack import keys
from wrenpack.backends.local import LocalBackend
from wrenpack.wire import result as result_format
from wrenpack.worker import refs


class Boom(ValueError):
    pass


def plus_one(x):
    return x + 1


def fails(x):
    raise Boom(f"bad {x}")


def slow_square(x):
    time.sleep(0.3)
    return x * x


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=1)


def test_small_results_skip_the_sealed_result_object(ex, monkeypatch):
    assert ex.submit(plus_one, 0).result(timeout=60) == 1  # warm
    opened, sealed = [], []
    real_open, real_seal = result_format.open_result, result_format.seal_result
    monkeypatch.setattr(result_format, "open_result", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    monkeypatch.setattr(result_format, "seal_result", lambda *a, **k: sealed.append(1) or real_seal(*a, **k))
    fut = ex.submit(plus_one, 41)
    assert fut.result(timeout=60) == 42
    assert opened == [] and sealed == []  # (the worker's seal would run in another process: see the status)
    status = fut.status
    assert status["exit"] == "ok" and status["duration_s"] > 0 and status["peak_rss_mb"] > 0 and "host" in status
    with pytest.raises(Boom, match="bad 3"):
        ex.submit(fails, 3).result(timeout=60)


def test_a_pinned_call_stores_a_sealed_result_for_its_reference(ex):
    fut = ex.submit(slow_square, 7)
    blob = pickle.dumps(fut)  # while running: its job keeps its objects
    assert fut.result(timeout=60) == 49
    assert blob
    # What a reference elsewhere reads: a result object sealed with the job's secret.
    data = ex.store.get(keys.result_key(fut.job_id, fut.call_id))
    secret = refs.secret_for(fut.job_id)
    status, outcome = result_format.open_result(secret, fut.job_id, fut.call_id, data, "result")
    assert outcome.value == 49 and status["exit"] == "ok"
    with pytest.raises(wrenpack.CorruptObject, match="failed authentication"):
        result_format.open_result(secret, fut.job_id, fut.call_id, data[:-1] + bytes([data[-1] ^ 1]), "result")


def test_without_the_backend_asking_the_reply_stays_sealed(tmp_path, monkeypatch):
    """An event's own reply_limit (as on Lambda) on a backend that does not take replies: sealed."""
    e = wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=1, reply_limit=0))
    try:
        opened = []
        real_open = result_format.open_result
        monkeypatch.setattr(result_format, "open_result", lambda *a, **k: opened.append(1) or real_open(*a, **k))
        opts = e.options()
        opts.extra = {"event": {"reply_limit": 1 << 20}}
        fut = e.launch(plus_one, [((1,), {})], opts)[0]
        assert fut.result(timeout=60) == 2
        assert opened == [1]
        assert e.store.list(keys.result_prefix(fut.job_id)) == []  # it came in the reply
    finally:
        e.shutdown()


def test_an_unreadable_private_outcome_fails_that_call_only(ex, monkeypatch):
    from wrenpack.backends.local import replies as local_replies

    original = local_replies.read_pickled

    def corrupting(label, raw):
        return original(label, b"not a pickle" if label.endswith("[1]") else raw)

    monkeypatch.setattr(local_replies, "read_pickled", corrupting)
    futs = wrenpack.remote(abs, executor=ex).map([-1, -2, -3])
    assert futs[0].result(timeout=60) == 1 and futs[2].result(timeout=60) == 3
    with pytest.raises(wrenpack.CorruptObject, match="cannot be unpickled"):
        futs[1].result(timeout=60)
    assert futs[1].label == "abs[1]"
