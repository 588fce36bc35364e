"""The supervisor of a spawned job: the detached process that runs its calls.

Started by ``wrenpack.job.spawn`` in a session of its own, with its stderr
on the job's log (``~/.cache/wrenpack/jobs/<job>.log``), it:

1. reads the job (settings, pickled function and arguments, secret, sealed
   job record) from its stdin, written by the process that spawned it and by
   nobody else; if that process died before it wrote it all, exits, having
   stored nothing;
2. writes its owner record (``jobs/<job>/owner.json``, sealed with the user's
   key: while it lives, ``wrenpack clean`` keeps the job), then the job record
   (``jobs/<job>/job.json``), and says "ok";
3. launches the calls through an ``Executor`` of its own with the job's id and
   secret, ``keep_objects`` on (local workers store every result; nothing is
   deleted when the calls end), each event naming the job's cancel marker
   (``cancel_key``) and asking for a start mark;
4. until the last call ends: writes the progress record (counts, billed time)
   when it changes, at most every ``PROGRESS_S``; a call that failed without a
   result object (a worker crash, a limit, a lost invocation) gets one saying
   so, so an attached process sees every outcome; an authentic cancel marker
   stops the calls (``Executor.stop``);
5. writes the final progress record, shuts its executor down (local workers
   are stopped) and exits.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import cloudpickle

from wrenpack import auth, keys
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


def main() -> int:
    """The supervisor process's entry point (``python -c`` from ``spawn``)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wrenpack import redact

    redact.install(logging.getLogger().handlers)  # no job secret in the log
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's keys and hang-up do not reach a spawned job
    from wrenpack.executor.termination import leave_default

    leave_default()  # (its executor would otherwise stop the job's calls on SIGTERM, as a driver's does)
    job_id = sys.argv[1] if len(sys.argv) > 1 else "?"
    # The spawning process's own bytes, from its pipe: its sys.path and the size of the rest, then the job.
    try:
        head = json.loads(sys.stdin.buffer.readline())
        size = int(head["size"])
        body = sys.stdin.buffer.read(size)
    except (ValueError, KeyError, TypeError, OSError):
        body, size = b"", -1
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
    def __init__(self, spec: dict[str, Any]) -> None:
        self.job_id: str = spec["job_id"]
        self.secret: bytes = spec["secret"]
        self.label: str = spec["label"]
        self.spec = spec
        name, cls = spec["backend"]
        if name not in backend_names():
            register_backend(name, cls)  # registered at run time in the spawning process
        self.executor = Executor(spec["config"].replace(keep_objects=True))
        self.store = self.executor.store
        self.cancelled = False
        #: calls that failed because the job was cancelled while they ran
        self.stopped: set[str] = set()
        #: how those of them that wrote an outcome ended ("done", "failed", "cancelled"; ``_settle_stopped``)
        self.settled: dict[str, str] = {}
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
            told = True
        except OSError:  # (BrokenPipeError) the spawning process is gone: it never returned the job
            told = False
        # The pipes to the spawning process end here; fds 0 and 1 stay open on /dev/null, so no
        # file or socket opened later (a worker's, which inherits them) takes their numbers.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        if not told:
            # Killed or interrupted inside spawn_map, it never gave anyone the job's id: nothing
            # is run, and the job's objects (its record, this owner record) are not left behind.
            log.error("job %s: the process that spawned it ended before spawn_map returned; nothing was run "
                      "and the job's objects and this log are removed", job_id)
            self.store.delete_prefix(keys.job_prefix(job_id))
            with contextlib.suppress(OSError):
                os.unlink(log_path(job_id))
            return 1
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
            if not self.cancelled and self._cancel_marked():
                self._cancel()
            self._write_progress()
        state = "cancelled" if self.cancelled else "failed" if any(
            not f.cancelled() and f.exception() is not None for f in self.futures) else "done"
        if self.stopped:
            # Calls the cancel stopped where calls outlive this process (Lambda) run on until they see
            # the marker, and end with an outcome of their own (a result, if they finished first): they
            # are waited for before the final record, which attached processes wait for (so none calls a
            # call cancelled that then ends with a result), and `wrenpack clean` keeps the job meanwhile.
            self._settle_stopped(float(options.timeout) + self.STOPPED_GRACE_S if self.outlive else 0.0)
        self._write_final(state)
        log.info("job %s: %s", job_id, state)
        self.executor.shutdown(wait=True)
        return 0

    #: how long past the job's timeout the outcomes of calls a cancel stopped on Lambda are waited for (s)
    STOPPED_GRACE_S = 30.0

    def _settle_stopped(self, wait_s: float) -> None:
        """The outcomes of the calls the job's cancel stopped while they ran, waited for up to
        ``wait_s``: each is counted as it ended (done if it finished first, cancelled if it saw the
        marker) and its time billed (on Lambda it is; before, a cancelled job's cost left it out
        and its counts called finished calls cancelled)."""
        pending = set(self.stopped)
        end = time.monotonic() + wait_s
        while True:
            for cid in sorted(pending):
                key = keys.result_key(self.job_id, cid)
                try:
                    blob = self.store.get(key)
                except ObjectNotFound:
                    continue
                except Exception:  # noqa: BLE001 - a store hiccup: look again
                    log.debug("could not read %s", key, exc_info=True)
                    continue
                pending.discard(cid)
                try:
                    data = auth.unseal_view(self.secret, keys.identity(self.job_id, "result", cid), blob, key)
                    status, _outcome = result_format.unpack(data, f"result object of call {cid}")
                except CorruptObject as exc:
                    log.warning("%s", exc)
                    continue
                if not isinstance(status, dict):
                    continue
                duration = status.get("duration_s")
                with self._lock:
                    if type(duration) in (int, float) and math.isfinite(duration) and duration > 0:
                        self.billed_ms += math.ceil(float(duration) * 1000)
                    self.settled[cid] = "done" if status.get("exit") == "ok" else \
                        "cancelled" if status.get("cancelled") is True else "failed"
            if not pending or time.monotonic() >= end:
                break
            time.sleep(PROGRESS_S)
        if pending and wait_s > 0:
            log.warning("job %s: %d call(s) stopped by its cancel wrote no outcome within %.0f s; their time is "
                        "not in its cost", self.job_id, len(pending), wait_s)

    # -- calls ending ----------------------------------------------------------------
    def _ended(self, fut: WrenFuture) -> None:
        """A call ended: count its billed time; give a failure without a result object one."""
        status = fut.status or {}
        with self._lock:
            for record in [*fut.segment_statuses, status]:
                if record.get("duration_s") is not None:
                    self.billed_ms += math.ceil(float(record["duration_s"]) * 1000)
            self.invocations += max(1, fut.segments) if not fut.cancelled() else 0
        if fut.cancelled():
            return
        if self.cancelled and self.stops_running:
            self.stopped.add(fut.call_id)  # stopped by the cancel: no result (attached futures get CancelledError)
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
        if self.stops_running:
            log.info("job %s: cancelled; stopping its calls", self.job_id)
            self.executor.stop()
            return
        log.info("job %s: cancelled; its queued calls will not start, and its running ones run to their end "
                 "(cancellable=False)", self.job_id)
        for fut in self.futures:
            fut.cancel()

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
            if fut.call_id in self.settled:
                counts[self.settled[fut.call_id]] += 1
            elif fut.cancelled() or fut.call_id in self.stopped:
                counts["cancelled"] += 1
            elif fut.done():
                counts["done" if fut.exception() is None else "failed"] += 1
            elif fut.running():
                counts["running"] += 1
                in_flight.append(fut.call_id)
            else:
                counts["queued"] += 1
        with self._lock:
            seen = (state, tuple(counts.values()), self.billed_ms, tuple(in_flight))
        if state == "running" and seen == self._written:
            return True
        now = time.time()
        with self._lock:
            progress = dict(counts, state=state, invocations=self.invocations, billed_ms=self.billed_ms, updated=now,
                            ended=None if state == "running" else now, outlive=self.outlive,
                            in_flight=in_flight if self.outlive and state == "running" else [])
        try:
            self.store.put(keys.progress_key(self.job_id), job_record.seal_progress(self.secret, self.job_id, progress))
            self._written = seen
            return True
        except Exception:  # noqa: BLE001 - the next write tries again
            log.warning("could not write the progress of job %s", self.job_id, exc_info=True)
            return False
