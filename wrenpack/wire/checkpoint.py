"""The checkpoint record: a call's saved state, for its next segment.

``b"WRCK3"`` + the save's place (three 4-byte big-endian numbers: the segment
and attempt of the invocation that saved it, and the save's number among that
invocation's saves, 1, 2, ...) + the state's pickle, sealed with the job's
secret as that call's checkpoint of that segment (``wrenpack.auth``), at
``keys.checkpoint_key``. Pickling the state is ``wrenpack.worker.checkpoint``'s
(futures inside it carry no secret); this module frames, seals and verifies
the bytes, and says which save an invocation may resume from (``Saves``).
Standard library only: the worker imports this.

Why the place: a call saves at one key, again and again (a first segment saves
twice: once halfway, to time a save, then at its end), and every save is sealed
for that call. Sealing alone let whoever can write to the store copy an earlier
save back over the latest, and the next segment resumed from the older state:
steps, and their side effects, ran twice. Now the invocation that saved reports
its last save's place in its status (the segment record the driver verifies),
the driver sends it in the next event (``ckpt_from``), and only that save is
accepted.
"""
from __future__ import annotations

import struct
from typing import Any

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject, ProtocolError

#: The checkpoint's layout (the digit in its magic); a change of it is a new version (tests/test_wire_golden.py).
VERSION = 3
MAGIC = b"WRCK3"
_PLACE = struct.Struct(">III")
_HEAD = len(MAGIC) + _PLACE.size
_MAX = 2**32 - 1

#: A save's place: (segment, attempt, number) of the invocation that made it.
Place = tuple[int, int, int]


def seal_checkpoint(secret: bytes, job_id: str, call_id: str, place: Place, state: bytes) -> bytes:
    """The sealed checkpoint of ``state`` (a pickle), the save at ``place``."""
    head = MAGIC + _PLACE.pack(*place)
    return auth.seal_parts(secret, keys.identity(job_id, "checkpoint", call_id, place[0]), head, state)


def open_checkpoint(secret: bytes, job_id: str, call_id: str, blob: bytes) -> tuple[Place, memoryview]:
    """The place and the state's pickle of a checkpoint this call saved, once verified;
    anything else is ``CorruptObject``, nothing unpickled. Which save may be resumed
    from is ``Saves.open``'s to say."""
    key = keys.checkpoint_key(job_id, call_id)
    if blob.startswith(MAGIC) and len(blob) >= _HEAD:
        place: Place = _PLACE.unpack(blob[len(MAGIC) : _HEAD])
    else:
        place = (0, 0, 0)  # (not a checkpoint of this layout: fails the check below with the one-line message)
    data = auth.unseal_view(secret, keys.identity(job_id, "checkpoint", call_id, place[0]), blob, key)
    return place, data[_HEAD:]


def describe(place: Place) -> str:
    """A save's place in words (for messages)."""
    segment, attempt, number = place
    return f"save {number} of segment {segment}" + (f" (attempt {attempt})" if attempt else "")


def check_from(value: Any) -> Place | None:
    """The event's ``ckpt_from`` (None, or ``[segment, attempt, number]``), checked; ``ProtocolError`` if malformed."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 3
            and all(type(n) is int and 0 <= n <= _MAX for n in value) and value[2] >= 1):
        raise ProtocolError("the event's ckpt_from must be [segment, attempt, save number]; invoke through wrenpack")
    return (value[0], value[1], value[2])


class Saves:
    """One invocation's checkpoint: its saves' places, and which saved checkpoint it
    may resume from. Sealing and opening go through here (in the worker's process
    that holds the secret: the handler, or a job's parent for its child), so the
    count is of the saves that were written, whatever the call's code reports.

    Accepted, before this invocation saved: the save at ``resume_from`` (the last
    save the driver learned of, from the authenticated status of the invocation that
    made it), or a save of an earlier attempt of this segment that the driver never
    heard the end of (a worker that died, an invocation stopped at Lambda's limit,
    a reply that was lost: the next attempt goes on from what it saved, as before).
    After its own first save: only its own latest save. Anything else, an earlier
    authentic save copied back over the latest included, is ``CorruptObject``."""

    def __init__(self, secret: bytes, job_id: str, call_id: str, segment: int, attempt: int,
                 resume_from: Place | None) -> None:
        self.secret, self.job_id, self.call_id = secret, job_id, call_id
        self.segment, self.attempt = segment, attempt
        self.resume_from = resume_from
        #: this invocation's last save that was written (None: none yet)
        self.last: Place | None = None

    @classmethod
    def of(cls, ev: Any) -> "Saves":
        """For the invocation of ``ev`` (a ``wire.event.Event``)."""
        return cls(ev.secret, ev.job_id, ev.call_id, int(ev.segment or 0), int(ev.attempt or 0),
                   check_from(ev.extra.get("ckpt_from")))

    def next_place(self) -> Place:
        return (self.segment, self.attempt, (self.last[2] if self.last is not None else 0) + 1)

    def seal(self, state: bytes) -> tuple[Place, bytes]:
        """The next save's place and sealed bytes; ``saved(place)`` once it is written."""
        place = self.next_place()
        return place, seal_checkpoint(self.secret, self.job_id, self.call_id, place, state)

    def saved(self, place: Place) -> None:
        """The save at ``place`` was written. (A put that failed is not counted: the
        next save takes its number, and overwrites it if it was written after all.)"""
        self.last = place

    def accepts(self, place: Place) -> bool:
        if self.last is not None:
            return place == self.last
        if place == self.resume_from:
            return True
        segment, attempt, _number = place
        if segment != self.segment or attempt >= self.attempt:
            return False
        # an earlier attempt of this segment, after the last one the driver heard the end of
        known = self.resume_from
        return known is None or known[0] != segment or attempt > known[1]

    def open(self, blob: bytes) -> memoryview:
        """The state's pickle of ``blob`` if it is the save this invocation may resume from."""
        place, data = open_checkpoint(self.secret, self.job_id, self.call_id, blob)
        if not self.accepts(place):
            key = keys.checkpoint_key(self.job_id, self.call_id)
            latest = self.last if self.last is not None else self.resume_from
            want = f"not the latest save of this call, {describe(latest)}" if latest is not None else \
                "where this invocation of the call expects none"
            raise CorruptObject(
                f"{key} is {describe(place)}, {want}: an earlier checkpoint of the call, or another "
                "invocation's, was put in its place; refused, nothing was unpickled; re-run the call")
        return data
