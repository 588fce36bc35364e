"""A spawned job as an object any process of its user can hold: ``Job``, and
``attach`` to find one by its id.

Everything here is read from the store and checked before it is believed:

- the job record (``wire.job_record``) verifies under the user's own key
  (``wrenpack.executor.owner.user_key``); a record that does not is refused;
- the job's secret is derived from that key and the job's id, so results,
  start marks, the progress record and the cancel marker verify as every other
  sealed object does (``wrenpack.auth``): nothing is unpickled that was not
  sealed with it for that call;
- whether the process running the job's calls (its supervisor) lives comes from
  the owner record it wrote, sealed with the same key.

A ``Job``'s futures are ``WrenFuture``s resolved by one watcher thread per
``Job``, which lists the job's result objects every ``POLL_S`` and fails the
calls left when the job was cancelled (``CancelledError``) or ended without
them (``WorkerLost``).
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
from typing import Any, Callable

from wrenpack import auth, keys
from wrenpack.config import DEFAULT_RETENTION_S, MAX_RETENTION_S, parse_retention
from wrenpack.errors import ConfigError, CorruptObject, ObjectNotFound, StoreError, WorkerLost, WrenpackError
from wrenpack.executor.owner import key_path, owner_alive, user_key
from wrenpack.futures import WrenFuture, _check_timeout
from wrenpack.report import JobReport, error_line, lambda_cost
from wrenpack.storage import Store, open_store
from wrenpack.wire import job_record, owner as owner_wire, result as result_format, segment as segment_format, start as start_mark
from wrenpack.worker import refs

log = logging.getLogger("wrenpack.job")

#: how often a job's watcher lists its results (s): a local store, a remote one (S3 requests cost)
POLL_S = 0.2
POLL_REMOTE_S = 0.5
#: how often it looks for the cancel marker and checks that the job's supervisor lives (s)
LIVENESS_S = 1.0
#: after its supervisor died, how long past its last progress record (and the calls' timeout) a
#: call its backend had sent and that outlives its sender (Lambda: an event may wait in Lambda's
#: queue until its deadline, 10 minutes after it was sent) is still waited for (s)
IN_FLIGHT_GRACE_S = 660.0
#: store errors in a row after which a watcher fails the futures left (with the error)
WATCH_FAILURES = 8
#: how long a spawned job whose owner record does not verify counts as starting (s): its supervisor
#: writes a verifiable one before the job record, so one without any owner record never started
START_GRACE_S = 300.0


#: what a job id is: one path segment of letters, digits, '.', '_' and '-' (``new_job_id`` makes
#: '20261205-143416-73377e87'). Anything else would name other objects of the store ("JOB/result",
#: ".."), or a file name the store cannot have, so it is refused before the store is read.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


#: how long ``Job.status`` waits, once every call ended, for the supervisor's final record
SETTLE_S = 5.0


def check_job_id(job_id: Any, where: str = "attach()") -> str:
    """``job_id`` if it is a job id; ``ConfigError`` (one line, naming the fix) otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        shown = repr(job_id) if len(repr(job_id)) <= 60 else repr(job_id)[:57] + "..."
        raise ConfigError(f"{where}: {shown} is not a job id; give one such as 20261205-143416-73377e87 "
                          "(job.id, or one `wrenpack jobs` lists)")
    return job_id


#: the warnings this process gave about a job's objects that do not verify (``_warn_once``)
_warned: set[str] = set()


def _warn_once(store: Store, message: str) -> None:
    """Warn of an object of ``store`` that does not verify once per process: a job's status reads
    its progress record several times (`wrenpack jobs show` printed the same WARNING nine times)."""
    seen = f"{store.url}\0{message}"
    if seen in _warned:
        log.debug("%s", message)
        return
    if len(_warned) < 10000:
        _warned.add(seen)
    log.warning("%s", message)


class JobNotFound(WrenpackError):
    """No job of that id in the store."""


class NotSpawned(WrenpackError):
    """The job was launched with ``.map()``/``.remote()``: its calls end with their driver."""


def logs_dir() -> str:
    """Where spawned jobs' supervisors log: ``jobs/`` beside the owner key."""
    return os.path.join(os.path.dirname(key_path()), "jobs")


def log_path(job_id: str) -> str:
    return os.path.join(logs_dir(), f"{job_id}.log")


def check_retention(retention: Any, default: float = DEFAULT_RETENTION_S) -> float:
    """``retention=`` in seconds (a number, or text such as ``"7d"``, ``"12h"``,
    ``"30m"``; at most 100 years); ``default`` (the ``job_retention`` setting, checked
    alike when it was read) when None."""
    seconds = default if retention is None else parse_retention(retention, "retention=")
    if retention is None and seconds > MAX_RETENTION_S:  # (a setting made in code, not read through parse_retention)
        parse_retention(seconds, "setting 'job_retention'")
    return seconds


def when(t: Any) -> str:
    """A timestamp as local time, or "-" for none (or for one no date can show)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "-"
    except (OverflowError, OSError, ValueError):
        return "-"


def is_scratch(store: Store, job_id: str) -> bool:
    """Whether ``job_id`` names a program's scratch area (its owner record says so)."""
    try:
        return owner_wire.loads(store.get(keys.owner_key(job_id))).get("kind") == "scratch"
    except (ObjectNotFound, StoreError, ValueError):
        return False


def read_record(store: Store, job_id: str, key: bytes | None) -> dict[str, Any]:
    """The verified record of a spawned job; ``JobNotFound``, ``NotSpawned`` or
    ``CorruptObject`` (each one line) otherwise."""
    try:
        data = store.get(keys.job_record_key(job_id))
    except ObjectNotFound:
        if is_scratch(store, job_id):
            raise NotSpawned(f"{job_id} is a program's scratch area (wrenpack.scratch()), not a job: it has no "
                             "calls, and its objects go with the program that made it; `wrenpack clean --stale` "
                             "removes it once that program is gone") from None
        if store.list(keys.job_prefix(job_id)):
            raise NotSpawned(f"job {job_id} was launched with .map()/.remote(): its calls end with the program "
                             "that launched them, so no other process can attach to it; launch it with "
                             "f.spawn_map(items) (or f.spawn(...)) to attach from elsewhere") from None
        raise JobNotFound(f"no job {job_id!r} in the store {store.url}; `wrenpack jobs` lists the jobs there "
                          "(check the id and storage=; only jobs launched with f.spawn_map() or f.spawn() can be "
                          "attached to: a local .map()'s calls keep nothing in the store)") from None
    record = job_record.open_job(key, job_id, data)
    if not record.get("spawned"):
        raise NotSpawned(f"job {job_id} was not spawned: its calls end with the program that launched them; "
                         "launch it with f.spawn_map(items) to attach from elsewhere")
    return record


def attach(job_id: str, storage: str | None = None) -> "Job":
    """The spawned job ``job_id`` (from ``f.spawn_map``), from any process of the
    same user on the same store (``storage``: a path or URL; default the
    ``storage`` setting). Its futures resolve as its calls finish."""
    from wrenpack.config import current
    from wrenpack.storage import store_for_config

    check_job_id(job_id)
    config = current(storage=storage) if storage else current()
    missing = missing_local_store(config)
    if missing is not None:  # (opening a local store creates it: a mistyped storage= would leave a folder)
        raise JobNotFound(f"no job {job_id!r}: there is no store at {missing}; check storage= (or the storage setting)")
    store = store_for_config(config)
    return open_job(store, job_id)


def _reattach(spec: dict[str, Any], job_id: str) -> "Job":
    """A pickled ``Job`` loaded: ``open_job`` on its store (the owner key's checks as ``attach``'s)."""
    return open_job(open_store(spec), job_id)


def open_job(store: Store, job_id: str) -> "Job":
    """``attach`` on a store already open."""
    check_job_id(job_id)
    key = user_key(create=False)
    record = read_record(store, job_id, key)
    assert key is not None  # (read_record verified the record with it)
    return Job(store, job_id, record, job_record.derive_secret(key, job_id))


class Job:
    """A spawned job: ``id``, ``record`` (function, calls, created, owner,
    backend, retention, settings), ``futures()``, ``status()``, ``statuses()``,
    ``cancel()``, ``wait()``, ``results()``. Its calls run on whether or not
    any process holds it."""

    def __init__(self, store: Store, job_id: str, record: dict[str, Any], secret: bytes) -> None:
        self.id = job_id
        self.store = store
        self.record = record
        self._secret = secret
        self._lock = threading.Lock()
        self._futures: list[WrenFuture] | None = None
        self._watcher: threading.Thread | None = None
        #: why the job was stopped other than by its user's cancel, once known (``stop_reason``)
        self._reason: str | None = None
        # (its futures hold it: a report of them is priced with the job's own settings)
        self._key = SpawnedJobKey(job_id, self.report_settings())
        refs.remember(job_id, secret)  # a future of this job pickled here carries it (as a launched one's does)

    # -- what the record says ----------------------------------------------------
    @property
    def function(self) -> str:
        return str(self.record.get("function", ""))

    @property
    def calls(self) -> int:
        return int(self.record.get("calls", 0))

    @property
    def created(self) -> float:
        return float(self.record.get("created", 0.0))

    @property
    def expires(self) -> float:
        """When ``wrenpack clean`` may remove the job's objects (once it is not running)."""
        return self.created + float(self.record.get("retention_s", DEFAULT_RETENTION_S))

    @property
    def log_path(self) -> str:
        """Where its supervisor logs (on the machine it was spawned on)."""
        return log_path(self.id)

    def __repr__(self) -> str:
        return f"<wrenpack.Job {self.id} {self.function} ({self.calls} call{'s' if self.calls != 1 else ''})>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled, a job is its store and id, as ``attach`` takes them: the process that
        # loads it (a multiprocessing pool's worker, a script given it) attaches again, with
        # the user's owner key there. The job's secret does not travel in the pickle: before,
        # pickling failed on the lock inside ("cannot pickle '_thread.lock'").
        return _reattach, (self.store.spec, self.id)

    # -- futures -----------------------------------------------------------------
    def futures(self) -> list[WrenFuture]:
        """One future per call, in call order (the same list every time). They
        resolve as the calls finish; ``cancel()`` on one returns False (the call
        runs elsewhere): ``Job.cancel()`` cancels the job."""
        with self._lock:
            if self._futures is None:
                spec = self.store.spec
                label = self.function
                futs = []
                for i in range(self.calls):
                    cid = keys.call_id(i)
                    fut = WrenFuture(self.id, cid, f"{label}[{i}]" if self.calls > 1 else label)
                    fut._canceller = _cannot_cancel
                    fut._pin = _pinned
                    fut._job_key = self._key
                    fut._ref = {"job_id": self.id, "call_id": cid, "label": fut.label, "store": spec, "chain": [],
                                "result_job": self.id, "result_call": cid, "item": None}
                    futs.append(fut)
                self._futures = futs
                self._watcher = threading.Thread(target=_watch, args=(self, futs), name=f"wrenpack-job-{self.id}",
                                                 daemon=True)
                self._watcher.start()
            return list(self._futures)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every call to end; True if they all did within ``timeout`` (seconds, or None:
        checked as ``results``'s, a ``ConfigTypeError`` naming it rather than a TypeError from inside)."""
        _check_timeout(timeout, "job.wait")
        _done, pending = cf.wait(self.futures(), timeout=timeout)
        return not pending

    def _settled_progress(self) -> dict[str, Any] | None:
        """``progress()``, once every one of this object's futures has ended (each result read
        from the store): the supervisor writes the job's final record a moment later, once it
        has seen them too (on Lambda it looks for results in rounds). Waited for, at most
        ``SETTLE_S``, so that ``status()`` after the futures ended (``wait()``, ``results()``,
        ``concurrent.futures.wait``) says how the job ended; before, it said "running, 0 done"
        in half the runs on Lambda, and "cancelling" after a cancel."""
        futures = self._futures
        if futures is None or not all(f.done() for f in futures):
            return self.progress()
        end = time.monotonic() + SETTLE_S
        while True:
            progress = self.progress()
            if (progress or {}).get("state") in job_record.FINAL_STATES or time.monotonic() >= end:
                return progress
            if self.supervisor()[0] is False:
                return progress  # (gone: no final record is coming; status() says "lost" or counts the results)
            time.sleep(0.05)

    def results(self, timeout: float | None = None, return_exceptions: bool = False,
                progress: bool | str | None = None) -> list[Any]:
        """The calls' results in order: ``wrenpack.get`` of ``futures()``, with its
        ``progress`` display (None: a bar on a terminal, or what the ``progress``
        setting says), since a spawned job is the long wait that needs one."""
        from wrenpack.futures import get

        return get(self.futures(), timeout=timeout, progress=progress, return_exceptions=return_exceptions)

    # -- state -------------------------------------------------------------------
    def progress(self) -> dict[str, Any] | None:
        """The verified progress record its supervisor writes, or None (none yet, or not authentic)."""
        try:
            return job_record.open_progress(self._secret, self.id, self.store.get(keys.progress_key(self.id)))
        except ObjectNotFound:
            return None
        except CorruptObject as exc:
            _warn_once(self.store, str(exc))
            return None

    def cancelled(self) -> bool:
        """Whether an authentic cancel marker is in the store."""
        try:
            job_record.open_cancel(self._secret, self.id, self.store.get(keys.cancel_key(self.id)))
            return True
        except ObjectNotFound:
            return False
        except CorruptObject as exc:
            _warn_once(self.store, f"{exc}; ignored")
            return False

    def stop_reason(self) -> str | None:
        """Why the job was stopped other than by its user's cancel ("the supervisor got
        SIGTERM"), as its final progress record or its cancel marker (both sealed) says;
        None for a job not stopped so (a user's cancel says nothing more)."""
        if self._reason is not None:
            return self._reason
        reason = (self.progress() or {}).get("reason")
        if not isinstance(reason, str):
            try:
                reason = job_record.open_cancel(self._secret, self.id, self.store.get(keys.cancel_key(self.id))).get("reason")
            except (ObjectNotFound, CorruptObject):
                reason = None
        if isinstance(reason, str) and reason:
            self._reason = reason
        return self._reason

    @property
    def stops_running(self) -> bool:
        """Whether a cancel stops the job's running calls (False: it was spawned with
        ``cancellable=False``, and they run to their end, keeping their results)."""
        return (self.record.get("settings") or {}).get("cancellable", True) is not False

    def supervisor(self) -> tuple[bool | None, dict[str, Any] | None]:
        """(alive, owner record) of the process that runs the job's calls: alive is
        None when that cannot be told (another host; an owner record that does not
        verify, for ``START_GRACE_S`` after the job was spawned), False once a job that
        old has no authentic record. False at once when there is no owner record at all:
        the supervisor writes its owner record before the job record (``spawn``), so
        such a job's never started (an older wrenpack's driver, killed inside spawn_map,
        left its record; before, it was "starting" for ``START_GRACE_S``)."""
        try:
            record: dict[str, Any] | None = owner_wire.loads(self.store.get(keys.owner_key(self.id)))
        except ObjectNotFound:
            return False, None
        except ValueError:
            record = None
        key = user_key(create=False)
        if record is None or key is None or not owner_wire.verify(key, self.id, record):
            return (None if time.time() < self.created + START_GRACE_S else False), None
        return owner_alive(record), record

    def status(self) -> dict[str, Any]:
        """Counts and state: ``{"state", "calls", "done", "failed", "running",
        "queued", "cancelled", "created", "updated", "cost", "why"}``. ``state`` is
        "starting", "running", "cancelling", "done", "failed", "cancelled",
        "lost" (its supervisor ended before its calls did), or "removed" (its
        objects were removed from the store since it was opened: ``wrenpack clean``).
        ``why``: the reason a job was cancelled other than by its user (its supervisor
        got SIGTERM: ``stop_reason``), else None."""
        progress = self._settled_progress() or {}
        state = progress.get("state", "starting")
        if not progress and self.removed():
            state = "removed"
        elif state not in job_record.FINAL_STATES:
            alive, _owner = self.supervisor()
            if alive is False:
                progress = self.progress() or progress  # (it may have ended between the two reads)
                state = progress.get("state", state)
                if state not in job_record.FINAL_STATES:
                    state = "lost"
            elif self.cancelled():
                state = "cancelling"
        counts = {name: int(progress.get(name, 0)) for name in ("done", "failed", "running", "queued", "cancelled")}
        if not progress:
            counts["queued"] = self.calls
        billed_ms, invocations = float(progress.get("billed_ms", 0)), int(progress.get("invocations", 0))
        if state == "lost":
            # Its supervisor is gone: the counts are the results in the store (its last progress record
            # missed the calls that ended after it, and says nothing if it was never written or does not
            # verify: before, "0 done, 4 failed" over two results). A call without one failed with it (the
            # futures fail with WorkerLost; CancelledError if the job was cancelled), except calls sent
            # where they outlive it (Lambda), which may still end until the latest they could (``_watch_round``).
            ended = self._outcomes()
            counts = {name: 0 for name in counts}
            for _status, _outcome, ended_as in ended.values():
                counts[ended_as] += 1
            waiting = self._outliving(progress) - set(ended)
            rest = self.calls - len(ended) - len(waiting)
            counts["running"] = len(waiting)
            counts["cancelled" if self.stops_running and self.cancelled() else "failed"] += max(0, rest)
            ran = [float(st["duration_s"]) for st, _o, _e in ended.values()
                   if type(st.get("duration_s")) in (int, float) and math.isfinite(st["duration_s"]) and st["duration_s"] > 0]
            billed_ms = max(billed_ms, float(sum(math.ceil(d * 1000) for d in ran)))
            invocations = max(invocations, len(ended))
            if len(ended) == self.calls:
                # Every call has its result: the job ended, though its final record is missing or does not
                # verify (before, "lost, 2 failed" over two calls that were done)
                state = "cancelled" if self.cancelled() else "failed" if counts["failed"] else "done"
        settings = self.record.get("settings") or {}
        cost = lambda_cost(float(settings.get("memory", 1024)), billed_ms, invocations,
                           str(settings.get("architecture", "x86_64")))
        why = self.stop_reason() if state in ("cancelling", "cancelled", "lost") else None
        return {"id": self.id, "function": self.function, "state": state, "calls": self.calls, **counts,
                "created": self.created, "updated": progress.get("updated"), "ended": progress.get("ended"),
                "invocations": invocations, "billed_ms": billed_ms, "cost": cost, "why": why}

    def _outliving(self, progress: dict[str, Any]) -> set[str]:
        """The calls its supervisor had sent where calls outlive it (Lambda), when it died:
        they may still end until their timeout plus ``IN_FLIGHT_GRACE_S`` after its last
        progress record (``_watch_round`` waits for them that long)."""
        if not progress.get("outlive"):
            return set()
        timeout = float((self.record.get("settings") or {}).get("timeout") or 900)
        if time.time() >= float(progress.get("updated") or 0) + timeout + IN_FLIGHT_GRACE_S:
            return set()
        return {cid for cid in progress.get("in_flight") or () if isinstance(cid, str)}

    def statuses(self) -> list[dict[str, Any]]:
        """One record per call, in call order: the status record its worker wrote
        (start, end, duration_s, peak_rss_mb, attempt, exit, ...) with ``state``
        ("done", "failed") and ``attempts``; a call not finished is
        ``{"call_id", "state": "running", "start"}`` or ``"queued"`` (and
        "cancelled" or "lost" once the job ended without it). Every record is
        verified first; none is unpickled."""
        # The job's state first: once it has ended, every result it will have is in the store, so a
        # call without one was cancelled or lost; while it runs (or is "starting"), such a call is
        # running or queued.
        state = self.status()["state"]
        progress = self.progress() or {}
        # calls sent to Lambda: running while the job runs, and after its supervisor died until they could end
        sent = _sent(progress) if state in ("running", "cancelling") else self._outliving(progress) if state == "lost" \
            else set()
        ended = {"cancelled": "cancelled", "cancelling": "cancelled", "done": "lost", "failed": "lost",
                 "lost": "lost"}.get(state)
        finished: dict[str, dict[str, Any]] = {}
        for cid, (status, outcome, ended_as) in self._outcomes().items():
            finished[cid] = dict(status, call_id=cid, state=ended_as, attempts=int(status.get("attempt") or 0) + 1)
            if ended_as == "failed":
                error = error_of(outcome)  # (the status says at most the type; the outcome has the message)
                if error is not None:
                    finished[cid]["error"] = error
        started = self._starts()
        out = []
        for i in range(self.calls):
            cid = keys.call_id(i)
            if cid in finished:
                out.append(finished[cid])
            elif cid in started or cid in sent:
                # (a cancelled job spawned with cancellable=False lets its running calls run to their end)
                stopped = ended if state != "cancelling" or self.stops_running else None
                if cid in sent and state == "lost":
                    stopped = None
                out.append({"call_id": cid, "state": stopped or "running", "start": started.get(cid)})
            else:
                out.append({"call_id": cid, "state": ended or "queued"})
        return out

    def _outcomes(self) -> dict[str, tuple[dict[str, Any], Any, str]]:
        """(status record, outcome, "done" | "failed" | "cancelled") of each call whose result
        object is in the store, each verified first (none unpickled)."""
        out = {}
        for key in self.store.list(keys.result_prefix(self.id)):
            if not key.endswith(".res"):
                continue
            cid = keys.call_id_from_key(key)
            try:
                blob = self.store.get(key)
                data = auth.unseal_view(self._secret, keys.identity(self.id, "result", cid), blob, key)
                status, outcome = result_format.unpack(data, f"result object of call {cid}")
            except (ObjectNotFound, CorruptObject) as exc:
                _warn_once(self.store, str(exc))
                continue
            # (a call stopped by the job's cancel while it ran ends with an outcome of its own, which
            # its worker marks ``cancelled``: it was cancelled, as the job's counts say, not failed;
            # one taken back before it ran has the record its supervisor wrote, naming CallCancelled)
            ended_as = "done" if status.get("exit") == "ok" else "cancelled" if _cancelled_record(status) else "failed"
            out[cid] = (status, outcome, ended_as)
        return out

    def segment_statuses(self) -> list[dict[str, Any]]:
        """The records of the segments that ended in a checkpoint (a split call's
        earlier invocations), each verified first, in key order."""
        out = []
        for key in self.store.list(keys.result_prefix(self.id)):
            if not key.endswith(".seg"):
                continue
            cid = keys.call_id_from_key(key)
            try:
                segment = int(key.rsplit(".", 2)[-2])
                status = segment_format.open_segment(self._secret, self.id, cid, segment, self.store.get(key))
            except (ValueError, ObjectNotFound, CorruptObject) as exc:
                _warn_once(self.store, f"{key}: {exc}")
                continue
            out.append(dict(status, call_id=cid, segment=segment))
        return out

    def report(self) -> JobReport:
        """The job's report (``wrenpack.report.JobReport``): its timeline, the
        settings its calls ran with and its cost, running or ended; in a
        notebook it shows inline, ``.save("job.html")`` writes a page."""
        records = []
        for rec in self.statuses() + self.segment_statuses():
            rec = dict(rec, job_id=self.id)
            state = rec.pop("state", None)
            if "exit" not in rec:  # no outcome record: the state the job's watcher knows
                if state == "lost":
                    rec.update(state="failed", error="the job's supervisor ended before this call did")
                elif state in ("running", "queued", "cancelled"):
                    rec["state"] = state
            elif state == "cancelled":  # (stopped by the job's cancel while it ran: its outcome says so)
                rec["state"] = state
            records.append(rec)
        return JobReport(records, dict(self.report_settings(), job_id=self.id, label=self.function))

    def report_settings(self) -> dict[str, Any]:
        """What its calls ran with and what prices them, as ``JobReport`` takes it:
        the settings of the job's record (memory, timeout, architecture, billed...),
        not the defaults of whichever executor reports on its futures."""
        settings = self.record.get("settings") or {}
        return {"backend": self.record.get("backend"), "billed": bool(settings.get("billed")),
                "architecture": settings.get("architecture") or "x86_64", "memory_mb": settings.get("memory"),
                "timeout_s": settings.get("timeout"), "ephemeral_storage_mb": settings.get("ephemeral_storage"),
                "retries": settings.get("retries")}

    def _starts(self) -> dict[str, float]:
        """When each started call began (its sealed start mark)."""
        out = {}
        now = time.time()
        for key in self.store.list(f"{keys.job_prefix(self.id)}start/"):
            cid = keys.call_id_from_key(key)
            try:
                out[cid] = start_mark.open_start(self._secret, self.id, cid, self.store.get(key), now)
            except (ObjectNotFound, CorruptObject):
                continue
        return out

    def removed(self) -> bool:
        """Whether the job's record is gone from the store (``wrenpack clean`` removed the
        job after this ``Job`` was opened): its results, if it had any, went with it."""
        return not self.store.exists(keys.job_record_key(self.id))

    def cancel(self) -> bool:
        """Cancel the job: its queued calls never start, running ones are stopped
        where the backend can stop them (unless it was spawned with
        ``cancellable=False``: they run to their end and keep their results), and
        futures not done fail with ``CancelledError``. False if the job had already ended
        (its calls all ended, or its supervisor is gone and its calls with it: "lost")."""
        progress = self.progress() or {}
        if progress.get("state") in job_record.FINAL_STATES:
            return False
        if not progress.get("outlive") and self.supervisor()[0] is False:
            # (a lost job whose calls could not outlive its supervisor: nothing runs to cancel. On
            # Lambda the calls it had sent may still run, and the marker stops them.)
            return False
        marker = {"at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        self.store.put(keys.cancel_key(self.id), job_record.seal_cancel(self._secret, self.id, marker))
        return True

    # -- reading one result ------------------------------------------------------
    def _read_result(self, fut: WrenFuture, key: str) -> None:
        """Verify, read and resolve ``fut`` from its result object."""
        cid = fut.call_id
        try:
            blob = self.store.get(key)
            # (references in it judged as in any call's outcome, ``refs.Origin``: a spawned job's calls
            # were given the secrets of the futures among their arguments, which its record does not list)
            with refs.adopting(refs.Origin(self.id, (), self._secret or None, store=self.store.spec)):
                status, outcome = result_format.open_result(self._secret, self.id, cid, blob, f"result object of {fut.label}")
        except ObjectNotFound:
            return
        except WrenpackError as exc:
            fut._resolve(False, exc)
            return
        status = dict(status)
        fut.logs = status.pop("logs", None)
        fut.status = status
        fut.segments = max(1, int(status.get("segment") or 0) + 1)
        if outcome.ok:
            fut._resolve(True, outcome.value)
            return
        exc = outcome.rebuild(fut.label, fut.job_id)
        reason = self.stop_reason() if isinstance(exc, cf.CancelledError) else None
        if reason is not None:
            # (stopped because its supervisor got SIGTERM, not by its user: the error says so, ran or not)
            fut._resolve(False, _naming(exc, reason))
            return
        if isinstance(exc, cf.CancelledError) and status.get("start") is None and cf.Future.cancel(fut):
            # Cancelled before it ran (the job's cancel took it back): the future is cancelled, as
            # ``concurrent.futures`` has it for a future whose result() raises CancelledError (before,
            # it raised CancelledError and said cancelled() False). A call stopped while it ran (its
            # record says when it started) fails with CallCancelled, as in the program that launched it.
            fut.set_running_or_notify_cancel()
            return
        fut._resolve(False, exc)


def _cancelled_record(status: dict[str, Any]) -> bool:
    """Whether a call's verified status record says the call ended cancelled: stopped while it
    ran (``cancelled``), or taken back before it ran (its supervisor's record: ``CallCancelled``)."""
    return status.get("cancelled") is True or (status.get("exit") == "error" and status.get("error") == "CallCancelled")


class _PlainData(pickle.Unpickler):
    """Loads a pickle of plain data (tuples, strings, bytes, numbers, None) and
    refuses one that names any class or function: nothing of the call's is run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def error_of(outcome: bytes | memoryview) -> str | None:
    """``Type: first line of the message`` of a verified error outcome
    (``wire.outcome``'s 6-tuple: its type's name and message are strings, read
    without unpickling the exception itself), as ``JobReport`` names a failed
    call's error (``report.error_line``: redacted); None for anything else."""
    try:
        loaded = _PlainData(io.BytesIO(bytes(outcome))).load()
    except Exception:  # noqa: BLE001 - not an error tuple of plain data: the status's own word stands
        return None
    if not (isinstance(loaded, tuple) and len(loaded) == 6 and loaded[0] == "error"
            and isinstance(loaded[2], str) and isinstance(loaded[3], str)):
        return None
    return error_line(loaded[2].rpartition(".")[2] or loaded[2], loaded[3])


class SpawnedJobKey(refs.JobKey):
    """A spawned job's ``JobKey``, which its futures hold: also the settings its
    calls ran with, so a report of those futures (``wrenpack.job_report``) prices
    them at the job's memory and architecture (``report.records_of_future``)."""

    __slots__ = ("report_settings",)

    def __init__(self, job_id: str, report_settings: dict[str, Any]) -> None:
        super().__init__(job_id)
        self.report_settings = report_settings


def _cannot_cancel() -> bool:
    return False  # the call runs in another process: Job.cancel() cancels the job


def _pinned() -> bool:
    return True  # a spawned job's objects stay for its retention: a reference resolves elsewhere


def _naming(exc: BaseException, reason: str) -> BaseException:
    """``exc`` with ``reason`` (why its job was stopped) at the end of its message."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({reason})",)
    elif hasattr(exc, "add_note"):  # (Python 3.11+)
        exc.add_note(reason)
    return exc


def _fail_rest(job: Job, futs: list[WrenFuture], cancelled: bool, why: str) -> None:
    """Fail the futures not done: ``cancelled`` (``why``: a reason other than its user's
    cancel, which each one's error names; none: cancelled as ``concurrent.futures`` has it),
    or with ``WorkerLost`` saying ``why``."""
    for fut in futs:
        if fut.done():
            continue
        if cancelled and why:
            fut._resolve(False, cf.CancelledError(f"{fut.label}: job {job.id} was cancelled ({why})"))
        elif cancelled:
            if cf.Future.cancel(fut):  # (the base method: nothing to take back here)
                fut.set_running_or_notify_cancel()
            else:
                fut._resolve(False, cf.CancelledError(f"{fut.label}: job {job.id} was cancelled"))
        else:
            fut._resolve(False, WorkerLost(f"{fut.label}: {why}"))


def _watch(job: Job, futs: list[WrenFuture]) -> None:
    """Resolve ``futs`` from the store until all are done."""
    by_cid = {f.call_id: f for f in futs}
    started: set[str] = set()
    poll = POLL_S if job.store.spec.get("type") == "local" else POLL_REMOTE_S
    next_check = [0.0]
    failures = 0
    try:
        while True:
            try:
                if _watch_round(job, futs, by_cid, started, next_check):
                    return
                failures = 0
            except (OSError, StoreError) as exc:
                # A store that fails for a while (a network hiccup) is tried again; one that keeps failing ends the watch.
                failures += 1
                if failures >= WATCH_FAILURES:
                    raise
                log.warning("reading job %s from %s failed (%s); trying again", job.id, job.store.url, exc)
                time.sleep(min(5.0, poll * 2 ** failures))
                continue
            time.sleep(poll)
    except BaseException as exc:  # noqa: BLE001 - never leave futures waiting for a watcher that is gone
        log.debug("watching job %s failed", job.id, exc_info=True)
        err = exc if isinstance(exc, WrenpackError) else StoreError(
            f"watching job {job.id} in {job.store.url} failed: {type(exc).__name__}: {exc}; attach again")
        for fut in futs:
            if not fut.done():
                fut._resolve(False, err)


def _watch_round(job: Job, futs: list[WrenFuture], by_cid: dict[str, WrenFuture], started: set[str],
                 next_check: list[float]) -> bool:
    """One look at the store; True once every future is done."""
    _collect(job, by_cid, started)
    if all(f.done() for f in futs):
        return True
    now = time.monotonic()
    if now < next_check[0]:
        return False
    next_check[0] = now + LIVENESS_S
    # (a cancel marker ends nothing here: the job's final record does, which its supervisor writes once
    # the calls it stopped have ended, so a call that finished first keeps its result here too)
    progress = job.progress() or {}
    if not progress and job.removed():
        # (without this, such futures waited: "starting" for START_GRACE_S, then "lost" as if its supervisor had died)
        _collect(job, by_cid, started)
        err = f"job {job.id} was removed from the store {job.store.url} (wrenpack clean) before this call's result was read"
        for fut in futs:
            if not fut.done():
                fut._resolve(False, JobNotFound(f"{fut.label}: {err}"))
        return True
    state = progress.get("state")
    for cid in _sent(progress):  # (calls sent to Lambda mark no start of their own: ``_sent``)
        fut = by_cid.get(cid)
        if fut is not None and not fut.done():
            fut._mark_running()
    alive: bool | None = True
    if state not in job_record.FINAL_STATES:
        alive, _owner = job.supervisor()
        if alive is False:
            progress = job.progress() or progress  # it may have just ended
            state = progress.get("state")
    if state not in job_record.FINAL_STATES and alive is not False:
        return False
    _collect(job, by_cid, started)
    if state == "cancelled" or (state not in job_record.FINAL_STATES and job.stops_running and job.cancelled()):
        _fail_rest(job, futs, True, job.stop_reason() or "")  # (cancelled, or cancelled and then its supervisor died)
    elif state in job_record.FINAL_STATES:
        _fail_rest(job, futs, False, f"job {job.id} ended without a result for this call")
    else:
        stopped = job.stop_reason()  # (asked to stop, a SIGTERM, and then killed before it recorded the end)
        why = (f"the process that ran job {job.id} ended before this call finished "
               f"({stopped + '; ' if stopped else ''}its log: {log_path(job.id)})")
        # Calls its backend had sent, where calls outlive the process that sent them (Lambda),
        # may still end: they are waited for until the latest they could.
        in_flight = set(progress.get("in_flight") or ()) if progress.get("outlive") else set()
        waiting = [f for f in futs if f.call_id in in_flight and not f.done()]
        timeout = float((job.record.get("settings") or {}).get("timeout") or 900)
        until = float(progress.get("updated") or 0) + timeout + IN_FLIGHT_GRACE_S
        if waiting and time.time() < until:
            _fail_rest(job, [f for f in futs if f.call_id not in in_flight], False, why)
            return False
        _fail_rest(job, futs, False, why)
    return True


def _sent(progress: dict[str, Any]) -> set[str]:
    """The calls a running job's supervisor has sent where calls outlive it (Lambda) and
    that have not ended (its progress record's ``in_flight``): they count as running, as
    its counts say. A call there writes a start mark only after it waited in Lambda's
    queue (the backend sets the event's ``mark_start_after``), so without this an
    attached process saw every running call of a job on Lambda as queued."""
    if not progress.get("outlive") or progress.get("state") != "running":
        return set()
    return {cid for cid in progress.get("in_flight") or () if isinstance(cid, str)}


def _collect(job: Job, by_cid: dict[str, WrenFuture], started: set[str]) -> None:
    """Resolve the futures whose result objects are in the store; mark the started ones running."""
    pending = {cid for cid, f in by_cid.items() if not f.done()}
    if not pending:
        return
    for key in job.store.list(keys.result_prefix(job.id)):
        if not key.endswith(".res"):
            continue
        cid = keys.call_id_from_key(key)
        if cid in pending:
            job._read_result(by_cid[cid], key)
    if started >= pending:
        return
    for key in job.store.list(f"{keys.job_prefix(job.id)}start/"):
        cid = keys.call_id_from_key(key)
        if cid in pending and cid not in started:
            started.add(cid)
            try:
                start_mark.open_start(job._secret, job.id, cid, job.store.get(key), time.time())
            except (ObjectNotFound, CorruptObject):
                continue  # (not authentic: the call is not shown running on its word)
            by_cid[cid]._mark_running()


# -- for `wrenpack jobs` and `wrenpack clean` ------------------------------------------
def printable(text: str) -> str:
    """``text`` with control characters escaped, for a terminal: a job's id is a folder
    name in the store, which anyone who can write there chooses, and a terminal obeys the
    escape sequences it is sent (and a newline starts a row of its own)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def missing_local_store(config: Any) -> str | None:
    """The URL of the local store ``config`` names when that directory does not
    exist, else None. Opening a local store creates it: a command that only reads
    or removes jobs (``wrenpack jobs``, ``wrenpack clean``) must not, or a mistyped
    ``--storage`` leaves a directory behind and answers "no jobs" as if it were a store."""
    from wrenpack.storage import parse_store_url

    storage = getattr(config, "storage", None)
    if not isinstance(storage, str):
        return None
    spec = parse_store_url(storage)
    if spec.get("type") != "local" or os.path.lexists(spec["root"]):
        return None
    return f"file://{spec['root']}"


def job_ids(store: Store) -> list[str]:
    """Every job that has objects in the store (one level listed, not every object)."""
    return [j for j in store.list_folders(keys.JOBS) if j]


def describe(store: Store, job_id: str, key: bytes | None) -> dict[str, Any]:
    """One row of ``wrenpack jobs``: a spawned job's status and owner; a job
    launched with ``.map()`` (no job record) as its owner record says; a job
    whose record does not verify as ``"untrusted"`` (nothing else of it read);
    one an object of which cannot be read as ``"unreadable"`` (one broken job
    does not hide the others)."""
    try:
        return _describe(store, job_id, key)
    except StoreError as exc:
        log.debug("describing job %s failed", job_id, exc_info=True)
        return {"id": job_id, "spawned": None, "kind": None, "state": "unreadable", "why": str(exc)}


def _describe(store: Store, job_id: str, key: bytes | None) -> dict[str, Any]:
    try:
        job = Job(store, job_id, read_record(store, job_id, key), job_record.derive_secret(key, job_id) if key else b"")
    except NotSpawned:
        return _plain_row(store, job_id, key)
    except CorruptObject as exc:
        return {"id": job_id, "spawned": None, "kind": None, "state": "untrusted", "why": str(exc)}
    except JobNotFound:
        # Listed, yet no object of it can be read: a folder where its job.json (or owner.json)
        # would be (anyone who can write to the store can make one). Raised, "no job ID" ended
        # the whole listing: one such folder hid every job.
        return {"id": job_id, "spawned": None, "kind": None, "state": "unreadable",
                "why": (f"its folder holds no job record or owner record wrenpack can read (a folder where one would be?); "
                        f"if nothing of yours is in {keys.job_prefix(job_id)} of the store, remove it")}
    row = job.status()
    alive, owner = job.supervisor()
    row.update(spawned=True, kind="job", backend=job.record.get("backend"), owner=job.record.get("owner"),
               retention_s=job.record.get("retention_s"), expires=job.expires, settings=job.record.get("settings"),
               supervisor={"pid": owner.get("pid"), "host": owner.get("host"), "alive": alive} if owner else None)
    return row


def _plain_row(store: Store, job_id: str, key: bytes | None) -> dict[str, Any]:
    try:
        record: dict[str, Any] | None = owner_wire.loads(store.get(keys.owner_key(job_id)))
    except (ObjectNotFound, ValueError):
        record = None
    return _owner_row(job_id, job_id, record, key, lambda shown: "scratch" if shown.get("kind") == "scratch" else "job")


def _owner_row(row_id: str, owner_id: str, record: dict[str, Any] | None, key: bytes | None,
               kind: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """A row of ``wrenpack jobs`` as an owner record (sealed for ``owner_id``) says: what it
    names shown only once it verifies with ``key``; ``kind`` of the record so shown."""
    from wrenpack.executor.owner import owner_state

    state, why = owner_state(owner_id, record, key)
    verified = state != "unknown" or (record is not None and key is not None and owner_wire.verify(key, owner_id, record))
    shown = record if verified and record else {}
    return {"id": row_id, "spawned": False, "function": shown.get("label", ""), "kind": kind(shown),
            "state": {"live": "running", "stale": "orphaned"}.get(state, "unknown"), "why": why,
            "created": shown.get("created"),
            "owner": {"host": shown.get("host"), "pid": shown.get("pid")} if shown else None}


def describe_map_reduce(store: Store, shuffle_id: str, key: bytes | None) -> dict[str, Any]:
    """One row of ``wrenpack jobs`` for a map_reduce's intermediate objects (``shuffle/<id>/``
    and its shards), as its owner record says: "running" while the program that runs it
    does, "orphaned" once it is gone (``clean --stale`` removes them). Before, they were
    not listed at all: after a driver was killed in a shuffle, ``wrenpack jobs`` said
    "no jobs" while tens of MB of /dev/shm stayed held."""
    try:
        record = owner_wire.loads(store.get(keys.shuffle_owner_key(shuffle_id)))
    except ObjectNotFound:
        return {"id": shuffle_id, "spawned": False, "kind": "map_reduce", "function": "", "state": "orphaned",
                "why": "its intermediate objects have no owner record (left by a cleanup cut short)", "created": None,
                "owner": None}
    except (StoreError, ValueError) as exc:
        return {"id": shuffle_id, "spawned": None, "kind": "map_reduce", "state": "unreadable", "why": str(exc)}
    return _owner_row(shuffle_id, keys.shuffle_owner_id(shuffle_id), record, key, lambda shown: "map_reduce")


def _verified_owner(store: Store, job_id: str, key: bytes) -> dict[str, Any] | None:
    """The job's owner record if it is sealed with ``key`` for ``job_id``, else None."""
    try:
        record = owner_wire.loads(store.get(keys.owner_key(job_id)))
    except (ObjectNotFound, ValueError):
        return None
    return record if owner_wire.verify(key, job_id, record) else None


def removal_state(store: Store, job_id: str, key: bytes | None) -> tuple[str, str] | None:
    """How ``wrenpack clean`` may treat a spawned job: ("live", why) while its
    supervisor runs, ("retained", why) until its retention ends, ("expired", why)
    after (or at once if its supervisor never started), ("unknown", why) when that cannot be told (a record that does not
    verify, a supervisor on another host still running its calls). None for a
    job that has no job record (launched with ``.map()``: its owner record decides)."""
    try:
        record = read_record(store, job_id, key)
    except NotSpawned:
        return None
    except JobNotFound:
        return None
    except CorruptObject:
        if key is None:  # (nothing to check it with: not a sign that it is another user's)
            return "unknown", f"there is no owner key ({key_path()}) to check its job record with"
        # A record anyone who can write to the store may have replaced: the sealed owner record
        # still says whether the process that runs the job's calls lives (before, `clean ID` and
        # `clean --stale --force` removed a running job whose record had been overwritten, and its
        # supervisor went on writing into the removed folder).
        owner = _verified_owner(store, job_id, key)
        if owner is not None and owner_alive(owner):
            return "live", (f"its job record is not sealed with your owner key (forged?), but its sealed owner "
                            f"record says its process (pid {owner.get('pid')}) still runs")
        return "unknown", "its job record is not sealed with your owner key (another user's, or forged)"
    assert key is not None
    job = Job(store, job_id, record, job_record.derive_secret(key, job_id))
    alive, owner = job.supervisor()
    final = (job.progress() or {}).get("state") in job_record.FINAL_STATES
    if alive and not final:
        # (once its final record is written, every call has ended and its supervisor only stops its
        # workers, a second or two: before, `clean ID` refused a job `jobs cancel` said had ended)
        return "live", f"its supervisor (pid {owner.get('pid') if owner else '?'}) still runs its calls"
    if alive is None and not final:
        if owner is None:  # (one there, but not sealed with the key: a supervisor writes one that is, first)
            return "unknown", "its owner record is not sealed with your owner key (another user's, or forged)"
        return "unknown", f"its supervisor ran on host {owner.get('host')!r}, where it may still run"
    if owner is None and not store.exists(keys.owner_key(job_id)) and not store.exists(keys.progress_key(job_id)):
        # Its supervisor never started (an older wrenpack's driver, killed inside spawn_map, left the record):
        # nothing ran, and nobody was given its id; kept for its retention, it showed "lost" all that time.
        return "expired", "its supervisor never started (its driver was killed inside spawn_map): nothing ran"
    until = when(job.expires)
    if time.time() < job.expires:
        return "retained", f"it is kept until {until} (retention)"
    return "expired", f"its retention ended at {until}"
