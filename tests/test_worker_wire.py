"""The local worker reads the driver's messages in as few reads as they allow,
whatever the chunks they arrive in, with their descriptors in order."""
from __future__ import annotations

import array
import os
import socket
import threading

import pytest

from wrenpack.wire import driver_message, frames, worker_reply


def encode(head: dict) -> bytes:
    """A driver's message, as the driver frames it."""
    return frames.encode(driver_message.dumps(head))


class _Reader(frames.Reader):
    """The worker's reader, giving each message's header as the worker reads it."""

    def next(self, fds):
        got = super().next(fds)
        return None if got is None else driver_message.loads(got[0])


def test_messages_split_and_joined_any_way_come_out_whole():
    msgs = [{"n": i, "pad": "x" * (i * 700)} for i in range(12)]
    wire = b"".join(encode(m) for m in msgs)
    for cut in (1, 7, 4096, 30_000, len(wire)):  # a header split; several messages in one read
        a, b = socket.socketpair()

        def write(a=a, cut=cut):
            for i in range(0, len(wire), cut):
                a.sendall(wire[i : i + cut])
            a.close()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            reader, fds, got = _Reader(b), [], []
            while (head := reader.next(fds)) is not None:
                got.append(head)
            assert got == msgs
        finally:
            writer.join()
            b.close()


def test_descriptors_stay_in_order_with_their_messages():
    a, b = socket.socketpair()
    files = [os.memfd_create(f"t{i}") for i in range(3)]
    try:
        for i, fd in enumerate(files):
            os.write(fd, b"%d" % i)
            msg = encode({"calls": [{"fd": 1}], "i": i})
            a.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        a.close()
        reader = _Reader(b)
        fds: list[int] = []
        for i in range(3):
            head = reader.next(fds)
            assert head["i"] == i
            got = fds.pop(0)  # the call takes the oldest descriptor: its own
            assert os.pread(got, 8, 0) == b"%d" % i
            os.close(got)
        assert reader.next(fds) is None  # end of stream
        assert fds == []
    finally:
        for fd in files:
            os.close(fd)
        b.close()


def _json_shaped(head: dict) -> None:
    import json

    assert repr(json.loads(json.dumps(head))) == repr(head), head


def _every_kind_of_call(tmp_path) -> None:
    """Calls whose messages and replies take every shape: one call, a map,
    groups, hand-off memfds, a future inside the arguments, an exception."""
    import wrenpack

    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2)
    try:
        f = wrenpack.remote(_twice, executor=ex, env={"A": "1"})
        assert f.remote(2).result(timeout=60) == 4
        assert wrenpack.get(f.map(range(20))) == [2 * i for i in range(20)]
        assert wrenpack.get(f.map(range(6), chunksize=3)) == [2 * i for i in range(6)]
        assert f.remote(b"x" * (3 << 20)).result(timeout=60) == b"x" * (6 << 20)  # hand-off memfds
        inner = f.remote(5)
        assert wrenpack.remote(_result_of, executor=ex).remote(inner).result(timeout=60) == 10  # a future inside
        with pytest.raises(ZeroDivisionError):
            wrenpack.remote(_divide, executor=ex).remote(0).result(timeout=60)
    finally:
        ex.shutdown()


def test_every_message_to_a_worker_is_what_json_would_carry(tmp_path, monkeypatch):
    """Messages travel in marshal, which keeps tuples and any key: the driver must
    build them from JSON's values only, so a local worker sees Lambda's event."""
    seen = []
    real = driver_message.dumps

    def strict(head):
        seen.append(head)
        _json_shaped(head)
        return real(head)

    monkeypatch.setattr(driver_message, "dumps", strict)
    _every_kind_of_call(tmp_path)
    assert len(seen) >= 5


def _twice(x):
    return x * 2


def _result_of(fut):
    return fut.result(timeout=60)


def test_every_reply_from_a_worker_is_what_json_would_carry(tmp_path, monkeypatch):
    """Replies travel in marshal too: the worker must build them from
    JSON's values only, so a status is the same whether it came in a reply or in
    a stored result object (whose status is JSON), and only dicts are accepted."""
    import marshal

    seen = []
    real = worker_reply.loads

    def strict(data):
        head = real(data)
        seen.append(head)
        _json_shaped(head)
        return head

    monkeypatch.setattr(worker_reply, "loads", strict)
    _every_kind_of_call(tmp_path)
    assert any("ready" in head for head in seen) and any("outcome" in head for head in seen)
    assert any("handoff" in head for head in seen)
    with pytest.raises(ValueError, match="not a dict"):
        real(marshal.dumps([1, 2]))


def _divide(x):
    return 1 / x
