"""The fixtures every test file shares, in one place.

Backends: a module marked ``pytestmark = pytest.mark.backends()`` runs each of
its tests that uses an executor fixture once per backend ("local", "toy",
"lambda"; ``backends("local", "toy")`` names fewer); unmarked modules run on
"local". The executor fixtures all build on ``backend_settings``:

* ``executor``: one executor (two calls at once, retries=1) shared by a module;
  ``remote(fn, **options)`` binds functions to it.
* ``make_executor(**settings)``: fresh executors for one test, each on its own
  store, shut down after it.
* ``ex``: one fresh executor for one test, with the settings of the closest
  ``executor_settings(...)`` marker (a module's files set theirs once).
* ``captured``: the invocations an executor makes, to drive a backend directly.

"lambda" runs on the AWS stand-ins of tests/aws/servers.py on 127.0.0.1 (moto
for S3 and the control plane, the Runtime Interface Emulator running the real
handler); where they cannot be had, its tests are skipped with the reason.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib.util
import itertools
import json
import os
import threading
from typing import Any, Callable

import pytest

import wrenpack
from tests.aws import iam_proxy, servers
from tests.aws.runtime_dates import deploy_as_of_a_live_day
from tests.botocore_models import share_loaded_models
from wrenpack import Executor
from wrenpack.backends import Backend, Invocation, create_backend, register_backend

register_backend("toy", "tests.toy_backend:ToyBackend")  # the toy backend: one folder, this one line
share_loaded_models()  # botocore's models parsed once per process, not once per boto3 session (tests/botocore_models.py)

#: the backends a module marked ``backends()`` runs on
BACKENDS = ("local", "toy", "lambda")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names, slow=()): run the executor fixtures of these tests on each backend "
                                       "named (default: local, toy and lambda); on those in `slow` only with -m slow")
    config.addinivalue_line("markers", "executor_settings(**settings): the settings of the `ex` fixture's executor")
    config.addinivalue_line("markers", "slow_variants(*ids): these parametrized variants of a test (ids as in "
                                       "its name's brackets, e.g. 'lambda-map') run only with -m slow")


@pytest.hookimpl(tryfirst=True)  # (before the -m option deselects)
def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("slow_variants")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None and callspec.id in marker.args:
            item.add_marker(pytest.mark.slow)


#: shared-memory files the headless browser of the report tests may leave (Chromium's own,
#: when a helper process of it outlives the page): removed at the end of the run
_BROWSER_SHM = ("/dev/shm", ".org.chromium.Chromium.")
_shm_before: set[str] = set()


def _browser_shm_files() -> set[str]:
    folder, prefix = _BROWSER_SHM
    try:
        return {name for name in os.listdir(folder) if name.startswith(prefix)}
    except OSError:
        return set()


#: the project's folders whose modules the suite's own processes import (workers, CLIs, examples, benchmarks)
_PROJECT_CODE = ("wrenpack", "runtime_builder", "examples", "benchmarks", "tests")


def _write_project_bytecode() -> None:
    """The project's bytecode, written once before the first test, as an installed wheel has it.

    The suite starts over a thousand Python processes (local workers, CLIs, examples, the
    emulated Lambda's runtimes). Where PYTHONDONTWRITEBYTECODE is set (CI images often set it)
    none of them writes bytecode, so in a fresh clone each compiled every module of the project
    it imported from source again: about 0.3 s of CPU a worker. compileall writes it whatever
    that variable says, and only for sources newer than their bytecode; a tree it cannot write
    to is left as it is."""
    import compileall

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in _PROJECT_CODE:
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            compileall.compile_dir(folder, quiet=2)


def pytest_sessionstart(session):
    _shm_before.update(_browser_shm_files())
    _write_project_bytecode()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """What is alive once every test module is imported (numpy, boto3's models, matplotlib, the
    collected items: ~107,000 objects that the collector tracks) lives until the session ends: it
    is collected once, then frozen (``gc.freeze``), so that no later full collection walks it
    again (a test's ``gc.collect()``, and Python's own, every so many allocations, with the GIL
    held). Objects a test makes are collected as before. The 100 tests of test_bad_input,
    test_memory_release and test_launch_window took 0.6-1.6 s less CPU in 3 alternated runs."""
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (the run's controller removes them once every worker is done: another's browser may still run)
    for name in _browser_shm_files() - _shm_before:  # (only what this run's browsers made)
        try:
            os.remove(os.path.join(_BROWSER_SHM[0], name))
        except OSError:
            pass


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        slow = marker.kwargs.get("slow", ())
        names = [pytest.param(name, marks=pytest.mark.slow) if name in slow else name for name in marker.args or BACKENDS]
        metafunc.parametrize("backend", names, indirect=True, scope="module")


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch, tmp_path_factory):
    """Tests never read the developer's WRENPACK_* settings or pyproject."""
    for key in list(os.environ):
        if key.startswith("WRENPACK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WRENPACK_PROGRESS", "false")


@pytest.fixture(autouse=True)
def _lambda_deploys_this_python(request, monkeypatch):
    """The emulated Lambda runs this interpreter: on the lambda backend, deploys and
    auto-deploys take its Python as of a day Lambda took it (tests/aws/runtime_dates.py)."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "lambda":
        deploy_as_of_a_live_day(monkeypatch)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on, for the test's length: bound here without listening, so a
    connection is refused, and no server (the other test process's, -n 2) can bind it meanwhile, as
    one could a port found free and closed again."""
    import socket

    from tests.aws.servers import free_port  # (this test process's share of the ports: not the other's)

    with socket.socket() as sock:
        for _ in range(100):
            try:
                sock.bind(("127.0.0.1", free_port()))
                break
            except OSError:  # (taken since it was found free: another)
                continue
        else:
            sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- executors on every backend ----------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(request) -> str:
    """The backend this module's executors run on: "local" unless the module is marked ``backends``."""
    return getattr(request, "param", "local")


_prefixes = itertools.count()


@pytest.fixture(scope="module")
def backend_settings(backend, request, tmp_path_factory) -> Callable[..., dict[str, Any]]:
    """``backend_settings(**overrides)``: Executor settings for ``backend`` with a store of their own."""
    if backend == "lambda":
        base = _lambda_settings(request)
    else:
        base = {"backend": backend}

    def settings(**overrides: Any) -> dict[str, Any]:
        out = dict(base)
        if backend == "lambda":
            out["storage"] = f"{base['storage']}/{next(_prefixes)}"
        else:
            out["storage"] = str(tmp_path_factory.mktemp("store"))
        out.update(overrides)
        return out

    return settings


def _lambda_settings(request) -> dict[str, Any]:
    """The emulated Lambda's settings (its servers start on first use), or a skip saying what is missing."""
    for module, why in (("moto", "moto[server] is not installed"), ("awslambdaric", "awslambdaric is not installed")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the lambda backend's stand-in cannot run: {why}; pip install -e '.[test]'")
    try:
        servers.rie_binary()
    except servers.Unavailable as exc:
        pytest.skip(f"the lambda backend's stand-in cannot run: the Runtime Interface Emulator is missing: {exc}")
    endpoint = request.getfixturevalue("lambda_endpoint")
    return {
        "backend": "lambda",
        "storage": f"s3://{request.getfixturevalue('bucket')}/contract-{os.getpid()}",
        "s3_endpoint_url": request.getfixturevalue("moto_endpoint"),
        "lambda_endpoint_url": endpoint.url,
        "function_name": endpoint.function_name,
        "aws_region": servers.REGION,
        # The deployed default function's settings; a call with others gets a function made for them.
        "timeout": servers.FUNCTION_TIMEOUT,
        "lambda_auto_deploy": True,
    }


def _new_executor(settings: dict[str, Any]) -> Executor:
    ex = Executor(**settings)
    if ex.config.backend == "lambda" and ex.config.invocation_type == "Event":
        # The store is polled every 0.05 s, not 0.5: a call's slot frees only once its result
        # has been seen, so the poll sets the pace of these short calls, most of them one
        # after another (a warm call's round trip: ~0.25 s at 0.2, ~0.1 s at 0.05). The maps of
        # tests/aws/test_aws_lambda.py's ``lam`` keep 0.2 (many calls in flight: no faster there).
        ex.backend.poll_interval = 0.05
    return ex


@pytest.fixture(scope="module")
def executor(backend_settings):
    """One executor (two calls at once) shared by a test module."""
    ex = _new_executor(backend_settings(concurrency=2, retries=1))
    yield ex
    ex.shutdown()


@pytest.fixture
def remote(executor):
    """``remote(fn, **options)`` bound to the module's executor."""

    def make(fn=None, **options):
        return wrenpack.remote(fn, executor=executor, **options) if fn else wrenpack.remote(executor=executor, **options)

    return make


@pytest.fixture
def make_executor(backend_settings):
    """``make_executor(**settings)``: a fresh executor on the module's backend, shut down after the test
    (its calls not yet started are cancelled; those running end first)."""
    made: list[Executor] = []

    def make(**settings: Any) -> Executor:
        ex = _new_executor(backend_settings(**settings))
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def ex(request, make_executor):
    """A fresh executor for one test, with the settings of the closest ``executor_settings`` marker."""
    marker = request.node.get_closest_marker("executor_settings")
    return make_executor(**(marker.kwargs if marker else {}))


@pytest.fixture
def capabilities(backend_settings):
    """What the module's backend can do (``Capabilities``), asked of a backend that never runs anything."""
    config = wrenpack.Config(**backend_settings())
    made = create_backend(config.backend, config)
    try:
        return made.capabilities
    finally:
        made.shutdown(wait=False)


# -- driving a backend directly ------------------------------------------------------------------
class _Capture(Backend):
    """Collects an executor's invocations so a test can run them on a backend of its own."""

    name = "capture"

    def __init__(self) -> None:
        self.invocations: list[Invocation] = []

    def invoke(self, invocation: Invocation) -> None:
        self.invocations.append(invocation)

    def cancel(self, invocation: Invocation) -> bool:
        return True  # it runs nothing itself: every call it holds can be taken back

    def shutdown(self, wait: bool = True) -> None:
        pass


@dataclasses.dataclass
class Captured:
    """A map's invocations, with hooks that record each call's start and its one ``on_done``."""

    invocations: list[Invocation]
    #: call id -> its InvocationResult
    done: dict[str, Any]
    #: call ids in the order their calls started
    started: list[str]
    config: wrenpack.Config

    def backend(self, **overrides: Any) -> Backend:
        """A backend of the module's kind for these invocations (their store), e.g. ``concurrency=1``."""
        config = self.config.replace(**overrides)
        return create_backend(config.backend, config)


@pytest.fixture
def captured(backend_settings):
    """``captured(fn, items, **options)``: the invocations of ``map(fn, items)`` as ``Captured``."""

    def capture(fn: Callable[..., Any], items: list[Any], **options: Any) -> Captured:
        ex = Executor(**backend_settings(keep_objects=True))
        ex._backend = capture_backend = _Capture()
        wrenpack.remote(fn, executor=ex, **options).map(items)
        # The test runs these calls on a backend of its own: the executor takes its
        # futures back (else it reports them still running at exit).
        ex.shutdown(wait=False, cancel_futures=True)
        done: dict[str, Any] = {}
        started: list[str] = []
        lock = threading.Lock()
        for inv in capture_backend.invocations:
            def on_done(inv, result, done=done):
                with lock:
                    assert inv.key[1] not in done, "on_done called twice"
                    done[inv.key[1]] = result
            inv.on_done = on_done
            inv.on_start = lambda inv: started.append(inv.key[1])
        return Captured(capture_backend.invocations, done, started, ex.config)

    return capture


# -- the AWS stand-ins (tests/aws/servers.py), for tests/aws and the lambda backend ---------------
def aws_unavailable(reason: str) -> None:
    """tests/aws fail when their servers cannot run, unless WRENPACK_SKIP_AWS_TESTS=1 says to skip them."""
    if os.environ.get("WRENPACK_SKIP_AWS_TESTS") == "1":
        pytest.skip(f"AWS tests skipped (WRENPACK_SKIP_AWS_TESTS=1): {reason}")
    pytest.fail(f"AWS tests cannot run: {reason} (set WRENPACK_SKIP_AWS_TESTS=1 to skip them explicitly)")


@pytest.fixture(scope="session")
def aws_env():
    """Dummy credentials and a region for every boto3 client from here on;
    no profile or endpoint from the developer's environment leaks in.

    Under IAM enforcement (tests/aws/iam_proxy.py) boto3's default session, which
    the tests' own ``boto3.client(...)`` use, keeps these administrator credentials,
    while wrenpack's sessions read an identity's from the environment."""
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL") or key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(key)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", servers.REGION)
    mp.setenv("AWS_REGION", servers.REGION)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    if iam_proxy.ENFORCED:
        import boto3

        mp.setattr(boto3, "DEFAULT_SESSION", iam_proxy.admin_session())
    yield
    mp.undo()


@pytest.fixture(scope="session")
def iam_enforcer():
    """The IAM stand-in's judge (tests/aws/iam_proxy.py): its policies and its log of judged requests."""
    return iam_proxy.Enforcer()


@pytest.fixture(scope="session")
def moto_server(aws_env, tmp_path_factory):
    """moto's own URL (``moto_endpoint`` is IAM's proxy in front of it when the suite runs under enforcement)."""
    proc, url, log = servers.start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield url
    finally:
        servers.stop(proc)
        log.close()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server, request):
    """S3 and the Lambda control plane: moto, behind the IAM stand-in when WRENPACK_TEST_IAM=enforce."""
    if not iam_proxy.ENFORCED:
        yield moto_server
        return
    enforcer = request.getfixturevalue("iam_enforcer")
    enforcer.scope_suite(iam_proxy.WORKER_ROLE)
    proxy = iam_proxy.IamProxy(moto_server, enforcer)
    try:
        yield proxy.url
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def bucket(moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=servers.REGION)
    s3.create_bucket(Bucket="wrenpack-test")
    return "wrenpack-test"


@pytest.fixture(scope="session")
def role_arn(moto_endpoint):
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=servers.REGION)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    arn = iam.create_role(RoleName="wrenpack-worker-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    assert arn == iam_proxy.WORKER_ROLE  # the role the IAM stand-in lets deploy pass
    return arn


@pytest.fixture(scope="session")
def lambda_endpoint(moto_server, bucket, role_arn, tmp_path_factory, request):
    """A Lambda endpoint that runs wrenpack's handler in real RIEs, with the
    default test function (1024 MB, ``servers.FUNCTION_TIMEOUT`` s, 512 MB /tmp) deployed.
    Under IAM enforcement it judges each request itself and its runtimes hold the worker's credentials."""
    try:
        import awslambdaric  # noqa: F401
    except ImportError:
        aws_unavailable("awslambdaric is not installed; pip install -e '.[test]'")
    try:
        binary = servers.rie_binary()
    except servers.Unavailable as exc:
        aws_unavailable(str(exc))
    dispatcher = lambda_dispatcher(binary, moto_server, role_arn, tmp_path_factory,
                                   request.getfixturevalue("iam_enforcer") if iam_proxy.ENFORCED else None)
    try:
        dispatcher.deploy()
        yield dispatcher
    finally:
        dispatcher.stop()


def lambda_dispatcher(binary, moto_url: str, role_arn: str, tmp_path_factory,
                      enforcer: "iam_proxy.Enforcer | None" = None) -> servers.LambdaEndpoint:
    """A Lambda endpoint in front of moto at ``moto_url``; with ``enforcer``, IAM judges each
    request it takes and its runtimes hold the worker's credentials (as Lambda gives a function its role's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENPACK_", "PYTEST_"))}
    env.update(LAMBDA_TASK_ROOT=str(servers.REPO), PYTHONPATH=str(servers.REPO))
    if enforcer is not None:
        env.update(iam_proxy.credentials("worker"))
    # The session's temporary directory stays writable in every sandbox: some tests hand
    # their calls a file there (Lambda's filesystem is read-only but for a private /tmp).
    dispatcher = servers.LambdaEndpoint(binary, env, tmp_path_factory.mktemp("rie-logs"), moto_url,
                                        shared=[str(tmp_path_factory.getbasetemp())])
    dispatcher.role_arn = role_arn
    if enforcer is not None:
        dispatcher.authorize = enforcer.judge
    return dispatcher


# -- a built runtime (runtime_builder), for tests/test_runtime_builder.py and tests/test_runtime_local.py --------
#: what the small runtime holds besides cloudpickle (always added): pure-Python packages and one with a
#: compiled extension (msgpack)
SMALL_RUNTIME_PACKAGES = ["six", "idna", "msgpack"]


@pytest.fixture(scope="session")
def runtime_cache(tmp_path_factory) -> str:
    """A build cache of the session's own (``runtime_builder.build(cache_dir=...)``)."""
    return str(tmp_path_factory.mktemp("wrenpack-cache"))


@pytest.fixture(scope="session")
def small_runtime(runtime_cache, tmp_path_factory):
    """The small runtime (``SMALL_RUNTIME_PACKAGES``, every artifact), built once per session: a
    build resolves with pip (seconds), and tests that only run on a runtime need not build their own."""
    import runtime_builder

    out = str(tmp_path_factory.mktemp("rt") / "runtime")
    return runtime_builder.build(SMALL_RUNTIME_PACKAGES, output=out, cache_dir=runtime_cache, artifacts="all")


@pytest.fixture(scope="session")
def profile_of():
    """``profile_of(name, args)``: ``run_profile`` of a ``profiler_targets`` function, once per
    session. The accuracy and the backend tests profile the same calls; each profile is a
    fresh child process that takes seconds (numpy's, Python's allocations)."""
    from wrenpack.profiler import run_profile

    import profiler_targets as targets

    profiles: dict[tuple[str, tuple], object] = {}

    def get(name: str, args: tuple = ()):
        key = (name, tuple(args))
        if key not in profiles:
            profiles[key] = run_profile(getattr(targets, name), tuple(args), save=False)
        return profiles[key]

    return get
