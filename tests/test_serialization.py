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


# A project of several modules, not installed: what a function reaches through it must reach a
# worker that lacks the project (a Lambda's sys.path has none of it). Each pickle is loaded in a
# fresh `python -I` whose sys.path has wrenpack's checkout but not the project.
_REPO = str(__import__("pathlib").Path(wrenpack.__file__).resolve().parent.parent)
_MULTI = {
    "wpmm_helpers.py": "def twice(x):\n    return 2 * x\n",
    "wpmm_inside.py": "def f(x):\n    import wpmm_helpers\n    return wpmm_helpers.twice(x)\n",
    "wpmm_pkg/__init__.py": "",
    "wpmm_pkg/sub.py": "from . import other\ndef g(x):\n    return other.h(x) + 1\n"
                       "def g_rel(x):\n    from .other import h\n    return h(x) + 2\n",
    "wpmm_pkg/other.py": "def h(x):\n    return x * 100\n",
    "wpmm_from.py": "def f(x):\n    from wpmm_pkg.sub import g\n    return g(x)\n",
    "wpmm_lazy.py": "def f(x):\n    import wpmm_never_loaded\n    return wpmm_never_loaded.K + x\n",
    "wpmm_never_loaded.py": "K = 1000\n",
    "wpmm_a.py": "from wpmm_b import hb\ndef ga(x):\n    return hb(x)\n",
    "wpmm_b.py": "from wpmm_c import hc\ndef hb(x):\n    return hc(x)\n",
    "wpmm_c.py": "from wpmm_d import hd\ndef hc(x):\n    return hd(x)\n",
    "wpmm_d.py": "import wpmm_e\ndef hd(x):\n    return wpmm_e.he(x)\n",
    "wpmm_e.py": "def he(x):\n    return x + 5\n",
    "wpmm_deep.py": "from wpmm_a import ga\ndef f(x):\n    return ga(x)\n",
    "wpmm_mid.py": "import wpmm_pkg.sub\ndef outer(x):\n    return wpmm_pkg.sub.g(x)\n",
    "wpmm_attr.py": "import wpmm_mid\ndef f(x):\n    return wpmm_mid.outer(x)\n",
    "wpmm_ns/inner.py": "def k(x):\n    return x + 7\n",  # (a namespace package: no __init__.py)
    "wpmm_nsuse.py": "def f(x):\n    import wpmm_ns.inner\n    return wpmm_ns.inner.k(x)\n",
    "wpmm_installed.py": "import csv\ndef f(x):\n    import json\n    import cloudpickle\n    import wrenpack.keys\n"
                         "    from email import message\n    return json.dumps(x)\n",
    "wpmm_models.py": "import wpmm_helpers\nclass Model:\n    def __init__(self, k):\n        self.k = k\n"
                      "    def predict(self, x):\n        return wpmm_helpers.twice(x) * self.k\n",
}


@pytest.fixture
def multi(tmp_path, monkeypatch):
    """The project above, importable here (its modules imported only when a test imports them)."""
    import importlib

    for rel, text in _MULTI.items():
        path = tmp_path / "proj" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    importlib.invalidate_caches()
    yield importlib.import_module
    for name in [n for n in sys.modules if n.startswith("wpmm_")]:
        del sys.modules[name]


def _run_elsewhere(data: bytes, then: str = "print(obj(1))") -> str:
    """Load ``data`` in a fresh interpreter that lacks the project, run ``then`` on it: its output."""
    code = f"import sys; sys.path.insert(0, {_REPO!r}); import cloudpickle; obj = cloudpickle.loads(sys.stdin.buffer.read()); {then}"
    out = subprocess.run([sys.executable, "-I", "-c", code], input=data, capture_output=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out.stdout.decode().strip()


def test_a_module_imported_in_the_functions_body_travels(multi):
    """`import helpers` inside the function: the name is in co_names but not in its globals,
    so the module stayed behind and the import failed on the worker."""
    assert _run_elsewhere(serialize.dumps_function(multi("wpmm_inside").f)) == "2"


def test_a_from_import_of_a_package_submodule_in_the_body_travels_with_its_relative_imports(multi):
    assert _run_elsewhere(serialize.dumps_function(multi("wpmm_from").f)) == "101"
    assert _run_elsewhere(serialize.dumps_function(multi("wpmm_pkg.sub").g_rel)) == "102"


def test_a_module_of_a_namespace_package_imported_in_the_body_travels(multi):
    multi("wpmm_ns.inner")
    assert _run_elsewhere(serialize.dumps_function(multi("wpmm_nsuse").f)) == "8"


def test_a_module_imported_only_inside_a_call_and_not_loaded_here_travels(multi):
    """The body's module was never imported in the driver: found by its file, not run here."""
    fn = multi("wpmm_lazy").f
    assert "wpmm_never_loaded" not in sys.modules
    data = serialize.dumps_function(fn)
    assert "wpmm_never_loaded" not in sys.modules
    assert _run_elsewhere(data) == "1001"


def test_a_chain_of_modules_deeper_than_three_travels(multi):
    """fn -> a.ga -> b.hb -> c.hc -> d.hd -> module e: the walk stopped at depth 3."""
    assert _run_elsewhere(serialize.dumps_function(multi("wpmm_deep").f)) == "6"


def test_a_module_used_only_by_a_module_that_travels_travels_too(multi):
    """f names module wpmm_mid (by value), whose outer uses the package wpmm_pkg: by reference before."""
    fn = multi("wpmm_attr").f
    assert {"wpmm_attr", "wpmm_mid", "wpmm_pkg"} <= {m.__name__ for m in serialize.user_modules_of(fn)}
    assert _run_elsewhere(serialize.dumps_function(fn)) == "101"


def test_a_module_a_notebooks_class_uses_in_a_method_travels(multi):
    """A class defined in __main__ (a notebook's cell) travels by value with its methods; the
    user module a method names was not looked for (the walk saw only the class's bases)."""
    multi("wpmm_helpers")
    ns = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import wpmm_helpers
        class Doubler:
            def run(self, x):
                return wpmm_helpers.twice(x)
        def f(x):
            return Doubler().run(x)
    """), ns)
    assert "wpmm_helpers" in {m.__name__ for m in serialize.user_modules_of(ns["f"])}
    assert _run_elsewhere(serialize.dumps_function(ns["f"])) == "2"


def test_an_argument_whose_class_is_in_a_module_the_function_does_not_reach_travels(multi):
    """f.remote(Model(3)) with a function that knows nothing of Model's module: the class went by reference."""
    model = multi("wpmm_models").Model(3)
    data = serialize.dumps_call((model,), {}, "call 0 of len", serialize.user_modules_of(len))
    assert _run_elsewhere(data, "print(obj[0][0].predict(5))") == "30"
    assert "wpmm_models" not in cloudpickle.list_registry_pickle_by_value()  # (only while it pickled)


def test_installed_and_wrenpack_modules_are_never_shipped(multi):
    fn = multi("wpmm_installed").f
    assert serialize.shipped_sources(fn) == ()
    assert {m.__name__ for m in serialize.user_modules_of(fn)} == {"wpmm_installed"}
    assert _run_elsewhere(serialize.dumps_function(fn)) == "1"


def test_a_warm_worker_imports_the_source_a_later_job_sent():
    """A worker that served another version of a shipped module imports the new one."""
    from wrenpack.worker import shipped

    try:
        shipped.install((("wpmm_shipped_only", "/nowhere/wpmm_shipped_only.py", "V = 1\n", False),))
        import wpmm_shipped_only

        assert wpmm_shipped_only.V == 1
        shipped.install((("wpmm_shipped_only", "/nowhere/wpmm_shipped_only.py", "V = 2\n", False),))
        del wpmm_shipped_only
        import wpmm_shipped_only

        assert wpmm_shipped_only.V == 2
    finally:
        sys.modules.pop("wpmm_shipped_only", None)
        shipped._finder.entries.pop("wpmm_shipped_only", None)
