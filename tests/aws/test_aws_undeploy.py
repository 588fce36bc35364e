"""`wrenpack undeploy` against moto's Lambda and S3: it removes what `wrenpack deploy`
created for a family (functions, layer versions, runtime archives, layer uploads)
and nothing else: not another family's functions or the archive they use, not a
function named like the family that deploy did not make, not objects it cannot
tell are the family's."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
from botocore.exceptions import ClientError

import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.deploy as deploy
from tests.aws import test_aws_cli
from tests.aws.iam_proxy import admin_session
from tests.aws.test_aws_cli import run

aws_cli = test_aws_cli.aws_cli  # the fixture (moto's endpoints in the settings), shared

#: under WRENPACK_TEST_IAM=enforce these run as the deploy identity (tests/aws/iam_proxy.py)
pytestmark = pytest.mark.iam_identity("deploy")


def _runtime(tmp_path, name: str, layer: bool = False):
    """A tiny `wrenpack build-runtime` output: python/<name>/ (and layer.zip)."""
    build = tmp_path / name
    (build / "python" / name).mkdir(parents=True)
    (build / "python" / name / "__init__.py").write_text(f"NAME = {name!r}\n")
    if layer:
        with zipfile.ZipFile(build / "layer.zip", "w") as zf:
            zf.writestr(f"python/{name}.py", "X = 1\n")
    return str(build)


def _deploy(capsys, base, role_arn, *extra):
    code, out, err = run(capsys, "deploy", "--function-name", base, "--role", role_arn, "--json", *extra)
    assert code == 0, err
    return json.loads(out)["functions"]


def _keys(endpoint, bucket, prefix):
    s3 = admin_session().client("s3", endpoint_url=endpoint)
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def _functions(lam, base):
    names, marker = set(), None
    while True:
        page = lam.list_functions(**({"Marker": marker} if marker else {}))
        names |= {f["FunctionName"] for f in page["Functions"] if f["FunctionName"].startswith(base + "-")}
        marker = page.get("NextMarker")
        if not marker:
            return names


def test_undeploy_removes_the_familys_functions_layers_and_objects_and_nothing_else(aws_cli, role_arn, capsys,
                                                                                    tmp_path, bucket, monkeypatch):
    # (the test's own requests as the administrator: under WRENPACK_TEST_IAM=enforce wrenpack's are the deploy identity's)
    lam, s3 = (admin_session().client(service, endpoint_url=aws_cli) for service in ("lambda", "s3"))
    own, shared = _runtime(tmp_path, "wp_own"), _runtime(tmp_path, "wp_shared")
    # the family: two settings sets on its own archive, one on an archive another family uses too,
    # one on a layer uploaded through the store (as a layer over 50 MB is)
    mine = _deploy(capsys, "wp-undo", role_arn, "--runtime-archive", own, "--memory", "256", "--memory", "512")
    mine += _deploy(capsys, "wp-undo", role_arn, "--runtime-archive", shared, "--memory", "768")
    with monkeypatch.context() as patched:
        patched.setattr(deploy, "INLINE_ZIP_LIMIT", 0)
        mine += _deploy(capsys, "wp-undo", role_arn, "--runtime-dir", _runtime(tmp_path, "wp_layer", layer=True))
    # ... and one of its members serving another store: that store's callers use it
    elsewhere = _deploy(capsys, "wp-undo", role_arn, "--memory", "1024", "--storage", f"s3://{bucket}/cli-other")
    other = _deploy(capsys, "wp-undo-other", role_arn, "--runtime-archive", shared)  # another family, same bucket
    # a function named like the family that deploy did not make
    decoy = "wp-undo-0123456789"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("h.py", "def handler(e, c): return 1\n")
    lam.create_function(FunctionName=decoy, Role=role_arn, Runtime="python3.12", Handler="h.handler",
                        Code={"ZipFile": buf.getvalue()}, Environment={"Variables": {"OWNER": "someone"}})
    s3.put_object(Bucket=bucket, Key="cli/runtimes/someone-elses.tar.gz", Body=b"x")
    s3.put_object(Bucket=bucket, Key="cli/notes.txt", Body=b"x")
    own_archive, shared_archive = mine[0]["runtime_archive"], mine[2]["runtime_archive"]
    (upload,) = [k for k in _keys(aws_cli, bucket, "cli/deploy/")]
    layer_arn = mine[3]["layer"]
    family = {d["function"] for d in mine}
    assert len(family) == 4 and _functions(lam, "wp-undo") >= family | {decoy, elsewhere[0]["function"]}

    # --dry-run lists, changes nothing
    before = (_functions(lam, "wp-undo"), _keys(aws_cli, bucket, "cli/"))
    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["dry_run"] and set(planned["functions"]) == family
    assert planned["layer_versions"] == [layer_arn]
    assert set(planned["objects"]) == {own_archive, f"s3://{bucket}/{upload}"}
    kept = {k["what"]: k["why"] for k in planned["kept"]}
    assert "cli-other" in kept[f"function {elsewhere[0]['function']}"]
    assert other[0]["function"] in kept[f"object {shared_archive}"]
    assert f"object s3://{bucket}/cli/runtimes/someone-elses.tar.gz" in kept
    assert f"function {decoy}" not in kept  # not the family's: not even a candidate
    code, out, _ = run(capsys, "undeploy", "--function-name", "wp-undo", "--dry-run")
    assert code == 0 and "would remove (7)" in out and f"function {mine[0]['function']}" in out
    assert (_functions(lam, "wp-undo"), _keys(aws_cli, bucket, "cli/")) == before

    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo", "--yes", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["ok"] and not done["failed"] and set(done["functions"]) == family
    assert _functions(lam, "wp-undo") == {decoy, elsewhere[0]["function"]} | {d["function"] for d in other}
    assert lam.list_layer_versions(LayerName="wp-undo-runtime")["LayerVersions"] == []
    left = _keys(aws_cli, bucket, "cli/")
    assert own_archive.split("/", 3)[3] not in left and upload not in left
    assert {shared_archive.split("/", 3)[3], "cli/runtimes/someone-elses.tar.gz", "cli/notes.txt"} <= left
    # Nothing left: nothing to do
    code, out, _ = run(capsys, "undeploy", "--function-name", "wp-undo", "--yes")
    assert code == 0 and "nothing to remove" in out
    # (what stays is this test's own: gone for the tests after it)
    lam.delete_function(FunctionName=decoy)
    for key in ("cli/runtimes/someone-elses.tar.gz", "cli/notes.txt"):
        s3.delete_object(Bucket=bucket, Key=key)
    for base, where in (("wp-undo", f"s3://{bucket}/cli-other"), ("wp-undo-other", f"s3://{bucket}/cli")):
        assert run(capsys, "undeploy", "--function-name", base, "--storage", where, "--yes")[0] == 0
    assert _functions(lam, "wp-undo") == set() and shared_archive.split("/", 3)[3] not in _keys(aws_cli, bucket, "cli/")


class _Failing:
    """A Lambda client whose DeleteFunction of one function is refused."""

    def __init__(self, client, refused: str) -> None:
        self._client, self._refused = client, refused

    def delete_function(self, FunctionName: str):  # noqa: N803 - boto3's parameter name
        if FunctionName == self._refused:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "DeleteFunction")
        return self._client.delete_function(FunctionName=FunctionName)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_undeploy_asks_and_a_failure_removes_the_rest_and_exits_1(aws_cli, role_arn, capsys, tmp_path, bucket,
                                                                  monkeypatch):
    lam = admin_session().client("lambda", endpoint_url=aws_cli)
    done = _deploy(capsys, "wp-undo-fail", role_arn, "--runtime-archive", _runtime(tmp_path, "wp_fail"),
                   "--memory", "256", "--memory", "512", "--memory", "768")
    names = {d["function"] for d in done}
    archive = done[0]["runtime_archive"].split("/", 3)[3]
    # bad settings: one line naming the fix, exit 2, before anything changes
    code, _, err = run(capsys, "undeploy", "--function-name", "wp-undo-fail", "--yes", "--storage", str(tmp_path))
    assert code == 2 and "--storage s3://BUCKET/PREFIX" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "undeploy", "--function-name", "wp-undo-fail", "--yes", "--region", "us-east-1a",
                       "--lambda-endpoint-url", "", "--s3-endpoint-url", "")
    assert code == 2 and "use us-east-1" in err, err
    # no --yes: asked; with no terminal to answer on, a usage error before anything changes
    code, _, err = run(capsys, "undeploy", "--function-name", "wp-undo-fail")
    assert code == 2 and "--yes" in err and _functions(lam, "wp-undo-fail") == names
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run(capsys, "undeploy", "--function-name", "wp-undo-fail")
    assert code == 1 and "nothing removed" in out
    assert _functions(lam, "wp-undo-fail") == names

    refused = done[1]["function"]
    real = clients.lambda_client
    monkeypatch.setattr(clients, "lambda_client", lambda cfg: _Failing(real(cfg), refused))
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-fail")
    assert code == 1
    assert f"could not remove function {refused}" in err and "AccessDeniedException" in err
    assert _functions(lam, "wp-undo-fail") == {refused}  # the others are gone
    # the archive the refused function still uses is kept, and said so
    assert archive in _keys(aws_cli, bucket, "cli/runtimes/")
    assert f"keeping object s3://{bucket}/{archive}: function {refused} uses it and could not be removed" in out
    assert "1 could not be removed" in out
    monkeypatch.setattr(clients, "lambda_client", real)
    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-fail", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == [refused]
    assert _functions(lam, "wp-undo-fail") == set() and archive not in _keys(aws_cli, bucket, "cli/runtimes/")
