"""The client side: every call resolves, once, and a program leaves
nothing behind in the store; thread-safe by-value pickling; faithful wrapping
and errors; owner records and ``wrenpack clean --stale``; the backend contract
of ``wrenpack.backends.base`` (on_start, cancel, draining shutdown, on_done once).

The tests that run calls run on every backend (``backends`` in tests/conftest.py);
those about the store alone run once."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest

from tests.processes import interruptible

import wrenpack
from wrenpack import config as wconfig, keys
from wrenpack.errors import StoreError, WrenpackError
from wrenpack.storage import store_for_config
from wrenpack.storage.local import LocalStore

# The toy backend's variants run with -m slow: its calls outlive the driver and write an owner record,
# as the emulated Lambda's do, whose variants stay; what is the toy's own is tests/test_toy_backend.py's.
pytestmark = pytest.mark.backends(slow=("toy",))


def square(x):
    return x * x


def sleeper(s):
    time.sleep(s)
    return s


def _objects(where) -> list[str]:
    """The job objects in a local store's root, or in the store of some settings."""
    store = store_for_config(wrenpack.Config(**where)) if isinstance(where, dict) else LocalStore(str(where))
    return store.list("jobs/")


#: what a program run by these tests does first: tests/conftest.py registers the test backends (toy),
#: and on the emulated Lambda the program deploys this Python as of a day Lambda took it; on the local
#: backend it needs neither (importing them, pytest and the AWS stand-ins' modules, took 0.3 s a program)
_PREAMBLE = ("import os\n"
             "if os.environ.get('WRENPACK_BACKEND') in ('toy', 'lambda'):\n"
             "    import tests.conftest\n"
             "if os.environ.get('WRENPACK_BACKEND') == 'lambda':\n"
             "    from tests.aws.runtime_dates import live_day_for_this_process; live_day_for_this_process()\n")


def _program_env(settings: dict) -> dict:
    """The environment of a program that runs wrenpack with ``settings`` (WRENPACK_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update({f"WRENPACK_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()})
    env.update(WRENPACK_PROGRESS="false", PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    return env


def _run_script(tmp_path, settings: dict, body: str, **kw) -> subprocess.CompletedProcess:
    script = tmp_path / "prog.py"
    script.write_text(_PREAMBLE + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_program_env(settings), capture_output=True,
                          text=True, timeout=120, **kw)


def _calls_end_with_driver(capabilities, backend) -> None:
    if not capabilities.calls_end_with_driver:
        pytest.skip(f"calls on {backend} outlive the driver (capabilities.calls_end_with_driver is False): "
                    "the program cannot stop them at exit")


# -- nothing left behind --------------------------------------------------------------
README_PROGRAMS = {
    "map": """
        import wrenpack
        @wrenpack.remote
        def square(x):
            return x * x
        print(wrenpack.get(square.map(range(20))))
    """,
    "large results": """
        import wrenpack
        @wrenpack.remote(memory=512)
        def blob(n):
            return b"x" * n
        print(sum(map(len, wrenpack.get(blob.map([3_000_000] * 3)))))
    """,
    "large argument": """
        import wrenpack
        @wrenpack.remote(memory=512)
        def size(b):
            return len(b)
        print(size.remote(b"y" * 5_000_000).result())
    """,
    "errors": """
        import wrenpack
        @wrenpack.remote
        def fails(x):
            raise ValueError(x)
        print(len(wrenpack.get(fails.map(range(3)), return_exceptions=True)))
    """,
    "executor": """
        import wrenpack
        with wrenpack.Executor() as ex:
            print(list(ex.map(abs, [-1, -2])), ex.submit(abs, -3).result())
    """,
}


@pytest.mark.parametrize("name", sorted(README_PROGRAMS))
# 2-3 s each on the emulated Lambda. Its "map" and "errors" are what its "large results" runs too (a map
# whose results are stored, then removed at exit); its "executor" is the `with Executor()` of
# local-executor, whose removal from S3 tests/aws/test_aws_lambda.py's
# test_queued_calls_are_not_lost_or_sent_twice checks.
@pytest.mark.slow_variants("lambda-map", "lambda-executor", "lambda-errors")
def test_readme_programs_leave_no_objects(tmp_path, backend_settings, name):
    settings = backend_settings()
    out = _run_script(tmp_path, settings, README_PROGRAMS[name])
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert _objects(settings) == []


def test_calls_running_at_exit_are_stopped_and_removed(tmp_path, backend_settings, capabilities, backend):
    _calls_end_with_driver(capabilities, backend)
    settings = backend_settings()
    out = _run_script(tmp_path, settings, """
        import time, wrenpack
        @wrenpack.remote
        def slow(x):
            time.sleep(60)
        futs = slow.map(range(3))
        while not any(f.running() for f in futs):  # (was 1 s of sleep)
            time.sleep(0.05)
        print("exiting")
    """)
    assert out.returncode == 0 and "exiting" in out.stdout, out.stderr
    assert "not finished at exit" in out.stderr
    assert _objects(settings) == []


def test_calls_running_at_exit_where_they_outlive_the_program_are_cancelled(tmp_path, backend_settings, capabilities,
                                                                          backend, capsys):
    """Where calls outlive their driver (Lambda's Event invocations), the exit took back only
    calls not sent yet: those running ran to their end (billed), their results landed after
    the job's objects were removed, with no owner record left for `clean --stale` to judge,
    while the warning said they were stopped. Now each gets its cancel marker, which survives
    the removal with the owner record, and `wrenpack clean --stale` removes what they wrote."""
    if capabilities.calls_end_with_driver or not capabilities.cancel_running:
        pytest.skip(f"calls on {backend} end with their driver, or cannot be stopped once running")
    from wrenpack.cli import main

    settings = backend_settings()
    out = _run_script(tmp_path, settings, """
        import time, wrenpack
        @wrenpack.remote(retries=0)
        def slow(x):
            time.sleep(8)
            return x
        futs = slow.map(range(2))
        while not all(f.running() for f in futs):
            time.sleep(0.05)
        time.sleep(0.5)
        print("exiting")
    """)
    assert out.returncode == 0 and "exiting" in out.stdout, out.stderr
    assert "run on where they are until they next look for the cancel marker" in out.stderr, out.stderr
    left = _objects(settings)
    assert left and all(k.endswith(("/owner.json", "/cancel.00000", "/cancel.00001")) or "/cancel" in k for k in left), left
    store = store_for_config(wrenpack.Config(**settings))
    deadline = time.monotonic() + 30
    results: list[str] = []
    while time.monotonic() < deadline and len(results) < 2:  # (each stops at its first look, 2 s in)
        results = [k for k in store.list("jobs/") if "/result/" in k]
        time.sleep(0.25)
    assert len(results) == 2, store.list("jobs/")
    for key in results:
        assert b'"exit":"ok"' not in store.get(key), key  # stopped, not run to its end
    where = ["--storage", settings["storage"]] + (["--s3-endpoint-url", settings["s3_endpoint_url"]]
                                                  if settings.get("s3_endpoint_url") else [])
    assert main(["clean", "--stale", *where]) == 0, capsys.readouterr().err
    assert _objects(settings) == []


def _interruptible_program(tmp_path, settings: dict, body: str) -> subprocess.Popen:
    """A program running ``body`` with wrenpack's ``settings``, its output piped, that a test can send ^C."""
    return subprocess.Popen([sys.executable, "-c", _PREAMBLE + textwrap.dedent(body)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_program_env(settings),
                            preexec_fn=interruptible)


def test_ctrl_c_removes_the_jobs_objects(tmp_path, backend_settings, capabilities, backend):
    _calls_end_with_driver(capabilities, backend)
    settings = backend_settings()
    proc = _interruptible_program(tmp_path, settings, """
            import time, wrenpack
            @wrenpack.remote
            def slow(x):
                time.sleep(60)
            futs = slow.map(range(3))
            while not any(f.running() for f in futs):  # (was 1 s of sleep in the test)
                time.sleep(0.05)
            print("waiting", flush=True)
            wrenpack.get(futs)
        """)
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.1)  # (the program is in wrenpack.get, with calls running)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert _objects(settings) == []


def test_ctrl_c_in_an_executors_with_block_stops_its_calls_rather_than_waiting(tmp_path, backend_settings, capabilities,
                                                                             backend):
    """Ctrl-C while a ``result()`` waits inside ``with Executor()``: the block's exit stopped
    nothing and waited for every call (57 s after Ctrl-C, with calls of 30 s), where Ctrl-C
    anywhere else stops them at once. Now it stops them, says so, and removes their objects."""
    _calls_end_with_driver(capabilities, backend)
    settings = backend_settings()
    proc = _interruptible_program(tmp_path, settings, """
            import time, wrenpack
            def slow(x):
                time.sleep(60)
            with wrenpack.Executor(concurrency=2) as ex:
                futs = [ex.submit(slow, i) for i in range(4)]
                while not any(f.running() for f in futs):
                    time.sleep(0.05)
                print("waiting", flush=True)
                futs[0].result()
        """)
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.1)  # (the program is in result(), with calls running)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20, err  # (before: 60 s, each call waited for)
    assert "KeyboardInterrupt" in err and "not finished when Ctrl-C ended the executor's `with` block" in err, err
    assert _objects(settings) == []


def test_ctrl_c_while_an_executors_with_block_waits_at_its_end_stops_its_calls(tmp_path, backend_settings, capabilities,
                                                                               backend):
    """Ctrl-C while the block's exit waits for the calls (shutdown(wait=True)): the interrupt
    came out of the wait and the calls ran on to their end, in a program that caught it (a
    notebook, a server). They are stopped now, and the interrupt goes on."""
    _calls_end_with_driver(capabilities, backend)
    settings = backend_settings()
    proc = _interruptible_program(tmp_path, settings, """
            import os, signal, threading, time, wrenpack
            def slow(x):
                time.sleep(60)
            try:
                with wrenpack.Executor(concurrency=2) as ex:
                    futs = [ex.submit(slow, i) for i in range(2)]
                    while not all(f.running() for f in futs):
                        time.sleep(0.05)
                    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            except KeyboardInterrupt:
                print("caught", all(f.done() for f in futs), flush=True)
        """)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "caught True", out + err  # (before: the calls were still running)
    assert "not finished when Ctrl-C ended the executor's `with` block" in err, err
    assert _objects(settings) == []


@pytest.mark.slow_variants("lambda")  # (the driver writes and keeps them; on Lambda: test_aws_lambda's test_duplicate_delivery_*)
def test_keep_objects_keeps_them_and_owner_is_recorded(make_executor):
    ex = make_executor(concurrency=1, keep_objects=True)
    with ex:
        fut = ex.submit(square, 3)
        assert fut.result(timeout=60) == 9
    owner = json.loads(ex.store.get(keys.owner_key(fut.job_id)))
    assert owner["pid"] == os.getpid() and owner["start"]


# -- completion always resolves -------------------------------------------------------
class FailingStore(LocalStore):
    """Reads of result objects fail (the store broke while completing)."""

    def __init__(self, root, exc):
        super().__init__(root)
        self.exc = exc

    def get(self, key):
        if "/result/" in key:
            raise self.exc
        return super().get(key)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), OSError(5, "Input/output error")])
def test_store_error_while_completing_fails_the_future(tmp_path, exc):
    from wrenpack.backends.local import LocalBackend

    # reply_limit=0: results are read from the (failing) store, not taken from the worker's reply
    ex = wrenpack.Executor(storage=FailingStore(str(tmp_path), exc), backend=LocalBackend(concurrency=1, reply_limit=0))
    try:
        futs = wrenpack.remote(square, executor=ex).map(range(3))
        for fut in futs:
            err = fut.exception(timeout=60)
            assert isinstance(err, WrenpackError), err
            assert ("disk on fire" in str(err) or "Input/output error" in str(err)) and "\n" not in str(err)
            assert fut.done() and not fut.running()
    finally:
        ex.shutdown()


@pytest.mark.backends(slow=("toy", "lambda"))  # 5 s on lambda: three calls one after another, then a new default executor
def test_configure_mid_flight_lets_the_old_executor_finish(backend_settings, monkeypatch):
    monkeypatch.setattr(wconfig, "_global_overrides", {})
    settings = backend_settings(concurrency=1)
    wrenpack.configure(**settings)
    try:
        f = wrenpack.remote(sleeper)
        futs = f.map([0.2, 0.2, 0.2])
        wrenpack.configure(memory=512)  # retires the default executor mid-flight
        assert wrenpack.get(futs, timeout=60) == [0.2, 0.2, 0.2]
        assert f.remote(0.01).result(timeout=60) == 0.01  # the new default executor
    finally:
        from wrenpack.executor import reset_default_executor

        reset_default_executor()
    deadline = time.monotonic() + 10
    while _objects(settings) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _objects(settings) == []


def test_shutdown_without_wait_drains_in_the_background(make_executor):
    ex = make_executor(concurrency=1)
    futs = [ex.submit(sleeper, 0.2) for _ in range(3)]
    ex.shutdown(wait=False)
    assert wrenpack.get(futs, timeout=60) == [0.2] * 3


# -- client-side store failures are one-line StoreErrors --------------------------------
class FullStore(LocalStore):
    def put(self, key, data, *, if_absent=False):
        if key.endswith("func.pkl"):
            raise OSError(28, "No space left on device")
        return super().put(key, data, if_absent=if_absent)


def test_store_full_at_launch_is_a_store_error(tmp_path):
    # inline_limit=0: the function and arguments go through the store (a small call alone touches none)
    ex = wrenpack.Executor(storage=FullStore(str(tmp_path)), concurrency=1, inline_limit=0)
    with ex:
        with pytest.raises(StoreError, match="No space left on device") as info:
            ex.submit(square, 2)
    assert "\n" not in str(info.value)
    assert _objects(tmp_path) == []


def test_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "jobs").write_text("not a folder")
    ex = wrenpack.Executor(storage=str(tmp_path), concurrency=1)
    with ex:
        # A small call stores nothing (function, arguments and result travel with the call) ...
        assert ex.submit(square, 2).result(timeout=60) == 4
        # ... a call that must store its function and arguments meets the broken store at launch.
        ex.config = ex.config.replace(inline_limit=0)
        with pytest.raises(StoreError) as info:
            ex.submit(square, 3)
    assert "\n" not in str(info.value) and "storage=" in str(info.value)


def test_stray_tmp_files_go_with_their_job_and_are_swept(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put("jobs/j1/result/0/00000.res", b"x")
    stray = tmp_path / "jobs" / "j1" / "result" / "0" / ".tmp-999-1-0"
    stray.write_bytes(b"half")
    store.delete_prefix("jobs/j1/")
    assert not (tmp_path / "jobs" / "j1").exists()
    old = tmp_path / "jobs" / "j2" / ".tmp-999-2-0"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"half")
    young = tmp_path / "jobs" / "j2" / ".tmp-999-2-1"
    young.write_bytes(b"writing")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    from wrenpack.storage.local import sweep_tmp

    assert sweep_tmp(store, 300) == 1 and not old.exists() and young.exists()
    # Only wrenpack's own: a user's .tmp-* file beside the store's folders, or one named otherwise
    # in them, stays (the whole root was swept).
    theirs = [tmp_path / "project" / ".tmp-999-3-0", tmp_path / "jobs" / "j2" / ".tmp-notes"]
    theirs[0].parent.mkdir()
    for path in theirs:
        path.write_bytes(b"the user's")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert sweep_tmp(store, 300) == 0 and all(p.exists() for p in theirs)


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _dirs, files in os.walk(root) for f in files)


def test_temporary_files_of_writers_that_are_gone_are_removed(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put("data/keep/x", b"x")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # (a process that has exited: its pid names no running process now)
    orphan = tmp_path / "data" / "t" / "u" / f".tmp-{dead}-1-0"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    (tmp_path / "data" / "keep" / f".tmp-{dead}-1-1").write_bytes(b"half")
    writing = tmp_path / "data" / "w" / f".tmp-{os.getpid()}-1-2"  # a writer that still runs: left alone
    writing.parent.mkdir(parents=True)
    writing.write_bytes(b"writing")
    t0 = time.monotonic()
    assert store.remove_stopped_writes(grace_s=0.2) == 2
    assert time.monotonic() - t0 >= 0.2  # (it gave the running writer its grace)
    assert _files(tmp_path) == ["data/keep/x", f"data/w/.tmp-{os.getpid()}-1-2"]
    assert not (tmp_path / "data" / "t").exists()  # the folders that held only the orphan went with it


def _write_forever(root: str) -> None:
    """A call stopped in the middle of a write: its temporary file is there, the rename never comes."""
    os.makedirs(os.path.join(root, "data", "half"), exist_ok=True)
    with open(os.path.join(root, "data", "half", f".tmp-{os.getpid()}-1-0"), "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        time.sleep(60)


def test_a_call_stopped_in_the_middle_of_a_write_leaves_nothing_in_the_store(tmp_path):
    root = str(tmp_path / "store")
    ex = wrenpack.Executor(storage=root, concurrency=1, retries=0)
    fut = wrenpack.remote(_write_forever, executor=ex, timeout=1).remote(root)
    with pytest.raises(wrenpack.TaskTimeout):
        fut.result(timeout=60)
    assert any(".tmp-" in f for f in _files(root))
    ex.shutdown()
    assert _files(root) == []  # (before: the call's temporary file stayed until `wrenpack clean`)
    assert not os.path.exists(os.path.join(root, "data", "half"))


def test_a_map_reduce_removed_at_exit_keeps_its_owner_record_until_its_shards_are_gone(tmp_path):
    """The exit removes a stopped map_reduce's shard prefixes, then its own prefix with the
    owner record: one sorted list did both at once, and with an id starting 0-3 its own
    prefix sorted in among the shards, so a shard whose removal failed was left with no
    record saying whose it was (``clean --stale`` kept it for good)."""
    ex = wrenpack.Executor(storage=str(tmp_path / "store"))
    store = ex.store
    sid = "0a1111111111"
    prefixes = keys.shuffle_prefixes(sid, 16)
    for n in range(16):
        store.put(keys.shuffle_part_key(sid, n), b"x")
    store.put(keys.shuffle_owner_key(sid), b"x")
    for prefix in prefixes:
        ex.own_prefix(prefix)
    failing = keys.shuffle_shard_prefix(sid, 11)
    plain = store.delete_prefix

    def delete_prefix(prefix):
        if prefix == failing:
            raise StoreError("refused, as a throttled S3 would")
        return plain(prefix)

    store.delete_prefix = delete_prefix
    ex.shutdown()
    assert sorted(store.list("shuffle/")) == sorted([keys.shuffle_part_key(sid, 11), keys.shuffle_owner_key(sid)])


def test_a_map_reduce_running_at_exit_leaves_no_intermediate_objects(tmp_path):
    root = tmp_path / "store"
    out = _run_script(tmp_path, {"storage": str(root), "concurrency": 2}, """
        import os, time, wrenpack
        def mapper(x):
            time.sleep(0.3)
            return [(x % 3, b"v" * 100_000)]
        def reducer(key, values):
            time.sleep(60)
        fut = wrenpack.map_reduce(mapper, range(8), reducer, partitions=3)
        deadline = time.monotonic() + 60
        while not any(f for _d, _s, f in os.walk(os.path.join(os.environ["WRENPACK_STORAGE"], "shuffle"))):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        print("exiting")  # while mappers still write their parts
    """)
    assert out.returncode == 0 and "exiting" in out.stdout, out.stderr
    # (before: parts and indexes stayed under shuffle/ in 2 of 3 runs, when the program ended
    # before the map_reduce's own thread removed them; whether calls still ran at that moment
    # depends on the machine's load, what is left must not)
    assert _files(root) == []


def _mapper_that_runs_on(x):
    open(os.path.join(os.environ["MAPPERS_STARTED"], str(x)), "w").close()
    time.sleep(60)
    return [(x, x)]


def _reducer(key, values):
    return sum(values)


def _plus_one(x):
    return x + 1


def test_a_slow_write_under_an_owned_prefix_holds_no_launch_and_lands_before_its_removal(tmp_path):
    """The driver's word to a map_reduce's waiting reducers (``while_owned``) was written
    under the executor's lock: a slow PUT (S3 throttling) held every launch and completion
    behind it (a call took 3.7 s to launch beside a 4 s write). The release still waits for
    such a write, so it lands before the prefix is removed, not after."""
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    prefix = "shuffle/0123456789ab/"
    ex.own_prefix(prefix)
    writing, done = threading.Event(), threading.Event()

    def slow_write() -> None:
        writing.set()
        time.sleep(2.0)
        ex.store.put(prefix + "abort", b"x")

    writer = threading.Thread(target=lambda: (ex.while_owned(prefix, slow_write), done.set()))
    writer.start()
    assert writing.wait(10)
    t0 = time.monotonic()
    assert wrenpack.remote(_plus_one, executor=ex).remote(1).result(timeout=30) == 2
    assert time.monotonic() - t0 < 1.8 and not done.is_set(), "the launch waited for the write"
    ex.shutdown()  # (during the write: waits for it, then removes the prefix)
    writer.join(10)
    assert done.is_set() and ex.store.list("shuffle/") == []


def test_a_map_reduce_thread_late_at_exit_writes_nothing_after_its_objects_were_removed(tmp_path, monkeypatch):
    """At exit (SIGTERM too) the executor waits 3 s for a map_reduce's own thread, then removes
    its objects itself; that thread, later (a loaded machine), told its waiting reducers to stop
    by writing an abort object into the removed folder, and the process could end before the
    thread's own cleanup removed it again. Here the thread comes back only after the removal."""
    from wrenpack.executor import mapreduce
    from wrenpack.worker import shuffle

    root, started = tmp_path / "store", tmp_path / "started"
    started.mkdir()
    monkeypatch.setenv("MAPPERS_STARTED", str(started))
    ex = wrenpack.Executor(storage=str(root), concurrency=2, retries=0)
    released = threading.Event()
    release = ex._release

    def released_then_said() -> None:
        release()
        released.set()

    monkeypatch.setattr(ex, "_release", released_then_said)
    wait_for_mappers = mapreduce.RunningJob._wait_for_mappers

    def late(self, maps):  # (the thread is back from its wait only after the exit removed its objects)
        wait_for_mappers(self, maps)
        released.wait(30)

    monkeypatch.setattr(mapreduce.RunningJob, "_wait_for_mappers", late)
    late_writes: list[str] = []
    put = shuffle.put

    def watched_put(store, key, *args, **kwargs):
        if released.is_set():
            late_writes.append(key)
        return put(store, key, *args, **kwargs)

    monkeypatch.setattr(shuffle, "put", watched_put)  # (the driver's writes: the calls' run elsewhere)
    fut = wrenpack.map_reduce(_mapper_that_runs_on, range(4), _reducer, partitions=2, executor=ex)
    deadline = time.monotonic() + 60
    while not os.listdir(started):  # (a mapper runs: stopping it makes the thread tell the reducers)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ex.stop()
    assert released.is_set()
    with pytest.raises(WrenpackError):
        fut.result(timeout=30)
    assert late_writes == []  # (before: ['shuffle/<id>/abort'], written after the folder's removal)
    assert _files(root) == []
#: job ids of the form wrenpack makes: ``clean --all``/``--stale`` leave any other folder under jobs/
LIVE, GONE, NOBODY = "20260101-000000-0000a11e", "20260101-000000-00000901", "20260101-000000-00000000"
LAMBDA, LOCAL, STOPPED, STOPPING, FORGED = (f"20260102-000000-0000000{i}" for i in range(5))


def _clean(tmp_path, *argv):
    from wrenpack.cli.cmd_clean import cmd_clean

    ns = argparse.Namespace(job_ids=[a for a in argv if not a.startswith("--")], all="--all" in argv,
                            stale="--stale" in argv, force="--force" in argv, storage=str(tmp_path / "store"),
                            region=None, profile=None, s3_endpoint_url=None, json=True)
    return cmd_clean(ns)


def test_clean_stale_and_all(tmp_path, capsys, monkeypatch):
    from wrenpack.executor import owner_record
    from wrenpack.executor.owner import user_key
    from wrenpack.wire import owner as owner_wire

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))  # this test's own owner key
    store = LocalStore(str(tmp_path / "store"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = owner_record("live", LIVE)
    # (the record of a process that is gone, sealed as its owner would have)
    gone = owner_wire.seal(user_key(), GONE, dict(owner_record("gone"), pid=dead.pid, start="1"))
    for job, owner in ((LIVE, live), (GONE, gone), (NOBODY, None)):
        store.put(f"jobs/{job}/func.pkl", b"x")
        if owner is not None:
            store.put(keys.owner_key(job), json.dumps(owner).encode())
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    # A job without an owner record is kept: whether its owner runs cannot be checked.
    assert out["jobs"] == 1 and out["skipped"] == [NOBODY, LIVE]
    assert sorted({k.split("/")[1] for k in store.list("jobs/")}) == sorted([LIVE, NOBODY])
    _age(tmp_path / "store")  # (a folder without owner record goes once unchanged for five minutes)
    assert _clean(tmp_path, "--stale", "--force") == 0  # the user's override: those too, never a live one
    assert json.loads(capsys.readouterr().out)["jobs"] == 1
    assert sorted({k.split("/")[1] for k in store.list("jobs/")}) == [LIVE]
    with pytest.raises(wrenpack.ConfigError, match="still running.*--force"):
        _clean(tmp_path, "--all")
    with pytest.raises(wrenpack.ConfigError, match="still running"):
        _clean(tmp_path, LIVE)
    assert store.list("jobs/")
    assert _clean(tmp_path, "--all", "--force") == 0
    assert store.list("jobs/") == []


def _project(root):
    """A folder wrenpack never wrote, with jobs/ and shuffle/ in it (a --storage typo's)."""
    for rel, text in (("jobs/results/summary.txt", "y"), ("shuffle/run1/part", "x"), ("data/train.csv", "z")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.chmod(0o700)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_clean_removes_nothing_from_a_folder_wrenpack_never_wrote(tmp_path, capsys, monkeypatch):
    """`clean --storage DIR --all` removed DIR/jobs/results/summary.txt and DIR/shuffle/run1/part
    of a project folder, no --force needed: only folders named as wrenpack names its jobs and
    map_reduces are its own. Such a folder is said not to be a store, in one line."""
    from wrenpack.cli.cmd_clean import cmd_clean

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    project = tmp_path / "store"  # (where _clean looks)
    files = _project(project)
    for argv in (("--all",), ("--all", "--force"), ("--stale", "--force")):
        assert _clean(tmp_path, *argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["removed"] == 0 and out["wrenpack_store"] is False, (argv, out)
        assert out["skipped"] == ["jobs/results/", "shuffle/run1/"] and "not wrenpack's" in out["skipped_why"]["jobs/results/"]
    ns = argparse.Namespace(job_ids=[], all=True, stale=False, force=True, storage=str(project), region=None,
                            profile=None, s3_endpoint_url=None, json=False)
    assert cmd_clean(ns) == 0
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "does not look like a wrenpack store" in said and "check --storage" in said, said
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == files
    # A folder with other things in it and no jobs/ at all (`--storage ~`, /etc) is no store either.
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    other.chmod(0o700)
    ns.storage = str(other)
    assert cmd_clean(ns) == 0 and "does not look like a wrenpack store" in capsys.readouterr().out


def test_clean_all_in_a_store_leaves_what_wrenpack_did_not_name(tmp_path, capsys, monkeypatch):
    """In a real store, --all removes the jobs and map_reduces wrenpack named and reports the rest as skipped."""
    from wrenpack.executor.core import new_job_id

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    files = _project(tmp_path / "store")
    store = LocalStore(str(tmp_path / "store"))
    job, sid = new_job_id(), "0123456789ab"
    store.put(keys.func_key(job), b"x")
    store.put(keys.shuffle_part_key(sid, 0), b"x")
    _age(tmp_path / "store")  # (no owner records: left while younger than five minutes)
    assert _clean(tmp_path, "--all", "--force") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrenpack_store"] is True and out["jobs"] == 1 and out["map_reduces"] == 1 and out["removed"] == 2, out
    assert out["skipped"] == ["jobs/results/", "shuffle/run1/"]
    assert sorted(str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*") if p.is_file()) == files


def test_clean_all_removes_map_reduces_of_both_layouts_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The shard came before the id in a map_reduce's keys (``shuffle/<shard>/<id>/``); an
    earlier version wrote ``shuffle/<id>/<shard>/``. --all finds and removes both, and a
    shuffle's objects found only in a shard (no owner record), leaves no empty
    ``shuffle/<shard>/`` folder, and still leaves the folders wrenpack never names."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    store = LocalStore(str(root))
    old, new, orphan = "0123456789ab", "abcdef012345", "fedcba987654"
    for key in (f"shuffle/{old}/owner.json", f"shuffle/{old}/05/m00005-000", f"shuffle/{old}/05/i00005",
                f"shuffle/{old}/00/t0-00000", f"shuffle/{old}/abort",  # (the layout before)
                keys.shuffle_owner_key(new), keys.shuffle_part_key(new, 5), keys.shuffle_index_key(new, 5),
                keys.shuffle_tree_key(new, 1, 70), keys.shuffle_abort_key(new), keys.shuffle_part_key(orphan, 9)):
        store.put(key, b"x")
    for rel in ("shuffle/7f/x", "shuffle/05/notanid/x", "shuffle/run1/part"):  # (not names wrenpack gives)
        store.put(rel, b"y")
    _age(root)  # (the orphan has no owner record: left while younger than five minutes)
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["map_reduces"] == 3 and out["removed"] == 11, out
    assert out["prefixes"] == {f"shuffle/{old}/": 5, f"shuffle/{new}/": 5, f"shuffle/{orphan}/": 1}, out
    assert out["skipped"] == ["shuffle/05/notanid/", "shuffle/7f/", "shuffle/run1/"], out
    assert store.list("shuffle/") == ["shuffle/05/notanid/x", "shuffle/7f/x", "shuffle/run1/part"]
    folders = sorted(os.path.relpath(d, root) for d, _dirs, _files in os.walk(root / "shuffle"))
    assert folders == ["shuffle", "shuffle/05", "shuffle/05/notanid", "shuffle/7f", "shuffle/run1"], folders


def _tree(root):
    """Every folder and file below ``root`` (links as such, not followed), relative."""
    out = []
    for d, dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in dirs + files]
    return sorted(out)


def test_clean_finds_a_map_reduce_folder_left_with_only_a_temporary_file_or_nothing(tmp_path, capsys, monkeypatch):
    """A writer killed during a map_reduce's first write into a shard leaves ``shuffle/<shard>/<id>/``
    holding only its ``.tmp-*`` file (empty once that is swept). The store's listing leaves such a
    folder out, and clean called the shard not wrenpack's; once it was all the store held, every
    clean said the store was none ("check --storage") and removed nothing, for good. A 12-hex
    folder in a shard is wrenpack's whatever it holds: --all removes it and the shard folder with
    it (once unchanged for five minutes: until then a writer may be at work there); --stale keeps
    it while it has no owner record (--force removes it), the store recognised."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    LocalStore(str(root))
    sid = "abcdefabcdef"
    folder = root / "shuffle" / "05" / sid
    # (a) its owner record (unreadable) and a shard holding a writer's temporary file alone
    folder.mkdir(parents=True, mode=0o700)
    (folder / ".tmp-999999-1-0").write_bytes(b"x")
    (root / "shuffle" / sid).mkdir(mode=0o700)
    (root / "shuffle" / sid / "owner.json").write_bytes(b"junk")
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrenpack_store"] is True and out["map_reduces"] == 1 and out["skipped"] == [], out
    assert _tree(root) == ["shuffle"], _tree(root)  # (no shuffle/05/ left either)
    # (b) the shard's temporary file alone, and (c) the folder it was in, emptied by the sweep
    for leftover in (b".tmp-999999-1-0", None):
        folder.mkdir(parents=True, mode=0o700)
        if leftover is not None:
            (folder / leftover.decode()).write_bytes(b"x")
        assert _clean(tmp_path, "--stale") == 0  # (no owner record: kept, but wrenpack's)
        out = json.loads(capsys.readouterr().out)
        assert out["wrenpack_store"] is True and out["removed"] == 0, out
        assert out["skipped"] == [f"map_reduce {sid}"] and "owner record" in out["skipped_why"][f"map_reduce {sid}"], out
        assert folder.is_dir()
        # (no owner record and younger than five minutes: --all too leaves it, a writer may be at work)
        assert _clean(tmp_path, "--all") == 0
        out = json.loads(capsys.readouterr().out)
        assert out["map_reduces"] == 0 and out["skipped"] == [f"map_reduce {sid}"], out
        assert "no owner record" in out["skipped_why"][f"map_reduce {sid}"] and folder.is_dir(), out
        _age(root)
        assert _clean(tmp_path, "--all") == 0
        out = json.loads(capsys.readouterr().out)
        assert out["wrenpack_store"] is True and out["skipped"] == [], out
        if leftover is not None:
            assert out["map_reduces"] == 1 and _tree(root) == ["shuffle"], (out, _tree(root))
        else:  # (old and empty: the empty folders' rule takes it, the shard's folder at the next clean)
            assert out["empty_folders_removed"] == 1 and _tree(root) == ["shuffle", "shuffle/05"], (out, _tree(root))
            _age(root)
            assert _clean(tmp_path, "--all") == 0
            assert json.loads(capsys.readouterr().out)["empty_folders_removed"] == 1 and _tree(root) == ["shuffle"]
    folder.mkdir(parents=True, mode=0o700)
    (folder / ".tmp-999999-1-0").write_bytes(b"x")
    _age(root)
    assert _clean(tmp_path, "--stale", "--force") == 0
    assert json.loads(capsys.readouterr().out)["map_reduces"] == 1 and _tree(root) == ["shuffle"]
    # An empty shard folder (a writer killed between making it and its id's) is no one else's either.
    (root / "shuffle" / "05").mkdir(mode=0o700)
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrenpack_store"] is True and out["skipped"] == [], out


def test_clean_reports_links_under_shuffle_as_skipped_and_shards_in_hex(tmp_path, capsys, monkeypatch):
    """A symbolic link under ``shuffle/`` or in a shard folder is not followed, and was left out of
    the output; it is listed as skipped. A shard name wrenpack never gives is said so in hex (the
    reason read "shard (2, below 40)": 0x40, read as forty)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root, outside = tmp_path / "store", tmp_path / "outside"
    store = LocalStore(str(root))
    sid, other = "0123456789ab", "cccccccccccc"
    (outside / other).mkdir(parents=True)
    (outside / other / "m00002-000").write_text("keep")
    store.put(keys.shuffle_part_key(sid, 1), b"x")
    os.symlink(outside, root / "shuffle" / "02")
    (root / "shuffle" / "03").mkdir(mode=0o700)
    os.symlink(outside / other, root / "shuffle" / "03" / other)
    store.put(f"shuffle/40/{other}/x", b"y")
    _age(root)  # (no owner record: left while younger than five minutes)
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["map_reduces"] == 1 and out["removed"] == 1, out
    assert out["skipped"] == ["shuffle/02", "shuffle/03/" + other, "shuffle/40/"], out
    assert "symbolic link" in out["skipped_why"]["shuffle/02"] and "symbolic link" in out["skipped_why"]["shuffle/03/" + other]
    assert "2 hex digits, 00 to 3f" in out["skipped_why"]["shuffle/40/"], out
    assert (outside / other / "m00002-000").read_text() == "keep"
    assert os.path.islink(root / "shuffle" / "02") and os.path.islink(root / "shuffle" / "03" / other)
    # Links alone are nothing of wrenpack's: such a folder is no store.
    store.delete_prefix("shuffle/40/")
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrenpack_store"] is False and out["skipped"] == ["shuffle/02", "shuffle/03/" + other], out


def test_clean_stale_waits_out_the_late_writes_of_calls_that_outlive_their_driver(tmp_path, capsys, monkeypatch):
    """On Lambda the calls a killed driver sent run on, and write, after it is gone: the first
    clean --stale removes what they wrote so far but keeps the owner record (and the cancel markers
    they look for) for as long as they may still write; later cleans remove the late writes, and
    the record once that time has passed (before: the record went at once, and what came later
    had no owner record, so --stale kept it for good)."""
    from wrenpack.executor import owner_record
    from wrenpack.executor.owner import user_key
    from wrenpack.wire import owner as owner_wire

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(str(tmp_path / "store"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def gone(job, late_s=None, **extra):
        record = dict(owner_record("f"), pid=dead.pid, start="1", **extra)
        if late_s is not None:
            record["late_s"] = late_s
        return owner_wire.seal(user_key(), job, record)

    for job, record in ((LAMBDA, gone(LAMBDA, 1530.0)), (LOCAL, gone(LOCAL))):
        store.put(keys.owner_key(job), json.dumps(record).encode())
        for name in ("func.pkl", "args/c0", "cancel", "cancel.c1"):
            store.put(f"jobs/{job}/{name}", b"x")
    before = time.time()
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 2 and set(out["awaiting_late_writes"]) == {LAMBDA}
    assert before + 1530 <= out["awaiting_late_writes"][LAMBDA] <= time.time() + 1530
    assert store.list(f"jobs/{LOCAL}/") == []
    assert sorted(store.list(f"jobs/{LAMBDA}/")) == [f"jobs/{LAMBDA}/cancel", f"jobs/{LAMBDA}/cancel.c1", keys.owner_key(LAMBDA)]
    record = json.loads(store.get(keys.owner_key(LAMBDA)))
    assert owner_wire.verify(user_key(), LAMBDA, record) and before <= record["swept"] <= time.time()

    store.put(f"jobs/{LAMBDA}/result/c0", b"late")  # a call's late write
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == 1 and LAMBDA in out["awaiting_late_writes"]
    assert json.loads(store.get(keys.owner_key(LAMBDA)))["swept"] == record["swept"]  # (counted from the first)

    # Once that time has passed, all of it goes.
    store.put(keys.owner_key(LAMBDA), json.dumps(gone(LAMBDA, 1530.0, swept=time.time() - 1531)).encode())
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["awaiting_late_writes"] == {} and store.list("jobs/") == []

    # A driver's exit names the calls it stopped (``running``): once each has its result, none will
    # write again and the job goes at once; until then, its record stays.
    for job, results in ((STOPPED, ["00000", "00001"]), (STOPPING, ["00000"])):
        store.put(keys.owner_key(job), json.dumps(gone(job, 1530.0, running=["00000", "00001"])).encode())
        for cid in results:
            store.put(keys.result_key(job, cid), b"r")
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 2 and set(out["awaiting_late_writes"]) == {STOPPING}
    assert store.list("jobs/") == [keys.owner_key(STOPPING)]
    store.delete_prefix(keys.job_prefix(STOPPING))

    # A late_s nobody sealed decides nothing: the record does not verify, the job is kept as unknown.
    forged = dict(gone(FORGED, 1530.0), late_s=10**9)
    store.put(keys.owner_key(FORGED), json.dumps(forged).encode())
    assert _clean(tmp_path, "--stale") == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == [FORGED]


def test_clean_stale_removes_the_intermediates_of_a_killed_map_reduce(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))  # this test's own owner key
    root = tmp_path / "store"
    settings = {"storage": str(root), "concurrency": 2}
    script = tmp_path / "prog.py"
    script.write_text(_PREAMBLE + textwrap.dedent("""
        import os, time, wrenpack
        def mapper(x):
            return [(x % 3, x)]
        def reducer(key, values):
            time.sleep(60)
        fut = wrenpack.map_reduce(mapper, range(6), reducer, partitions=3)
        while not any(f.startswith("m") for _d, _s, files in os.walk(os.path.join(os.environ["WRENPACK_STORAGE"], "shuffle"))
                      for f in files):
            time.sleep(0.02)
        print("ready", flush=True)
        time.sleep(60)
    """))
    env = dict(_program_env(settings), WRENPACK_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        store = LocalStore(str(root))
        (sid,) = [f for f in store.list_folders("shuffle/") if keys.is_shuffle_id(f)]  # (not the shards' folders)
        assert store.exists(keys.shuffle_owner_key(sid))
        assert _clean(tmp_path, "--stale") == 0  # its driver runs: kept
        assert json.loads(capsys.readouterr().out)["map_reduces"] == 0 and store.list(f"shuffle/{sid}/")
        with pytest.raises(wrenpack.ConfigError, match=f"still running \\(map_reduce {sid}"):
            _clean(tmp_path, "--all")
        # (under --json the refusal is also a JSON line on stdout, as build-runtime --json gives it)
        assert json.loads(capsys.readouterr().out)["ok"] is False
    finally:
        proc.kill()  # (SIGKILL: no exit handler removes anything)
        proc.wait()
    assert store.list(f"shuffle/{sid}/")  # what a killed driver leaves
    # Its workers end their calls a moment after it (one may write a mapper's output meanwhile): kept
    # until they are gone (before: removed at once, and the late write stayed; seen in a loaded CI).
    deadline = time.monotonic() + 15
    while True:
        assert _clean(tmp_path, "--stale") == 0
        out = json.loads(capsys.readouterr().out)
        if out["map_reduces"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out["map_reduces"] == 1 and store.list("shuffle/") == []  # (before: never removed, not even by --all)


def test_clean_stale_lists_a_map_reduce_s_shards_once_it_found_it_stale(tmp_path, capsys, monkeypatch):
    """clean --stale lists the shard folders, then finds whether each map_reduce's driver (or a
    worker of it) still runs. A killed driver's last worker may write a mapper's output into a
    shard folder not listed yet, and end, in between: found stale, the map_reduce lost only the
    shards listed before, and the late write stayed (with no owner record left, for good). Its
    shards are listed again once it is found stale: nothing of it can write after that."""
    from wrenpack.cli import cmd_clean
    from wrenpack.executor import owner_record
    from wrenpack.executor.owner import user_key
    from wrenpack.process_state import start_time
    from wrenpack.wire import owner as owner_wire

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(str(tmp_path / "store"))
    sid = "0123456789ab"
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    record = dict(owner_record("f"), pid=dead.pid, start=start_time(dead.pid))
    dead.communicate()
    store.put(keys.shuffle_owner_key(sid), json.dumps(owner_wire.seal(user_key(), keys.shuffle_owner_id(sid), record)).encode())
    store.put(keys.shuffle_part_key(sid, 0), b"m0")
    judged = cmd_clean.shuffle_state

    def last_write_then_judged(store_, sid_, key):
        store_.put(keys.shuffle_part_key(sid_, 1), b"m1")  # (a worker's last write, after the listing, then its end)
        return judged(store_, sid_, key)

    monkeypatch.setattr(cmd_clean, "shuffle_state", last_write_then_judged)
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["map_reduces"] == 1 and out["removed"] == 3, out
    assert store.list("shuffle/") == []  # (before: ['shuffle/01/0123456789ab/m00001-000'])


def _driver_leaving_a_worker() -> tuple[int, dict]:
    """A driver that starts a process carrying its worker marker (as a local worker's command
    line does) and exits: (that process's pid, the driver's owner record)."""
    driver = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, subprocess, sys
        from wrenpack.executor.owner import owner_record
        from wrenpack.process_state import worker_marker
        w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              json.dumps({"owner": worker_marker()})], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(w.pid, json.dumps(owner_record("test")))
    """)], capture_output=True, text=True, check=True, cwd=os.getcwd())
    pid, record = driver.stdout.split(" ", 1)
    return int(pid), json.loads(record)


def test_a_gone_owner_counts_as_running_while_a_worker_of_it_ends_its_call(tmp_path, monkeypatch):
    """A killed driver's local workers end their calls a moment later, and a call may write its
    objects meanwhile: until they are gone its jobs are not stale (``clean --stale`` waits)."""
    from wrenpack import process_state
    from wrenpack.executor import owner_alive

    monkeypatch.setattr(process_state, "SCAN_REUSE_S", 0.0)
    worker, record = _driver_leaving_a_worker()
    try:
        assert process_state.start_time(record["pid"]) is None  # the driver is gone
        assert owner_alive(record) is True  # (before: False, and clean --stale removed what it still wrote)
    finally:
        os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while owner_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner_alive(record) is False
    assert owner_alive(dict(record, start=None)) is False  # (no start time: the marker cannot be told apart)


def test_a_scan_of_the_processes_taken_before_a_driver_started_says_nothing_of_its_workers(monkeypatch):
    """One read of /proc answers, for a second, whether the workers of every owner already gone
    then still run (a clean of many jobs reads it once). It was reused for any owner: one taken
    before a driver started said "no workers" as soon as that driver was killed, and the first
    ``clean --stale`` after the kill removed the map_reduce its workers still wrote to (the write
    stayed: test_clean_stale_removes_the_intermediates_of_a_killed_map_reduce in about one CI run
    in six, right after a test whose clean had read /proc for a gone owner, in the same process)."""
    from wrenpack import process_state
    from wrenpack.executor import owner_alive

    monkeypatch.setattr(process_state, "SCAN_REUSE_S", 3600.0)  # (the scan below is young enough for any reuse)
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    dead_start = process_state.start_time(dead.pid)
    dead.communicate()
    assert process_state.works_for(dead.pid, dead_start) is False  # (a clean of a gone owner's job reads /proc)
    scan = process_state._scan
    assert process_state.works_for(dead.pid, dead_start) is False and process_state._scan is scan  # (read once)
    worker, record = _driver_leaving_a_worker()  # (started after that scan: not in it)
    try:
        assert process_state.start_time(record["pid"]) is None  # the driver is gone, its worker runs
        assert owner_alive(record) is True  # (before: False, from the scan above)
        # A scan taken once the driver was gone answers for it again.
        scan = process_state._scan
        assert owner_alive(record) is True and process_state._scan is scan
    finally:
        os.kill(worker, signal.SIGKILL)
    monkeypatch.setattr(process_state, "SCAN_REUSE_S", 0.0)
    deadline = time.monotonic() + 5
    while owner_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner_alive(record) is False


# -- thread-safe by-value pickling --------------------------------------------------------
@pytest.mark.backends(slow=("toy", "lambda"))  # 20 maps of 3 calls: 5-8 s on each of these
def test_four_threads_mapping_user_module_functions(tmp_path, monkeypatch, make_executor):
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir()
    # (a large global makes each by-value pickle slow enough for the threads to overlap)
    (mod_dir / "wp_user_mod.py").write_text("TABLE = list(range(300_000))\n\ndef triple(x):\n    return 3 * x + TABLE[0]\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import wp_user_mod

    # The workers cannot import it: only by-value pickling gets it there.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(mod_dir)])
    ex = make_executor(concurrency=2)
    errors: list[BaseException] = []
    results: list[list[int]] = []

    def run(k):
        try:
            f = wrenpack.remote(wp_user_mod.triple, executor=ex)
            for _ in range(5):
                results.append(wrenpack.get(f.map(range(k, k + 3)), timeout=120))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ex.shutdown()
    assert not errors, errors[0]
    assert len(results) == 20
    assert "wp_user_mod" not in cloudpickle.list_registry_pickle_by_value()


def test_by_value_scopes_in_threads_never_pickle_by_reference(tmp_path, monkeypatch):
    """The race itself: one thread's scope ending must not unregister the
    module while another thread pickles (that pickle would be by reference)."""
    from wrenpack import serialize

    mod_dir = tmp_path / "race"
    mod_dir.mkdir()
    (mod_dir / "wp_user_mod3.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import wp_user_mod3

    by_ref = len(cloudpickle.dumps(wp_user_mod3.f))
    mods = serialize.user_modules_of(wp_user_mod3.f)
    assert mods == {wp_user_mod3}
    sizes: list[int] = []

    def run():
        for _ in range(1000):
            sizes.append(len(serialize.dumps_function(wp_user_mod3.f, mods)))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race shows at once
    try:
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert min(sizes) > 3 * by_ref, f"{sum(n <= 3 * by_ref for n in sizes)} of {len(sizes)} pickles were by reference"
    assert "wp_user_mod3" not in cloudpickle.list_registry_pickle_by_value()


@pytest.mark.slow_variants("lambda")  # (the registry is the driver's; by value on Lambda: test_aws_lambda's test_chunksize_5_*)
def test_a_module_the_user_registered_stays_registered(executor, tmp_path, monkeypatch):
    mod_dir = tmp_path / "m"
    mod_dir.mkdir()
    (mod_dir / "wp_user_mod2.py").write_text("def inc(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import wp_user_mod2

    cloudpickle.register_pickle_by_value(wp_user_mod2)
    try:
        assert wrenpack.remote(wp_user_mod2.inc, executor=executor).remote(1).result(timeout=60) == 2
        assert "wp_user_mod2" in cloudpickle.list_registry_pickle_by_value()
    finally:
        cloudpickle.unregister_pickle_by_value(wp_user_mod2)


# -- faithful wrapping and errors ---------------------------------------------------------
class Adder:
    fn = "an attribute named fn"
    _options = "and one named _options"

    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        return x + self.n


@pytest.mark.slow_variants("lambda")  # (wrapped by the driver; by value on Lambda: test_aws_lambda's test_chunksize_5_*)
def test_callable_object_with_an_fn_attribute(remote):
    f = remote(Adder(10))
    assert f(1) == 11
    assert f.remote(1).result(timeout=60) == 11
    assert wrenpack.get(f.map([1, 2])) == [11, 12]


def imports_missing():
    import wp_no_such_module_anywhere  # noqa: F401


def test_rebuilt_wrenpack_errors_keep_their_attributes(remote):
    with pytest.raises(wrenpack.MissingDependency) as info:
        remote(imports_missing).remote().result(timeout=60)
    assert info.value.name == "wp_no_such_module_anywhere"


# -- the backend contract (wrenpack/backends/base.py), each backend driven directly ---------------
def _nap(s):
    time.sleep(s)
    return s


def _wait_for(predicate, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.slow_variants("local")  # (test_local_lifecycle's test_on_start_cancel_and_draining_shutdown: these steps on the local backend, and more)
def test_on_start_cancel_and_draining_shutdown(captured):
    calls = captured(_nap, [0.3, 0.3, 0.3, 0.3])
    invs, done, started = calls.invocations, calls.done, calls.started
    backend = calls.backend(concurrency=1)
    backend.invoke_many(invs)
    assert backend.cancel(invs[3]) is True  # still queued: taken back
    _wait_for(lambda: started)
    assert started == [invs[0].key[1]]
    assert backend.cancel(invs[0]) is False  # running
    backend.shutdown(wait=True)  # drains: the queued calls still run and report
    assert sorted(done) == [inv.key[1] for inv in invs[:3]]
    assert all(r.error is None for r in done.values()), [r.error for r in done.values()]
    assert started == [inv.key[1] for inv in invs[:3]]
    assert invs[3].key[1] not in done  # a cancelled call never reports


@pytest.mark.slow_variants("local")  # (test_local_lifecycle's test_shutdown_without_wait_fails_queued_and_running_calls_clearly, on the local backend)
def test_shutdown_without_wait_fails_every_call_left_once(captured):
    calls = captured(_nap, [3, 3, 3])
    invs, done, started = calls.invocations, calls.done, calls.started
    backend = calls.backend(concurrency=1)
    backend.invoke_many(invs)
    _wait_for(lambda: started)
    assert started
    t0 = time.monotonic()
    backend.shutdown(wait=False)
    assert time.monotonic() - t0 < 5
    _wait_for(lambda: len(done) == len(invs), within=10)
    assert sorted(done) == sorted(inv.key[1] for inv in invs)  # each once (``captured`` checks the once)
    assert all(isinstance(r.error, WrenpackError) and "shut down" in str(r.error) for r in done.values()), \
        [str(r.error) for r in done.values()]
    with pytest.raises(WrenpackError, match="shut down"):
        backend.invoke_many(invs[:1])


def test_clean_removes_empty_folders_a_stopped_writer_left_once_they_are_old(tmp_path, capsys, monkeypatch):
    """A writer killed between making ``shuffle/<shard>/`` (or ``jobs/<id>/``) and writing into it
    leaves an empty folder that no object's removal ever takes: it stayed for good. ``--all`` and
    ``--stale`` remove such folders of wrenpack's names once unchanged for the temporary files' age
    (a writer may be about to fill a fresh one); anything else, and a link, stays."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    LocalStore(str(root))
    empties = [root / "shuffle" / "05", root / "shuffle" / "06" / "abcdefabcdef", root / "jobs" / "20261205-143416-73377e87"]
    for folder in empties:
        folder.mkdir(parents=True, mode=0o700)
    (root / "shuffle" / "notashard").mkdir(mode=0o700)  # (not a wrenpack name: left, as before)
    assert _clean(tmp_path, "--stale") == 0  # fresh: a writer may be about to write into them
    assert json.loads(capsys.readouterr().out)["empty_folders_removed"] == 0
    assert all(folder.is_dir() for folder in empties)
    old = time.time() - 3600
    for folder in empties + [root / "shuffle" / "06", root / "shuffle" / "notashard"]:
        os.utime(folder, (old, old))
    assert _clean(tmp_path, "--stale") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["empty_folders_removed"] == 3, out
    assert out["skipped"] == [] and out["map_reduces"] == 0, out  # (an empty folder of another name is not said, as before)
    assert _tree(root) == ["jobs", "shuffle", "shuffle/06", "shuffle/notashard"], _tree(root)  # (06 goes at the next clean)


def test_clean_reports_a_link_under_jobs_as_skipped(tmp_path, capsys, monkeypatch):
    """A symbolic link under ``jobs/`` was left out of clean's output (those under ``shuffle/``
    were listed); it is listed as skipped too, never followed."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root, outside = tmp_path / "store", tmp_path / "outside"
    store = LocalStore(str(root))
    job = "20261205-143416-73377e87"
    (outside / job).mkdir(parents=True)
    (outside / job / "func.pkl").write_text("keep")
    store.put(keys.job_prefix("20261205-143416-aaaaaaaa") + "func.pkl", b"x")
    os.symlink(outside / job, root / "jobs" / job)
    _age(root)  # (no owner record: left while younger than five minutes)
    assert _clean(tmp_path, "--all", "--force") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 1 and out["skipped"] == [f"jobs/{job}"], out
    assert "symbolic link" in out["skipped_why"][f"jobs/{job}"], out
    assert (outside / job / "func.pkl").read_text() == "keep" and os.path.islink(root / "jobs" / job)


def test_clean_of_a_folder_it_calls_no_wrenpack_store_removes_nothing_not_even_an_empty_folder(tmp_path, capsys, monkeypatch):
    """probe9: clean --all said "removed nothing ... does not look like a wrenpack store" after it had
    removed an old empty jobs/<id>/ folder there (the empty folders went before that decision)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    LocalStore(str(root))
    (root / "jobs" / "notes").mkdir(parents=True, mode=0o700)
    (root / "jobs" / "notes" / "x.txt").write_text("mine")
    empty = root / "jobs" / "20261205-143416-73377e87"
    empty.mkdir(mode=0o700)
    old = time.time() - 3600
    os.utime(empty, (old, old))
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrenpack_store"] is False and out["removed"] == 0 and out["empty_folders_removed"] == 0, out
    assert empty.is_dir() and (root / "jobs" / "notes" / "x.txt").read_text() == "mine"


@pytest.mark.parametrize("linked", ["jobs", "shuffle"])
def test_clean_reports_jobs_or_shuffle_itself_a_link_as_skipped(linked, tmp_path, capsys, monkeypatch):
    """probe9: a link one level below jobs/ was reported, jobs (or shuffle) itself a link was not."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root, outside = tmp_path / "store", tmp_path / "outside"
    store = LocalStore(str(root))
    (outside / "20261205-143416-73377e87").mkdir(parents=True)
    (outside / "20261205-143416-73377e87" / "func.pkl").write_text("keep")
    store.put(keys.job_prefix("20261205-143416-aaaaaaaa") + "func.pkl", b"x")  # (a wrenpack store)
    if linked == "jobs":
        store.delete_prefix(keys.JOBS)
        (root / "shuffle" / "05" / "abcdefabcdef").mkdir(parents=True, mode=0o700)
        (root / "shuffle" / "05" / "abcdefabcdef" / "m00000-000").write_bytes(b"x")
    if (root / linked).exists():
        import shutil

        shutil.rmtree(root / linked)
    os.symlink(outside, root / linked)
    assert _clean(tmp_path, "--all", "--force") == 0
    out = json.loads(capsys.readouterr().out)
    assert linked in out["skipped"] and "symbolic link" in out["skipped_why"][linked], out
    assert (outside / "20261205-143416-73377e87" / "func.pkl").read_text() == "keep" and os.path.islink(root / linked)


def test_clean_all_force_removes_jobs_one_by_one_and_leaves_what_is_not_theirs(tmp_path, capsys, monkeypatch):
    """probe10: --all --force removed jobs/ whole, and with it a folder that is not wrenpack's
    (jobs/foo, empty) and a job folder a writer had just made (young, empty)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    store = LocalStore(str(root))
    store.put(keys.job_prefix("20261205-143416-aaaaaaaa") + "func.pkl", b"x")
    (root / "jobs" / "20261205-143416-bbbbbbbb").mkdir(mode=0o700)  # young and empty: a writer's, about to write
    (root / "jobs" / "foo").mkdir(mode=0o700)  # not a wrenpack name
    _age(root / "jobs" / "20261205-143416-aaaaaaaa")  # (no owner record: left while younger than five minutes)
    assert _clean(tmp_path, "--all", "--force") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 1 and out["removed"] == 1, out
    assert sorted(os.listdir(root / "jobs")) == ["20261205-143416-bbbbbbbb", "foo"]


def _pairs(x):
    return [(x % 2, x)]


def _age(root, seconds=3600):
    """Make everything below ``root`` (folders and files, links left alone) look ``seconds`` old."""
    old = time.time() - seconds
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            if not os.path.islink(os.path.join(d, name)):
                os.utime(os.path.join(d, name), (old, old))
        os.utime(d, (old, old))


@pytest.mark.parametrize("argv", [("--all",), ("--all", "--force"), ("--stale", "--force")])
def test_clean_keeps_a_map_reduce_whose_driver_is_writing_its_owner_record(argv, tmp_path, capsys, monkeypatch):
    """A map_reduce's driver makes ``shuffle/<id>/`` and then writes its owner record there (a local
    store: a temporary file, then a rename). A clean that listed the store in between found the
    folder without its record, took it for a stopped writer's and removed it, the writer's
    temporary file with it: the rename failed and the map_reduce with it. The driver is held
    between the two here; a folder without an owner record that changed within five minutes is
    now kept (and said so), and the map_reduce ends well."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    ex = wrenpack.Executor(storage=str(root), concurrency=2)
    writing, go = threading.Event(), threading.Event()
    store_put = ex.store.put

    def held_put(key, data, **kwargs):
        if not (key.startswith(keys.SHUFFLE) and key.endswith("/owner.json")):
            return store_put(key, data, **kwargs)

        def chunks():  # (the folder and the temporary file are there; the rename waits)
            yield data[:1]
            writing.set()
            assert go.wait(60)
            yield data[1:]

        ex.store.put_chunks(key, chunks())
        return True

    monkeypatch.setattr(ex.store, "put", held_put)
    launched: list = []
    thread = threading.Thread(target=lambda: launched.append(
        _capture(lambda: wrenpack.map_reduce(_pairs, range(6), _reducer, partitions=2, executor=ex))))
    thread.start()
    try:
        assert writing.wait(60)
        (sid,) = os.listdir(root / "shuffle")
        assert _clean(tmp_path, *argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["map_reduces"] == 0 and out["removed"] == 0, out
        assert out["skipped"] == [f"map_reduce {sid}"], out
        assert "no owner record" in out["skipped_why"][f"map_reduce {sid}"], out
    finally:
        go.set()
        thread.join(60)
    (outcome,) = launched
    assert not isinstance(outcome, BaseException), outcome
    assert dict(outcome.result(timeout=60)) == {0: 0 + 2 + 4, 1: 1 + 3 + 5}
    ex.shutdown()
    assert _tree(root / "shuffle") == []


def _capture(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc


def test_clean_keeps_a_young_job_folder_without_owner_record_and_removes_it_once_old(tmp_path, capsys, monkeypatch):
    """``jobs/<id>/`` holding objects but no owner record (a call's cancel marker written before
    the job's first object, a worker whose owner write failed) was removed by --all (and
    --stale --force) at once, though a job may just be starting there. Kept while anything in it
    changed within five minutes; removed by the clean after that."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    store = LocalStore(str(root))
    job = "20261205-143416-73377e87"
    store.put(keys.cancel_key(job), b"x")
    store.put(keys.func_key(job), b"x")
    for argv in (("--all",), ("--all", "--force"), ("--stale", "--force")):
        assert _clean(tmp_path, *argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["jobs"] == 0 and out["removed"] == 0 and out["skipped"] == [job], (argv, out)
        assert "no owner record" in out["skipped_why"][job] and "5 minutes" in out["skipped_why"][job], out
    assert _clean(tmp_path, "--stale") == 0  # (kept as before: its owner cannot be checked)
    assert json.loads(capsys.readouterr().out)["skipped"] == [job]
    assert len(store.list(keys.job_prefix(job))) == 2
    _age(root)
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 1 and out["removed"] == 2 and out["skipped"] == [], out
    assert store.list("jobs/") == []


def test_clean_rechecks_a_job_without_owner_record_right_before_removing_it(tmp_path, capsys, monkeypatch):
    """An old folder without an owner record is removed by --all; if its owner record appears after
    clean judged it (a writer that starts there meanwhile), the removal is called off for it."""
    from wrenpack.cli import cmd_clean

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "store"
    store = LocalStore(str(root))
    job, other = "20261205-143416-73377e87", "20261205-143416-aaaaaaaa"
    for j in (job, other):
        store.put(keys.func_key(j), b"x")
    _age(root)
    judge = cmd_clean.job_state

    def then_a_writer_starts(store_, j, key=None):
        state = judge(store_, j, key)
        if j == job:
            store.put(keys.owner_key(job), b"{}")
        return state

    monkeypatch.setattr(cmd_clean, "job_state", then_a_writer_starts)
    assert _clean(tmp_path, "--all") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 1 and out["prefixes"] == {keys.job_prefix(other): 1}, out
    assert out["skipped"] == [job] and "appeared" in out["skipped_why"][job], out
    assert store.list(keys.job_prefix(job)) == [keys.func_key(job), keys.owner_key(job)]


def test_a_launch_the_exit_cleanup_overtakes_registers_nothing_and_leaves_nothing(tmp_path, monkeypatch):
    """After SIGTERM the main thread runs on out of library code while the cleanup runs
    (``termination``): a launch it was in had stored its job's objects when the cleanup took
    its list of jobs, and registered the job after that, while the backend still ran. That job
    escaped the cleanup: its calls ran and its objects stayed. Now a launch the exit overtook
    removes what it stored and raises ExecutorShutdown."""
    from wrenpack.errors import ExecutorShutdown
    from wrenpack.executor import core

    root = tmp_path / "store"
    ex = wrenpack.Executor(storage=str(root), concurrency=1, retries=0)
    start = core.Executor._start

    def overtaken(self, job_id, *args, **kwargs):
        with self._lock:  # what the exit's cleanup does first, in its own thread: closed, the jobs listed
            self._closed = self._exited = True
        return start(self, job_id, *args, **kwargs)

    monkeypatch.setattr(core.Executor, "_start", overtaken)
    try:
        with pytest.raises(ExecutorShutdown, match="interpreter shutdown"):
            wrenpack.remote(len, executor=ex).map([os.urandom(3 << 20)] * 3)
    finally:
        monkeypatch.undo()
        ex._exit()  # (the rest of the cleanup)
    assert _files(root) == []
