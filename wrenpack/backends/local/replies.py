"""The local backend's reply readers: outcomes that come back over a worker's
private socketpair, small ones as their pickle, large ones as a sealed memfd.

Neither carries a MAC, and neither needs one: the socketpair is made by the
local backend for one worker process (``socket.socketpair``, passed to that
child alone; never a path, a port, the store or a network), so what arrives on
it was written by that worker. Whoever runs in that process already holds the
job's secret (it came in the event) and could seal anything it liked, so a MAC
made there proves nothing the channel does not; a MAC guards objects someone
else could plant or alter, in the store or on the way from Lambda, and nothing
on this path passes through either. Replies are matched to calls by their
order on that one channel, as the status and the hand-off memfds
(``wrenpack.worker.handoff``) already are. What leaves the driver again is
sealed by the executor (a pinned job's result goes to the store as a sealed
result object).
"""
from __future__ import annotations

from typing import Any

from wrenpack.wire.outcome import Outcome, loads_outcome
from wrenpack.backends.base import Invocation, PrivateReply
from wrenpack.worker import handoff


def read_pickled(label: str, raw: bytes) -> Outcome:
    """A small outcome's pickle, as the worker sent it."""
    return loads_outcome(raw, f"result of {label}")


def read_handed_off(inv: Invocation, sealed: handoff.Sealed) -> Outcome:
    """A result handed over as a sealed memfd, or in the memfd the call was
    given for it: checked, copied out and closed here."""
    fd, sealed.fd = sealed.fd, None
    what = f"result of {inv.label}"
    slab = inv.handoff.slab if inv.handoff is not None else None
    if inv.handoff is not None and isinstance(sealed.layout, dict):
        inv.handoff.result_size = int(sealed.layout.get("size") or 0)  # how large a slab the next calls get
    return handoff.load(fd, sealed.layout, what, private=False, own=slab.fd if slab is not None else None,
                        loads=lambda stream, buffers: loads_outcome(stream, what, buffers))


class PickledOutcome(PrivateReply):
    """A small outcome: its pickle came whole in the reply."""

    def __init__(self, label: str, raw: bytes) -> None:
        self.label, self.raw = label, raw

    @property
    def size(self) -> int:
        return len(self.raw)

    def read(self) -> tuple[Outcome, bytes]:
        return read_pickled(self.label, self.raw), self.raw


class HandedOff(PrivateReply):
    """A large result in a sealed memfd: read on a reader thread, copied out,
    and closed at once (the worker's cgroup is charged for its pages until then)."""

    slow = True

    def __init__(self, inv: Invocation, sealed: Any) -> None:
        self.inv, self.sealed = inv, sealed

    def read(self) -> tuple[Outcome, None]:
        return read_handed_off(self.inv, self.sealed), None

    def close(self) -> None:
        self.sealed.close()
