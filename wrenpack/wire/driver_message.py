"""The driver's message to a local worker: one or more calls to run in order
(the header of a ``wire.frames`` message; its blob is empty).

::

    {"calls": [{"event": {...}, "timeout_s": s, "fd": n},     the first call's event whole, or
               {"last": true, "changed": {...}, "gone": [...], "timeout_s": s, "fd": n},
                                                 what differs from the previous message's first event
               {"changed": {...}, "gone": [...], "timeout_s": s, "fd": n}, ...],   later ones: what differs
               (a call may add "ahead": true: sent ahead of the running call's end, see below)
     "limits": [memory_mb, timeout_s, ephemeral_storage_mb],   only when they change
     "reply_limit": bytes, "handoff": bytes}                   optional; given to every call's event

A call ``{"fd": n}`` takes the next n descriptors the worker received (its
arguments' memfds, ``wire.handoff``). The events of one map share nearly every
field, so later calls carry only what differs from the first call's event: the
message is encoded and decoded in a fraction of the time. So do the events of
one function's single calls (``.remote()`` in a loop: a job each, whose id,
secret, arguments and owner record change, not its function, store or domain):
a message's first call may carry only what differs from the first event of the
message before it on the same socket (``"last"``), which the worker keeps
(``Decoder``).

A call marked ``"ahead"`` was sent while the worker still ran another call
(``LocalBackend._prefetch_at``), and the driver may take it back until it
starts: it wrote one byte to the worker's *ahead pipe* when it sent it, and
the worker reads a byte from that pipe before it starts the call. The driver
takes a call back by reading that byte itself (``Worker.recall``): exactly one
of the two reads gets it, so the call runs where it was sent, or the worker
answers ``{"withdrawn": true}`` (``worker_reply.withdrawn``) without running
it and the driver sends it elsewhere.

The header is ``marshal`` (a fifth of JSON's time to write, a third to read,
on every call; marshal makes only plain values, and no code runs when it
loads). The worker runs the code its driver sends, so reading the driver's
header with marshal exposes nothing. Headers hold only JSON's values (lists,
never tuples; text keys), so a worker reads the same event Lambda would
(tests/test_worker_wire.py holds every message to that).
Standard library only: the worker imports this.
"""
from __future__ import annotations

import marshal
from typing import Any, Iterator

#: The message header's fields and encoding; a change of either is a new version (tests/test_wire_golden.py).
VERSION = 3


def calls(items: list[tuple[dict[str, Any], float, int]], last: dict[str, Any] | None = None,
          ahead: bool = False) -> list[dict[str, Any]]:
    """The message's calls from ``(event, timeout_s, descriptors)`` each: the
    first event whole, each later one as what differs from the first.
    ``last``: the first event of the previous message to the same worker
    (``Decoder`` keeps it there): the first event is then sent as what differs
    from it, unless most of it does. ``ahead``: the one call is sent ahead of
    the running call's end (the worker claims it from the ahead pipe first)."""
    base = items[0][0]
    first: dict[str, Any] = {"event": base}
    if last is not None:
        item = _diff(base, last)
        if len(item["changed"]) + len(item.get("gone", ())) <= len(base) // 2:
            first = dict(item, last=True)
    out: list[dict[str, Any]] = [_call(first, *items[0][1:])]
    for event, timeout_s, nfds in items[1:]:
        out.append(_call(_diff(event, base), timeout_s, nfds))
    if ahead:
        if len(out) != 1:
            raise ValueError("only a message of one call is sent ahead")
        out[0]["ahead"] = True
    return out


def _diff(event: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"changed": {k: v for k, v in event.items() if k not in base or base[k] != v}}
    gone = [k for k in base if k not in event]
    if gone:
        item["gone"] = gone
    return item


def _call(call: dict[str, Any], timeout_s: float, nfds: int) -> dict[str, Any]:
    call["timeout_s"] = timeout_s
    if nfds:
        call["fd"] = nfds  # the arguments' memfds come with the message
    return call


def message(calls: list[dict[str, Any]], limits: list[Any] | None = None, reply_limit: int | None = None,
            handoff: int | None = None) -> dict[str, Any]:
    """The header: ``calls`` (``calls()``), the limits if they changed, and
    ``reply_limit``/``handoff`` if given (the events' fields of those names)."""
    msg: dict[str, Any] = {"calls": calls}
    if limits is not None:
        msg["limits"] = limits
    if reply_limit:
        msg["reply_limit"] = reply_limit
    if handoff is not None:
        msg["handoff"] = handoff
    return msg


class Decoder:
    """A worker's reading of its driver's messages: it keeps the first event of
    the last one, which the next message's first call may be relative to."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None

    def events(self, msg: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        return events(msg, self)


def events(msg: dict[str, Any], decoder: Decoder | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each call of a message with its whole event, as the handler gets it
    (``decoder``: the worker's, for a first call relative to the message before)."""
    reply_limit = msg.get("reply_limit")
    handoff = msg.get("handoff")
    base: dict[str, Any] = {}
    for i, call in enumerate(msg["calls"]):
        if "event" in call:
            event = call["event"]
            base = dict(event)  # the handler may add to its event
        else:
            if call.get("last"):
                if decoder is None or decoder.last is None:
                    raise ValueError("a call relative to an earlier message came first")
                base = decoder.last
            event = dict(base, **call["changed"])
            for name in call.get("gone", ()):
                event.pop(name, None)
            if call.get("last"):
                base = dict(event)
        if i == 0 and decoder is not None:
            decoder.last = base
        if reply_limit:
            event["reply_limit"] = reply_limit
        if handoff is not None:
            event["handoff"] = handoff
        yield call, event


def dumps(msg: dict[str, Any]) -> bytes:
    """The header's bytes."""
    return marshal.dumps(msg)


def loads(data: bytes) -> dict[str, Any]:
    """A header ``dumps`` wrote."""
    return marshal.loads(data)
