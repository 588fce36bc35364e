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
and this segment's, with its place among the call's saves (its format and which
save is accepted: ``wrenpack.wire.checkpoint``), so a planted or moved one, or an
earlier save copied back over the latest, fails with ``CorruptObject`` before
anything is unpickled. Standard library and cloudpickle only: this runs in the worker.

One loop owns a call's checkpoint: a saved state is tagged with the code that
restored it (``_OWNER_TAG``), and a restore by other code (a second loop, a helper
that checkpoints too), or by a new run of the same code in a segment (the helper
called again), is refused in one line rather than resuming from another loop's
state; the run that saved may read its save back. A save that ends the
segment in any thread ends it for the call (``Checkpoint.ended``). A save that the
last one measured cannot finish before the deadline is not begun (``SaveTooLate``).

A loop that cannot finish is stopped rather than re-run segment after
segment, each one the whole timeout (on Lambda a paid invocation of up to
15 minutes). A save in a later segment that never called ``restore`` fails
at once (``_check_progress``). A loop that calls it but goes on from
something else (``ckpt.restore(default=0)`` on a line of its own, then
``for i in range(n): ... ckpt.offer(i)``), or whose state never changes,
begins every segment from the same state: the first state a call offers in
a segment is fingerprinted (a hash of its pickle, streamed: no copy is
kept; in a group, per call), the fingerprint goes to the next segment with
what it learned (``LEARNED``), and the ``STUCK_REPEATS``-th segment in a row
to begin from the state the segment before began from fails with a one-line
``TaskError`` at that first offer, a moment in. (Comparing what consecutive
segments saved at their ends misses the common case: a loop that starts
over ends wherever the deadline finds it, rarely twice on the same step.)
A state that is never the same twice (a clock, an unseeded random generator
in it) is not caught so: ``MAX_SEGMENTS``, checked by the client, bounds
every call.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any

import cloudpickle

from wrenpack import keys
from wrenpack.limits import integral
from wrenpack.errors import ConfigError, ConfigTypeError, CorruptObject, ObjectNotFound, SerializationError, TaskError, exc_text
from wrenpack.wire.checkpoint import Place, Saves, seal_checkpoint
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
#: A later segment that ran out of time before it saved (a step longer than the time
#: left, or only a busy machine that kept the process from the CPU as its last save
#: was due) runs again from the checkpoint the segment before saved, this many times,
#: before its call fails with ``TaskTimeout``. (A call that had run dozens of segments
#: failed on one such late save, seen locally with 1 s timeouts on a loaded machine.)
#: The worker keeps the checkpoint for it; the client relaunches the segment
#: (``executor.calls.CallTable._complete``).
LATE_RERUNS = 1
#: A call fails at the first offer of the segment that is the ``STUCK_REPEATS``-th in a row
#: to begin from the state the segment before began from (its first offer, fingerprinted):
#: with 2, once segments 0, 1 and 2 began alike, segment 2 fails a moment in. A loop that does
#: not go on from what ``restore`` returned, or whose state never changes, would repeat them
#: forever. Not 1: a segment that saves at its first offer (a step in the segment before took
#: most of a segment, so the time left looks too short) makes the next one begin where it
#: began, and that one goes on; so may a step that only just fits in a segment, now and then.
STUCK_REPEATS = 2
#: In a call's first segment (most calls have no other) its first offered state is
#: fingerprinted only while its pickle stays below this size, so that an ``offer`` stays
#: nearly free for a call that never splits; a larger state is fingerprinted from the
#: second segment on, and a loop that makes no progress is stopped one segment later.
FIRST_FINGERPRINT_BYTES = 1 << 20
#: The most segments one call may run; the client fails it with a one-line ``TaskError``
#: at the next (``executor.calls.CallTable._continue``). A backstop for a loop whose
#: state is never the same twice and that makes no progress all the same, which the
#: fingerprints cannot see; generous (1000 segments of Lambda's 900 s are over 10 days).
#: Raise it before launching a call that needs more (a whole number of at least 1:
#: anything else is refused at the next launch, ``max_segments``).
MAX_SEGMENTS = 1000
#: What a segment's ``Checkpoint.stats`` tells the next one of its call: the client copies
#: these keys into the next event's ``checkpoint`` (``learned``).
LEARNED = ("save_s", "step_s", "start", "repeats", "item")


def max_segments() -> int:
    """``MAX_SEGMENTS``, checked (the client reads it at each launch and where a segment
    saved): a whole number of at least 1. Anything else (0 or a negative number, which
    failed every checkpointed call after its first segment; text or None, which failed
    it with a ``TypeError`` from inside; a float or a bool, taken for a number) is a
    one-line ``ConfigError`` (``ConfigTypeError`` for a type) naming it and the fix."""
    value = MAX_SEGMENTS
    what = (f"wrenpack.worker.checkpoint.MAX_SEGMENTS = {value!r:.40} must be a whole number of at least 1 "
            "(the most checkpointed segments one call may run; default 1000)")
    fix = "set it to one, e.g. wrenpack.worker.checkpoint.MAX_SEGMENTS = 5000"
    n = integral(value)
    if n is None:
        raise ConfigTypeError(f"{what}, not {type(value).__name__}; {fix}")
    if n < 1:
        raise ConfigError(f"{what}; {fix}")
    return n


def rerun_late(segment: int, attempt: int) -> bool:
    """Whether a timeout of this ``segment`` (its ``attempt``) is run again from the last save."""
    return segment > 0 and attempt < LATE_RERUNS


class SegmentDone(BaseException):
    """Ends an invocation after its state was saved (not an error)."""


class SaveTooLate(BaseException):
    """A save was due and the last one measured (``save_s``) would not finish before the
    deadline, with no save of this segment to end on: the segment ran out of time (as
    a timeout; a later segment runs once more from the save before it, ``LATE_RERUNS``).
    Starting the save only ended in the kill at the deadline, halfway through writing it
    (a state of hundreds of MB), and the call failed with a ``TaskTimeout`` that advised
    checkpointing a call that does. ``left``: the seconds left when it was due."""

    def __init__(self, left: float) -> None:
        super().__init__(f"{left:.3f}")
        self.left = left


class Refused(BaseException):
    """The checkpoint was used in a way that can never finish (a save in a later
    segment that did not restore the state the segment before saved, or segments
    that keep beginning from the same state: ``STUCK_REPEATS``): the call
    fails with ``error``, a one-line ``TaskError``. A ``BaseException``, as
    ``SegmentDone``: a loop's ``except Exception`` does not swallow it."""

    def __init__(self, error: TaskError) -> None:
        super().__init__(str(error))
        self.error = error


#: What a group's checkpoint holds (``chunksize``: several calls in one invocation,
#: one checkpoint key): the tag, the results of the calls that returned (index ->
#: pickle), the states the others saved (index -> pickle), and the outcomes of the
#: calls that raised (index -> error 6-tuple, ``wire.outcome.error_tuple``).
_GROUP_TAG = "wrenpack.checkpoint.group"


def dumps_state(state: Any, prefix: bytes = b"") -> bytes:
    """The pickle of a checkpoint's ``state`` (after ``prefix``: ``_owned``, written first
    so that the pickle is not copied again); one that cannot be pickled is a
    ``SerializationError`` naming the checkpoint and the fix (the pickler's own
    error, raised from inside ``offer``, named neither; the client adds the call's name)."""
    try:
        with refs.sealing_scope():  # futures in the state carry no secret into the store
            with io.BytesIO() as buf:  # (what cloudpickle.dumps does, the prefix first)
                buf.write(prefix)
                cloudpickle.Pickler(buf).dump(state)
                return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - whatever the pickler raises
        reason = (exc_text(exc).splitlines() or [""])[0][:200]
        raise SerializationError(
            f"the checkpoint state (a {type(state).__name__}) could not be pickled ({type(exc).__name__}: {reason}); "
            "offer plain data (numbers, text, lists, dicts, arrays) and rebuild the rest after restore()"
        ) from None


#: A saved state begins with this, then the length (2 bytes) and the name of its owner:
#: the code that called ``restore`` (``_site``). Two loops of one call that each
#: restore and offer (a loop and a helper it calls) share the call's one checkpoint;
#: each resumed from the other's state and the call returned a wrong result. A state
#: restored by code other than its owner is refused in one line (``Checkpoint.restore``).
#: A pickle begins with ``\x80``: a state without the tag (saved before) has no owner.
_OWNER_TAG = b"WPCK\x01"


def _site(frame: Any) -> str:
    """Who calls the checkpoint from ``frame``: its function, file and first line (the
    same in every segment: the same code runs them)."""
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    return f"{name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"


def _owned(owner: str) -> bytes:
    """What a state saved by ``owner`` begins with."""
    name = owner.encode("utf-8", "replace")[:0xFFFF]
    return _OWNER_TAG + len(name).to_bytes(2, "big") + name


def _split(data: Any) -> tuple[str | None, Any]:
    """The owner of a saved state (None: untagged) and its pickle (a view: not copied)."""
    view = memoryview(data)
    if bytes(view[:len(_OWNER_TAG)]) != _OWNER_TAG:
        return None, view
    at = len(_OWNER_TAG)
    n = int.from_bytes(view[at:at + 2], "big")
    return bytes(view[at + 2:at + 2 + n]).decode("utf-8", "replace"), view[at + 2 + n:]


class _TooLarge(Exception):
    pass


class _Digest:
    """A file that hashes what is written to it (``fingerprint``)."""

    def __init__(self, limit: int | None) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes  # (bytes, or a ``PickleBuffer``: an array's data, written as it is)
        self.size += n
        if self.limit is not None and self.size > self.limit:
            raise _TooLarge()
        self.hash.update(data)
        return n


def fingerprint(state: Any, limit: int | None = None) -> str | None:
    """A hash of ``state``'s pickle (as ``dumps_state`` pickles it), streamed: no copy of
    the pickle is made. None if the pickle is larger than ``limit`` bytes, or if the
    state cannot be pickled (a save says so, should one be due)."""
    sink = _Digest(limit)
    try:
        with refs.sealing_scope():
            cloudpickle.Pickler(sink).dump(state)
    except Exception:  # noqa: BLE001 - too large, or whatever the pickler raises
        return None
    return sink.hash.hexdigest()[:32]


def _digest(pickled: bytes | memoryview) -> str:
    return hashlib.sha256(pickled).hexdigest()[:32]


def encode(state: Any, secret: bytes, job_id: str, call_id: str, place: Place) -> bytes:
    """The sealed checkpoint of ``state``, the save at ``place`` (``wire.checkpoint``)."""
    return seal_checkpoint(secret, job_id, call_id, place, dumps_state(state))


def _loads(data: Any, label: str) -> Any:
    try:
        return cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001
        raise CorruptObject(f"the checkpoint of {label} is authentic but cannot be unpickled ({type(exc).__name__}: {exc_text(exc)}); re-run") from None


def decode(blob: bytes, saves: Saves, label: str) -> Any:
    """Verify, then unpickle. Only the save ``saves`` may resume from is accepted (``Saves.open``)."""
    return _loads(_split(saves.open(blob))[1], label)


class _Group:
    """A group's checkpoint, read once per segment: the pickled results of its
    calls that returned, the error tuples of those that raised, and the pickled
    states of the others (by index)."""

    def __init__(self, done: dict[int, bytes] | None = None, states: dict[int, bytes] | None = None,
                 failed: dict[int, tuple[Any, ...]] | None = None) -> None:
        self.done = done or {}
        self.states = states or {}
        self.failed = failed or {}
        #: results of calls finished in this segment, pickled only if a later call saves
        self.fresh: dict[int, Any] = {}


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
        #: what the segment before learned (``LEARNED``)
        self._learned = learned
        self.save_s = float(learned.get("save_s", FIRST_SAVE_GUESS))
        #: whether a save has been timed (in an earlier segment, or in this one)
        self._save_timed = "save_s" in learned
        #: when the save under way began (``time.perf_counter``); None: none is (``saving_for``)
        self._saving_since: float | None = None
        self._begun = time.time()
        self.step_s = float(learned.get("step_s", 0.0))
        self.restored = False
        self.saves = 0
        self.state_bytes = 0
        self.used = False
        #: the index of the running call in its group (``begin_item``); None: not in a group
        self.item: int | None = None
        #: whether the running call (the group's running call) asked for its state in this segment
        self._asked = False
        #: a group's checkpoint, once read in this segment (``_group``)
        self._group_cache: _Group | None = None
        #: whether the running call offered (or saved) a state yet in this segment; the
        #: fingerprint of that first state, and how many segments in a row, up to this
        #: one, began from the state the segment before began from (``_began``)
        self._started = False
        self._start: str | None = None
        self._repeats = 0
        #: (item, start, repeats) of the call that saved last: what ``stats`` hands on
        self._saved_start: tuple[int | None, str | None, int] = (None, None, 0)
        #: whether a save ended the segment (``SegmentDone`` was raised, in whichever thread):
        #: from then on the segment is over, whatever the call's function returns or raises
        #: (``handler._execute``), and a later offer or save raises ``SegmentDone`` again
        #: without saving, so the next segment resumes from that save
        self.ended = False
        #: the time left when a save was due that would not have finished (``SaveTooLate``,
        #: in whichever thread): the segment ran out of time, whatever the function does then
        self.late: float | None = None
        #: the code that called ``restore`` in this segment (the running call of a group), in
        #: order (``_site``): a save is owned by the one that offers, or else the last one
        self._restorers: list[str] = []
        #: the code that got a saved state from ``restore``, or owns a save, in this segment, and
        #: the run of it (its frame) that did: another run's ``restore`` is not answered again in
        #: the segment (``_again``); the same run's is (it reads back what it saved)
        self._had: dict[str, Any] = {}
        #: the run (frame) of each code that called ``restore`` in this segment
        self._restorer_frames: dict[str, Any] = {}
        #: the places of this invocation's saves (made on first use: ``sealing``)
        self._saves: Saves | None = None

    def begin_item(self, index: int) -> None:
        """The group's call ``index`` begins (``chunksize``: the calls of a group run
        one after the other in one invocation and share its checkpoint key). The
        group's checkpoint keeps each call's state apart, and the results of the
        calls that finished: the next segment runs the group again from its first
        call, and a call resumes from the state it saved itself, or is not run again
        at all once it returned or raised (``item_result``). Without that, calls that each need
        most of a segment overwrote each other's state and the group never finished."""
        self.item = index
        self._asked = False
        self._restorers = []
        self._had = {}
        self._restorer_frames = {}
        self._started, self._start, self._repeats = False, None, 0
        self._last = time.perf_counter()
        self._steps.clear()

    @property
    def active(self) -> bool:
        """True inside a remote call that can be split."""
        return self._store is not None

    # -- the bytes in the store (a job's child asks its parent instead: ``handler.ChildCheckpoint``) --
    def _fetch(self) -> Any:
        """The verified pickle of the saved checkpoint, or None if there is none."""
        try:
            blob = self._store.get(self._key)
        except ObjectNotFound:
            return None
        return self.sealing().open(blob)

    def _push(self, data: bytes) -> int:
        """Seal and store ``data`` (a pickle); the stored size."""
        saves = self.sealing()
        place, blob = saves.seal(data)
        self._store.put(self._key, blob)
        saves.saved(place)
        return len(blob)

    @property
    def last_save(self) -> Place | None:
        """The place of this invocation's last save that was written; None if it wrote none."""
        return self._saves.last if self._saves is not None else None

    def sealing(self) -> Saves:
        """This invocation's saves and the one it may resume from (``wire.checkpoint.Saves``);
        a job's child has none (its parent seals and opens: ``handler._Requests``)."""
        if self._saves is None:
            self._saves = Saves.of(self._event)
        return self._saves

    def _group(self) -> _Group:
        if self._group_cache is None:
            data = self._fetch()
            loaded = _loads(_split(data)[1], self.label) if data is not None else None  # (a call's state: no group)
            if isinstance(loaded, tuple) and len(loaded) in (3, 4) and loaded[0] == _GROUP_TAG:
                self._group_cache = _Group(dict(loaded[1]), dict(loaded[2]), dict(loaded[3]) if len(loaded) == 4 else None)
            else:
                self._group_cache = _Group()
        return self._group_cache

    def _later(self) -> bool:
        """Whether an earlier invocation of this call may have saved (a later segment, or a retry)."""
        ev = self._event
        return ev is not None and (int(ev.segment or 0) > 0 or int(getattr(ev, "attempt", 0) or 0) > 0)

    # -- a group's finished calls -------------------------------------------------------------
    def item_result(self, index: int) -> tuple[Any, ...] | None:
        """The outcome of the group's call ``index`` if it ended in an earlier segment:
        ``("ok", its result)``, or the error 6-tuple of what it raised; None if it did not."""
        if not self.active or self._key is None or not self._later():
            return None
        group = self._group()
        data = group.done.get(index)
        if data is not None:
            self.restored = True
            return ("ok", _loads(data, self.label))
        failed = group.failed.get(index)
        if failed is not None:
            self.restored = True
            return failed
        return None

    def _ended_items(self) -> _Group:
        """The group's checkpoint, to note a call that ended in this segment."""
        if self._group_cache is None and not self.saves:
            if not self._later():
                self._group_cache = _Group()  # nothing saved before this segment: no read
            else:
                self._group()
        group = self._group_cache
        assert group is not None
        return group

    def item_done(self, index: int, value: Any) -> None:
        """The group's call ``index`` returned ``value``: kept with the group's next save."""
        if not self.active or self._key is None:
            return
        group = self._ended_items()
        group.fresh[index] = value
        group.states.pop(index, None)

    def item_failed(self, index: int, outcome: tuple[Any, ...]) -> None:
        """The group's call ``index`` raised (``outcome``: its error 6-tuple): kept with the
        group's next save, so that a later segment of the group gives it that outcome
        again instead of running the call a second time (its side effects would repeat)."""
        if not self.active or self._key is None:
            return
        group = self._ended_items()
        group.failed[index] = outcome
        group.states.pop(index, None)

    # -- the API ------------------------------------------------------------------------------
    def restore(self, default: Any = None) -> Any:
        """The state saved by an earlier segment of this call, else ``default``."""
        self.used = True
        self._asked = True
        self._last = time.perf_counter()
        if not self.active or self._key is None:
            return default
        frame = sys._getframe(1)
        site = _site(frame)
        if site not in self._restorers:
            self._restorers.append(site)
        self._restorer_frames.setdefault(site, frame)
        if self.item is None:
            saved = self._fetch()
            if saved is None:
                return default
        else:
            saved = self._group().states.get(self.item)
            if saved is None:
                return default  # (another call of the group saved: this one starts afresh)
        owner, pickled = _split(saved)
        if site in self._had and self._had[site] is not frame:
            raise Refused(self._again(site))
        if owner is not None and owner != site:
            what = self._of_call
            raise Refused(TaskError(
                f"restore() in {site}{what} got the state saved by another checkpoint user, {owner}: a call has "
                "one checkpoint, and two loops that each restore() and offer() (a loop and a helper it calls) "
                "would resume from each other's state; checkpoint one loop (keep the other's progress in its "
                "state) or run the helper as a call of its own"))
        self.restored = True
        self._had.setdefault(site, frame)
        state = _loads(pickled, self.label)
        # (reading a large state takes a while: not part of the first step, which otherwise
        # looked as long as it and made every later segment save at its first offer)
        self._last = time.perf_counter()
        return state

    @property
    def _of_call(self) -> str:
        """What a refusal adds to name the call in a group (a ``chunksize`` batch), else nothing.
        (No label: the client puts the call's name before a ``TaskError``'s message.)"""
        return "" if self.item is None else f" of call {self.item} of its group"

    def _again(self, site: str) -> TaskError:
        """A second ``restore`` by ``site`` in one segment, after it got a saved state or
        saved one: what it would get is a state of its own earlier run (a helper called
        more than once resumed its first run's state, skipping its work: a wrong result)."""
        what = self._of_call
        return TaskError(
            f"restore() in {site}{what} was called again in segment {self._segment()}, by a new run of it, after an "
            "earlier run restored or saved a state there: a checkpointed loop restores once, at its start, and a helper that checkpoints and is "
            "called more than once would resume from its earlier run's state; checkpoint only the loop that calls "
            "it (keep the helper's progress in its state) or run the helper as a call of its own")

    def time_left(self) -> float:
        deadline = self._deadline_fn() if self._deadline_fn else None
        return float("inf") if deadline is None else deadline - time.time()

    def offer(self, state: Any) -> None:
        """Offer the loop's state at a safe point; saves and ends the segment only when due."""
        if self.ended:
            raise SegmentDone()  # (another thread's save ended the segment: nothing more is saved)
        if self.late is not None:
            raise SaveTooLate(self.late)  # (as ``ended``, for a segment that ran out of time)
        now = time.perf_counter()
        step = now - self._last
        self._last = now
        self._steps.append(step)
        if not self.active:
            return
        if not self._started and self._key is not None:
            self._began(state=state)
            self._last = time.perf_counter()  # (the fingerprint is not part of the next step)
        expected_step = max(max(self._steps), self.step_s)
        left = self.time_left()
        if left > SAFETY * (expected_step + self.save_s) + 0.02:
            if not self._save_timed and self._deadline_fn is not None:
                deadline = self._deadline_fn()
                if deadline is not None and left < TIMING_SAVE_AT * (deadline - self._begun):
                    self._save(state, sys._getframe(1))  # timed (``save_s``); the segment goes on
                    self._save_timed = True
            return
        if self._save_timed and left < self.save_s:
            # A save, as long as the last one, would not finish before the deadline: not begun.
            if self.saves:
                # This segment saved before (the save that timed one): it ends on that save.
                log.info("%s: a save was due with %.2f s left and one takes %.2f s; the segment ends on its "
                         "earlier save", self.label, left, self.save_s)
                self.ended = True
                raise SegmentDone()
            self.late = left
            raise SaveTooLate(left)
        self._save(state, sys._getframe(1))
        self.ended = True
        raise SegmentDone()

    def _check_progress(self) -> None:
        """A save in a later segment by a call that never asked for the state the
        segment before saved would start over in every segment, forever: refused."""
        if self._asked or not self._later():
            return
        ev = self._event
        if self.item is None:
            if not int(ev.segment or 0):
                return  # (a retry of the first segment: bounded by retries)
        elif self.item not in self._group().states:
            return  # (this call of the group saved nothing yet)
        what = self._of_call
        raise Refused(TaskError(
            f"segment {ev.segment}{what} saved a checkpoint without calling restore() first, so every "
            "segment starts over and the call never finishes; begin with state = wrenpack.checkpoint().restore(default=...) "
            "and go on from the state it returns"))

    def _segment(self) -> int:
        ev = self._event
        return int(getattr(ev, "segment", 0) or 0) if ev is not None else 0

    def _began(self, state: Any = None, pickled: bytes | memoryview | None = None) -> None:
        """The running call's first state in this segment (``state``, or its ``pickled``
        bytes when a save comes first): fingerprinted, and compared with the one the
        segment before began with. The ``STUCK_REPEATS``-th segment in a row that began
        where the one before began is refused here, at its start, not at its end."""
        self._started = True
        segment = self._segment()
        if pickled is not None:
            self._start = _digest(pickled)
        else:
            self._start = fingerprint(state, None if segment else FIRST_FINGERPRINT_BYTES)
        learned = self._learned
        same = segment > 0 and self._start is not None and learned.get("start") == self._start \
            and learned.get("item") == self.item
        try:
            before = int(learned.get("repeats") or 0) if same else 0
        except (TypeError, ValueError):
            before = 0
        self._repeats = before + 1 if same else 0
        if self._repeats < STUCK_REPEATS:
            return
        first = segment - self._repeats
        earlier = f"segment {first}" if first == segment - 1 else \
            f"segments {first} and {segment - 1}" if first == segment - 2 else f"segments {first} to {segment - 1}"
        what = self._of_call
        raise Refused(TaskError(
            f"segment {segment}{what} began from the same state as {earlier} (its first offer() was the same), so "
            "no segment makes progress and the call would never finish; start the loop from the state restore() "
            "returns (state = ckpt.restore(default=...), then go on from state) and offer a state that records "
            "the loop's progress"))

    def save(self, state: Any) -> None:
        """Save now (``offer`` calls this when a save is due)."""
        self._save(state, sys._getframe(1))

    def _save(self, state: Any, frame: Any) -> None:
        """Save ``state``, offered by the code running ``frame`` (its ``_site``): owned
        by it if it called ``restore`` in this segment, else by the last code that did
        (a loop may restore in one function and offer in another)."""
        self.used = True
        if not self.active or self._key is None:
            return
        if self.ended:
            raise SegmentDone()  # (the segment is over: the state it ended with stays the one saved)
        self._check_progress()
        t0 = self._saving_since = time.perf_counter()
        site = _site(frame)
        owner = site if site in self._restorers or not self._restorers else self._restorers[-1]
        self._had.setdefault(owner, self._restorer_frames.get(owner, frame))
        head = _owned(owner)
        pickled = dumps_state(state, head)
        if not self._started:
            self._began(pickled=memoryview(pickled)[len(head):])
        self._saved_start = (self.item, self._start, self._repeats)
        if self.item is None:
            data = pickled
        else:
            group = self._group_cache if self._group_cache is not None else \
                self._group() if self._later() or self.saves else _Group()
            self._group_cache = group
            for index, value in list(group.fresh.items()):
                group.done[index] = dumps_state(value)
                del group.fresh[index]
            group.states[self.item] = pickled
            data = cloudpickle.dumps((_GROUP_TAG, group.done, group.states, group.failed))
        self.state_bytes = self._push(data)
        self._saving_since = None
        self.save_s = time.perf_counter() - t0
        self.saves += 1
        self._last = time.perf_counter()

    def saving_for(self) -> float | None:
        """How long the save under way has run (seconds); None if none is."""
        since = self._saving_since
        return None if since is None else time.perf_counter() - since

    def save_timed(self) -> bool:
        """Whether ``save_s`` was measured (here, or by the segment before)."""
        return self._save_timed

    def stats(self) -> dict[str, Any]:
        """What the status record shows of the checkpoint; the ``LEARNED`` keys of it
        tune the next segment, and say what state the call that saved last began
        this segment with (``start``, a fingerprint), how many segments in a row began
        so (``repeats``), and that call's index in its group (``item``)."""
        out: dict[str, Any] = {
            "saves": self.saves,
            "save_s": round(self.save_s, 6),
            "step_s": round(max(self._steps) if self._steps else self.step_s, 6),
            "state_bytes": self.state_bytes,
            "restored": self.restored,
        }
        item, start, repeats = self._saved_start
        if start is not None:
            out["start"], out["repeats"] = start, repeats
            if item is not None:
                out["item"] = item
        return out


_current: Checkpoint | None = None


def _quiet_segment_done() -> None:
    """A ``SegmentDone`` that ends a plain ``threading.Thread`` (an offer made there) is
    how the segment ends, not an error: ``threading.excepthook`` no longer prints its
    traceback to the call's output. Anything else goes to the hook as before."""
    hook = threading.excepthook
    if getattr(hook, "_wrenpack_quiet", False):
        return

    def quiet(args: Any) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, SegmentDone):
            return
        hook(args)

    quiet._wrenpack_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = quiet


def begin(ev: Any, store: Any, deadline_fn: Any) -> Checkpoint:
    """Set up the checkpoint of the call the handler is about to run (``ev``: its ``wire.event.Event``)."""
    global _current
    _quiet_segment_done()
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
    _quiet_segment_done()
    _current = ckpt
    return ckpt


def end() -> None:
    global _current
    _current = None


def checkpoint() -> Checkpoint:
    """The running call's checkpoint; outside a remote call, one that never saves."""
    return _current if _current is not None else Checkpoint()
