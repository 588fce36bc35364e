"""Bad input is refused in one line that names the problem and the fix, before
anything launches: a wrenpack error, and a ``ValueError``/``TypeError`` where
the standard library raises one. And the places where ``wrenpack.Executor``
behaved otherwise than ``concurrent.futures`` (the tests borrow CPython's and
loky's ideas; none of their code)."""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import gc
import importlib.util
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
import weakref

import pytest

import wrenpack
from wrenpack.wire import outcome as outcome_format
from wrenpack.config import Config, current
from wrenpack.errors import ConfigError, ConfigTypeError, MissingDependency, SerializationError, WrenpackError


def square(x):
    return x * x


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert isinstance(exc, WrenpackError), type(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# -- arguments of the wrong type: a wrenpack error that is a TypeError ----------------------
WRONG_TYPES = [
    ("remote(executor='x')", lambda tmp: wrenpack.remote(square, executor="x"), "executor='x'.*wrenpack.Executor"),
    ("options(executor=3)", lambda tmp: wrenpack.remote(square).options(executor=3), "executor=3.*wrenpack.Executor"),
    ("map_reduce(executor='x')", lambda tmp: wrenpack.map_reduce(square, [1], sum, executor="x"), "executor='x'"),
    ("map_reduce(partitioned='yes')", lambda tmp: wrenpack.map_reduce(square, [1], sum, partitions=2, partitioned="yes"),
     r"partitioned='yes'\): must be True or False"),
    ("map_reduce(per_object=1)", lambda tmp: wrenpack.map_reduce(square, [1], sum, per_object=1), "per_object=1"),
    ("map_reduce(partition_fn=3)", lambda tmp: wrenpack.map_reduce(square, [1], sum, partitions=2, partition_fn=3),
     r"partition_fn=3\): must be a function"),
    ("get([1, 2, 3])", lambda tmp: wrenpack.get([1, 2, 3]), "item 0 is int"),
    ("get(5)", lambda tmp: wrenpack.get(5), "a future or an iterable of futures"),
    ("wait(['x'])", lambda tmp: wrenpack.wait(["x"]), "item 0 is str"),
    ("Executor(storage=123)", lambda tmp: wrenpack.Executor(storage=123), "storage=123.*path"),
]


@pytest.mark.parametrize("what,make,match", WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_wrong_types_are_one_line_type_errors(tmp_path, what, make, match):
    with pytest.raises(TypeError, match=match) as info:
        make(tmp_path)
    assert isinstance(info.value, ConfigError)  # `except ConfigError` still catches them
    _one_line(info.value)


def test_a_wait_whose_timeout_is_not_seconds_is_one_line_and_loses_nothing(executor):
    fut = wrenpack.remote(square, executor=executor).remote(3)
    for what, wait in (("result", lambda: fut.result(timeout="1")), ("exception", lambda: fut.exception(timeout=[1])),
                       ("result", lambda: fut.result(timeout=True)), ("wrenpack.get", lambda: wrenpack.get(fut, timeout="1"))):
        with pytest.raises(TypeError, match=rf"{what}\(timeout=.*must be a number of seconds, or None") as info:
            wait()
        assert isinstance(info.value, ConfigError)
        _one_line(info.value)
    assert fut.result(timeout=60) == 9 and wrenpack.get(fut, timeout=60.0) == 9


# -- values that were accepted and meant something else: refused ------------------------------
REFUSED = [
    ("storage='file://'", {"storage": "file://"}, "names no absolute path"),
    ("storage='file://tmp/x'", {"storage": "file://tmp/x"}, "three slashes"),
    ("storage='~nosuchuser/store'", {"storage": "~nosuchuser/store"}, "~nosuchuser cannot be expanded"),
    ("storage='s3://bad bucket name/x'", {"storage": "s3://bad bucket name/x"}, "'bad bucket name' is not an S3 bucket name"),
    ("storage=''", {"storage": ""}, "store path is empty"),
    ("storage='s3://bkt/../x'", {"storage": "s3://bkt/../x"}, r"may not contain '\.\.' segments.*e\.g\. s3://bkt/x$"),
    ("storage='s3://bkt/./x'", {"storage": "s3://bkt/./x"}, r"may not contain '\.' segments.*e\.g\. s3://bkt/x$"),
    ("storage='s3://bkt//x'", {"storage": "s3://bkt//x"}, r"may not begin with '/'.*e\.g\. s3://bkt/x$"),
    ("storage='s3://bkt/x//y'", {"storage": "s3://bkt/x//y"}, r"may not contain '//'.*e\.g\. s3://bkt/x/y$"),
    ("storage='s3://bkt/a\\tb'", {"storage": "s3://bkt/a\tb"}, "the prefix holds a tab"),
    ("storage='s3:/bkt/x'", {"storage": "s3:/bkt/x"}, r"looks like a URL with one slash after 's3:'; write s3://"),
    ("storage=' s3://bkt/x'", {"storage": " s3://bkt/x"}, r"spaces around it .a quoting slip.*remove them: 's3://bkt/x'"),
    ("storage='/tmp/store '", {"storage": "/tmp/store "}, r"spaces around it .a quoting slip.*remove them: '/tmp/store'"),
    ("timeout=1e-9", {"timeout": 1e-9}, "below Lambda's minimum of 1 s"),
    ("timeout=0.5", {"timeout": 0.5}, "below Lambda's minimum of 1 s"),
    ("retries=10**9", {"retries": 10**9}, "at most 20"),
    ("function_name=''", {"function_name": ""}, "1 to 53 letters"),
    ("function_name='a b'", {"function_name": "a b"}, "1 to 53 letters"),
]


@pytest.mark.parametrize("what,settings,match", REFUSED, ids=[r[0] for r in REFUSED])
def test_values_that_meant_something_else_are_refused(tmp_path, what, settings, match):
    with pytest.raises(ConfigError, match=match) as info:
        wrenpack.Executor(**({"storage": str(tmp_path)} | settings))
    assert isinstance(info.value, ValueError)
    _one_line(info.value)
    with pytest.raises(ConfigError, match=match):
        wrenpack.configure(**settings)


@pytest.mark.parametrize("options,match", [({"timeout": 1e-9}, "minimum of 1 s"), ({"retries": 10**9}, "at most 20")])
def test_per_function_options_are_refused_where_given(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        wrenpack.remote(square, **options)
    _one_line(info.value)


TEXT = [({"concurrency": "4"}, "a whole number", "concurrency=4"), ({"memory": "512"}, "a whole number of MB", "memory=512"),
        ({"timeout": "30"}, "a number of seconds", "timeout=30.0"), ({"retries": "2"}, "a whole number", "retries=2"),
        ({"ephemeral_storage": "1024"}, "a whole number of MB", "ephemeral_storage=1024"),
        ({"keep_warm": "0"}, "a number of seconds", None),
        ({"inline_limit": "0"}, "a whole number", "inline_limit=0"),
        ({"keep_objects": "no"}, "True or False", "keep_objects=False")]


@pytest.mark.parametrize("settings,kind,fix", TEXT, ids=[next(iter(t[0])) for t in TEXT])
def test_text_given_as_an_argument_for_a_number_or_flag_is_a_type_error(tmp_path, monkeypatch, settings, kind, fix):
    """README: a value of the wrong type is a ConfigTypeError. Executor(concurrency="4") or memory="512" was
    read as the number, as from the environment; WRENPACK_* and [tool.wrenpack] text is still read so."""
    (name, value), = settings.items()
    launches = [lambda: wrenpack.Executor(**({"storage": str(tmp_path)} | settings)),
                lambda: wrenpack.configure(**settings), lambda: current(**settings), lambda: Config(**settings)]
    if name in ("memory", "timeout", "retries", "ephemeral_storage"):  # (per-function options too)
        launches += [lambda: wrenpack.remote(square, **settings), lambda: wrenpack.remote(square).options(**settings)]
    for launch in launches:
        # (text that spells no allowed value: what is allowed, still a type error)
        said = rf"is text, but must be {kind}; pass {fix} \(text is read only from WRENPACK_{name.upper()}" if fix \
            else f"must be {kind} > 0"
        with pytest.raises(ConfigTypeError, match=rf"^{name}={value!r} \(from .*\) {said}") as info:
            launch()
        _one_line(info.value)
    if fix:
        monkeypatch.setenv(f"WRENPACK_{name.upper()}", value)
        assert getattr(current(), name) == getattr(current(), name) is not None  # (read: no error)
        assert str(getattr(current(), name)) in fix


def test_the_limits_still_take_what_lambda_takes(tmp_path):
    cfg = current(storage=f"file://{tmp_path}", timeout=1, retries=20, function_name="my_fn-2")
    assert (cfg.timeout, cfg.retries, cfg.function_name) == (1.0, 20, "my_fn-2")
    assert current(storage="s3://my-bucket.example/p").storage == "s3://my-bucket.example/p"
    assert current(storage="~/wp-store").storage == "~/wp-store"  # (a user that exists)
    assert current(storage="s3://my-bucket/date=2024/run-1.(a)").storage == "s3://my-bucket/date=2024/run-1.(a)"
    assert current(storage="s3://my-bucket/x/").storage == "s3://my-bucket/x"  # (one trailing '/': the same folder)
    assert current(storage="store").storage == "store"  # (an argument: read here, once, against this directory)


def test_cli_refuses_a_storage_prefix_with_dot_dot_in_one_line_before_anything(tmp_path):
    """`--storage s3://b/../x` was the prefix '../x' (deploy would pin functions to it, clean list it)."""
    for argv in (("clean", "--all"), ("deploy", "--function-name", "wp"), ("jobs",)):
        code, lines = _cli(*argv, "--storage", "s3://my-bucket/../x", env={"WRENPACK_CACHE_DIR": str(tmp_path)})
        assert code in (1, 2) and len(lines) == 1, (argv, lines)
        assert "may not contain '..' segments" in lines[0] and "e.g. s3://my-bucket/x" in lines[0], lines


ENV = [
    ("WRENPACK_TIMEOUT", "0.001", "below Lambda's minimum of 1 s"),
    ("WRENPACK_FUNCTION_NAME", "", "1 to 53 letters"),
    ("WRENPACK_NO_CGROUPS", "maybe", "must be a boolean word"),
    ("WRENPACK_CACHE_DIR", "/proc/nope", "not a usable directory .cannot create it"),
    ("WRENPACK_PROFILE_DIR", "/proc/nope", "not a usable directory .cannot create it"),
    ("WRENPACK_STORAGE", "s3://Bad Bucket/x", "not an S3 bucket name"),
    ("WRENPACK_STORAGE", "s3://bkt/../x", "may not contain '..' segments"),
    ("WRENPACK_STORAGE", "store", r"a relative path, which each process would read .* use an absolute path, e\.g\. /"),
    ("WRENPACK_STORAGE", "./store", "a relative path"),
]


@pytest.mark.parametrize("var,value,match", ENV, ids=[e[0] for e in ENV])
def test_bad_environment_variables_name_themselves(monkeypatch, var, value, match):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=match) as info:
        Config.load()
    assert var in str(info.value)
    _one_line(info.value)


def test_unusable_directories_say_why_where_they_are_used(monkeypatch, tmp_path):
    from wrenpack.backends.local.linux import CgroupFactory
    from wrenpack.profiler import store as profiles

    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(a_file))
    with pytest.raises(ConfigError, match="WRENPACK_PROFILE_DIR=.* is not a usable directory .it is not a directory"):
        profiles.profiles_dir()
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))
    assert profiles.profiles_dir() == tmp_path / "profiles" and (tmp_path / "profiles").is_dir()
    monkeypatch.setenv("WRENPACK_NO_CGROUPS", "maybe")
    with pytest.raises(ConfigError, match="WRENPACK_NO_CGROUPS='maybe' must be a boolean word"):
        CgroupFactory.detect()
    monkeypatch.setenv("WRENPACK_NO_CGROUPS", "yes")
    assert CgroupFactory.detect() is None


def _cli(*argv, env=None):
    out = subprocess.run([sys.executable, "-m", "wrenpack", *argv], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, **(env or {})))
    lines = out.stderr.strip().splitlines()
    return out.returncode, lines


def test_cli_build_runtime_names_an_unusable_cache_directory(tmp_path):
    code, lines = _cli("build-runtime", "six", "-o", str(tmp_path / "rt"), env={"WRENPACK_CACHE_DIR": "/proc/nope"})
    assert code != 0 and len(lines) == 1, lines
    assert "WRENPACK_CACHE_DIR='/proc/nope' is not a usable directory" in lines[0] and "Traceback" not in lines[0]


def test_cli_clean_of_an_unknown_job_is_an_error(tmp_path):
    store = tmp_path / "store"
    (store / "jobs" / "real-job" ).mkdir(parents=True)
    (store / "jobs" / "real-job" / "func.pkl").write_bytes(b"x")
    code, lines = _cli("clean", "nosuchjob-123", "--storage", str(store))
    assert code != 0 and len(lines) == 1, lines
    assert "no job 'nosuchjob-123' in the store" in lines[0] and "Traceback" not in lines[0]
    code, lines = _cli("clean", "real-job", "nosuchjob-123", "--storage", str(store))
    assert code != 0 and (store / "jobs" / "real-job" / "func.pkl").exists()  # nothing removed


# -- map_reduce's shuffle: what the mapper must return --------------------------------------
def returns_none(text):
    text.split()


def returns_a_number(text):
    return len(text)


def returns_a_dict(text):
    return {w: 1 for w in text.split()}


def count(key, values):
    return sum(values)


@pytest.mark.parametrize("mapper,returned", [(returns_none, "NoneType None"), (returns_a_number, "int 9"),
                                             (returns_a_dict, "dict")])
def test_a_shuffle_mapper_that_returns_no_pairs_is_told_what_to_return(executor, mapper, returned):
    fut = wrenpack.map_reduce(mapper, ["ab cd efg"], count, partitions=2, executor=executor)
    with pytest.raises(TypeError, match="the mapper must yield \\(key, value\\) pairs") as info:
        fut.result(timeout=120)
    assert isinstance(info.value, ConfigError) and f"it returned {returned}" in str(info.value)
    _one_line(info.value)


# -- MissingDependency names what to install -----------------------------------------------
@pytest.mark.parametrize("module,dist", [("sklearn", "scikit-learn"), ("PIL", "Pillow"), ("cv2", "opencv-python-headless"),
                                         ("yaml", "PyYAML"), ("bs4", "beautifulsoup4"), ("skimage", "scikit-image"),
                                         ("sklearn.ensemble", "scikit-learn"), ("nosuchmodule_wp", "nosuchmodule_wp")])
def test_missing_dependency_names_the_distribution(module, dist):
    from wrenpack.worker.handler import _missing

    err = _missing(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert f"wrenpack build-runtime {dist})" in _one_line(err) and err.name == module


def imports_sklearn(x):
    import sklearn  # noqa: F401

    return x


def test_missing_dependency_hint_end_to_end(executor):
    # (looked up, not imported: importing scikit-learn takes seconds, only to skip)
    if importlib.util.find_spec("sklearn") is not None:
        pytest.skip("scikit-learn is installed here")
    with pytest.raises(MissingDependency, match="wrenpack build-runtime scikit-learn") as info:
        executor.submit(imports_sklearn, 1).result(timeout=60)
    _one_line(info.value)


# -- concurrent.futures: what CPython's and loky's tests expect -----------------------------
class Dummy:
    pass


def make_dummy(i):
    return Dummy()


def test_map_iterator_keeps_no_reference_to_the_last_result(executor):
    """CPython's test_free_reference (issue 14406): once the caller drops a result,
    nothing holds it, neither the iterator nor the executor while other calls of
    the map still run. (A thread that just resolved the future may hold it for
    the moment its callbacks run, as in concurrent.futures: hence the short wait.)"""
    for obj in executor.map(make_dummy, range(10)):
        wr = weakref.ref(obj)
        del obj
        deadline = time.monotonic() + 1
        while True:
            gc.collect()
            if wr() is None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        assert wr() is None


def dummy_then_held(i, release):
    """At once for item 0; the others run until the file ``release`` exists (10 s at most)."""
    deadline = time.monotonic() + 10
    while i and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return Dummy()


def test_a_dropped_result_is_not_kept_while_the_rest_of_the_map_runs(executor, tmp_path):
    """The same, while the map's other calls still run: neither the map's plan (calls
    held back, then grouped) nor its job keeps a finished call's future."""
    for n in range(2):  # (the second map of the function is launched another way: it is known now)
        release = str(tmp_path / f"release-{n}")
        results = executor.map(dummy_then_held, range(5), [release] * 5)
        obj = next(results)
        wr = weakref.ref(obj)
        del obj
        deadline = time.monotonic() + 0.5
        while wr() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.005)
        assert wr() is None
        results.close()  # (the calls not started are cancelled)
        # The running ones end now (they slept 1 s, which the next map, and the next tests on
        # this module's executor, waited out).
        open(release, "w").close()


def square_slowly(x):
    time.sleep(1)
    return x * x


def test_wait_and_as_completed_on_futures_unpickled_after_their_calls_ended(executor):
    """PyWren's SerializeFutures idea: futures that travelled (pickled) and whose
    originals are gone resolve from the store; concurrent.futures.wait never looks there."""
    from wrenpack.worker import refs

    # (calls still running when pickled: a call that already ended travels with its outcome, not
    # as a reference, and a warm worker ran `square` before pickle.dumps in a CI run)
    futs = [executor.submit(square_slowly, i) for i in range(3)]
    blob = pickle.dumps(futs)
    assert not any(f.done() for f in futs)
    assert wrenpack.get(futs, timeout=60) == [0, 1, 4]
    for f in futs:  # as in another process: no live future for these calls here
        refs._live.pop((f.job_id, f.call_id), None)
    loaded = pickle.loads(blob)
    assert all(isinstance(f, refs.CallRef) for f in loaded)
    done, not_done = wrenpack.wait(loaded, timeout=10)
    assert not not_done and sorted(f.result() for f in done) == [0, 1, 4]
    loaded = pickle.loads(blob)
    assert sorted(f.result() for f in wrenpack.as_completed(loaded, timeout=10)) == [0, 1, 4]


def test_config_errors_are_value_errors(tmp_path, executor):
    with pytest.raises(ValueError) as info:
        wrenpack.Executor(storage=str(tmp_path), concurrency=0)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ValueError) as info:
        list(executor.map(square, [1, 2], chunksize=0))
    assert isinstance(info.value, ConfigError)
    try:
        wrenpack.Executor(storage=str(tmp_path), concurrency=0)
    except ConfigError:
        pass


def test_a_hand_made_future_cancels_as_a_plain_future():
    for fut in (cf.Future(), wrenpack.WrenFuture()):
        assert fut.cancel() is True and fut.cancelled()
        assert fut.set_running_or_notify_cancel() is False  # its owner learns it was cancelled, as in a pool
        with pytest.raises(cf.CancelledError):
            fut.result(timeout=0)
    running = wrenpack.WrenFuture()
    assert running.set_running_or_notify_cancel() is True and running.cancel() is False


def test_map_reduce_future_runs_and_cannot_be_taken_back(executor):
    fut = wrenpack.map_reduce(square, [1, 2, 3], sum, executor=executor)
    assert fut.cancel() is False
    assert fut.result(timeout=120) == 14


def fails_here(x):
    raise ValueError(f"bad {x}")  # the line the remote traceback must show


def test_remote_traceback_names_the_users_file_and_line(executor):
    with pytest.raises(ValueError, match="bad 3") as info:
        executor.submit(fails_here, 3).result(timeout=60)
    tb = str(info.value.__cause__)
    line = fails_here.__code__.co_firstlineno + 1
    assert f'File "{__file__}", line {line}, in fails_here' in tb, tb
    assert "<dynamic-code>" not in tb
    assert 'raise ValueError(f"bad {x}")' in tb  # the source line: the local worker can read the file


LIBC = ctypes.CDLL(None)


def uses_libc(x):
    return LIBC.abs(x)


def test_an_unloadable_global_is_named_and_versions_are_not_blamed(executor):
    with pytest.raises(SerializationError) as info:
        executor.submit(uses_libc, -3).result(timeout=60)
    msg = _one_line(info.value)
    assert "global 'LIBC' (a ctypes.CDLL)" in msg and "create it inside the function" in msg, msg
    assert "version" not in msg


SHARED = None


def uses_shared(x):
    SHARED[x] = 1
    return len(SHARED)


def test_a_manager_proxy_global_is_named(executor, monkeypatch):
    manager = multiprocessing.Manager()
    try:
        monkeypatch.setattr(sys.modules[__name__], "SHARED", manager.dict())
        with pytest.raises(SerializationError) as info:
            executor.submit(uses_shared, 1).result(timeout=60)
    finally:
        manager.shutdown()
    msg = _one_line(info.value)
    assert "global 'SHARED'" in msg and "multiprocessing" in msg and "version" not in msg, msg


class ExitsWhenPickled:
    def __reduce__(self):
        sys.exit(3)


class ExitsWhenUnpickled:
    def __reduce__(self):
        return sys.exit, (4,)


def test_an_exit_while_pickling_or_unpickling_is_a_serialization_error(executor):
    """loky's ExitAtPickle/ExitAtUnpickle: the program goes on, and the message says where it exited."""
    with pytest.raises(SerializationError, match=r"argument 0 .*ExitsWhenPickled.*pickling it called sys.exit\(3\)") as info:
        executor.submit(id, ExitsWhenPickled())
    _one_line(info.value)
    with pytest.raises(SerializationError, match=r"arguments could not be unpickled .*called sys.exit\(4\)") as info:
        executor.submit(id, ExitsWhenUnpickled()).result(timeout=60)
    assert "the function called" not in _one_line(info.value)


def test_versions_are_blamed_only_when_they_differ():
    err = SerializationError("the function could not be unpickled in the worker (X)")
    here = ("%d.%d" % sys.version_info[:2], __import__("cloudpickle").__version__)
    err.worker_versions = here
    same = outcome_format.rebuild_exception(outcome_format.error_tuple(err, "wrenpack", ""), "f")
    assert "version" not in str(same)
    err.worker_versions = ("3.9", "2.2.1")
    other = outcome_format.rebuild_exception(outcome_format.error_tuple(err, "wrenpack", ""), "f")
    assert f"client runs Python {here[0]} with cloudpickle {here[1]} but the worker Python 3.9 with cloudpickle 2.2.1" in str(other)
    _one_line(other)


def test_submit_after_interpreter_shutdown_says_so(tmp_path):
    """CPython's test_submit_after_interpreter_shutdown: a RuntimeError that says the
    program is exiting (not "create a new Executor", which cannot help then)."""
    script = f"""if 1:
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError as exc:
                print("runtime-error:", exc)
        import wrenpack
        t = wrenpack.Executor(storage={str(tmp_path)!r}, concurrency=1)
        """
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "runtime-error: cannot schedule new calls after interpreter shutdown" in out.stdout, out.stdout


def worker_pid(x):
    return os.getpid()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_an_idle_worker_exits_about_keep_warm_after_it_went_idle(tmp_path):
    """loky's test_worker_timeout: workers leave once idle for their timeout."""
    keep_warm = 0.02
    with wrenpack.Executor(storage=str(tmp_path), concurrency=1, keep_warm=keep_warm) as ex:
        lifetimes = []
        for _ in range(3):
            pid = ex.submit(worker_pid, 0).result(timeout=60)
            idle = time.monotonic()
            while not _gone(pid) and time.monotonic() - idle < 5:
                time.sleep(0.002)
            lifetimes.append(time.monotonic() - idle)
    # (a loaded machine may delay one exit; the best of three is about keep_warm, not the dispatcher's 0.1 s sleep)
    assert min(lifetimes) < keep_warm + 0.05, lifetimes


def test_a_keep_warm_shorter_than_a_workers_start_still_hands_it_the_call(tmp_path, caplog):
    """A worker was idle from its spawn, not from when it was ready: with keep_warm under a
    worker's start-up time it was retired as soon as it was ready, before the call it was
    started for reached it, then the next one, for as long as that went on (a minute in CI)."""
    import logging

    caplog.set_level(logging.DEBUG, logger="wrenpack.backends.local")
    with wrenpack.Executor(storage=str(tmp_path), concurrency=1, keep_warm=0.001) as ex:
        t0 = time.monotonic()
        for i in range(3):
            assert ex.submit(worker_pid, i).result(timeout=60)
        took = time.monotonic() - t0
    started = [r for r in caplog.records if "started local worker" in r.getMessage()]
    assert len(started) <= 3, f"{len(started)} workers started for 3 calls in {took:.1f} s"


# -- map_reduce: its functions and options ---------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"partitions": 2}, {"fan_in": 2}], ids=["single", "shuffle", "tree"])
def test_map_reduce_of_something_not_a_function_is_a_type_error_naming_the_argument(executor, kw):
    for args, name, shown in (((3, [1], sum), "mapper", "3"), ((square, [1], None), "reducer", "None")):
        with pytest.raises(TypeError, match=rf"map_reduce\({name}={shown}\): must be a function") as info:
            wrenpack.map_reduce(*args, executor=executor, **kw)
        assert isinstance(info.value, ConfigError)
        _one_line(info.value)


@pytest.mark.parametrize("kw", [{}, {"partitions": 2}, {"fan_in": 2}], ids=["single", "shuffle", "tree"])
@pytest.mark.parametrize("option,match", [({"timeout": -1}, "timeout=-1"), ({"memory": "x"}, "memory='x'"),
                                          ({"bogus": 3}, "unknown option.*bogus")])
def test_map_reduce_bad_options_are_one_line_naming_map_reduce(executor, kw, option, match):
    """Every form says the option came from map_reduce (the shuffle forms said "from options")."""
    with pytest.raises(ConfigError, match=rf"{match}.*\(from map_reduce\)") as info:
        wrenpack.map_reduce(square, [1], sum, executor=executor, **kw, **option)
    _one_line(info.value)


@pytest.mark.parametrize("reducer", [lambda k, vs: 0, sum], ids=["reducer(key, values)", "reducer(values)"])
@pytest.mark.parametrize("typo,meant", [("partiton", "partitions"), ("partitons", "partitions"), ("fanin", "fan_in"),
                                        ("per_objects", "per_object"), ("partition_func", "partition_fn"),
                                        ("memroy", "memory")])
def test_a_misspelt_map_reduce_keyword_is_named_first_with_its_close_match(executor, reducer, typo, meant):
    """partiton=4 with a reducer(key, values) was blamed on the reducer ("is called
    reducer(values)"), never naming the typo; with a reducer(values) "known:" listed the call
    options only, not map_reduce's own keywords, and offered no close match."""
    with pytest.raises(ConfigError, match=rf"unknown option {typo} \(from map_reduce\): did you mean {meant}\? \(known: ") as info:
        wrenpack.map_reduce(square, [1], reducer, executor=executor, **{typo: 4})
    msg = _one_line(info.value)
    for name in ("partitions", "partitioned", "partition_fn", "per_object", "fan_in", "executor", "memory", "timeout"):
        assert f" {name}," in msg or f" {name})" in msg, (name, msg)
    # nothing close: no guess, the names still listed
    with pytest.raises(ConfigError, match=r"unknown option bogus \(from map_reduce\); known: .*fan_in") as info:
        wrenpack.map_reduce(square, [1], reducer, executor=executor, partitions=2, bogus=1)
    assert "did you mean" not in _one_line(info.value)


@pytest.mark.parametrize("partition_fn,shown", [(lambda k: 0, r"<lambda>\(k\)"), (lambda: 0, r"<lambda>\(\)"),
                                                (lambda k, r, s: 0, r"<lambda>\(k, r, s\)")])
def test_a_partition_fn_that_cannot_take_key_and_r_is_refused_before_launch(executor, partition_fn, shown):
    """Every mapper ran, then a bare "TypeError: <lambda>() takes 1 positional argument
    but 2 were given" came from result(); the mapper and the reducer were checked already."""
    with pytest.raises(ConfigTypeError, match=rf"the partition_fn {shown} is called partition_fn\(key, R\).*give a "
                                              "partition_fn that takes 2 arguments") as info:
        wrenpack.map_reduce(lambda x: [(x, x)], [1, 2], lambda k, vs: 0, partitions=2, partition_fn=partition_fn,
                            executor=executor)  # (no result(): refused by map_reduce itself)
    _one_line(info.value)
    out = wrenpack.map_reduce(lambda x: [(x, x)], [1, 2], lambda k, vs: sum(vs), partitions=2,
                              partition_fn=lambda k, r=0, *more: k % 2, executor=executor).result(timeout=60)
    assert out == {2: 2, 1: 1}


def test_a_partitioned_mapper_that_returns_a_dict_is_told_to_return_its_parts_in_order(executor):
    """The fix named for a dict fits the form: with partitioned=True a dict of partition -> part
    is to be returned as a list in partition order (it said to return list(d.items()), pairs)."""
    fut = wrenpack.map_reduce(lambda x: {0: [x], 1: [x]}, [1], lambda i, parts: parts, partitions=2, partitioned=True,
                              executor=executor)
    with pytest.raises(TypeError, match=r"returned dict .*; return \[d\[i\] for i in range\(2\)\]") as info:
        fut.result(timeout=60)
    assert "list(d.items())" not in str(info.value)
    _one_line(info.value)


@pytest.mark.parametrize("kw", [{}, {"partitions": 2}], ids=["single", "shuffle"])
@pytest.mark.parametrize("items,shown", [(None, "None"), (5, "5")])
def test_map_reduce_items_that_are_not_iterable_is_one_line(executor, kw, items, shown):
    """A bare "'NoneType' object is not iterable" said neither which argument nor what to pass."""
    with pytest.raises(TypeError, match=rf"map_reduce\(items={shown}\): must be an iterable") as info:
        wrenpack.map_reduce(square, items, sum, executor=executor, **kw)
    assert isinstance(info.value, ConfigError)
    _one_line(info.value)


def _yields(x):
    yield x


async def _async_square(x):
    return x * x


async def _async_yields(x):
    yield x
    yield x + 1


# what the refusal of _async_yields suggests
async def _async_yields_all(x):
    return [v async for v in _async_yields(x)]


def _async_yields_list(x):
    import asyncio

    return asyncio.run(_async_yields_all(x))


@pytest.mark.parametrize("fn,what,fix", [(_yields, "a generator function", "return list(_yields(x))"),
                                         (_async_square, "an async function", "asyncio.run(_async_square(x))"),
                                         (_async_yields, "an async generator function",
                                          "async def _async_yields_all(x): return [v async for v in _async_yields(x)] "
                                          "and def _async_yields_list(x): return asyncio.run(_async_yields_all(x))")])
def test_a_generator_or_async_function_is_refused_before_launch(executor, fn, what, fix):
    """Each call ran, then failed in the worker: "the result (a generator) could not be
    pickled" (and "coroutine ... was never awaited" on the worker's stderr)."""
    f = wrenpack.remote(fn, executor=executor)
    for launch in (lambda: f.remote(1), lambda: f.map([1, 2]), lambda: executor.submit(fn, 1)):
        with pytest.raises(ConfigTypeError, match=f"is {what}") as info:
            launch()
        assert fix in str(info.value)
        _one_line(info.value)


def test_what_the_refusal_of_an_async_generator_function_suggests_runs(executor):
    """The refusal of an async generator function suggested the generator's fix, list(agen(x)), which
    fails (an async generator is not iterable); its own fix (an async function that collects it, run by
    a plain one, as the async functions' refusal suggests) runs through wrenpack."""
    assert wrenpack.get(wrenpack.remote(_async_yields_list, executor=executor).map([1, 5])) == [[1, 2], [5, 6]]


def add_y(x, y=1):
    return x + y


def keywords_of(x, **kw):
    return sorted(kw)


def test_map_keywords_the_function_does_not_take_are_one_line_before_launch(remote):
    """``f.map(xs, **kw)`` passes its keywords to every call: a misspelt ``chunksize``
    (``chunksise=2``) went to the function and failed every call in its worker."""
    f = remote(add_y)
    for form, call in (("map", lambda: f.map([1, 2], chunksise=2)), ("starmap", lambda: f.starmap([(1,)], chunksise=2))):
        with pytest.raises(ConfigTypeError, match=rf"{form}\(\): add_y\(\) takes no keyword 'chunksise' .*did you mean "
                                                  r"chunksize=\? add_y takes: x, y") as info:
            call()
        assert "\n" not in str(info.value)
    assert wrenpack.get(f.map([1, 2], y=10)) == [11, 12]  # what it takes still goes to each call
    assert wrenpack.get(remote(keywords_of).map([1], anything=1)) == [["anything"]]  # (**kw takes any)


def _no_launch(*args, **kwargs):
    raise AssertionError("launched: the call should have been refused before launch")


def _keyword_only(x, /, y=2, *, z):
    return x + y + z


class _Unreadable:
    """A callable whose signature cannot be read (``inspect.signature`` raises)."""

    __signature__ = "not a signature"

    def __call__(self, *args, **kwargs):
        return len(args) + len(kwargs)


@pytest.mark.parametrize("launch,match", [
    (lambda f: f.remote(1, 2, 3), r"remote\(\): the call does not fit add_y\(x, y=1\): too many positional arguments; "
                               r"nothing was launched"),
    (lambda f: f.remote(), r"remote\(\): the call does not fit add_y\(x, y=1\): missing a required argument: 'x'"),
    (lambda f: f.remote(1, z=3), r"remote\(\): .*unexpected keyword argument 'z' \(add_y takes: x, y\)"),
    (lambda f: f.remote(1, yy=3), r"unexpected keyword argument 'yy' \(did you mean y=\? add_y takes: x, y\)"),
    (lambda f: f.remote(1, x=3), r"remote\(\): .*multiple values for argument 'x'"),
    (lambda f: f.remote(1, memory=2048), r"every keyword goes to the function; options go to f\.options\(memory=\.\.\.\)"),
    (lambda f: f.options(timeout=30).remote(1, 2, 3), r"remote\(\): the call does not fit add_y\(x, y=1\): too many"),
    (lambda f: f.starmap([(1,), (1, 2), (1, 2, 3), (4,)]),
     r"starmap\(\): items\[2\] does not fit add_y\(x, y=1\): too many positional arguments; nothing was launched"),
    (lambda f: f.starmap([(1,), ()]), r"starmap\(\): items\[1\] does not fit .*missing a required argument: 'x'"),
    (lambda f: f.starmap(iter([[1, 2], [3, 4, 5]])), r"starmap\(\): items\[1\] does not fit"),
    (lambda f: f.starmap([(1,), (2,)], x=1), r"starmap\(\): items\[0\] does not fit .*multiple values for argument 'x'"),
    (lambda f: f.map([1, 2], x=1), r"map\(\): items\[0\] does not fit .*multiple values for argument 'x'"),
])
def test_remote_and_starmap_arguments_the_function_cannot_take_are_refused_before_launch(remote, monkeypatch, launch,
                                                                                         match):
    """``f.remote(1, 2, 3)``, ``f.remote()``, ``f.remote(1, z=3)`` and ``f.starmap([(1, 2, 3)])``
    launched, and each call failed in its worker with TypeError, where ``f.map([1], z=3)``
    and ``f.spawn(1, 2, 3)`` were refused before launch: now one line each, and a bad
    starmap item (named by its index) launches none of the others."""
    f = remote(add_y)
    monkeypatch.setattr("wrenpack.remote_function.launch_calls", _no_launch)
    with pytest.raises(ConfigTypeError, match=match) as info:
        launch(f)
    assert isinstance(info.value, TypeError)  # (as the call itself would have raised)
    _one_line(info.value)


def test_map_of_a_function_that_cannot_take_one_item_is_refused_before_launch(remote, monkeypatch):
    """``f.map(xs)`` calls ``f(item)``: a function of two arguments (or a required
    keyword) failed every call in its worker."""
    monkeypatch.setattr("wrenpack.remote_function.launch_calls", _no_launch)
    with pytest.raises(ConfigTypeError, match=r"map\(\): items\[0\] does not fit _keyword_only\(x, /, y=2, \*, z\): "
                                              r"missing a required argument: 'z' \(map\(\) calls it as fn\(item, "
                                              r"\*\*keywords\) for each item; for tuples of arguments use starmap\(\)\)") as info:
        remote(_keyword_only).map([1, 2])
    _one_line(info.value)
    with pytest.raises(ConfigTypeError, match=r"map\(\): items\[0\] does not fit .*missing a required argument: 'y'"):
        remote(lambda x, y: x + y).map(range(3))


def test_calls_that_fit_still_run_and_unreadable_signatures_are_not_checked(remote, executor):
    """What the function takes still launches (by position, by keyword, its own
    defaults); a function whose signature cannot be read (a builtin, a callable with
    a broken ``__signature__``) or that takes ``*args``/``**kwargs`` is left to its calls."""
    f = remote(add_y)
    assert f.remote(1).result(timeout=60) == 2
    assert f.remote(x=1, y=5).result(timeout=60) == 6
    assert f.options(timeout=30).remote(2, 3).result(timeout=60) == 5
    assert wrenpack.get(f.starmap([(1,), (1, 2)])) == [2, 3]
    assert remote(_keyword_only).remote(1, z=3).result(timeout=60) == 6
    assert remote(keywords_of).remote(1, a=1, b=2).result(timeout=60) == ["a", "b"]
    assert remote(max).remote(3, 9, 4).result(timeout=60) == 9  # (no signature: not checked)
    assert wrenpack.get(remote(divmod).starmap([(7, 2), (9, 4)])) == [(3, 1), (2, 1)]
    assert remote(_Unreadable()).remote(1, 2, k=3).result(timeout=60) == 3
    with pytest.raises(TypeError):  # (not checked: its own error, from the call)
        remote(max).remote().result(timeout=60)
    # Executor.submit and Executor.map stay as concurrent.futures has them: the error is the future's
    fut = executor.submit(add_y, 1, 2, 3)
    with pytest.raises(TypeError, match="positional argument"):
        fut.result(timeout=60)


def test_the_quick_test_of_a_call_never_passes_what_bind_refuses():
    """``Shape.fits`` (the warm path's test, no ``bind``) may only say yes where
    ``Signature.bind`` does; where it says no, ``bind`` decides."""
    import functools
    import inspect
    import itertools

    from wrenpack.executor.arguments import Shape

    def kinds(a, b, /, c, d=1, *args, e, f=2, **kw):
        pass

    def plain(a, b=1, *, c):
        pass

    names = ["a", "b", "c", "d", "e", "f", "kw", "args", "z"]
    for fn in (add_y, square, _keyword_only, keywords_of, kinds, plain, lambda: 0, lambda *a: 0,
               functools.partial(add_y, y=3), functools.partial(kinds, 1), divmod):
        signature = inspect.signature(fn, follow_wrapped=False)
        shape = Shape(fn, signature)
        for n, k in itertools.product(range(5), range(3)):
            for keywords in itertools.combinations(names + ["x", "y"], k):
                args, kwargs = tuple(range(n)), dict.fromkeys(keywords, 0)
                try:
                    signature.bind(*args, **kwargs)
                    fits = True
                except TypeError:
                    fits = False
                assert fits or not shape.fits(args, kwargs), (fn, args, kwargs)
                assert (shape.why_not(args, kwargs) is None) == fits, (fn, args, kwargs)


@pytest.mark.parametrize("value, said", [
    ("rel-cache", "is a relative path"),
    (" {tmp}/cache", "has spaces around it"),
    ("{tmp}/cache ", "has spaces around it"),  # (probe9: a folder named with its trailing space was made)
], ids=["relative", "leading-space", "trailing-space"])
def test_a_relative_cache_directory_is_refused_in_one_line_and_nothing_is_made(value, said, tmp_path):
    # probe8: a relative WRENPACK_CACHE_DIR (or ' /abs', a quoting slip) was used against each
    # process's working directory, so a CLI run from elsewhere had another owner key and cache
    value = value.format(tmp=tmp_path)
    out = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", "six", "-o", str(tmp_path / "rt")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=dict(os.environ, WRENPACK_CACHE_DIR=value))
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, lines
    assert f"WRENPACK_CACHE_DIR={value!r} {said}" in lines[0], lines
    assert f"WRENPACK_CACHE_DIR={os.path.join(str(tmp_path), value.strip())}" in lines[0], lines  # (the fix, absolute)
    assert not os.path.exists(f"{tmp_path}/cache ") and not os.path.exists(f"{tmp_path}/cache")
    assert sorted(os.listdir(tmp_path)) == [], "nothing is made in the working directory"


def test_a_spaced_cache_directory_under_home_is_suggested_under_home(monkeypatch, tmp_path):
    # probe9: ' ~/x' was refused with the fix "<cwd>/~/x"
    from wrenpack.config import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WRENPACK_CACHE_DIR", " ~/x")
    with pytest.raises(ConfigError, match=f"remove them: WRENPACK_CACHE_DIR={tmp_path}/x$"):
        cache_dir()


def test_a_relative_xdg_cache_home_is_ignored_as_the_xdg_spec_says(monkeypatch, tmp_path):
    # probe9: XDG_CACHE_HOME=relxdg put the owner key in ./relxdg/wrenpack of each working directory
    from wrenpack.config import cache_dir
    from wrenpack.executor.owner import key_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WRENPACK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relxdg")
    assert cache_dir() == str(tmp_path / ".cache" / "wrenpack")
    assert key_path() == str(tmp_path / ".cache" / "wrenpack" / "owner.key")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "wrenpack")


def test_the_cache_folder_rule_refuses_a_relative_directory(monkeypatch):
    from wrenpack.config import cache_dir

    monkeypatch.setenv("WRENPACK_CACHE_DIR", "cache")
    with pytest.raises(ConfigError, match=r"WRENPACK_CACHE_DIR='cache' is a relative path.*use an absolute path, e.g. WRENPACK_CACHE_DIR=/"):
        cache_dir()
