"""Least-privilege IAM policies for the client, the worker function and deploy.

Generated rather than documented as JSON so that they follow the settings
(bucket, prefix, region, function family) and the store's key layout as that
changes; docs/aws.md explains each statement and what it does not stop.
"""
from __future__ import annotations

import re
from typing import Any

from wrenpack.backends.aws.clients import bucket_prefix, configured_region
from wrenpack.errors import ConfigError

#: who a policy is for: "client" runs jobs, "worker" is the function's execution role, "deploy" is client + deploy,
#: "acceptance" is deploy + deleting what `wrenpack doctor --acceptance` creates
ROLES = ("client", "worker", "deploy", "acceptance")


#: an IAM role's name (the part after ``role/``, without a path)
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}")


def partition(region: str | None) -> str:
    """The ARN partition of ``region`` (``aws-cn`` for China, ``aws-us-gov`` for GovCloud, ...):
    a policy naming ``arn:aws:`` resources grants nothing there. ``aws`` when unknown."""
    if not region or region == "*":
        return "aws"
    try:
        import botocore.session

        return str(botocore.session.Session().get_partition_for_region(region))
    except Exception:  # noqa: BLE001 - a region botocore does not know: AWS's commercial partition
        return "aws"


def iam_literal(text: str) -> str:
    """``text`` as IAM matches it literally in a Resource or a StringLike condition: '*' and '?'
    are IAM's wildcards and "${" starts a policy variable, so each of '$', '*' and '?' is
    written as its special-character variable (``${$}``, ``${*}``, ``${?}``)."""
    return "".join("${" + ch + "}" if ch in "$*?" else ch for ch in text)


def iam_policy(cfg: Any, role: str, account: str = "*", worker_role: str | None = None) -> dict[str, Any]:
    """A least-privilege policy for ``role`` (one of ``ROLES``); ``worker_role``,
    for "deploy": the only execution role it may pass (default: one named like the function).
    An account id or role that no ARN can hold is refused in one line: the policy
    would be accepted by IAM and then match nothing, so every request would be denied."""
    account = str(account).strip()
    if account != "*" and not re.fullmatch(r"\d{12}", account):
        raise ConfigError(f"--account {account!r} is not an AWS account id (12 digits, e.g. 123456789012); "
                          "pass yours (aws sts get-caller-identity) or leave it out for '*'")
    if worker_role and not worker_role.startswith("arn:") and not _ROLE_NAME.fullmatch(worker_role):
        raise ConfigError(f"--worker-role {worker_role!r} is neither a role ARN nor a role name (up to 64 letters, "
                          "digits and +=,.@_-); pass the execution role's ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    bucket, prefix = bucket_prefix(cfg)
    prefix = iam_literal(prefix)  # (a store under "s3://b/a*" must not grant "s3://b/ab/...")
    # (the region boto3 will use, as deploy and the backend see it: aws_region, else AWS_REGION /
    # AWS_DEFAULT_REGION, else the profile's; its partition is the ARNs' own)
    region = configured_region(getattr(cfg, "aws_region", None), getattr(cfg, "aws_profile", None)) or "*"
    arn = f"arn:{partition(region)}"
    base = f"{arn}:s3:::{bucket}/{prefix + '/' if prefix else ''}"
    # deploy makes one function per settings set, all named <function_name>-<hash>
    fn_arn = f"{arn}:lambda:{region}:{account}:function:{cfg.function_name}-*"
    jobs = f"{base}jobs/*"
    user = [f"{base}data/*", f"{base}shuffle/*"]

    def allow(sid: str, actions: list[str], resources: list[str] | str, **extra: Any) -> dict[str, Any]:
        return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources, **extra}

    def listing(sid: str, prefixes: list[str]) -> dict[str, Any]:
        full = [f"{prefix}/{p}" if prefix else p for p in prefixes]
        return allow(sid, ["s3:ListBucket"], f"{arn}:s3:::{bucket}",
                     Condition={"StringLike": {"s3:prefix": full}})

    if role == "worker":
        statements = [
            allow("ReadCallInputs", ["s3:GetObject"], [f"{base}jobs/*/func.pkl", f"{base}jobs/*/input/*", f"{base}runtimes/*"]),
            # Create only (If-None-Match: *): no result or segment record, of any job, can be overwritten.
            allow("CreateResults", ["s3:PutObject"], [f"{base}jobs/*/result/*"],
                  Condition={"Null": {"s3:if-none-match": "false"}}),
            allow("MarkLateStart", ["s3:PutObject"], [f"{base}jobs/*/start/*"]),
            allow("ReadBackResults", ["s3:GetObject"], [f"{base}jobs/*/result/*"]),
            # A running call looks for its cancel marker (sealed by the client; only read here).
            allow("CancelMarkers", ["s3:GetObject"], [f"{base}jobs/*/cancel", f"{base}jobs/*/cancel.*"]),
            allow("Checkpoints", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                  [f"{base}jobs/*/checkpoint/*"]),
            # A call's first segment reads a checkpoint not there yet, and a call handed another call's
            # future waits for its result: S3 answers a missing key 404 only to a caller that may list
            # it, else 403 AccessDenied, which fails the call.
            listing("MayBeMissing", ["jobs/*/checkpoint/*", "jobs/*/result/*", "jobs/*/cancel", "jobs/*/cancel.*"]),
            # (and the program's scratch areas, ``wrenpack.scratch()``: its data in a job's folder of its own)
            allow("UserDataInCalls", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                  [*user, f"{base}jobs/*/data/*"]),
            listing("ListUserData", ["data/*", "shuffle/*", "jobs/*/data/*"]),
            allow("Logs", ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                  f"{arn}:logs:{region}:{account}:log-group:/aws/lambda/{cfg.function_name}-*:*"),
        ]
        return {"Version": "2012-10-17", "Statement": statements}
    statements = [
        allow("JobObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
              [jobs, *user, f"{base}doctor/*"]),
        listing("ListJobObjects", ["jobs/*", "data/*", "shuffle/*"]),
        # Deleting a job's objects aborts the multipart uploads its stopped calls left unfinished
        # (``S3Store.delete_prefix``): S3 bills their parts until then. The action takes no prefix condition.
        allow("UnfinishedUploads", ["s3:ListBucketMultipartUploads"], f"{arn}:s3:::{bucket}"),
        allow("Invoke", ["lambda:InvokeFunction"], fn_arn),
        # (GetFunctionConfiguration: a launch's too, and whether a function is a container image that may hold
        # the user's own modules: ``LambdaBackend.image_of``)
        allow("Doctor", ["lambda:GetFunctionConfiguration", "lambda:GetFunctionEventInvokeConfig",
                         "lambda:GetFunctionConcurrency"], fn_arn),
        # The account's unreserved concurrency caps how many calls the client keeps in
        # flight; the action takes no resource ARN, so "*" is its narrowest scope.
        allow("AccountConcurrency", ["lambda:GetAccountSettings"], "*"),
    ]
    if role in ("deploy", "acceptance"):
        if worker_role and not worker_role.startswith("arn:"):
            worker_role = f"{arn}:iam::{account}:role/{worker_role}"
        statements += [
            allow("Deploy", ["lambda:CreateFunction", "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
                             "lambda:PutFunctionEventInvokeConfig", "lambda:GetFunction",
                             "lambda:PutFunctionConcurrency"], fn_arn),
            # lambda_auto_deploy and the printed deploy commands find a deployed function of the
            # family to copy; ListFunctions takes no resource ARN, so "*" is its narrowest scope.
            allow("FindFamily", ["lambda:ListFunctions"], "*"),
            allow("Layer", ["lambda:PublishLayerVersion", "lambda:GetLayerVersion"], [
                f"{arn}:lambda:{region}:{account}:layer:{cfg.function_name}-runtime",
                f"{arn}:lambda:{region}:{account}:layer:{cfg.function_name}-runtime:*"]),
            allow("UploadRuntimes", ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
                  [f"{base}runtimes/*", f"{base}deploy/*"]),
            allow("PassWorkerRole", ["iam:PassRole"], worker_role or f"{arn}:iam::{account}:role/{cfg.function_name}",
                  Condition={"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}),
            # `wrenpack undeploy`: the family's functions (deploy's names, <function_name>-<10 hex>: IAM's
            # "?" is one character, so no longer name of the prefix matches), its layer's versions, and
            # the runtime archives and layer uploads. ListLayerVersions is authorized on the layer's ARN
            # (the Lambda permissions reference, since 2021; AccessDenied names that resource). The HEAD
            # that reads which family an archive is for is UploadRuntimes' s3:GetObject.
            allow("Undeploy", ["lambda:DeleteFunction"], f"{arn}:lambda:{region}:{account}:function:{cfg.function_name}-"
                  + "?" * 10),
            allow("UndeployLayer", ["lambda:DeleteLayerVersion"],
                  f"{arn}:lambda:{region}:{account}:layer:{cfg.function_name}-runtime:*"),
            allow("UndeployListLayer", ["lambda:ListLayerVersions"],
                  f"{arn}:lambda:{region}:{account}:layer:{cfg.function_name}-runtime"),
            allow("UndeployUploads", ["s3:DeleteObject"], [f"{base}runtimes/*", f"{base}deploy/*"]),
            listing("UndeployListUploads", ["runtimes/*", "deploy/*"]),
        ]
    if role == "acceptance":
        # Its functions are <function_name>-acc<run id>-*; it deletes them, their logs and what it uploaded.
        statements += [
            allow("AcceptanceCleanup", ["lambda:DeleteFunction"],
                  f"{arn}:lambda:{region}:{account}:function:{cfg.function_name}-acc*"),
            allow("AcceptanceLayers", ["lambda:PublishLayerVersion", "lambda:GetLayerVersion", "lambda:DeleteLayerVersion",
                                       "lambda:ListLayerVersions"],
                  f"{arn}:lambda:{region}:{account}:layer:{cfg.function_name}-acc*"),
            allow("AcceptanceReads", ["lambda:GetAccountSettings"], "*"),
            allow("AcceptanceLogs", ["logs:DeleteLogGroup"],
                  f"{arn}:logs:{region}:{account}:log-group:/aws/lambda/{cfg.function_name}-acc*"),
            allow("AcceptanceUploads", ["s3:DeleteObject"], [f"{base}runtimes/*", f"{base}deploy/*"]),
            # it lists those prefixes before and after deploying, to delete only what it uploaded
            listing("AcceptanceListUploads", ["runtimes/*", "deploy/*"]),
        ]
    return {"Version": "2012-10-17", "Statement": statements}
