"""Jobs are isolated from each other in a warm worker, locally and on (emulated) Lambda.

Job A's function does what hostile code in a warm worker can: it patches the
handler module's globals, entries of ``sys.modules``, builtins and cloudpickle,
the worker's function cache; it leaves a thread behind that scans
``gc.get_objects()`` for secret-looking values, reads ``/proc/self/environ``,
and writes to every descriptor it inherited. Job B, launched afterwards on the
same warm worker (one call at a time), must get only its genuine results, and
job C (the attacker again, after B) must find no secret of B's anywhere A
could have hidden it: in memory (module globals) or in a file.
"""
from __future__ import annotations

import base64
import builtins
import gc
import os
import sys
import tempfile
import threading
import time

import pytest

import wrenpack

pytestmark = pytest.mark.backends("local", "lambda")

_LOOT_FILE = "wrenpack-isolation-loot.txt"


def _secret_like(value):
    """Values that look like a job secret: 32 raw bytes, or its base64/hex text."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, str) and 40 <= len(value) <= 64:
        return value
    return None


def attack(stage):
    """Job A: patch everything reachable so later calls in this process leak and lie."""
    import cloudpickle

    loot = sys.modules.setdefault("_wrenpack_loot", type(sys)("_wrenpack_loot"))
    loot.found = getattr(loot, "found", set())
    path = os.path.join(tempfile.gettempdir(), _LOOT_FILE)

    def keep(value):
        text = _secret_like(value)
        if text is not None:
            loot.found.add(text)
            try:
                with open(path, "a") as f:
                    f.write(text + "\n")
            except OSError:
                pass

    def scan():
        for obj in gc.get_objects():
            try:
                if isinstance(obj, dict):
                    for key in ("secret", "ref_secrets"):
                        if key in obj:
                            value = obj[key]
                            for v in (value.values() if isinstance(value, dict) else [value]):
                                keep(v)
                elif type(obj).__name__ == "Event":
                    keep(getattr(obj, "secret", None))
            except Exception:  # noqa: BLE001
                pass

    if stage == "fds":
        # Write junk to every descriptor this process inherited (sockets, pipes, files).
        written = []
        for fd in range(3, 256):
            try:
                os.fstat(fd)
            except OSError:
                continue
            try:
                os.write(fd, b"\x00junk from job A\x00" * 4)
                written.append(fd)
            except OSError:
                pass
        return written

    scan()
    try:
        with open("/proc/self/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                keep(item.partition(b"=")[2].decode("latin-1"))
    except OSError:
        pass

    # A thread left behind, scanning the process's objects for secrets.
    def watch():
        while True:
            scan()
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()

    # Patch the worker's code: every later call's outcome is altered and its event kept.
    handler = sys.modules.get("wrenpack.worker.handler")
    if handler is not None:
        dump = handler._dump_outcome

        def lying_dump(outcome, *a, **k):
            if outcome and outcome[0] == "ok" and isinstance(outcome[1], tuple):
                outcome = ("ok", (outcome[1][0] + 1, *outcome[1][1:]))
            return dump(outcome, *a, **k)

        handler._dump_outcome = lying_dump
        load_args = handler._load_args

        def spying_load_args(store, ev, *a, **k):
            keep(ev.secret)
            return load_args(store, ev, *a, **k)

        handler._load_args = spying_load_args
        handler._functions.clear()
    auth = sys.modules.get("wrenpack.auth")
    if auth is not None:
        for name in ("seal", "unseal_view", "unseal"):
            original = getattr(auth, name, None)
            if original is not None:
                def spy(secret, *a, __original=original, **k):
                    keep(secret)
                    return __original(secret, *a, **k)
                setattr(auth, name, spy)
    original_loads = cloudpickle.loads

    def lying_loads(data, *a, **k):
        value = original_loads(data, *a, **k)
        if callable(value) and getattr(value, "__name__", "") == "genuine":
            return lambda x: (x * x + 1, False)
        return value

    cloudpickle.loads = lying_loads
    sys.modules["pickle"].loads = lying_loads
    builtins._wrenpack_evil = True
    return "patched"


def genuine(x):
    """Job B: a plain function that also says whether it sees A's builtins patch."""
    return (x * x, hasattr(builtins, "_wrenpack_evil"))


def collect(_):
    """Job C (the attacker again): whatever A hid, in memory and in /tmp."""
    found = set(getattr(sys.modules.get("_wrenpack_loot"), "found", ()))
    try:
        with open(os.path.join(tempfile.gettempdir(), _LOOT_FILE)) as f:
            found |= {line.strip() for line in f if line.strip()}
    except OSError:
        pass
    return sorted(found)


def _record_secrets(ex):
    """The secrets of every job the executor launches, as the events carry them."""
    seen: list[str] = []
    backend = ex.backend
    invoke_many = backend.invoke_many

    def recording(invocations):
        for inv in invocations:
            seen.append(inv.event["secret"])
        return invoke_many(invocations)

    backend.invoke_many = recording
    return seen


def _forms(secret_text):
    raw = base64.b64decode(secret_text)
    return {secret_text, base64.b64encode(raw).decode(), raw.hex(), base64.urlsafe_b64encode(raw).decode()}


def _pids(futures):
    return {f.status.get("pid") for f in futures}


def test_a_jobs_code_cannot_patch_or_spy_on_a_later_job(make_executor, backend):
    ex = make_executor(concurrency=1, retries=0)
    seen = _record_secrets(ex)
    a = ex.submit(attack, "patch")
    assert a.result(timeout=120) == "patched"
    warm = a.status.get("pid")  # the warm worker (execution environment) job A patched
    a_secrets = set(seen)
    b = wrenpack.remote(genuine, executor=ex).map(range(10))
    assert [f.result(timeout=120) for f in b] == [(x * x, False) for x in range(10)], "job B got results job A altered"
    b_secrets = set(seen) - a_secrets
    assert b_secrets
    # Job C looks for what A hid; a few times, so it runs where A ran (the emulated
    # Lambda keeps more than one execution environment).
    c = [ex.submit(collect, i) for i in range(4)]
    loot = set().union(*(set(f.result(timeout=120)) for f in c))
    for secret in b_secrets:
        assert not (_forms(secret) & loot), "job A found a secret of job B"
    # B and C ran in the warm worker A had patched (else the test proves nothing).
    assert warm in _pids(b) and warm in _pids(c), (warm, _pids(b), _pids(c))

    # Junk written to every inherited descriptor touches neither the worker nor a later job
    # (it may fail job A's own call: its channel to the worker is among them).
    w = ex.submit(attack, "fds")
    try:
        w.result(timeout=120)
    except Exception:  # noqa: BLE001
        pass
    after = wrenpack.remote(genuine, executor=ex).map(range(6))
    assert [f.result(timeout=120) for f in after] == [(x * x, False) for x in range(6)]
    if backend == "local":
        assert len(ex.backend.worker_pids()) == 1
        assert _pids(after) == {warm}, "the worker did not survive job A's writes"
    gc.collect()


def kill_siblings(_):
    """Job A kills every process of its worker it can find (the worker aside)."""
    me, worker = os.getpid(), os.getppid()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, worker):
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == worker:
            try:
                os.kill(int(entry), 9)
                killed.append(int(entry))
            except OSError:
                pass
    return killed


def test_a_job_that_kills_what_it_reaches_does_not_stop_the_next(make_executor, backend):
    ex = make_executor(concurrency=1, retries=0)
    a = ex.submit(kill_siblings, 0)
    assert a.result(timeout=120)  # it found something to kill (the worker's other processes)
    b = wrenpack.remote(genuine, executor=ex).map(range(4))
    assert [f.result(timeout=120) for f in b] == [(x * x, False) for x in range(4)]
    if backend == "local":
        assert _pids(b) == {a.status.get("pid")}, "the worker was replaced"



_WARM_COUNT = 0


def warm_counter(_):
    """Counts its calls in a global of the process it runs in: warm state a later call may see."""
    global _WARM_COUNT
    _WARM_COUNT += 1
    builtins._wrenpack_warm_mark = True  # what a patch left in a process looks like to a later call
    return os.getpid(), _WARM_COUNT


def _by_process(got):
    """{pid: the counts its calls returned, in order}."""
    out: dict = {}
    for pid, n in got:
        out.setdefault(pid, []).append(n)
    return out


def _fresh(counts):
    """Each process's calls counted 1, 2, 3...: it ran these calls and nothing of theirs before."""
    return all(ns == list(range(1, len(ns) + 1)) for ns in counts.values())


@pytest.fixture
def domain_key():
    """This process as a driver that has launched nothing yet (a domain key of its own)."""
    from wrenpack.wire import event

    event._forget_domain_key()
    yield event
    event._forget_domain_key()


@pytest.mark.backends("local", "lambda", slow=("lambda",))  # (the isolation tests keep Lambda's; this is the warm path)
def test_calls_of_one_function_from_one_driver_share_a_warm_process(make_executor, backend, domain_key):
    """Repeated ``.remote()`` of one function is one isolation domain: its calls run in
    the same job process (as a process pool's worker), which keeps its globals."""
    ex = make_executor(concurrency=1, retries=0)
    f = wrenpack.remote(warm_counter, executor=ex)
    got = [f.remote(i).result(timeout=120) for i in range(6)]
    counts = _by_process(got)
    assert _fresh(counts), got
    if backend == "local":
        assert len(counts) == 1, got  # one process, each call seeing the state the one before left
    else:  # (the emulated Lambda keeps more than one execution environment)
        assert any(len(ns) > 1 for ns in counts.values()), got


def sees_warm_mark(_):
    return os.getpid(), hasattr(builtins, "_wrenpack_warm_mark")


def test_another_function_or_another_driver_never_shares_the_process(make_executor, backend, domain_key):
    """Another function never runs in the process of a function's calls, and the same
    function from another driver process (a domain key of its own: here this
    process's key is replaced, as in a fork) gets a new job process, without the
    state the first driver's calls left."""
    ex = make_executor(concurrency=1, retries=0)
    f = wrenpack.remote(warm_counter, executor=ex)
    first = [f.remote(i).result(timeout=120) for i in range(2)]
    others = [wrenpack.remote(sees_warm_mark, executor=ex).remote(i).result(timeout=120) for i in range(2)]
    assert not any(marked for _, marked in others), others
    assert not {pid for pid, _ in others} & {pid for pid, _ in first}
    after = [f.remote(i).result(timeout=120) for i in range(2)]
    assert not {pid for pid, _ in after} & {pid for pid, _ in others}, "a process another function ran in was reused"
    if backend == "local":  # (one worker: the other function's calls ended the process of f's)
        assert _fresh(_by_process(after)) and not {pid for pid, _ in after} & {pid for pid, _ in first}, (first, after)
    # The same function as another driver process launches it (its own domain key).
    domain_key._forget_domain_key()
    again = [f.remote(i).result(timeout=120) for i in range(3)]
    assert _fresh(_by_process(again)), (first, after, again)
    assert not {pid for pid, _ in again} & {pid for pid, _ in first + after}, "another driver's calls shared a process"


def test_a_forked_driver_has_a_domain_key_of_its_own(domain_key):
    digest = "ab" * 32
    mine = domain_key.isolation_domain(digest)
    assert domain_key.isolation_domain(digest) == mine and domain_key.isolation_domain("cd" * 32) != mine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked driver
        try:
            os.write(write, domain_key.isolation_domain(digest).encode())
        finally:
            os._exit(0)
    os.close(write)
    theirs = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(theirs) == 64 and theirs != mine


#: run in a job's process and in a process it execs: the first page of the heap of each pid
#: in argv (or why not), then this process's /proc/self/status (its capabilities)
_READ_HEAPS = """
import sys

def attempt(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            start = int(next(line for line in f if "[heap]" in line).split("-")[0], 16)
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.seek(start)
            return f"read {len(f.read(4096))} bytes"
    except OSError as exc:
        return type(exc).__name__
    except StopIteration:
        return "no heap"

if __name__ == "__main__":
    print([attempt(int(pid)) for pid in sys.argv[1:]])
    print(open("/proc/self/status").read())
"""


def read_memory_of(pids):
    """What a job's code as root could read of other processes' memory (``_READ_HEAPS``),
    here and in a process it execs (root's exec would regain what the bounding set still
    holds), and the capabilities each holds."""
    import subprocess

    def caps(status):
        return {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines() if line.startswith("Cap")}

    here = {"__name__": "here"}
    exec(_READ_HEAPS, here)
    with open("/proc/self/status") as f:
        mine = caps(f.read())
    out = subprocess.run([sys.executable, "-c", _READ_HEAPS, *map(str, pids)], capture_output=True, text=True,
                         timeout=60)
    first, _, status = out.stdout.partition("\n")
    return {"here": [here["attempt"](pid) for pid in pids], "exec": first, "caps": mine, "exec_caps": caps(status),
            "stderr": out.stderr[-500:]}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="as a user without capabilities the kernel refuses these reads already (the worker "
                           "parent is non-dumpable; test_a_jobs_code_cannot_patch_or_spy_on_a_later_job)")
def test_a_jobs_code_run_as_root_cannot_read_the_memory_of_its_worker_or_the_driver(make_executor, backend):
    """probe11: here (root, no Yama) a call read the heap of the worker parent that holds its
    job's secret through /proc/<ppid>/mem: a non-dumpable process yields to CAP_SYS_PTRACE.
    Job code runs without the capabilities that read other processes' memory, as on Lambda,
    in what it execs too; the driver (which holds every job's secret) is out of reach as well."""
    from wrenpack.worker import isolation

    ex = make_executor(concurrency=1, retries=0)
    probe = ex.submit(os.getppid).result(timeout=120)  # the worker parent (the secret holder)
    got = ex.submit(read_memory_of, [probe, os.getpid()]).result(timeout=120)
    assert got["here"] == ["PermissionError", "PermissionError"], got
    assert got["exec"] == "['PermissionError', 'PermissionError']", got
    dropped = sum(1 << cap for cap in isolation.MEMORY_READING_CAPABILITIES.values())
    for held in ("caps", "exec_caps"):
        for kind in ("CapEff", "CapPrm", "CapBnd"):
            assert not got[held][kind] & dropped, (held, kind, hex(got[held][kind]))
    # (the rest stays: a job's code may still do as root what Lambda's user cannot, e.g. own files)
    assert got["caps"]["CapEff"] & (1 << 0), hex(got["caps"]["CapEff"])  # CAP_CHOWN
