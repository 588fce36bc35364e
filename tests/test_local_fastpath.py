"""The cheap single call: a small call stores nothing, a warm worker
keeps a function by its content hash across jobs, an idle worker is handed a
call from the caller's thread — and none of it loosens authentication, limits
or cleanup."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import time

import cloudpickle
import pytest

import wrenpack
from wrenpack import auth, keys
from wrenpack.backends.local import LocalBackend
from wrenpack.storage.local import LocalStore
from wrenpack.wire.event import Event, inline_args
from wrenpack.wire.result import open_result
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import handler


def _objects(root) -> list[str]:
    out = []
    for base, _dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(base, f), root) for f in files]
    return sorted(out)


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=1)


def plus_one(x):
    return x + 1


def test_a_small_call_touches_no_store(ex, monkeypatch):
    assert ex.submit(plus_one, 0).result(timeout=60) == 1  # warm
    touched = []
    for name in ("put", "get", "delete_prefix", "list"):
        original = getattr(LocalStore, name)

        def spy(self, *a, _original=original, _name=name, **k):
            touched.append((_name, a[0] if a else None))
            return _original(self, *a, **k)

        monkeypatch.setattr(LocalStore, name, spy)
    for i in range(20):
        assert wrenpack.remote(plus_one, executor=ex).remote(i).result(timeout=60) == i + 1
    assert touched == [], f"a small call used the store: {touched[:5]}"
    assert _objects(ex.store.root) == []


_COUNTER = {"n": 0}


def count_calls():
    _COUNTER["n"] += 1
    return _COUNTER["n"]


def test_a_warm_worker_keeps_state_only_for_the_same_function_from_the_same_driver(ex):
    # Pickled by value (defined in a test module), the function's globals come
    # with it. Calls of one function from one driver share a warm process
    # (``worker.isolation``'s domain), as a process pool's worker is shared, so
    # one job's call sees what the one before did to them...
    first = [wrenpack.remote(count_calls, executor=ex).remote().result(timeout=60) for _ in range(3)]
    assert first == [1, 2, 3]
    # ...and once another function has run there, its process is a new one.
    assert wrenpack.remote(plus_one, executor=ex).remote(0).result(timeout=60) == 1
    assert wrenpack.remote(count_calls, executor=ex).remote().result(timeout=60) == 1
    # Within a job, calls run in that job's process, one after another, which keeps them.
    ex_one = wrenpack.Executor(storage=ex.config.storage, concurrency=1)
    try:
        counted = [f.result(timeout=60) for f in wrenpack.remote(count_calls, executor=ex_one).starmap([()] * 8)]
    finally:
        ex_one.shutdown()
    assert max(counted) > 1
    # Different content is a different function, never the cached one.
    step = 10

    def count_by_step():
        return step

    assert wrenpack.remote(count_by_step, executor=ex).remote().result(timeout=60) == 10
    step = 20
    assert wrenpack.remote(count_by_step, executor=ex).remote().result(timeout=60) == 20


def _resident_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def test_a_warm_worker_does_not_keep_an_earlier_functions_large_data(ex):
    """Measured before: after a function closing over 200 MB ran, the next
    (unrelated) call in that warm worker ran beside it, 222 MB resident, and
    reported a 222 MB peak; the cache keeps a large function only while it is
    the one in use."""
    before = wrenpack.remote(_resident_mb, executor=ex).remote().result(timeout=60)
    table = os.urandom(96 << 20)

    def uses_table(i):
        return len(table) + i

    big = wrenpack.remote(uses_table, executor=ex)
    assert big.remote(1).result(timeout=60) == len(table) + 1
    again = big.remote(2)  # still the last function used: kept, not loaded again
    assert again.result(timeout=60) == len(table) + 2 and again.status["peak_rss_mb"] >= 96
    fut = wrenpack.remote(_resident_mb, executor=ex).remote()
    after = fut.result(timeout=60)
    assert after < before + 48, f"the worker still holds the earlier function's data ({before} -> {after} MB)"
    assert fut.status["peak_rss_mb"] < before + 48


def test_a_map_stores_its_function_once_and_removes_it(ex):
    futs = wrenpack.remote(plus_one, executor=ex).map(range(2000))
    job = futs[0].job_id
    assert wrenpack.get(futs) == [i + 1 for i in range(2000)]
    assert not os.path.exists(os.path.join(ex.store.root, keys.job_prefix(job)))


def big(n):
    return b"x" * n


def test_a_large_result_of_a_small_call_is_stored_then_removed(ex):
    # Nothing stored at launch; the worker writes the 3 MB result to the store
    # (with the job's owner record first), and the job's objects go when it ends.
    fut = wrenpack.remote(big, executor=ex).remote(3 * 1024 * 1024)
    assert fut.result(timeout=60) == b"x" * (3 * 1024 * 1024)
    assert _objects(ex.store.root) == []


def _event(store, secret, fn_bytes, digest=None, inline=True, **extra):
    d = Event(job_id="j1", call_id="00000", store=store.spec, secret=secret,
                       args=inline_args(cloudpickle.dumps(((), {})))).to_dict()
    d["func_hash"] = digest or hashlib.sha256(fn_bytes).hexdigest()
    if inline:
        d["func_inline"] = base64.b64encode(fn_bytes).decode()
    d.update(extra)
    return d


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _outcome(store, secret, status):
    blob = status.get("result")
    if blob is None:
        blob = store.get(keys.result_key("j1", "00000"))
    elif isinstance(blob, str):  # Lambda's JSON reply (base64)
        blob = base64.b64decode(blob)
    return open_result(secret, "j1", "00000", blob, "result")[1]


def test_a_function_not_matching_its_hash_is_refused_unpickled(tmp_path):
    store = LocalStore(tmp_path / "s")
    secret = auth.new_secret()
    marker = str(tmp_path / "pwned")
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    evil = pickle.dumps(_Evil(marker))
    good = cloudpickle.dumps(lambda: 1)
    # inline bytes that are not what the hash names
    status = handler(_event(store, secret, evil, digest=hashlib.sha256(good).hexdigest()), ctx)
    outcome = _outcome(store, secret, status)
    err = outcome.rebuild("t")
    assert not outcome.ok and isinstance(err, wrenpack.CorruptObject) and "func_hash" in str(err)
    # a sealed func.pkl (a map's) whose content is not what the event's hash names
    store.put(keys.func_key("j1"), auth.seal(secret, keys.identity("j1", "func"), evil))
    store.delete_prefix(keys.result_prefix("j1"))
    status = handler(_event(store, secret, good, inline=False), ctx)
    outcome = _outcome(store, secret, status)
    assert not outcome.ok and isinstance(outcome.rebuild("t"), wrenpack.CorruptObject)
    assert not os.path.exists(marker), "bytes that failed the hash check were unpickled"


def test_the_worker_writes_the_owner_record_before_the_first_object(tmp_path):
    store = LocalStore(tmp_path / "s")
    secret = auth.new_secret()
    owner = {"host": "h", "pid": 1, "start": "1", "created": 0.0, "label": "x"}
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    # no reply_limit: the result goes to the store, so the owner record must be there too
    status = handler(_event(store, secret, cloudpickle.dumps(lambda: 7), owner=owner), ctx)
    assert "result" not in status  # it went to the store
    assert json.loads(store.get(keys.owner_key("j1"))) == owner
    assert _outcome(store, secret, status).value == 7
    # with the result in the reply nothing is written, not even the owner record
    store.delete_prefix(keys.job_prefix("j1"))
    status = handler(_event(store, secret, cloudpickle.dumps(lambda: 8), owner=owner, reply_limit=1 << 20), ctx)
    assert "stored" not in status and _objects(store.root) == []
    assert _outcome(store, secret, status).value == 8


def test_bad_function_fields_are_protocol_errors(tmp_path):
    store = LocalStore(tmp_path / "s")
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    fn = cloudpickle.dumps(lambda: 1)
    for event, message in (
        (_event(store, b"s" * 32, fn, digest="not-a-digest"), "func_hash is not a sha256"),
        ({k: v for k, v in _event(store, b"s" * 32, fn).items() if k != "func_hash"}, "without its func_hash"),
    ):
        with pytest.raises(wrenpack.errors.ProtocolError, match=message):
            handler(event, ctx)


def stubborn(seconds):
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the soft deadline cannot reach it
    time.sleep(seconds)
    return seconds


def hog(mb):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@pytest.mark.parametrize("use_cgroups", [None, False], ids=["cgroups-if-possible", "sampled"])
def test_calls_handed_to_an_idle_worker_directly_keep_their_limits(tmp_path, use_cgroups):
    backend = LocalBackend(concurrency=1, use_cgroups=use_cgroups)
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend, retries=0) as ex:
        assert ex.submit(plus_one, 1).result(timeout=60) == 2  # warm: later calls go straight to the idle worker
        sent = backend.messages_sent
        t0 = time.monotonic()
        fut = wrenpack.remote(stubborn, executor=ex, timeout=1).remote(30)
        with pytest.raises(wrenpack.TaskTimeout):
            fut.result(timeout=60)
        assert time.monotonic() - t0 < 10, "the hard deadline of a directly sent call was not watched"
        assert ex.submit(plus_one, 2).result(timeout=60) == 3
        with pytest.raises(wrenpack.MemoryLimitExceeded, match="256 MB"):
            wrenpack.remote(hog, executor=ex, memory=256).remote(600).result(timeout=60)
        assert wrenpack.remote(hog, executor=ex, memory=256).remote(10).result(timeout=60) == 10 * 1024 * 1024
        assert backend.messages_sent > sent
