"""`wrenpack undeploy` against moto's Lambda and S3: it removes what `wrenpack deploy`
created for a family (functions, layer versions, runtime archives, layer uploads)
and nothing else: not another family's functions or the archive they use, not a
function named like the family that deploy did not make, not objects it cannot
tell are the family's."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

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
                       "--lambda-endpoint-url", "none", "--s3-endpoint-url", "none")
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


def _kept(out: str) -> dict[str, str]:
    return {k["what"]: k["why"] for k in json.loads(out)["kept"]}


def test_every_archive_deploy_made_is_removed_or_named_with_the_command_that_removes_it(aws_cli, role_arn, capsys,
                                                                                         tmp_path, bucket):
    """An earlier deploy's archive, and one the family's copies for other stores (lambda_auto_deploy,
    the bucket root among them) use, are removed by some run of undeploy, or named with the command
    that removes them; another family's archives are not listed, one used by many functions once."""
    lam, s3 = (admin_session().client(service, endpoint_url=aws_cli) for service in ("lambda", "s3"))
    base, cli, other, root = "wp-undo-arch", f"s3://{bucket}/cli", f"s3://{bucket}/cli-other", f"s3://{bucket}"
    runtime = _runtime(tmp_path, "wp_arch")
    (first,) = _deploy(capsys, base, role_arn, "--runtime-archive", runtime, "--memory", "256")
    (Path(runtime) / "python" / "wp_arch" / "__init__.py").write_text("V = 2\n")  # a dependency changed: redeploy
    (second,) = _deploy(capsys, base, role_arn, "--runtime-archive", runtime, "--memory", "256")
    earlier, current = first["runtime_archive"], second["runtime_archive"]
    assert earlier != current and first["function"] == second["function"]
    # another family's archives in the same store, one of them unused (its own earlier deploy's)
    theirs = _runtime(tmp_path, "wp_theirs")
    neighbour = _deploy(capsys, "wp-undo-nb", role_arn, "--runtime-archive", theirs)[0]["runtime_archive"]
    (Path(theirs) / "python" / "wp_theirs" / "__init__.py").write_text("V = 3\n")
    _deploy(capsys, "wp-undo-nb", role_arn, "--runtime-archive", theirs)
    # deploy names the family (and its functions' region) on the archive: the key names only the content
    assert s3.head_object(Bucket=bucket, Key=current.split("/", 3)[3])["Metadata"] == {
        deploy.ARCHIVE_DEPLOYS: f"{base}@us-east-1", deploy.ARCHIVE_FAMILY: base, deploy.ARCHIVE_REGION: "us-east-1"}
    # an archive of a deploy that tagged none (before wrenpack named the family on it), and one
    # uploaded for the family's functions in another region (which an undeploy here does not see),
    # tagged as deploy did before it named each deploy's family with its region
    untagged, abroad = ("cli/runtimes/runtime-" + digit * 64 + ".tar.gz" for digit in "01")
    s3.put_object(Bucket=bucket, Key=untagged, Body=b"x")
    s3.put_object(Bucket=bucket, Key=abroad, Body=b"x",
                  Metadata={deploy.ARCHIVE_FAMILY: base, deploy.ARCHIVE_REGION: "eu-west-1"})
    # lambda_auto_deploy's copies for clients of other stores: they use the template's archive, under cli/
    conf = lam.get_function_configuration(FunctionName=second["function"])
    settings = json.loads(conf["Environment"]["Variables"][deploy.ENV_SETTINGS])
    copies = {}
    for memory, store in ((512, other), (640, other), (768, root)):
        made = deploy.FunctionSettings(**dict(settings, memory=memory))
        copy = deploy.auto_deploy(lam, made.function_name(base), made, base, store_url=store)
        assert copy["Environment"]["Variables"][deploy.ENV_RUNTIME_ARCHIVE] == current
        copies.setdefault(store, []).append(copy["FunctionName"])

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", cli, "--yes", "--json")
    assert code == 0, err
    done, kept = json.loads(out), _kept(out)
    assert done["functions"] == [second["function"]]
    assert earlier in done["objects"]  # the earlier deploy's: the family's, and no function uses it
    assert f"undeploy --function-name {base} --storage {other}" in kept[f"object {current}"]  # its user's store
    assert f"aws s3 rm s3://{bucket}/{untagged}" in kept[f"object s3://{bucket}/{untagged}"]
    assert f"--storage {cli} --region eu-west-1" in kept[f"object s3://{bucket}/{abroad}"]
    assert not [what for what in kept if neighbour in what]  # another family's: not listed, not removed
    assert neighbour.split("/", 3)[3] in _keys(aws_cli, bucket, "cli/runtimes/")

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", other, "--yes", "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["functions"]) == sorted(copies[other])
    # outside the store: named once (not once per function), with the command that removes it
    assert [k["what"] for k in json.loads(out)["kept"]].count(f"object {current}") == 1
    assert f"undeploy --function-name {base} --storage {cli}" in _kept(out)[f"object {current}"]

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", root, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == copies[root]
    assert f"undeploy --function-name {base} --storage {cli}" in _kept(out)[f"object {current}"]

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", cli, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["objects"] == [current]  # no function uses it now: the family's goes
    assert current.split("/", 3)[3] not in _keys(aws_cli, bucket, "cli/runtimes/")
    assert _functions(lam, base) == set()
    code, out, _ = run(capsys, "undeploy", "--function-name", base, "--storage", cli, "--yes")
    assert code == 0 and "nothing to remove" in out and neighbour not in out
    # (this test's own: gone for the tests after it)
    for key in (untagged, abroad):
        s3.delete_object(Bucket=bucket, Key=key)
    assert run(capsys, "undeploy", "--function-name", "wp-undo-nb", "--storage", cli, "--yes")[0] == 0
    assert not [key for key in _keys(aws_cli, bucket, "cli/runtimes/") if key.endswith(".tar.gz")
                and key.split("/")[-1] in (neighbour.split("/")[-1], first["runtime_archive"].split("/")[-1])]


def test_bad_region_or_endpoint_is_one_line_exit_2_and_json_under_json(aws_cli, capsys):
    """With endpoints of the user's (an emulator), a region or endpoint botocore refuses
    was a traceback when the first client was made; and --json printed nothing for exit 2."""
    for bad in (("--region", " us-east-1"), ("--lambda-endpoint-url", "not a url"), ("--s3-endpoint-url", "not a url")):
        code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-bad", "--dry-run", *bad)
        assert code == 2 and len(err.strip().splitlines()) == 1, (bad, err)
        assert repr(bad[1]) in err and "Traceback" not in err, err
        code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-bad", "--dry-run", "--json", *bad)
        assert code == 2 and json.loads(out)["ok"] is False and repr(bad[1]) in json.loads(out)["message"], (bad, out)
    code, out, _ = run(capsys, "undeploy", "--function-name", "wp-undo-bad", "--json")  # (no --yes)
    assert code == 2 and "--yes" in json.loads(out)["message"]
    # deploy checks them the same way: one line, no traceback, exit 2 (and a document under --json)
    code, _, err = run(capsys, "deploy", "--function-name", "wp-undo-bad", "--lambda-endpoint-url", "not a url")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'not a url'" in err, err
    code, out, _ = run(capsys, "deploy", "--function-name", "wp-undo-bad", "--lambda-endpoint-url", "not a url", "--json")
    assert code == 2 and "'not a url'" in json.loads(out)["message"], out


def test_the_deploy_policy_lets_undeploy_read_an_archives_family():
    """The HEAD that reads an archive's metadata is s3:GetObject, which `iam-policy --for deploy`
    grants on the store's runtimes/ (at the bucket root too), and nowhere else."""
    from tests.aws.iam_eval import denied
    from tests.aws.iam_proxy import _Cfg
    from wrenpack.backends.aws.iam import iam_policy

    for storage, prefix in (("s3://wp-bucket/cli", "cli/"), ("s3://wp-bucket", "")):
        policy = iam_policy(_Cfg(storage, "wp-undo"), "deploy")
        head = [("s3", "HeadObject", {"Bucket": "wp-bucket", "Key": f"{prefix}runtimes/runtime-{'0' * 64}.tar.gz"})]
        assert denied(policy, head) == set()
        assert denied(policy, [("s3", "HeadObject", {"Bucket": "wp-bucket", "Key": "other/runtimes/x.tar.gz"})])


def test_an_archive_the_familys_functions_in_two_regions_use_goes_with_the_last_regions_undeploy(aws_cli, role_arn,
                                                                                                capsys, tmp_path, bucket):
    """probe10: deployed in us-east-1, then in us-west-2 (the same runtime: one archive), the
    archive named only the last region, and an undeploy in us-east-1 removed it while the
    us-west-2 function still used it. Deploy names every region on it; an undeploy keeps it while
    another region is named, says which undeploy removes it, and takes its own region out."""
    s3 = admin_session().client("s3", endpoint_url=aws_cli)
    base, cli = "wp-undo-regions", f"s3://{bucket}/cli"
    runtime = _runtime(tmp_path, "wp_regions")
    (east,) = _deploy(capsys, base, role_arn, "--runtime-archive", runtime, "--memory", "384")
    (west,) = _deploy(capsys, base, role_arn, "--runtime-archive", runtime, "--memory", "384", "--region", "us-west-2")
    assert east["runtime_archive"] == west["runtime_archive"]
    archive = east["runtime_archive"]
    key = archive.split("/", 3)[3]
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"][deploy.ARCHIVE_REGION] == "us-east-1,us-west-2"

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", cli, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == [east["function"]] and archive not in json.loads(out)["objects"]
    assert f"--storage {cli} --region us-west-2" in _kept(out)[f"object {archive}"]
    assert key in _keys(aws_cli, bucket, "cli/runtimes/")  # the us-west-2 function still uses it
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"][deploy.ARCHIVE_REGION] == "us-west-2"

    code, out, err = run(capsys, "undeploy", "--function-name", base, "--storage", cli, "--region", "us-west-2", "--yes",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == [west["function"]] and json.loads(out)["objects"] == [archive]
    assert key not in _keys(aws_cli, bucket, "cli/runtimes/")


def test_an_archive_two_families_share_in_two_regions_stays_until_both_undeploys(aws_cli, role_arn, capsys, tmp_path,
                                                                                 bucket):
    """Two families with the same runtime share one archive (its key names only its content). The
    archive named only the last family that uploaded it, so an undeploy of the first family, whose
    function used it, removed it while the other family's function in another region (which this
    undeploy does not see) still used it. Each deploy's family and region are named on it now."""
    s3 = admin_session().client("s3", endpoint_url=aws_cli)
    cli = f"s3://{bucket}/cli"
    runtime = _runtime(tmp_path, "wp_shared")
    (east,) = _deploy(capsys, "wp-undo-fam-a", role_arn, "--runtime-archive", runtime)
    (west,) = _deploy(capsys, "wp-undo-fam-b", role_arn, "--runtime-archive", runtime, "--region", "us-west-2")
    archive = east["runtime_archive"]
    key = archive.split("/", 3)[3]
    assert west["runtime_archive"] == archive
    assert deploy.archive_deploys(s3.head_object(Bucket=bucket, Key=key)["Metadata"]) == {
        ("wp-undo-fam-a", "us-east-1"), ("wp-undo-fam-b", "us-west-2")}

    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-fam-a", "--storage", cli, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == [east["function"]] and archive not in json.loads(out)["objects"]
    why = _kept(out)[f"object {archive}"]
    assert "function family wp-undo-fam-b's functions in us-west-2" in why
    assert f"--function-name wp-undo-fam-b --storage {cli} --region us-west-2" in why
    assert key in _keys(aws_cli, bucket, "cli/runtimes/")  # family b's function still uses it
    assert deploy.archive_deploys(s3.head_object(Bucket=bucket, Key=key)["Metadata"]) == {("wp-undo-fam-b", "us-west-2")}

    code, out, err = run(capsys, "undeploy", "--function-name", "wp-undo-fam-b", "--storage", cli, "--region",
                         "us-west-2", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["functions"] == [west["function"]] and json.loads(out)["objects"] == [archive]
    assert key not in _keys(aws_cli, bucket, "cli/runtimes/")


def test_an_archive_tagged_before_each_deploy_was_named_reads_as_its_family_in_its_regions():
    """Archives deploy tagged with one family and its regions (before ``ARCHIVE_DEPLOYS``) keep
    their meaning; the metadata written now reads back as written."""
    old = {deploy.ARCHIVE_FAMILY: "fam", deploy.ARCHIVE_REGION: "eu-west-1,us-east-1"}
    assert deploy.archive_deploys(old) == {("fam", "eu-west-1"), ("fam", "us-east-1")}
    assert deploy.archive_deploys({deploy.ARCHIVE_FAMILY: "fam"}) == {("fam", "")}
    assert deploy.archive_deploys({}) == set()
    pairs = {("a", "us-east-1"), ("b-2", "eu-west-1"), ("a", "eu-west-1")}
    written = deploy.archive_metadata(pairs)
    assert deploy.archive_deploys(written) == pairs
    assert written[deploy.ARCHIVE_FAMILY] == "a,b-2" and written[deploy.ARCHIVE_REGION] == "eu-west-1,us-east-1"


def test_a_suggested_undeploy_command_is_quoted_for_a_shell():
    """probe10: a store prefix with a space gave a command that, pasted, failed ("unrecognized arguments")."""
    from wrenpack.backends.aws.undeploy import _command

    assert _command("fam", "s3://bkt/my data") == "wrenpack undeploy --function-name fam --storage 's3://bkt/my data'"
