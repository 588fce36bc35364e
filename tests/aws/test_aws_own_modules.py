"""A module of the user's own code that a pickle names instead of carrying, on the emulated Lambda.

A function's own globals travel by value when they come from the user's modules
(``serialize.user_modules_of``: ``from helpers import clean`` then ``def f(x): return clean(x)``
runs). What it reaches otherwise is pickled by reference: a helper inside a dict (``STEPS =
{"clean": clean}``), a module inside one (cloudpickle's ``subimport``), an argument that is an
instance of the user's class. The local backend's workers share the driver's files and run those;
Lambda's do not have ``helpers.py``, and every call failed there at run time with
``ModuleNotFoundError``. Such a launch is refused now, before anything is stored or sent, in one
line that names the module, its file and the fix (``wrenpack.executor.own_modules``); the fix
(``cloudpickle.register_pickle_by_value``) runs; installed packages and the standard library are
not refused; the local backend is unaffected.

The project lives in the test's temporary folder, on the driver's ``sys.path`` only: the emulated
Lambda's runtime has the repository on its path (``LAMBDA_TASK_ROOT``), not that folder.
"""
from __future__ import annotations

import importlib
import sys

import cloudpickle
import pytest

import wrenpack
from wrenpack.errors import SerializationError
from wrenpack.executor import Executor

TIMEOUT = 5

_PROJECT = {
    "wp_om_helpers.py": "def clean(x):\n    return x.strip().lower()\n"
                        "def shout(x):\n    return x.strip().upper()\n"
                        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "wp_om_mymod.py": "import wp_om_helpers\n"
                      "from wp_om_helpers import clean\n"
                      "from json import dumps\n"
                      "from idna import encode\n"
                      "STEPS = {'clean': clean}\n"
                      "MODULES = [wp_om_helpers]\n"
                      "def direct(x):\n    return clean(x)\n"
                      "def f(x):\n    return STEPS['clean'](x)\n"
                      "def through_a_module(x):\n    return MODULES[0].shout(x)\n"
                      "def installed(x):\n    return encode(x).decode() + dumps(x)\n"
                      "def norm(p):\n    return p.x * p.x + p.y * p.y\n",
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    for rel, text in _PROJECT.items():
        (tmp_path / "proj").mkdir(exist_ok=True)
        (tmp_path / "proj" / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    yield importlib.import_module("wp_om_mymod"), importlib.import_module("wp_om_helpers")
    for name in [n for n in sys.modules if n.startswith("wp_om_")]:
        del sys.modules[name]


@pytest.fixture
def lam(moto_endpoint, bucket, lambda_endpoint):
    ex = Executor(backend="lambda", storage=f"s3://{bucket}/own-modules", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                  aws_region="us-east-1", concurrency=4, timeout=TIMEOUT, retries=0)
    yield ex
    ex.shutdown()


def _objects(ex) -> list[str]:
    return list(ex.store.iter_list("jobs/"))


def test_a_helper_module_named_by_reference_is_refused_before_launch(lam, lambda_endpoint, project):
    mymod, helpers = project
    before, stored = len(lambda_endpoint.calls), _objects(lam)
    with pytest.raises(SerializationError) as info:
        wrenpack.remote(mymod.f, executor=lam).map([" A ", "b"])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("cannot launch f on the lambda backend, whose workers do not have this machine's files: "
                           "the function needs module 'wp_om_helpers', which is your own code (" + helpers.__file__ + ")")
    assert "cloudpickle.register_pickle_by_value(wp_om_helpers)" in text and "python/ directory" in text
    # nothing launched, nothing stored
    assert len(lambda_endpoint.calls) == before and _objects(lam) == stored
    with pytest.raises(SerializationError, match="wp_om_helpers"):
        wrenpack.remote(mymod.f, executor=lam).remote(" A ")  # a single call too (the scan's kept answer)
    with pytest.raises(SerializationError, match="the function needs module 'wp_om_helpers'"):
        wrenpack.remote(mymod.through_a_module, executor=lam).remote(" A ")  # a module in a list: subimport
    assert len(lambda_endpoint.calls) == before and _objects(lam) == stored


def test_registered_by_value_it_runs(lam, project):
    mymod, helpers = project
    cloudpickle.register_pickle_by_value(helpers)
    try:
        assert wrenpack.get(wrenpack.remote(mymod.f, executor=lam).map([" A ", "b"])) == ["a", "b"]
        assert wrenpack.remote(mymod.through_a_module, executor=lam).remote(" c ").result(timeout=60) == "C"
    finally:
        cloudpickle.unregister_pickle_by_value(helpers)


def test_the_functions_own_globals_travel_and_are_not_refused(lam, project):
    """``clean`` is a global of ``direct``, from the user's module: it travels by value already."""
    mymod, _ = project
    assert wrenpack.get(wrenpack.remote(mymod.direct, executor=lam).map([" A "])) == ["a"]


def test_an_argument_of_the_users_class_is_refused_before_launch(lam, lambda_endpoint, project):
    mymod, helpers = project
    before = len(lambda_endpoint.calls)
    with pytest.raises(SerializationError, match=r"the arguments of call 1 need module 'wp_om_helpers'.*register_pickle_by_value"):
        wrenpack.remote(mymod.norm, executor=lam).map([3, helpers.Point(3, 4)])
    assert len(lambda_endpoint.calls) == before


def test_installed_packages_and_the_standard_library_are_not_refused(lam, project):
    mymod, _ = project
    assert wrenpack.remote(mymod.installed, executor=lam).remote("ab").result(timeout=60) == 'ab"ab"'


def test_the_local_backend_still_runs_them(tmp_path, project):
    mymod, helpers = project
    with Executor(backend="local", storage=str(tmp_path / "store"), concurrency=1) as ex:
        assert wrenpack.get(wrenpack.remote(mymod.f, executor=ex).map([" A "])) == ["a"]
        assert wrenpack.remote(mymod.through_a_module, executor=ex).remote(" b ").result(timeout=60) == "B"
        assert wrenpack.remote(mymod.norm, executor=ex).remote(helpers.Point(3, 4)).result(timeout=60) == 25
