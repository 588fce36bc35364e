"""Owner records: who launched a job, and whether that process still lives
(``wrenpack clean --stale`` removes the objects of jobs whose owner is gone).

A record decides whether a job's objects are removed, and anyone who can
write to the store can write one. So a record counts only if it carries a MAC
under the user's own key (``user_key``: a random 32 bytes in a file of the
cache directory that only the user can read, made on first use); the MAC binds
it to its job (``wrenpack.wire.owner``). The process start time in it tells
the owner from a new process that reuses its pid.
"""
from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import socket
import stat
import time
from typing import Any

from wrenpack import keys
from wrenpack.config import cache_dir
from wrenpack.executor.environ import getenv
from wrenpack.process_state import runs, start_time, works_for
from wrenpack.wire import owner as owner_wire

log = logging.getLogger(__name__)

KEY_BYTES = 32


#: (the variables key_path reads, the path they gave): every launch asks
_key_path: tuple[tuple[str | None, ...], str] | None = None


def key_path() -> str:
    """The user's owner key: in wrenpack's cache directory (``WRENPACK_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/wrenpack``, else ``~/.cache/wrenpack``)."""
    global _key_path
    where = (getenv("WRENPACK_CACHE_DIR"), getenv("XDG_CACHE_HOME"), getenv("HOME"))
    kept = _key_path
    if kept is not None and kept[0] == where:
        return kept[1]
    path = os.path.join(cache_dir(), "owner.key")  # (the one rule, read again only when a variable changed)
    _key_path = (where, path)
    return path


#: why the owner key at a path was refused, for ``key_problem``
_refused: dict[str, str] = {}


def key_problem(path: str | None = None) -> str | None:
    """Why the owner key at ``path`` (default ``key_path()``) was refused when last read
    ("it is readable by others (mode 644)", ...); None if it was not. A command that needs
    the key names this: spawn_map said "make its directory writable" of a writable one."""
    return _refused.get(path or key_path())


def _refuse(path: str, why: str) -> None:
    _refused[path] = why
    log.warning("the owner key %s is not used: %s; owner records are not sealed or trusted: remove it so a new one "
                "is made", path, why)


def _read_key(path: str) -> bytes | None:
    """The key in ``path`` if it is a private regular file of this user (not a link);
    None if there is none. Any other file is not trusted: logged, None."""
    _refused.pop(path, None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _refuse(path, "it is a symbolic link" if exc.errno == errno.ELOOP else f"it cannot be read ({exc.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, "it is not a regular file")
            return None
        if st.st_uid != os.geteuid():
            _refuse(path, f"it belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})")
            return None
        if st.st_mode & 0o077:
            _refuse(path, f"others can read or write it (mode {stat.S_IMODE(st.st_mode):o}, not 600)")
            return None
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        _refuse(path, f"it is {len(data) if len(data) <= KEY_BYTES else 'more than %d' % KEY_BYTES} bytes long, not {KEY_BYTES}")
        return None
    return data


def _make_key(path: str) -> bytes | None:
    """Write a fresh key to ``path`` (0600, all at once: a new name linked in, so two
    processes making it together agree on the first); the key now there."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".owner.key.{os.getpid()}.{time.monotonic_ns()}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: that one is the key
    except OSError as exc:
        log.warning("cannot make the owner key %s (%s): jobs launched now are kept by `wrenpack clean --stale` "
                    "until removed by name", path, exc.strerror)
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return _read_key(path)


#: (path, key, whether making it was tried): read once per process and path
_key: tuple[str, bytes | None, bool] | None = None


def user_key(create: bool = True) -> bytes | None:
    """The user's key for owner records; made on first use when ``create``.
    None if there is no usable one (then records are written unsealed, and
    ``clean --stale`` keeps their jobs: it cannot check them)."""
    global _key
    path = key_path()
    known = _key
    if known is not None and known[0] == path and (known[1] is not None or known[2] or not create):
        return known[1]
    key = _read_key(path)
    if key is None and create and not os.path.lexists(path):
        key = _make_key(path)
    _key = (path, key, create)
    return key


_me: tuple[int, str, str | None] | None = None


#: what ``launch_proof`` MACs a job's id under (no other MAC made with a job's secret uses it)
_PROOF_LABEL = b"wrenpack-launched-in-call/1\x00"


def launch_proof(secret: bytes, job_id: str) -> str:
    """What the owner record of a job launched inside a call carries (``proof``): a MAC of its
    id under its own secret, which is derived from the call's job's. The program that launched
    that job reads it when the job never wrote a result (its launcher ended with it): the
    job is then provably one launched inside its own job, whose objects it removes."""
    return hmac.digest(secret, _PROOF_LABEL + job_id.encode("utf-8"), "sha256").hex()


def owner_record(label: str = "", job_id: str | None = None, late_writes_s: float = 0.0,
                 launched_in_call: bytes | None = None, kind: str | None = None) -> dict[str, Any]:
    """What jobs/<job>/owner.json holds: who launched the job, and when; sealed
    for ``job_id`` with the user's key (``user_key``) when one is given. Where calls
    outlive their driver, ``late_writes_s`` (``Capabilities.late_writes_s``) is how long
    after it a call may still write (``late_s``: ``wrenpack clean --stale`` waits for it).
    ``launched_in_call``: the job's secret, for a job launched inside a call (``launch_proof``).
    ``kind``: "scratch" for a program's scratch area (``wrenpack.storage.scratch``), which has no calls."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:  # read once per process (a fork is a new one)
        _me = (pid, socket.gethostname(), start_time(pid))
    record: dict[str, Any] = {"host": _me[1], "pid": pid, "start": _me[2], "created": time.time(), "label": label}
    if late_writes_s > 0:
        record["late_s"] = float(late_writes_s)
    if kind is not None:
        record["kind"] = kind
    if launched_in_call is not None and job_id is not None:
        record["proof"] = launch_proof(launched_in_call, job_id)
    key = user_key() if job_id is not None else None
    return owner_wire.seal(key, job_id, record) if key is not None and job_id is not None else record


def owner_alive(record: dict[str, Any]) -> bool | None:
    """True if the owner process lives, or a local worker of it still ends its call;
    False if they are gone; None if it ran on another host (cannot tell from here)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = start_time(pid)
    if start is not None and (record.get("start") is None or start == record.get("start")) and runs(pid):
        return True  # (an owner that exited and waits to be reaped, a zombie, is gone)
    return works_for(pid, record.get("start"))


def owner_state(job_id: str, record: dict[str, Any] | None, key: bytes | None) -> tuple[str, str]:
    """(state, why) of a job from its owner record: "live" (its owner runs),
    "stale" (its owner is gone), or "unknown" when that cannot be told from here
    (no record, a record not sealed with ``key`` for this job, or another host)."""
    if record is None:
        return "unknown", "it has no readable owner record"
    if key is None:
        return "unknown", f"there is no owner key ({key_path()}) to check its owner record with"
    if not owner_wire.verify(key, job_id, record):
        return "unknown", "its owner record is not sealed with your owner key (another user's, or forged)"
    alive = owner_alive(record)
    if alive is None:
        return "unknown", f"it was launched on host {record.get('host')!r}, where its owner may still run"
    if not alive:
        return "stale", "its owner is gone"
    if not runs(record["pid"]):
        return "live", f"its owner (pid {record.get('pid')}) is gone, but its workers still end their calls"
    return "live", f"its owner (pid {record.get('pid')}) still runs"


def lost_with_owner(job_id: str, blob: bytes) -> dict[str, Any] | None:
    """The owner record in ``blob`` if it says the job's calls can no longer end: sealed
    with the user's key for ``job_id``, its owner and the owner's local workers gone
    (this host), and none of its calls outliving them (no ``late_s``: a local job, whose
    workers are its owner's children). None otherwise, or when that cannot be told."""
    key = user_key(create=False)
    if key is None:
        return None
    try:
        record = owner_wire.loads(blob)
    except ValueError:
        return None
    if not owner_wire.verify(key, job_id, record) or record.get("late_s") or owner_alive(record) is not False:
        return None
    return record


def mark_still_running(store: Any, job_id: str, call_ids: list[str]) -> None:
    """At exit, where calls outlive their driver (stopped by their cancel markers, they
    write their results soon after): the job's owner record names the calls still
    running, so that ``wrenpack clean --stale`` removes the whole job as soon as each
    has its result in the store, rather than keeping the record for the record's
    ``late_s`` (as it must for a killed driver's, which names nothing)."""
    key = user_key(create=False)
    if key is None:
        return
    try:
        record = owner_wire.loads(store.get(keys.owner_key(job_id)))
    except Exception:  # noqa: BLE001 - no record to mark: `clean --stale` then waits out late_s
        return
    if not owner_wire.verify(key, job_id, record):
        return
    marked = {k: v for k, v in record.items() if k != "mac"}
    marked["running"] = sorted(call_ids)
    store.put(keys.owner_key(job_id), json.dumps(owner_wire.seal(key, job_id, marked)).encode())
