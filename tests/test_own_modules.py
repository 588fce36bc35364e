"""The pickle scanner (``serialize.modules_named``) and the launch's refusal of the user's own
modules a pickle names on workers without this machine's files (``executor.own_modules``).
The refusal end to end, on the emulated Lambda: tests/aws/test_aws_own_modules.py."""
from __future__ import annotations

import collections
import fractions
import importlib
import json
import json.decoder
import pickle
import sys

import cloudpickle
import pytest

from wrenpack import Executor, serialize
from wrenpack.backends.base import ImageAnswer
from wrenpack.errors import SerializationError
from wrenpack.executor import own_modules

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_global_a_pickle_names_is_found_in_every_protocol(protocol):
    # (the second class of a module takes the module's name from the memo in protocols 4 and 5)
    value = [collections.OrderedDict(a=1), collections.Counter("ab"), json.decoder.JSONDecoder, fractions.Fraction(1, 3),
             json.dumps, json.loads]
    found = serialize.modules_named(pickle.dumps(value, protocol=protocol))
    # (protocols 0 to 2 name copyreg, _codecs and builtins too: their helpers)
    assert {"collections", "json.decoder", "fractions", "json"} <= found <= {
        "collections", "json.decoder", "fractions", "json", "copyreg", "_codecs", "builtins"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_that_look_like_modules_are_not_globals(protocol):
    found = serialize.modules_named(pickle.dumps(["collections", "json", ("os", "path"), b"sys"], protocol=protocol))
    assert found <= {"_codecs"}  # (protocols 0 to 2 rebuild bytes with _codecs.encode)


def test_a_module_cloudpickle_pickles_by_reference_is_found():
    """``subimport("json")``: a module object inside a container, by name; twice, the memo's."""
    found = serialize.modules_named(cloudpickle.dumps([json, {"again": json}, fractions]))
    assert {"json", "fractions"} <= found


def test_nothing_is_imported_or_run():
    """A pickle naming a module nobody has, in the old and the new opcodes: read, never loaded."""
    old = b"cwp_nowhere_mod\nthing\n."
    new = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x0fwp_nowhere_mod2\x94\x8c\x05thing\x94\x93\x94."
    assert serialize.modules_named(old) == {"wp_nowhere_mod"}
    assert serialize.modules_named(new) == {"wp_nowhere_mod2"}
    assert "wp_nowhere_mod" not in sys.modules and "wp_nowhere_mod2" not in sys.modules


def test_names_any_searches_the_bytes():
    data = pickle.dumps(collections.OrderedDict())
    assert serialize.names_any(data, ["nope", "collections"])
    assert not serialize.names_any(data, ["nope", "wp_helpers"])


# -- the launch's check ------------------------------------------------------------------------
@pytest.fixture
def helpers(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "wp_omu_helpers.py").write_text("def clean(x):\n    return x.strip()\nclass Point:\n    pass\n")
    (proj / "wp_omu_main.py").write_text("from wp_omu_helpers import clean\nSTEPS = {'clean': clean}\n"
                                         "def f(x):\n    return STEPS['clean'](x)\n")
    monkeypatch.syspath_prepend(str(proj))
    yield importlib.import_module("wp_omu_helpers"), importlib.import_module("wp_omu_main")
    for name in [n for n in sys.modules if n.startswith("wp_omu_")]:
        del sys.modules[name]


def _fn_pickle(fn):
    modules = serialize.user_modules_of(fn)
    with serialize.by_value(modules):
        return serialize.dumps_function(fn, modules)


def test_a_helper_named_by_reference_is_refused_in_one_line(helpers):
    mod, main = helpers
    with pytest.raises(SerializationError) as info:
        own_modules.check(_fn_pickle(main.f), [], None, "f", "lambda")
    text = str(info.value)
    assert "\n" not in text and f"module 'wp_omu_helpers', which is your own code ({mod.__file__})" in text
    assert "cloudpickle.register_pickle_by_value(wp_omu_helpers)" in text


def test_an_argument_of_the_users_class_is_refused(helpers):
    mod, _ = helpers
    args = [serialize.dumps_call((1,), {}, "call 0"), serialize.dumps_call((mod.Point(),), {}, "call 1")]
    with pytest.raises(SerializationError, match=r"the arguments of call 6 need module 'wp_omu_helpers'"):
        own_modules.check(cloudpickle.dumps(len), args, None, "len", "lambda", first=5)


def test_registered_by_value_it_is_not_refused(helpers):
    mod, main = helpers
    cloudpickle.register_pickle_by_value(mod)
    try:
        data = _fn_pickle(main.f)
        args = [serialize.dumps_call((mod.Point(),), {}, "call 0")]
    finally:
        cloudpickle.unregister_pickle_by_value(mod)
    assert "wp_omu_helpers" not in serialize.modules_named(data)
    own_modules.check(data, args, None, "f", "lambda")


def test_a_module_in_the_runtimes_python_directory_is_not_refused(helpers, tmp_path):
    """Copied into the built runtime's python/ (which its manifest does not list): the worker has it."""
    _, main = helpers
    runtime = tmp_path / "runtime"
    (runtime / "python").mkdir(parents=True)
    (runtime / "manifest.json").write_text("{}")
    data = _fn_pickle(main.f)
    with pytest.raises(SerializationError):
        own_modules.check(data, [], str(runtime), "f", "lambda")
    (runtime / "python" / "wp_omu_helpers.py").write_text("")
    own_modules.check(data, [], str(runtime), "f", "lambda")


def test_installed_packages_and_the_standard_library_are_not_refused(helpers):
    import idna  # (an installed package: site-packages)

    own_modules.check(cloudpickle.dumps([idna.encode, json.dumps, json, collections.OrderedDict()]),
                      [cloudpickle.dumps(((idna.decode, fractions.Fraction(1, 2)), {}))], None, "f", "lambda")


def test_only_backends_whose_workers_lack_the_drivers_files_check(tmp_path):
    """Asked without making the backend (a spawn's driver makes none)."""
    with Executor(backend="local", storage=str(tmp_path / "a")) as local:
        assert local._separate_files() is False and local._backend is None
        assert local.backend.capabilities.separate_files is False
    lam = Executor(backend="lambda", storage=str(tmp_path / "b"), aws_region="us-east-1")
    assert lam._separate_files() is True and lam._backend is None
    lam.shutdown()


# -- a container image may hold them -------------------------------------------------------------
class _Asked:
    """A stand-in for ``Backend.image_of``: answers ``image``, counting the questions."""

    def __init__(self, image):
        self.image, self.times = image, 0

    def __call__(self):
        self.times += 1
        return ImageAnswer("wrenpack-worker-0123456789", self.image)


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(own_modules, "_warned", set())


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "wrenpack.executor.own_modules" and r.levelname == "WARNING"]


def test_on_a_container_image_it_goes_ahead_with_one_warning_per_module(helpers, caplog, fresh_warnings):
    """The client cannot look into the image: the launch goes ahead, warned once per module per process."""
    mod, main = helpers
    data = _fn_pickle(main.f)
    args = [serialize.dumps_call((mod.Point(),), {}, f"call {i}") for i in range(3)]
    caplog.set_level("WARNING", logger="wrenpack.executor.own_modules")
    for _ in range(2):
        asked = _Asked(True)
        own_modules.check(data, args, None, "f", "lambda", image=asked)
        assert asked.times == 1  # once per launch (the backend keeps the answer)
    asked = _Asked(True)
    own_modules.check(cloudpickle.dumps(len), args, None, "len", "lambda", image=asked)  # an argument's module
    assert asked.times == 1
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"module 'wp_omu_helpers' is your own code ({mod.__file__}) and does not travel")
    assert "wrenpack-worker-0123456789 is a container image" in warned[0] and "ModuleNotFoundError" in warned[0]
    assert "cloudpickle.register_pickle_by_value(wp_omu_helpers)" in warned[0] and "\n" not in warned[0]


def test_not_an_image_or_not_known_it_is_refused(helpers, caplog, fresh_warnings):
    mod, main = helpers
    data = _fn_pickle(main.f)
    with pytest.raises(SerializationError) as info:
        own_modules.check(data, [], None, "f", "lambda", image=_Asked(False))
    text = str(info.value)
    assert f"module 'wp_omu_helpers', which is your own code ({mod.__file__})" in text and "\n" not in text
    assert text.endswith("or, the other way, deploy wrenpack-worker-0123456789 from a container image that holds it "
                         "(wrenpack deploy --image-uri URI): its launches go ahead, with a warning")
    args = [serialize.dumps_call((mod.Point(),), {}, "call 0")]
    with pytest.raises(SerializationError, match=r"the arguments of call 0 need module 'wp_omu_helpers'.*whether Lambda "
                                                  r"function wrenpack-worker-0123456789 is a container image, which may "
                                                  r"hold it, could not be read"):
        own_modules.check(cloudpickle.dumps(len), args, None, "len", "lambda", image=_Asked(None))
    with pytest.raises(SerializationError) as plain:  # nothing to ask (another backend): as before
        own_modules.check(data, [], None, "f", "lambda", image=lambda: None)
    assert "container image" not in str(plain.value)
    assert _warnings(caplog) == []


def test_the_image_is_asked_only_when_a_module_would_be_refused(helpers):
    """The common path costs nothing: no question to Lambda when nothing would be refused."""
    mod, main = helpers
    asked = _Asked(True)
    import idna

    own_modules.check(cloudpickle.dumps([idna.encode, json.dumps]), [serialize.dumps_call((1,), {}, "c")], None, "f",
                      "lambda", image=asked)
    cloudpickle.register_pickle_by_value(mod)
    try:
        own_modules.check(_fn_pickle(main.f), [serialize.dumps_call((mod.Point(),), {}, "c")], None, "f", "lambda",
                          image=asked)
    finally:
        cloudpickle.unregister_pickle_by_value(mod)
    assert asked.times == 0


def test_a_spawns_driver_asks_without_making_the_backend(helpers, tmp_path, monkeypatch, caplog, fresh_warnings):
    """No backend is made (a spawn's driver): the backend class's ``image_asker`` is made once and kept."""
    mod, main = helpers
    made = []

    def image_asker(config):
        made.append(config.function_name)
        return lambda memory, timeout, ephemeral, runtime: ImageAnswer(f"{config.function_name}-{memory}", True)

    from wrenpack.backends.aws.backend import LambdaBackend

    monkeypatch.setattr(LambdaBackend, "image_asker", staticmethod(image_asker))
    caplog.set_level("WARNING", logger="wrenpack.executor.own_modules")
    lam = Executor(backend="lambda", storage=str(tmp_path / "b"), aws_region="us-east-1", function_name="wp-img")
    try:
        for i in range(2):
            lam.prepare(main.f, [((f" {i} ",), {})], lam.options(memory=2048), "f", handoffs=False)
        assert lam._backend is None and made == ["wp-img"]
    finally:
        lam.shutdown()
    assert ["wp-img-2048 is a container image" in m for m in _warnings(caplog)] == [True]
