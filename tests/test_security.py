"""Nothing read from the store runs or returns unless wrenpack wrote it for that call.

The attacker here has write access to the store and nothing else: they plant,
overwrite, swap and copy objects. The client's reads of the store are
intercepted to play the attacker's move at the worst moment; the workers (other
processes) read the real files, where the tests also plant objects directly.
"""
from __future__ import annotations

import os
import pickle
import struct
import threading
import time

import cloudpickle
import pytest

import wrenpack
from wrenpack import auth, keys
from wrenpack.errors import CorruptObject, ProtocolError, StoreError
from wrenpack.storage.local import LocalStore
from wrenpack.wire import result
from wrenpack.wire.event import Event, inline_args
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import handler


class _Evil:
    """Unpickling this creates the marker file: proof that planted code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned'); VALUE = 666",))


def _evil_pickle(marker: str, wrap: str = "plain") -> bytes:
    payload = pickle.dumps(_Evil(marker))
    if wrap == "result":  # shaped like a result object, status and all
        head = b'{"exit":"ok"}'
        return result.MAGIC + struct.pack(">I", len(head)) + head + pickle.dumps(("ok", _Evil(marker)))
    if wrap == "sealed-looking":  # with a made-up MAC trailer
        return payload + auth.MAGIC + b"\0" * auth.TAG_BYTES
    return payload


def plus_one(x):
    return x + 1


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=2, retries=0, keep_objects=True)


@pytest.fixture
def ex_store_results(tmp_path):
    """An executor whose results always travel through the store (none in the reply)."""
    from wrenpack.backends.local import LocalBackend

    e = wrenpack.Executor(storage=str(tmp_path / "store"), retries=0, keep_objects=True,
                          backend=LocalBackend(concurrency=2, reply_limit=0))
    yield e
    e.shutdown()


def _plant_after_put(monkeypatch, store, plant):
    """Run ``plant(key, store)`` right after the client writes each object: the
    attacker overwrites objects (or squats keys) before any worker reads them."""
    original = type(store).put

    def put(self, key, data, *, if_absent=False):
        out = original(self, key, data, if_absent=if_absent)
        if self is store:
            plant(key)
        return out

    monkeypatch.setattr(type(store), "put", put)


@pytest.mark.parametrize("target", ["func", "input", "result"])
@pytest.mark.parametrize("wrap", ["plain", "result", "sealed-looking"])
# The default run plants each kind of pickle once and in each object once (plain-func, result-input,
# sealed-looking-result): every reader and every check its object fails; -m slow runs the other six pairs.
@pytest.mark.slow_variants("plain-input", "plain-result", "result-func", "result-result", "sealed-looking-func",
                           "sealed-looking-input")
def test_planted_pickles_never_run_and_fail_the_call(ex, tmp_path, monkeypatch, target, wrap, request):
    if target == "result":
        # A result in the reply never reads the store: squat the store's result key on that path.
        ex = request.getfixturevalue("ex_store_results")
    marker = str(tmp_path / f"pwned-{target}-{wrap}")
    ex.config = ex.config.replace(inline_limit=0)  # every argument goes through the store

    def plant(key):
        if key.endswith("func.pkl"):
            job = key.split("/")[1]
            victims = {
                "func": [keys.func_key(job)],
                "input": [keys.input_key(job, keys.call_id(i)) for i in range(2)],
                "result": [keys.result_key(job, keys.call_id(i)) for i in range(2)],
            }[target]
            for victim in victims:
                path = os.path.join(ex.store.root, victim)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if target == "input":
                    return  # inputs are written after func.pkl: planted in the input branch below
                with open(path, "wb") as f:
                    f.write(_evil_pickle(marker, wrap))
        elif target == "input" and "/input/" in key:
            with open(os.path.join(ex.store.root, key), "wb") as f:
                f.write(_evil_pickle(marker, wrap))

    _plant_after_put(monkeypatch, ex.store, plant)
    futs = wrenpack.remote(plus_one, executor=ex).map([1, 2])
    for fut in futs:
        with pytest.raises(CorruptObject, match="failed authentication.*nothing was unpickled"):
            fut.result(timeout=60)
    assert not os.path.exists(marker), "planted code ran"


def test_planted_checkpoint_never_runs(ex, tmp_path, monkeypatch):
    marker = str(tmp_path / "pwned-checkpoint")

    def resumable(n):
        ckpt = wrenpack.checkpoint()
        state = ckpt.restore(default={"i": 0})
        return state["i"] + n

    def plant(key):
        if key.endswith("owner.json"):  # the first object of the job (keep_objects records its owner at launch)
            job = key.split("/")[1]
            path = os.path.join(ex.store.root, keys.checkpoint_key(job, keys.call_id(0)))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"WRCK2" + struct.pack(">I", 0) + pickle.dumps(_Evil(marker)))

    _plant_after_put(monkeypatch, ex.store, plant)
    fut = wrenpack.remote(resumable, executor=ex).remote(1)
    with pytest.raises(CorruptObject, match="checkpoint/00000.pkl failed authentication.*nothing was unpickled"):
        fut.result(timeout=60)
    assert not os.path.exists(marker)


def _intercept_result_reads(monkeypatch, store, swap):
    """The client reads ``swap(key, real_bytes)`` instead of the object at a result key."""
    original = type(store).get

    def get(self, key):
        data = original(self, key)
        return swap(key, data) if self is store and "/result/" in key else data

    monkeypatch.setattr(type(store), "get", get)


def test_results_swapped_between_two_calls_are_rejected(ex_store_results, monkeypatch):
    ex = ex_store_results
    def swap(key, data):
        job = key.split("/")[1]
        first, second = keys.result_key(job, "00000"), keys.result_key(job, "00001")
        other = second if key == first else first
        path = os.path.join(ex.store.root, other)
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        with open(path, "rb") as f:
            return f.read()

    _intercept_result_reads(monkeypatch, ex.store, swap)
    futs = wrenpack.remote(plus_one, executor=ex).map([1, 2])
    for fut in futs:
        with pytest.raises(CorruptObject, match="failed authentication"):
            fut.result(timeout=60)


def test_result_copied_from_another_job_is_rejected(ex_store_results, monkeypatch):
    ex = ex_store_results
    first = wrenpack.remote(plus_one, executor=ex).map([1])[0]
    assert first.result(timeout=60) == 2
    stolen = ex.store.get(keys.result_key(first.job_id, first.call_id))
    _intercept_result_reads(monkeypatch, ex.store, lambda key, data: stolen)
    second = wrenpack.remote(plus_one, executor=ex).map([1])[0]
    with pytest.raises(CorruptObject, match="failed authentication"):
        second.result(timeout=60)


def _sealed_result(tmp_path, value, secret=b"s" * 32, job="j1", call="00000"):
    """A real result object, written by the real handler."""
    store = LocalStore(tmp_path / "flip-store")
    store.put(keys.func_key(job), auth.seal(secret, keys.identity(job, "func"), cloudpickle.dumps(lambda: value)))
    event = Event(job_id=job, call_id=call, store=store.spec, secret=secret,
                           args=inline_args(cloudpickle.dumps(((), {})))).to_dict()
    assert handler(event, LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30))["exit"] == "ok"
    return store.get(keys.result_key(job, call))


def test_every_single_bit_flip_of_a_result_object_is_detected(tmp_path):
    secret = b"s" * 32
    blob = _sealed_result(tmp_path, 7, secret)
    assert result.open_result(secret, "j1", "00000", blob, "r")[1].value == 7
    undetected = []
    for i in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            result.open_result(secret, "j1", "00000", bytes(flipped), "r")
            undetected.append(i)
        except CorruptObject:
            pass
    assert len(blob) * 8 > 1000 and undetected == []


def test_truncated_and_extended_result_objects_are_detected(tmp_path):
    secret = b"s" * 32
    blob = _sealed_result(tmp_path, 7, secret)
    for bad in (b"", blob[:10], blob[:-1], blob + b"\0", blob[1:], b"x" + blob):
        with pytest.raises(CorruptObject):
            result.open_result(secret, "j1", "00000", bad, "r")
    with pytest.raises(CorruptObject):
        result.open_result(b"t" * 32, "j1", "00000", blob, "r")  # another job's secret


def test_identity_binds_job_call_kind_and_segment():
    secret = auth.new_secret()
    sealed = auth.seal(secret, keys.identity("j", "checkpoint", "00001", 2), b"data")
    assert auth.unseal(secret, keys.identity("j", "checkpoint", "00001", 2), sealed, "k") == b"data"
    for other in (keys.identity("j2", "checkpoint", "00001", 2), keys.identity("j", "result", "00001", 2),
                  keys.identity("j", "checkpoint", "00002", 2), keys.identity("j", "checkpoint", "00001", 3)):
        with pytest.raises(CorruptObject, match="k failed authentication.*nothing was unpickled"):
            auth.unseal(secret, other, sealed, "k")
    assert "\n" not in str(pytest.raises(CorruptObject, auth.unseal, secret, "x", b"junk", "k").value)


def test_the_secret_never_touches_the_store(ex, tmp_path):
    seen = []
    original = ex.backend.invoke_many
    ex.backend.invoke_many = lambda invs: (seen.extend(invs), original(invs))[1]
    ex.config = ex.config.replace(inline_limit=0)
    futs = wrenpack.remote(plus_one, executor=ex).map([1, 2])
    assert [f.result(timeout=60) for f in futs] == [2, 3]
    secret = auth.decode_secret(seen[0].event["secret"])
    for dirpath, _dirs, files in os.walk(ex.store.root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            assert secret not in data and seen[0].event["secret"].encode() not in data


# -- a private local store ------------------------------------------------------------
def test_store_directory_created_private_and_objects_0600(tmp_path):
    root = tmp_path / "wrenpack-0" / "store"
    store = LocalStore(root)
    store.put("jobs/j/result/00000.res", b"x")
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert os.stat(root / "jobs" / "j" / "result").st_mode & 0o777 == 0o700
    assert os.stat(root / "jobs" / "j" / "result" / "00000.res").st_mode & 0o777 == 0o600


def test_store_directory_precreated_by_another_user_is_refused(tmp_path):
    # As /dev/shm/wrenpack-<uid>/store would be if another local user made it first.
    for victim in ("leaf", "parent"):
        base = tmp_path / victim / "wrenpack-0"
        (base / "store").mkdir(parents=True)
        os.chown(base / "store" if victim == "leaf" else base, 12345, 12345)
        with pytest.raises(StoreError, match="owned by uid 12345") as info:
            LocalStore(base / "store")
        assert "\n" not in str(info.value) and "storage=" in str(info.value)
    with pytest.raises(StoreError, match="owned by uid 12345"):
        wrenpack.Executor(storage=str(tmp_path / "leaf" / "wrenpack-0" / "store"))


def test_group_or_world_writable_store_directory_is_refused(tmp_path):
    for mode, who in ((0o770, "its group"), (0o707, "others")):
        root = tmp_path / f"m{mode:o}"
        root.mkdir()
        os.chmod(root, mode)
        with pytest.raises(StoreError, match=f"writable by {who}.*chmod 700"):
            LocalStore(root)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # no sticky bit: anyone could rename the store away
    with pytest.raises(StoreError, match="others can write to"):
        LocalStore(open_dir / "store")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp and /dev/shm
    assert LocalStore(sticky / "store").root == str(sticky / "store")


def test_a_symlinked_store_root_is_refused_in_one_line(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "store")
    with pytest.raises(StoreError, match=f"{tmp_path / 'store'} is a symbolic link.*storage={real}") as info:
        LocalStore(tmp_path / "store")
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="symbolic link"):
        wrenpack.Executor(storage=str(tmp_path / "store"))


def _swap_for_a_link(root, target):
    """What the attacker does mid-run: the store's path now leads to ``target``."""
    os.rename(root, f"{root}.moved")
    os.symlink(target, root)


def test_a_store_swapped_for_a_link_keeps_its_reads_and_writes_where_they_were(tmp_path):
    root, other = tmp_path / "wrenpack-0" / "store", tmp_path / "another-user" / "store"
    other.mkdir(parents=True)
    (other / "jobs" / "j1").mkdir(parents=True)
    (other / "jobs" / "j1" / "func.pkl").write_bytes(b"theirs")
    store = LocalStore(root)
    store.put("jobs/j1/func.pkl", b"ours")
    _swap_for_a_link(root, other)
    assert store.get("jobs/j1/func.pkl") == b"ours" and store.get_range("jobs/j1/func.pkl", 1, 3) == b"ur"
    store.put("jobs/j2/result/00000.res", b"new")
    assert store.list("jobs/") == ["jobs/j1/func.pkl", "jobs/j2/result/00000.res"] and store.size("jobs/j1/func.pkl") == 4
    assert store.delete_prefix("jobs/j2/") == 1 and store.exists("jobs/j1/func.pkl")
    assert sorted(os.listdir(other / "jobs")) == ["j1"] and (other / "jobs" / "j1" / "func.pkl").read_bytes() == b"theirs"
    # A directory inside the store swapped for a link is not followed either: refused.
    os.rename(f"{root}.moved/jobs/j1", f"{root}.moved/jobs/j1.moved")
    os.symlink(other / "jobs" / "j1", f"{root}.moved/jobs/j1")
    with pytest.raises(StoreError, match="jobs/j1/func.pkl'? (not found|cannot read)"):  # (the link is no directory)
        store.get("jobs/j1/func.pkl")
    with pytest.raises(StoreError, match="cannot write jobs/j1/x"):
        store.put("jobs/j1/x", b"x")
    assert store.list("jobs/j1/") == [] and not store.exists("jobs/j1/func.pkl")
    store.delete_prefix("jobs/j1/")
    assert os.listdir(other / "jobs" / "j1") == ["func.pkl"]
    # An object swapped for a link is not read through it.
    os.symlink(other / "jobs" / "j1" / "func.pkl", f"{root}.moved/jobs/planted")
    with pytest.raises(StoreError, match="cannot read jobs/planted"):
        store.get("jobs/planted")
    with pytest.raises(StoreError, match="symbolic link"):
        LocalStore(root)


def test_a_store_swapped_for_a_link_mid_run_moves_no_call(tmp_path):
    """The default store's path swapped for a link into another user's directory
    while a job runs: the client and its warm worker go on in the store they opened."""
    root, other = tmp_path / "wrenpack-0" / "store", tmp_path / "another-user" / "store"
    other.mkdir(parents=True)
    os.chown(other, 12345, 12345)
    # inline_limit=0: the function and every argument go through the store
    ex = wrenpack.Executor(storage=str(root), concurrency=1, retries=0, keep_objects=True, inline_limit=0)
    try:
        f = wrenpack.remote(plus_one, executor=ex)
        assert f.remote(0).result(timeout=60) == 1  # the worker is warm, its store open
        _swap_for_a_link(root, other)
        futs = f.map(range(30))
        assert wrenpack.get(futs, timeout=120) == list(range(1, 31))
    finally:
        ex.shutdown()
    assert os.listdir(other) == []
    assert LocalStore(f"{root}.moved").list(keys.job_prefix(futs[0].job_id))


# -- the handler validates the event --------------------------------------------------
def _good_event(local_store, secret=b"s" * 32, **changes):
    d = Event(job_id="j1", call_id="00000", store=local_store.spec, secret=secret,
                       args=inline_args(cloudpickle.dumps(((), {})))).to_dict()
    d.update(changes)
    return d


def test_malformed_events_fail_as_wrenpack_errors(tmp_path):
    store = LocalStore(tmp_path / "s")
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    bad_events = [
        ("not a dict", "not a wrenpack event"),
        (_good_event(store, wrenpack=1), "protocol version 1"),
        ({k: v for k, v in _good_event(store).items() if k != "secret"}, "lacks the field 'secret'"),
        (dict(_good_event(store), secret="!!"), "secret is invalid"),
        (_good_event(store, attempt="0"), "'attempt' must be int"),
        (_good_event(store, job_id="../../etc"), "not a wrenpack id"),
        (_good_event(store, call_id="a/b"), "not a wrenpack id"),
        (_good_event(store, func_key="jobs/other/func.pkl"), "not its job's"),
        (_good_event(store, args={"key": "jobs/other/input/00000.pkl"}), "must be inline base64 or the key"),
        (_good_event(store, bogus=1), "unknown field"),
        (_good_event(store, store={"type": "ftp"}), "store type"),
        (_good_event(store, store={"type": "local", "root": "relative/dir"}), "not an absolute path"),
    ]
    for event, message in bad_events:
        with pytest.raises(ProtocolError, match=message) as info:
            handler(event, ctx)
        assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "s" / "jobs")  # nothing ran, nothing was written


def test_on_lambda_the_event_cannot_redirect_the_store(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "s")
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "wrenpack-worker")
    monkeypatch.delenv("WRENPACK_LOCAL_WORKER", raising=False)
    with pytest.raises(ProtocolError, match="deployed without WRENPACK_STORE_URL"):
        handler(_good_event(store), ctx)
    monkeypatch.setenv("WRENPACK_STORE_URL", "s3://bucket/wrenpack")
    s3 = {"type": "s3", "bucket": "bucket", "prefix": "wrenpack"}
    for spec in ({"type": "s3", "bucket": "other", "prefix": "wrenpack"}, {"type": "s3", "bucket": "bucket", "prefix": "wrenpackx"},
                 {"type": "s3", "bucket": "bucket", "prefix": ""}, store.spec):
        with pytest.raises(ProtocolError, match="outside this worker's s3://bucket/wrenpack"):
            handler(_good_event(store, store=spec), ctx)
    from wrenpack.worker.handler import _check_store

    _check_store(s3)
    _check_store(dict(s3, prefix="wrenpack/tests"))


def test_a_refused_store_is_named_as_the_event_names_it(tmp_path, monkeypatch):
    """A local store refused by a worker that serves an S3 location read "s3://None/"."""
    from wrenpack.worker.handler import _check_store

    monkeypatch.setenv("WRENPACK_STORE_URL", "s3://bucket/wrenpack")
    for spec, named in (({"type": "local", "root": str(tmp_path / "s")}, f"{str(tmp_path / 's')!r} (a local folder)"),
                        ({"type": "s3", "bucket": "other", "prefix": "p"}, "s3://other/p"),
                        ({"type": "gcs", "bucket": "b"}, "of type 'gcs'")):
        with pytest.raises(ProtocolError) as info:
            _check_store(spec)
        assert str(info.value).startswith(f"the event names the store {named}, outside this worker's s3://bucket/wrenpack")
        assert "None" not in str(info.value)


# -- results in the reply (contract 2) ---------------------------------------------------
def test_handler_replies_with_the_sealed_result_when_it_fits(tmp_path, monkeypatch):
    secret = b"r" * 32  # (the worker caches functions per job and secret)
    store = LocalStore(tmp_path / "s")
    store.put(keys.func_key("j1"), auth.seal(secret, keys.identity("j1", "func"), cloudpickle.dumps(lambda: "v" * 100)))
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    for local, limit, in_reply in (("1", 10_000, True), ("", 10_000, True), ("1", 50, False)):
        monkeypatch.setenv("WRENPACK_LOCAL_WORKER", local)
        call = keys.call_id(limit + len(local))
        event = _good_event(store, secret, call_id=call, reply_limit=limit)
        reply = handler(event, ctx)
        data = result.reply_result(reply)
        if not in_reply:
            assert data is None and reply["first"] is True
            data = store.get(keys.result_key("j1", call))
        else:
            assert not store.exists(keys.result_key("j1", call))  # not written to the store
        assert result.open_result(secret, "j1", call, data, "r")[1].value == "v" * 100


def test_executor_uses_the_result_from_the_reply(ex, monkeypatch):
    opts = ex.options()
    opts.extra = {"event": {"reply_limit": 1 << 20}}
    futs = ex.launch(plus_one, [((1,), {}), ((2,), {})], opts)
    assert [f.result(timeout=60) for f in futs] == [2, 3]
    assert ex.store.list(keys.result_prefix(futs[0].job_id)) == []
    # A reply altered on the way is refused like a store object.
    original = ex._read_outcome
    monkeypatch.setattr(ex, "_read_outcome", lambda job, cid, label, data=None:
                        original(job, cid, label, data[:-1] + bytes([data[-1] ^ 1]) if data else data))
    fut = ex.launch(plus_one, [((1,), {})], opts)[0]
    with pytest.raises(CorruptObject, match="failed authentication"):
        fut.result(timeout=60)


def test_a_second_delivery_keeps_the_first_result_and_flags_a_squatter(tmp_path, caplog):
    secret = b"d" * 32
    store = LocalStore(tmp_path / "s")
    store.put(keys.func_key("j1"), auth.seal(secret, keys.identity("j1", "func"), cloudpickle.dumps(lambda: 1)))
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    assert handler(_good_event(store, secret), ctx)["first"] is True
    first = store.get(keys.result_key("j1", "00000"))
    with caplog.at_level("WARNING"):
        assert handler(_good_event(store, secret, attempt=1), ctx)["first"] is False
    assert store.get(keys.result_key("j1", "00000")) == first and "did not write" not in caplog.text
    store.put(keys.result_key("j1", "00001"), b"planted")
    with caplog.at_level("WARNING"):
        assert handler(_good_event(store, secret, call_id="00001"), ctx)["first"] is False
    assert "did not write for this call" in caplog.text
    assert store.get(keys.result_key("j1", "00001")) == b"planted"  # left for the client to refuse


# -- least privilege on AWS: the generated policies, simulated --------------------------
def _policy(role, **kw):
    import types

    from wrenpack.backends.aws.iam import iam_policy

    cfg = types.SimpleNamespace(storage="s3://bkt/wp", aws_region="us-east-1", function_name="wrenpack-worker")
    return iam_policy(cfg, role, "123456789012", **kw)


def _allowed(policy, action, resource, context=None):
    """IAM's evaluation for Allow-only identity policies: some statement matches
    the action, the resource and all its conditions (Null, StringLike, StringEquals)."""
    import fnmatch

    context = context or {}
    as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        if not any(fnmatch.fnmatchcase(action, a) for a in as_list(st["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in as_list(st["Resource"])):
            continue
        ok = True
        for op, conds in st.get("Condition", {}).items():
            for key, want in conds.items():
                if op == "Null":
                    ok &= (key not in context) == (str(want).lower() == "true")
                elif op == "StringLike":
                    ok &= key in context and any(fnmatch.fnmatchcase(context[key], w) for w in as_list(want))
                elif op == "StringEquals":
                    ok &= context.get(key) in as_list(want)
                else:
                    raise AssertionError(f"unsimulated condition {op}")
        if ok:
            return True
    return False


def test_worker_policy_cannot_rewrite_results_or_touch_what_the_client_wrote():
    policy = _policy("worker")
    obj = lambda key: f"arn:aws:s3:::bkt/wp/{key}"  # noqa: E731
    create = {"s3:if-none-match": "*"}
    mine, other = "20260101-000000-aaaaaaaa", "20260101-000000-bbbbbbbb"
    allowed = [
        ("s3:GetObject", keys.func_key(mine), None),
        ("s3:GetObject", keys.input_key(mine, "00003"), None),
        ("s3:GetObject", "runtimes/runtime-abc.tar.gz", None),
        ("s3:PutObject", keys.result_key(mine, "00003"), create),
        ("s3:PutObject", keys.segment_key(mine, "00003", 2), create),
        ("s3:PutObject", keys.checkpoint_key(mine, "00003"), None),
        ("s3:DeleteObject", keys.checkpoint_key(mine, "00003"), None),
        ("s3:AbortMultipartUpload", keys.checkpoint_key(mine, "00003"), None),
    ]
    for action, key, ctx in allowed:
        assert _allowed(policy, action, obj(key), ctx), (action, key)
    denied = [
        # Another job's results: no overwrite, no delete (creating a missing one is refused by S3: it exists).
        ("s3:PutObject", keys.result_key(other, "00000"), None),
        ("s3:DeleteObject", keys.result_key(other, "00000"), None),
        ("s3:PutObject", keys.segment_key(other, "00000", 0), None),
        # Its own, once written: the first complete result stays.
        ("s3:PutObject", keys.result_key(mine, "00003"), None),
        ("s3:DeleteObject", keys.result_key(mine, "00003"), None),
        # What only the client writes, and the deployed runtimes.
        ("s3:PutObject", keys.func_key(other), None),
        ("s3:PutObject", keys.input_key(other, "00000"), create),
        ("s3:DeleteObject", keys.func_key(mine), None),
        ("s3:PutObject", "runtimes/runtime-abc.tar.gz", None),
        ("s3:DeleteObject", "runtimes/runtime-abc.tar.gz", None),
    ]
    for action, key, ctx in denied:
        assert not _allowed(policy, action, obj(key), ctx), (action, key)
    # Outside the prefix and the bucket, and everything that is not S3 or its logs.
    assert not _allowed(policy, "s3:PutObject", f"arn:aws:s3:::bkt/other/{keys.result_key(mine, '00000')}", create)
    assert not _allowed(policy, "s3:GetObject", f"arn:aws:s3:::other-bucket/wp/{keys.func_key(mine)}")
    assert not _allowed(policy, "s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": "wp/jobs/"})
    for action in ("iam:PassRole", "lambda:InvokeFunction", "lambda:UpdateFunctionCode", "s3:PutBucketPolicy"):
        assert not _allowed(policy, action, "arn:aws:iam::123456789012:role/wrenpack-worker")


def test_client_and_deploy_policies_pass_only_the_worker_role():
    client = _policy("client")
    deploy = _policy("deploy", worker_role="wp-worker-role")
    role = "arn:aws:iam::123456789012:role/wp-worker-role"
    assert _allowed(deploy, "iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not _allowed(deploy, "iam:PassRole", "arn:aws:iam::123456789012:role/admin", {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not _allowed(deploy, "iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not _allowed(client, "iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert _allowed(deploy, "s3:PutObject", "arn:aws:s3:::bkt/wp/runtimes/runtime-x.tar.gz")
    assert not _allowed(client, "s3:PutObject", "arn:aws:s3:::bkt/wp/runtimes/runtime-x.tar.gz")
    assert _allowed(client, "s3:PutObject", f"arn:aws:s3:::bkt/wp/{keys.func_key('j')}")
    assert _allowed(client, "s3:AbortMultipartUpload", f"arn:aws:s3:::bkt/wp/{keys.input_key('j', '00000')}")
    assert _allowed(client, "s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": "wp/jobs/j/result/0/"})
    assert not _allowed(client, "s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": "secrets/"})
    # Only the two account-level reads, which take no resource ARN, have "*".
    account_level = {"lambda:GetAccountSettings", "lambda:ListFunctions"}
    for policy in (client, deploy, _policy("worker")):
        scoped = [st for st in policy["Statement"] if not set(st["Action"]) <= account_level]
        resources = [r for st in scoped for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])]
        assert "*" not in resources and not any(r.endswith(":role/*") for r in resources)
        assert all(st["Resource"] == "*" for st in policy["Statement"] if set(st["Action"]) <= account_level)


def test_job_secrets_and_credentials_are_redacted_from_log_text():
    from wrenpack.redact import redact

    body = "Making request ... 'body': b'{\"wrenpack\":2,\"secret\":\"c2VjcmV0c2VjcmV0\",\"job_id\":\"j\"}'"
    assert "c2VjcmV0c2VjcmV0" not in redact(body) and '"job_id":"j"' in redact(body)
    header = "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/s3/aws4_request, Signature=" + "ab" * 32
    assert "AKIAIOSFODNN7EXAMPLE" not in redact(header) and "ab" * 32 not in redact(header)
    assert "tok123" not in redact("'X-Amz-Security-Token': b'tok123'")


def test_env_values_and_other_jobs_secrets_are_redacted_from_botocore_debug_logs():
    """An Invoke payload carries the call's ``env=`` values and the secrets of the jobs whose
    futures it was given; botocore logs it whole at DEBUG. Before, only the job's own secret
    was cut: an API token passed with ``env=`` was in ``-vv`` output. The names stay (they say
    what was set), the values go, whatever quotes or braces they hold."""
    import io
    import json
    import logging

    import boto3
    import botocore.config
    import botocore.exceptions

    from wrenpack import redact

    values = ["hun}ter'2-TOKEN", 'pa"55{w0rd', "plain-value-123", "cmVmLWpvYi1zZWNyZXQ="]
    event = {"wrenpack": 2, "job_id": "j1", "secret": "c2VjcmV0LWpvYi1rZXk=", "args": {"inline": "eA=="},
             "env": {"API_TOKEN": values[0], "DB_PASSWORD": values[1], "PLAIN": values[2]},
             "ref_secrets": {"other-job": values[3]}}
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("botocore")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    redact.install()
    try:
        client = boto3.client("lambda", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                              aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x" * 40,
                              config=botocore.config.Config(retries={"max_attempts": 0}, connect_timeout=0.5))
        with pytest.raises(botocore.exceptions.EndpointConnectionError):  # (nothing listens: logged, then fails)
            client.invoke(FunctionName="wrenpack-worker", Payload=json.dumps(event).encode())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    logs = buf.getvalue()
    assert "OperationModel(name=Invoke)" in logs and "API_TOKEN" in logs and "other-job" in logs, logs[-2000:]
    for secret in [*values, "2-TOKEN", "55{w0rd", "c2VjcmV0LWpvYi1rZXk"]:  # (quotes are escaped in the log)
        assert secret not in logs, secret
    assert '"job_id": "j1"' in logs  # (the rest of the event is left as it was)
    # The same fields in text that is not a logged request body, escaped or not:
    for text in ('{"env": {"API_TOKEN": "tok-1"}}', '{\\"env\\": {\\"API_TOKEN\\": \\"tok-1\\"}}',
                 "'body': b'{\"ref_secrets\": {\"j\": \"tok-1\"}'"):  # (the last one cut short: not JSON)
        assert "tok-1" not in redact.redact(text), text


def test_the_benchmark_switch_is_off_by_default_and_never_honoured_on_lambda():
    import subprocess
    import sys

    code = "from wrenpack import auth; print(auth._enabled)"
    base = {k: v for k, v in os.environ.items() if k != "_WRENPACK_BENCHMARK_NO_AUTH"}
    runs = [({}, "True"), ({"_WRENPACK_BENCHMARK_NO_AUTH": "1"}, "False"),
            ({"_WRENPACK_BENCHMARK_NO_AUTH": "1", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}, "True")]
    for extra, want in runs:
        out = subprocess.run([sys.executable, "-c", code], env={**base, **extra}, capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert out.stdout.strip() == want, extra
    assert auth._enabled


def test_the_benchmark_switch_says_once_that_objects_are_not_authenticated():
    """``_WRENPACK_BENCHMARK_NO_AUTH=1`` turned every MAC off in silence: an ``export`` left in a
    shell made a flipped bit a wrong result instead of CorruptObject (probe 7). The first time it
    takes effect in a process, one WARNING says so; never when it is not set, on Lambda, or when
    a benchmark turns sealing off itself (``auth._enabled = False``: it knows)."""
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n"
            "from wrenpack import auth\n"
            "print(auth._warned, flush=True)\n"  # (nothing skipped yet: nothing said)
            "auth._enabled = auth._enabled and sys.argv[1] != 'off'\n"
            "secret = auth.new_secret()\n"
            "for i in range(3):\n"
            "    blob = auth.seal(secret, 'id', b'data')\n"
            "    assert bytes(auth.unseal_view(secret, 'id', blob, 'k')) == b'data'\n"
            "    auth.verify_parts(secret, 'id', b'', [b'data'], 'k') if not auth._enabled else None\n"
            "    list(auth.seal_stream(secret, 'id', [b'data']))\n")
    base = {k: v for k, v in os.environ.items() if k not in ("_WRENPACK_BENCHMARK_NO_AUTH", "AWS_LAMBDA_RUNTIME_API")}
    runs = [({"_WRENPACK_BENCHMARK_NO_AUTH": "1"}, "on", 1), ({}, "on", 0), ({}, "off", 0),
            ({"_WRENPACK_BENCHMARK_NO_AUTH": "1", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}, "on", 0)]
    for extra, mode, warnings in runs:
        out = subprocess.run([sys.executable, "-c", code, mode], env={**base, **extra}, capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert out.stdout.strip() == "False", (extra, out.stdout)
        lines = out.stderr.splitlines()
        assert len(lines) == warnings, (extra, mode, out.stderr)
        if warnings:
            assert lines[0].startswith("WARNING wrenpack.auth: _WRENPACK_BENCHMARK_NO_AUTH=1 is set"), lines
            assert "NOT authenticated" in lines[0] and "for benchmarks only" in lines[0], lines


def test_a_planted_segment_record_never_relaunches_a_call(tmp_path):
    """A poller that sees a "checkpointed" status in the store (the Lambda backend
    peeks at it unverified) must not relaunch the call on a record wrenpack did not write."""
    from wrenpack.backends.base import Backend, InvocationResult

    class Peeking(Backend):
        name = "peeking"

        def __init__(self):
            self.invoked = []

        def invoke(self, inv):
            self.invoked.append(inv)
            job, cid = inv.key
            # The attacker's record, and the status a backend would read from it.
            ex.store.put(keys.segment_key(job, cid, int(inv.event["segment"])), b'{"exit": "checkpointed"}')
            threading.Thread(target=inv.on_done, args=(inv, InvocationResult(status={"exit": "checkpointed"}))).start()

        def shutdown(self, wait=True):
            pass

    backend = Peeking()
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend)
    try:
        fut = wrenpack.remote(plus_one, executor=ex).remote(1)
        with pytest.raises(CorruptObject, match=r"\.0\.seg failed authentication"):
            fut.result(timeout=30)
        assert len(backend.invoked) == 1  # no second segment launched
    finally:
        ex.shutdown()


def test_a_store_checked_before_is_checked_again_when_the_worker_is_pinned(tmp_path, monkeypatch):
    # the worker checks an event's store once per spec; a change of
    # what the check depends on (the pinned store, Lambda) checks it again.
    store = LocalStore(tmp_path / "s")
    ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
    monkeypatch.setenv("WRENPACK_LOCAL_WORKER", "1")
    handler(_good_event(store, call_id="00001"), ctx)  # accepted and kept
    monkeypatch.setenv("WRENPACK_STORE_URL", "s3://bucket/wrenpack")
    with pytest.raises(ProtocolError, match="outside this worker's s3://bucket/wrenpack"):
        handler(_good_event(store, call_id="00002"), ctx)
    monkeypatch.delenv("WRENPACK_STORE_URL")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "wrenpack-worker")
    monkeypatch.delenv("WRENPACK_LOCAL_WORKER")
    with pytest.raises(ProtocolError, match="deployed without WRENPACK_STORE_URL"):
        handler(_good_event(store, call_id="00003"), ctx)


def test_only_a_calls_own_start_mark_within_the_clock_skew_moves_its_deadline():
    """A start mark moves a queued call's deadline (Lambda backend): an unsealed one,
    one sealed for another call or job, and one starting far ahead are refused in one line."""
    from wrenpack.wire import start

    secret, now = b"s" * 32, 1_700_000_000.0
    assert start.open_start(secret, "j1", "00001", start.seal_start(secret, "j1", "00001", now - 5, 0), now) == now - 5
    ahead = now + start.MAX_SKEW_S - 1  # a worker's clock a little ahead of the client's
    assert start.open_start(secret, "j1", "00001", start.seal_start(secret, "j1", "00001", ahead, 0), now) == ahead
    refused = [
        (b'{"start": 1e12, "attempt": 0}', "failed authentication"),
        (start.seal_start(secret, "j1", "00002", now, 0), "failed authentication"),
        (start.seal_start(secret, "j2", "00001", now, 0), "failed authentication"),
        (start.seal_start(b"t" * 32, "j1", "00001", now, 0), "failed authentication"),
        (start.seal_start(secret, "j1", "00001", now + 1e12, 0), "clock skew"),
        (start.seal_start(secret, "j1", "00001", float("nan"), 0), "clock skew"),
    ]
    for blob, why in refused:
        with pytest.raises(CorruptObject, match=why) as info:
            start.open_start(secret, "j1", "00001", blob, now)
        assert "\n" not in str(info.value)


# -- owner records: who may get a job's objects removed ---------------------------------
def _clean(store_dir, *argv, as_json=True):
    import argparse

    from wrenpack.cli.cmd_clean import cmd_clean

    ns = argparse.Namespace(job_ids=[a for a in argv if not a.startswith("--")], all="--all" in argv,
                            stale="--stale" in argv, force="--force" in argv, storage=str(store_dir),
                            region=None, profile=None, s3_endpoint_url=None, json=as_json)
    return cmd_clean(ns)


def test_a_forged_owner_record_does_not_get_a_live_job_removed(tmp_path, monkeypatch, capsys):
    """Anyone who can write to the store can write a job's owner.json: one naming a
    dead pid must not make ``clean --stale`` remove a live job's objects."""
    import json
    import socket
    import subprocess
    import sys

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))  # this test's own owner key
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1, keep_objects=True)
    try:
        fut = wrenpack.remote(plus_one, executor=ex).remote(1)
        assert fut.result(timeout=60) == 2
    finally:
        ex.shutdown()
    job, store = fut.job_id, ex.store
    objects = store.list(keys.job_prefix(job))
    assert keys.owner_key(job) in objects and len(objects) > 1
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    forged = {"host": socket.gethostname(), "pid": dead.pid, "start": "1", "created": time.time(), "label": "x"}
    store.put(keys.owner_key(job), json.dumps(forged).encode())
    assert _clean(tmp_path / "store", "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 0 and out["skipped"] == [job] and "not sealed with your owner key" in out["skipped_why"][job]
    assert store.list(keys.job_prefix(job)) != []

    # A genuine record of another job whose owner is gone, copied over: bound to that job, refused too.
    from wrenpack.executor.owner import user_key
    from wrenpack.wire import owner as owner_wire

    store.put(keys.owner_key(job), owner_wire.dumps(owner_wire.seal(user_key(), "another-job", forged)))
    assert _clean(tmp_path / "store", "--stale", as_json=False) == 0
    said = capsys.readouterr().out
    assert f"kept 1 job(s) whose owner cannot be checked ({job}: its owner record is not sealed" in said
    assert "--stale --force" in said and said.count("\n") == 2
    assert store.list(keys.job_prefix(job)) != []

    # Its own genuine record, owner gone: removed.
    store.put(keys.owner_key(job), owner_wire.dumps(owner_wire.seal(user_key(), job, forged)))
    assert _clean(tmp_path / "store", "--stale") == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == 1 and store.list(keys.job_prefix(job)) == []


def test_the_owner_key_is_private_and_a_shared_one_is_not_trusted(tmp_path, monkeypatch, caplog):
    from wrenpack.executor import owner
    from wrenpack.wire import owner as owner_wire

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(owner, "_key", None)
    assert owner.user_key(create=False) is None  # only a launch makes it
    key = owner.user_key()
    path = owner.key_path()
    assert key is not None and len(key) == owner.KEY_BYTES and os.stat(path).st_mode & 0o777 == 0o600
    record = owner.owner_record("f", "j1")
    assert owner.owner_state("j1", record, key)[0] == "live"
    assert owner.owner_state("j2", record, key)[0] == "unknown"
    assert owner.owner_state("j1", dict(record, pid=1), key)[0] == "unknown"
    assert owner.owner_state("j1", dict(record, mac="0" * 64), key)[0] == "unknown"
    assert owner.owner_state("j1", record, None)[0] == "unknown"
    elsewhere = owner.owner_record("f", "j1") | {"host": "another-host"}
    assert owner.owner_state("j1", owner_wire.seal(key, "j1", elsewhere), key)[1].startswith("it was launched on host")
    os.chmod(path, 0o644)
    monkeypatch.setattr(owner, "_key", None)
    with caplog.at_level("WARNING", logger="wrenpack.executor.owner"):
        assert owner.user_key() is None
    assert "others can read or write it (mode 644" in caplog.text and "owner_record" not in caplog.text
    assert owner.owner_record("f", "j1").get("mac") is None  # written unsealed: `clean --stale` keeps its job


def test_planted_records_nested_too_deep_are_refused_as_corrupt_not_a_recursion_error():
    """Records read from the store before their MAC is checked (a job record, an
    owner record, a result's status): JSON arrays nested past the parser's depth
    are as planted as any other bytes, and are refused the same way, not with a
    RecursionError that escapes the readers' guards."""
    from wrenpack.wire import job_record, owner as owner_wire, status as status_wire

    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CorruptObject, match="not a job record"):
        job_record.open_job(b"k" * 32, "job-1", deep)
    with pytest.raises(ValueError, match="nests too deep"):
        owner_wire.loads(deep)
    with pytest.raises(ValueError, match="nests too deep"):
        status_wire.loads(deep)


def test_a_fifo_squatting_a_result_key_is_reported_as_planted(tmp_path, caplog):
    """The worker finds its call's result key taken and looks at what is there: a
    FIFO (which reads as CorruptObject, never blocking) is an object wrenpack did not
    write, and is logged so, as a planted file is; it was passed over in silence."""
    from wrenpack.worker import handler as worker_handler

    store = LocalStore(str(tmp_path / "store"))
    ev = Event.from_dict(Event(job_id="jobA", call_id="00000", store=store.spec, secret=b"k" * 32,
                               args=inline_args(b"x")).to_dict())
    rkey = keys.result_key("jobA", "00000")
    path = os.path.join(store.root, rkey)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    with caplog.at_level("WARNING", logger="wrenpack.worker.handler"):
        worker_handler._check_existing_result(store, ev, rkey)
    assert "held an object wrenpack did not write" in caplog.text
