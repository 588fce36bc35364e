"""A program leaves no RAM behind: a call's future, with its result (and its
arguments' pickles), is freed when the user drops it, by reference counting
alone, not whenever the garbage collector next happens to run.

Measured before the fix: every map's futures were in a reference cycle (the
callbacks and cancellers of its calls referred to the map's plan, which held
all of them), so 100 results of 10 MiB stayed in the driver (+1 GB) after
``del results`` until a full collection, and one future kept held all its
siblings' results; a future whose exception ``get`` raised or returned was in
a cycle through that exception's traceback."""
from __future__ import annotations

import gc
import os
import time
import weakref

import pytest

import wrenpack


def echo(x):
    return x


def odd_fails(i):
    if i % 2:
        raise ValueError(f"call {i} failed")
    return i


#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=2, retries=0)


@pytest.fixture
def no_gc():
    """Only reference counting frees objects while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _all_freed(refs: list[weakref.ref], within: float = 5.0) -> int:
    """How many of ``refs`` are still alive once the backend's threads let go (they may for a moment)."""
    deadline = time.monotonic() + within
    while True:
        alive = sum(1 for r in refs if r() is not None)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _warm(ex):
    wrenpack.remote(echo, executor=ex).remote(0).result()


def test_a_maps_futures_are_freed_when_dropped(ex, no_gc):
    _warm(ex)
    f = wrenpack.remote(echo, executor=ex)
    big = os.urandom(2 << 20)
    for name, launch in [
        ("short calls (grouped)", lambda: f.map(range(300))),
        ("large arguments (fed)", lambda: f.map([big] * 6)),
        ("distinct large arguments", lambda: f.map([os.urandom(1 << 20) for _ in range(6)])),
        ("chunksize=4", lambda: f.map(range(20), chunksize=4)),
        ("single calls", lambda: [f.remote(i) for i in range(5)]),
    ]:
        futs = launch()
        refs = [weakref.ref(fut) for fut in futs]
        results = wrenpack.get(futs, progress=False)
        assert results[:1] and len(results) == len(refs)
        del futs, results
        assert _all_freed(refs) == 0, f"{name}: futures still alive after the user dropped them (a reference cycle)"


def test_one_kept_future_does_not_keep_its_siblings(ex, no_gc):
    _warm(ex)
    futs = wrenpack.remote(echo, executor=ex).map(range(200))
    wrenpack.get(futs, progress=False)
    kept = futs[0]
    refs = [weakref.ref(fut) for fut in futs[1:]]
    del futs
    assert _all_freed(refs) == 0
    assert kept.result() == 0


def test_failed_calls_futures_are_freed_whether_get_raises_or_returns_them(ex, no_gc):
    _warm(ex)
    g = wrenpack.remote(odd_fails, executor=ex)
    futs = g.map(range(10))
    refs = [weakref.ref(fut) for fut in futs]
    out = wrenpack.get(futs, progress=False, return_exceptions=True)
    assert [type(v) for v in out[:2]] == [int, ValueError] and str(out[1]) == "call 1 failed"
    assert out[1].__cause__ is not None  # the remote traceback stays with the exception
    del futs, out
    assert _all_freed(refs) == 0

    futs = g.map(range(10))
    refs = [weakref.ref(fut) for fut in futs]
    with pytest.raises(ValueError, match="call 1 failed"):
        wrenpack.get(futs, progress=False)
    del futs
    assert _all_freed(refs) == 0


def test_a_cancelled_calls_future_is_freed(ex, no_gc):
    _warm(ex)
    futs = wrenpack.remote(time.sleep, executor=ex).map([0.3] * 8)
    cancelled = [fut for fut in futs[4:] if fut.cancel()]
    assert cancelled  # two workers: most of the queue has not started
    refs = [weakref.ref(fut) for fut in futs]
    wrenpack.get(futs[:4], progress=False)
    del futs, cancelled
    assert _all_freed(refs) == 0


def ones(n):
    import numpy as np

    return np.ones(n, dtype=np.uint8)


@pytest.mark.parametrize("size", [1000, 600_000, 8 << 20])  # in the reply; read by the collector; a hand-off
def test_a_result_is_not_kept_by_the_executors_threads(ex, size):
    """The collector and reader threads held the last result they handled until
    the next one came (measured: one array of each size after a .remote(), two
    after a map, kept while the program went on)."""
    pytest.importorskip("numpy")
    f = wrenpack.remote(ones, executor=ex)
    for launch in (lambda: [f.remote(size)], lambda: f.map([size] * 4)):
        values = wrenpack.get(launch(), progress=False)
        assert [int(v.sum()) for v in values] == [size] * len(values)
        refs = [weakref.ref(v) for v in values]
        del values
        assert _all_freed(refs, within=2.0) == 0


def _resident_mb(_=None):
    """This process's resident MB (the argument lets a map run it in workers)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def test_the_driver_does_not_keep_a_dropped_functions_large_data(ex):
    """Measured before: after a function closing over a 200 MB table ran and
    both were dropped, the driver still held 667 MB (the function and its table
    in the pickle cache, the 200 MB pickle, and its base64 text, made for an
    inline function although this one was stored)."""
    wrenpack.remote(echo, executor=ex).remote(0).result()
    before = _resident_mb()

    def launch():
        # 64 MiB: a copy the driver kept (the leak kept ~3 of them: the pickle cache, the pickle,
        # its base64 text) is past the 48 MB allowed on its own
        table = os.urandom(64 << 20)

        def uses_table(i):
            return len(table) + i

        assert wrenpack.remote(uses_table, executor=ex).remote(1).result(timeout=60) == len(table) + 1
        return weakref.ref(uses_table)

    ref = launch()
    assert _all_freed([ref]) == 0, "the function (and what it closes over) is still referenced"
    after = _resident_mb()
    assert after < before + 48, f"the driver still holds the function's data ({before} -> {after} MB)"


def test_a_warm_worker_does_not_keep_shared_arguments_of_earlier_calls(ex):
    # Measured before the fix: an argument object shared by a map's calls was
    # kept in each worker by a reference cycle of its loader, one per call, until
    # a gc pass: workers held 241 and 121 MB after 100 calls of 10 MiB, and a
    # 60 MB call under memory=128 then failed with MemoryLimitExceeded.
    probe = wrenpack.remote(_resident_mb, executor=ex)
    before = max(wrenpack.get(probe.map(range(4))))
    blob = os.urandom(8 << 20)
    assert wrenpack.get(wrenpack.remote(len, executor=ex).map([blob] * 40)) == [len(blob)] * 40
    after = wrenpack.get(probe.map(range(4)))
    assert max(after) < before + 40, (before, after)
