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


def test_needs_of_is_walked_again_when_what_it_read_changes(tmp_path, monkeypatch):
    """The walk is kept per function, and checked by identity against every read it made:
    a global rebound to a function that reaches another user module is found."""
    (tmp_path / "wp_needs_a.py").write_text("def fa(x):\n    return x\n")
    (tmp_path / "wp_needs_b.py").write_text("def fb(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_needs_a
    import wp_needs_b

    ns: dict = {}
    exec("def helper(x):\n    return A.fa(x)\ndef fn(x):\n    return helper(x)\n", ns)
    ns["A"] = wp_needs_a
    fn = ns["fn"]
    assert {m.__name__ for m in serialize.user_modules_of(fn)} == {"wp_needs_a"}
    assert serialize.needs_of(fn) is serialize.needs_of(fn)  # (kept)
    exec("def helper(x):\n    return B.fb(x)\n", ns)
    ns["B"] = wp_needs_b
    assert {m.__name__ for m in serialize.user_modules_of(fn)} == {"wp_needs_b"}


def test_imported_user_modules_are_shipped_without_replacing_a_real_one(tmp_path, monkeypatch):
    (tmp_path / "wp_ship_helper.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_ship_helper

    ns = {"__name__": "__main__"}
    exec("def fn(x):\n    import wp_ship_helper as h\n    return h.twice(x)\n", ns)
    needs = serialize.needs_of(ns["fn"])
    assert needs.imported == ("wp_ship_helper",) and wp_ship_helper in needs.modules
    data = serialize.dumps_function(ns["fn"])
    # Where it is importable (the driver), the real module stays.
    assert cloudpickle.loads(data)(4) == 8 and sys.modules["wp_ship_helper"] is wp_ship_helper
    # Where it is not, the shipped copy answers the import.
    code = "import sys, cloudpickle; fn = cloudpickle.loads(sys.stdin.buffer.read()); print(fn(6))"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd="/", check=True)
    assert out.stdout.decode().strip() == "12"


def test_arguments_of_a_user_class_are_walked_once_per_class(tmp_path, monkeypatch):
    (tmp_path / "wp_arg_dep.py").write_text("def g(x):\n    return x + 1\n")
    (tmp_path / "wp_arg_cls.py").write_text(
        "import wp_arg_dep\nclass M:\n    def run(self, x):\n        return wp_arg_dep.g(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_arg_cls

    walked = []
    real = serialize._walk
    monkeypatch.setattr(serialize, "_walk", lambda roots: walked.append(roots) or real(roots))
    for _ in range(3):
        needs = serialize.needs_of_args(([wp_arg_cls.M()], 1), {"m": wp_arg_cls.M()})
        assert {m.__name__ for m in needs.modules} == {"wp_arg_cls", "wp_arg_dep"}
    assert walked == [[wp_arg_cls.M]]
    data = serialize.dumps_call((wp_arg_cls.M(),), {}, "call 0 of f")
    code = "import sys, cloudpickle; (m,), _ = cloudpickle.loads(sys.stdin.buffer.read()); print(m.run(1))"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd="/", check=True)
    assert out.stdout.decode().strip() == "2"


def test_the_walk_skips_an_object_it_cannot_look_into(tmp_path, monkeypatch):
    """A proxy whose attributes raise (a request-local object, a lazy loader) is not
    followed: the launch does not fail for the walk's sake."""
    (tmp_path / "wp_walk_dep.py").write_text("def g(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_walk_dep

    class Proxy:
        def __getattribute__(self, name):
            raise RuntimeError("working outside of a request")

        def __call__(self):
            return None

    ns = {"P": Proxy(), "D": wp_walk_dep}
    exec("def fn(x):\n    return P, D.g(x)\n", ns)
    assert {m.__name__ for m in serialize.user_modules_of(ns["fn"])} == {"wp_walk_dep"}


def test_the_walk_kept_per_function_does_not_keep_it_alive():
    import gc
    import weakref

    def make():
        table = bytearray(1 << 20)

        def rec(n):
            return len(table) if n <= 0 else rec(n - 1)  # (itself in a cell)

        return rec

    fn = make()
    assert serialize.needs_of(fn) is serialize.needs_of(fn)
    ref = weakref.ref(fn)
    del fn
    gc.collect()
    assert ref() is None


def test_a_function_gone_while_the_walk_cache_is_locked_is_dropped_later():
    """Its weak reference's callback runs where the function dies, here inside the
    cache's lock: it notes the entry (no deadlock), and the next walk kept drops it."""
    import gc

    def make():
        def f(x):
            return x

        return f

    fn = make()
    serialize.needs_of(fn)
    key = id(fn)
    with serialize._needs_lock:
        del fn
        gc.collect()
        assert key in serialize._needs
    serialize.needs_of(make())
    assert serialize._needs.get(key) is None or serialize._needs[key][0]() is not None


def test_an_unpicklable_global_of_a_user_module_sent_whole_is_named(tmp_path, monkeypatch):
    """A user module reached through another one's namespace travels by value, whole (a
    worker cannot import it); one holding a lock fails at launch, on every backend alike,
    naming the global, where before it went by name and failed only where the module is missing."""
    (tmp_path / "wp_lockpkg").mkdir()
    (tmp_path / "wp_lockpkg" / "__init__.py").write_text("import threading\n_lock = threading.Lock()\ndef g(x):\n    return x\n")
    (tmp_path / "wp_lock_two.py").write_text("import wp_lockpkg\ndef outer(x):\n    return wp_lockpkg.g(x)\n")
    (tmp_path / "wp_lock_three.py").write_text("import wp_lock_two\ndef third(x):\n    return wp_lock_two.outer(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wp_lock_three

    with pytest.raises(wrenpack.SerializationError, match=r"global '_lock' of global 'wp_lockpkg' of your module "
                       r"'wp_lock_two' used by function 'third' \(a _thread.lock\).*create such an object when"):
        serialize.dumps_function(wp_lock_three.third)
