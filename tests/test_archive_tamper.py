"""A job's code changing the archived runtime's tree in /tmp (``wrenpack deploy
--runtime-archive``) must not reach another job's calls.

The tree is extracted to /tmp, which every job's code in the container can write
(same user) and which outlives invocations and runtime re-inits; every later job's
process imports from it. ``wrenpack.worker.runtime_archive`` fingerprints the tree in
the parent's memory right after extracting it; the isolation checks it before a new
domain's first call and before a fresh zygote, and extracts the archive again when it
changed. Here: the fingerprint sees each kind of change (in-process, the download
stood in by the archive's bytes), and a real worker (parent, zygote, one process per
domain, the archive served by moto on 127.0.0.1) never runs code job A planted in
job B's call.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import types
from typing import Any

import pytest

from wrenpack.worker import runtime_archive

#: the wrenpack under test (the worker runs it)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(runtime_archive.__file__))))
CLEAN = b"VALUE = 1\n"


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


FILES = {"wp_tamper_pkg/__init__.py": CLEAN, "wp_tamper_pkg/helper.py": b"HELP = 2\n", "wp_tamper_other.py": b"X = 3\n"}


@pytest.fixture
def container(tmp_path, monkeypatch):
    """A container's runtime start: ROOT under tmp_path, boto3's client serving the archive."""
    root = tmp_path / "tmp-runtime"
    data = _archive(FILES)
    downloads: list[int] = []

    def client(name):
        def get_object(Bucket, Key):
            downloads.append(1)
            return {"Body": io.BytesIO(data)}
        return types.SimpleNamespace(get_object=get_object)

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=client))
    for name, value in (("ROOT", str(root)), ("_ready", None), ("_recorded", None), ("_source", None), ("_hold", None)):
        monkeypatch.setattr(runtime_archive, name, value, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    monkeypatch.setenv("WRENPACK_RUNTIME_ARCHIVE", "s3://bucket/runtimes/runtime.tar.gz")
    monkeypatch.setenv("WRENPACK_RUNTIME_SHA256", hashlib.sha256(data).hexdigest())

    def start() -> str:
        where = runtime_archive.ensure_runtime()
        assert where is not None
        return where

    start.downloads = downloads  # type: ignore[attr-defined]
    yield start
    getattr(runtime_archive, "_release", lambda: None)()
    _rmtree(str(root))


def _run_worker(script: str, env: dict[str, str], cwd: Any) -> subprocess.CompletedProcess:
    """Run a worker script in a session of its own: on a timeout, it and everything it
    started is killed (nothing of it keeps the output pipes open, nothing stays behind)."""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # (a zygote or job process it left)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _rmtree(path: str) -> None:
    """A tree whose folders may be read-only, removed."""
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _writable(*dirs: str) -> None:
    """What a job's code does first: the tree's folders are read-only, and it is their owner."""
    for d in dirs:
        os.chmod(d, 0o755)


def _modify_same_size(tree: str) -> str:
    path = os.path.join(tree, "wp_tamper_pkg", "__init__.py")
    with open(path, "r+b") as f:  # (in place: same inode, same size, folder untouched)
        f.write(b"VALUE = 9\n")
    return "wp_tamper_pkg/__init__.py was changed"


def _modify_and_restore(tree: str) -> str:
    path = os.path.join(tree, "wp_tamper_pkg", "__init__.py")
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"VALUE = 9\n")
    with open(path, "r+b") as f:
        f.write(CLEAN)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # (mtime set back: ctime cannot be)
    return "wp_tamper_pkg/__init__.py was changed"


def _replace_by_rename(tree: str) -> str:
    pkg = os.path.join(tree, "wp_tamper_pkg")
    _writable(pkg)
    with open(os.path.join(pkg, "new"), "wb") as f:
        f.write(b"VALUE = 9\n")
    os.rename(os.path.join(pkg, "new"), os.path.join(pkg, "__init__.py"))
    os.chmod(pkg, 0o555)
    return "wp_tamper_pkg/__init__.py was replaced"


def _add_module(tree: str) -> str:
    pkg = os.path.join(tree, "wp_tamper_pkg")
    _writable(pkg)
    with open(os.path.join(pkg, "sub.py"), "w") as f:
        f.write("PLANTED = True\n")
    return "wp_tamper_pkg/sub.py was added"


def _add_pth(tree: str) -> str:
    _writable(tree)
    with open(os.path.join(tree, "zz-planted.pth"), "w") as f:
        f.write("import os\n")
    return "zz-planted.pth was added"


def _add_stdlib_shadow(tree: str) -> str:
    _writable(tree)
    with open(os.path.join(tree, "colorsys.py"), "w") as f:
        f.write("PLANTED = True\n")
    return "colorsys.py was added"


def _hard_link_out(tree: str) -> str:
    # A link elsewhere to write through (the tree's folders untouched): the link count is the file's ctime.
    os.link(os.path.join(tree, "wp_tamper_other.py"), os.path.join(os.path.dirname(tree), "outside-link"))
    os.unlink(os.path.join(os.path.dirname(tree), "outside-link"))
    return "wp_tamper_other.py was changed"


def _swap_whole_tree(tree: str) -> str:
    # The folder itself moved away and a copy put in its place (every inode new).
    os.rename(tree, tree + ".moved")
    shutil.copytree(tree + ".moved", tree, symlinks=True)
    _rmtree(tree + ".moved")
    return "its folder was replaced"


def _chmod_only(tree: str) -> str:
    _writable(os.path.join(tree, "wp_tamper_pkg"))
    os.chmod(os.path.join(tree, "wp_tamper_pkg"), 0o555)
    return "wp_tamper_pkg was changed"


@pytest.mark.parametrize("change", [_modify_same_size, _modify_and_restore, _replace_by_rename, _add_module, _add_pth,
                                    _add_stdlib_shadow, _hard_link_out, _swap_whole_tree, _chmod_only], ids=lambda f: f.__name__[1:])
def test_a_change_to_the_extracted_tree_is_seen_and_named(container, change):
    tree = container()
    assert runtime_archive.tampered() is None
    said = change(tree)
    assert runtime_archive.tampered() == said


def test_importing_from_the_tree_is_no_change(container):
    """The tree is made read-only (and as root no bytecode is written): an import leaves it as it was."""
    tree = container()
    code = "import wp_tamper_pkg.helper, wp_tamper_other, sys; print(wp_tamper_pkg.helper.HELP)"
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    flags = ["-B"] if sys.dont_write_bytecode else []  # (what a root worker's processes run with)
    out = subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "2", out.stderr
    assert runtime_archive.tampered() is None
    assert not os.path.exists(os.path.join(tree, "wp_tamper_pkg", "__pycache__"))


def test_a_new_process_never_trusts_a_tree_an_earlier_one_left(container):
    """A runtime re-init in the same container (/tmp kept) used to take the tree as it was
    found, ``.complete`` marker and all, with whatever a job's code had changed in it."""
    tree = container()
    _modify_same_size(tree)
    _add_module(tree)
    # The next process in the container: nothing of this one's memory.
    getattr(runtime_archive, "_release", lambda: None)()
    runtime_archive._ready = None
    runtime_archive._recorded = None
    again = container()
    assert len(container.downloads) == 2
    assert open(os.path.join(again, "wp_tamper_pkg", "__init__.py"), "rb").read() == CLEAN
    assert not os.path.exists(os.path.join(again, "wp_tamper_pkg", "sub.py"))
    assert runtime_archive.tampered() is None


def test_the_tree_never_stands_in_for_the_standard_library(container):
    tree = container()
    import sysconfig

    stdlib = os.path.normpath(sysconfig.get_paths()["stdlib"])
    where = [os.path.normpath(p) for p in sys.path]
    assert where.index(stdlib) < where.index(os.path.normpath(tree))
    # ... and before everything else (a bundled boto3 must not win over the archive's)
    assert all(where.index(os.path.normpath(tree)) < i for i, p in enumerate(where)
               if p != os.path.normpath(tree) and "site-packages" in p)


# -- a real worker: job A's code changes the tree, job B's call runs next -----------------------
_WORKER = r'''
import os, sys, time, pickle
import cloudpickle
from wrenpack.worker import runtime_archive  # Lambda's init: the runtime extracted, the zygote forked
tree = runtime_archive.ensure_runtime()
from wrenpack.worker import handler, isolation
MODE, MARKER = os.environ["TAMPER_MODE"], os.environ["TAMPER_MARKER"]
PLANT = "import os\nopen(%r, 'a').write('ran in %%d\\n' %% os.getpid())\n" % MARKER


def call(domain, fn):
    child = isolation.child_for(domain)
    fb, ab = cloudpickle.dumps(fn), cloudpickle.dumps(((), {}))
    now = time.time()
    head = {"t": "call", "job_id": "job-" + domain[:1], "call_id": "00000", "store": {"type": "local", "root": "/"},
            "args": {"inline": ""}, "attempt": 0, "segment": 0, "timeout_s": 60.0, "function_name": "f",
            "checkpoint": None, "fkey": domain, "func_len": len(fb), "start": now, "deadline": now + 60,
            "memory_mb": 128, "request_id": "r", "extra": {}}
    got, data, fds = isolation.run_call(child, head, fb + ab, [], lambda h, b: ({"error": "no"}, b""), now + 60)
    isolation.request_spare()
    return got.get("kind"), pickle.loads(bytes(data))


def job_a():  # job A's code: it changes the tree every later job's process imports from
    pkg = os.path.join(tree, "wp_tamper_pkg")
    os.chmod(tree, 0o755)
    os.chmod(pkg, 0o755)
    if MODE in ("modify", "modify-kill-zygote", "modify-archive-gone"):
        with open(os.path.join(pkg, "__init__.py"), "w") as f:
            f.write(PLANT + "VALUE = 666\n")
    elif MODE == "add":
        with open(os.path.join(pkg, "sub.py"), "w") as f:
            f.write(PLANT)
        with open(os.path.join(tree, "colorsys.py"), "w") as f:
            f.write(PLANT)
    elif MODE == "pth":
        with open(os.path.join(tree, "zz-planted.pth"), "w") as f:
            f.write(PLANT.replace("\n", ";").rstrip(";") + "\n")
    return "changed"


def job_b():  # job B's code: imports what its runtime gives it
    import site
    import wp_tamper_pkg
    try:
        import wp_tamper_pkg.sub  # noqa: F401
        sub = True
    except ImportError:
        sub = False
    import colorsys
    site.addsitedir(os.path.dirname(os.path.dirname(wp_tamper_pkg.__file__)))  # (as a library might)
    return wp_tamper_pkg.VALUE, sub, getattr(colorsys, "PLANTED", False), os.path.dirname(os.path.dirname(wp_tamper_pkg.__file__))


print("A", call("a" * 64 + "/fa", job_a), flush=True)
if MODE == "modify-kill-zygote":
    os.kill(isolation._zygote.pid, 9)  # (job A's code can: same user)
    try:  # a fresh zygote, while job A's domain is the current one: not from the changed tree
        isolation._replace_zygote(isolation._zygote)
        print("respawn started", flush=True)
    except isolation.ChildGone as exc:
        print("respawn refused:", exc, flush=True)
if MODE == "modify-archive-gone":  # (the archive cannot be downloaded again)
    import boto3
    bucket, _, key = os.environ["WRENPACK_RUNTIME_ARCHIVE"][5:].partition("/")
    boto3.client("s3").delete_object(Bucket=bucket, Key=key)
try:
    print("B", call("b" * 64 + "/fb", job_b), flush=True)
except isolation.ChildGone as exc:
    print("B failed:", exc, flush=True)
print("tree", tree, "cost", getattr(runtime_archive, "last_check", None), flush=True)
isolation.end_child()
isolation.stop()
'''


@pytest.fixture
def served_archive(moto_endpoint, bucket):
    import boto3

    data = _archive(FILES)
    sha = hashlib.sha256(data).hexdigest()
    key = f"tamper/runtimes/runtime-{sha}.tar.gz"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    yield {"AWS_ENDPOINT_URL_S3": moto_endpoint, "WRENPACK_RUNTIME_ARCHIVE": f"s3://{bucket}/{key}", "WRENPACK_RUNTIME_SHA256": sha}
    s3.delete_object(Bucket=bucket, Key=key)


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not hasattr(os, "fork"),
                    reason="the worker's isolation (zygote, one process per domain) needs Linux with pidfd_open")
# "add" and "pth" run with -m slow only: past the change, their path is [modify]'s (the change is seen at the
# next call, the tree extracted again, nothing planted runs), and that these changes are seen is
# test_a_change_to_the_extracted_tree_is_seen_and_named's [add_module], [add_stdlib_shadow] and [add_pth]
@pytest.mark.parametrize("mode", ["modify", pytest.param("add", marks=pytest.mark.slow),
                                  pytest.param("pth", marks=pytest.mark.slow), "modify-kill-zygote", "modify-archive-gone"])
def test_code_a_job_planted_in_the_tree_never_runs_in_a_later_jobs_call(served_archive, tmp_path, mode):
    marker = tmp_path / "planted-ran"
    env = dict(os.environ, **served_archive, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"), TAMPER_MODE=mode,
               TAMPER_MARKER=str(marker), PYTHONPATH=REPO, AWS_LAMBDA_FUNCTION_NAME="wp-archive-test")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("WRENPACK_LOCAL_WORKER", None)
    try:
        out = _run_worker(_WORKER, env, tmp_path)
    finally:
        _rmtree(str(tmp_path / "rt"))
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert out.returncode == 0 and "A" in lines and "tree" in lines, out.stdout + out.stderr
    assert "changed" in lines["A"], out.stdout + out.stderr
    ran = marker.read_text() if marker.exists() else ""
    assert not ran, f"code job A planted in the runtime tree ran in job B's call: {ran}\n{out.stdout}"
    if mode == "modify-archive-gone":  # B's call fails, saying what happened, in one line
        (failed,) = [line for line in out.stdout.splitlines() if line.startswith("B failed")]
        print(failed)
        assert failed.startswith("B failed: the runtime tree in /tmp was changed by an earlier job's code "
                                 "(wp_tamper_pkg/__init__.py was changed) and extracting the runtime archive again "
                                 "failed ("), failed
        assert failed.endswith("; the call did not run") and "NoSuchKey" in failed, failed
        return
    assert "B" in lines and "B failed" not in out.stdout, out.stdout + out.stderr
    kind, outcome = eval(lines["B"][2:], {})  # (the reply's kind and the call's outcome, printed as a tuple)
    value, sub, shadowed, tree = outcome[1]
    assert (kind, value, sub, shadowed) == ("ok", 1, False, False), out.stdout + out.stderr
    assert tree == lines["tree"].split()[1]  # (the same folder, extracted again)
    assert "was changed by a job's code" in out.stderr, out.stderr
    if mode == "modify-kill-zygote":
        assert "respawn refused: the runtime tree in /tmp was changed by a job's code (wp_tamper_pkg/__init__.py was " \
               "changed): no process is started from it" in out.stdout, out.stdout + out.stderr
    print(json.dumps({"mode": mode, "check_s": lines["tree"].split("cost ")[1]}))


# -- the zygote is forked at the runtime's init, never while an event is in hand ---------------
_FIRST_EVENT = r'''
import os, sys, time, pickle
import cloudpickle
from wrenpack.worker import runtime_archive  # Lambda's init: it loads the handler's module
from wrenpack.worker import isolation
SECRET = "c2VjcmV0LW9mLXRoZS1maXJzdC1ldmVudA=="
try:  # the container's first event (whatever it holds: the handler refuses this one)
    runtime_archive.handler({"v": 1, "secret": SECRET, "job_id": "first"}, None)
except Exception as exc:
    print("first event refused:", type(exc).__name__, flush=True)


def job_b():  # a later job's code looks through its own process for an event someone had
    found = []
    f = sys._getframe()
    while f is not None:
        found += [v["secret"] for v in f.f_locals.values() if isinstance(v, dict) and "secret" in v]
        f = f.f_back
    return found


child = isolation.child_for("b" * 64 + "/fb")
fb, ab = cloudpickle.dumps(job_b), cloudpickle.dumps(((), {}))
now = time.time()
head = {"t": "call", "job_id": "job-b", "call_id": "00000", "store": {"type": "local", "root": "/"},
        "args": {"inline": ""}, "attempt": 0, "segment": 0, "timeout_s": 60.0, "function_name": "f",
        "checkpoint": None, "fkey": "fb", "func_len": len(fb), "start": now, "deadline": now + 60,
        "memory_mb": 128, "request_id": "r", "extra": {}}
got, data, fds = isolation.run_call(child, head, fb + ab, [], lambda h, b: ({"error": "no"}, b""), now + 60)
print("B", got.get("kind"), pickle.loads(bytes(data)), flush=True)
try:  # the parent, once a job's code has run, imports nothing from the tree (it may have been changed)
    import wp_tamper_other  # noqa: F401
    print("parent import done", flush=True)
except ImportError as exc:
    print("parent import refused:", exc, flush=True)
import colorsys  # noqa: F401 - (elsewhere: as usual)
print("parent stdlib import done", flush=True)
isolation.end_child()
isolation.stop()
'''


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not hasattr(os, "fork"),
                    reason="the worker's isolation (zygote, one process per domain) needs Linux with pidfd_open")
def test_a_later_jobs_process_holds_nothing_of_the_containers_first_event(served_archive, tmp_path):
    """With the archive's handler, the handler's module (whose import forks the zygote) was
    loaded at the first event, not at the runtime's init: the zygote, and every job's process
    forked from it, held that event, secret and all, on its stack."""
    env = dict(os.environ, **served_archive, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"), PYTHONPATH=REPO,
               AWS_LAMBDA_FUNCTION_NAME="wp-archive-test")
    env.pop("WRENPACK_LOCAL_WORKER", None)
    try:
        out = _run_worker(_FIRST_EVENT, env, tmp_path)
    finally:
        _rmtree(str(tmp_path / "rt"))
    lines = [line for line in out.stdout.splitlines() if line.startswith("B ")]
    assert out.returncode == 0 and lines, out.stdout + out.stderr
    assert lines == ["B ok ('ok', [])"], "a job's process holds the first event's secret: " + lines[0]


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not hasattr(os, "fork"),
                    reason="the worker's isolation (zygote, one process per domain) needs Linux with pidfd_open")
def test_the_secret_holding_process_imports_nothing_from_the_tree_once_a_job_ran(served_archive, tmp_path):
    """The current domain's code can change the tree at any moment, between two checks: a module
    the worker's parent imported from it afterwards would run beside every later job's secret."""
    env = dict(os.environ, **served_archive, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"), PYTHONPATH=REPO,
               AWS_LAMBDA_FUNCTION_NAME="wp-archive-test")
    env.pop("WRENPACK_LOCAL_WORKER", None)
    try:
        out = _run_worker(_FIRST_EVENT, env, tmp_path)
    finally:
        _rmtree(str(tmp_path / "rt"))
    assert out.returncode == 0 and "parent stdlib import done" in out.stdout, out.stdout + out.stderr
    assert "parent import refused: wp_tamper_other is not imported into the worker's process that holds the jobs' " \
           "secrets: it is in the runtime tree in /tmp, which a job's code can change; import it at the worker's " \
           "init" in out.stdout, out.stdout + out.stderr


def test_a_link_left_at_the_lock_file_truncates_nothing(container, tmp_path):
    """A job's code could leave a link at the extraction's lock file: the next runtime
    process opened it for writing, truncating whatever file of the user it pointed at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    root = runtime_archive.ROOT
    os.makedirs(root, exist_ok=True)
    os.symlink(victim, os.path.join(root, os.environ["WRENPACK_RUNTIME_SHA256"] + ".lock"))
    container()
    assert victim.read_text() == "keep me\n"


# -- end to end: Lambda's runtime (RIE + awslambdaric), the real handler, two jobs in one container -----
def _e2e_job_a(tree_marker: str) -> str:
    """Job A's code: rewrite the runtime's package so that it reports who imports it."""
    import wp_tamper_pkg

    pkg = os.path.dirname(wp_tamper_pkg.__file__)
    os.chmod(os.path.dirname(pkg), 0o755)
    os.chmod(pkg, 0o755)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write(f"import os\nopen({tree_marker!r}, 'a').write('ran in %d\\n' % os.getpid())\nVALUE = 666\n")
    return pkg


def _e2e_job_b(_: int) -> int:
    import wp_tamper_pkg

    return wp_tamper_pkg.VALUE


def test_through_lambdas_runtime_job_a_changing_the_tree_does_not_reach_job_b(request, moto_endpoint, bucket, tmp_path,
                                                                            monkeypatch):
    """The deployed archive function in an emulated container (RIE + awslambdaric, one
    execution environment): job A's call rewrites a module of the runtime, job B's call
    imports it. Job B's call returned job A's value before (its code ran in B's call)."""
    import importlib.util

    from tests.aws import servers

    if importlib.util.find_spec("awslambdaric") is None:
        pytest.skip("awslambdaric is not installed (pip install -e '.[test]'): Lambda's runtime cannot be emulated")
    try:
        servers.rie_binary()
    except servers.Unavailable as exc:
        pytest.skip(f"the Lambda runtime interface emulator is not available: {exc}")
    lambda_endpoint = request.getfixturevalue("lambda_endpoint")
    import wrenpack
    from tests.aws.runtime_dates import deploy_as_of_a_live_day
    from wrenpack.backends.aws.deploy import DeployRequest, deploy_functions
    from wrenpack.config import current
    from wrenpack.executor import Executor

    deploy_as_of_a_live_day(monkeypatch)
    build = tmp_path / "build" / "python"
    for name, data in FILES.items():
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_bytes(data)
    (build.parent / "manifest.json").write_text(json.dumps({"target": {"python": f"{sys.version_info.major}."
                                                                                f"{sys.version_info.minor}",
                                                                      "arch": "x86_64"}, "cache_key": "tamper-test"}))
    base_env = dict(lambda_endpoint.base_env)
    lambda_endpoint.base_env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, WRENPACK_RUNTIME_ROOT=str(tmp_path / "rt"))
    cfg = current(function_name="wp-tamper", storage=f"s3://{bucket}/tamper-e2e", aws_region="us-east-1",
                  s3_endpoint_url=moto_endpoint, lambda_endpoint_url=lambda_endpoint.url)
    marker = tmp_path / "planted-ran"
    name = None
    try:
        done = deploy_functions(cfg, DeployRequest(memory=[1024], timeout=[20], ephemeral_storage=[512],
                                                   role=lambda_endpoint.role_arn, runtime_archive=str(build.parent)))
        name = done[0]["function"]
        lambda_endpoint.environments[name] = 1  # (one container: both jobs run in it)
        with Executor(backend="lambda", storage=f"s3://{bucket}/tamper-e2e", s3_endpoint_url=moto_endpoint,
                      lambda_endpoint_url=lambda_endpoint.url, function_name="wp-tamper", aws_region="us-east-1",
                      memory=1024, timeout=20, ephemeral_storage=512, concurrency=1, retries=0,
                      runtime=str(build.parent)) as ex:
            changed = wrenpack.remote(_e2e_job_a, executor=ex).map([str(marker)])
            assert wrenpack.get(changed)[0].endswith("wp_tamper_pkg")
            assert wrenpack.get(wrenpack.remote(_e2e_job_b, executor=ex).map([1])) == [1]
        assert not marker.exists(), f"code job A planted ran in job B's call: {marker.read_text()}"
        log = (lambda_endpoint.log_dir / f"rie-{name}-0.log").read_text(errors="replace")
        assert "the runtime tree in /tmp was changed by a job's code (wp_tamper_pkg/__init__.py was changed)" in log, log
    finally:
        lambda_endpoint.base_env.clear()
        lambda_endpoint.base_env.update(base_env)
        with lambda_endpoint._pools_lock:
            pools = [lambda_endpoint.pools.pop(n) for n in list(lambda_endpoint.pools) if n == name]
        for pool in pools:
            for emu in pool.emulators:
                emu.stop()
        _rmtree(str(tmp_path / "rt"))
