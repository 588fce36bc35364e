"""A map of large arguments is fed to the workers a window at a time
(``wrenpack.feed``), its memfds written again once their calls ended
(``handoff._pool``) and its results written into memfds the driver gave
(``Args.slab``): every call still gets its own arguments and result."""
from __future__ import annotations

import collections
import hashlib
import os
import signal
import time

import pytest

import wrenpack
from open_memfds import memfds as _memfds
from wrenpack.executor import feed
from wrenpack.backends.local import LocalBackend
from wrenpack.errors import PayloadTooLarge
from wrenpack.worker import handoff

pytestmark = [
    pytest.mark.skipif(not handoff.available(), reason="needs Linux memfd_create, file seals and SCM_RIGHTS"),
    # the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
    pytest.mark.executor_settings(concurrency=2, retries=0),
]

MiB = 1024 * 1024


def _no_memfds_left() -> None:
    """The map's memfds are closed once its last call ended: by the collector as
    it resolves that call, or by the feed's thread just after its last launch
    (which may run a moment after the last future resolved, on a busy machine)."""
    deadline = time.monotonic() + 5
    while _memfds() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _memfds() == []


def reverse(data):
    return data[::-1]


def digest_and_size(data, size):
    """A result of ``size`` bytes that depends on every byte of the argument."""
    seed = hashlib.sha256(data).digest()
    return seed + bytes(size - len(seed))


def size_of(data, extra):
    return len(data)


def slow_len(data, seconds=0.15):
    time.sleep(seconds)
    return len(data)


def crash_once_on(marker, i, data):
    if i == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return data[::-1]


def _counting(monkeypatch, module, name, counts, hit=lambda r: bool(r)):
    real = getattr(module, name)

    def counted(*args):
        out = real(*args)
        counts[name] = counts.get(name, 0) + int(hit(out))
        return out

    monkeypatch.setattr(module, name, counted)


def test_every_call_gets_its_own_arguments_and_result_in_order(ex, monkeypatch):
    counts: dict[str, int] = {}
    _counting(monkeypatch, handoff, "_take_kept", counts, lambda fd: fd is not None)  # an argument memfd written again
    _counting(monkeypatch, handoff, "_same_file", counts)  # a result read from the memfd the driver gave
    # Sizes going down and up: a kept memfd holds an older, longer pickle's tail,
    # and results outgrow the memfds made for the first ones.
    sizes = [3 * MiB, 1 * MiB, 2 * MiB, 512 * 1024, 4 * MiB, 3 * MiB] * 4
    items = [os.urandom(n) for n in sizes]
    futs = wrenpack.remote(reverse, executor=ex).map(items)
    assert [f.result(timeout=60) for f in futs] == [x[::-1] for x in items]
    assert counts.get("_take_kept", 0) >= 12 and counts.get("_same_file", 0) >= 8, counts
    _no_memfds_left()  # nothing kept once the map ended


def test_results_larger_and_smaller_than_the_memfd_given_for_them(ex):
    items = [os.urandom(MiB) for _ in range(16)]
    sizes = [2 * MiB] * 6 + [6 * MiB, 100, 200 * 1024, 9 * MiB] + [2 * MiB] * 6
    futs = wrenpack.remote(digest_and_size, executor=ex).starmap([(x, n) for x, n in zip(items, sizes)])
    for x, n, f in zip(items, sizes, futs):
        out = f.result(timeout=60)
        assert len(out) == n and out[:32] == hashlib.sha256(x).digest()
    _no_memfds_left()


def test_the_map_returns_at_once_and_holds_only_its_window(ex):
    items = [os.urandom(MiB) for _ in range(12)]  # (more than twice the window)
    t0 = time.monotonic()
    futs = wrenpack.remote(slow_len, executor=ex).map(items)
    assert time.monotonic() - t0 < 1.0  # not 12 pickles before the first call runs
    held = len(_memfds("wrenpack-args"))
    assert held <= feed.PER_WORKER * 2 + 1, f"{held} argument memfds held at once"
    assert wrenpack.get(futs, timeout=60) == [MiB] * 12
    _no_memfds_left()


def test_a_call_that_cannot_be_sent_fails_alone(ex):
    items = [(os.urandom(MiB), None) for _ in range(12)]
    items[7] = (b"x" * (130 * MiB), None)
    futs = wrenpack.remote(size_of, executor=ex, memory=128).starmap(items)
    for i, f in enumerate(futs):
        if i == 7:
            with pytest.raises(PayloadTooLarge, match="call 7 of .* more than its memory=128 MB"):
                f.result(timeout=60)
        else:
            assert f.result(timeout=60) == MiB
    _no_memfds_left()


def test_arguments_that_can_change_are_pickled_when_map_is_called(ex):
    # Not fed: a bytearray (or a writable array) changed after map must not reach a later call.
    items = [bytearray(os.urandom(MiB)) for _ in range(12)]
    want = [bytes(b[::-1]) for b in items]
    futs = wrenpack.remote(reverse, executor=ex).map(items)
    for b in items:
        b[:] = bytes(MiB)
    assert [bytes(f.result(timeout=60)) for f in futs] == want
    assert not feed._frozen(bytearray(b"x")) and not feed._frozen((b"x", [1])) and feed._frozen((b"x", 1, "s", None))


def test_a_crashed_call_is_retried_with_its_own_arguments(tmp_path):
    marker = str(tmp_path / "crashed")
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=2), retries=1) as ex:
        items = [(marker, i, os.urandom(MiB)) for i in range(12)]
        futs = wrenpack.remote(crash_once_on, executor=ex).starmap(items)
        assert [f.result(timeout=60) for f in futs] == [x[2][::-1] for x in items]
    assert os.path.exists(marker)


def test_calls_not_launched_yet_cancel_and_shutdown_waits_for_the_rest(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=1), retries=0)
    # (0.3 s calls: the last is launched ~1.5 s after the map, well after the cancel below)
    futs = wrenpack.remote(slow_len, executor=ex).map([os.urandom(MiB) for _ in range(8)], seconds=0.3)
    assert futs[-1].cancel()  # never launched: taken out of the feed
    ex.shutdown(wait=True)
    assert futs[-1].cancelled()
    assert [f.result(timeout=0) for f in futs[:-1]] == [MiB] * 7


def test_a_held_future_passed_to_another_call_launches_and_travels(ex):
    futs = wrenpack.remote(slow_len, executor=ex).map([os.urandom(MiB) for _ in range(10)])
    last = futs[-1]
    assert wrenpack.remote(lambda f: f.result() + 1, executor=ex).remote(last).result(timeout=60) == MiB + 1
    assert wrenpack.get(futs, timeout=60) == [MiB] * 10


def test_a_result_that_outgrows_the_given_memfd_moves_to_a_sealed_one():
    given = os.memfd_create("given", os.MFD_ALLOW_SEALING)
    os.posix_fallocate(given, 0, 256 * 1024)
    value = os.urandom(MiB)
    out = handoff.dump(("ok", value), 64 * 1024, slab=os.dup(given))
    assert isinstance(out, handoff.Sealed) and not handoff._same_file(out.fd, given)
    got = handoff.load(os.dup(out.fd), out.layout, "result", private=False, loads=lambda f, b: __import__("pickle").load(f))
    assert got == ("ok", value)
    small = handoff.dump(("ok", os.urandom(100 * 1024)), 64 * 1024, slab=os.dup(given))
    assert handoff._same_file(small.fd, given)  # it fitted: in the driver's memfd, unsealed
    got = handoff.load(os.dup(small.fd), small.layout, "result", private=False, own=given,
                       loads=lambda f, b: __import__("pickle").load(f))
    assert got[0] == "ok" and len(got[1]) == 100 * 1024
    out.close()
    small.close()
    os.close(given)


_BALLAST = []


def result_near_limit(data, size, limit_mb, squeeze):
    """A result of ``size`` bytes; with ``squeeze``, the worker first fills its
    memory so that the result fits but its pickle does not (as on Lambda)."""
    value = b"r" * size
    if squeeze:
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        ballast = bytearray(max(0, limit_mb * MiB - rss - size // 2))
        ballast[::4096] = b"x" * len(ballast[::4096])  # resident
        _BALLAST.append(ballast)
    return value


def test_a_result_in_the_drivers_memfd_still_counts_against_the_limit(tmp_path):
    backend = LocalBackend(concurrency=1)
    if backend._cgroups is None:
        backend.shutdown()
        pytest.skip("memory cgroups (v1, root) are unavailable here")
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend, retries=0) as ex:
        f = wrenpack.remote(result_near_limit, executor=ex, memory=256)
        size = 30 * MiB
        # The first results teach the feed to give each call a 32 MiB memfd for its result;
        # the last call's value fits in its memory, the value and its pickle do not.
        items = [(os.urandom(MiB), size, 256, i == 7) for i in range(8)]
        futs = f.starmap(items)
        assert [len(fut.result(timeout=60)) for fut in futs[:7]] == [size] * 7
        with pytest.raises(wrenpack.MemoryLimitExceeded):
            futs[7].result(timeout=60)


def test_a_read_only_array_made_writable_again_after_map_is_not_fed(ex):
    # An array that owns its memory can be made writable again (numpy allows
    # it), so "read-only" did not mean unchanged: a fed call would get what it
    # became. Only arrays over bytes are fed; the rest are pickled at map.
    np = pytest.importorskip("numpy")
    items = []
    for _ in range(12):
        a = np.frombuffer(os.urandom(MiB), dtype=np.uint8).copy()
        a.flags.writeable = False
        items.append(a)
    want = [bytes(a[::-1]) for a in items]
    futs = wrenpack.remote(reverse, executor=ex).map(items)
    for a in items:
        a.flags.writeable = True
        a[:] = 0
    assert [bytes(f.result(timeout=60)) for f in futs] == want
    over_bytes = np.frombuffer(os.urandom(MiB), dtype=np.uint8)
    assert feed._frozen(over_bytes) and feed._frozen(over_bytes[::2]) and not feed._frozen(items[0])


def test_subclasses_of_immutable_types_are_not_taken_for_frozen():
    class Tagged(bytes):
        pass

    tagged = Tagged(b"x")
    tagged.note = [1]  # state that can change after map
    Point = collections.namedtuple("Point", "x y")
    assert not feed._frozen(tagged) and not feed._frozen((tagged,))
    assert feed._frozen(Point(b"x", 2)) and not feed._frozen(Point(b"x", [2]))
