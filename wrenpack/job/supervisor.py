"""The supervisor of a spawned job: the detached process that runs its calls.

Started by ``wrenpack.job.spawn`` in a session of its own, with its stderr
on the job's log (``~/.cache/wrenpack/jobs/<job>.log``; its stdout too once
the job is handed over, so what the calls print on either stream is there), it:

1. reads the job (settings, pickled function and arguments, secret, sealed
   job record) from its stdin, written by the process that spawned it and by
   nobody else; if that process died before it wrote it all, exits, having
   stored nothing;
2. writes its owner record (``jobs/<job>/owner.json``, sealed with the user's
   key: while it lives, ``wrenpack clean`` keeps the job), then the job record
   (``jobs/<job>/job.json``), says "ok", and waits for the spawning process's
   "go", its last step before ``spawn_map`` returns the job; if its end of the
   pipe closes first (killed inside ``spawn_map``), nothing runs and the job's
   objects and log are removed;
3. launches the calls through an ``Executor`` of its own with the job's id and
   secret, ``keep_objects`` on (local workers store every result; nothing is
   deleted when the calls end), each event naming the job's cancel marker
   (``cancel_key``) and asking for a start mark;
4. until the last call ends: writes the progress record (counts, billed time)
   when it changes, at most every ``PROGRESS_S``; a call that failed without a
   result object (a worker crash, a limit, a lost invocation) gets one saying
   so, so an attached process sees every outcome; an authentic cancel marker
   stops the calls as ``wrenpack.cancel`` does (``Executor.cancel_calls``: the
   queued ones are taken back, the running ones end ``CallCancelled``, their
   run billed), asked again each round for any not stopped yet;
5. writes the final progress record, shuts its executor down (local workers
   are stopped) and exits.

SIGTERM (``kill PID``, ``systemctl stop``, ``docker stop``) asks it to stop
the job, as ``wrenpack jobs cancel`` does: it writes the job's cancel marker
(with the reason, "the supervisor got SIGTERM"), stops the calls as a cancel
does, writes the final record, state ``cancelled`` with that ``reason``, logs
it and exits; an attached process's futures fail with an error naming it.
Before, SIGTERM's default action ended it at once: the job was ``lost``, its
calls ``WorkerLost``, and the log did not say why. A second SIGTERM (or a
SIGKILL) ends it at once. SIGINT and SIGHUP (a terminal's) are ignored.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import cloudpickle

from wrenpack import keys
from wrenpack.backends import backend_names, register_backend
from wrenpack.errors import CorruptObject, ObjectNotFound
from wrenpack.executor import Executor, Prepared
from wrenpack.executor.owner import owner_record
from wrenpack.futures import WrenFuture
from wrenpack.job.client import log_path
from wrenpack.wire import job_record, result as result_format, status as status_record
from wrenpack.wire.outcome import LABELLED, error_tuple
from wrenpack.worker import refs

log = logging.getLogger("wrenpack.job.supervisor")

#: the progress record is written at most this often (s), and the cancel marker looked for
PROGRESS_S = 0.5
#: why the job is stopped before its calls all ended (the reason its records and log give)
SIGTERM_REASON = "the supervisor got SIGTERM"
#: set by the SIGTERM handler: the job is to stop (the main loop acts on it, within ``PROGRESS_S``)
_stop_reason: str | None = None
#: the supervisor's executor, once made (the SIGTERM handler tells it at once: ``Executor.stop_starting``)
_executor: "Executor | None" = None


def _say(message: str) -> None:
    """A line of the log written from a signal handler: straight to fd 2 (the ``logging``
    module's locks may be held by the code the handler interrupted)."""
    now = time.time()
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))},{int(now % 1 * 1000):03d} WARNING {log.name}: {message}\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))


def _on_sigterm(signum: int, _frame: Any) -> None:
    """The first SIGTERM: the job is stopped (``Supervisor._terminate``); a second: the end, now."""
    global _stop_reason
    job_id = sys.argv[1] if len(sys.argv) > 1 else "?"
    if _stop_reason is not None:
        _say(f"job {job_id}: the supervisor got SIGTERM again: ending now, without waiting for its calls")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stop_reason = SIGTERM_REASON
    if _executor is not None:
        # Now, not when the main loop acts on it: a cgroup-wide SIGTERM reaches the local
        # workers too, and a call whose worker it ends must not run again meanwhile, nor a
        # queued one start.
        _executor.stop_starting(SIGTERM_REASON)
    _say(f"job {job_id}: {SIGTERM_REASON}: stopping its calls as `wrenpack jobs cancel` does, then ending "
         "(a second SIGTERM ends it at once)")


def main() -> int:
    """The supervisor process's entry point (``python -c`` from ``spawn``)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wrenpack import redact

    redact.install(logging.getLogger().handlers)  # no job secret in the log
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's keys and hang-up do not reach a spawned job
    from wrenpack.executor.termination import leave_default

    leave_default()  # (its executor would otherwise install a driver's SIGTERM handler: exit cleanup, then the end)
    signal.signal(signal.SIGTERM, _on_sigterm)
    job_id = sys.argv[1] if len(sys.argv) > 1 else "?"
    # The spawning process's own bytes, from its pipe: its sys.path and the size of the rest, then the job.
    try:
        head = json.loads(sys.stdin.buffer.readline())
        size = int(head["size"])
        body = sys.stdin.buffer.read(size)
    except (ValueError, KeyError, TypeError, OSError):
        body, size = b"", -1
    if len(body) == size and _stop_reason is not None:
        # Stopped before it stored anything: spawn_map gets no "ok" and says so, naming this log.
        log.error("job %s: %s before the job was handed over; nothing was run or stored", job_id, _stop_reason)
        return 1
    if len(body) != size:
        # Its spawning process ended (killed inside spawn_map) before it handed the whole job over: nothing
        # of the job was stored (spawn_map leaves that to this process, below), so nothing runs and
        # nothing is left behind; nobody was told of the job, so its log goes too.
        log.error("job %s: the process that spawned it ended before it handed the job over; nothing was run or "
                  "stored", job_id)
        with contextlib.suppress(OSError):
            os.unlink(log_path(job_id))
        return 1
    try:
        sys.path[:0] = [p for p in head["sys_path"] if p not in sys.path]
        spec = cloudpickle.loads(body)
        del body
        return Supervisor(spec).run()
    except BaseException:
        log.exception("the supervisor of job %s failed", job_id)
        return 1


class Supervisor:
    #: why the job was stopped before its calls ended, other than its user's cancel (a SIGTERM)
    reason: str | None = None
    #: whether the SIGTERM was acted on (``_terminate``)
    terminating = False

    def __init__(self, spec: dict[str, Any]) -> None:
        self.job_id: str = spec["job_id"]
        self.secret: bytes = spec["secret"]
        self.label: str = spec["label"]
        self.spec = spec
        name, cls = spec["backend"]
        if name not in backend_names():
            register_backend(name, cls)  # registered at run time in the spawning process
        self.executor = Executor(spec["config"].replace(keep_objects=True))
        global _executor
        _executor = self.executor
        self.store = self.executor.store
        self.cancelled = False
        #: calls the job's cancel stopped, or will (``Executor.cancel_calls`` said so): not asked again
        self.stopped: set[str] = set()
        #: whether a cancel stops running calls (``cancellable``, the job's option)
        self.stops_running = True
        self.billed_ms = 0
        self.invocations = 0
        self._lock = threading.Lock()
        #: what the last progress record written said
        self._written: tuple[Any, ...] | None = None

    def run(self) -> int:
        spec, job_id = self.spec, self.job_id
        # The owner record first, then the job record (sealed by spawn_map): a job record is never without
        # the owner record that says whether its supervisor runs (``Job.supervisor``).
        self.store.put(keys.owner_key(job_id), json.dumps(owner_record(self.label, job_id)).encode())
        self.store.put(keys.job_record_key(job_id), spec.pop("record_blob"))
        try:
            sys.stdout.write("ok\n")
            sys.stdout.flush()
            # Its last word: "go" once spawn_map has done all it had to (its pickles freed, the Job
            # made) but return; end of file if it died first. (A SIGTERM meanwhile is acted on below.)
            told = sys.stdin.buffer.readline() == b"go\n"
        except OSError:  # (BrokenPipeError) the spawning process is gone: it never returned the job
            told = False
        # The pipes to the spawning process end here; fd 0 stays open on /dev/null and fd 1 on the job's
        # log (as fd 2 is), so no file or socket opened later (a worker's, which inherits them) takes
        # their numbers. What the local workers print is relayed to this process's sys.stdout and
        # sys.stderr (``backends.local.output``): both streams of the calls are in the log (stdout on
        # /dev/null dropped every print() of a call; only fut.logs' 64 KB tail kept it).
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        if not told:
            # Killed or interrupted inside spawn_map, it never gave anyone the job's id: nothing
            # is run, and the job's objects (its record, this owner record) are not left behind.
            log.error("job %s: the process that spawned it ended before spawn_map returned; nothing was run "
                      "and the job's objects and this log are removed", job_id)
            self.store.delete_prefix(keys.job_prefix(job_id))
            with contextlib.suppress(OSError):
                os.unlink(log_path(job_id))
            return 1
        if _stop_reason is not None:
            self._stopped_before_launch(_stop_reason, len(spec["payloads"]))
            return 0
        log.info("job %s: running %d call(s) of %s", job_id, len(spec["payloads"]), self.label)
        for ref_job, ref_secret in spec["ref_secrets"].items():
            refs.remember(ref_job, ref_secret)
        options = spec["options"]
        options.extra = dict(options.extra)
        # Every call names the job's cancel marker (unless its running calls cannot be stopped:
        # ``cancellable=False``); locally each marks its start (Lambda's backend marks the starts
        # of calls that waited in its queue).
        self.stops_running = options.cancellable
        watch = {"cancel_key": keys.cancel_key(job_id)} if options.cancellable else {}
        options.extra["event"] = dict(options.extra.get("event", {}), **watch, mark_start_after=0)
        prepared = Prepared(spec["fn_bytes"], spec["payloads"], {(j, tuple(c)) for j, c in spec["referenced"]})
        spec["fn_bytes"] = spec["payloads"] = None  # (the launch holds what it needs)
        try:
            self.futures = self.executor.launch(None, [], options, self.label, prepared=prepared,  # type: ignore[arg-type]
                                                spawned=(job_id, self.secret))
        except Exception as exc:  # noqa: BLE001 - every call fails with it, where an attached process sees it
            log.error("job %s: the launch failed: %s", job_id, exc)
            self._launch_failed(exc, len(prepared.payloads))
            return 1
        #: whether calls sent go on without this process (Lambda): the progress record then names them
        self.outlive = not self.executor.capabilities.calls_end_with_driver
        for fut in self.futures:
            fut.add_done_callback(self._ended)
        self._write_progress()
        while True:
            done, _pending = cf.wait(self.futures, timeout=PROGRESS_S, return_when=cf.ALL_COMPLETED)
            if len(done) == len(self.futures):
                break
            if _stop_reason is not None and not self.terminating:
                self._terminate(_stop_reason)
            elif not self.cancelled and self._cancel_marked():
                self._cancel()
            elif self.cancelled:
                self._stop_calls()  # (a call being launched, or between two segments, when it was first asked)
            self._write_progress()
        state = "cancelled" if self.cancelled else "failed" if any(
            not f.cancelled() and f.exception() is not None for f in self.futures) else "done"
        self._write_final(state)
        log.info("job %s: %s%s", job_id, state, f" ({self.reason})" if self.reason else "")
        self.executor.shutdown(wait=True)
        return 0

    # -- calls ending ----------------------------------------------------------------
    def _ended(self, fut: WrenFuture) -> None:
        """A call ended: count its billed time (a call the job's cancel stopped while it ran
        too: Lambda bills that run); give a failure without a result object one."""
        status = fut.status or {}
        with self._lock:
            for record in [*fut.segment_statuses, status]:
                duration = record.get("duration_s")
                if type(duration) in (int, float) and math.isfinite(duration) and duration > 0:
                    self.billed_ms += math.ceil(float(duration) * 1000)
            self.invocations += 0 if never_ran(fut) else max(1, fut.segments)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            return  # its worker stored the result (or the executor did, for a reply)
        # A worker's own error outcome is in the store already (the put below then writes nothing);
        # an error the backend saw (crash, limit, lost) is not: record it.
        now = time.time()
        record = dict(status) or status_record.record(self.job_id, fut.call_id, int(status.get("attempt") or 0), 0,
                                                      "error", now, now, None, None, "", 0, "", None)
        record.update(exit="error", error=type(exc).__name__)
        try:
            # (kind LABELLED: the executor here already named the call in the message; an attached
            # process relabels "wrenpack" errors, which read "f[0]: f[0]: the worker process died")
            outcome = cloudpickle.dumps(error_tuple(exc, LABELLED, ""))
            blob = result_format.seal_result(self.secret, self.job_id, fut.call_id, record, outcome)
            self.store.put(keys.result_key(self.job_id, fut.call_id), blob, if_absent=True)
        except Exception:  # noqa: BLE001 - an attached process then reports the call lost
            log.warning("could not record the failure of %s", fut.label, exc_info=True)

    def _launch_failed(self, exc: BaseException, calls: int) -> None:
        """Nothing could be launched: each call's result says why, and the job has failed."""
        now = time.time()
        outcome = cloudpickle.dumps(error_tuple(exc, "wrenpack", ""))
        for i in range(calls):
            cid = keys.call_id(i)
            record = status_record.record(self.job_id, cid, 0, 0, "error", now, now, None, None, "", 0, "", None)
            record["error"] = type(exc).__name__
            blob = result_format.seal_result(self.secret, self.job_id, cid, record, outcome)
            self.store.put(keys.result_key(self.job_id, cid), blob, if_absent=True)
        progress = {"state": "failed", "done": 0, "failed": calls, "running": 0, "queued": 0, "cancelled": 0,
                    "invocations": 0, "billed_ms": 0, "updated": now, "ended": now}
        self.store.put(keys.progress_key(self.job_id), job_record.seal_progress(self.secret, self.job_id, progress))

    # -- cancel ----------------------------------------------------------------------
    def _terminate(self, reason: str) -> None:
        """Stop the job for ``reason`` (a SIGTERM) as a cancel does: its cancel marker, with the
        reason, is written first (calls on Lambda watch it and stop themselves; an attached
        process knows the job was cancelled, and why, even if this process is killed next), then
        the calls are stopped. A job its user cancelled already goes on stopping as it was."""
        self.terminating = True
        self.reason = reason if not self.cancelled else None
        if self.reason is None:
            log.info("job %s: %s; it is being cancelled already", self.job_id, reason)
            return
        marker = {"at": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "reason": reason}
        try:
            self.store.put(keys.cancel_key(self.job_id), job_record.seal_cancel(self.secret, self.job_id, marker),
                           if_absent=True)
        except Exception:  # noqa: BLE001 - the calls are stopped here all the same (on Lambda, not the running ones)
            log.warning("job %s: could not write its cancel marker", self.job_id, exc_info=True)
        self._cancel()

    def _stopped_before_launch(self, reason: str, calls: int) -> None:
        """Stopped (a SIGTERM) after spawn_map returned the job, before a call was launched:
        nothing runs; the job ends cancelled, saying why."""
        self.reason = reason
        now = time.time()
        marker = {"at": now, "host": socket.gethostname(), "pid": os.getpid(), "reason": reason}
        with contextlib.suppress(Exception):
            self.store.put(keys.cancel_key(self.job_id), job_record.seal_cancel(self.secret, self.job_id, marker),
                           if_absent=True)
        progress = {"state": "cancelled", "done": 0, "failed": 0, "running": 0, "queued": 0, "cancelled": calls,
                    "invocations": 0, "billed_ms": 0, "updated": now, "ended": now, "reason": reason}
        self.store.put(keys.progress_key(self.job_id), job_record.seal_progress(self.secret, self.job_id, progress))
        log.warning("job %s: %s before its calls were launched; none ran: cancelled (%s)", self.job_id, reason, reason)

    def _cancel_marked(self) -> bool:
        try:
            job_record.open_cancel(self.secret, self.job_id, self.store.get(keys.cancel_key(self.job_id)))
            return True
        except ObjectNotFound:
            return False
        except CorruptObject as exc:
            log.warning("%s; not cancelling", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a store hiccup: look again at the next round
            log.warning("could not read the cancel marker of job %s: %s", self.job_id, exc)
            return False

    def _cancel(self) -> None:
        self.cancelled = True
        why = f"{self.reason}: cancelled" if self.reason else "cancelled"
        if self.stops_running:
            log.info("job %s: %s; stopping its calls", self.job_id, why)
        else:
            log.info("job %s: %s; its queued calls will not start, and its running ones run to their end "
                     "(cancellable=False)", self.job_id, why)
        self._stop_calls()

    def _stop_calls(self) -> None:
        """Stop the calls not ended, as ``wrenpack.cancel`` does: a queued one is taken back
        (its future cancelled); a running one ends ``CallCancelled`` with the record of its
        run, which is billed. Locally the executor stops it (its processes are ended). On
        Lambda each call sent watches the job's cancel marker (its event names it) and ends
        with an outcome of its own, waited for here: CallCancelled, or its result if it
        finished first, which an attached process may have read already, so it is not
        overridden (``Executor.cancel_calls`` would make it cancelled). With
        ``cancellable=False`` only the queued ones are taken back. Not ``Executor.stop``, the
        interpreter's exit: that failed the running calls with "the local backend shut down
        before the call finished" (locally) or ``WorkerLost`` (Lambda), stored as their
        results ahead of their own, and billed none of their run."""
        if self.outlive or not self.stops_running:
            for fut in self.futures:
                if not fut.done():
                    fut.cancel()  # (taken back if it has not started; False, and nothing done, once it has)
            return
        asked = [(self.job_id, f.call_id) for f in self.futures if not f.done() and f.call_id not in self.stopped]
        if not asked:
            return
        try:
            stopped = self.executor.cancel_calls(asked)
        except Exception:  # noqa: BLE001 - asked again at the next round
            log.warning("job %s: could not stop its calls; trying again", self.job_id, exc_info=True)
            return
        self.stopped.update(cid for _job, cid in stopped)

    # -- progress --------------------------------------------------------------------
    #: pauses between the tries of the last progress record (s): about half a minute in all
    FINAL_RETRIES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

    def _write_final(self, state: str) -> bool:
        """The job's last progress record, tried again after a store error: without it an
        attached process would find the supervisor gone and the job "lost", although every
        call's result is in the store."""
        for pause in (*self.FINAL_RETRIES_S, None):
            if self._write_progress(state):
                return True
            if pause is not None:
                time.sleep(pause)
        log.error("job %s: its final state (%s) could not be written; it will show as lost", self.job_id, state)
        return False

    def _write_progress(self, state: str = "running") -> bool:
        """Write the progress record if it changed; whether it is written (False: a store error)."""
        counts = {"done": 0, "failed": 0, "running": 0, "queued": 0, "cancelled": 0}
        in_flight = []
        for fut in self.futures:
            if fut.cancelled():
                counts["cancelled"] += 1
            elif fut.done():
                exc = fut.exception()
                counts["done" if exc is None else "cancelled" if isinstance(exc, cf.CancelledError) else "failed"] += 1
            elif fut.running():
                counts["running"] += 1
                in_flight.append(fut.call_id)
            else:
                counts["queued"] += 1
        with self._lock:
            seen = (state, tuple(counts.values()), self.billed_ms, tuple(in_flight), self.reason)
        if state == "running" and seen == self._written:
            return True
        now = time.time()
        with self._lock:
            progress = dict(counts, state=state, invocations=self.invocations, billed_ms=self.billed_ms, updated=now,
                            ended=None if state == "running" else now, outlive=self.outlive,
                            in_flight=in_flight if self.outlive and state == "running" else [])
            if self.reason is not None:
                progress["reason"] = self.reason
        try:
            self.store.put(keys.progress_key(self.job_id), job_record.seal_progress(self.secret, self.job_id, progress))
            self._written = seen
            return True
        except Exception:  # noqa: BLE001 - the next write tries again
            log.warning("could not write the progress of job %s", self.job_id, exc_info=True)
            return False


def never_ran(fut: WrenFuture) -> bool:
    """Whether a call that ended never ran: cancelled before it started (its future is, or
    it failed ``CallCancelled`` with no record of a run: a call taken back on Lambda)."""
    if fut.cancelled():
        return True
    return isinstance(fut.exception(), cf.CancelledError) and not fut.segment_statuses and \
        (fut.status or {}).get("start") is None
