"""The call table: the jobs an executor runs, and the one place their
futures are resolved.

Backends report on their own threads (``on_start``, ``on_done``). A small
result that came in the reply is completed right there; a result handed over
in a memfd is read on a reader thread as soon as it arrives; everything else
(store reads, retries, segments, deleting a finished job's objects) goes to
the collector thread. All of it ends in ``_resolve``: bookkeeping, the job's
objects, then the future.

``CallTable`` is a part of ``Executor`` (which supplies ``store``, ``config``,
``backend``, its lock and its release); it is its own module so that the
launch side and the completion side can each be read whole.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import queue
import threading
import time
import weakref
from concurrent.futures import CancelledError, _base
from dataclasses import dataclass, field
from typing import Any, Callable

import cloudpickle

from wrenpack import auth, keys
from wrenpack.backends import Backend, Invocation, InvocationResult, PrivateReply
from wrenpack.errors import (CallCancelled, ConfigError, CorruptObject, ExecutorShutdown, ObjectNotFound, ProtocolError, RemoteTraceback,
                             StoreError, TaskError, TaskTimeout, WrenpackError, exc_text)
from wrenpack.executor.options import CallOptions
from wrenpack.executor.owner import owner_record
from wrenpack.futures import CallOwner, WrenFuture
from wrenpack.storage import Store
from wrenpack.wire import checkpoint as checkpoint_format, result as result_format, segment as segment_format
from wrenpack.wire.outcome import LABELLED, error_tuple
from wrenpack.worker import checkpoint, handoff, refs

log = logging.getLogger("wrenpack.executor")

#: results up to this size are completed on the backend's thread (no hand-off to the collector)
QUICK_RESULT_BYTES = 64 * 1024


#: a map's calls handed to the backend ahead of its concurrency, per slot (the launch window)
WINDOW_PER_SLOT = 2
#: ... and at least this many (a backend of few workers takes calls in batches: ``LocalBackend``)
MIN_WINDOW = 256


@dataclass(eq=False)
class RunningJob(CallOwner):
    """One launch's calls while any is not done, and its launch window: the
    calls' futures exist from the start, but a call's invocation (its event,
    what the backend keeps for it) is made only when the backend has room for
    it, ``ahead`` calls launched and not ended at a time, and is let go of when
    the call ends. A map of 100,000 calls holds 100,000 small futures and
    pickles, not 100,000 events. The job acts for its pending futures
    (``CallOwner``): cancel, pin, stop, launch now."""

    job_id: str
    label: str
    #: the futures of the calls not finished yet: a finished call's future is let go
    #: (``_resolve``), so its result lives only as long as the caller keeps it
    futures: dict[str, WrenFuture]
    options: CallOptions
    #: The job's key (``wrenpack.auth``): only in memory and in its events, never in the store.
    secret: bytes = b""
    #: the latest invocation of each launched call not ended yet (for cancel and retries)
    invocations: dict[str, Invocation] = field(default_factory=dict)
    #: a future of this job was pickled: keep its objects until shutdown
    pinned: bool = False
    #: the job may have objects in the store (else there is nothing to delete when it ends)
    stored: bool = True
    #: keeps the job's secret known here while the job runs (``refs.JobKey``)
    key: Any = None
    #: how many calls the job has (``futures`` shrinks as they finish)
    calls: int = 0
    #: how many have ended (resolved or cancelled), and those being resolved right now
    ended: int = 0
    ending: set[str] = field(default_factory=set)
    # -- the launch window (``CallTable._fill``) --
    #: the executor that launched it
    table: Any = None
    #: each call's pickled arguments until it is launched (or taken back): then None
    payloads: list[Any] = field(default_factory=list)
    #: arguments that pickle to at most this many bytes travel in their events, larger
    #: ones were stored at launch (``Executor._inline_limit``: within the backend's events)
    inline_limit: int = 0
    #: the event every call's starts from (its call id, arguments and label added)
    template: dict[str, Any] = field(default_factory=dict)
    #: calls launched and not ended at most; launched, not ended; the next call to launch
    ahead: int = MIN_WINDOW
    inflight: int = 0
    next: int = 0
    #: a thread is launching calls (``_fill``); another asked it to look again
    filling: bool = False
    fill_again: bool = False
    #: calls asked to stop while they ran (``cancel_calls``), until the stop is withdrawn
    #: (``_at_boundary``): whatever outcome comes in for one (its result, its own error: on
    #: Lambda a call may end before its worker sees the cancel marker) ends it cancelled
    #: (``_stop_wins``), and a checkpointed one has no next segment
    stop_asked: set[str] = field(default_factory=set)
    #: checkpointed calls at a segment boundary, and calls a stop ended (made on the first):
    #: "between" from the moment a segment's checkpointed reply is in until the next segment
    #: is decided on, "cancelled" once a stop asked ended the call (there, or as its outcome
    #: came in). What ``cancel_calls`` answers for a call no backend runs at that moment
    #: (``_at_boundary``).
    boundary: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.calls = self.calls or len(self.futures)

    def __repr__(self) -> str:
        return (f"<RunningJob {self.job_id} of {self.label}: {self.calls} calls, {self.ended} ended, "
                f"{self.inflight} launched and not ended>")

    def finished(self, cid: str) -> bool:
        """Whether call ``cid`` has ended (or is being resolved)."""
        return cid not in self.futures or cid in self.ending

    def unlaunched(self) -> bool:
        return self.next < len(self.payloads)

    # -- CallOwner: what a pending future asks of its job --
    def cancel_call(self, fut: WrenFuture) -> bool:
        return self.table._cancel(self.job_id, fut.call_id)

    def wait_here(self, fut: WrenFuture, timeout: float | None) -> None:
        if self.table._pid != os.getpid():  # (a fork's copy of a pending future: it can never resolve here)
            raise ExecutorShutdown(f"{fut.label}: {self.table.forked_here()}")
        inv = self.invocations.get(fut.call_id)
        if inv is not None and not self.table._stopping:
            self.table.backend.wait_here(inv, math.inf if timeout is None else time.time() + timeout)

    def pin_call(self, fut: WrenFuture) -> bool:
        return self.table._pin(self.job_id, fut.call_id)

    def stop_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        return self.table.cancel_calls(calls)

    def launch_call(self, fut: WrenFuture) -> None:
        # A reference to it may make another call wait for it: it must not wait
        # behind that call in the backend's queue.
        self.table._launch_now(self, fut.call_id)


class CallTable:
    """The running jobs and their completion (a part of ``Executor``, which
    supplies the attributes below and ``_release``)."""

    store: Store
    config: Any
    backend: Backend
    _lock: threading.RLock
    _jobs: dict[str, RunningJob]
    _completions: queue.SimpleQueue
    _collector: threading.Thread | None
    _collector_finalizer: weakref.finalize | None
    _reads: queue.SimpleQueue
    _readers: list[threading.Thread]
    _plans: set[Any]
    _kept_jobs: set[str]
    _adopted: list[refs.Adopted]
    _outliving: set[str]
    _kept_keys: list[Any]
    _stopping: bool
    _release_when_idle: bool
    stopped_writes: bool

    # -- lifecycle hooks (backend threads) --------------------------------------
    def _on_start(self, inv: Invocation) -> None:
        job = self._jobs.get(inv.key[0])
        fut = job.futures.get(inv.key[1]) if job is not None else None
        if fut is not None:  # (a call may end before its start is reported: then it stays done)
            fut._mark_running()

    def _on_done(self, inv: Invocation, result: InvocationResult) -> None:
        if result.error is None and result.status is not None and result.status.get("exit") == "checkpointed":
            self._between(inv)
        if result.private is not None and result.private.slow and result.error is None:
            self._read_soon(inv, result)
            return
        if self._quick(inv, result):
            # A small result in the reply is verified, unpickled and resolved right
            # here: one thread hand-off fewer per call. Anything that may block
            # (store reads, retries, callbacks, deleting a job) goes to the collector.
            try:
                self._complete(inv, result)
            except BaseException as exc:  # noqa: BLE001 - fail this call, never the backend's thread
                self._fail_completion(inv, exc)
            return
        self._completions.put((inv, result))

    def _quick(self, inv: Invocation, result: InvocationResult) -> bool:
        size = len(result.data) if result.data is not None else result.private.size if result.private is not None else None
        if size is None or result.error is not None or size > QUICK_RESULT_BYTES:
            return False
        job = self._jobs.get(inv.key[0])
        if job is None or job.options.retry_on or self._stopping:
            return False
        fut = job.futures.get(inv.key[1])
        if fut is None or fut._done_callbacks:
            return False
        status = result.status or {}
        if status.get("exit") == "checkpointed" or status.get("stored"):
            return False
        if status.get("exit") == "timeout" and int(inv.event.get("segment", 0)):
            return False  # (maybe run again from its last save: ``_late_segment``)
        # The job's last call deletes its objects: not on the backend's thread.
        return not job.stored or job.ended < job.calls - 1

    def _read_soon(self, inv: Invocation, result: InvocationResult) -> None:
        """Read a handed-off result in a reader thread now, not in its turn in the
        collector: the copies run in parallel (the GIL is released while the
        kernel copies) and the memfd, which the worker's cgroup is charged
        for, is closed as soon as possible."""
        with self._lock:
            if len(self._readers) < _READERS and self._reads.qsize() >= len(self._readers):
                # (the queues, not the executor: a thread must not keep a dropped executor alive)
                reader = threading.Thread(target=_read_loop, args=(self._reads, self._completions),
                                          name="wrenpack-reader", daemon=True)
                self._readers.append(reader)
                reader.start()
        self._reads.put((inv, result))

    def cancel_calls(self, calls: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Stop these calls (``(job_id, call_id)``) of this executor, running or
        not (``wrenpack.cancel``): a pending one is taken back (its future is
        cancelled), a running one is stopped by the backend
        (``Backend.cancel_calls``) and its future fails with ``CallCancelled``,
        a ``concurrent.futures.CancelledError``, whatever outcome comes in for it
        (on Lambda it may finish before its worker sees the cancel marker:
        ``_stop_wins``); one launched with
        ``cancellable=False`` runs on, on every backend alike. The calls that
        will end so, and only those: a checkpointed call between two of its
        segments, which no backend runs then, ends cancelled there if its next
        segment was not decided on yet (then it is never launched), else it runs
        on and is not among them (``_at_boundary``)."""
        running: list[tuple[str, str, RunningJob]] = []
        out: set[tuple[str, str]] = set()
        for job_id, cid in calls:
            if self._cancel(job_id, cid, stopping=True):
                out.add((job_id, cid))
                continue
            with self._lock:
                job = self._jobs.get(job_id)
                if job is not None and job.options.cancellable and not job.finished(cid) and cid in job.invocations:
                    running.append((job_id, cid, job))
                    job.stop_asked.add(cid)
        if not running:
            return out
        backend = self._backend
        stopped = backend.cancel_calls([(job_id, cid) for job_id, cid, _job in running]) if backend is not None else set()
        out |= stopped
        with self._lock:
            for job_id, cid, job in running:
                if (job_id, cid) not in stopped and self._at_boundary(job, cid):
                    out.add((job_id, cid))
        return out

    def _at_boundary(self, job: RunningJob, cid: str) -> bool:
        """A call asked to stop that the backend did not find running (lock held):
        True if it ends cancelled (it did: its outcome came in while the stop was
        asked, ``_stop_wins``, or it was at its segment boundary; or its next
        segment is not decided on yet, and the decision will see the stop);
        else the stop is withdrawn and the call runs on (it ended, or its next
        segment or attempt is being launched) to its own outcome."""
        state = job.boundary.get(cid) if job.boundary is not None else None
        if state == "cancelled" or (state == "between" and cid in job.stop_asked):
            return True
        job.stop_asked.discard(cid)
        return False

    def _between(self, inv: Invocation) -> None:
        """A segment of the call ended with a checkpoint: it is between two segments until
        the next is decided on (``_next_or_stop``)."""
        with self._lock:
            job = self._jobs.get(inv.key[0])
            if job is not None and not job.finished(inv.key[1]):
                if job.boundary is None:
                    job.boundary = {}
                job.boundary[inv.key[1]] = "between"

    def _stop_wins(self, job: RunningJob, cid: str) -> bool:
        """A call's outcome came in (lock held): True if a stop was asked of it and not
        withdrawn, which ``cancel_calls`` answers (or answered) True: the call ends
        cancelled, whatever it brought (on Lambda a call may finish before its worker
        looks for the cancel marker). Marked so: a ``cancel_calls`` still waiting for
        its backend's answer answers True too (``_at_boundary``). Not at exit, whose
        stops (``_stop_outliving_calls``) answer no one: its calls end as it ends them."""
        if cid not in job.stop_asked or self._stopping:
            return False
        if job.boundary is None:
            job.boundary = {}
        job.boundary[cid] = "cancelled"
        return True

    def _next_or_stop(self, job: RunningJob, cid: str) -> bool:
        """The decision at a segment boundary (lock held): True if a stop was asked (the
        call ends cancelled there), else False (its next segment may go; a stop asked
        from now on is the backend's to make, or withdrawn: ``_at_boundary``)."""
        boundary = job.boundary
        if cid in job.stop_asked:
            if boundary is None:
                boundary = job.boundary = {}
            boundary[cid] = "cancelled"
            return True
        if boundary is not None:
            boundary.pop(cid, None)
        return False

    def _cancel(self, job_id: str, cid: str, stopping: bool = False) -> bool:
        """Take back a call that has not started (``WrenFuture.cancel``): one
        not launched yet leaves the window; a launched one, if its backend
        gives it back. ``stopping``: for ``cancel_calls``, which ends the
        future itself (no ``WrenFuture.cancel`` does after it); a call whose
        future runs (its next segment, or its next attempt, waits to start)
        is taken back too, and ends with ``CallCancelled``."""
        with self._lock:
            job = self._jobs.get(job_id)
            backend = self._backend
            if job is None or job.finished(cid) or backend is None:
                return False
            fut = job.futures[cid]
            ran = fut._state == _base.RUNNING or fut.segments > 0  # (the state read alone: no future's lock under ours)
            if ran and not stopping:
                return False  # (``fut.cancel()`` takes back pending calls only)
            inv = job.invocations.get(cid)
            data = None
            if inv is None:
                i = int(cid)
                data = job.payloads[i] if i < len(job.payloads) else None
                if data is None:
                    return False  # being launched right now
                job.payloads[i] = None
        if inv is None:
            _close_handoff(data)
            log.debug("%s: cancelled before it was launched", fut.label)
        elif not backend.cancel(inv):
            return False
        elif ran:
            segment = int(inv.event.get("segment", 0))
            log.debug("%s: cancelled before its segment %d (attempt %d) started", inv.label, segment, inv.attempt)
            what = "between two of its segments" if segment else "before its next attempt"
            self._end_between_segments(inv, CallCancelled(f"{inv.label} was cancelled {what}"))
            return True
        else:
            log.debug("%s: cancelled before it started", inv.label)
        self._resolve(job, cid, False, None, cancelled=True)
        if stopping and not fut._taken_back():
            fut._resolve(False, CallCancelled(f"{fut.label} was cancelled before it ran"))
        return True

    def _pin(self, job_id: str, cid: str) -> bool:
        """A future of this job is being pickled: keep the job's objects (and
        write results that came in a reply to the store) so the reference
        resolves elsewhere. False if the call is done or about to be."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished(cid):
                return False
            unrecorded = not job.pinned and not job.stored
            job.pinned = job.stored = True
        if unrecorded:
            # A job that stored nothing at launch gets its owner record now: a reference reads
            # the job as gone (``CallRef``) when the record is, once its objects are removed.
            try:
                in_call = job.secret if job.template.get("chain") else None  # (launched inside a call: ``launch_proof``)
                self.store.put(keys.owner_key(job_id), json.dumps(owner_record(
                    job.label, job_id, self.backend.capabilities.late_writes_s, launched_in_call=in_call)).encode(),
                    if_absent=True)
            except Exception:  # noqa: BLE001 - a reference then only waits for the result
                log.warning("could not write the owner record of job %s for its pickled future", job_id, exc_info=True)
        return True

    def _track(self, inv: Invocation) -> Invocation:
        with self._lock:
            job = self._jobs.get(inv.key[0])
            if job is not None:
                job.invocations[inv.key[1]] = inv
        return inv

    def _live_backend(self) -> Backend:
        if self._stopping:
            raise ExecutorShutdown("the program is exiting: wrenpack stopped its calls")
        return self.backend

    # -- completion (collector thread) ------------------------------------------
    def _ensure_collector(self) -> None:
        with self._lock:
            if self._collector is None or not self._collector.is_alive():
                # It holds the executor only while completing a call: an executor the
                # program dropped is collected once its calls ended (as a process pool
                # is), and its finalizer ends this thread and the backend's workers.
                self._collector = threading.Thread(target=_collect, args=(weakref.ref(self), self._completions),
                                                   name="wrenpack-collector", daemon=True)
                self._collector.start()
                if self._collector_finalizer is None:
                    self._collector_finalizer = weakref.finalize(self, self._completions.put, None)

    def _fail_completion(self, inv: Invocation, exc: BaseException) -> None:
        job = self._jobs.get(inv.key[0])
        if job is None:
            return
        if isinstance(exc, WrenpackError):
            err: BaseException = exc
        elif isinstance(exc, OSError):
            err = StoreError(f"{inv.label}: could not complete the call: {os_reason(exc)} ({self.store.url})")
        else:
            log.debug("completing %s failed", inv.label, exc_info=True)
            err = WrenpackError(f"{inv.label}: wrenpack could not complete the call: {type(exc).__name__}: {exc_text(exc)}")
        with self._lock:
            stopped = not job.finished(inv.key[1]) and self._stop_wins(job, inv.key[1])
        if stopped and not isinstance(err, CancelledError):
            err = CallCancelled(f"{inv.label} was cancelled while it ran")
        try:
            self._resolve(job, inv.key[1], False, err)
        except Exception:  # noqa: BLE001 - last resort: the future itself
            log.exception("wrenpack: could not fail %s", inv.label)
            fut = job.futures.get(inv.key[1])
            if fut is not None:
                fut._resolve(False, err)

    def _complete(self, inv: Invocation, result: InvocationResult) -> None:
        job_id, cid = inv.key
        job = self._jobs.get(job_id)
        if job is None or job.finished(cid):
            return
        fut = job.futures[cid]
        fut.segments += 1
        status = result.status
        if (result.data is None and result.private is None) or (status is not None and status.get("stored")) \
                or result.error is not None:
            job.stored = True  # the worker wrote to the store (or may have, before it failed)
        if result.error is not None or (status is not None and status.get("exit") == "timeout"):
            self.stopped_writes = True  # the call was stopped where it was: maybe in the middle of a write
        if result.error is None and status is not None and status.get("exit") == "checkpointed":
            # (between two segments since ``_on_done``, the only way here, marked it)
            # Acted on only when authentic: a planted record must not relaunch the call.
            try:
                record = self._read_segment(job, cid, int(inv.event.get("segment", 0)))
            except Exception:
                with self._lock:
                    stop = self._next_or_stop(job, cid)
                if not stop:
                    raise
                record = None  # (a call that ends cancelled needs no record)
            if record is not None:
                fut.segment_statuses.append(dict(record, memory_mb=inv.memory_mb, timeout_s=inv.timeout_s))
            self._continue(inv, record or {})
            return
        data: Any = None
        if result.error is not None:
            ok, value, stored = False, result.error, status
        elif result.private is not None:
            # The backend's own channel (``Backend``'s ``PrivateReply``): its reader says what came.
            stored = status
            try:
                with refs.adopting(functools.partial(origin_of, job.template)) as adopted:
                    outcome, raw = result.private.read()
                self._adopt([*adopted, *getattr(result.private, "adopted", ())])
                ok = outcome.ok
                value = outcome.value if ok else outcome.rebuild(fut.label, fut.job_id)
                # Only for a pinned job: the result as the sealed object a pickled future reads.
                if raw is not None:
                    data = lambda: result_format.seal_result(job.secret, job.job_id, cid, dict(status or {}), raw)  # noqa: E731
                elif ok:
                    data = lambda: self._sealed_copy(job, cid, status, value)  # noqa: E731
            except WrenpackError as exc:
                value, ok = exc, False
        else:
            data = result.data
            try:
                stored, value, ok = self._read_outcome(job, cid, fut.label, data)
            except WrenpackError as exc:
                stored, value, ok = None, exc, False
            stored = stored or status
        final = dict(stored or {})
        logs = final.pop("logs", None)
        final["attempt"] = inv.attempt
        # What the call ran with (the worker's record does not say): a job report shows and prices it.
        final["memory_mb"], final["timeout_s"] = inv.memory_mb, inv.timeout_s
        if not ok and "exit" not in final:
            # (no record from the worker: the call's process died, hit a limit, or its result could not
            # be read; its status says how it ended all the same, as a worker's does for an exception)
            final["exit"] = "error"
            final.setdefault("error", type(value).__name__)
        with self._lock:
            stopped = self._stop_wins(job, cid)
        if stopped:
            # ``wrenpack.cancel`` said True (or will): the call ends cancelled, not with what it
            # brought, and is not tried again. Its status is a cancelled call's (as the handler's
            # own for one that saw its marker), with what the worker recorded of its run.
            if not isinstance(value, CancelledError):
                value = CallCancelled(f"{fut.label} was cancelled while it ran")
            ok, data = False, None
            final.update(exit="error", error="CallCancelled", cancelled=True)
        retried = fut._retried
        if retried:
            final["retried"] = list(retried)
        late = not ok and self._late_segment(inv, value)
        if late or (not ok and self._should_retry(job, inv, value)):
            if retried is None:
                retried = fut._retried = []
            retried.append(f"{type(value).__name__}: {exc_text(value)}")
            fut.retried_statuses.append(dict(final, error=retried[-1]))
            self._retry(job, inv, value, late=late, status=final)
            return
        fut.status, fut.logs = final, logs
        if final.pop("checkpoint_kept", False):
            # (its worker kept the checkpoint for a retry: none comes)
            try:
                self.store.delete(keys.checkpoint_key(job.job_id, cid))
            except Exception:  # noqa: BLE001 - the job's clean-up removes it too
                log.debug("could not delete the checkpoint of %s", inv.label, exc_info=True)
        if not ok and logs and isinstance(value, BaseException):
            cause = value.__cause__
            if isinstance(cause, RemoteTraceback):
                cause.logs = logs
            elif cause is None:
                value.__cause__ = RemoteTraceback("", logs)
        if stopped and job.pinned:
            self._store_cancelled(job, cid, final, value)
        self._resolve(job, cid, ok, value, data=data)

    def _should_retry(self, job: RunningJob, inv: Invocation, exc: Any) -> bool:
        on = job.options.retry_on
        return bool(on) and not self._stopping and inv.attempt < inv.retries and isinstance(exc, on) \
            and not isinstance(exc, CallCancelled)  # (a cancelled call stays cancelled, whatever retry_on says)

    def _late_segment(self, inv: Invocation, exc: Any) -> bool:
        """A later segment of a checkpointed call that ran out of time before it
        saved: run again from the checkpoint the segment before saved
        (``checkpoint.LATE_RERUNS`` times) rather than failing a call that made progress."""
        return isinstance(exc, TaskTimeout) and not self._stopping and \
            checkpoint.rerun_late(int(inv.event.get("segment", 0)), inv.attempt)

    def _retry(self, job: RunningJob, inv: Invocation, exc: BaseException, late: bool = False,
               status: dict[str, Any] | None = None) -> None:
        """Launch a call again after an error the user listed in ``retry_on`` (``late``:
        a checkpointed call's segment that ran out of time, from its last save; ``status``:
        the failed attempt's, which says where it saved last)."""
        _job_id, cid = inv.key
        attempt = inv.attempt + 1
        if late:
            log.info("%s: segment %s ran out of time before it saved; running it again from the last checkpoint",
                     inv.label, inv.event.get("segment"))
        else:
            log.warning("%s failed (%s: %s); retrying (attempt %d of %d) as retry_on asks", inv.label, type(exc).__name__,
                        exc_text(exc), attempt + 1, inv.retries + 1)
        # The failed attempt's result object would win the next write ("first wins").
        self.store.delete(keys.result_key(job.job_id, cid))
        again = dataclasses.replace(inv, attempt=attempt, event=_resuming(dict(inv.event, attempt=attempt), status))
        self._live_backend().invoke(self._track(again))

    def _resolve(self, job: RunningJob, cid: str, ok: bool, value: Any, data: bytes | Callable[[], bytes] | None = None,
                 cancelled: bool = False) -> None:
        """The one place a call ends: bookkeeping, the job's objects, the next
        calls of its window, then the future."""
        with self._lock:
            fut = job.futures.get(cid)
            if fut is None or cid in job.ending:
                return
            job.ending.add(cid)
            job.stop_asked.discard(cid)
            if job.boundary is not None and job.boundary.get(cid) == "between":
                del job.boundary[cid]
            job.ended += 1
            inv = job.invocations.pop(cid, None)  # (what it was launched with is let go of now)
            if inv is not None:
                job.inflight -= 1
            pinned = job.pinned
            persist = pinned and data is not None
            last = job.ended == job.calls
            if last:
                self._jobs.pop(job.job_id, None)
                if job.pinned:
                    self._kept_jobs.add(job.job_id)
                    self._kept_keys.append(job.key)
            idle = last and self._idle()
            more = not last and inv is not None and job.unlaunched()
        if inv is not None and inv.handoff is not None:
            inv.handoff.close()  # no attempt or segment needs the arguments again
        inv = None
        if idle:
            handoff.drain_pool()  # the argument memfds kept for next calls: none are coming
        if more:
            self._fill(job)
        if persist:
            # A pickled reference reads the result from the store, not from our reply.
            try:
                self.store.put(keys.result_key(job.job_id, cid), data() if callable(data) else data, if_absent=True)
            except Exception:  # noqa: BLE001
                log.warning("could not store the result of %s for its pickled future", fut.label, exc_info=True)
        elif pinned and not ok:
            self._store_failure(job, cid, fut, value)
        if last and job.stored and not job.pinned and not self.config.keep_objects:
            self._delete_job(job.job_id)
        if not cancelled:
            fut._resolve(ok, value)
        with self._lock:
            # Let go of it: the caller holds it as long as it needs the result
            # (concurrent.futures keeps no finished future either).
            job.futures.pop(cid, None)
            job.ending.discard(cid)
        fut = None
        if last:
            self._job_ended()

    # -- the launch window ----------------------------------------------------------
    def _fill(self, job: RunningJob, *, raising: bool = False) -> None:
        """Launch the job's next calls while its window has room: at the start
        all it holds, then in batches of an eighth of it as calls end (one
        backend request per batch, not per call). One thread fills a job at a
        time; a call that ends meanwhile asks it to look again. ``raising``:
        the launch itself, whose caller gets the backend's error (else the
        calls that could not be launched fail with it)."""
        with self._lock:
            if job.filling:
                job.fill_again = True
                return
            job.filling = True
        batch = max(1, job.ahead // 8)
        first = raising
        try:
            while True:
                with self._lock:
                    job.fill_again = False
                    room = job.ahead - job.inflight
                    take: list[tuple[int, Any]] = []
                    if (first or room >= batch) and not self._stopping:
                        payloads = job.payloads
                        while room > 0 and job.next < len(payloads):
                            i = job.next
                            job.next += 1
                            data = payloads[i]
                            if data is None:
                                continue  # taken back, or launched already (``_launch_now``)
                            payloads[i] = None
                            take.append((i, data))
                            room -= 1
                        job.inflight += len(take)
                    if not take:
                        if not job.fill_again:
                            job.filling = False
                            return
                        continue
                try:
                    self._send(job, take)
                except BaseException as exc:
                    if first:
                        raise
                    self._fail_unlaunched(job, take, exc)
                first = False
        except BaseException:
            with self._lock:
                job.filling = False
            raise

    def _send_single(self, job: RunningJob) -> None:
        """A new job's one call handed to the backend, as ``_fill(job, raising=True)``
        hands it (its window has room for it; the backend's error is raised),
        in fewer steps (``.remote()`` in a loop launches one per call). Taken
        back meanwhile, or the program exiting: ``_fill`` decides."""
        with self._lock:
            data = job.payloads[0] if job.payloads and not job.filling and not self._stopping else None
            if data is not None:
                job.payloads[0] = None
                job.next = 1
                job.inflight += 1
        if data is None:
            self._fill(job, raising=True)
            return
        self._send(job, [(0, data)])

    def _launch_now(self, job: RunningJob, cid: str) -> None:
        """Launch call ``cid`` now, ahead of its turn (its future is being pickled)."""
        with self._lock:
            i = int(cid)
            data = job.payloads[i] if i < len(job.payloads) and not self._stopping else None
            if data is None:
                return  # launched, taken back, or ended
            job.payloads[i] = None
            job.inflight += 1
        try:
            self._send(job, [(i, data)])
        except BaseException as exc:  # noqa: BLE001 - the call fails with it
            self._fail_unlaunched(job, [(i, data)], exc)

    def _send(self, job: RunningJob, take: list[tuple[int, Any]]) -> None:
        """Make the invocations of these calls (``(index, pickled arguments)``) and hand them to the backend."""
        invocations = [self._invocation(job, i, data) for i, data in take]
        with self._lock:
            for inv in invocations:
                job.invocations[inv.key[1]] = inv
        self._live_backend().invoke_many(invocations)

    def _fail_unlaunched(self, job: RunningJob, take: list[tuple[int, Any]], exc: BaseException) -> None:
        """The backend refused calls (it was shut down, say): they fail with its
        error, and so do the calls still waiting to be launched (none ever would be)."""
        log.debug("job %s: launching calls failed", job.job_id, exc_info=True)
        err = exc if isinstance(exc, Exception) else WrenpackError(f"{job.label}: the calls could not be launched: {exc!r}")
        with self._lock:
            for i, _d in take:
                if keys.call_id(i) not in job.invocations:
                    job.inflight -= 1  # (its invocation was never made: ``_resolve`` will not count it)
            rest = [(i, d) for i, d in enumerate(job.payloads) if d is not None]
            for i, _d in rest:
                job.payloads[i] = None
            job.next = len(job.payloads)
        for i, data in take + rest:
            _close_handoff(data)
            cid = keys.call_id(i)
            self._resolve(job, cid, False, err)

    def _idle(self) -> bool:
        """No job runs and no map holds calls back (lock held)."""
        return not self._jobs and not self._plans

    def _drain_if_idle(self) -> bool:
        """No call runs or waits: the argument memfds kept for the next calls go.
        True if so."""
        with self._lock:
            idle = self._idle()
        if idle:
            handoff.drain_pool()
        return idle

    def _job_ended(self) -> None:
        # (drains too: a map whose last calls were never launched, or a feed that finished after them)
        if self._drain_if_idle() and self._release_when_idle:
            self._release()

    def _delete_job(self, job_id: str) -> None:
        try:
            if job_id in self._outliving:
                # Calls of it run on elsewhere (stopped at exit): its cancel markers stay for them to
                # find, and its owner record for `wrenpack clean --stale`, which removes what they write late.
                self.store.delete_prefix_except(keys.job_prefix(job_id), keys.kept_for_late_writes(job_id))
                return
            self.store.delete_prefix(keys.job_prefix(job_id))
        except Exception as exc:  # noqa: BLE001 - the results are already read
            log.warning("could not delete the objects of job %s from %s: %s", job_id, self.store.url, exc)

    def _continue(self, inv: Invocation, status: dict[str, Any]) -> None:
        """Launch the next segment of a checkpointed call; or end it cancelled if a
        stop was asked while it was between segments (``_next_or_stop``), or fail
        it once it ran ``checkpoint.MAX_SEGMENTS`` (a backstop for a loop that never finishes)."""
        job_id, cid = inv.key
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished(cid):
                return
            stop = (job.boundary or {}).get(cid) == "cancelled" or self._next_or_stop(job, cid)
        if stop:
            # (its worker looks for the cancel marker only a while into a segment: on Lambda,
            # segments shorter than that were launched one after another, and the call never ended)
            self._end_between_segments(inv, CallCancelled(f"{inv.label} was cancelled between two of its segments"))
            return
        event = dict(inv.event, segment=int(inv.event.get("segment", 0)) + 1, attempt=0)
        try:
            bound = checkpoint.max_segments()  # (checked at launch too; changed since, it fails the call here)
        except ConfigError as exc:
            self._end_between_segments(inv, type(exc)(f"{inv.label}: {exc}"))
            return
        if event["segment"] >= bound:
            self._end_between_segments(inv, TaskError(
                f"{inv.label} ran {event['segment']} checkpointed segments without finishing, the most "
                "wrenpack.worker.checkpoint.MAX_SEGMENTS allows; if its loop does not go on from the state restore() "
                "returns, make it do so; if the call needs more segments, raise MAX_SEGMENTS before launching it"))
            return
        if status.get("checkpoint"):
            # What this segment learned (step and save times; the state it began from) tunes and checks the next one.
            event["checkpoint"] = {k: status["checkpoint"][k] for k in checkpoint.LEARNED if k in status["checkpoint"]}
        event = _resuming(event, status)
        event.setdefault("ckpt_from", None)  # (always there from the second segment on: a worker that predates it refuses the event)
        log.info("%s: segment %d saved a checkpoint; launching segment %d", inv.label, event["segment"] - 1, event["segment"])
        self._live_backend().invoke(self._track(dataclasses.replace(inv, event=event, attempt=0)))

    def _end_between_segments(self, inv: Invocation, error: Exception) -> None:
        """A checkpointed call ends with ``error`` instead of its next segment (or attempt:
        ``_cancel``); its checkpoint goes. Its status says so as any failed call's does: its
        last invocation's record (the segment that saved, or the attempt that failed), with
        ``exit`` "error" and the error's type (it was None)."""
        job_id, cid = inv.key
        job = self._jobs.get(job_id)
        if job is None:
            return
        fut = job.futures.get(cid)
        if fut is not None and not job.finished(cid):
            last = fut._retried_statuses if inv.attempt and fut._retried_statuses else fut._segment_statuses
            final = dict(last[-1]) if last else {}
            logs = final.pop("logs", None)
            final.update(exit="error", error=type(error).__name__, attempt=inv.attempt,
                         memory_mb=inv.memory_mb, timeout_s=inv.timeout_s)
            if fut._retried:
                final["retried"] = list(fut._retried)
            fut.status, fut.logs = final, logs
        fut = None
        try:
            self.store.delete(keys.checkpoint_key(job_id, cid))  # (as the worker does when a call ends)
        except Exception:  # noqa: BLE001 - the job's clean-up removes it too
            log.debug("could not delete the checkpoint of %s", inv.label, exc_info=True)
        self._resolve(job, cid, False, error)

    def _read_segment(self, job: RunningJob, cid: str, segment: int) -> dict[str, Any]:
        """The verified record of a segment that saved a checkpoint."""
        key = keys.segment_key(job.job_id, cid, segment)
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObject(f"{key}: the call reported a checkpointed segment but its record is missing; re-run the call") from None
        return segment_format.open_segment(job.secret, job.job_id, cid, segment, blob)

    def _store_cancelled(self, job: RunningJob, cid: str, status: dict[str, Any], error: BaseException) -> None:
        """A pinned job's call that ends cancelled though its worker finished first: its
        result object (which the worker may have written, and a pickled future reads)
        says cancelled too."""
        try:
            outcome = cloudpickle.dumps(error_tuple(error, "wrenpack", ""))
            self.store.put(keys.result_key(job.job_id, cid),
                           result_format.seal_result(job.secret, job.job_id, cid, dict(status), outcome))
        except Exception:  # noqa: BLE001
            log.warning("could not store the cancel of call %s of job %s for its pickled future", cid, job.job_id, exc_info=True)

    def _store_failure(self, job: RunningJob, cid: str, fut: WrenFuture, error: BaseException | None) -> None:
        """A pinned job's call that ended without a result object of its own (its
        process died, it hit a limit, it was lost or cancelled before it ran): the
        result object a pickled future reads says so, as the future here does.
        Without it a reference waited for a result that never came, until its
        own call's timeout. A worker's own error outcome, in the store already,
        stays (the write is only if absent)."""
        if error is None:
            error = CallCancelled(f"{fut.label} was cancelled before it ran")
        status = dict(fut.status or {})
        status.update(exit="error", error=type(error).__name__)
        status.pop("logs", None)
        try:
            # (kind LABELLED: the message names the call already)
            outcome = cloudpickle.dumps(error_tuple(error, LABELLED, ""))
            self.store.put(keys.result_key(job.job_id, cid),
                           result_format.seal_result(job.secret, job.job_id, cid, status, outcome), if_absent=True)
        except Exception:  # noqa: BLE001
            log.warning("could not store the failure of %s for its pickled future", fut.label, exc_info=True)

    def _sealed_copy(self, job: RunningJob, cid: str, status: dict[str, Any] | None, value: Any) -> bytes:
        """A handed-off result as the sealed result object a pickled future reads from the store."""

        with refs.sealing_scope():
            outcome = cloudpickle.dumps(("ok", value))
        return result_format.seal_result(job.secret, job.job_id, cid, dict(status or {}), outcome)

    def _read_outcome(self, job: RunningJob, cid: str, label: str, data: bytes | None = None) -> tuple[dict[str, Any] | None, Any, bool]:
        """Verify and read a call's result object, from the reply (``data``) or
        the store: (status, value or exception, ok). Nothing is unpickled
        unless it was sealed with this job's secret for this call."""
        job_id = job.job_id
        if data is None:
            try:
                data = self.store.get(keys.result_key(job_id, cid))
            except ObjectNotFound:
                raise CorruptObject(
                    f"{label}: the worker reported completion but its result object is missing from {self.store.url}; re-run the call"
                ) from None
        with refs.adopting(functools.partial(origin_of, job.template)) as adopted:
            status, outcome = result_format.open_result(job.secret, job_id, cid, data, f"result object of {label}")
        self._adopt(adopted)
        if outcome.ok:
            return status, outcome.value, True
        return status, outcome.rebuild(label, job_id), False

    def _adopt(self, adopted: list[refs.Adopted]) -> None:
        """Jobs launched inside a call of this executor's (``refs.adopting``: their
        references' chains start with the call's job) whose futures the call returned:
        removed when this executor is released (their launcher is gone and removed
        nothing), once the named call's result verifies with the secret derived for the
        job (``core._delete_adopted``), in this executor's store or another (the call
        launched them through an executor of its own settings, such as a worker's
        default one). Before, any job a returned reference named in this executor's store
        was removed unchecked, a spawned job's kept for its retention or another
        program's running one too, by a reference the call made up."""
        if adopted:
            with self._lock:
                self._adopted.extend(adopted)


def origin_of(event: dict[str, Any]) -> refs.Origin:
    """The call an event (or a job's event template) launches, as ``refs.adopting`` judges the
    references in its outcome: its job, chain and secret, and the jobs whose secrets it was given."""
    try:
        secret: bytes | None = auth.decode_secret(event["secret"])
    except (KeyError, ValueError):
        secret = None
    store = event.get("store")
    return refs.Origin(event["job_id"], tuple(event.get("chain") or ()), secret, frozenset(event.get("ref_secrets") or ()),
                       store if isinstance(store, dict) else None)


def _close_handoff(data: Any) -> None:
    if isinstance(data, handoff.Args):
        data.close()


#: threads reading handed-off results at once
_READERS = 2


class _Read(PrivateReply):
    """A private reply already read by a reader thread: what its reader gave, or what it raised."""

    def __init__(self, value: Any) -> None:
        self.value = value
        #: references to calls launched elsewhere that it held (``refs.adopting``)
        self.adopted: list[refs.Adopted] = []

    def read(self) -> tuple[Any, bytes | None]:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def os_reason(exc: OSError) -> str:
    """An OSError as a short reason (``No space left on device: '/x'``)."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename!r}" if exc.filename else reason


def _collect(table_ref: "weakref.ref[CallTable]", completions: queue.SimpleQueue) -> None:
    """The collector thread: completes each call the backend reported, in turn."""
    while True:
        item = completions.get()
        if item is None:
            return
        inv, result = item
        table = table_ref()
        try:
            if table is None:  # (dropped with a call in flight: nobody waits for it)
                continue
            try:
                table._complete(inv, result)
            except BaseException as exc:  # noqa: BLE001 - fail this call, never stop the others
                table._fail_completion(inv, exc)
        finally:
            if result.private is not None:
                result.private.close()  # read or not: a memfd's pages are the worker's until closed
            # Not held while waiting for the next: the last result would outlive its future,
            # and the executor would outlive the program's last reference to it.
            item = inv = result = table = None


def _read_loop(reads: queue.SimpleQueue, completions: queue.SimpleQueue) -> None:
    """A reader thread: reads handed-off results, then queues them for the collector."""
    while True:
        item = reads.get()
        if item is None:
            return
        inv, result = item
        reply = result.private
        try:
            with refs.adopting(functools.partial(origin_of, inv.event)) as adopted:
                read = _Read(reply.read())
            read.adopted = adopted
        except BaseException as exc:  # noqa: BLE001 - the collector fails this call with it
            read = _Read(exc)
        finally:
            reply.close()
        result.private = read
        completions.put((inv, result))
        item = inv = result = reply = read = None


def _resuming(event: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """The call's next invocation (``event``) resumes from the save the one before says it
    wrote last (its verified status's ``ckpt_last``; ``wire.checkpoint.Saves``), and from no
    other: an earlier save copied back over it is refused. If that invocation wrote none, or
    said nothing (a worker that died), the save it began from stays the one to resume from;
    the worker accepts a save of an attempt it did not hear the end of too."""
    last = (status or {}).get("ckpt_last")
    if last is not None:
        try:
            event["ckpt_from"] = list(checkpoint_format.check_from(last) or ()) or None
        except ProtocolError:
            log.debug("ignoring a malformed ckpt_last %r", last)
    return event
