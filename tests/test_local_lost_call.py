"""A call handed to an idle worker from the caller's thread is never lost.

``LocalBackend.invoke_many`` writes a message to an idle warm worker from the
caller's thread. A socket takes what its buffer holds; the rest is the
dispatcher's to write once the socket can take more, and it writes it only if
it watches the socket for writing. It did so only after calls it sent itself:
when the calls written from the caller's thread were the last ones queued (or
the others waited for that worker), the rest of the message stayed in the
driver, the worker waited for it, the driver waited for the reply, and the
call sat until its timeout (a group of a map's calls then ran again, one by
one, and the map came back a timeout late with the right results: about one
fresh run in 500 of a 100,000-call map).

Whether the kernel takes a message whole depends on how fast the idle worker
reads it, so the tests make the caller's write partial themselves
(``half_written_by_callers``): the first half goes, as when the socket's
buffer is full, and the rest is left for the dispatcher. Before the fix the
first two tests failed every time with TaskTimeout (the call, then a group,
lost until its timeout).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time

import pytest

import wrenpack
from wrenpack.backends.local import process

#: the shared ``ex`` fixture (tests/conftest.py) is an executor with these settings
pytestmark = pytest.mark.executor_settings(concurrency=1)


def size_of(x):
    return len(x)


@pytest.fixture
def half_written_by_callers(monkeypatch):
    """A message written from a caller's thread (not the dispatcher's) goes only half
    there, as when the socket takes no more; the bytes left, for each one."""
    left: list[int] = []
    original = process.Worker.flush

    def flush(self):
        if threading.current_thread().name == "wrenpack-local-dispatch" or len(self.outbuf) < 2 or self._out_fds:
            return original(self)
        half = len(self.outbuf) // 2
        rest = self.outbuf[half:]
        del self.outbuf[half:]
        original(self)
        self.outbuf += rest
        left.append(len(self.outbuf))
        return False

    monkeypatch.setattr(process.Worker, "flush", flush)
    return left


def test_a_call_the_socket_did_not_take_whole_is_not_lost(ex, half_written_by_callers):
    f = wrenpack.remote(size_of, executor=ex, timeout=5)
    assert f.remote("x").result(timeout=60) == 1  # (a warm worker: the next calls go to it from this thread)
    for size in (1, 30_000, 10):
        fut = f.remote("x" * size)
        assert fut.result(timeout=60) == size  # was: TaskTimeout, the rest of its message never written
        assert fut.status["attempt"] == 0
    assert len(half_written_by_callers) >= 3, "the calls did not go from this thread: the test missed its path"


def test_a_maps_group_the_socket_did_not_take_whole_is_not_lost(ex, half_written_by_callers, caplog):
    f = wrenpack.remote(size_of, executor=ex, timeout=5)
    # The function's call time is known: the next map's first group goes to the idle
    # worker straight from this thread, and the others wait in the queue, which the
    # dispatcher hands that worker once the first group's reply came (it never did).
    assert wrenpack.get(f.map(["ab"] * 2000), progress=False) == [2] * 2000
    half_written_by_callers.clear()
    caplog.set_level(logging.INFO, logger="wrenpack")
    assert wrenpack.get(f.map(["x" * 40] * 20_000), progress=False) == [40] * 20_000
    failed = [r.getMessage() for r in caplog.records if "group of" in r.getMessage()]
    assert not failed, f"a group was lost until its timeout: {failed[0]}"
    assert half_written_by_callers, "no group went from this thread: the test missed its path"


def test_a_group_that_ran_past_its_timeout_is_run_again_with_a_warning(ex, caplog):
    """A group stopped at its timeout runs its calls again one by one; that costs the
    whole wait, and the user hears of it (at WARNING: which calls, why, which attempt)."""
    caplog.set_level(logging.INFO, logger="wrenpack")
    futs = wrenpack.remote(nap_at, executor=ex, timeout=1).map(range(400))  # (Lambda's shortest timeout)
    assert wrenpack.get(futs, progress=False, return_exceptions=True)[:3] == [0, 1, 2]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "the group of" in r.getMessage()]
    assert warned, [r.getMessage() for r in caplog.records]
    text = warned[0].getMessage()
    assert "TaskTimeout" in text and "2nd attempt" in text and "nap_at[" in text, text


def nap_at(x):
    if x == 300:
        time.sleep(2)  # (twice the test's timeout)
    return x


def test_the_dispatcher_sleeps_while_workers_start(make_executor, monkeypatch):
    """A starting worker's calls have no clock yet: the dispatcher waits for its
    "ready" in the selector. It counted their wake-up, due at 0, and spun: tens of
    thousands of selects without a wait through each start, a CPU the starting
    workers lacked (a fresh map's first calls came twice as late on 2 cores)."""
    ex = make_executor(concurrency=2)
    backend = ex.backend
    zero_waits = []
    original = backend._selector.select

    def select(timeout=None):
        if timeout is not None and timeout <= 0:
            zero_waits.append(timeout)
        return original(timeout)

    monkeypatch.setattr(backend._selector, "select", select)
    futs = [wrenpack.remote(size_of, executor=ex).remote("x" * i) for i in range(2)]  # (both workers start)
    assert [fut.result(timeout=60) for fut in futs] == [0, 1]
    assert backend.worker_starts == 2
    assert len(zero_waits) < 50, f"the dispatcher looked {len(zero_waits)} times without waiting while workers started"


class _ShortOfBuffersOnce:
    """A worker's socket whose first write fails as when the kernel is short of buffers."""

    def __init__(self, sock, err):
        self._sock, self._err, self.failed = sock, err, 0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def _once(self):
        if not self.failed:
            self.failed += 1
            raise OSError(self._err, os.strerror(self._err))

    def send(self, data, *args):
        self._once()
        return self._sock.send(data, *args)

    def sendmsg(self, *args):
        self._once()
        return self._sock.sendmsg(*args)


@pytest.mark.parametrize("err", [errno.ENOBUFS, errno.ENOMEM], ids=["ENOBUFS", "ENOMEM"])
def test_a_write_the_kernel_refuses_for_a_moment_is_written_again(ex, err):
    """A write to a worker's socket failing with ENOBUFS or ENOMEM (the kernel short of
    memory for a moment) was taken for a gone worker: the message was dropped, and the
    call sat until its timeout (then ran again, ``attempt`` 1) though the worker was fine."""
    f = wrenpack.remote(size_of, executor=ex, timeout=3)
    assert f.remote("x").result(timeout=60) == 1
    (worker,) = ex.backend._workers
    flaky = worker.sock = _ShortOfBuffersOnce(worker.sock, err)
    fut = f.remote("xyz")
    assert fut.result(timeout=60) == 3
    assert flaky.failed == 1, "the write did not go through the failing socket: the test missed its path"
    assert fut.status["attempt"] == 0, "the call was lost until its timeout and ran again"


class _ShortOfBuffersFor(_ShortOfBuffersOnce):
    """A worker's socket whose writes fail for ``seconds``, as when the kernel stays short of memory."""

    def __init__(self, sock, err, seconds):
        super().__init__(sock, err)
        self._until = time.monotonic() + seconds

    def _once(self):
        if time.monotonic() < self._until:
            self.failed += 1
            raise OSError(self._err, os.strerror(self._err))


def test_a_write_the_kernel_keeps_refusing_is_tried_again_on_a_clock_not_in_a_spin(ex):
    """While the kernel keeps refusing a worker's write (ENOMEM for 0.3 s), its socket
    is still writable: watched for writing, the dispatcher woke at once, tried the
    write, and looked again, thousands of times a second on a machine short of memory.
    The write is tried again every few milliseconds instead, and goes through."""
    f = wrenpack.remote(size_of, executor=ex, timeout=10)
    assert f.remote("x").result(timeout=60) == 1
    (worker,) = ex.backend._workers
    flaky = worker.sock = _ShortOfBuffersFor(worker.sock, errno.ENOMEM, 0.3)
    fut = f.remote("xyz")
    assert fut.result(timeout=60) == 3
    assert fut.status["attempt"] == 0
    assert 1 <= flaky.failed <= 150, f"the write was tried {flaky.failed} times in 0.3 s"
