"""A warm single call's path does per-call work once: the next job's identity is
made while the last call runs, a message between a worker and its job's
process is read in one system call, an empty temporary directory is not walked
after every call, a job's process takes a call's memory marks while it waits
for it. Each of these stays exact: the records, messages and counts are the
same as when they were made on the call's own clock."""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import pytest

import wrenpack
from wrenpack.executor import core, owner
from wrenpack.wire import owner as owner_wire
from wrenpack.worker import handler, isolation, memory
from wrenpack.worker.local_main import TmpMeter

pytestmark = pytest.mark.executor_settings(concurrency=1)


def plus_one(x):
    return x + 1


def times_two(x):
    return 2 * x


def test_owner_records_seal_over_the_same_canonical_json():
    rng = random.Random(7)
    records = [
        {"host": "h\u00e9\"\\x", "pid": 1, "start": None, "created": 1e22, "label": "f[3] \u2603 \n"},
        {"host": "vm", "pid": True, "start": "1", "created": 0.5, "label": "bool pid: the general path"},
        {"host": "vm", "pid": 2, "start": "1", "created": 5e-324, "label": "x", "mac": "ignored"},
        {"host": "vm", "pid": 2, "start": "1", "created": 3, "label": "an int time: the general path"},
    ] + [{"host": "vm", "pid": rng.randrange(1 << 22), "start": str(rng.random()),
          "created": rng.random() * 10 ** rng.randint(-6, 12), "label": rng.choice(["a", "b\u00e9", "c d"])}
         for _ in range(2000)]
    for record in records:
        want = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
        assert owner_wire._canonical(record) == want
    key = os.urandom(32)
    sealed = owner_wire.seal(key, "20260101-000000-00000001", records[0])
    assert owner_wire.verify(key, "20260101-000000-00000001", sealed)
    assert not owner_wire.verify(key, "20260101-000000-00000002", sealed)
    assert not owner_wire.verify(key, "20260101-000000-00000001", dict(sealed, label="other"))


def test_the_next_single_calls_identity_is_made_while_one_runs(ex):
    f = wrenpack.remote(plus_one, executor=ex)
    assert f.remote(0).result(timeout=60) == 1  # (a cold start: what it made ahead may be stale by now)
    assert f.remote(0).result(timeout=60) == 1
    made = ex._ahead[0]
    ex._ahead[:] = [made._replace(made=time.monotonic())]  # (fresh, however busy the machine is)
    assert made.label == "plus_one"
    key = owner.user_key()
    assert key is not None and owner_wire.verify(key, made.job_id, made.owner)
    fut = f.remote(1)
    assert fut.job_id == made.job_id and fut.result(timeout=60) == 2
    assert ex._ahead and ex._ahead[0].job_id != made.job_id
    # Another function's call, or one made too long ago: a fresh identity, never a reused one.
    other = wrenpack.remote(times_two, executor=ex).remote(3)
    assert other.result(timeout=60) == 6 and other.job_id != ex._ahead[0].job_id
    stale = ex._ahead[0]
    ex._ahead[:] = [stale._replace(made=time.monotonic() - 2 * core.IDENTITY_KEPT_S)]
    fut = wrenpack.remote(times_two, executor=ex).remote(4)
    assert fut.result(timeout=60) == 8 and fut.job_id != stale.job_id
    ids = [f.remote(i).job_id for i in range(5)]
    assert len(set(ids)) == 5


class _CountingSocket:
    """A socket whose reads are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def recvmsg_into(self, *args):
        self.reads += 1
        return self.sock.recvmsg_into(*args)

    def recv_into(self, *args):
        self.reads += 1
        return self.sock.recv_into(*args)


@pytest.mark.parametrize("size", [0, 100, 60_000, 70_000, 3 << 20])
def test_a_message_to_or_from_a_jobs_process_is_read_whole(size):
    a, b = socket.socketpair()
    with a, b:
        blob = os.urandom(size)
        for to_child in (True, False):
            sender = threading.Thread(target=isolation.send, args=(a, {"n": size}, blob), kwargs={"to_child": to_child})
            sender.start()
            if size <= 60_000:
                # (all of it in the socket first, as when the peer wakes on a message sent whole: read
                # while the sender was still writing, under load, it came in two reads and failed)
                sender.join()
            counted = _CountingSocket(b)
            head, got, fds = isolation.recv(counted, from_parent=to_child, whole=True)
            sender.join()
            assert head == {"n": size} and bytes(got) == blob and fds == []
            if size <= 60_000:
                assert counted.reads == 1  # one system call for a small message, not a read per part


def test_bytes_after_a_message_from_a_jobs_process_break_the_protocol():
    a, b = socket.socketpair()
    with a, b:
        isolation.send(a, {"t": "done"})
        isolation.send(a, {"t": "done", "forged": True})
        with pytest.raises(ValueError):
            isolation.recv(b, whole=True)


def test_an_empty_tmp_directory_is_not_walked_after_every_call(tmp_path):
    walks = []

    def count(path):
        walks.append(path)
        return memory.dir_usage(path)

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    past = time.time() - 10
    os.utime(tmp, (past, past))
    meter = TmpMeter(str(tmp), count)
    assert [meter.usage() for _ in range(50)] == [0] * 50
    assert len(walks) == 1
    (tmp / "f").write_bytes(b"x" * 100_000)
    assert meter.usage() >= 100_000
    with open(tmp / "f", "ab") as f:  # grows without a new entry: a directory that holds anything is counted each time
        f.write(b"y" * 200_000)
    assert meter.usage() >= 300_000
    (tmp / "f").unlink()
    (tmp / "d").mkdir()
    (tmp / "d" / "g").write_bytes(b"z" * 50_000)
    assert meter.usage() >= 50_000
    (tmp / "d" / "g").unlink()
    (tmp / "d").rmdir()
    assert meter.usage() == 0


def test_a_jobs_process_uses_memory_marks_taken_after_its_last_reply_only_while_fresh(monkeypatch):
    taken = []
    monkeypatch.setattr(memory, "start_peak", lambda: taken.append("start") or ("faults", len(taken)))
    monkeypatch.setattr(memory, "children_peak_mb", lambda: 7.0)
    monkeypatch.setattr(handler, "_marks", None)
    handler.after_reply()
    assert taken == ["start"]
    assert handler._call_marks() == (("faults", 1), 7.0)  # taken while it waited: not again
    assert taken == ["start"]
    assert handler._call_marks() == (("faults", 2), 7.0)  # used once
    handler.after_reply()
    monkeypatch.setattr(handler, "_marks", (time.monotonic() - 2 * handler.MARKS_KEPT_S, *handler._marks[1:]))
    assert handler._call_marks() == (("faults", 4), 7.0)  # too old: taken at the call


def test_warm_calls_on_a_sampled_worker_do_not_wake_the_dispatcher(tmp_path, monkeypatch):
    """Without a cgroup a running call is sampled every few milliseconds; a call handed to
    an idle worker from the caller's thread woke the dispatcher every time so it would
    sample it. While calls come one after another it sleeps no longer than a sample, and
    the call's own reply is the one wake-up it needs."""
    from wrenpack.backends.local import LocalBackend

    backend = LocalBackend(concurrency=1, use_cgroups=False)
    wakes = []
    original = backend._wake
    monkeypatch.setattr(backend, "_wake", lambda: wakes.append(1) or original())
    with wrenpack.Executor(storage=str(tmp_path / "store"), backend=backend) as ex:
        f = wrenpack.remote(plus_one, executor=ex)
        assert f.remote(0).result(timeout=60) == 1  # (the worker starts: the dispatcher is woken for it)
        assert f.remote(0).result(timeout=60) == 1
        wakes.clear()
        n = 30
        assert [f.remote(i).result(timeout=60) for i in range(n)] == [i + 1 for i in range(n)]
        # (each came within _BUSY_S of the last reply on a quiet machine; a busy one may stall a few)
        assert len(wakes) <= n // 3, f"{len(wakes)} wake-ups of the dispatcher for {n} warm calls"


def nap(s):
    time.sleep(s)
    return s


def crash(_):
    os._exit(3)


def _local_executor(tmp_path, **kw):
    from wrenpack.backends.local import LocalBackend

    return wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(**kw))


def _until_interrupted(f, seconds, interrupt):
    """Calls ``f.remote(seconds)`` one after another until one's ``result()`` raises ``interrupt``
    (at most 20: most replies are read on the caller's thread, the machine allowing); the last future."""
    for _ in range(20):
        fut = f.remote(seconds)
        try:
            assert fut.result(timeout=60) == seconds
        except interrupt:
            break
    return fut


@pytest.fixture
def sigterm_exits():
    """SIGTERM's handler raises SystemExit(143), as a program's own would, for the test."""
    import signal

    def on_term(signum, frame):
        raise SystemExit(143)

    old = signal.signal(signal.SIGTERM, on_term)
    yield
    signal.signal(signal.SIGTERM, old)


def test_a_waiting_callers_thread_reads_its_calls_reply(tmp_path, monkeypatch):
    """A caller blocked on a warm call's future reads the worker's reply itself:
    the dispatcher does not read it and then wake the caller (one thread
    hand-off fewer on the way back). Any thread that waits does; the
    dispatcher reads what nobody waits for."""
    with _local_executor(tmp_path, concurrency=1) as ex:
        threads = []
        original = ex._on_done
        monkeypatch.setattr(ex, "_on_done", lambda inv, result: threads.append(threading.current_thread()) or original(inv, result))
        f = wrenpack.remote(plus_one, executor=ex)
        assert f.remote(0).result(timeout=60) == 1  # (the worker starts)
        assert [f.remote(i).result(timeout=60) for i in range(20)] == list(range(1, 21))
        # (calls that take a few milliseconds: the caller waits before the reply comes, however
        # busy the machine; a reply that came first is read by the dispatcher, which is as right)
        short = wrenpack.remote(nap, executor=ex)
        assert short.remote(0.02).result(timeout=60) == 0.02
        threads.clear()
        assert [short.remote(0.02).result(timeout=60) for _ in range(10)] == [0.02] * 10
        assert threads == [threading.current_thread()] * 10
        # From another thread too; and a future nobody waits on is read by the dispatcher.
        out = []
        t = threading.Thread(target=lambda: out.append((short.remote(0.02).result(timeout=60), threading.current_thread())))
        threads.clear()
        t.start()
        t.join(60)
        assert out and out[0][0] == 0.02 and threads == [out[0][1]]
        threads.clear()
        fut = f.remote(7)
        deadline = time.monotonic() + 60
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fut.result() == 8 and threads and threads[0] is ex.backend._thread
        # The worker's socket went back to the dispatcher each time: a map after it runs as before.
        assert wrenpack.get(f.map(range(30)), progress=False) == list(range(1, 31))


def test_a_timeout_given_to_result_holds_while_the_caller_reads_the_reply(tmp_path):
    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(nap, executor=ex, timeout=30)
        assert f.remote(0).result(timeout=60) == 0
        fut = f.remote(1.0)  # (it ends 1 s after its launch at the earliest: a wait that ignored the 0.4 s ends later than 0.9 s)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.4)
        waited = time.monotonic() - t0
        assert 0.35 <= waited < 0.9, waited
        assert fut.result(timeout=60) == 1.0
        fut = f.remote(0.6)  # longer than one poll by the caller (``_WAIT_HERE_S``): it then waits as before
        assert fut.result(timeout=60) == 0.6


def test_a_call_that_ends_its_worker_while_the_caller_reads_fails_at_once(tmp_path):
    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(plus_one, executor=ex)
        assert f.remote(0).result(timeout=60) == 1
        t0 = time.monotonic()
        with pytest.raises(Exception) as info:
            wrenpack.remote(crash, executor=ex, retries=0).remote(0).result(timeout=60)
        assert time.monotonic() - t0 < 20
        assert "crash" in str(info.value)
        slow = wrenpack.remote(nap, executor=ex, timeout=1)
        t0 = time.monotonic()
        with pytest.raises(wrenpack.TaskTimeout):
            slow.remote(5).result(timeout=60)
        assert time.monotonic() - t0 < 4.5
        assert f.remote(1).result(timeout=60) == 2  # a new worker took over


def test_cancelling_a_call_its_caller_waits_on_stops_it(tmp_path):
    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(nap, executor=ex, timeout=60)
        assert f.remote(0).result(timeout=60) == 0
        fut = f.remote(30)
        threading.Timer(0.5, lambda: wrenpack.cancel([fut])).start()
        t0 = time.monotonic()
        with pytest.raises(wrenpack.CallCancelled):
            fut.result(timeout=60)
        assert time.monotonic() - t0 < 10


def test_threads_waiting_on_their_own_warm_calls_each_get_their_own_result(tmp_path):
    with _local_executor(tmp_path, concurrency=2) as ex:
        f = wrenpack.remote(times_two, executor=ex)
        assert f.remote(1).result(timeout=60) == 2
        errors = []

        def loop(k):
            try:
                for i in range(60):
                    fut = f.remote(k * 1000 + i)
                    assert fut.result(timeout=60) == 2 * (k * 1000 + i)
                    assert fut.result(timeout=60) == 2 * (k * 1000 + i)  # (twice: done, read from the future)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors


def test_get_of_one_warm_call_reads_its_reply_on_the_callers_thread(tmp_path, monkeypatch):
    with _local_executor(tmp_path, concurrency=1) as ex:
        threads = []
        original = ex._on_done
        monkeypatch.setattr(ex, "_on_done", lambda inv, result: threads.append(threading.current_thread()) or original(inv, result))
        f = wrenpack.remote(nap, executor=ex)
        assert wrenpack.get(f.remote(0), timeout=60) == 0
        threads.clear()
        assert [wrenpack.get(f.remote(0.02), timeout=60, progress=False) for _ in range(10)] == [0.02] * 10
        assert threads == [threading.current_thread()] * 10
        slow = wrenpack.remote(nap, executor=ex, timeout=30)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            wrenpack.get(slow.remote(1.0), timeout=0.4)  # (the executor's exit waits for the rest of it)
        assert time.monotonic() - t0 < 0.9


def test_a_caller_that_cannot_watch_the_socket_leaves_it_to_the_dispatcher(tmp_path, monkeypatch):
    """Out of descriptors (``os.dup`` fails): the caller waits as before and the
    dispatcher, which still watches the worker's socket, reads the reply."""
    import types

    from wrenpack.backends.local import scheduler

    def no_dup(fd):
        raise OSError(24, "Too many open files")

    ex = _local_executor(tmp_path, concurrency=1)
    try:
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0).result(timeout=60) == 0
        monkeypatch.setattr(scheduler, "os", types.SimpleNamespace(**{**vars(os), "dup": no_dup}))
        assert [f.remote(0.02).result(timeout=10) for _ in range(3)] == [0.02] * 3
    finally:
        ex.shutdown(wait=False)  # (a reply nobody reads would keep a waiting shutdown forever)


def test_ctrl_c_while_the_caller_completes_its_call_is_raised_after_it(tmp_path, monkeypatch):
    """Ctrl-C that lands while the waiting caller's thread completes its call (the
    reply read there) is raised once the call is complete and the worker given back:
    it was raised inside the completion, which failed the call with it ("wrenpack
    could not complete the call: KeyboardInterrupt") and swallowed the interrupt."""
    import signal

    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0.02).result(timeout=60) == 0.02  # (the worker starts)
        complete = type(ex)._complete
        interrupted = []

        def complete_interrupted(self, inv, result):
            if not interrupted and threading.current_thread() is threading.main_thread():
                interrupted.append(inv.label)
                os.kill(os.getpid(), signal.SIGINT)  # (its handler runs at the next bytecode, in this thread)
            return complete(self, inv, result)

        monkeypatch.setattr(type(ex), "_complete", complete_interrupted)
        fut = _until_interrupted(f, 0.02, KeyboardInterrupt)
        assert interrupted, "no reply was read on the caller's thread in 20 calls"
        assert fut.result(timeout=60) == 0.02  # completed as it ran, not failed with the interrupt
        assert [f.remote(0.01).result(timeout=60) for _ in range(3)] == [0.01] * 3  # its worker goes on


def test_a_sigterm_handlers_exit_while_the_caller_reads_its_reply_comes_after_the_call_completes(tmp_path, monkeypatch, sigterm_exits):
    """A program whose SIGTERM handler raises SystemExit, and whose ``except SystemExit``
    shuts its executor down: a SIGTERM that landed while the waiting caller's thread read
    its call's reply cut the read short, the call never completed, and
    ``shutdown(wait=True)`` waited for it for good (one SIGTERM in ~10 sent to a loop of
    ``.remote(i).result()``). Only SIGINT was held there."""
    import signal

    from wrenpack.backends.local import LocalBackend

    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0.02).result(timeout=60) == 0.02  # (the worker starts)
        read = LocalBackend._read
        interrupted = []

        def read_interrupted(self, worker):
            if not interrupted and threading.current_thread() is threading.main_thread():
                interrupted.append(worker)
                os.kill(os.getpid(), signal.SIGTERM)  # (its handler runs at the next bytecode, in this thread)
            return read(self, worker)

        monkeypatch.setattr(LocalBackend, "_read", read_interrupted)
        fut = _until_interrupted(f, 0.02, SystemExit)
        assert interrupted, "no reply was read on the caller's thread in 20 calls"
        assert fut.done() and fut.result(timeout=0) == 0.02  # completed as it ran
        t0 = time.monotonic()
        ex.shutdown(wait=True)
        assert time.monotonic() - t0 < 10


def test_a_sigterm_handlers_exit_just_before_the_signals_are_held_is_raised_after_the_call_completes(tmp_path,
                                                                                                   monkeypatch,
                                                                                                   sigterm_exits):
    """The reply came and the signals were not held yet: a SystemExit landing there (here:
    as the hold begins) left the worker borrowed and its reply unread for good, and
    ``shutdown(wait=True)`` waited forever (one SIGTERM in ~40 to a loop of ``.remote()``)."""
    import _thread
    import signal

    from wrenpack import interrupts

    with _local_executor(tmp_path, concurrency=1) as ex:
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0.02).result(timeout=60) == 0.02  # (the worker starts)
        enter = interrupts.Held.__enter__
        came = []

        def enter_late(self):
            if not came and threading.current_thread() is threading.main_thread():
                came.append(1)
                _thread.interrupt_main(signal.SIGTERM)  # (its handler runs at the next bytecode: in enter)
            return enter(self)

        monkeypatch.setattr(interrupts.Held, "__enter__", enter_late)
        fut = _until_interrupted(f, 0.02, SystemExit)
        assert came, "no reply was read on the caller's thread in 20 calls"
        assert fut.result(timeout=30) == 0.02  # completed as it ran
        t0 = time.monotonic()
        ex.shutdown(wait=True)
        assert time.monotonic() - t0 < 10


def test_a_signal_that_comes_while_a_jobs_key_is_freed_is_raised_not_lost():
    """Python runs a signal's handler at the first bytecode after the signal, and
    what a finaliser raises is printed and dropped. ``JobKey.__del__`` was the first
    Python code to run after a map's futures were freed, so a SIGTERM handler's
    ``SystemExit`` (or Ctrl-C) that came then was lost and the program went on: about
    one SIGTERM in 20 sent to a loop of 5,000-call maps. Here the signal comes, and
    the last future's key is freed, in C code only (no bytecode between them)."""
    import _thread
    import functools
    import operator
    import signal

    from wrenpack.worker import refs

    class Came(Exception):
        pass

    def handler(signum, frame):
        raise Came

    holder = [refs.JobKey("20260101-000000-cccccccc")]
    refs.remember("20260101-000000-cccccccc", b"s" * 32)
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        # the signal comes (as if from outside: its handler runs at the next bytecode),
        # then the key is freed, in C calls only
        came = functools.partial(_thread.interrupt_main, signal.SIGUSR1)
        with pytest.raises(Came):
            list(map(operator.methodcaller("__call__"), [came, holder.clear]))
        assert holder == []
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert "20260101-000000-cccccccc" not in refs.kept_secrets()  # and its job's secret is forgotten


def test_a_signal_that_comes_while_the_main_thread_waits_for_a_futures_lock_does_not_leave_it_held():
    """``threading.Condition.__enter__`` is Python code, and Python runs a pending signal's
    handler right after the call that took the lock returns: a Ctrl-C that came while the
    main thread waited for the futures' lock was raised inside ``__enter__``, the lock taken
    and never given back, and the collector, completing the next call, waited for it for
    good. Here another thread holds the lock, the signal comes, and the lock is let go."""
    import _thread
    import signal

    from wrenpack import futures
    from wrenpack.futures import WrenFuture

    class Came(Exception):
        pass

    def handler(signum, frame):
        raise Came

    fut = WrenFuture("20260101-000000-dddddddd", "00000", "f")
    waiting = threading.Event()

    def hold_then_signal():
        with futures._LOCK:
            waiting.set()
            time.sleep(0.3)  # (the main thread is blocked taking the lock meanwhile)
            _thread.interrupt_main(signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        holder = threading.Thread(target=hold_then_signal)
        holder.start()
        waiting.wait(10)
        with pytest.raises(Came):
            fut.done()  # (``with self._condition``: the standard library's own method)
        holder.join(10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    free = []
    other = threading.Thread(target=lambda: free.append(futures._LOCK.acquire(timeout=2) and futures._LOCK.release() is None))
    other.start()
    other.join(10)
    assert free == [True], "the futures' lock is still held by the main thread"


def test_ctrl_c_just_after_the_caller_takes_its_workers_socket_leaves_the_call_to_the_dispatcher(tmp_path):
    """Ctrl-C landing as the waiting caller took the worker's socket out of the dispatcher's
    selector (before its wait began) left it out for good: the reply was never read and the
    call never ended (a program's ``shutdown(wait=True)`` after Ctrl-C hung, ~1 in 60)."""
    import _thread
    import signal

    ex = _local_executor(tmp_path, concurrency=1)
    try:  # (not ``with``: its shutdown(wait=True) waited for good for a call whose reply nobody read)
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0.02).result(timeout=60) == 0.02  # (the worker starts)
        backend = ex.backend
        unregister = backend._selector.unregister
        came = []

        def unregister_interrupted(sock):
            key = unregister(sock)
            if not came and threading.current_thread() is threading.main_thread():
                came.append(1)
                _thread.interrupt_main(signal.SIGINT)  # (its handler runs at the next bytecode)
            return key

        backend._selector.unregister = unregister_interrupted
        try:
            fut = _until_interrupted(f, 0.05, KeyboardInterrupt)
        finally:
            backend._selector.unregister = unregister
        assert came, "the caller's thread never waited for a reply in 20 calls"
        assert fut.result(timeout=30) == 0.05  # its reply read by the dispatcher
        assert f.remote(0.01).result(timeout=60) == 0.01
    finally:
        ex.shutdown(wait=False)


def test_ctrl_c_between_handing_a_call_to_a_worker_and_sending_it_does_not_strand_it(tmp_path):
    """``.remote()`` hands its call to an idle worker from the caller's thread, then writes
    it. Ctrl-C (or a SIGTERM handler's SystemExit) landing in between left the bytes in the
    worker's buffer, never watched, so the worker never got them and ``shutdown(wait=True)``
    waited for the call for good (~1 SIGTERM in 40 to a loop of ``.remote()``)."""
    import _thread
    import signal

    from wrenpack.backends.local import LocalBackend

    ex = _local_executor(tmp_path, concurrency=1)
    try:
        f = wrenpack.remote(nap, executor=ex)
        assert f.remote(0.02).result(timeout=60) == 0.02  # (the worker starts)
        send_to_idle = LocalBackend._send_to_idle
        came = []

        def send_then_interrupt(self, flush=True):
            out = send_to_idle(self, flush=flush)
            if out[0] and not came and threading.current_thread() is threading.main_thread():
                came.append(1)
                _thread.interrupt_main(signal.SIGINT)  # (its handler runs at the next bytecode)
            return out

        ex.backend._send_to_idle = send_then_interrupt.__get__(ex.backend)
        for _ in range(20):
            try:
                f.remote(0.01).result(timeout=60)
            except KeyboardInterrupt:
                break
        del ex.backend._send_to_idle
        assert came, "no call was handed to an idle worker from this thread in 20 calls"
        ended = threading.Thread(target=ex.shutdown, kwargs={"wait": True}, daemon=True)
        ended.start()
        ended.join(20)
        assert not ended.is_alive(), "shutdown(wait=True) waits for a call its worker never got"
    finally:
        ex.shutdown(wait=False)
