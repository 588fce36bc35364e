"""The local worker reads the driver's messages in as few reads as they allow
(issue 15), whatever the chunks they arrive in, with their descriptors in order."""
from __future__ import annotations

import array
import os
import socket
import threading

from wrenpack.backends.local_worker import encode
from wrenpack.worker.local_main import _Reader


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
