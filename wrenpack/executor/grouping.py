"""Automatic grouping of a map's short calls on a backend of warm workers.

Launching, running and completing one call costs the local backend a few
hundred microseconds; a call of ``x + 1`` runs in a microsecond. Like joblib's
automatic batch size, a map learns how long the function's calls take and
sends short ones in groups, several calls per invocation (``worker.batch``):

- a function not timed yet: the first call per worker goes alone and is
  timed; the rest wait for the first of those to end (the workers are busy
  with them meanwhile), then go in groups if the calls are short, alone if
  not (at once, if one of them is pickled to be passed on);
- a function this executor timed before (by its code hash): grouped at once.

Every call keeps its own future, outcome and exception. A group runs under
the calls' own limits (memory, /tmp, timeout) as a whole; a group that breaks
one, or whose worker dies, runs again call by call, each alone with its own
limits, so only the call that broke a limit fails with it (the group's other
calls then run twice, as after a worker crash). Not grouped: backends without
a warm pool (Lambda), ``retry_on``, checkpointing functions, arguments holding futures.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Callable, Sequence

from wrenpack.errors import (CallCancelled, CorruptObject, ExecutorShutdown, TaskTimeout, WorkerCrashed, WorkerLost, WrenpackError,
                             exc_text)
from wrenpack.executor.prepared import Prepared
from wrenpack.executor.profiled import code_key, uses_checkpoint
from wrenpack.futures import CallOwner, WrenFuture, stop_running
from wrenpack.wire.outcome import rebuild_exception
from wrenpack.worker.batch import Batch

if TYPE_CHECKING:
    from wrenpack.executor.core import Executor
    from wrenpack.executor.options import CallOptions

log = logging.getLogger(__name__)

#: calls expected to take less than this go in groups
SHORT_S = 0.002
#: the expected work of one group
GROUP_S = 0.01
#: rounds of probes at most before a map whose probes took longer than ``SHORT_S`` (but
#: less than ``PROBE_AGAIN_MAX_S``) goes one call per invocation: a probe slowed by a busy
#: machine (a 2 ms hiccup) sent every other call of a 100,000-call map alone, 20x the time
PROBE_ROUNDS = 3
PROBE_AGAIN_MAX_S = 0.02
MAX_GROUP = 512
#: groups per worker at least, so the work spreads evenly
GROUPS_PER_WORKER = 4

Call = tuple[tuple[Any, ...], dict[str, Any]]


def launch_map(executor: Executor, fn: Callable[..., Any], calls: Sequence[Call], options: CallOptions,
               label: str) -> list[WrenFuture] | None:
    """Launch a map's calls, grouped where they are short; None when grouping
    does not apply (the caller launches them one per invocation)."""
    caps = executor.capabilities
    workers = caps.concurrency
    if (not caps.warm_pool or len(calls) <= 2 * workers or options.retry_on or options.extra
            or _checkpoints(fn)):
        return None
    key = code_key(fn)
    est = executor.call_seconds.get(key)
    prepared = executor.prepare(fn, calls, options, label)
    plan = _Plan(executor, fn, options, label, key, prepared, workers)
    if prepared.referenced or (est is not None and est > SHORT_S) or not all(isinstance(p, bytes) for p in prepared.payloads):
        # Futures among the arguments (their secrets go in each call's event), large
        # arguments (memfd hand-offs), or calls known to be long: one per
        # invocation; the first ones still teach.
        futures = executor.launch(fn, calls, options, label, prepared=prepared)
        for fut in futures[:workers]:
            fut.add_done_callback(plan._timed)
        return futures
    plan.make_items()
    futures = list(plan.items)  # (the caller's list)
    plan.let_go_when_done()
    if est is not None:
        plan.launch_groups(range(len(calls)), est)
        return futures
    probes = workers
    plan.hold(range(probes, len(calls)))  # before the probes: one may end at once
    try:
        plan.launch_single(list(range(probes)), probe=True)
    except BaseException:
        plan.abandon()
        raise
    return futures


def _run_seconds(fut: WrenFuture) -> float | None:
    """The function's own time in an ended call (its status's ``run_s``, else its duration)."""
    status = fut.status or {}
    duration = status.get("run_s", status.get("duration_s"))
    return float(duration) if isinstance(duration, (int, float)) else None


def _checkpoints(fn: Callable[..., Any]) -> bool:
    try:
        return uses_checkpoint(fn)
    except Exception:  # noqa: BLE001
        return True


class _Plan(CallOwner):
    """One map's calls: their futures, and how and when they are launched. It
    acts for the calls it holds back (``CallOwner``): cancel, launch now."""

    def __init__(self, executor: Executor, fn: Callable[..., Any], options: CallOptions, label: str, key: str,
                 prepared: Prepared, workers: int) -> None:
        super().__init__()
        self.executor = executor
        self.fn = fn
        self.options = options
        self.label = label
        self.key = key
        self.prepared = prepared
        self.workers = workers
        self.lock = threading.Lock()
        #: the calls' futures (``make_items``), bound to an invocation when each launches
        self.items: list[WrenFuture] = []
        #: the calls held back (a range, until ``release``), and those cancelled meanwhile
        self.held: Sequence[int] = ()
        self.taken: set[int] = set()
        self.released = False
        #: set once the calls held back are launched (or failed)
        self.launched_all = threading.Event()
        #: rounds of probe calls launched (``_probe_again``)
        self.probe_rounds = 1

    def make_items(self) -> None:
        created = time.time()  # (one reading for the map's calls)
        self.items = [WrenFuture("", "", f"{self.label}[{i}]", created_at=created) for i in range(len(self.prepared.payloads))]

    def let_go_when_done(self) -> None:
        """``items`` lets go of each future as its call ends: the plan lives while
        any call is pending, and the results are the caller's to keep or drop."""
        for i, item in enumerate(self.items):
            item.hold_in(self.items, i)

    # -- launching ------------------------------------------------------------------
    def _subset(self, indices: Sequence[int]) -> Prepared:
        return Prepared(self.prepared.fn_bytes, [self.prepared.payloads[i] for i in indices])

    def launch_single(self, indices: Sequence[int], probe: bool = False) -> None:
        """Each call alone, its own invocation and limits, in the given futures."""
        futures = [self.items[i] for i in indices]
        self.executor.launch(self.fn, (), self.options, self.label, prepared=self._subset(indices), futures=futures)
        self._let_go(indices)
        if probe:
            probe_round = self.probe_rounds
            for fut in futures:
                fut.add_done_callback(lambda done, r=probe_round: self._probe_done(done, r))

    def _let_go(self, indices: Sequence[int]) -> None:
        """The plan no longer needs these calls' pickled arguments: their job
        has them (launched alone), or they ended (a group's calls)."""
        payloads = self.prepared.payloads
        for i in indices:
            payloads[i] = None

    def launch_groups(self, indices: Sequence[int], est: float) -> None:
        size = max(1, min(MAX_GROUP, int(GROUP_S / max(est, 1e-6)),
                          math.ceil(len(indices) / (self.workers * GROUPS_PER_WORKER))))
        if size == 1:
            self.launch_single(indices)
            return
        groups = [indices[i : i + size] for i in range(0, len(indices), size)]
        payloads = self.prepared.payloads
        # In futures of their own (as ``launch_single`` launches): the calls of a map accepted
        # before a shutdown launch after one too (``Executor.launch``), where the check for
        # new calls failed every call held back until a first one ended. Each group is named
        # by its calls ("f[100:104]"), not by its own index, which is another call's name.
        made = [WrenFuture("", "", _group_label(self.label, g)) for g in groups]
        gfuts = self.executor.launch(Batch(self.fn, pickled=True), [(([payloads[i] for i in g],), {}) for g in groups],
                                     self.options, self.label, futures=made)
        log.debug("%s: %d calls in %d groups of up to %d (about %.0f us each)", self.label, len(indices), len(groups), size, est * 1e6)
        for group, gfut in zip(groups, gfuts):
            members = [self.items[i] for i in group]
            gfut._members = members
            owner = _Group(self, gfut)
            for j, item in enumerate(members):
                item.job_id, item.call_id = gfut.job_id, f"{gfut.call_id}.{j}"
                item._owner, item._where, item._job_key = owner, gfut._where, gfut._job_key
            gfut.add_done_callback(lambda done, group=group: self._group_ended(done, group))

    def hold(self, indices: Sequence[int]) -> None:
        """The rest of a new function's map waits for its first timed call."""
        for i in indices:
            self.items[i]._owner = self
        with self.lock:
            self.held = indices
        self.executor.hold(self)

    # -- CallOwner: what a held call's future asks ---------------------------------
    def cancel_call(self, fut: WrenFuture) -> bool:
        slot = fut._slot
        return self._cancel_held(slot[1] if slot is not None else self.items.index(fut))

    def launch_call(self, fut: WrenFuture) -> None:
        self.release()  # (pickling it needs it launched)

    def launched(self, fut: WrenFuture, timeout: float) -> None:
        self.launched_all.wait(timeout)

    def release(self) -> None:
        """Launch the held calls: grouped if the function's calls are short."""
        with self.lock:
            if self.released:
                return
            self.released = True
            held = self.held
            if self.taken or any(self.items[i].done() for i in held):  # (cancelled meanwhile)
                held = [i for i in held if i not in self.taken and not self.items[i].done()]
            self.held = ()
        probing = False
        try:
            est = self.executor.call_seconds.get(self.key)
            if not held:
                return
            if est is not None and est > SHORT_S and self._probe_again(held, est):
                probing = True
                return
            if est is None or est > SHORT_S:
                self.launch_single(held)
                for i in held[: self.workers]:  # they teach too: a probe stalled by a busy machine is corrected
                    self.items[i].add_done_callback(self._timed)
            else:
                self.launch_groups(held, est)
        except BaseException as exc:  # noqa: BLE001 - the calls fail, never silently stay pending
            probing = False
            self._fail([self.items[i] for i in held if not self.items[i].done()], exc)
        finally:
            if not probing:
                self.launched_all.set()
                self.executor.unhold(self)

    def _probe_again(self, held: Sequence[int], est: float) -> bool:
        """The probes took longer than a short call, but not by much: maybe their
        own (a busy machine, a first call's page faults). The next ``workers``
        calls probe again while the rest stay held (``PROBE_ROUNDS`` in all);
        a lower time of theirs replaces the one learnt. True if they went."""
        if self.probe_rounds >= PROBE_ROUNDS or est > PROBE_AGAIN_MAX_S or len(held) <= 2 * self.workers:
            return False
        self.probe_rounds += 1
        probes, rest = held[: self.workers], held[self.workers :]
        with self.lock:
            self.held, self.released = rest, False
        log.debug("%s: its first calls took %.1f ms each; %d more probe before the rest are grouped or not",
                  self.label, est * 1e3, len(probes))
        self.launch_single(list(probes), probe=True)
        return True

    def abandon(self) -> None:
        """The probes could not launch (the error goes to the caller): nothing else will."""
        with self.lock:
            self.released, self.held = True, ()
        self.launched_all.set()
        self.executor.unhold(self)

    # -- outcomes ---------------------------------------------------------------------
    def _timed(self, fut: WrenFuture) -> None:
        duration = _run_seconds(fut)
        if duration is not None:
            self._learn(duration)

    def _probe_done(self, fut: WrenFuture, probe_round: int = 1) -> None:
        """A probe ended: what it took is learnt and the held calls go. A later
        round's probe is there because an earlier one seemed slowed: its time
        stands if it is lower (``_probe_again``); an earlier round's probe that
        ends after the next round went teaches nothing more."""
        if probe_round < self.probe_rounds:
            return
        if probe_round == 1:
            self._timed(fut)
        else:
            duration = _run_seconds(fut)
            timings = self.executor.call_seconds
            if duration is not None and duration < timings.get(self.key, math.inf):
                timings[self.key] = duration
        self.release()

    def _learn(self, seconds: float) -> None:
        """Up at once, down by halves: a long call is not taken for a short one."""
        timings = self.executor.call_seconds
        old = timings.get(self.key)
        if len(timings) > 4096:
            timings.clear()
        timings[self.key] = seconds if old is None or seconds > old else 0.5 * (old + seconds)

    def _group_ended(self, gfut: WrenFuture, group: Sequence[int]) -> None:
        try:
            self._group_done(gfut, group)
            self._let_go([i for i in group if self.items[i].done()])  # (the others go again, alone)
        except BaseException as exc:  # noqa: BLE001 - never leave a call pending
            log.debug("completing a group of %s failed", self.label, exc_info=True)
            self._fail([self.items[i] for i in group],
                       WrenpackError(f"{self.label}: wrenpack could not complete the call: {type(exc).__name__}: "
                                     f"{exc_text(exc)}"))

    def _group_done(self, gfut: WrenFuture, group: Sequence[int]) -> None:
        members = [self.items[i] for i in group]
        if gfut.cancelled():
            asked = [i for i in group if getattr(self.items[i], "_cancel_asked", False)]
            if not asked:  # the group itself was cancelled (shutdown(cancel_futures=True), exit): all its calls are
                for item in members:
                    item.cancel()
                return
            # Taken back because one of its calls was cancelled: the others go again.
            self._again([i for i in group if i not in asked and not self.items[i].done()], None)
            return
        exc = gfut.exception()
        if exc is not None:
            stopped = [i for i in group if getattr(self.items[i], "_stop_asked", False)]
            if stopped and isinstance(exc, CancelledError):
                # Stopped for these of its calls (``wrenpack.cancel``): they end so, the others go again.
                for i in stopped:
                    item = self.items[i]
                    if not item.done():
                        item._resolve(False, CallCancelled(f"{item.label} was cancelled while it ran"))
                self._again([i for i in group if i not in stopped], None)
                return
            self._again(group, exc)
            return
        outcomes = gfut.result()
        seconds = getattr(outcomes, "seconds", None)
        if seconds:
            self._learn(_mean_call(seconds, getattr(outcomes, "waited", None)))
        for j, item in enumerate(members):
            # (the group's record, with the call's place and duration: made when read)
            item.set_group_status(gfut, len(members), j, seconds[j] if seconds else None)
            item.segments, item.logs = gfut.segments, gfut.logs
            outcome = outcomes[j]
            if outcome[0] == "ok":
                item._resolve(True, outcome[1])
            else:
                item._resolve(False, rebuild_exception(outcome, item.label, item.job_id))

    def _again(self, group: Sequence[int], exc: BaseException | None) -> None:
        """A group ended without its calls' outcomes: run them again, each alone
        (``exc``: why the group failed), or fail them when that must not be retried."""
        todo = [i for i in group if not self.items[i].done()]
        if not todo:
            return
        ex = self.executor
        final = isinstance(exc, (CorruptObject, ExecutorShutdown, CancelledError)) or ex._stopping
        if exc is not None and not final:
            # A group stopped at its timeout, or whose worker died, cost the whole wait and
            # runs every call again: the user hears of it (a call whose dispatch or reply was
            # lost looked like this, silently). A limit a call broke is named by its own run.
            level = logging.WARNING if isinstance(exc, (TaskTimeout, WorkerCrashed, WorkerLost)) else logging.INFO
            log.log(level, "%s: the group of %d calls failed (%s: %s); running each of its %d unfinished calls again on "
                    "its own (their 2nd attempt)", _group_label(self.label, group), len(group), type(exc).__name__, exc,
                    len(todo))
        if final:
            self._fail([self.items[i] for i in todo], exc)
            return
        try:
            self.launch_single(todo)
        except BaseException as again:  # noqa: BLE001
            self._fail([self.items[i] for i in todo], exc if exc is not None else again)

    def _fail(self, items: list[WrenFuture], exc: BaseException | None) -> None:
        if not isinstance(exc, BaseException) or not isinstance(exc, Exception):
            exc = WrenpackError(f"{self.label}: the calls could not be launched: {exc!r}")
        for item in items:
            if not item.done():
                item._resolve(False, exc)

    # -- cancelling -------------------------------------------------------------------
    def _cancel_held(self, i: int) -> bool:
        with self.lock:
            if self.released or i not in self.held or i in self.taken:
                return False
            self.taken.add(i)
        return True

    def _stop_members(self, calls: list[tuple[str, str]], gfut: WrenFuture) -> set[tuple[str, str]]:
        """Stop a running group for some of its calls (``_Group.stop_calls``)."""
        wanted = set(calls)
        members = [item for item in (gfut._members or ()) if (item.job_id, item.call_id) in wanted and not item.done()]
        for item in members:
            item._stop_asked = True  # type: ignore[attr-defined]
        if not members or not stop_running(gfut):
            for item in members:
                item._stop_asked = False  # type: ignore[attr-defined]
            return set()
        return {(item.job_id, item.call_id) for item in members}

    def _cancel_member(self, item: WrenFuture, gfut: WrenFuture) -> bool:
        """Cancel one call of a group not started yet: the group is taken back and
        its other calls go again."""
        item._cancel_asked = True  # type: ignore[attr-defined]
        if gfut.cancel():
            return True
        item._cancel_asked = False  # type: ignore[attr-defined]
        return False


def _group_label(label: str, group: Sequence[int]) -> str:
    """A group's name: its calls' indices in the map (a slice when they follow each other)."""
    first, last = group[0], group[-1]
    if len(group) == 1:
        return f"{label}[{first}]"
    return f"{label}[{first}:{last + 1}]" if last - first + 1 == len(group) else f"{label}[{first}..{last}]"


def _mean_call(seconds: list[float], waited: float | None) -> float:
    """A group's mean call time, robust to a busy machine.

    The mean, not the median: a map with many calls of seconds among short ones
    is ungrouped. Two things a call did not do are left out:
    - the time the worker waited for a CPU (run-queue wait);
    - a stall of any other kind (page reclaim, a collector pass) in one call:
      the mean leaves out the group's slowest two calls when it has 8 or more,
      so at most two long calls per group can hide, bounding what they cost.
    A CI run under load saw one stalled call among fifty 5 us calls make the
    next map's groups fifteen times smaller (131 messages for 2,000 calls)."""
    n = len(seconds)
    total = sum(seconds)
    estimates = [total / n]
    if waited:
        estimates.append(max(total - waited, 0.0) / n)
    drop = min(2, n // 8)
    if drop:
        estimates.append(sum(sorted(seconds)[: n - drop]) / (n - drop))
    return min(estimates)


class _Group(CallOwner):
    """Acts for the calls of one group (one invocation): cancelling one takes
    the group back (its other calls go again), a reference to one keeps the
    group's job."""

    __slots__ = ("plan", "gfut")

    def __init__(self, plan: _Plan, gfut: WrenFuture) -> None:
        self.plan, self.gfut = plan, gfut

    def cancel_call(self, fut: WrenFuture) -> bool:
        return self.plan._cancel_member(fut, self.gfut)

    def stop_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """``wrenpack.cancel`` of running calls of the group: its invocation is
        stopped; those calls end cancelled, the group's others run again
        (``_Plan._group_done``), as for one cancelled while the group waited."""
        return self.plan._stop_members(calls, self.gfut)

    def pin_call(self, fut: WrenFuture) -> bool:
        return self.gfut._pin_call()
