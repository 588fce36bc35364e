"""Large arguments and results travel between the driver and a
local worker as sealed memfds over the worker's private socket, not through
the store (``wrenpack.worker.handoff``)."""
from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import signal
import time

import cloudpickle
import pytest

import wrenpack
from open_memfds import memfds as _memfds
from wrenpack import keys
from wrenpack.backends.local import LocalBackend
from wrenpack.errors import CorruptObject, PayloadTooLarge, WorkerCrashed
from wrenpack.storage.local import LocalStore
from wrenpack.wire.event import Event
from wrenpack.wire.result import open_result, reply_result
from wrenpack.worker import handoff
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import handler

pytestmark = [
    pytest.mark.skipif(not handoff.available(), reason="needs Linux memfd_create, file seals and SCM_RIGHTS"),
    # the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
    pytest.mark.executor_settings(concurrency=2, retries=0),
]

MiB = 1024 * 1024


def echo(x):
    return x


def describe(a):
    """What the worker received: type, writability (arrays), a checksum."""
    import hashlib

    import numpy as np

    if isinstance(a, np.ndarray):
        a[...] = a  # writable in the worker (copy-on-write), as an unpickled array is
        return ("ndarray", a.dtype.str, a.shape, bool(a.flags.writeable), hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())
    return (type(a).__name__, len(a))


def describe_pair(i, data, table):
    import hashlib

    table[:1] = table[:1]  # writable, copy-on-write
    return (i, len(data), hashlib.sha1(table.tobytes()).hexdigest(), bool(table.flags.writeable))


def big_result(mb):
    return b"r" * (mb * MiB)


def crash_once(marker, data):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return len(data)


def crash_always_on(x):
    data, die = x
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return len(data)


def read_future(fut):
    return len(fut.result())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _record_job_objects(ex, monkeypatch):
    """The keys each job held in the store just before it was deleted."""
    seen: dict[str, list[str]] = {}
    original = ex._delete_job

    def delete(job_id):
        seen[job_id] = ex.store.list(keys.job_prefix(job_id))
        original(job_id)

    monkeypatch.setattr(ex, "_delete_job", delete)
    return seen


def test_large_bytes_bytearray_and_arrays_round_trip_without_the_store(ex, monkeypatch):
    np = pytest.importorskip("numpy", reason="numpy is in the test extras")
    seen = _record_job_objects(ex, monkeypatch)
    rng = np.random.default_rng(1)
    values = [
        os.urandom(3 * MiB),
        bytearray(os.urandom(2 * MiB)),
        rng.standard_normal((512, 300)),                       # C order, out of band
        np.asfortranarray(rng.standard_normal((300, 512))),    # Fortran order, out of band
        rng.standard_normal((600, 600))[::2, ::3],             # not contiguous: in band
        {"a": np.arange(200_000, dtype=np.int32), "b": [b"x" * 100_000] * 3, "small": np.zeros(3)},
    ]
    f = wrenpack.remote(echo, executor=ex)
    out = wrenpack.get(f.map(values))
    for got, want in zip(out, values):
        assert type(got) is type(want)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
            assert got.flags.writeable and got.flags.f_contiguous == want.flags.f_contiguous
        elif isinstance(want, dict):
            assert np.array_equal(got["a"], want["a"]) and got["b"] == want["b"] and np.array_equal(got["small"], want["small"])
        else:
            assert got == want
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    assert wrenpack.get(wrenpack.remote(describe, executor=ex).map(arrays)) == [
        ("ndarray", a.dtype.str, a.shape, True, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()) for a in arrays]
    # No memfd is left open in the driver; no argument or result went through the store.
    assert _memfds() == []
    # (a job that stored nothing at launch is not even deleted: its small function travelled in its events)
    assert all({k.rsplit("/", 1)[-1] for k in objs} <= {"func.pkl", "owner.json"} for objs in seen.values())
    assert ex.store.list(keys.JOBS) == []


def test_a_small_call_still_travels_inline(ex):
    assert wrenpack.remote(echo, executor=ex).remote(b"x" * 1000).result(timeout=60) == b"x" * 1000


def test_args_are_pickled_into_memfds_not_held_as_bytes(ex, monkeypatch):
    """Each call's arguments are written as they are pickled: no pickle bytes in the driver."""
    sizes = []
    original = handoff.Spill.finish

    def finish(self):
        out = original(self)
        sizes.append(type(out).__name__)
        return out

    monkeypatch.setattr(handoff.Spill, "finish", finish)
    futs = wrenpack.remote(echo, executor=ex).map([os.urandom(MiB) for _ in range(3)])
    assert sizes == ["Sealed"] * 3
    assert [len(f.result(timeout=60)) for f in futs] == [MiB] * 3


def test_a_large_object_every_call_shares_is_pickled_once(ex, monkeypatch):
    np = pytest.importorskip("numpy", reason="numpy is in the test extras")
    spills = []
    original = handoff.Spill.finish

    def finish(self):
        out = original(self)
        spills.append((self.name_, type(out).__name__, out.size if isinstance(out, handoff.Sealed) else len(out)))
        return out

    monkeypatch.setattr(handoff.Spill, "finish", finish)
    blob, table = os.urandom(2 * MiB), np.arange(300_000, dtype=np.float64)
    f = wrenpack.remote(describe_pair, executor=ex)
    futs = f.map(range(6), data=blob, table=table)
    shared = [s for s in spills if s[0] == "wrenpack-shared"]
    assert len(shared) == 2 and all(kind == "Sealed" for _, kind, _ in shared)  # once each, not six times
    assert all(kind == "bytes" and size < 1000 for name, kind, size in spills if name == "wrenpack-args")
    want = hashlib.sha1(table.tobytes()).hexdigest()
    assert [fut.result(timeout=60) for fut in futs] == [(i, 2 * MiB, want, True) for i in range(6)]
    assert _memfds() == []


def _worker_usage_mb(backend: LocalBackend) -> float:
    (worker,) = backend._workers
    with open(os.path.join(worker.cgroup.path, "memory.usage_in_bytes")) as f:
        return int(f.read()) / MiB


def test_a_handed_off_result_stops_counting_against_its_worker(tmp_path):
    backend = LocalBackend(concurrency=1)
    if backend._cgroups is None:
        backend.shutdown()
        pytest.skip("memory cgroups (v1, root) are unavailable here: the worker's usage cannot be read")
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend, retries=0)
    try:
        f = wrenpack.remote(big_result, executor=ex, memory=1024)
        assert len(f.remote(1).result(timeout=60)) == MiB  # warm
        before = _worker_usage_mb(backend)
        result = f.remote(200).result(timeout=60)
        assert len(result) == 200 * MiB
        after = _worker_usage_mb(backend)
        # The 200 MB memfd was the worker's until the driver read and closed it.
        assert after - before < 40, f"worker cgroup usage {before:.0f} MB -> {after:.0f} MB after handing back 200 MB"
        # ... so a next call that needs nearly all of its limit still fits.
        assert len(wrenpack.remote(big_result, executor=ex, memory=512).remote(200).result(timeout=60)) == 200 * MiB
    finally:
        ex.shutdown()


def allocate(mb, marker=None):
    block = bytearray(mb * MiB)  # touched: resident
    if marker:
        open(marker, "w").close()
    return len(block)


def test_results_the_driver_has_not_read_yet_do_not_shrink_the_next_call(tmp_path, monkeypatch):
    backend = LocalBackend(concurrency=1)
    if backend._cgroups is None:
        backend.shutdown()
        pytest.skip("memory cgroups (v1, root) are unavailable here")
    import threading

    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend, retries=0)
    gate, reading = threading.Event(), threading.Event()
    from wrenpack.backends.local import replies as local_replies

    original = local_replies.read_handed_off

    def slow_reader(inv, sealed):  # the driver lags behind its worker
        reading.set()
        gate.wait(60)
        return original(inv, sealed)

    monkeypatch.setattr(local_replies, "read_handed_off", slow_reader)
    try:
        first = wrenpack.remote(big_result, executor=ex, memory=512).remote(250)
        assert reading.wait(30)  # (the first call ended: its result waits to be read; was 0.5 s of sleep)
        # 250 MB of the worker's first result are still unread (and charged to its cgroup):
        # the next call in that worker still has its full 512 MB.
        marker = tmp_path / "allocated"
        second = wrenpack.remote(allocate, executor=ex, memory=512).remote(350, str(marker))
        deadline = time.time() + 20
        while not marker.exists() and time.time() < deadline:  # it ran while the first result was unread
            time.sleep(0.05)
        time.sleep(0.3)
        gate.set()
        assert len(first.result(timeout=60)) == 250 * MiB
        assert second.result(timeout=60) == 350 * MiB
        # ... and the limit is the call's own again once the driver has read it.
        with pytest.raises(wrenpack.MemoryLimitExceeded):
            wrenpack.remote(allocate, executor=ex, memory=512).remote(600).result(timeout=60)
    finally:
        gate.set()
        ex.shutdown()


@pytest.fixture(params=[True, False], ids=["cgroup", "sampled"])
def limited(request, tmp_path):
    """(an executor with one worker, whether a memory cgroup holds its limit):
    each limit test runs with the kernel's limit and with the sampled one."""
    cgroup = request.param
    backend = LocalBackend(concurrency=1, use_cgroups=None if cgroup else False)
    if cgroup and backend._cgroups is None:
        backend.shutdown()
        pytest.skip("memory cgroups (v1, root) are unavailable here")
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend, retries=0)
    yield ex, cgroup
    ex.shutdown()


def test_a_result_and_its_handed_off_pickle_count_against_the_limit(limited):
    ex, _cgroup = limited
    # 150 MB of result plus its 150 MB pickle do not fit in 256 MB (nor would they on Lambda).
    with pytest.raises(wrenpack.MemoryLimitExceeded):
        wrenpack.remote(big_result, executor=ex, memory=256).remote(150).result(timeout=60)
    assert len(wrenpack.remote(big_result, executor=ex, memory=512).remote(150).result(timeout=60)) == 150 * MiB


def copies_of(a, n):
    """Hold n copies of the argument array at once; its total."""
    copies = [a.copy() for _ in range(n)]
    return float(sum(c.sum() for c in copies))


def test_handed_off_argument_arrays_count_against_the_limit(limited):
    """Measured before: with a cgroup, a call given a 100 MB array that made a
    copy of it ran with memory=128 and reported a 233 MB peak (the array's pages
    are the driver's, so the worker's cgroup never saw them; on Lambda the
    argument is in the call's memory), while the same call without cgroups failed."""
    np = pytest.importorskip("numpy")
    ex, cgroup = limited
    a = np.ones(100 * MiB // 8)
    f = wrenpack.remote(copies_of, executor=ex, memory=160)
    with pytest.raises(wrenpack.MemoryLimitExceeded, match="limit of 160 MB") as err:
        f.remote(a, 1).result(timeout=60)
    if cgroup:
        assert "100 MB of arguments" in str(err.value) and "\n" not in str(err.value)
    fut = wrenpack.remote(copies_of, executor=ex, memory=512).remote(a, 1)
    assert fut.result(timeout=60) == float(a.size) and fut.status["peak_rss_mb"] < 512
    assert f.remote(a[:1000], 1).result(timeout=60) == 1000.0  # small arguments: inline, as before


def _sealed(data: bytes, seals: int = handoff.SEALS) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _layout(n: int) -> dict:
    return {"size": n, "stream": n, "buffers": []}


def test_a_memfd_that_is_not_sealed_altered_or_not_a_memfd_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    evil = pickle.dumps(_Evil(marker))
    loads = lambda f, buffers: pickle.load(f, buffers=buffers)  # noqa: E731
    cases = []
    # Arguments with out-of-band buffers are mapped by the worker: only sealed ones.
    with_buffer = {"size": len(evil), "stream": len(evil) - 8, "buffers": [[len(evil) - 8, 8]]}
    cases.append((_sealed(evil, 0), with_buffer, "not sealed"))
    cases.append((_sealed(evil, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW), with_buffer, "not sealed"))
    cases.append((_sealed(evil, 0), _layout(len(evil) + 1), f"holds {len(evil)} bytes, fewer"))
    cases.append((_sealed(evil), _layout(len(evil) - 1), f"holds {len(evil)} bytes"))
    cases.append((_sealed(evil), {"size": len(evil), "stream": len(evil), "buffers": [[0, len(evil) + 1]]}, "spans inside"))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(evil)
    cases.append((os.open(plain, os.O_RDONLY), _layout(len(evil)), "not a sealable memory file"))
    cases.append((None, _layout(len(evil)), "did not arrive"))
    before = _open_fds()
    for fd, layout, why in cases:
        with pytest.raises(CorruptObject, match=why) as info:
            handoff.load(fd, layout, "call's arguments", private=True, loads=loads)
        assert "nothing was unpickled" in str(info.value) and "\n" not in str(info.value)
    # Results (in the driver): an unsealed memfd only if it is the one the driver gave the call.
    given = _sealed(b"", 0)
    for fd, own in ((_sealed(evil, 0), None), (_sealed(evil, 0), given)):
        with pytest.raises(CorruptObject, match="not sealed"):
            handoff.load(fd, _layout(len(evil)), "result of f", private=False, loads=loads, own=own)
    os.close(given)
    assert _open_fds() == before - (len(cases) - 1)  # every descriptor given was closed
    assert not os.path.exists(marker), "a refused hand-off was unpickled"
    # A sealed memfd cannot be changed by whoever else holds it.
    fd = _sealed(b"fixed")
    with pytest.raises(PermissionError):
        os.write(fd, b"x")
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1)
    os.close(fd)


def test_the_handler_refuses_an_unsealed_argument_memfd_as_a_wrenpack_error(tmp_path):
    from wrenpack import auth

    marker = str(tmp_path / "pwned")
    secret = b"h" * 32
    store = LocalStore(tmp_path / "s")
    store.put(keys.func_key("j1"), auth.seal(secret, keys.identity("j1", "func"), cloudpickle.dumps(echo)))
    evil = pickle.dumps(((_Evil(marker),), {}))
    event = Event(job_id="j1", call_id="00000", store=store.spec, secret=secret,
                           args={"handoff": _layout(len(evil))}).to_dict()
    # Unsealed with an out-of-band buffer (the worker would map it: a kept, rewritable
    # memfd of the driver's carries only a stream); or, as on Lambda, no memfd came.
    evil_buffer = {"size": len(evil) + 8, "stream": len(evil), "buffers": [[len(evil), 8]]}
    event_buffer = dict(event, args={"handoff": evil_buffer})
    for fd, ev in ((_sealed(evil + bytes(8), 0), event_buffer), (None, event)):
        ctx = LocalContext(function_name="t", memory_mb=128, deadline=time.time() + 30)
        ctx.handoff_fds = [fd] if fd is not None else []
        reply = handler(dict(ev), ctx)
        data = reply_result(reply) or store.get(keys.result_key("j1", "00000"))
        store.delete(keys.result_key("j1", "00000"))
        status, outcome = open_result(secret, "j1", "00000", data, "r")
        assert not outcome.ok and status["exit"] == "error"
        err = outcome.rebuild("t")
        assert isinstance(err, CorruptObject) and "nothing was unpickled" in str(err)
    assert not os.path.exists(marker)


def test_a_worker_killed_with_a_handoff_in_flight_fails_only_that_call(ex):
    data = os.urandom(2 * MiB)
    f = wrenpack.remote(crash_always_on, executor=ex, retries=0)
    futs = f.map([(data, i == 1) for i in range(4)])
    assert futs[0].result(timeout=60) == 2 * MiB
    with pytest.raises(WorkerCrashed):
        futs[1].result(timeout=60)
    assert [futs[i].result(timeout=60) for i in (2, 3)] == [2 * MiB] * 2
    assert _memfds() == []


def test_a_retried_call_gets_its_handed_off_arguments_again(ex, tmp_path):
    marker = str(tmp_path / "crashed")
    f = wrenpack.remote(crash_once, executor=ex, retries=1)
    assert f.remote(marker, os.urandom(3 * MiB)).result(timeout=60) == 3 * MiB
    assert os.path.exists(marker)


def test_large_arguments_are_still_checked_against_memory(ex):
    with pytest.raises(PayloadTooLarge, match="more than its memory=128 MB"):
        wrenpack.remote(echo, executor=ex, memory=128).map([b"a" * MiB, b"b" * (130 * MiB)])
    assert _memfds() == []  # the memfds of the calls pickled are closed


def test_a_pickled_future_of_a_handed_off_result_reads_it_from_the_store(ex):
    fut = wrenpack.remote(big_result, executor=ex).remote(2)
    assert wrenpack.remote(read_future, executor=ex).remote(fut).result(timeout=60) == 2 * MiB
    assert len(fut.result(timeout=60)) == 2 * MiB


def test_keep_objects_keeps_arguments_and_results_in_the_store(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1, keep_objects=True)
    try:
        fut = wrenpack.remote(echo, executor=ex).remote(b"k" * (2 * MiB))
        assert fut.result(timeout=60) == b"k" * (2 * MiB)
        assert ex.store.exists(keys.input_key(fut.job_id, fut.call_id))
        assert ex.store.exists(keys.result_key(fut.job_id, fut.call_id))
    finally:
        ex.shutdown()


def test_a_kept_argument_memfd_the_kernel_will_not_seal_yet_goes_to_a_fresh_one():
    """A domain's kept argument memfd is written again for its next call; one with large
    buffers is sealed. With its pages still held where the last call was read (here: a
    writable shared mapping, as a job's process can keep), sealing failed with EBUSY: the
    call failed with a SerializationError, and the memfd leaked (seen once in a full run).
    The bytes now go to a fresh memfd, which is sealed, and nothing leaks."""
    import mmap

    kept = os.memfd_create("kept", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(kept, b"k" * 100_000)
    held = mmap.mmap(kept, 100_000, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    probe = os.dup(kept)
    try:
        with pytest.raises(OSError):  # (the kernel's refusal this is about)
            fcntl.fcntl(probe, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    finally:
        os.close(probe)
    inode = os.fstat(kept).st_ino
    before = len(os.listdir("/proc/self/fd"))
    handoff._keep(kept, "domain-under-test")
    np = pytest.importorskip("numpy")
    value = [np.arange(100_000), "small"]  # (an array: its buffer goes out of band, so the memfd is sealed)
    spill = handoff.Spill(0, "wrenpack-args", reuse="domain-under-test")
    cloudpickle.Pickler(spill, protocol=5, buffer_callback=spill.buffer).dump(value)
    sealed = spill.finish()
    try:
        assert isinstance(sealed, handoff.Sealed) and os.fstat(sealed.fd).st_ino != inode
        assert fcntl.fcntl(sealed.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        fd, sealed.fd = sealed.fd, None
        got = handoff.load(fd, sealed.layout, "the arguments", private=True, loads=lambda f, b: pickle.load(f, buffers=b))
        assert (got[0] == value[0]).all() and got[1] == "small"
    finally:
        held.close()
        handoff.drain_pool()
    assert len(os.listdir("/proc/self/fd")) <= before - 1  # (the kept one closed, the fresh one consumed)
