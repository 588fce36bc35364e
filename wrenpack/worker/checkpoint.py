"""Checkpoint splitting: a call longer than its time limit finishes anyway.

The user's function stays a plain loop::

    def simulate(n):
        ckpt = wrenpack.checkpoint()
        state = ckpt.restore(default={"i": 0, "x": 0.0})   # the saved state, or the default
        while state["i"] < n:
            state["x"] += step(state["i"])
            state["i"] += 1
            ckpt.offer(state)          # nearly free; saves only when time is short
        return state["x"]

``offer`` times the steps between offers. Only when the time left before the
deadline falls below what the next step plus a save are expected to take
does it pickle the state, write it to the store and end the invocation
(raising ``SegmentDone``, which the handler catches); in a first segment, with
no save timed yet, one save halfway through times it (``TIMING_SAVE_AT``). The client then launches
the same call again; ``restore`` returns the saved state, and the loop goes
on where it stopped. A worker that dies, or a segment that overruns after a
save, resumes from the last saved state. Checkpoints are removed when the
call completes. A checkpoint is sealed with the job's secret as this call's
and this segment's (its format: ``wrenpack.wire.checkpoint``), so a planted or
moved one fails with ``CorruptObject`` before anything is unpickled. Standard library and cloudpickle only: this runs in the worker.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import cloudpickle

from wrenpack import keys
from wrenpack.errors import CorruptObject, ObjectNotFound, SerializationError
from wrenpack.wire.checkpoint import open_checkpoint, seal_checkpoint
from wrenpack.worker import refs

log = logging.getLogger(__name__)

#: How much longer than the slowest recent step (and the last save) to allow.
SAFETY = 1.5
#: A save's cost before one has been measured: seconds.
FIRST_SAVE_GUESS = 0.05
#: With no save timed yet (a call's first segment), the first offer after this
#: fraction of the segment's time saves once without ending the segment: the
#: time the save took then says when the last save must begin. A state slower
#: to save than the guess (hundreds of MB) otherwise began its only save too
#: late and was stopped by the deadline halfway. Calls that end sooner save nothing.
TIMING_SAVE_AT = 0.5


class SegmentDone(BaseException):
    """Ends an invocation after its state was saved (not an error)."""


#: What a call of a group (``chunksize``: several calls in one invocation, one
#: checkpoint key) saves around its state: the tag, its index in the group, the state.
_ITEM_TAG = "wrenpack.checkpoint.item"


def dumps_state(state: Any) -> bytes:
    """The pickle of a checkpoint's ``state``; one that cannot be pickled is a
    ``SerializationError`` naming the checkpoint and the fix (the pickler's own
    error, raised from inside ``offer``, named neither; the client adds the call's name)."""
    try:
        with refs.sealing_scope():  # futures in the state carry no secret into the store
            return cloudpickle.dumps(state)
    except Exception as exc:  # noqa: BLE001 - whatever the pickler raises
        what = type(state[2] if isinstance(state, tuple) and len(state) == 3 and state[0] == _ITEM_TAG else state).__name__
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise SerializationError(
            f"the checkpoint state (a {what}) could not be pickled ({type(exc).__name__}: {reason}); "
            "offer plain data (numbers, text, lists, dicts, arrays) and rebuild the rest after restore()"
        ) from None


def encode(state: Any, secret: bytes, job_id: str, call_id: str, segment: int) -> bytes:
    """The sealed checkpoint of ``state``, saved in ``segment`` (``wire.checkpoint``)."""
    return seal_checkpoint(secret, job_id, call_id, segment, dumps_state(state))


def decode(blob: bytes, secret: bytes, job_id: str, call_id: str, segment: int, label: str) -> Any:
    """Verify, then unpickle. Only a checkpoint this call saved in this segment or
    the one before (the latest save, whatever retries happened) is accepted."""
    data = open_checkpoint(secret, job_id, call_id, segment, blob)
    try:
        return cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001
        raise CorruptObject(f"the checkpoint of {label} is authentic but cannot be unpickled ({type(exc).__name__}: {exc}); re-run") from None


class Checkpoint:
    """The checkpoint of the running call (or a no-op one outside a remote call)."""

    def __init__(self, store: Any = None, key: str | None = None, deadline_fn: Any = None, label: str = "call",
                 learned: dict[str, float] | None = None, event: Any = None) -> None:
        self._store = store
        self._key = key
        self._event = event  # the wire.event.Event of the running call: secret, job, call, segment
        self._deadline_fn = deadline_fn
        self.label = label
        self._last = time.perf_counter()
        self._steps: deque[float] = deque(maxlen=8)
        learned = learned or {}
        self.save_s = float(learned.get("save_s", FIRST_SAVE_GUESS))
        #: whether a save has been timed (in an earlier segment, or in this one)
        self._save_timed = "save_s" in learned
        self._begun = time.time()
        self.step_s = float(learned.get("step_s", 0.0))
        self.restored = False
        self.saves = 0
        self.state_bytes = 0
        self.used = False
        #: the index of the running call in its group (``begin_item``); None: not in a group
        self.item: int | None = None

    def begin_item(self, index: int) -> None:
        """The group's call ``index`` begins (``chunksize``: the calls of a group run
        one after the other in one invocation and share its checkpoint key). Its
        saves are tagged with the index and its ``restore`` returns only a state
        saved under it: the next segment runs the group again from its first call,
        which must not resume from the state another call saved. (The calls before
        the one that saved run again: a group's calls are not kept between segments.)"""
        self.item = index
        self._last = time.perf_counter()
        self._steps.clear()

    def _wrap(self, state: Any) -> Any:
        """What is pickled for ``state``: tagged with the call's index in its group."""
        return state if self.item is None else (_ITEM_TAG, self.item, state)

    def _unwrap(self, loaded: Any, default: Any) -> Any:
        """The state saved for the running call, else ``default`` (another call of
        the group saved it: this one starts afresh; ``restored`` stays as it was)."""
        if self.item is None:
            self.restored = True
            return loaded
        if isinstance(loaded, tuple) and len(loaded) == 3 and loaded[0] == _ITEM_TAG and loaded[1] == self.item:
            self.restored = True
            return loaded[2]
        return default

    @property
    def active(self) -> bool:
        """True inside a remote call that can be split."""
        return self._store is not None

    def restore(self, default: Any = None) -> Any:
        """The state saved by an earlier segment of this call, else ``default``."""
        self.used = True
        self._last = time.perf_counter()
        if not self.active or self._key is None:
            return default
        try:
            blob = self._store.get(self._key)
        except ObjectNotFound:
            return default
        ev = self._event
        return self._unwrap(decode(blob, ev.secret, ev.job_id, ev.call_id, ev.segment, self.label), default)

    def time_left(self) -> float:
        deadline = self._deadline_fn() if self._deadline_fn else None
        return float("inf") if deadline is None else deadline - time.time()

    def offer(self, state: Any) -> None:
        """Offer the loop's state at a safe point; saves and ends the segment only when due."""
        now = time.perf_counter()
        step = now - self._last
        self._last = now
        self._steps.append(step)
        if not self.active:
            return
        expected_step = max(max(self._steps), self.step_s)
        left = self.time_left()
        if left > SAFETY * (expected_step + self.save_s) + 0.02:
            if not self._save_timed and self._deadline_fn is not None:
                deadline = self._deadline_fn()
                if deadline is not None and left < TIMING_SAVE_AT * (deadline - self._begun):
                    self.save(state)  # timed (``save_s``); the segment goes on
                    self._save_timed = True
            return
        self.save(state)
        raise SegmentDone()

    def save(self, state: Any) -> None:
        """Save now (``offer`` calls this when a save is due)."""
        self.used = True
        if not self.active or self._key is None:
            return
        t0 = time.perf_counter()
        ev = self._event
        blob = encode(self._wrap(state), ev.secret, ev.job_id, ev.call_id, ev.segment)
        self._store.put(self._key, blob)
        self.save_s = time.perf_counter() - t0
        self.saves += 1
        self.state_bytes = len(blob)
        self._last = time.perf_counter()

    def stats(self) -> dict[str, float]:
        return {
            "saves": self.saves,
            "save_s": round(self.save_s, 6),
            "step_s": round(max(self._steps) if self._steps else self.step_s, 6),
            "state_bytes": self.state_bytes,
            "restored": self.restored,
        }


_current: Checkpoint | None = None


def begin(ev: Any, store: Any, deadline_fn: Any) -> Checkpoint:
    """Set up the checkpoint of the call the handler is about to run (``ev``: its ``wire.event.Event``)."""
    global _current
    _current = Checkpoint(
        store,
        keys.checkpoint_key(ev.job_id, ev.call_id),
        deadline_fn,
        label=ev.label,
        learned=ev.checkpoint or {},
        event=ev,
    )
    return _current


def begin_with(ckpt: Checkpoint) -> Checkpoint:
    """Make ``ckpt`` the running call's checkpoint (a job's child: one whose
    saves and restores go through the parent, which holds the secret)."""
    global _current
    _current = ckpt
    return ckpt


def end() -> None:
    global _current
    _current = None


def checkpoint() -> Checkpoint:
    """The running call's checkpoint; outside a remote call, one that never saves."""
    return _current if _current is not None else Checkpoint()
