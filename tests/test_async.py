"""``await`` on a wrenpack future and ``async for`` over ``wrenpack.as_completed``,
with asyncio's timeout rules; the synchronous iteration stays as it was."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import time

import pytest

import wrenpack


def nap(s):
    time.sleep(s)
    return s


def held(path, value):
    """``value`` once ``path`` exists: the test creates it when it is done with the running call (30 s at most)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def fails(x):
    raise KeyError(f"no {x}")


@pytest.fixture
def one_worker(tmp_path):
    """One worker: a second call waits in the queue (PENDING) while the first runs."""
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1, retries=0)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_await_a_future(remote):
    async def main():
        return await remote(nap).remote(0.05)

    assert asyncio.run(main()) == 0.05


def test_await_raises_the_calls_exception(remote):
    async def main():
        await remote(fails).remote(3)

    with pytest.raises(KeyError, match="no 3") as info:
        asyncio.run(main())
    assert type(info.value.__cause__).__name__ == "RemoteTraceback"


def test_gather_and_the_loop_stays_free_while_waiting(remote):
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        tick = asyncio.create_task(ticker())
        try:
            return await asyncio.gather(*remote(nap).map([0.4, 0.3]))
        finally:
            tick.cancel()

    assert asyncio.run(main()) == [0.4, 0.3]
    assert len(ticks) >= 5, "awaiting a call blocked the event loop"


def test_wait_for_timeout_cancels_a_call_that_has_not_started(one_worker, tmp_path):
    release = str(tmp_path / "release")

    async def main():
        running = wrenpack.remote(held, executor=one_worker).remote(release, 1.0)  # runs until released below
        queued = wrenpack.remote(nap, executor=one_worker).remote(0.0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(queued, 0.2)
        return running, queued

    running, queued = asyncio.run(main())
    # as asyncio.wait_for does: the awaited one is cancelled; the call had not started, so it never runs
    assert queued.cancelled()
    open(release, "w").close()
    assert running.result(timeout=30) == 1.0


def test_async_for_as_completed_yields_in_completion_order(remote):
    async def main():
        order = []
        async for fut in wrenpack.as_completed(remote(nap).map([0.8, 0.0])):
            order.append(await fut)
        return order

    assert asyncio.run(main()) == [0.0, 0.8]


def test_async_for_timeout_is_asyncios_and_cancels_nothing(remote, tmp_path):
    release = str(tmp_path / "release")
    futs = remote(held).starmap([(release, 0.0), (release + "-later", 2.0)])  # the second runs until released below
    open(release, "w").close()

    async def main():
        got = []
        with pytest.raises(asyncio.TimeoutError, match="1 of 2 calls not finished after 0.5 s"):
            async for fut in wrenpack.as_completed(futs, timeout=0.5):
                got.append(fut.result())
        return got

    assert asyncio.run(main()) == [0.0]
    assert not futs[1].cancelled()
    open(release + "-later", "w").close()
    assert futs[1].result(timeout=30) == 2.0


def test_async_for_yields_what_finished_before_the_deadline_first(remote):
    futs = remote(nap).map([0.0, 0.0])
    cf.wait(futs, timeout=30)

    async def main():
        return [fut async for fut in wrenpack.as_completed(futs, timeout=0)]

    assert sorted(map(id, asyncio.run(main()))) == sorted(map(id, futs))


def test_sync_iteration_is_unchanged(remote):
    futs = remote(nap).map([0.2, 0.0, 0.1])
    assert sorted(f.result() for f in wrenpack.as_completed(futs, timeout=30)) == [0.0, 0.1, 0.2]
    it = wrenpack.as_completed(futs + futs[:1])  # each future once, as concurrent.futures does
    assert next(it) in futs and len(list(it)) == 2
    with pytest.raises(cf.TimeoutError):
        for _ in wrenpack.as_completed(remote(nap).map([0.3]), timeout=0.1):  # (the module's executor waits it out)
            pass


def test_async_for_over_futures_unpickled_while_their_calls_run(executor, tmp_path):
    """An unpickled future whose call this process did not launch (``refs.CallRef``)
    resolves only when something looks at the store, as ``wrenpack.wait`` and the
    ``for`` loop do: ``async for`` waited for a done-callback that never came, for
    good (the calls had ended long before)."""
    import pickle

    from wrenpack.worker import refs

    release = str(tmp_path / "release")
    futs = [executor.submit(held, release, i) for i in range(3)]
    blob = pickle.dumps(futs)
    for f in futs:  # as in another process: no live future for these calls here
        refs._live.pop((f.job_id, f.call_id), None)
    loaded = pickle.loads(blob)
    assert all(isinstance(f, refs.CallRef) for f in loaded)

    async def main():
        asyncio.get_running_loop().call_later(0.3, lambda: open(release, "w").close())
        return [f.result() async for f in wrenpack.as_completed(loaded, timeout=20)]

    assert sorted(asyncio.run(main())) == [0, 1, 2]
    assert wrenpack.get(futs, timeout=20) == [0, 1, 2]


def _unpickled_while_running(executor, release, n=2):
    """(the futures, and copies of them unpickled as in a process that did not launch their calls)"""
    import pickle

    from wrenpack.worker import refs

    futs = [executor.submit(held, release, i) for i in range(n)]
    blob = pickle.dumps(futs)
    for f in futs:
        refs._live.pop((f.job_id, f.call_id), None)
    loaded = pickle.loads(blob)
    assert all(isinstance(f, refs.CallRef) for f in loaded)
    return futs, loaded


def test_await_and_wrap_future_of_futures_unpickled_while_their_calls_run(executor, tmp_path):
    """``await ref`` raised TypeError (an unpickled future had no ``__await__``), and
    ``asyncio.wrap_future(ref)`` never resolved: its done-callback ran only when something
    looked at the store, and nothing did."""
    release = str(tmp_path / "release")
    futs, loaded = _unpickled_while_running(executor, release)

    async def main():
        asyncio.get_running_loop().call_later(0.3, lambda: open(release, "w").close())
        return await asyncio.wait_for(loaded[0], 20), await asyncio.wait_for(asyncio.wrap_future(loaded[1]), 20)

    assert asyncio.run(main()) == (0, 1)
    assert wrenpack.get(futs, timeout=20) == [0, 1]


def test_callbacks_and_the_standard_librarys_wait_on_futures_unpickled_while_their_calls_run(executor, tmp_path):
    """Their done-callbacks run once the result is there, with nothing else looking, and
    ``concurrent.futures.wait``/``as_completed`` see them finish (they waited for good)."""
    import threading

    release = str(tmp_path / "release")
    futs, loaded = _unpickled_while_running(executor, release, 3)
    called = threading.Event()
    loaded[0].add_done_callback(lambda f: called.set())
    threading.Timer(0.3, lambda: open(release, "w").close()).start()
    assert called.wait(20)
    done, not_done = cf.wait(loaded[1:2], timeout=20)
    assert not not_done and done.pop().result() == 1
    assert [f.result() for f in cf.as_completed(loaded[2:], timeout=20)] == [2]
    assert wrenpack.get(futs, timeout=20) == [0, 1, 2]


def test_a_callback_that_exits_or_waits_on_another_unpickled_future_holds_up_no_other(executor, tmp_path):
    """The watcher ran the callbacks of what it resolved in its own thread: one that called
    ``sys.exit()`` ended it (other references waited on never resolved), and one that waited
    for another reference waited for good (only the watcher resolves it)."""
    import sys
    import threading

    from wrenpack.worker import refs

    release = str(tmp_path / "release")
    futs, loaded = _unpickled_while_running(executor, release, 3)
    seen = []
    loaded[0].add_done_callback(lambda f: sys.exit(3))
    waited = threading.Event()

    def waits_on_another(f):
        seen.append(cf.wait([loaded[2]], timeout=20).done == {loaded[2]})
        waited.set()

    loaded[1].add_done_callback(waits_on_another)
    threading.Timer(0.3, lambda: open(release, "w").close()).start()
    assert waited.wait(30) and seen == [True]
    assert cf.wait(loaded, timeout=20).not_done == set()
    assert wrenpack.get(futs, timeout=20) == [0, 1, 2]
    deadline = time.monotonic() + 5
    while refs._watcher.thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refs._watcher.thread is None  # (gone once nothing is left to watch)


def test_an_unpickled_future_waited_on_no_more_is_not_looked_at(executor, tmp_path):
    """A ``concurrent.futures.wait`` that timed out left its references watched until they
    resolved: 1,300 looks in 6 s for 100 of them (a GET each on S3), though nothing waited."""
    from wrenpack.worker import refs

    release = str(tmp_path / "release")
    futs, loaded = _unpickled_while_running(executor, release, 2)
    assert cf.wait(loaded, timeout=0.1).not_done == set(loaded)
    deadline = time.monotonic() + 5
    while refs._watcher._watched and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refs._watcher._watched == {}
    open(release, "w").close()
    assert wrenpack.get(futs, timeout=20) == [0, 1]


def test_a_forked_child_runs_no_callback_of_its_parents_unpickled_futures(executor, tmp_path):
    """A child forked while an unpickled future with a done-callback was watched ran that
    callback too (once per child of a fork pool): the parent's references are its own."""
    import os
    import threading

    release = str(tmp_path / "release")
    ran = tmp_path / "ran"
    futs, loaded = _unpickled_while_running(executor, release, 1)
    called = threading.Event()

    def callback(f):
        with open(ran, "a") as out:
            out.write(f"{os.getpid()}\n")
        called.set()

    loaded[0].add_done_callback(callback)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        time.sleep(2)
        os._exit(0)
    open(release, "w").close()
    assert called.wait(20)
    os.waitpid(child, 0)
    assert ran.read_text().split() == [str(os.getpid())]
    assert wrenpack.get(futs, timeout=20) == [0]
