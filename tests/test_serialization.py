"""What crosses to the worker, and the errors when it cannot."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import cloudpickle
import pytest

import wrenpack
from wrenpack import serialize


def test_unpicklable_argument_fails_before_launch(remote, executor):
    before = executor.store.list("jobs/")
    with pytest.raises(wrenpack.SerializationError, match=r"argument 0 of call 1 of .* \(a _thread.lock\)"):
        remote(len).map([[1], threading.Lock()])
    assert executor.store.list("jobs/") == before


def test_unpicklable_closure_names_the_variable(remote):
    lock = threading.RLock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(wrenpack.SerializationError, match="closure variable 'lock'"):
        remote(uses_lock).remote(1)


def test_unpicklable_keyword_argument(remote):
    with pytest.raises(wrenpack.SerializationError, match="keyword argument 'key'"):
        remote(sorted).remote([3, 1], key=threading.Lock())


def test_nested_unpicklable_object_is_named(remote):
    class Holder:
        def __init__(self):
            self.inner = {"ok": 1, "bad": threading.Lock()}

    with pytest.raises(wrenpack.SerializationError, match="value 'bad' of attribute 'inner'"):
        remote(id).remote(Holder())


def test_user_module_travels_by_value(tmp_path, monkeypatch):
    mod_dir = tmp_path / "proj"
    mod_dir.mkdir()
    (mod_dir / "mymod_wp.py").write_text(textwrap.dedent("""
        FACTOR = 7
        def helper(x):
            return x * FACTOR
        def fn(x):
            return helper(x) + 1
    """))
    monkeypatch.syspath_prepend(str(mod_dir))
    import mymod_wp

    assert serialize.is_user_module(mymod_wp)
    data = serialize.dumps_function(mymod_wp.fn)
    # A fresh interpreter that cannot import mymod_wp still runs the function.
    code = "import sys, cloudpickle; fn = cloudpickle.loads(sys.stdin.buffer.read()); print(fn(6))"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd="/", check=True)
    assert out.stdout.decode().strip() == "43"


def test_installed_modules_stay_by_reference():
    import json

    assert not serialize.is_user_module(json)
    assert not serialize.is_user_module(cloudpickle)
    assert len(serialize.dumps_function(json.dumps)) < 200


def test_function_pickled_once_per_map(remote, executor, monkeypatch):
    calls = []
    real = serialize.dumps_function

    def counting(fn, *args):
        calls.append(fn)
        return real(fn, *args)

    monkeypatch.setattr(serialize, "dumps_function", counting)
    wrenpack.get(remote(abs).map(range(-5, 5)))
    assert len(calls) == 1


def test_oversized_payload_fails_before_launch(remote):
    big = b"x" * (200 * 1024 * 1024)
    with pytest.raises(wrenpack.PayloadTooLarge, match="more than its memory=128 MB"):
        remote(len, memory=128).remote(big)


def test_user_modules_of_looks_inside_a_batch(tmp_path, monkeypatch):
    """chunksize > 1 sends Batch(fn): the user module of fn must still travel by value."""
    from wrenpack.worker.batch import Batch

    (tmp_path / "wp_batch_usermod.py").write_text("def inc(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_batch_usermod

    assert {m.__name__ for m in serialize.user_modules_of(Batch(wp_batch_usermod.inc))} == {"wp_batch_usermod"}


class _ExitsWhilePickled:
    """Pickling it lets a pending signal's handler run (as a SIGTERM that comes mid-pickle does)."""

    def __reduce__(self):
        import _thread
        import signal

        _thread.interrupt_main(signal.SIGUSR1)
        len([])  # (a call: the handler runs here)
        return (int, (0,))


class _CallsExitWhilePickled:
    def __reduce__(self):
        sys.exit(3)


def test_a_signal_handlers_exit_while_arguments_are_pickled_ends_the_program(remote):
    """A program's SIGTERM handler raising SystemExit while a map pickled its arguments was
    taken for the argument's own fault ("cannot send the arguments of call 0 of f: pickling
    it called sys.exit(143)"): the program went on. A __reduce__ that calls sys.exit is still
    the argument's fault, in one line."""
    import signal

    def on_term(signum, frame):
        raise SystemExit(143)

    f = remote(str)
    old = signal.signal(signal.SIGUSR1, on_term)
    try:
        with pytest.raises(SystemExit) as info:
            f.map([1, _ExitsWhilePickled()])
        assert info.value.code == 143
    finally:
        signal.signal(signal.SIGUSR1, old)
    with pytest.raises(wrenpack.SerializationError, match=r"called sys.exit\(3\)"):
        f.map([1, _CallsExitWhilePickled()])
