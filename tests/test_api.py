"""The client API on the local backend: remote, map, starmap, get, wait, futures."""
from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

import wrenpack


def square(x, scale=1):
    return x * x * scale


def test_remote_and_get(remote):
    f = remote(square)
    fut = f.remote(3, scale=2)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 18
    assert fut.status["exit"] == "ok"
    assert fut.status["peak_rss_mb"] > 0


def test_map_in_order_with_kwargs(remote):
    f = remote(square)
    futs = f.map(range(50), scale=3)
    assert wrenpack.get(futs) == [x * x * 3 for x in range(50)]


def test_starmap(remote):
    f = remote(square)
    assert wrenpack.get(f.starmap([(1, 2), (3, 4), (5,)])) == [2, 36, 25]


def test_single_future_get(remote):
    assert wrenpack.get(remote(square).remote(7)) == 49


def test_local_and_plain_calls_do_not_launch(remote):
    f = remote(square)
    assert f(4) == 16
    assert f.local(4, scale=2) == 32


def test_concurrent_futures_wait_and_as_completed(remote):
    def nap(x):
        time.sleep(0.05 * (x % 3))
        return x

    f = remote(nap)
    futs = f.map(range(12))
    done, not_done = cf.wait(futs, timeout=30)
    assert not not_done and len(done) == 12
    futs = f.map(range(6))
    assert sorted(fut.result() for fut in cf.as_completed(futs, timeout=30)) == list(range(6))


def test_wrenpack_wait_first_completed_and_timeout(remote):
    def nap(s):
        time.sleep(s)
        return s

    f = remote(nap)
    futs = f.map([0.0, 0.5])
    done, pending = wrenpack.wait(futs, timeout=20, return_when=wrenpack.FIRST_COMPLETED)
    assert futs[0] in done
    done, pending = wrenpack.wait(futs, timeout=0.01)
    with pytest.raises(cf.TimeoutError):
        wrenpack.get(f.map([0.3]), timeout=0.05)  # (six times the timeout: it cannot end within it)
    wrenpack.get(futs)


def test_user_exception_keeps_type_and_remote_traceback(remote):
    class Oops(ValueError):
        pass

    def fails(x):
        if x == 2:
            raise Oops(f"bad item {x}")
        return x

    futs = remote(fails).map(range(4))
    assert futs[0].result() == 0 and futs[3].result() == 3  # the others survive
    with pytest.raises(ValueError, match="bad item 2") as info:
        futs[2].result()
    assert type(info.value).__name__ == "Oops"
    cause = info.value.__cause__
    assert cause is not None and "Remote traceback" in str(cause)
    assert "fails" in str(cause) and "Oops" in str(cause)


def test_exception_whose_type_cannot_be_rebuilt(remote):
    def raise_unpicklable(x):
        import threading

        class Weird(Exception):
            def __init__(self):
                super().__init__("weird happened")
                self.lock = threading.Lock()

        raise Weird()

    with pytest.raises(wrenpack.RemoteError, match="Weird: weird happened"):
        remote(raise_unpicklable).remote(1).result()


class TwoPartError(Exception):
    """An exception whose __init__ takes other arguments than it passes up."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def test_exception_whose_init_takes_other_arguments_keeps_its_type(remote):
    """It pickles as TwoPartError(message), which fails to load (code missing): it came back
    as RemoteError "could not be rebuilt". It now travels as its type, args and attributes."""
    def raises_two_part(x):
        raise TwoPartError("two parts", code=7)

    with pytest.raises(TwoPartError, match="two parts") as info:
        remote(raises_two_part).remote(1).result(timeout=120)
    assert info.value.code == 7 and "raises_two_part" in str(info.value.__cause__)


def test_map_reduce(remote, executor):
    fut = wrenpack.map_reduce(square, range(10), sum, executor=executor)
    assert fut.result(timeout=60) == sum(x * x for x in range(10))


def test_map_reduce_propagates_mapper_failure(executor):
    def bad(x):
        raise KeyError(x)

    fut = wrenpack.map_reduce(bad, [1], sum, executor=executor)
    with pytest.raises(KeyError):
        fut.result(timeout=60)


def test_thousand_call_map(remote):
    f = remote(square)
    t0 = time.perf_counter()
    results = wrenpack.get(f.map(range(1000)))
    elapsed = time.perf_counter() - t0
    assert results == [x * x for x in range(1000)]
    assert elapsed < 30


def test_options_copy(remote):
    f = remote(square, memory=256)
    g = f.options(memory=512, timeout=10)
    assert g._options["memory"] == 512 and f._options["memory"] == 256
    assert g.remote(2).result() == 4


def test_bad_options_fail_before_launch(remote):
    with pytest.raises(wrenpack.ConfigError, match=r"memory=64 MB \(from @wrenpack.remote\) is outside Lambda's range"):
        remote(square, memory=64).remote(1)
    with pytest.raises(wrenpack.ConfigError, match="timeout=901"):
        remote(square, timeout=901).remote(1)
    with pytest.raises(wrenpack.ConfigError, match="unknown option"):
        wrenpack.remote(square, memroy=128)


def test_large_arguments_travel_through_the_store(remote, executor):
    blob = b"x" * (executor.config.inline_limit * 4)
    assert remote(len).remote(blob).result() == len(blob)


def test_results_objects_are_removed_after_reading(remote, executor):
    futs = remote(square).map(range(5))
    wrenpack.get(futs)
    deadline = time.time() + 5
    while time.time() < deadline and executor.store.list(f"jobs/{futs[0].job_id}/"):
        time.sleep(0.05)
    assert executor.store.list(f"jobs/{futs[0].job_id}/") == []


def test_map_with_chunksize_keeps_one_future_per_item(remote):
    def maybe_fail(x):
        if x == 5:
            raise ArithmeticError("five")
        return -x

    futs = remote(maybe_fail).map(range(11), chunksize=4)
    assert len(futs) == 11
    assert [f.result() for f in futs if f is not futs[5]] == [-x for x in range(11) if x != 5]
    with pytest.raises(ArithmeticError, match="five") as info:
        futs[5].result()
    assert "Remote traceback" in str(info.value.__cause__)
    assert len({f.status["call_id"] for f in futs}) == 3  # three invocations
    with pytest.raises(wrenpack.ConfigError, match="chunksize"):
        remote(maybe_fail).map(range(3), chunksize=0)


@wrenpack.remote
def helper_remote(x):
    return x + 100


def test_remote_function_can_call_another_decorated_function(remote):
    def outer(x):
        return helper_remote(x) * 2

    assert remote(outer).remote(1).result() == 202


class BadStrError(Exception):
    """An exception whose __str__ raises."""

    def __str__(self):
        raise RuntimeError("str fails")


def test_an_exception_whose_str_raises_is_reraised_not_a_crash(remote, tmp_path):
    """Formatting its message in the worker raised again: the call's process died without
    a reply, "worker died (exit code 0)", the call ran again and came back WorkerCrashed
    ("look for a crash in native code"). It is re-raised as ProcessPoolExecutor does, its
    message read only when asked; the function ran once."""
    runs = tmp_path / "runs"

    def raises_bad_str(_):
        with open(runs, "a") as fh:
            fh.write("ran\n")
        raise BadStrError()

    with pytest.raises(BadStrError) as info:
        remote(raises_bad_str, retries=1).remote(0).result(timeout=120)
    assert runs.read_text().count("ran") == 1
    assert "raises_bad_str" in str(info.value.__cause__)


def test_an_unpicklable_exception_whose_str_raises_is_a_remote_error_naming_it(remote):
    def raises_weird_bad_str(_):
        import threading

        class WeirdBadStr(Exception):
            def __init__(self):
                super().__init__()
                self.lock = threading.Lock()

            def __str__(self):
                raise RuntimeError("str fails")

        raise WeirdBadStr()

    with pytest.raises(wrenpack.RemoteError, match=r"WeirdBadStr: <WeirdBadStr.__str__ raised RuntimeError>"):
        remote(raises_weird_bad_str).remote(0).result(timeout=120)


def test_an_exception_whose_str_raises_in_a_group_of_calls(remote):
    def bad_on_one(x):
        if x == 1:
            raise BadStrError()
        return x

    futs = remote(bad_on_one).map(range(3), chunksize=3)
    assert futs[0].result(timeout=120) == 0 and futs[2].result(timeout=120) == 2
    assert isinstance(futs[1].exception(timeout=120), BadStrError)


def test_a_fault_while_the_outcome_is_made_fails_the_call_not_the_worker(remote, tmp_path):
    """Any exception out of the worker's error path ended the call's process without a
    reply: retried as a crash. The call now fails with a WrenpackError naming it."""
    runs = tmp_path / "runs"

    def breaks_the_error_path(_):
        from wrenpack.worker import handler

        real = handler.error_tuple

        def once(*args, **kwargs):
            handler.error_tuple = real  # (the worker's next calls are not affected)
            raise RuntimeError("the error path failed")

        handler.error_tuple = once
        with open(runs, "a") as fh:
            fh.write("ran\n")
        raise ValueError("theirs")

    with pytest.raises(wrenpack.WrenpackError, match=r"its outcome could not be made \(RuntimeError: the error path failed\)"):
        remote(breaks_the_error_path, retries=1).remote(0).result(timeout=120)
    assert runs.read_text().count("ran") == 1


def test_retry_on_an_exception_whose_str_raises(remote, tmp_path):
    """The driver's note of the retried error formatted it: the retry failed with the RuntimeError of its __str__."""
    runs = tmp_path / "runs"

    def raises_bad_str(_):
        with open(runs, "a") as fh:
            fh.write("ran\n")
        raise BadStrError()

    with pytest.raises(BadStrError):
        remote(raises_bad_str, retries=1, retry_on=(BadStrError,)).remote(0).result(timeout=120)
    assert runs.read_text().count("ran") == 2


class _PicklesBadly:
    def __reduce__(self):
        raise BadStrError()


class _UnpicklesBadly:
    def __init__(self):
        self.state = 1

    def __setstate__(self, state):
        raise BadStrError()


def test_a_result_or_argument_whose_pickling_raises_such_an_exception_is_named(remote):
    with pytest.raises(wrenpack.SerializationError, match=r"could not be pickled: <BadStrError.__str__ raised"):
        remote(lambda _: _PicklesBadly()).remote(0).result(timeout=120)
    with pytest.raises(wrenpack.SerializationError, match=r"could not be unpickled in the worker \(BadStrError: <BadStrError"):
        remote(lambda x: 1).remote(_UnpicklesBadly()).result(timeout=120)


def test_sys_exit_in_the_function_does_not_exit_the_caller(remote):
    import sys

    def quits(_):
        sys.exit(3)

    with pytest.raises(wrenpack.RemoteError, match=r"sys.exit\(3\)"):
        remote(quits).remote(0).result()


def test_keyboard_interrupt_in_the_function_is_its_error_not_a_crash(remote):
    """It killed the job's process and came back as WorkerCrashed ("died (exit code 0) ...
    look for a crash in native code"), retried as a crash; re-raised as is, it would
    read as the caller's own ^C. It is the call's error, as sys.exit() is."""
    def interrupted(_):
        raise KeyboardInterrupt

    f = remote(interrupted)
    with pytest.raises(wrenpack.RemoteError, match="raised KeyboardInterrupt"):
        f.remote(0).result(timeout=120)
    assert f.remote(1).exception(timeout=120) is not None  # (the worker serves on)


def test_chunksize_auto_groups_short_calls_from_the_profile(remote, executor, tmp_path, monkeypatch):
    from wrenpack.profiler import store
    from wrenpack.profiler.codehash import code_hash

    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))

    def tiny(x):
        return x * 2

    f = remote(tiny)
    futs = f.map(range(40), chunksize="auto")  # no profile yet: one call per invocation
    wrenpack.get(futs)
    assert len({fut.status["call_id"] for fut in futs}) == 40
    store.save({"code_hash": code_hash(tiny), "duration_s": 0.01, "recommended": {"memory_mb": 128}})
    futs = f.map(range(40), chunksize="auto")
    assert wrenpack.get(futs) == [x * 2 for x in range(40)]
    assert len({fut.status["call_id"] for fut in futs}) == 2  # 40 calls / 2 workers, each ~0.2 s


def test_the_status_of_a_call_whose_process_died_says_how_it_ended(remote):
    """With no record from the worker its status had only attempt, memory_mb and timeout_s:
    fut.status["exit"] was a KeyError, and the job report could not place the call."""
    import os
    import signal

    def dies(_):
        os.kill(os.getpid(), signal.SIGKILL)

    fut = remote(dies, retries=0).remote(0)
    assert isinstance(fut.exception(timeout=120), wrenpack.WorkerCrashed)
    assert fut.status["exit"] == "error" and fut.status["error"] == "WorkerCrashed", fut.status
