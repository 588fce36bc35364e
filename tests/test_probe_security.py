"""Attacks on wrenpack's promises, each a regression test of a defect found by probing.

"A call's result is what that call produced, or an error. Nothing is unpickled that
wrenpack did not write and authenticate, and no job's code can reach another job's
secrets or results." The attackers: a job's code in a worker (same user as every
other job's code on the local backend, so it can write to the store directory too),
and anyone else with write access to the store.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

import wrenpack
from wrenpack import keys
from wrenpack.errors import CorruptObject, ObjectNotFound, StoreError
from wrenpack.storage.local import LocalStore


def plus_one(x):
    return x + 1


def _in_thread(fn, wait_s: float):
    """``fn()``'s value or exception, or "hung" if it has not returned within ``wait_s``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait_s)
    if t.is_alive():
        return "hung"
    return box.get("error", box.get("value"))


def _unblock(path: str) -> None:
    """Open a FIFO for writing once, so a reader stuck on it (the defect) returns."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# -- a FIFO (or any non-file) planted at a key ---------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_non_file_planted_at_a_key_is_refused_and_never_blocks_the_reader(tmp_path, kind):
    store = LocalStore(tmp_path / "store")
    key = keys.result_key("j1", "00000")
    store.put(keys.func_key("j1"), b"x")
    path = os.path.join(store.root, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    else:  # a link to another job's genuine object
        os.symlink(os.path.join(store.root, keys.func_key("j1")), path)
    try:
        for read in (lambda: store.get(key), lambda: store.get_buffer(key), lambda: store.get_range(key, 0, 10),
                     lambda: store.get_range_buffer(key, 0, 10)):
            got = _in_thread(read, 3.0)
            assert got != "hung", "reading a FIFO planted at a key blocked the reader"
            if kind == "directory":  # (a folder: as on S3, no object has its name, and none can be written there)
                assert isinstance(got, ObjectNotFound), got
                continue
            assert isinstance(got, CorruptObject), got
            assert ("symbolic link" if kind == "symlink" else "not a regular file") in str(got) and key in str(got)
        assert store.release_range(key, 0, 1 << 20) == 0
        if kind == "directory":
            with pytest.raises(StoreError, match="use another key"):
                store.put(key, b"late", if_absent=True)
            return
        # The squatted key stays squatted (the first write wins): the reader is what must fail.
        assert store.put(key, b"late", if_absent=True) is False
    finally:
        if kind == "fifo":
            _unblock(path)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_planted_at_a_pending_result_key_fails_the_call_and_hangs_nothing(tmp_path, monkeypatch, kind):
    """A job's code (or anyone who can write to the store) makes a FIFO at another
    call's result key before its worker writes it: the worker finds the key taken,
    looks at what is there, and the driver reads it. Both opened the FIFO and waited
    for a writer for ever (the call hung to its timeout, and the worker's parent with it)."""
    from wrenpack.backends.local import LocalBackend

    ex = wrenpack.Executor(storage=str(tmp_path / "store"), retries=0, keep_objects=True, timeout=60,
                           backend=LocalBackend(concurrency=1, reply_limit=0))
    planted: list[str] = []
    original = LocalStore.put

    def put(self, key, data, *, if_absent=False):
        out = original(self, key, data, if_absent=if_absent)
        if self is ex.store and key.endswith("owner.json") and not planted:
            path = os.path.join(ex.store.root, keys.result_key(key.split("/")[1], keys.call_id(0)))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if kind == "fifo":
                os.mkfifo(path)
            else:  # (a folder holding an object: a key no object can take in a local store)
                os.makedirs(os.path.join(path, "x"))
            planted.append(path)
        return out

    monkeypatch.setattr(LocalStore, "put", put)
    try:
        fut = wrenpack.remote(plus_one, executor=ex).remote(1)
        got = _in_thread(lambda: fut.exception(timeout=15), 20)
        assert planted, "the attack did not run"
        assert got != "hung", "the driver hung on the FIFO"
        if kind == "fifo":
            assert isinstance(got, CorruptObject), got
            assert "not a regular file" in str(got)
        else:
            assert isinstance(got, wrenpack.WrenpackError) and "use another key" in str(got), repr(got)
        # The worker was not left stuck: the next call runs.
        assert wrenpack.remote(plus_one, executor=ex).remote(2).result(timeout=15) == 3
    finally:
        for path in planted:
            _unblock(path)
        ex.shutdown()


# -- a recycled argument memfd written by another job's process ----------------------------
class _GrabArgsMemfd:
    """In a job's arguments: unpickled in the worker's job process, it reopens the
    argument memfd being read (writable: the driver leaves argument memfds unsealed
    to write the next calls' arguments into them) and hands it to a fellow call of
    the same job through an abstract socket. Attacker's code, all of it job A's own."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __reduce__(self):
        address = self.address

        def grab(address=address):
            import os
            import socket
            import time

            fds = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:wrenpack-args"):
                        fds.append(os.open(f"/proc/self/fd/{name}", os.O_RDWR))
                except OSError:
                    pass
            deadline = time.time() + 10
            while fds and time.time() < deadline:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.connect("\0" + address)
                        socket.send_fds(s, [b"x"], fds)
                    break
                except OSError:
                    time.sleep(0.02)
            return len(fds)

        return (grab, ())


def _job_a(grabbed, data, address=None, stop=None):
    """Job A's function: the call given ``address`` waits for the grabbed memfds and
    writes its own arguments into them until the file ``stop`` exists (the test makes it
    once job B's call ended), 10 s at most; the other call returns."""
    if address is None:
        return grabbed
    import pickle
    import socket
    import time

    evil = pickle.dumps(((b"forged by job A",), {}), protocol=5)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + address)
    srv.listen(1)
    srv.settimeout(10)
    conn, _ = srv.accept()
    _msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 16)
    end = time.time() + 10
    while time.time() < end and not os.path.exists(stop):
        for fd in fds:
            os.pwrite(fd, evil, 0)
        time.sleep(0.0002)
    return len(fds)


def _job_b(data):
    return len(data)


def test_a_recycled_argument_memfd_cannot_carry_another_jobs_arguments(tmp_path):
    """Job A's code keeps its call's argument memfd (unsealed, so the driver can
    write the next call's arguments into it: ``handoff._pool``) and writes into it
    from a process that lives on. The driver reuses it for job B's arguments (another
    function: another isolation domain), so B's call runs with what A wrote:
    B's result is then what A chose, not what B computed."""
    import uuid

    ex = wrenpack.Executor(storage=str(tmp_path / "store"), retries=0, concurrency=2, timeout=60)
    address = f"wrenpack-probe-{uuid.uuid4().hex}"
    stop = tmp_path / "stop"
    big = b"a" * 200_000  # above inline_limit: the arguments travel in a memfd
    try:
        a = wrenpack.remote(_job_a, executor=ex)
        quick, slow = a.starmap([(_GrabArgsMemfd(address), big), (0, b"", address, str(stop))])
        assert quick.result(timeout=30) >= 1, "the attack did not get the memfd"
        from wrenpack.worker import handoff

        deadline = time.time() + 5
        while not handoff._pool and time.time() < deadline:  # (the call's memfd goes back as its call is closed)
            time.sleep(0.01)
        assert handoff._pool, "the driver kept no argument memfd to write again"
        time.sleep(0.3)  # (the other call of job A has the memfd and writes into it)
        got = wrenpack.remote(_job_b, executor=ex).remote(big).result(timeout=30)
        stop.touch()  # (job A wrote all through job B's call: it stops now, not after a fixed 4 s)
        slow.result(timeout=30)
        assert got == len(big), f"job B's call ran with job A's arguments: its result is {got!r}"
    finally:
        ex.shutdown()


# -- a keyed-BLAKE3 trailer on an object that is never one ----------------------------------
def test_a_planted_blake3_trailer_makes_no_reader_import_anything(tmp_path, monkeypatch):
    """Only map_reduce's shuffle objects are sealed with keyed BLAKE3. Any other
    object carrying a ``WPB3`` trailer made its reader import ``blake3`` (the first
    time in that process) before failing it. A job's code that can put an object at
    its own checkpoint key (a worker's role may) and write a ``blake3.py`` where
    ``sys.path`` looks first (on Lambda, a runtime archive extracted to /tmp: every
    job of the container can write there) then ran its code in the worker's parent,
    the process that holds every later job's secret. Here the parent's checkpoint
    read (``ckpt_get``) meets such an object: it must fail without importing."""
    import sys

    from wrenpack import auth
    from wrenpack.wire.event import Event, inline_args
    from wrenpack.worker import handler

    marker = tmp_path / "imported"
    planted = tmp_path / "writable-on-sys-path"
    planted.mkdir()
    (planted / "blake3.py").write_text(f"open({str(marker)!r}, 'w').write('ran in the reader')\n")
    monkeypatch.syspath_prepend(str(planted))
    monkeypatch.delitem(sys.modules, "blake3", raising=False)
    monkeypatch.setattr(auth, "_blake3", auth._UNSET)  # a process that has not looked for blake3 yet

    store = LocalStore(tmp_path / "store")
    secret = b"k" * 32
    ev = Event.from_dict(Event(job_id="jobA", call_id="00000", store=store.spec, secret=secret,
                               args=inline_args(b"x")).to_dict())
    store.put(keys.checkpoint_key("jobA", "00000"), b"anything" + auth.MAGIC_B3 + b"\0" * auth.TAG_BYTES)
    # (the parent answers the job's process with the error, which the call raises as this type)
    from wrenpack.wire.checkpoint import Saves

    answer, data = handler._Requests(store, ev, Saves.of(ev))({"t": "ckpt_get"}, bytearray())
    assert answer.get("kind") == "CorruptObject" and "checkpoint/00000.pkl failed authentication" in answer.get("error", "")
    assert not data
    assert not marker.exists(), "reading a planted object imported code from sys.path in the worker's parent"
    # The same for every other sealed kind read with unseal (cancel markers, segment records, ...).
    for blob in (b"", b"x" * 3, b"data" + auth.MAGIC_B3 + b"\1" * auth.TAG_BYTES):
        with pytest.raises(CorruptObject, match="failed authentication"):
            auth.unseal(secret, keys.identity("jobA", "cancel"), blob, keys.cancel_key("jobA"))
    assert not marker.exists()
    # What wrenpack seals still opens.
    sealed = auth.seal(secret, keys.identity("jobA", "cancel"), b"ok")
    assert auth.unseal(secret, keys.identity("jobA", "cancel"), sealed, "k") == b"ok"


# -- a job's code writing a bogus message to its parent -------------------------------------
def _write_to_parent(kind):
    """Job code that finds its process's socket to the worker's parent and writes a
    message head announcing an absurd blob (``kind`` "huge": more than an index can
    hold; "big": 32 TiB), then waits; "plain": a normal call."""
    import socket
    import struct

    if kind == "plain":
        return "fine"
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            s = socket.socket(fileno=os.dup(int(name)))
            size = 2**64 - 1 if kind == "huge" else 2**45
            s.sendall(struct.pack("!IQ", 2, size) + b"{}")
            time.sleep(3)
    return "unreached"


@pytest.mark.parametrize("kind", ["huge", "big"])
def test_a_bogus_message_size_from_the_jobs_process_fails_its_call_as_a_protocol_break(tmp_path, kind):
    """The parent read the announced size and allocated it: OverflowError or MemoryError
    escaped as "the worker handler failed", and the job's process, its socket holding the
    rest of the bogus message, was kept for the function's next call."""
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), retries=0, concurrency=1, timeout=30)
    try:
        f = wrenpack.remote(_write_to_parent, executor=ex)
        err = f.remote(kind).exception(timeout=20)
        assert isinstance(err, wrenpack.WrenpackError), err
        assert "broke the worker's protocol" in str(err), err
        assert f.remote("plain").result(timeout=20) == "fine"
    finally:
        ex.shutdown()


# -- an unverified status peek of a planted result object ------------------------------------
def test_a_planted_result_whose_status_nests_deeply_is_corrupt_not_a_recursion_error():
    """The Lambda backend peeks at a result object's status before verifying it
    (``backend._result_from``), expecting ``CorruptObject`` for a bad one. A planted
    object whose status is ``[[[[...]]]]`` raised RecursionError instead: the poller's
    guard logged it and tried again until the call's deadline (WorkerLost), where a
    planted object fails its call at once."""
    import struct

    from wrenpack.wire import result

    head = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CorruptObject, match="corrupt"):
        result.unpack(result.MAGIC + struct.pack(">I", len(head)) + head)


# -- a job's processes outliving the switch to another job ----------------------------------
def _hopping_processes(beat, n):
    """Job A: ``n`` processes that each fork and exit at once, over and over (a new pid
    every time), appending to ``beat`` as they go; its report says it left nothing, so
    they stay until another domain's call comes and the job's process is ended."""
    from wrenpack.worker import isolation

    isolation._has_children = lambda: False  # the call's "did I leave processes?" report, patched to lie
    start = time.time()
    for _ in range(n):
        if os.fork() == 0:
            try:
                while time.time() < start + 2.5:
                    if os.fork():
                        os._exit(0)
                    with open(beat, "a") as f:
                        f.write(".")
            finally:
                os._exit(0)
    time.sleep(0.2)
    return "left running"


def _watch(beat):
    """Job B (another function): how much job A's processes wrote while B ran."""
    before = os.path.getsize(beat)
    time.sleep(0.4)
    return os.path.getsize(beat) - before


def test_no_process_of_a_job_runs_on_into_another_jobs_call(tmp_path):
    """Ending a job's process walked the tree, then killed what it had found; a process
    killed after its children were read could complete a fork in between, and the next
    look started from the processes not killed yet, so that new child (reachable only
    through its killed parent until that exited) was never found: processes that fork
    and exit in a loop ran on into the next job's call on the same worker."""
    beat = tmp_path / "beat"
    beat.write_bytes(b"")
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), retries=0, concurrency=1, timeout=30)
    try:
        for _ in range(3):
            assert wrenpack.remote(_hopping_processes, executor=ex).remote(str(beat), 24).result(timeout=20) == "left running"
            during = wrenpack.remote(_watch, executor=ex).remote(str(beat)).result(timeout=20)
            assert during == 0, f"job A's processes wrote {during} bytes during job B's call"
    finally:
        ex.shutdown()


def test_a_keeper_that_is_gone_protects_nothing_that_takes_its_pid(monkeypatch):
    """Ending a call's processes (and a job's) spares the worker's zygote, the spare
    process forked ahead and the job's process, by pid. A job's code can kill the spare
    or the zygote (same user); once collected, their pids are free, and pids wrap (32768
    here): a process of the job that takes one (fork until it does) was spared by every
    later end of a call or job, running on beside other jobs' calls. Keepers are now known
    by their process (a pidfd), not their number: one that has exited protects nothing."""
    import socket

    from wrenpack.worker import isolation

    def sleeper() -> int:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        return pid

    zygote_pid, spare_pid = sleeper(), sleeper()
    ours, theirs = socket.socketpair()
    spare_end, _spare_other = socket.socketpair()
    zygote = isolation._Zygote(zygote_pid, ours)
    try:
        monkeypatch.setattr(isolation, "_zygote", zygote)
        monkeypatch.setattr(isolation, "_spare", spare_end)
        monkeypatch.setattr(isolation, "_spare_pid", None)
        monkeypatch.setattr(isolation, "_spare_pidfd", None, raising=False)
        monkeypatch.setattr(isolation, "_child", None)
        isolation.send(theirs, {"pid": spare_pid})  # the zygote's answer: which process the spare is
        assert isolation.keepers() == {zygote_pid, spare_pid}
        for pid in (zygote_pid, spare_pid):
            os.kill(pid, 9)
            os.waitpid(pid, 0)  # gone and collected: the pid is anyone's next
        assert isolation.keepers() == set(), "processes that are gone still protect whatever takes their pids"
        assert isolation.protected() == set()
    finally:
        for pid in (zygote_pid, spare_pid):
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for s in (ours, theirs, spare_end, _spare_other):
            s.close()
        for fd in (getattr(zygote, "pidfd", None), getattr(isolation, "_spare_pidfd", None)):
            if fd is not None:
                os.close(fd)


# -- the secret-holding parent importing after a job's code ran --------------------------------
_PLANTED_SUBPROCESS = '''
import os, sys
with open(os.environ["PROBE_MARKER"], "a") as f:
    f.write(f"{os.getpid()}\\n")  # job A's code, running in whatever process imported this
_here = os.path.dirname(os.path.abspath(__file__))
_mine = sys.modules.pop(__name__)
_path = sys.path[:]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
try:
    import subprocess as _real  # the standard library's, so that nothing else shows
finally:
    sys.path[:] = _path
sys.modules[__name__] = _real
'''

_WORKER_SCRIPT = '''
import os, sys
sys.path.insert(0, os.environ["PROBE_REPO"])
from wrenpack.worker import handler, isolation  # a worker's start: the zygote is forked from this
isolation.prepare()
# Job A's code: a module written where the worker's sys.path looks first (the driver's
# script folder or cwd locally, a --runtime-archive tree in /tmp on Lambda), and the zygote killed.
sys.path.insert(0, os.environ["PROBE_PLANTED"])
os.kill(isolation._zygote.pid, 9)
# The next domain's call: the worker replaces the zygote it lost.
child = isolation.child_for("b" * 64 + "/f")
print("pid", os.getpid(), "child alive", child.alive())
isolation.end_child()
isolation.stop()
'''


def test_replacing_a_killed_zygote_imports_nothing_into_the_secret_holding_parent(tmp_path):
    """A job's code can kill its worker's zygote (same user); the worker's parent then
    starts a fresh one, and imported ``subprocess`` to do it, for the first time, after
    job code had run: from the first folder on ``sys.path`` that has one, which job code
    can write to (the driver's folder or cwd, first on a local worker's path; a runtime
    archive's tree in /tmp on Lambda). The planted module ran in the process that holds
    every later job's secret. The parent now imports it at start, before any event."""
    import subprocess
    import sys

    planted = tmp_path / "on-the-path"
    planted.mkdir()
    (planted / "subprocess.py").write_text(_PLANTED_SUBPROCESS)
    marker = tmp_path / "ran-in"
    env = dict(os.environ, PROBE_REPO=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               PROBE_PLANTED=str(planted), PROBE_MARKER=str(marker))
    out = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "child alive True" in out.stdout, out.stdout + out.stderr
    parent = out.stdout.split()[1]
    ran_in = marker.read_text().split() if marker.exists() else []
    assert parent not in ran_in, "job code planted on sys.path ran in the worker's parent"
