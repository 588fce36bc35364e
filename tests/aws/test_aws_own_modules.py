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

A function deployed from a container image (``PackageType`` "Image") may hold the user's modules,
where the client cannot look: there the launch goes ahead, with one warning per module, and a
function that is not an image, or whose configuration cannot be read, is refused as before. moto
creates an image function without docker (it does not check the ECR URI); the emulated Lambda runs
it with wrenpack's handler like any other, and an image that holds the project is one whose
``PYTHONPATH`` names the project's folder.
"""
from __future__ import annotations

import importlib
import logging
import sys

import cloudpickle
import pytest

import wrenpack
from wrenpack.backends.aws import backend as aws_backend
from wrenpack.backends.aws.deploy import ENV_STORE, FunctionSettings, deploy_function
from wrenpack.errors import MissingDependency, SerializationError
from wrenpack.executor import Executor, own_modules

from tests.aws.servers import REGION, free_port

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
    # (the suite's function is a zip package: the other way is named)
    assert text.endswith("from a container image that holds it (wrenpack deploy --image-uri URI): its launches go "
                         "ahead, with a warning")
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


# -- a function deployed from a container image -------------------------------------------------
#: the image function's timeout: a settings set of its own in the suite's family (which IAM scopes allow)
IMAGE_TIMEOUT = 6


@pytest.fixture
def deploy_image(lambda_endpoint, stop_pools, monkeypatch):
    """``deploy_image(holds)``: a function deployed from a container image (as `wrenpack deploy --image-uri`
    does) for calls of ``timeout=IMAGE_TIMEOUT``; ``holds``: the folder its image holds on its path. Not
    of the family (no ``ENV_FAMILY``: auto-deploy elsewhere must not copy it); removed after the test."""
    import boto3

    monkeypatch.setattr(own_modules, "_warned", set())
    lam = boto3.client("lambda", endpoint_url=lambda_endpoint.url, region_name=REGION)
    settings = FunctionSettings.for_call(1024, IMAGE_TIMEOUT, 512)
    name = settings.function_name(lambda_endpoint.function_name)
    made = []

    def deploy(holds: str | None) -> str:
        lambda_endpoint.environments[name] = 1
        env = {ENV_STORE: "s3://wrenpack-test"}
        if holds:
            env["PYTHONPATH"] = holds  # (the emulated runtime puts the function's own entries first)
        deploy_function(lam, name, settings, {"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/wrenpack:own"},
                        {"PackageType": "Image", "Architectures": ["x86_64"]}, env, role=lambda_endpoint.role_arn)
        assert lam.get_function_configuration(FunctionName=name)["PackageType"] == "Image"
        made.append(name)
        return name

    yield deploy
    if made:
        stop_pools(lambda n: n == name)
        lam.delete_function(FunctionName=name)


@pytest.fixture
def image_function(deploy_image, project, tmp_path):
    """The image holds the project."""
    return deploy_image(str(tmp_path / "proj"))


def _asked(monkeypatch) -> list[str]:
    """The functions whose configuration the image check read (``_Images._read``), in order."""
    asked: list[str] = []
    read = aws_backend._Images._read

    def counting(self, name, settings):
        asked.append(name)
        return read(self, name, settings)

    monkeypatch.setattr(aws_backend._Images, "_read", counting)
    return asked


def _image_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == own_modules.__name__ and r.levelname == "WARNING"]


def test_on_a_container_image_function_the_launch_goes_ahead_with_one_warning(lam, lambda_endpoint, image_function,
                                                                                project, caplog, monkeypatch):
    """The image holds the project: the calls run, although the client could not see that."""
    mymod, helpers = project
    asked = _asked(monkeypatch)
    caplog.set_level(logging.WARNING, logger=own_modules.__name__)
    remote = wrenpack.remote(mymod.f, executor=lam, timeout=IMAGE_TIMEOUT)
    assert wrenpack.get(remote.map([" A ", "b"])) == ["a", "b"]
    assert remote.remote(" C ").result(timeout=60) == "c"
    norm = wrenpack.remote(mymod.norm, executor=lam, timeout=IMAGE_TIMEOUT)
    assert norm.remote(helpers.Point(3, 4)).result(timeout=60) == 25
    assert asked == [image_function]  # once for the backend's life, and only when it would have refused
    warned = _image_warnings(caplog)
    assert len(warned) == 1, warned  # once per module per process
    assert warned[0].startswith(f"module 'wp_om_helpers' is your own code ({helpers.__file__})")
    assert f"Lambda function {image_function} is a container image" in warned[0]
    assert "ModuleNotFoundError" in warned[0] and "register_pickle_by_value(wp_om_helpers)" in warned[0]
    # the suite's zip function, another settings set of the same family: refused as before
    with pytest.raises(SerializationError, match="the function needs module 'wp_om_helpers'"):
        wrenpack.remote(mymod.f, executor=lam).remote(" A ")
    # a launch that names none of the user's modules asks nothing
    assert wrenpack.remote(mymod.direct, executor=lam).remote(" D ").result(timeout=60) == "d"
    assert len(asked) == 2


def test_a_spawned_job_on_a_container_image_function_goes_ahead(lam, image_function, project, caplog, monkeypatch):
    """A spawn's driver makes no backend: it asks with a client of the backend's settings of its own."""
    mymod, _ = project
    asked = _asked(monkeypatch)
    caplog.set_level(logging.WARNING, logger=own_modules.__name__)
    job = wrenpack.remote(mymod.f, executor=lam, timeout=IMAGE_TIMEOUT).spawn_map([" A ", "b"])
    assert lam._backend is None and asked == [image_function]
    assert job.results(timeout=120) == ["a", "b"]
    assert len(_image_warnings(caplog)) == 1


def test_a_container_image_without_the_module_fails_its_calls_as_the_warning_says(lam, deploy_image, project, caplog):
    mymod, _ = project
    deploy_image(None)
    caplog.set_level(logging.WARNING, logger=own_modules.__name__)
    fut = wrenpack.remote(mymod.f, executor=lam, timeout=IMAGE_TIMEOUT).remote(" A ")
    with pytest.raises(ModuleNotFoundError, match="module 'wp_om_helpers', which is your own code") as info:
        fut.result(timeout=60)
    assert isinstance(info.value, MissingDependency)
    assert len(_image_warnings(caplog)) == 1


def test_when_the_configuration_cannot_be_read_it_is_refused(moto_endpoint, bucket, lambda_endpoint, project, caplog):
    """Whether the function is an image is not known (here: nothing answers at its endpoint): refused as before."""
    mymod, helpers = project
    caplog.set_level(logging.INFO, logger=aws_backend.__name__)
    with Executor(backend="lambda", storage=f"s3://{bucket}/own-modules", s3_endpoint_url=moto_endpoint,
                  lambda_endpoint_url=f"http://127.0.0.1:{free_port()}", function_name=lambda_endpoint.function_name,
                  aws_region="us-east-1", timeout=IMAGE_TIMEOUT, retries=0) as ex:
        with pytest.raises(SerializationError) as info:
            wrenpack.remote(mymod.f, executor=ex).remote(" A ")
    text = str(info.value)
    assert "module 'wp_om_helpers', which is your own code" in text and "\n" not in text
    assert "is a container image, which may hold it, could not be read" in text
    assert any("cannot read whether Lambda function" in r.getMessage() for r in caplog.records)


def test_what_the_image_check_keeps_and_what_it_asks_again(monkeypatch):
    """Kept: an answer, and a refusal (asking again would be refused again). Asked again: a function
    not deployed yet, a failure that may pass (the network). With lambda_auto_deploy, a function
    not deployed yet is what the family's function it would be copied from is."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    answers: dict[str, object] = {}
    asked: list[str] = []

    class Client:
        def get_function_configuration(self, FunctionName):
            asked.append(FunctionName)
            answer = answers[FunctionName]
            if isinstance(answer, Exception):
                raise answer
            return answer

    def error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}}, "GetFunctionConfiguration")

    client = Client()
    images = aws_backend._Images(lambda: client, "wp-fam", "x86_64", auto_deploy=False)
    name_of = {t: FunctionSettings.for_call(1024, t, 512).function_name("wp-fam") for t in range(1, 6)}
    answers.update({name_of[1]: {"PackageType": "Image"}, name_of[2]: {"PackageType": "Zip"},
                    name_of[3]: error("AccessDeniedException"),
                    name_of[4]: EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
                    name_of[5]: error("ResourceNotFoundException")})
    expected = {1: True, 2: False, 3: None, 4: None, 5: False}
    for _ in range(2):
        for t, image in expected.items():
            assert images.ask(1024, t, 512, None) == (name_of[t], image)
    assert sorted(asked) == sorted([name_of[t] for t in expected] + [name_of[4], name_of[5]])

    copied = []

    def find_template(lam, base, settings):
        copied.append(settings.timeout)
        return {"PackageType": "Image"} if settings.timeout == 5 else None

    monkeypatch.setattr(aws_backend.deploy, "find_template", find_template)
    auto = aws_backend._Images(lambda: client, "wp-fam", "x86_64", auto_deploy=True)
    answers[name_of[4]] = error("ResourceNotFoundException")
    for _ in range(2):
        assert auto.ask(1024, 5, 512, None).image is True  # its template is an image: so will the copy be
        assert auto.ask(1024, 4, 512, None).image is False  # nothing to copy: asked again
    assert copied == [5, 4, 4]
