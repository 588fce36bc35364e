"""The generated IAM policies allow every AWS request wrenpack makes, and the
two actions they gained are needed.

moto's own IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT, /moto-api/reset-auth)
cannot judge these policies: with it on, moto 5.2 rejects every signed Lambda
request it routes by URL (GetFunctionConfiguration, ListFunctions, ...) with
SignatureDoesNotMatch (it signs a GET's parsed parameters as the body), checks
Lambda requests against resource "*" only (so no function-scoped statement
can ever allow one), names S3 actions by API operation (ListObjectsV2,
HeadObject, DeleteObjects, UploadPart) where IAM has s3:ListBucket,
s3:GetObject, s3:DeleteObject, s3:PutObject, and has no GetAccountSettings
at all (404). So the requests are judged here instead: deploy, auto-deploy
and a small map run for real against moto and the emulated Lambda; every
request this process sends is recorded, turned into the IAM action(s),
resource ARN and condition keys AWS evaluates for it, and checked against
the generated policy of the identity that sent it (Allow statements,
wildcards, the StringLike/StringEquals/Null conditions the policies use).
The worker's requests (made in the emulator's processes) are not recorded.
"""
from __future__ import annotations

import fnmatch
import json
import threading
from typing import Any

import pytest
from botocore.client import BaseClient

import wrenpack
from tests.aws.runtime_dates import deploy_as_of_a_live_day
from wrenpack.backends.aws.deploy import FunctionSettings
from wrenpack.backends.aws.iam import iam_policy
from wrenpack.cli import main
from wrenpack.executor import Executor

ACCOUNT, REGION = "123456789012", "us-east-1"
BASE = "wp-iam"
TIMEOUT = 10  # a cold emulated runtime on a loaded machine


class Recorder:
    """Every API request botocore sends from this process to ``lambda_url`` (Lambda) or S3."""

    def __init__(self, lambda_url: str) -> None:
        self.lambda_url = lambda_url
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.on = False
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = BaseClient._make_api_call
        recorder = self

        def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
            service = client.meta.service_model.endpoint_prefix
            # the emulator's own requests to moto (its Lambda control plane) are not wrenpack's
            if recorder.on and (service != "lambda" or client.meta.endpoint_url.rstrip("/") == recorder.lambda_url):
                with recorder._lock:
                    recorder.calls.append((service, operation, dict(params)))
            return original(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", recording)

    def take(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            out, self.calls = self.calls, []
        return out


def requests_for(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """The (IAM action, resource ARN, condition keys) AWS authorizes for one API request."""
    if service == "sts" and operation == "GetCallerIdentity":
        return []  # needs no permission
    if service == "lambda":
        if operation in ("ListFunctions", "GetAccountSettings"):
            return [(f"lambda:{operation}", "*", {})]
        if operation in ("PublishLayerVersion", "GetLayerVersion"):
            layer = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{params['LayerName']}"
            return [(f"lambda:{operation}", f"{layer}:{params['VersionNumber']}" if "VersionNumber" in params else layer, {})]
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{params['FunctionName']}"
        out = [("lambda:InvokeFunction" if operation == "Invoke" else f"lambda:{operation}", arn, {})]
        if operation in ("CreateFunction", "UpdateFunctionConfiguration") and params.get("Role"):
            out.append(("iam:PassRole", params["Role"], {"iam:PassedToService": "lambda.amazonaws.com"}))
        return out
    if service == "s3":
        bucket = params.get("Bucket")
        obj = f"arn:aws:s3:::{bucket}/{params.get('Key', '')}"
        if operation in ("ListObjectsV2", "ListObjects"):
            return [("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": params.get("Prefix", "")})]
        if operation in ("GetObject", "HeadObject"):
            return [("s3:GetObject", obj, {})]
        if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
            return [("s3:PutObject", obj, {"s3:if-none-match": params["IfNoneMatch"]} if params.get("IfNoneMatch") else {})]
        if operation == "DeleteObject":
            return [("s3:DeleteObject", obj, {})]
        if operation == "DeleteObjects":
            return [("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{o['Key']}", {}) for o in params["Delete"]["Objects"]]
        if operation == "AbortMultipartUpload":
            return [("s3:AbortMultipartUpload", obj, {})]
    raise AssertionError(f"this test does not know what IAM authorizes for {service}:{operation}; add it")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _conditions_hold(condition: dict[str, dict[str, Any]], keys: dict[str, str]) -> bool:
    for op, tests in condition.items():
        for key, expected in tests.items():
            wanted = _listed(expected)
            if op == "Null":  # "false": the key must be in the request
                if (key in keys) != (wanted[0] == "false"):
                    return False
            elif op in ("StringLike", "StringEquals"):
                match = fnmatch.fnmatchcase if op == "StringLike" else str.__eq__
                if key not in keys or not any(match(keys[key], w) for w in wanted):
                    return False
            else:
                raise AssertionError(f"condition operator {op} is not understood by this test")
    return True


def allowed(policy: dict[str, Any], action: str, resource: str, keys: dict[str, str]) -> bool:
    """Whether an Allow statement of ``policy`` covers the request (the policies have no Deny)."""
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(st["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(st["Resource"])):
            continue
        if _conditions_hold(st.get("Condition") or {}, keys):
            return True
    return False


def denied(policy: dict[str, Any], calls: list[tuple[str, str, dict[str, Any]]]) -> set[tuple[str, str]]:
    return {(action, resource) for call in calls for action, resource, keys in requests_for(*call)
            if not allowed(policy, action, resource, keys)}


def without(policy: dict[str, Any], action: str) -> dict[str, Any]:
    statements = [dict(st, Action=[a for a in _listed(st["Action"]) if a != action]) for st in policy["Statement"]]
    return dict(policy, Statement=[st for st in statements if st["Action"]])


def test_policies_allow_deploy_auto_deploy_and_a_map_and_need_their_new_actions(moto_endpoint, bucket, lambda_endpoint,
                                                                                role_arn, monkeypatch, capsys):
    deploy_as_of_a_live_day(monkeypatch)
    storage = f"s3://{bucket}/iam"

    class Cfg:
        function_name = BASE
        aws_region = REGION

    Cfg.storage = storage
    deploy_policy = iam_policy(Cfg(), "deploy", ACCOUNT, worker_role=role_arn)
    client_policy = iam_policy(Cfg(), "client", ACCOUNT)
    small, auto = FunctionSettings.for_call(1024, TIMEOUT, 512), FunctionSettings.for_call(1088, TIMEOUT, 512)
    for settings in (small, auto):  # one execution environment each is enough here
        lambda_endpoint.environments[settings.function_name(BASE)] = 1
    recorder = Recorder(lambda_endpoint.url.rstrip("/"))
    recorder.install(monkeypatch)
    executor = dict(backend="lambda", storage=storage, s3_endpoint_url=moto_endpoint, lambda_endpoint_url=lambda_endpoint.url,
                    function_name=BASE, aws_region=REGION, timeout=TIMEOUT, retries=0, concurrency=3)

    # -- as the deploy identity: `wrenpack deploy`, then a map that auto-deploys another settings set
    recorder.on = True
    code = main(["deploy", "--function-name", BASE, "--role", role_arn, "--storage", storage, "--region", REGION,
                 "--lambda-endpoint-url", lambda_endpoint.url, "--s3-endpoint-url", moto_endpoint,
                 "--timeout", str(TIMEOUT)])
    assert code == 0, capsys.readouterr().err
    with Executor(**executor, lambda_auto_deploy=True) as ex:
        assert wrenpack.get(wrenpack.remote(abs, executor=ex, memory=1088).map([-1, -2])) == [1, 2]
    deploying = recorder.take()
    # -- as the client identity: a small map on the deployed function
    with Executor(**executor) as ex:
        assert wrenpack.get(wrenpack.remote(abs, executor=ex, memory=1024).map([-3, -4, -5])) == [3, 4, 5]
    mapping = recorder.take()
    recorder.on = False

    made = {(s, op) for s, op, _ in deploying + mapping}
    assert {("lambda", "CreateFunction"), ("lambda", "ListFunctions"), ("lambda", "PutFunctionEventInvokeConfig"),
            ("lambda", "GetAccountSettings"), ("lambda", "Invoke"), ("s3", "PutObject")} <= made, made
    assert denied(deploy_policy, deploying) == set()
    assert denied(client_policy, mapping) == set()
    # What the policies lacked before: auto-deploy's listing, the client's concurrency cap.
    assert denied(without(deploy_policy, "lambda:ListFunctions"), deploying) == {("lambda:ListFunctions", "*")}
    assert denied(without(client_policy, "lambda:GetAccountSettings"), mapping) == {("lambda:GetAccountSettings", "*")}
    # and the client policy alone could not deploy
    assert ("lambda:CreateFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{auto.function_name(BASE)}") in \
        denied(client_policy, deploying)


def test_the_evaluator_refuses_what_the_policy_scopes_out(bucket):
    """The checks above can fail: requests outside the prefix, the family or the conditions are refused."""
    class Cfg:
        function_name = BASE
        aws_region = REGION
        storage = f"s3://{bucket}/iam"

    client, worker = iam_policy(Cfg(), "client", ACCOUNT), iam_policy(Cfg(), "worker", ACCOUNT)
    assert denied(client, [("lambda", "Invoke", {"FunctionName": "other-fn"})])
    assert denied(client, [("s3", "PutObject", {"Bucket": bucket, "Key": "elsewhere/jobs/x"})])
    assert denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "iam/runtimes/"})])
    assert not denied(client, [("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "iam/jobs/j1/result/"})])
    result = {"Bucket": bucket, "Key": "iam/jobs/j1/result/00/00000.res"}
    assert denied(worker, [("s3", "PutObject", result)])  # the worker only creates results
    assert not denied(worker, [("s3", "PutObject", dict(result, IfNoneMatch="*"))])
    assert json.dumps(client).count('"*"') == 1  # GetAccountSettings' resource, nothing else
