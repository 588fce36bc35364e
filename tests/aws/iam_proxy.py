"""An IAM enforcement stand-in for the AWS stand-ins: every request signed with
one of wrenpack's identities is judged against that identity's generated
policy (``wrenpack.backends.aws.iam.iam_policy``) before it reaches the server.

moto's own IAM enforcement cannot judge these policies (test_aws_iam.py's
docstring says why), so the judging is done here, with ``iam_eval``:

* ``Enforcer``: who sent a request (the access key id in its SigV4
  Authorization header: each identity has stand-in credentials of its own,
  ``credentials``), what IAM authorizes for it, and whether the identity's
  policy allows that; it answers a refusal as AWS does (S3: 403 XML
  ``AccessDenied``; Lambda: 403 ``AccessDeniedException``) and keeps a log of
  every judged request (``take``, ``denials``).
* ``IamProxy``: an HTTP proxy on 127.0.0.1 that puts an ``Enforcer`` in front
  of moto (S3, the Lambda control plane) or ``rclone serve s3``.
* The Lambda dispatcher (``servers.Dispatcher.authorize``) asks the same
  ``Enforcer`` before it runs an Invoke or answers GetAccountSettings, and gives
  the runtimes the worker's credentials, as Lambda gives a function its role's.

Requests signed with any other key (the tests' own ``testing``: fixtures
creating buckets and roles, tests looking at what wrenpack did) are forwarded
unjudged: they stand for an administrator, not for wrenpack.

``WRENPACK_TEST_IAM=enforce`` puts the whole AWS suite under it (see
tests/aws/conftest.py); otherwise the tests that ask for ``iam_stack`` get an
enforced stack of their own.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from tests.aws import iam_eval
from tests.aws.iam_eval import ACCOUNT, REGION, Call, Unknown
from tests.aws.servers import serve_on_loopback
from wrenpack.backends.aws.iam import ROLES, iam_policy

#: the whole AWS suite runs under enforcement (``WRENPACK_TEST_IAM=enforce``), read once at import:
#: each test's own environment has its WRENPACK_* variables removed
ENFORCED = os.environ.get("WRENPACK_TEST_IAM") == "enforce"
#: the tests' own credentials (tests/conftest.py ``aws_env``): an administrator, never judged
ADMIN = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: what the whole-suite run scopes the policies to: any prefix of the test bucket, any function family
SUITE_BUCKET = "wrenpack-test"
#: the functions' execution role (tests/conftest.py ``role_arn``): the one deploy may pass
WORKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/wrenpack-worker-role"


def admin_session() -> Any:
    """A boto3 session with the tests' own credentials, whatever the environment holds."""
    import boto3

    return boto3.session.Session(region_name=REGION, aws_access_key_id=ADMIN["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=ADMIN["AWS_SECRET_ACCESS_KEY"])


def credentials(role: str) -> dict[str, str]:
    """The stand-in credentials of one of wrenpack's identities (``ROLES``), or the tests' own ("admin")."""
    if role == "admin":
        return dict(ADMIN)
    assert role in ROLES, role
    return {"AWS_ACCESS_KEY_ID": f"AKIAWRENPACK{role.upper()}", "AWS_SECRET_ACCESS_KEY": f"secret-of-{role}"}


_ROLE_OF_KEY = {credentials(role)["AWS_ACCESS_KEY_ID"]: role for role in ROLES}


@dataclass
class Judged:
    """One request an identity sent, and what of it its policy refused."""

    role: str
    call: Call
    refused: set[tuple[str, str]] = field(default_factory=set)
    #: why the request could not be judged at all (then it is refused)
    unknown: str | None = None


class _Cfg:
    """The settings ``iam_policy`` reads."""

    def __init__(self, storage: str, function_name: str) -> None:
        self.storage, self.function_name, self.aws_region = storage, function_name, REGION


class Enforcer:
    """Judges requests by the identity that signed them (see the module's docstring)."""

    def __init__(self) -> None:
        #: identity -> its policy now (no policy: everything it asks is refused)
        self.policies: dict[str, dict[str, Any]] = {}
        self.log: list[Judged] = []
        #: every refused request of the session (``take`` and ``clear`` leave it alone)
        self.refused: list[Judged] = []
        self._lock = threading.Lock()

    # -- the policies ------------------------------------------------------------------------
    def scope(self, storage: str, function_name: str, worker_role: str) -> None:
        """Each identity holds exactly its generated policy for this store and function family."""
        cfg = _Cfg(storage, function_name)
        self.policies = {role: iam_policy(cfg, role, ACCOUNT, worker_role=worker_role) for role in ROLES}

    def scope_suite(self, worker_role: str) -> None:
        """The policies for any prefix of the test bucket and any function family (the whole-suite
        run: its tests use many prefixes and families; ``test_aws_iam.py`` checks the exact scope)."""
        policies = {}
        for role in ROLES:
            made = [iam_policy(_Cfg(storage, "*"), role, ACCOUNT, worker_role=worker_role)
                    for storage in (f"s3://{SUITE_BUCKET}", f"s3://{SUITE_BUCKET}/*")]
            policies[role] = iam_eval.merged(*made)
        self.policies = policies

    @contextlib.contextmanager
    def scoped(self, storage: str, function_name: str, worker_role: str) -> Iterator["Enforcer"]:
        saved = self.policies
        self.scope(storage, function_name, worker_role)
        try:
            yield self
        finally:
            self.policies = saved

    # -- judging -------------------------------------------------------------------------------
    def judge(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        """None to let the request through, else AWS's refusal: (status, headers, body)."""
        who = iam_eval.caller(headers, urlsplit(target).query)
        if who is None or who[0] not in _ROLE_OF_KEY:
            return None  # unsigned, or the tests' own key: not wrenpack's
        key, service = who
        role = _ROLE_OF_KEY[key]
        policy = self.policies.get(role)
        try:
            call = iam_eval.http_operation(service, method, target, headers, body)
            asked = iam_eval.requests_for(*call)
            refused = {(a, r) for a, r, keys in asked if policy is None or not iam_eval.allowed(policy, a, r, keys)}
            judged = Judged(role, call, refused)
        except (Unknown, ValueError, KeyError, SyntaxError) as exc:  # SyntaxError: a body that is not XML
            judged = Judged(role, (service, method, {"target": target}), {("?", str(exc))}, unknown=str(exc))
        with self._lock:
            self.log.append(judged)
            if judged.refused:
                self.refused.append(judged)
        if not judged.refused:
            return None
        action, resource = sorted(judged.refused)[0]
        return _refusal(service, method, role, action, resource, judged.unknown)

    def missing(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes] | None:
        """S3's answer to an identity's GetObject/HeadObject of a key that does not exist: 404 only to
        one allowed to list it (s3:ListBucket, here with the key as s3:prefix), else 403 AccessDenied
        (S3 does not tell a caller who may not list whether a key exists). None: the 404 stands."""
        who = iam_eval.caller(headers, urlsplit(target).query)
        if who is None or who[0] not in _ROLE_OF_KEY or who[1] != "s3":
            return None
        role = _ROLE_OF_KEY[who[0]]
        service, operation, params = iam_eval.http_operation("s3", method, target, headers, b"")
        if operation not in ("GetObject", "HeadObject"):
            return None
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        policy = self.policies.get(role)
        if policy is not None and iam_eval.allowed(policy, "s3:ListBucket", bucket, {"s3:prefix": params["Key"]}):
            return None
        judged = Judged(role, (service, operation, params), {("s3:ListBucket", f"{bucket} (a missing key: 403, not 404)")})
        with self._lock:
            self.log.append(judged)
            self.refused.append(judged)
        return _refusal("s3", method, role, "s3:ListBucket", bucket, None)

    def take(self, role: str | None = None) -> list[Call]:
        """The calls judged since the last ``take`` (of ``role`` only, if given; the rest are kept)."""
        with self._lock:
            out = [j for j in self.log if role is None or j.role == role]
            self.log = [j for j in self.log if not (role is None or j.role == role)]
        return [j.call for j in out if j.unknown is None]

    def denials(self) -> list[Judged]:
        """Every request refused this session, in order."""
        with self._lock:
            return list(self.refused)

    def clear(self) -> None:
        with self._lock:
            self.log = []


def _refusal(service: str, method: str, role: str, action: str, resource: str,
             unknown: str | None) -> tuple[int, dict[str, str], bytes]:
    """AWS's answer to a request no statement allows, in the service's protocol."""
    rid = uuid.uuid4().hex.upper()[:16]
    user = f"arn:aws:iam::{ACCOUNT}:user/wrenpack-{role}"
    message = (f"User: {user} is not authorized to perform: {action} on resource: \"{resource}\" "
               f"because no identity-based policy allows the {action} action" if unknown is None
               else f"the IAM stand-in cannot judge this request: {unknown}")
    if service == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                f"<Message>{escape(message)}</Message><RequestId>{rid}</RequestId><HostId>{rid}</HostId></Error>").encode()
        return 403, {"Content-Type": "application/xml", "x-amz-request-id": rid}, b"" if method == "HEAD" else body
    if service == "lambda":
        return 403, {"Content-Type": "application/json", "x-amzn-ErrorType": "AccessDeniedException",
                     "x-amzn-RequestId": rid}, json.dumps({"Type": "User", "Message": message}).encode()
    if service == "logs":
        return 400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": rid}, \
            json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
    body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{escape(message)}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>").encode()
    return 403, {"Content-Type": "text/xml"}, body


def reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    """Send a whole answer on ``handler`` (HTTP/1.1, with its length)."""
    try:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
    except OSError:  # the client went away
        handler.close_connection = True


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, by its Content-Length or its chunks."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class IamProxy:
    """``enforcer`` in front of the HTTP server at ``target`` (moto, rclone), on 127.0.0.1.

    The request goes on byte for byte, its Host header too: rclone checks the
    SigV4 signature, which covers the Host the client signed."""

    def __init__(self, target: str, enforcer: Enforcer) -> None:
        self.target = urlsplit(target)
        self.enforcer = enforcer
        self.server, self.url, self._thread = serve_on_loopback(self._handler_class())

    def _handler_class(self) -> type:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = read_body(self)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                refusal = proxy.enforcer.judge(self.command, self.path, headers, body)
                if refusal is not None:
                    return reply(self, *refusal)
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                                 headers=headers)
                    resp = conn.getresponse()
                    out = resp.read()
                    if resp.status == 404 and self.command in ("GET", "HEAD"):
                        refusal = proxy.enforcer.missing(self.command, self.path, headers)
                        if refusal is not None:
                            return reply(self, *refusal)
                    kept = {k: v for k, v in resp.getheaders()
                            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")}
                    if self.command == "HEAD" and resp.getheader("Content-Length"):
                        kept["Content-Length"] = resp.getheader("Content-Length")  # the object's size, not 0
                        self.send_response(resp.status)
                        for k, v in kept.items():
                            self.send_header(k, v)
                        self.end_headers()
                        return
                    reply(self, resp.status, kept, out)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
