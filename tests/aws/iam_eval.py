"""What AWS IAM authorizes for a request, and whether a policy allows it.

Shared by the IAM tests (``test_aws_iam.py``) and the enforcing stand-in
(``iam_proxy.py``). Three steps, each as AWS documents it:

* ``http_operation``: an HTTP request as botocore sends it (path-style S3,
  Lambda's REST paths, STS's query protocol, CloudWatch Logs' JSON protocol)
  -> (service, API operation, the parameters that matter to IAM);
* ``requests_for``: an API operation -> the (IAM action, resource ARN,
  condition keys) AWS evaluates for it (S3 names actions by permission, not by
  operation: ListObjectsV2 is s3:ListBucket on the bucket with s3:prefix,
  HeadObject is s3:GetObject, every part of a multipart upload is s3:PutObject,
  and only PutObject and CompleteMultipartUpload carry s3:if-none-match);
* ``allowed``: whether an Allow statement covers it (Action and Resource
  wildcards, the StringLike / StringEquals / Null conditions the generated
  policies use). The generated policies have no Deny and no NotAction, so
  nothing else of IAM's evaluation logic is needed; anything else is refused
  loudly rather than guessed.
"""
from __future__ import annotations

import fnmatch
import json
import re
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ACCOUNT, REGION = "123456789012", "us-east-1"

#: one API request: (service, operation, parameters)
Call = tuple[str, str, dict[str, Any]]


class Unknown(Exception):
    """A request this module cannot map to IAM actions (the message says which; add it)."""


# -- HTTP request -> API operation ------------------------------------------------------------
def caller(headers: dict[str, str], query: str = "") -> tuple[str, str] | None:
    """(access key id, service) of a SigV4-signed request (its Authorization header,
    or a presigned URL's X-Amz-Credential); None for an unsigned one."""
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    m = re.search(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/aws4_request", auth)
    if m is None:
        cred = (parse_qs(query).get("X-Amz-Credential") or [""])[0]
        m = re.match(r"([^/]+)/\d{8}/[^/]+/([^/]+)/aws4_request", cred)
    return (m.group(1), m.group(2)) if m else None


def _lambda_routes() -> list[tuple[str, re.Pattern[str], str, str]]:
    """(method, path pattern with named labels, operation, query discriminator) of every
    Lambda operation, from botocore's model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lambda")
    routes = []
    for op in model.operation_names:
        http = model.operation_model(op).http
        path, _, query = http["requestUri"].partition("?")
        parts = re.split(r"\{(\w+)\+?\}", path.rstrip("/"))  # literal, label, literal, ...
        pattern = "".join(f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts))
        # a route with a query discriminator (GetLayerVersionByArn's ?find=) is tried first
        routes.append((http["method"], re.compile(f"^{pattern}/?$"), op, query))
    routes.sort(key=lambda r: not r[3])
    return routes


_LAMBDA: list[tuple[str, re.Pattern[str], str, str]] = []


def _lambda_operation(method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[str, dict[str, Any]]:
    if not _LAMBDA:
        _LAMBDA.extend(_lambda_routes())
    for m, pattern, op, discriminator in _LAMBDA:
        if m != method or (discriminator and discriminator.split("=")[0] not in query):
            continue
        found = pattern.match(path)
        if found is None:
            continue
        params: dict[str, Any] = {k: unquote(v) for k, v in found.groupdict().items()}
        if body and body.lstrip().startswith(b"{") and op in ("CreateFunction", "UpdateFunctionConfiguration"):
            doc = json.loads(body)
            params.update({k: doc[k] for k in ("FunctionName", "Role") if k in doc})
        if op == "GetLayerVersionByArn" and "Arn" in query:
            arn = query["Arn"][0].split(":")
            params.update(LayerName=arn[6], VersionNumber=arn[7])
        if "VersionNumber" in params:
            params["VersionNumber"] = int(params["VersionNumber"])
        return op, params
    raise Unknown(f"no Lambda operation is {method} {path}")


def _s3_operation(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
                  body: bytes) -> tuple[str, dict[str, Any]]:
    """The S3 operation of a path-style request (botocore's style for an endpoint URL on 127.0.0.1)."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    header = {k.lower(): v for k, v in headers.items()}
    if not bucket:
        if method == "GET":
            return "ListBuckets", {}
        raise Unknown(f"no S3 operation is {method} /")
    p: dict[str, Any] = {"Bucket": bucket}
    if not key:
        if method == "GET" and "list-type" in query:
            return "ListObjectsV2", {**p, **({"Prefix": query["prefix"][0]} if "prefix" in query else {})}
        if method == "GET" and "location" in query:
            return "GetBucketLocation", p
        if method == "GET" and "uploads" in query:
            return "ListMultipartUploads", p
        if method == "GET" and not set(query) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}:
            return "ListObjects", {**p, **({"Prefix": query["prefix"][0]} if "prefix" in query else {})}
        if method == "HEAD":
            return "HeadBucket", p
        if method == "POST" and "delete" in query:
            root = ET.fromstring(body)
            keys = [el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]
            return "DeleteObjects", {**p, "Delete": {"Objects": [{"Key": k} for k in keys]}}
        if method == "PUT" and not query:
            return "CreateBucket", p
        raise Unknown(f"no S3 operation on a bucket is {method} ?{'&'.join(sorted(query))}")
    p["Key"] = key
    if "if-none-match" in header:
        p["IfNoneMatch"] = header["if-none-match"]
    if method in ("GET", "HEAD") and not set(query) - {"partNumber", "versionId", "response-content-type"}:
        return ("GetObject" if method == "GET" else "HeadObject"), p
    if method == "GET" and "uploadId" in query:
        return "ListParts", p
    if method == "PUT":
        if "x-amz-copy-source" in header:
            p["CopySource"] = unquote(header["x-amz-copy-source"])
            return ("UploadPartCopy" if "uploadId" in query else "CopyObject"), p
        if "uploadId" in query:
            return "UploadPart", p
        if not set(query) - {"x-id"}:
            return "PutObject", p
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload", p
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload", p
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in query else "DeleteObject"), p
    raise Unknown(f"no S3 operation on an object is {method} ?{'&'.join(sorted(query))}")


def http_operation(service: str, method: str, target: str, headers: dict[str, str], body: bytes) -> Call:
    """(service, operation, parameters) of one HTTP request to ``service`` (its SigV4 scope)."""
    where = urlsplit(target)
    query = parse_qs(where.query, keep_blank_values=True)
    if service == "s3":
        return (service, *_s3_operation(method, where.path, query, headers, body))
    if service == "lambda":
        return (service, *_lambda_operation(method, where.path, query, body))
    if service in ("sts", "iam"):  # the query protocol: Action in the form body or the query
        form = parse_qs(body.decode("utf-8", "replace")) if method == "POST" else query
        action = (form.get("Action") or query.get("Action") or [""])[0]
        if not action:
            raise Unknown(f"a {service} request without an Action: {method} {target}")
        return service, action, {k: v[0] for k, v in form.items() if k != "Action"}
    if service == "logs":  # the JSON protocol: X-Amz-Target names the operation
        amz_target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), "")
        return service, amz_target.rpartition(".")[2], json.loads(body or b"{}")
    raise Unknown(f"requests to {service} are not understood here")


# -- API operation -> what IAM authorizes -------------------------------------------------------
#: Lambda operations whose only resource is "*" (the service authorization reference)
#: (not ListLayerVersions: it is authorized on the layer's ARN, as the AccessDenied AWS answers names it)
_LAMBDA_STAR = {"ListFunctions", "GetAccountSettings", "ListLayers", "ListEventSourceMappings",
                "ListCodeSigningConfigs", "CreateEventSourceMapping"}
#: Lambda operations whose IAM action has another name
_LAMBDA_ACTION = {"Invoke": "InvokeFunction", "InvokeAsync": "InvokeAsync",
                  "InvokeWithResponseStream": "InvokeFunction", "GetLayerVersionByArn": "GetLayerVersion"}


def function_arn(name: str) -> str:
    """The ARN of a function given by name, name:qualifier, partial or full ARN (the qualifier dropped)."""
    if name.startswith("arn:"):
        return ":".join(name.split(":")[:7])
    if ":" in name:
        name = name.split(":")[0]
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def requests_for(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """The (IAM action, resource ARN, condition keys) AWS authorizes for one API request."""
    if service == "sts" and operation == "GetCallerIdentity":
        return []  # needs no permission
    if service == "lambda":
        action = f"lambda:{_LAMBDA_ACTION.get(operation, operation)}"
        if operation in _LAMBDA_STAR:
            return [(action, "*", {})]
        if "LayerName" in params:
            layer = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{params['LayerName']}"
            return [(action, f"{layer}:{params['VersionNumber']}" if "VersionNumber" in params else layer, {})]
        if "FunctionName" not in params:
            raise Unknown(f"lambda:{operation} without a FunctionName")
        out = [(action, function_arn(params["FunctionName"]), {})]
        if operation in ("CreateFunction", "UpdateFunctionConfiguration") and params.get("Role"):
            out.append(("iam:PassRole", params["Role"], {"iam:PassedToService": "lambda.amazonaws.com"}))
        return out
    if service == "s3":
        bucket = params.get("Bucket")
        obj = f"arn:aws:s3:::{bucket}/{params.get('Key', '')}"
        if operation in ("ListObjectsV2", "ListObjects"):
            return [("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": params["Prefix"]} if "Prefix" in params else {})]
        if operation == "HeadBucket":
            return [("s3:ListBucket", f"arn:aws:s3:::{bucket}", {})]
        if operation == "GetBucketLocation":
            return [("s3:GetBucketLocation", f"arn:aws:s3:::{bucket}", {})]
        if operation == "ListMultipartUploads":
            return [("s3:ListBucketMultipartUploads", f"arn:aws:s3:::{bucket}", {})]
        if operation == "ListBuckets":
            return [("s3:ListAllMyBuckets", "*", {})]
        if operation == "CreateBucket":
            return [("s3:CreateBucket", f"arn:aws:s3:::{bucket}", {})]
        if operation in ("GetObject", "HeadObject"):
            return [("s3:GetObject", obj, {})]
        if operation == "ListParts":
            return [("s3:ListMultipartUploadParts", obj, {})]
        if operation in ("PutObject", "CompleteMultipartUpload"):
            # only these two carry the If-None-Match condition key (S3's conditional writes)
            return [("s3:PutObject", obj, {"s3:if-none-match": params["IfNoneMatch"]} if params.get("IfNoneMatch") else {})]
        if operation in ("CreateMultipartUpload", "UploadPart"):
            return [("s3:PutObject", obj, {})]
        if operation in ("CopyObject", "UploadPartCopy"):
            return [("s3:GetObject", f"arn:aws:s3:::{params['CopySource'].lstrip('/').split('?')[0]}", {}),
                    ("s3:PutObject", obj, {})]
        if operation == "DeleteObject":
            return [("s3:DeleteObject", obj, {})]
        if operation == "DeleteObjects":
            return [("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{o['Key']}", {}) for o in params["Delete"]["Objects"]]
        if operation == "AbortMultipartUpload":
            return [("s3:AbortMultipartUpload", obj, {})]
    if service == "logs" and "logGroupName" in params:
        return [(f"logs:{operation}", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{params['logGroupName']}", {})]
    raise Unknown(f"what IAM authorizes for {service}:{operation} is not known here; add it")


# -- policy evaluation --------------------------------------------------------------------------
def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_like(value: str, pattern: str) -> bool:
    """IAM's wildcard match: '*' any run of characters, '?' one; ``${*}``, ``${?}`` and ``${$}``
    the characters themselves; every other character itself ('[' too: not fnmatch's classes)."""
    parts = []
    for token in re.findall(r"\$\{[*?$]\}|[*?]|[^*?$]+|\$", pattern):
        parts.append(re.escape(token[2]) if token.startswith("${") else ".*" if token == "*" else
                     "." if token == "?" else re.escape(token))
    regex = "".join(parts)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _conditions_hold(condition: dict[str, dict[str, Any]], keys: dict[str, str]) -> bool:
    for op, tests in condition.items():
        for key, expected in tests.items():
            wanted = _listed(expected)
            if op == "Null":  # "false": the key must be in the request
                if (key in keys) != (wanted[0] == "false"):
                    return False
            elif op in ("StringLike", "StringEquals"):
                match = iam_like if op == "StringLike" else str.__eq__
                if key not in keys or not any(match(keys[key], w) for w in wanted):
                    return False
            else:
                raise Unknown(f"condition operator {op} is not understood here")
    return True


def allowed(policy: dict[str, Any], action: str, resource: str, keys: dict[str, str]) -> bool:
    """Whether an Allow statement of ``policy`` covers the request (the policies have no Deny)."""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow" or "NotAction" in st or "NotResource" in st:
            raise Unknown(f"statement {st.get('Sid')!r}: only Allow with Action and Resource is understood here")
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(st["Action"])):
            continue
        if not any(iam_like(resource, r) for r in _listed(st["Resource"])):
            continue
        if _conditions_hold(st.get("Condition") or {}, keys):
            return True
    return False


def denied(policy: dict[str, Any], calls: list[Call]) -> set[tuple[str, str]]:
    """The (action, resource) of ``calls`` that ``policy`` does not allow."""
    return {(action, resource) for call in calls for action, resource, keys in requests_for(*call)
            if not allowed(policy, action, resource, keys)}


def without(policy: dict[str, Any], action: str) -> dict[str, Any]:
    """``policy`` less one action, wherever it is allowed."""
    statements = [dict(st, Action=[a for a in _listed(st["Action"]) if a != action]) for st in policy["Statement"]]
    return dict(policy, Statement=[st for st in statements if st["Action"]])


def merged(*policies: dict[str, Any]) -> dict[str, Any]:
    """One policy allowing what any of ``policies`` allows."""
    return {"Version": "2012-10-17", "Statement": [st for p in policies for st in p["Statement"]]}
