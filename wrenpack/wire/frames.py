"""Local frames: how the driver and a local worker talk over their private socketpair.

Both ways, a message is ``>II`` (header length, blob length), the header
(``wire.driver_message`` one way, ``wire.worker_reply`` the other), then the
blob (an outcome's or result object's bytes, or empty). Descriptors (sealed
memfds, ``wire.handoff``) travel with SCM_RIGHTS on a message's first bytes,
in order: whoever reads takes them oldest first (the headers say how many).

The driver writes from a non-blocking buffer (``send_with_fds`` at the byte
its descriptors go with) and reads with ``recv`` + ``next_frame``; the worker
writes with ``send`` and reads with ``Reader``. Standard library only: the
worker imports this.
"""
from __future__ import annotations

import array
import socket
import struct
from typing import Any, MutableSequence

#: The framing; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1
FRAME = struct.Struct(">II")
#: room for the descriptors that arrive with one read
ANCILLARY = socket.CMSG_SPACE(256 * 4)
#: descriptors per sendmsg (the kernel's SCM_MAX_FD is 253)
FDS_PER_SEND = 200


def encode(head: bytes, blob: bytes = b"") -> bytes:
    """One message: its header's bytes and its blob, framed."""
    return FRAME.pack(len(head), len(blob)) + head + blob


def next_frame(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, int] | None:
    """Where the message at ``pos`` of ``buf`` has its header, its blob and its
    end (``buf[head:blob]``, ``buf[blob:end]``); None until all of it is there."""
    if len(buf) - pos < FRAME.size:
        return None
    hlen, blen = FRAME.unpack_from(buf, pos)
    head = pos + FRAME.size
    end = head + hlen + blen
    if len(buf) < end:
        return None
    return head, head + hlen, end


def recv(sock: socket.socket, view: memoryview, fds: MutableSequence[int]) -> int:
    """One read into ``view``; the descriptors that came with it are appended
    to ``fds``. Bytes read (0: end of stream); a non-blocking socket's
    ``BlockingIOError`` passes through."""
    n, ancdata, _flags, _addr = sock.recvmsg_into([view], ANCILLARY)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(data[: len(data) - len(data) % got.itemsize])
            fds.extend(got)
    return n


def send_with_fds(sock: socket.socket, data: Any, fds: list[int]) -> int:
    """Send ``data`` (bytes or a view) with ``fds`` on its first byte; bytes sent."""
    return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def send(sock: socket.socket, head: bytes, blob: bytes = b"", fd: int | None = None) -> None:
    """Send one message on a blocking socket, with ``fd`` if given."""
    msg = encode(head, blob)
    if fd is not None:
        msg = msg[send_with_fds(sock, msg, [fd]):]  # the descriptor goes with the first bytes; the rest as usual
    if msg:
        sock.sendall(msg)


class Reader:
    """Messages from a blocking socket as they come: one read for most (a read
    of the header and then of the body cost a system call more, on every call).
    Descriptors are appended to ``fds`` as they are read, so each message's
    reader still takes the oldest ones; a message read ahead only brings its
    own early."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.view = memoryview(bytearray(1 << 16))

    def next(self, fds: MutableSequence[int]) -> tuple[bytes, bytes] | None:
        """The next message's (header, blob); None at end of stream."""
        buf = self.buf
        while True:
            spans = next_frame(buf)
            if spans is not None:
                head, blob, end = spans
                out = bytes(buf[head:blob]), bytes(buf[blob:end])
                del buf[:end]
                return out
            k = recv(self.sock, self.view, fds)
            if not k:
                return None
            if not buf:
                # A whole message in the read (most are): taken from the read's buffer, not copied through ours.
                view = self.view[:k]
                spans = next_frame(view)
                if spans is not None:
                    head, blob, end = spans
                    out = bytes(view[head:blob]), bytes(view[blob:end])
                    if end < k:
                        buf += view[end:]
                    return out
            buf += self.view[:k]
