"""``@wrenpack.remote(runtime=PATH)``: local workers see only the built runtime."""
from __future__ import annotations

import sys

import pytest

import wrenpack


@pytest.fixture(scope="module")
def tiny_runtime(small_runtime):
    """A runtime of cloudpickle (always added) and a few small packages, six among them but not
    rich: the session's small runtime (tests/conftest.py), which tests/test_runtime_builder.py
    builds and checks (a build of its own here resolved with pip again: ~3 s)."""
    names = {p["name"] for p in small_runtime.manifest["packages"]}
    assert "six" in names and "rich" not in names, names
    return small_runtime.output


def uses_six(x):
    import six

    return six.text_type(x)


def uses_rich(x):
    import rich  # installed here, but not in the runtime

    return str(rich)


def uses_boto3(x):
    import boto3  # Lambda provides it

    return boto3.__name__


def test_runtime_packages_import(tiny_runtime, executor):
    f = wrenpack.remote(uses_six, executor=executor, runtime=tiny_runtime)
    assert wrenpack.get(f.map([1, 2])) == ["1", "2"]


def test_missing_dependency_fails_as_on_lambda(tiny_runtime, executor):
    f = wrenpack.remote(uses_rich, executor=executor, runtime=tiny_runtime)
    with pytest.raises(wrenpack.MissingDependency, match=r"module 'rich'.*wrenpack build-runtime rich") as info:
        f.remote(1).result()
    assert isinstance(info.value, ImportError)
    # the same function works in the client's own environment
    assert wrenpack.remote(uses_rich, executor=executor).remote(1).result()


def test_a_function_that_cannot_be_loaded_fails_the_same_way_on_every_call(tiny_runtime, executor):
    """A function that closes over a module the runtime lacks cannot even be loaded there. The
    first call said MissingDependency; the next ones on the same warm worker came without the
    function (counted as delivered) and said CorruptObject, "the function did not come with
    the call; re-run it", which re-running could not help."""
    import importlib

    rich = importlib.import_module("rich")

    def names_rich(x):
        return rich.__name__

    f = wrenpack.remote(names_rich, executor=executor, runtime=tiny_runtime)
    for _ in range(3):
        with pytest.raises(wrenpack.MissingDependency, match=r"module 'rich'"):
            f.remote(1).result(timeout=60)
    errors = [type(fut.exception(timeout=60)).__name__ for fut in f.map(range(4))]
    assert errors == ["MissingDependency"] * 4, errors


def test_lambda_provided_packages_are_visible(tiny_runtime, executor):
    f = wrenpack.remote(uses_boto3, executor=executor, runtime=tiny_runtime)
    assert f.remote(0).result() == "boto3"


def test_not_a_runtime_is_a_clear_error(tmp_path, executor):
    f = wrenpack.remote(uses_six, executor=executor, runtime=str(tmp_path))
    with pytest.raises(wrenpack.BuildError, match="is not a built runtime"):
        f.remote(1).result()


# The user's own project, not installed: a package, modules that use it, a module imported
# by a name made at run time. A runtime= worker (as a Lambda one) can import none of them.
_PROJECT = {
    "wp_um_pkg/__init__.py": "",
    "wp_um_pkg/sub.py": "from . import other\ndef g(x):\n    return other.h(x) + 1\n",
    "wp_um_pkg/other.py": "def h(x):\n    return x * 100\n",
    "wp_um_two.py": """
import wp_um_pkg.sub
class Model:
    def __init__(self, k):
        self.k = k
    def predict(self, x):
        return wp_um_pkg.sub.g(x) * self.k
def make_model(k):
    return Model(k)
def use_model(m, x):
    return m.predict(x)
def inner(x):
    return wp_um_pkg.sub.g(x)
def outer(x):
    return inner(x)
""",
    "wp_um_three.py": "import wp_um_two\ndef third(x):\n    return wp_um_two.outer(x)\n",
    "wp_um_helper.py": "def twice(x):\n    return 2 * x\n",
    "wp_um_inside.py": "import wp_um_helper\ndef imports_inside(x):\n    import wp_um_helper as h\n    return h.twice(x)\n",
    "wp_um_by_name.py": "import importlib\nNAME = 'wp_um_helper'\ndef imports_by_name(x):\n"
                        "    return importlib.import_module(NAME).twice(x)\n",
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    import importlib
    import sys

    for rel, text in _PROJECT.items():
        path = tmp_path / "proj" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    names = ("wp_um_two", "wp_um_three", "wp_um_inside", "wp_um_by_name", "wp_um_helper")
    yield {name: importlib.import_module(name) for name in names}
    for name in [n for n in sys.modules if n.startswith("wp_um_")]:
        del sys.modules[name]


def test_a_user_package_that_did_not_travel_is_named_as_the_users_own_and_the_fix_it_gives_works(
        tiny_runtime, executor, project):
    """third -> wp_um_two.outer (a user module's attribute) -> inner -> the user's package, which
    does not travel by value (the function does not name it). The worker's hint was
    "wrenpack build-runtime wp_um_pkg": a PyPI project of that name, someone else's code. It now
    says the module is the user's own and how to send it, and that works."""
    import cloudpickle

    pkg = sys.modules["wp_um_pkg"]
    f = wrenpack.remote(project["wp_um_three"].third, executor=executor, runtime=tiny_runtime)
    with pytest.raises(wrenpack.MissingDependency, match=r"module 'wp_um_pkg.*', which is your own code \(.*proj/"
                       r"wp_um_pkg\).*register_pickle_by_value\(wp_um_pkg\)") as info:
        f.remote(1).result(timeout=60)
    assert "build-runtime" not in str(info.value)
    cloudpickle.register_pickle_by_value(pkg)
    try:
        g = wrenpack.remote(project["wp_um_three"].third, executor=executor, runtime=tiny_runtime)
        assert g.remote(1).result(timeout=60) == 101
    finally:
        cloudpickle.unregister_pickle_by_value(pkg)


def test_a_user_module_the_worker_lacks_is_named_as_the_users_own(tiny_runtime, executor, project):
    """A module imported by a name made at run time cannot be found before the call; the
    error says it is the user's own code and how to make it travel, not to install a
    PyPI project of that name (someone else's code)."""
    f = wrenpack.remote(project["wp_um_by_name"].imports_by_name, executor=executor, runtime=tiny_runtime)
    with pytest.raises(wrenpack.MissingDependency, match=r"module 'wp_um_helper', which is your own code \(.*proj/"
                       r"wp_um_helper.py\).*register_pickle_by_value\(wp_um_helper\)") as info:
        f.remote(3).result(timeout=60)
    assert "build-runtime" not in str(info.value)
    assert info.value.name == "wp_um_helper"


def test_worker_shims_go_to_wrenpacks_cache_dir_and_dangling_ones_are_removed(tmp_path, monkeypatch):
    """The shim folders a local worker with a runtime imports wrenpack (and what Lambda provides)
    through went to ~/.cache/wrenpack whatever WRENPACK_CACHE_DIR said, one per checkout or venv
    path, never removed: those pointing at removed trees piled up."""
    import os

    from wrenpack.backends import runtime_paths

    cache = tmp_path / "cache"
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(cache))
    gone = cache / "worker-shim" / "0123456789ab"
    gone.mkdir(parents=True)
    os.symlink(tmp_path / "removed-checkout" / "wrenpack", gone / "wrenpack")
    kept = cache / "worker-shim" / "ba9876543210"
    kept.mkdir()
    os.symlink(tmp_path, kept / "wrenpack")  # (a tree still there: another checkout's)
    shim = runtime_paths._shim_dir()
    assert shim.startswith(str(cache)) and os.path.samefile(os.path.join(shim, "wrenpack"), os.path.dirname(wrenpack.__file__))
    assert not gone.exists() and kept.exists()
    provided = runtime_paths._lambda_provided_dir()
    assert provided is None or provided.startswith(str(cache))
