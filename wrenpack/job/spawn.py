"""Spawning a job: its calls run on after the program that launched them ends.

::

    f.spawn_map(items)
      1. options resolved and checked; function and arguments pickled (nothing
         starts if one cannot be), as bytes (they go to another process)
      2. a job id; its secret derived from the user's key (``wire.job_record``)
      3. the job record (sealed with the user's key), in the spec
      4. the supervisor: a new Python process in a session of its own (so
         neither a SIGKILL of this process nor a terminal's ^C reaches it),
         handed the pickled calls on its stdin; once it has them all it writes
         its owner record, then the job record (jobs/<job>/job.json), and says
         "ok" (``wrenpack.job.supervisor``): nothing is stored for a job whose
         spawning process died before it was handed over
      5. the pickled calls freed here (hundreds of MB take tens of ms), the
         ``Job`` made, and then, as the very last step, "go" to the supervisor,
         which runs nothing until it reads it: if this process dies before
         (its end of the pipe closes), the supervisor removes the job's objects
         and its log and exits. Only the return from ``spawn_map`` comes after
         "go" (``_commit``): before, 75-140 ms of freeing came after the
         supervisor's "ok", and a driver killed then left a job that ran.

The supervisor runs the calls through an ``Executor`` of its own (the same
settings), keeps every result in the store for the job's retention, and exits
when the last call ends. On Lambda it sends the invocations and waits for
them, so calls beyond the concurrency limit still start after this process
is gone; locally it owns the worker processes.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import cloudpickle

from wrenpack import keys
from wrenpack.boot import NO_CWD
from wrenpack.backends import backend_class
from wrenpack.errors import ConfigError, WrenpackError
from wrenpack.executor.arguments import check_calls
from wrenpack.executor.core import new_job_id
from wrenpack.executor.owner import key_path, key_problem, user_key
from wrenpack.job.client import Job, check_retention, log_path, logs_dir
from wrenpack.wire import job_record
from wrenpack.worker import refs

if TYPE_CHECKING:
    from wrenpack.executor import Executor

log = logging.getLogger("wrenpack.job")

#: how long the supervisor may take to start and take the calls (s)
START_TIMEOUT_S = 120.0
#: how long a supervisor killed before it started is waited for (s)
STOP_WAIT_S = 10.0
#: the supervisor's boot line: wrenpack from where the spawning process has it (``sys.argv[2]``; not
#: ``PYTHONPATH``, which the job's workers, and so its calls, would inherit); the user's sys.path
#: follows in the spec
_BOOT = NO_CWD + "sys.path.insert(0,sys.argv[2]);from wrenpack.job.supervisor import main;sys.exit(main())"
_AUTO = ("memory", "timeout", "ephemeral_storage")


def spawn_calls(executor: "Executor", fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                given: dict[str, Any], retention: Any = None) -> Job:
    """Spawn ``fn`` once per ``(args, kwargs)`` of ``calls``; the ``Job`` at once."""
    label = getattr(fn, "__qualname__", None) or "function"
    if not calls:
        raise ConfigError(f"spawn_map({label}) got no items; pass at least one (a job of no calls has nothing to run)")
    _check_arguments(fn, label, calls)
    if refs._current is not None:  # (inside a remote call: its job secret chain, not a user key)
        raise ConfigError(f"{label}: spawn_map/spawn inside a remote call is not supported; use .map() there")
    retention_s = check_retention(retention, executor.config.job_retention)
    # (the settings the supervisor's backend will run with: refused now, before the job is stored)
    check = getattr(backend_class(executor.config.backend), "check_config", None)  # (a plug-in may not have one)
    if check is not None:
        check(executor.config)
    given = dict(given)
    given.pop("auto_size", None)
    auto = [name for name in _AUTO if given.get(name) == "auto"]
    if auto:
        raise ConfigError(f"{label}: {auto[0]}='auto' is not supported by spawn_map/spawn; give a number "
                          f"(`wrenpack profile` recommends one) or use .map()")
    executor.check_open()
    options = executor.options(**given)
    key = user_key()
    if key is None:
        why = key_problem()
        if why is not None:  # (one is there, but not one to trust)
            raise WrenpackError(f"cannot spawn {label}: the owner key {key_path()} that would seal the job is not "
                                f"used, as {why}; remove it so a new one is made")
        raise WrenpackError(f"cannot spawn {label}: there is no usable owner key at {key_path()} to seal the job "
                            "with; make its directory writable (or set WRENPACK_CACHE_DIR)")
    from wrenpack.storage.scratch import refused_in

    with refused_in(f"spawn_map({label})"):  # (a scratch area goes with this program, before the spawned job)
        prepared = executor.prepare(fn, calls, options, label, handoffs=False)
    _check_references(executor, label, prepared.referenced)
    job_id = new_job_id()
    secret = job_record.derive_secret(key, job_id)
    config = executor.config
    record = {
        "job_id": job_id,
        "function": label,
        "calls": len(calls),
        "created": time.time(),
        "owner": {"user": _user(), "host": socket.gethostname()},
        "backend": config.backend,
        "spawned": True,
        "retention_s": retention_s,
        "settings": {"memory": options.memory, "timeout": options.timeout,
                     "ephemeral_storage": options.ephemeral_storage, "retries": options.retries,
                     "cancellable": options.cancellable,
                     "architecture": getattr(config, "architecture", "x86_64"),
                     "billed": bool(getattr(backend_class(config.backend), "bills_per_call", False))},
    }
    store = executor.store
    ref_secrets = {}
    for ref_job, ref_chain in prepared.referenced:
        ref_secret = refs.secret_for(ref_job, ref_chain)
        if ref_secret is not None:
            ref_secrets[ref_job] = ref_secret
    spec = {
        "job_id": job_id, "secret": secret, "label": label, "config": config, "options": options,
        "fn_bytes": prepared.fn_bytes, "payloads": prepared.payloads, "referenced": sorted(prepared.referenced),
        "ref_secrets": ref_secrets, "record": record,
        # the backend's class (by reference): one registered at run time is known to the supervisor too
        "backend": (config.backend, backend_class(config.backend)),
    }
    # The sealed record goes with the spec: the supervisor stores it (after its owner record) once it has
    # the whole spec, so a driver killed before that (while it writes tens of MB of arguments) leaves
    # nothing in the store; before, the record stayed, "starting" for START_GRACE_S, then "lost".
    spec["record_blob"] = job_record.seal_job(key, job_id, record)
    proc: subprocess.Popen | None = None
    try:
        # sys.path first, as a line of its own (unpickling the rest may import the user's modules), and
        # the size of the rest: a supervisor that gets less knows the spawning process died mid-write
        body = cloudpickle.dumps(spec)
        del spec, prepared  # (the pickled arguments live on in body alone)
        head = json.dumps({"sys_path": list(sys.path), "size": len(body)}).encode() + b"\n"
        proc = _start_supervisor(job_id, label, head, body)
        # Everything spawn_map has left to do comes before "go": the arguments' pickles are freed now
        # (200 MB took 75-140 ms), while a driver killed meanwhile still leaves nothing running.
        del body
        job = Job(store, job_id, record, secret)
        log.info("job %s: spawned %d call(s) of %s on %s", job_id, len(calls), label, config.backend)
        # (spawn_map's own list, of thousands of tuples: freed when it returned, 0.8-1 ms after "go")
        calls.clear()
        _commit(job_id, label, proc)  # the last step: from here on the job runs
    except BaseException:
        if proc is not None and proc.stdin is not None and not proc.stdin.closed:
            _abandon(job_id, proc)  # (said "ok", never told "go": it runs nothing; it ends here, before the removal)
        try:
            store.delete_prefix(keys.job_prefix(job_id))
        except Exception:  # noqa: BLE001
            log.debug("could not remove job %s after its failed start", job_id, exc_info=True)
        raise
    return job


def _check_arguments(fn: Callable[..., Any], label: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    """Refuse calls the function cannot take (a missing or unknown argument): a spawned
    call fails where nobody watches, after this program is gone, so the mistake is named
    here, before anything is spawned (``arguments.check_calls``, as every launch)."""
    check_calls(fn, calls, label, which="call {}", verb="spawned", hint=_retention_hint)


def _retention_hint(kwargs: dict[str, Any]) -> str:
    return (" (spawn() passes every keyword to the function; for a retention use "
            "f.spawn_map([x], retention=...))") if "retention" in kwargs else ""


def _check_references(executor: "Executor", label: str, referenced: set[tuple[str, tuple[str, ...]]]) -> None:
    """Refuse arguments that are futures of calls which end with this program.

    A future that is done travels with its outcome; one that is not is a reference
    its call's result is read through. The calls of ``.map()``/``.remote()`` are
    stopped, and their objects removed, when this program exits: a spawned call
    waiting on one would wait until its timeout. Only a spawned job's calls (it
    has a job record) outlive this program."""
    store = executor.store
    ending = sorted({job for job, _chain in referenced if not store.exists(keys.job_record_key(job))})
    if ending:
        raise ConfigError(f"{label}: an argument is a future of a call that has not finished (job {ending[0]}, "
                          "launched with .map()/.remote()): its calls end with this program, so the spawned job "
                          "could never read it; pass its result instead (wrenpack.get(futures)), or launch those "
                          "calls with spawn_map too and pass that job's futures")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid
        return str(os.geteuid())


def _start_supervisor(job_id: str, label: str, head: bytes, body: bytes) -> subprocess.Popen:
    """Start the job's supervisor, hand it ``head`` and ``body`` (written apart: joined,
    they were one more copy of every argument) and wait for its "ok"; the supervisor,
    its stdin still open for ``_commit``'s "go"."""
    os.makedirs(logs_dir(), mode=0o700, exist_ok=True)
    path = log_path(job_id)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        # (the job's id as an argument it ignores: `ps` and `pgrep -f ID` tell whose supervisor it is)
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, job_id, here], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log_fd, cwd=os.getcwd(), start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)
    # Reaped by a thread while this process lives (no zombie); by init once it is gone.
    threading.Thread(target=proc.wait, name=f"wrenpack-reap-{job_id}", daemon=True).start()
    assert proc.stdin is not None and proc.stdout is not None
    reply = b""
    try:
        try:
            proc.stdin.write(head)
            proc.stdin.write(body)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended early: its log says why (below)
        end = time.monotonic() + START_TIMEOUT_S
        fd = proc.stdout.fileno()
        while b"\n" not in reply and time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 64)
            if not chunk:
                break
            reply += chunk
    except BaseException:
        # Interrupted (^C) before the supervisor answered: it ends here, before the caller
        # removes the job's objects, so it can neither run the calls of a job nobody has the id
        # of nor write its owner record after that removal; its log (nobody was told of it) goes too.
        _stop(proc)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        proc.stdout.close()
    if reply.strip() != b"ok":
        _stop(proc)  # (one that timed out, or said something else)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        raise WrenpackError(f"the supervisor of job {job_id} ({label}) did not start: {_last_line(path)}; "
                            f"its log is {path}")
    return proc


def _commit(job_id: str, label: str, proc: subprocess.Popen) -> None:
    """Tell the supervisor "go": spawn_map's last step before it returns the job. The
    supervisor runs nothing until it reads it, and removes the job if this process's end
    of the pipe closes first (it died, or ``_abandon``)."""
    assert proc.stdin is not None
    try:
        os.write(proc.stdin.fileno(), b"go\n")
    except BrokenPipeError:
        # (it ended between its "ok" and now: killed; nothing ran)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        raise WrenpackError(f"the supervisor of job {job_id} ({label}) ended before it started the calls: "
                            f"{_last_line(log_path(job_id))}; its log is {log_path(job_id)}") from None
    proc.stdin.close()


def _abandon(job_id: str, proc: subprocess.Popen) -> None:
    """spawn_map failed (or was interrupted) after the supervisor's "ok", before "go": it
    ends here, before the caller removes the job's objects, as does its log (nobody was
    told of the job)."""
    _stop(proc)
    with contextlib.suppress(OSError):
        proc.stdin.close()  # type: ignore[union-attr]
    with contextlib.suppress(OSError):
        os.unlink(log_path(job_id))


def _stop(proc: subprocess.Popen) -> None:
    """Kill a supervisor that did not start, and wait (a little) until it is gone."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("the supervisor (pid %d) did not end within %.0f s of being killed", proc.pid, STOP_WAIT_S)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = [line.strip() for line in f.read()[-4096:].decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1] if lines else "it wrote nothing"
    except OSError:
        return "its log cannot be read"


__all__ = ["spawn_calls"]
