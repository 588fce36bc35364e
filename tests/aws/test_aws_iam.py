"""The generated IAM policies allow every AWS request wrenpack makes for each
feature, and no more is needed: wrenpack runs here under the IAM stand-in
(``iam_proxy.py``), the client, deploy and worker identities each holding
exactly its generated policy, scoped to this module's store prefix and
function family, and every request they send judged before it reaches moto,
rclone or the emulated Lambda (the worker's from inside the emulator's
sandboxes: the dispatcher gives them the worker's credentials).

moto's own IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT, /moto-api/reset-auth)
cannot judge these policies: with it on, moto 5.2 rejects every signed Lambda
request it routes by URL (GetFunctionConfiguration, ListFunctions, ...) with
SignatureDoesNotMatch (it signs a GET's parsed parameters as the body), checks
Lambda requests against resource "*" only (so no function-scoped statement
can ever allow one), names S3 actions by API operation (ListObjectsV2,
HeadObject, DeleteObjects, UploadPart) where IAM has s3:ListBucket,
s3:GetObject, s3:DeleteObject, s3:PutObject, and has no GetAccountSettings
at all (404). So the requests are judged by the stand-in instead, with
``iam_eval.py``: each is turned into the IAM action(s), resource ARN and
condition keys AWS evaluates for it and checked against the policy (Allow
statements, wildcards, the StringLike/StringEquals/Null conditions the
policies use); a refusal is answered as AWS answers it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError

import wrenpack
from tests.aws.iam_eval import ACCOUNT, REGION, denied, without
from tests.aws.iam_proxy import ENFORCED, WORKER_ROLE, credentials
from tests.aws.servers import REPO
from tests.aws.runtime_dates import deploy_as_of_a_live_day
from wrenpack.backends.aws.deploy import FunctionSettings
from wrenpack.backends.aws.iam import iam_policy
from wrenpack.cli import main
from wrenpack.executor import Executor

BASE = "wp-iam"
TIMEOUT = 10  # a cold emulated runtime on a loaded machine
#: the function every feature here runs on (deployed by the deploy identity)
DEFAULT = FunctionSettings.for_call(1024, TIMEOUT, 512)


def _executor(iam, storage: str, s3_url: str | None = None, **overrides) -> Executor:
    settings = dict(backend="lambda", storage=storage, s3_endpoint_url=s3_url or iam.stack.s3_url,
                    lambda_endpoint_url=iam.stack.lam.url, function_name=BASE, aws_region=REGION, timeout=TIMEOUT,
                    retries=0, concurrency=3)
    settings.update(overrides)
    ex = Executor(**settings)
    if ex.config.invocation_type == "Event":
        ex.backend.poll_interval = 0.2
    return ex


def _deploy(iam, storage: str, capsys, *extra: str, s3_url: str | None = None) -> None:
    code = main(["deploy", "--function-name", BASE, "--role", WORKER_ROLE, "--storage", storage, "--region", REGION,
                 "--lambda-endpoint-url", iam.stack.lam.url, "--s3-endpoint-url", s3_url or iam.stack.s3_url,
                 "--timeout", str(TIMEOUT), *extra])
    assert code == 0, capsys.readouterr().err


def _refused_since(iam, mark: int) -> list:
    return [(j.role, j.call[1], sorted(j.refused)) for j in iam.enforcer.denials()[mark:]]


def test_policies_allow_deploy_auto_deploy_and_a_map_and_need_their_new_actions(iam, bucket, monkeypatch, capsys):
    deploy_as_of_a_live_day(monkeypatch)
    storage = f"s3://{bucket}/iam"
    iam.scope(storage, BASE)
    deploy_policy, client_policy, worker_policy = iam.policy("deploy"), iam.policy("client"), iam.policy("worker")
    auto = FunctionSettings.for_call(1088, TIMEOUT, 512)
    for settings in (DEFAULT, auto):  # one execution environment each is enough here
        iam.stack.lam.environments[settings.function_name(BASE)] = 1
    mark = len(iam.enforcer.denials())

    # -- as the deploy identity: `wrenpack deploy`, then a map that auto-deploys another settings set
    iam.act_as("deploy")
    _deploy(iam, storage, capsys)
    with _executor(iam, storage, lambda_auto_deploy=True) as ex:
        assert wrenpack.get(wrenpack.remote(abs, executor=ex, memory=1088).map([-1, -2])) == [1, 2]
    deploying = iam.enforcer.take("deploy")
    # -- as the client identity: a small map on the deployed function
    iam.act_as("client")
    with _executor(iam, storage) as ex:
        assert wrenpack.get(wrenpack.remote(abs, executor=ex, memory=1024).map([-3, -4, -5])) == [3, 4, 5]
    mapping = iam.enforcer.take("client")
    working = iam.enforcer.take("worker")

    assert _refused_since(iam, mark) == []  # the stand-in let every request through
    made = {(s, op) for s, op, _ in deploying + mapping}
    assert {("lambda", "CreateFunction"), ("lambda", "ListFunctions"), ("lambda", "PutFunctionEventInvokeConfig"),
            ("lambda", "GetAccountSettings"), ("lambda", "Invoke"), ("s3", "PutObject")} <= made, made
    assert ("s3", "PutObject", "*") in {(s, op, p.get("IfNoneMatch")) for s, op, p in working}  # results, created once
    assert denied(deploy_policy, deploying) == set()
    assert denied(client_policy, mapping) == set()
    assert denied(worker_policy, working) == set()
    # What the policies lacked before: auto-deploy's listing, the client's concurrency cap.
    assert denied(without(deploy_policy, "lambda:ListFunctions"), deploying) == {("lambda:ListFunctions", "*")}
    assert denied(without(client_policy, "lambda:GetAccountSettings"), mapping) == {("lambda:GetAccountSettings", "*")}
    # and the client policy alone could not deploy
    assert ("lambda:CreateFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{auto.function_name(BASE)}") in \
        denied(client_policy, deploying)


def stepper(n):
    """Restores its state (none the first time), saves it, and reads it back: the checkpoint's requests."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0})
    for _ in range(n):
        state["i"] += 1
    cp.save(state)
    return cp.restore()["i"]


def word_pairs(line):
    return [(w, 1) for w in line.split()]


def count(key, values):
    return sum(values)


@pytest.mark.parametrize("server", ["moto", pytest.param("rclone", marks=pytest.mark.slow)])
def test_every_feature_runs_as_the_client_and_the_worker_under_their_policies(server, iam, bucket, monkeypatch, capsys):
    """Deploy (with reserved concurrency), maps of both invocation types, checkpoints, a shuffle,
    the concurrency caps, doctor and clean: nothing any identity asks for is refused."""
    deploy_as_of_a_live_day(monkeypatch)
    storage = f"s3://{bucket}/iam"  # the deployed function's store (its runtimes keep it)
    s3_url = iam.stack.s3_url if server == "moto" else iam.stack.rclone_url()
    iam.scope(storage, BASE)
    iam.stack.lam.environments[DEFAULT.function_name(BASE)] = 2
    mark = len(iam.enforcer.denials())

    iam.act_as("deploy")
    _deploy(iam, storage, capsys, "--reserved-concurrency", "2", s3_url=s3_url)
    iam.enforcer.take("deploy")
    iam.act_as("client")
    for kind in ("RequestResponse", "Event"):
        with _executor(iam, storage, s3_url, invocation_type=kind) as ex:
            assert wrenpack.get(wrenpack.remote(abs, executor=ex).map([-1, -2, -3])) == [1, 2, 3]
            assert wrenpack.remote(stepper, executor=ex).remote(5).result(timeout=60) == 5
    with _executor(iam, storage, s3_url) as ex:
        fut = wrenpack.map_reduce(word_pairs, ["a b a", "b c", "a"], count, partitions=2, executor=ex)
        assert fut.result(timeout=60) == {"a": 3, "b": 2, "c": 1}
    with _executor(iam, storage, s3_url, keep_objects=True) as ex:  # leaves its objects for `wrenpack clean`
        assert wrenpack.get(wrenpack.remote(abs, executor=ex).map([-4])) == [4]
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", iam.stack.s3_url)  # doctor's GetCallerIdentity (needs no permission)
    where = ["--storage", storage, "--region", REGION, "--s3-endpoint-url", s3_url]
    monkeypatch.setenv("WRENPACK_TIMEOUT", str(TIMEOUT))  # doctor looks at the function of these settings
    main(["doctor", "--function-name", BASE, "--lambda-endpoint-url", iam.stack.lam.url, *where])
    assert "wrenpack doctor" in capsys.readouterr().out
    assert main(["clean", "--all", "--force", *where]) == 0, capsys.readouterr().err  # this process owns the jobs
    client, worker = iam.enforcer.take("client"), iam.enforcer.take("worker")

    assert _refused_since(iam, mark) == []
    made = {(s, op) for s, op, _ in client}
    assert {("lambda", "Invoke"), ("lambda", "GetFunctionConcurrency"), ("lambda", "GetFunctionConfiguration"),
            ("s3", "ListObjectsV2"), ("s3", "DeleteObjects"), ("s3", "PutObject")} <= made, made
    kinds = {p.get("Key", "").split("/")[3] for s, op, p in worker if op == "PutObject" and "/jobs/" in "/" + p.get("Key", "")}
    assert {"result", "checkpoint"} <= kinds, kinds
    assert any(op == "PutObject" and "/shuffle/" in p["Key"] for s, op, p in worker), "the shuffle wrote nothing"


@pytest.mark.iam_refusals("it shows them")
def test_the_stand_in_refuses_what_a_policy_lacks_as_aws_does(iam, bucket, monkeypatch, capsys):
    """It enforces: without one action a feature fails with AWS's AccessDenied, in one line."""
    deploy_as_of_a_live_day(monkeypatch)
    storage = f"s3://{bucket}/iam"
    iam.scope(storage, BASE)
    iam.act_as("deploy")
    _deploy(iam, storage, capsys)
    mark = len(iam.enforcer.denials())
    iam.enforcer.policies["client"] = without(iam.policy("client"), "lambda:InvokeFunction")
    iam.act_as("client")
    with _executor(iam, storage) as ex:
        with pytest.raises(Exception, match="not allowed to invoke Lambda function"):
            wrenpack.get(wrenpack.remote(abs, executor=ex).map([-1]))
    assert ("client", "Invoke") in {(role, op) for role, op, _ in _refused_since(iam, mark)}
    # S3 and Lambda answer in their own protocols: 403 AccessDenied / AccessDeniedException
    session = boto3.session.Session(region_name=REGION, **{k.lower(): v for k, v in credentials("client").items()})
    with pytest.raises(ClientError) as s3_refusal:
        session.client("s3", endpoint_url=iam.stack.s3_url).put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x")
    assert s3_refusal.value.response["Error"]["Code"] == "AccessDenied"
    assert s3_refusal.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as lambda_refusal:
        session.client("lambda", endpoint_url=iam.stack.lam.url).invoke(FunctionName="another-function", Payload=b"{}")
    assert lambda_refusal.value.response["Error"]["Code"] == "AccessDeniedException"
    assert lambda_refusal.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def _policy(role: str, storage: str) -> dict:
    """``iam_policy`` for ``role`` with the suite's function family and region, on ``storage``."""
    return iam_policy(SimpleNamespace(function_name=BASE, aws_region=REGION, storage=storage), role, ACCOUNT)


def test_the_evaluator_refuses_what_the_policy_scopes_out(bucket):
    """The checks above can fail: requests outside the prefix, the family or the conditions are refused."""
    client, worker = _policy("client", f"s3://{bucket}/iam"), _policy("worker", f"s3://{bucket}/iam")
    assert denied(client, [("lambda", "Invoke", {"FunctionName": "other-fn"})])
    assert denied(client, [("s3", "PutObject", {"Bucket": bucket, "Key": "elsewhere/jobs/x"})])
    assert denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "iam/runtimes/"})])
    assert not denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "iam/jobs/j1/result/"})])
    result = {"Bucket": bucket, "Key": "iam/jobs/j1/result/00/00000.res"}
    assert denied(worker, [("s3", "PutObject", result)])  # the worker only creates results
    assert not denied(worker, [("s3", "PutObject", dict(result, IfNoneMatch="*"))])
    assert json.dumps(client).count('"*"') == 1  # GetAccountSettings' resource, nothing else


def test_the_worker_policy_lets_calls_use_a_scratch_area_and_nothing_else_of_a_job(bucket):
    """probe18: a scratch area (``wrenpack.scratch()``) keeps its objects in ``jobs/<id>/data/``,
    which the worker policy denied: every call given one failed with AccessDenied on Lambda."""
    worker = _policy("worker", f"s3://{bucket}/iam")
    area = "iam/jobs/20261207-120000-0000abcd/data/"
    for op in ("PutObject", "GetObject", "DeleteObject"):
        assert not denied(worker, [("s3", op, {"Bucket": bucket, "Key": area + "in/00000"})]), op
    assert not denied(worker, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": area + "in/"})])
    job = "iam/jobs/20261207-120000-0000abcd/"
    for key in ("func.pkl", "input/00000", "owner.json", "job.json"):  # (the job's own objects stay out of reach)
        assert denied(worker, [("s3", "PutObject", {"Bucket": bucket, "Key": job + key})]), key
    assert denied(worker, [("s3", "DeleteObject", {"Bucket": bucket, "Key": job + "owner.json"})])


def test_a_prefix_with_iams_wildcards_grants_only_itself(bucket):
    """probe12: prefixes with '*', '?' or '$' were refused outright (a policy for "a*" grants
    "ab/" too), which stranded stores an earlier version made. They are allowed; the policy
    writes each as IAM's literal form (``${*}``, ``${?}``, ``${$}``)."""
    client = _policy("client", f"s3://{bucket}/team*:a?b$c[d]")
    key = "team*:a?b$c[d]/jobs/j1/input/0.pkl"
    assert not denied(client, [("s3", "PutObject", {"Bucket": bucket, "Key": key})])
    for other in ("teamX:a?b$c[d]", "team*:aXb$c[d]", "team*:a?b$c[d]x", "team*:a?bXc[d]", "team*:a?b$cd"):
        assert denied(client, [("s3", "PutObject", {"Bucket": bucket, "Key": f"{other}/jobs/j1/input/0.pkl"})]), other
    assert not denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "team*:a?b$c[d]/jobs/j1/result/"})])
    assert denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "team-x:a?b$c[d]/jobs/j1/result/"})])
    assert "team${*}:a${?}b${$}c[d]/" in json.dumps(client)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_aws_suite_passes_under_iam_enforcement(tmp_path):
    """``WRENPACK_TEST_IAM=enforce python -m pytest tests/aws`` (its default run, not -m slow):
    every test's requests judged, a refusal failing the test that caused it."""
    if ENFORCED:
        pytest.skip("this suite already runs under IAM enforcement")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["WRENPACK_TEST_IAM"] = "enforce"
    log = tmp_path / "pytest.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/aws"],
                              cwd=str(REPO), env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=3500)
    text = log.read_text()
    lines = text.strip().splitlines() or ["no output"]
    print(f"tests/aws under IAM enforcement: {lines[-1]} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    assert proc.returncode == 0, text[-6000:]


def test_the_deploy_policy_allows_undeploy_and_needs_each_of_its_new_actions(iam, bucket, monkeypatch, capsys, tmp_path):
    """`wrenpack undeploy` as the deploy identity removes the family's functions, layer versions,
    runtime archive and layer upload: nothing refused, and each action it added is needed."""
    import zipfile

    import wrenpack.backends.aws.deploy as deploy

    deploy_as_of_a_live_day(monkeypatch)
    storage = f"s3://{bucket}/iam-undeploy"
    iam.scope(storage, BASE)
    policy = iam.policy("deploy")
    build = tmp_path / "build"
    (build / "python" / "wp_iam_pkg").mkdir(parents=True)
    (build / "python" / "wp_iam_pkg" / "__init__.py").write_text("X = 1\n")
    with zipfile.ZipFile(build / "layer.zip", "w") as zf:
        zf.writestr("python/wp_iam_pkg.py", "X = 1\n")
    mark = len(iam.enforcer.denials())
    iam.act_as("deploy")
    with monkeypatch.context() as patched:
        patched.setattr(deploy, "INLINE_ZIP_LIMIT", 0)  # the layer goes through the store's deploy/, as a large one does
        _deploy(iam, storage, capsys, "--runtime-dir", str(build))
    _deploy(iam, storage, capsys, "--runtime-archive", str(build), "--memory", "1152")
    iam.enforcer.take("deploy")
    capsys.readouterr()
    code = main(["undeploy", "--yes", "--json", "--function-name", BASE, "--storage", storage, "--region", REGION,
                 "--lambda-endpoint-url", iam.stack.lam.url, "--s3-endpoint-url", iam.stack.s3_url])
    out = capsys.readouterr().out
    assert code == 0, out
    done = json.loads(out)
    assert len(done["functions"]) == 2 and len(done["layer_versions"]) == 1 and len(done["objects"]) == 2, done
    undeploying = iam.enforcer.take("deploy")
    assert _refused_since(iam, mark) == []
    made = {(s, op) for s, op, _ in undeploying}
    assert {("lambda", "ListFunctions"), ("lambda", "DeleteFunction"), ("lambda", "ListLayerVersions"),
            ("lambda", "GetLayerVersion"), ("lambda", "DeleteLayerVersion"), ("s3", "ListObjectsV2"),
            ("s3", "DeleteObject")} <= made, made
    assert denied(policy, undeploying) == set()
    for action in ("lambda:DeleteFunction", "lambda:DeleteLayerVersion", "lambda:ListLayerVersions", "s3:DeleteObject"):
        assert denied(without(policy, action), undeploying), action
    # DeleteFunction reaches deploy's names of the family only, not a longer name of the prefix
    assert denied(policy, [("lambda", "DeleteFunction", {"FunctionName": f"{BASE}-acc1a2b3c-m-0123456789"})])
    assert not denied(policy, [("lambda", "DeleteFunction", {"FunctionName": DEFAULT.function_name(BASE)})])


@pytest.mark.iam_refusals("it shows one")
def test_the_client_policy_lets_a_launch_learn_that_its_function_is_a_container_image(iam, bucket, monkeypatch,
                                                                                      tmp_path):
    """A launch that would be refused for naming a module of the user's own code asks whether its
    function is a container image (lambda:GetFunctionConfiguration, the client's ``Doctor``
    statement): allowed, it goes ahead; refused that, it is refused as before, saying why."""
    from wrenpack.errors import SerializationError
    from wrenpack.executor import own_modules

    storage = f"s3://{bucket}/iam"
    iam.scope(storage, BASE)
    client_policy = iam.policy("client")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "wp_iamimg_helpers.py").write_text("def clean(x):\n    return x.strip()\n")
    (proj / "wp_iamimg_main.py").write_text("from wp_iamimg_helpers import clean\nSTEPS = {'clean': clean}\n"
                                            "def f(x):\n    return STEPS['clean'](x)\n")
    monkeypatch.syspath_prepend(str(proj))
    monkeypatch.setattr(own_modules, "_warned", set())
    import wp_iamimg_main

    image = FunctionSettings.for_call(1024, TIMEOUT + 1, 512)  # (not the other tests' function)
    name = image.function_name(BASE)
    admin = boto3.client("lambda", endpoint_url=iam.stack.lam.url, region_name=REGION)
    admin.create_function(FunctionName=name, Role=WORKER_ROLE, PackageType="Image", MemorySize=1024, Timeout=TIMEOUT + 1,
                          Code={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/wrenpack:iam"})
    try:
        mark = len(iam.enforcer.denials())
        iam.act_as("client")
        for make_backend in (True, False):  # the backend's client, and a spawn's driver's (no backend)
            with _executor(iam, storage, concurrency=1) as ex:
                if make_backend:
                    ex.backend  # noqa: B018
                ex.prepare(wp_iamimg_main.f, [((" a ",), {})], ex.options(timeout=TIMEOUT + 1), "f")
        asking = iam.enforcer.take("client")
        assert _refused_since(iam, mark) == []
        assert [op for s, op, _ in asking if s == "lambda"] == ["GetFunctionConfiguration"] * 2, asking
        assert denied(client_policy, asking) == set()
        assert denied(without(client_policy, "lambda:GetFunctionConfiguration"), asking) == {
            ("lambda:GetFunctionConfiguration", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")}
        iam.enforcer.policies["client"] = without(client_policy, "lambda:GetFunctionConfiguration")
        with _executor(iam, storage, concurrency=1) as ex:
            with pytest.raises(SerializationError, match=f"whether Lambda function {name} is a container image, which "
                                                         f"may hold it, could not be read"):
                ex.prepare(wp_iamimg_main.f, [((" a ",), {})], ex.options(timeout=TIMEOUT + 1), "f")
        assert [(role, op) for role, op, _ in _refused_since(iam, mark)] == [("client", "GetFunctionConfiguration")]
    finally:
        admin.delete_function(FunctionName=name)
        for module in ("wp_iamimg_main", "wp_iamimg_helpers"):
            sys.modules.pop(module, None)
