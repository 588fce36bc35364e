"""End-to-end runtime builds (real pip-compile, real PyPI wheels) and unit tests of the parts.

The small runtime (six, idna, msgpack with its compiled extension, cloudpickle)
is built once per session into a session cache; pip's own cache keeps the
downloads quick on repeated runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from importlib.metadata import version

import pytest

import runtime_builder
from runtime_builder import budget, elf, pack, trim, verify
from wrenpack.cli import main as cli_main
from wrenpack.errors import BudgetExceeded, BuildError, NoSuitableWheel

#: the small runtime's packages (the session's ``small_runtime``, tests/conftest.py)
PKGS = ["six", "idna", "msgpack"]


@pytest.fixture(scope="session")
def cache(runtime_cache):
    return runtime_cache


@pytest.fixture(scope="session")
def small(small_runtime):
    """The small runtime of PKGS, built once per session (tests/conftest.py; test_runtime_local runs on it too)."""
    return small_runtime


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_small_runtime_layout_lock_and_manifest(small):
    assert not small.cache_hit
    for name in ("python", "manifest.json", "layer.zip", "runtime.tar.zst", "requirements.lock"):
        assert os.path.exists(os.path.join(small.output, name)), name
    lock = open(small.lock).read()
    assert f"cloudpickle=={version('cloudpickle')}" in lock  # worker matches the client
    assert "--hash=sha256:" in lock and "msgpack==" in lock
    m = small.manifest
    names = {p["name"] for p in m["packages"]}
    assert {"six", "idna", "msgpack", "cloudpickle"} <= names
    assert m["sizes"]["trimmed"] < m["sizes"]["raw"]
    assert m["rules"]["strip-so"]["bytes_saved"] > 0  # msgpack's extension stripped, safely
    assert "msgpack._cmsgpack" in m["verified"]["modules"] and m["verified"]["ok"]
    assert runtime_builder.site_dir(small.output) == small.site_dir
    # hash-based pyc were compiled, no stray dist-info files
    pyc = [f for f in os.listdir(os.path.join(small.site_dir, "idna", "__pycache__")) if f.endswith(".pyc")]
    assert pyc
    with open(os.path.join(small.site_dir, "idna", "__pycache__", pyc[0]), "rb") as f:
        assert struct.unpack("<I", f.read(8)[4:])[0] & 1  # flags: hash-based
    info = [d for d in os.listdir(small.site_dir) if d.startswith("msgpack-")][0]
    assert "RECORD" not in os.listdir(os.path.join(small.site_dir, info))
    assert "METADATA" in os.listdir(os.path.join(small.site_dir, info))


def test_runtime_works_in_isolated_interpreter(small):
    code = ("import sys; sys.path.insert(0, %r); import msgpack, msgpack._cmsgpack, cloudpickle, six, idna; "
            "assert msgpack.unpackb(msgpack.packb({'a': [1, 2]})) == {'a': [1, 2]}; "
            "print(cloudpickle.__version__, msgpack.Packer.__module__)") % small.site_dir
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == version("cloudpickle")
    assert "msgpack._cmsgpack" in out.stdout  # the C extension, not the pure-Python fallback


def test_artifacts_hold_the_same_tree(small, tmp_path):
    with zipfile.ZipFile(small.layer_zip) as zf:
        names = zf.namelist()
        assert names == sorted(names) and all(n.startswith("python/") for n in names)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    pack.extract_tar_zst(small.archive, str(tmp_path))
    assert pack.content_hash(str(tmp_path / "python")) == small.manifest["content_hash"]
    assert pack.content_hash(small.site_dir) == small.manifest["content_hash"]


@pytest.fixture(scope="module")
def rebuilt(small, tmp_path_factory):
    """(the finished ``wrenpack build-runtime`` process, its output folder): the small runtime
    built again with nothing cached (``--no-cache``, another cache dir, another output dir). One
    full build for the two tests that look at one: its bytes (the cache-hit test) and the stage
    times it prints (the stage-times test); each made its own before (~2-3 s each)."""
    root = tmp_path_factory.mktemp("rebuilt")
    out = str(root / "fresh")
    cmd = [sys.executable, "-m", "wrenpack", "build-runtime", *PKGS, "--artifacts", "all", "--output", out,
           "--cache-dir", str(root / "c2"), "--no-cache"]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="400")), out


def test_cache_hit_is_fast_and_rebuild_is_byte_identical(small, cache, tmp_path, rebuilt):
    t = time.perf_counter()
    hit = runtime_builder.build(PKGS, output=str(tmp_path / "again"), cache_dir=cache, artifacts="all")
    assert hit.cache_hit and time.perf_counter() - t < 1.5
    assert _sha(hit.layer_zip) == _sha(small.layer_zip)
    # a full rebuild (no cache, another cache dir, another output dir) gives the same bytes
    proc, fresh = rebuilt
    assert proc.returncode == 0, proc.stderr
    assert "stages (s): " in proc.stdout and "stages when it was built" not in proc.stdout  # (built, not a hit)
    for name, theirs in (("layer.zip", small.layer_zip), ("runtime.tar.zst", small.archive),
                         ("requirements.lock", small.lock)):
        assert _sha(os.path.join(fresh, name)) == _sha(theirs), name
    # the manifest is the same but for the stage times of the build that wrote it
    mine, theirs = (json.load(open(path)) for path in (os.path.join(fresh, "manifest.json"), small.manifest_path))
    assert set(mine.pop("stage_seconds")) == set(theirs.pop("stage_seconds"))
    assert mine == theirs


@pytest.mark.slow
def test_building_from_the_lock_is_reproducible(small, cache, tmp_path):
    res = runtime_builder.build(lock=small.lock, output=str(tmp_path / "fromlock"), cache_dir=cache)
    assert res.manifest["content_hash"] == small.manifest["content_hash"]


def test_broken_trim_rule_is_caught_and_rolled_back(small, cache, tmp_path):
    # idna/core.py imports idna.idnadata: a rule deleting it breaks `import idna`
    bad = trim.Rule("delete-idnadata", "deliberately broken", lambda rel, dist: rel == os.path.join("idna", "idnadata.py"))
    # from the small runtime's lock: trimming is under test here, not resolving (seconds saved)
    res = runtime_builder.build(lock=small.lock, output=str(tmp_path / "out"), cache_dir=cache, extra_rules=[bad])
    assert res.manifest["rules"]["delete-idnadata"]["rolled_back_for"] == ["idna"]
    assert os.path.exists(os.path.join(res.site_dir, "idna", "idnadata.py"))
    assert res.manifest["verified"]["ok"]


def test_import_failure_not_caused_by_trimming_fails_the_build(small, cache, tmp_path):
    with pytest.raises(BuildError, match=r"import no_such_module_here.*--skip-import no_such_module_here"):
        runtime_builder.build(lock=small.lock, output=str(tmp_path / "out"), cache_dir=cache,
                              verify_modules=["no_such_module_here"])


def test_a_failed_rebuild_keeps_the_kept_runtimes_lock(small, cache, tmp_path, monkeypatch):
    """A runtime left in place by a failed rebuild keeps its own requirements.lock (the one committed
    beside it); the failed build's lock goes to requirements.failed.lock, which a later build removes,
    with the failure's report, also when that build is a cache hit."""
    out = tmp_path / "rt"
    shutil.copytree(small.output, out)
    kept_lock = (out / "requirements.lock").read_text() + "# the kept runtime's own lock\n"
    (out / "requirements.lock").write_text(kept_lock)
    with monkeypatch.context() as m:
        m.setattr(budget, "LAYER_LIMIT", 0)  # (fails at the size check, before installing anything)
        with pytest.raises(BudgetExceeded) as exc:
            runtime_builder.build(lock=small.lock, output=str(out), cache_dir=cache, use_cache=False)
    report = exc.value.report
    assert report["previous_runtime_kept"] is True
    assert (out / "requirements.lock").read_text() == kept_lock
    failed = out / "requirements.failed.lock"
    assert report["lock"] == str(failed) and failed.read_text() == open(small.lock).read()
    assert json.loads((out / "build-report.json").read_text())["lock"] == str(failed)
    # the small runtime's own inputs: a cache hit, published over it
    res = runtime_builder.build(PKGS, output=str(out), cache_dir=cache, artifacts="all")
    assert res.cache_hit
    assert not failed.exists() and not (out / "build-report.json").exists()


@pytest.fixture(scope="module")
def no_wheel(cache, tmp_path_factory):
    """The build of a pin with no wheel for the target, once for the tests of its error message."""
    # msgpack 0.5.6 predates Python 3.11: no cp311 manylinux wheel exists
    with pytest.raises(NoSuitableWheel) as exc:
        runtime_builder.build(["msgpack==0.5.6"], output=str(tmp_path_factory.mktemp("no-wheel") / "out"),
                              cache_dir=cache)
    return exc


def test_no_wheel_for_target_suggests_docker(no_wheel):
    assert re.search(r"msgpack.*--docker", str(no_wheel.value)), str(no_wheel.value)
    assert "\n" not in str(no_wheel.value)


def test_over_budget_fails_with_largest_packages(small, cache, tmp_path, monkeypatch):
    # from the small runtime's lock (the resolve path's failure is test_failed_build_leaves_lock_and_json_report);
    # a lowered budget (--tmp-size below Lambda's 512 MiB is refused before anything runs)
    monkeypatch.setattr(budget, "LAYER_LIMIT", 0)
    with pytest.raises(BudgetExceeded, match=r"over the 0 MiB layer limit.*largest MiB: .*fix:") as exc:
        runtime_builder.build(lock=small.lock, output=str(tmp_path / "out"), cache_dir=cache)
    assert exc.value.rows and exc.value.rows[0][1] >= exc.value.rows[-1][1]
    assert "\n" not in str(exc.value)


def test_cli_json_and_budget_table(small, cache, tmp_path):
    env_out = str(tmp_path / "cli")
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", *PKGS, "--json", "--output", env_out,
                           "--cache-dir", cache, "--artifacts", "all"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cache_hit"] and data["content_hash"] == small.manifest["content_hash"]
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", "--output", env_out],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("wrenpack: error: nothing to build")


def test_site_dir_contract(small, tmp_path):
    assert runtime_builder.site_dir(small.site_dir) == small.site_dir
    with pytest.raises(BuildError, match="not a built runtime"):
        runtime_builder.site_dir(str(tmp_path))


# --- units ---------------------------------------------------------------------------------


def _some_shared_object():
    import _ctypes

    return _ctypes.__file__


def test_pt_load_check_on_real_so_both_ways(tmp_path):
    src = _some_shared_object()
    assert elf.load_segments_aligned(src)
    loads = [s for s in elf.program_headers(src) if s.p_type == elf.PT_LOAD]
    assert loads and all(s.p_align >= 1 for s in loads)
    # shift one PT_LOAD's p_offset by 0x10: (p_offset - p_vaddr) % p_align != 0
    data = bytearray(open(src, "rb").read())
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        off = phoff + i * phentsize
        if struct.unpack_from("<I", data, off)[0] == elf.PT_LOAD:
            p_offset = struct.unpack_from("<Q", data, off + 8)[0]
            struct.pack_into("<Q", data, off + 8, p_offset + 0x10)
            break
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    assert not elf.load_segments_aligned(str(bad))


def test_safe_strip_keeps_loadable_result_or_original(tmp_path, monkeypatch):
    src = _some_shared_object()
    out = tmp_path / "stripped.so"
    saved = elf.safe_strip(src, str(out))
    assert elf.load_segments_aligned(str(out))
    assert saved == os.path.getsize(src) - os.path.getsize(out)
    code = "import ctypes; ctypes.CDLL(%r); print('ok')" % str(out)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    # if the stripped copy would misalign a segment, the original is kept byte for byte
    real = elf.load_segments_aligned
    monkeypatch.setattr(elf, "load_segments_aligned", lambda p: False if p.endswith(".strip") else real(p))
    kept = tmp_path / "kept.so"
    assert elf.safe_strip(src, str(kept)) == 0
    assert _sha(str(kept)) == _sha(src)


def _tree(root, files):
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)


def test_trim_keeps_test_modules_that_code_imports(tmp_path):
    root = str(tmp_path)
    _tree(root, {
        "pkg/__init__.py": "",
        "pkg/testing/__init__.py": "from pkg.testing._utils import *\n",
        "pkg/testing/_utils.py": "def f():\n    from pkg._core.tests._natype import pd_NA\n",
        "pkg/_core/__init__.py": "",
        "pkg/_core/tests/__init__.py": "",
        "pkg/_core/tests/_natype.py": "from . import _helper\npd_NA = None\n",
        "pkg/_core/tests/_helper.py": "",
        "pkg/_core/tests/test_big.py": "import pkg\n",
        "pkg/_core/src.c": "int x;",
        "pkg/_core/api.pyi": "",
        "pkg/docs/guide.txt": "",
        "pkg/examples/__init__.py": "",
        "pkg-1.0.dist-info/METADATA": "Name: pkg\nVersion: 1.0\n\n",
        "pkg-1.0.dist-info/RECORD": "pkg/__init__.py,,\n",
        "pkg-1.0.dist-info/WHEEL": "",
        "pkg-1.0.dist-info/top_level.txt": "pkg\n",
        "pkg-1.0.dist-info/licenses/LICENSE": "",
        "boto3/__init__.py": "",
        "boto3-1.0.dist-info/METADATA": "Name: boto3\nVersion: 1.0\n\n",
        "boto3-1.0.dist-info/RECORD": "boto3/__init__.py,,\n",
    })
    p = trim.plan(root)
    j = os.path.join
    assert p.removed[j("pkg", "_core", "tests", "test_big.py")] == "tests"
    for kept in ("_natype.py", "_helper.py", "__init__.py"):
        assert j("pkg", "_core", "tests", kept) not in p.removed, kept
    assert p.removed[j("pkg", "_core", "src.c")] == "sources"
    assert p.removed[j("pkg", "_core", "api.pyi")] == "stubs"
    assert p.removed[j("pkg", "docs", "guide.txt")] == "docs"
    assert j("pkg", "examples", "__init__.py") not in p.removed  # a package, not docs
    assert p.removed[j("pkg-1.0.dist-info", "WHEEL")] == "dist-info"
    for kept in ("METADATA", "top_level.txt", j("licenses", "LICENSE")):
        assert j("pkg-1.0.dist-info", kept) not in p.removed
    assert p.removed[j("boto3", "__init__.py")] == "lambda-provided"
    assert j("boto3", "__init__.py") not in trim.plan(root, keep_boto3=True).removed
    # rollback restores exactly that rule's files of that dist
    restored = p.rollback("tests", "pkg")
    assert j("pkg", "_core", "tests", "test_big.py") in restored and "tests" in p.rolled_back


def test_budget_check_and_message():
    budget.check(10, {"a": 10}, target="layer")
    with pytest.raises(BudgetExceeded, match=r"300\.0 MiB unzipped, over the 250 MiB layer limit \(less 1 MiB kept "
                                             r"for the function's own package\) by 51\.0 MiB"):
        budget.check(300 * budget.MIB, {"big": 200 * budget.MIB, "small": 100 * budget.MIB})


def test_profile_input_shape(tmp_path):
    from runtime_builder import inputs

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"packages": [{"name": "numpy", "version": "2.2.6"}, {"name": "wrenpack", "version": "0.1"}],
                                "modules": {"numpy": "/x", "json": "/y"}}))
    inp = inputs.Inputs()
    inputs.read_profile(str(prof), inp)
    assert inp.requirements == ["numpy==2.2.6"] and inp.modules == ["numpy"]
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(BuildError, match="no 'packages' list"):
        inputs.read_profile(str(bad), inputs.Inputs())


def test_extension_modules_listed(small):
    assert "msgpack._cmsgpack" in verify.extension_modules(small.site_dir)
    assert "msgpack" in verify.top_level_modules(small.site_dir)


def test_docker_path_needs_an_engine():
    from runtime_builder import docker_build

    try:
        docker_build.docker_client()
    except BuildError as exc:
        assert "no" in str(exc) and "\n" not in str(exc)
        pytest.skip(f"no Docker engine answers here: {exc}")


def test_docker_stage_adds_only_the_worker_side(tmp_path):
    import wrenpack
    from runtime_builder import docker_stage

    copied = docker_stage.copy_worker(os.path.dirname(wrenpack.__file__), str(tmp_path))
    assert "worker/handler.py" in copied and "storage/s3.py" in copied and "errors.py" in copied
    assert not (tmp_path / "wrenpack" / "cli").exists() and not (tmp_path / "wrenpack" / "executor.py").exists()
    proc = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import wrenpack.worker.handler as h; print(h.__file__)", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith(str(tmp_path)), proc.stderr


def test_docker_build_failure_names_the_cause():
    from runtime_builder import docker_build

    chunks = [{"stream": "Step 7/10 : RUN python -m pip install ...\n"},
              {"stream": "\x1b[91mWARNING: Retrying after connection broken by 'NewConnectionError(...: "
                         "Temporary failure in name resolution')\n\x1b[0m"},
              {"stream": "\x1b[91mERROR: No matching distribution found for six==1.17.0\n\x1b[0m"},
              {"error": "The command '/bin/sh -c python -m pip ...' returned a non-zero code: 1"}]
    lines = docker_build._log_lines(chunks)
    assert all("\x1b" not in ln for ln in lines)
    assert docker_build._cause(Exception("x"), lines) == "ERROR: No matching distribution found for six==1.17.0"
    assert "--network host" in docker_build._hint(lines, "img")
    stage = lines[:1] + ["wrenpack: error: import check failed: `import six` raised ImportError"]
    assert docker_build._cause(Exception("x"), stage).startswith("wrenpack: error: import check failed")


def test_docker_image_holds_the_runtime_and_the_handler(tmp_path):
    """With an engine and a Lambda Python base image present locally, build six into an image and import it there.

    No image is ever pulled: set LAMBDA_TEST_BASE_IMAGE to a local stand-in
    (default public.ecr.aws/lambda/python:X.Y, used only if already present) and
    LAMBDA_TEST_DOCKER_NETWORK (e.g. host) when the default build network
    cannot reach the package index.
    """
    from runtime_builder import docker_build

    try:
        client = docker_build.docker_client()
    except BuildError as exc:
        pytest.skip(f"no Docker engine answers here: {exc}")
    import docker

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = os.environ.get("LAMBDA_TEST_BASE_IMAGE", f"public.ecr.aws/lambda/python:{py}")
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        pytest.skip(f"base image {base} is not present locally (builds never pull); set LAMBDA_TEST_BASE_IMAGE")
    tag = f"wrenpack-test-runtime:{os.getpid()}"
    out = docker_build.build_image(["six"], output=str(tmp_path / "rt"), base_image=base, tag=tag,
                                   network=os.environ.get("LAMBDA_TEST_DOCKER_NETWORK"))
    try:
        assert out["tag"] == tag and (tmp_path / "rt" / "requirements.lock").exists()
        assert client.images.get(tag).attrs["Config"]["Cmd"] == ["wrenpack.worker.handler.handler"]
        code = ("import os, six, cloudpickle, wrenpack.worker.handler as h; "
                "root = os.environ['LAMBDA_TASK_ROOT']; "
                "assert six.__file__.startswith(root) and h.__file__.startswith(root), (six.__file__, h.__file__); "
                "assert not os.path.exists(os.path.join(root, 'wrenpack', 'cli')); "
                "assert os.path.exists(os.path.join(root, 'wrenpack', 'worker', '__pycache__')); print('ok')")
        logs = client.containers.run(tag, ["-c", code], entrypoint="python", network_mode="none", remove=True)
        assert logs.strip().endswith(b"ok")
    finally:
        client.images.remove(tag, force=True)


# --- errors that point the right way ----------------------------------------------


def _one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_conflicting_pins_show_the_conflict(cache, tmp_path):
    with pytest.raises(BuildError) as exc:
        runtime_builder.build(["six<1.16", "six>1.16"], output=str(tmp_path / "out"), cache_dir=cache)
    text = _one_line(exc)
    assert text.startswith("conflicting requirements: pip cannot install six<1.16 and six>1.16 together"), text
    assert "fix:" in text and "raise error from e" not in text


def test_unknown_package_says_it_does_not_exist(cache, tmp_path):
    with pytest.raises(BuildError) as exc:
        runtime_builder.build(["wrenpack-no-such-package-xyzzy"], output=str(tmp_path / "out"), cache_dir=cache)
    text = _one_line(exc)
    assert "'wrenpack-no-such-package-xyzzy' does not exist on the package index" in text, text
    assert not isinstance(exc.value, NoSuitableWheel)


def test_no_wheel_names_the_newest_version_that_has_one(no_wheel):
    text = _one_line(no_wheel)
    assert re.search(r"the newest version with one is (\d+\.\d+\S*): pin msgpack==\1", text), text


def test_unwritable_output_fails_before_the_build(cache, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    t = time.perf_counter()
    with pytest.raises(BuildError) as exc:
        runtime_builder.build(["six"], output=str(blocker / "out"), cache_dir=cache)
    assert time.perf_counter() - t < 1.0  # nothing resolved or downloaded
    assert re.match(r"cannot write --output .*a-file/out: .*a-file is a file, not a directory; fix: ", _one_line(exc))
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", "six", "--output", str(blocker)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("wrenpack: error: cannot write --output") and "it is a file" in proc.stderr


def test_read_only_output_dir_is_caught(cache, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(str(ro), os.W_OK) and os.geteuid() == 0:
            pytest.skip("running as root: permission bits do not stop writes")
        with pytest.raises(BuildError, match=r"cannot write --output .*not writable"):
            runtime_builder.build(["six"], output=str(ro / "out"), cache_dir=cache)
    finally:
        ro.chmod(0o700)


@pytest.mark.slow
def test_from_profile_falls_back_to_the_newest_version_with_a_wheel(cache, tmp_path, caplog):
    prof = tmp_path / "prof.json"
    prof.write_text(json.dumps({"packages": [{"name": "msgpack", "version": "0.5.6"}]}))  # no cp311 wheel
    with caplog.at_level("WARNING", logger="runtime_builder"):
        res = runtime_builder.build(profile=str(prof), output=str(tmp_path / "out"), cache_dir=cache)
    fb = res.manifest["fallbacks"]
    assert fb and fb[0]["name"] == "msgpack" and fb[0]["profile"] == "msgpack==0.5.6"
    assert f"msgpack=={fb[0]['using']}" in open(res.lock).read()
    warned = [r.getMessage() for r in caplog.records if "no wheel" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert f"using msgpack=={fb[0]['using']}, the newest version that has one" in warned[0]


def test_gpu_libraries_are_named_with_the_cpu_alternative():
    from runtime_builder import gpu, resolve

    lock = ("filelock==3.16.1 \\\n    --hash=sha256:aa\n    # via torch\n"
            "nvidia-cublas-cu12==12.4.5.8 \\\n    --hash=sha256:bb\n    # via\n    #   nvidia-cudnn-cu12\n    #   torch\n"
            "nvidia-cudnn-cu12==9.1.0.70 \\\n    --hash=sha256:cc\n    # via torch\n"
            "torch==2.5.1 \\\n    --hash=sha256:dd\n    # via -r requirements.in\n"
            "triton==3.1.0 \\\n    --hash=sha256:ee\n    # via torch\n")
    assert resolve.pins(lock)["nvidia-cublas-cu12"] == "12.4.5.8"
    assert resolve.parse_lock(lock)["nvidia-cublas-cu12"].via == ["nvidia-cudnn-cu12", "torch"]
    with pytest.raises(BuildError) as exc:
        gpu.check_gpu(lock, requested={"torch"})
    text = _one_line(exc)
    assert text.startswith("torch pulls GPU-only libraries (nvidia-cublas-cu12, nvidia-cudnn-cu12, triton)"), text
    assert "https://download.pytorch.org/whl/cpu" in text and "+cpu" in text
    gpu.check_gpu(lock.replace("nvidia", "other").replace("triton", "tritonx"), requested={"torch"})


@pytest.mark.slow
def test_failed_build_leaves_lock_and_json_report(small, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    t = time.perf_counter()
    monkeypatch.setattr(budget, "LAYER_LIMIT", 0)  # (--tmp-size below Lambda's 512 MiB is refused at once)
    with pytest.raises(BudgetExceeded) as exc:
        runtime_builder.build(PKGS, output=str(out), cache_dir=cache)
    assert "nothing was installed" in _one_line(exc)
    report = json.loads((out / "build-report.json").read_text())
    assert report == exc.value.report
    assert report["ok"] is False and report["stage"] == "size-check" and report["error"] == "BudgetExceeded"
    assert report["lock"] == str(out / "requirements.lock") and "msgpack==" in (out / "requirements.lock").read_text()
    assert set(report["packages"]) >= {"six", "idna", "msgpack", "cloudpickle"}
    assert "install" not in report["stage_seconds"]  # failed in seconds, before downloading anything
    # the CLI's report of the same failure (from the small runtime's lock: resolving was checked above)
    # (in this process: the lowered budget holds here)
    capsys.readouterr()
    code = cli_main(["build-runtime", "--lock", small.lock, "--json", "--output", str(out), "--cache-dir", cache,
                     "--no-cache"])  # (the lowered budget is no part of the cache key: a build of this lock is there)
    printed_out, printed_err = capsys.readouterr()
    assert code == 1 and printed_err.startswith("wrenpack: error: the wheels alone are")
    printed = json.loads(printed_out)
    assert printed["ok"] is False and printed["stage"] == "size-check" and printed["message"] in printed_err
    assert time.perf_counter() - t < 120


def test_requirements_file_continuations_options_and_markers(tmp_path):
    from runtime_builder import inputs

    (tmp_path / "base.txt").write_text("idna>=3 \\\n   ; python_version >= '3.8'  # continued\n")
    (tmp_path / "req.txt").write_text(
        "--extra-index-url https://download.pytorch.org/whl/cpu\n-r base.txt\n-c cons.txt\n"
        "six==1.17.0  # pinned\n--no-binary :none:\nMsgPack[extra]>=1\n")
    inp = inputs.Inputs()
    inputs.read_requirements_file(str(tmp_path / "req.txt"), inp)
    assert inp.options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    assert inp.requirements[0].startswith("idna>=3") and "python_version" in inp.requirements[0]
    assert f"-c {tmp_path / 'cons.txt'}" in inp.requirements
    assert inp.names() == {"idna", "six", "msgpack"}
    assert inp.text().startswith("--extra-index-url https://download.pytorch.org/whl/cpu\n")
    (tmp_path / "bad.txt").write_text("six===\n")
    with pytest.raises(BuildError, match=r"bad\.txt:1: 'six===' is not a valid requirement"):
        inputs.read_requirements_file(str(tmp_path / "bad.txt"), inputs.Inputs())


# --- trim attribution: exact, explained --------------------------------------------


def _tiny_package(root):
    """A distribution whose import needs one trimmed file back, and whose error names no file."""
    j = os.path.join
    _tree(root, {
        "tinyp/__init__.py": ("import os\n_here = os.path.dirname(__file__)\n"
                              "if not os.path.exists(os.path.join(_here, '_src', 'table.c')):\n"
                              "    raise ImportError('tinyp needs its table')\n"),
        "tinyp/_src/table.c": "int table[] = {1};\n" * 50,
        "tinyp/_src/other.c": "int other;\n" * 50,
        "tinyp/_src/more.h": "int more;\n" * 50,
        "tinyp/api.pyi": "def f() -> int: ...\n",
        "tinyp/tests/test_a.py": "def test(): pass\n",
        "tinyp/docs/guide.txt": "words\n" * 100,
        "lazyp/__init__.py": "import lazy_loader as lazy\n__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)\n",
        "lazyp/__init__.pyi": "from .sub import thing\n",
        "lazyp/sub.pyi": "thing: int\n",
    })
    for name, tops in (("tinyp", ["tinyp/__init__.py", "tinyp/_src/table.c", "tinyp/_src/other.c", "tinyp/_src/more.h",
                                  "tinyp/api.pyi", "tinyp/tests/test_a.py", "tinyp/docs/guide.txt"]),
                       ("lazyp", ["lazyp/__init__.py", "lazyp/__init__.pyi", "lazyp/sub.pyi"])):
        info = j(root, f"{name}-1.0.dist-info")
        os.makedirs(info)
        with open(j(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n")
        with open(j(info, "RECORD"), "w") as f:
            f.write("".join(f"{t},,\n" for t in tops + [f"{name}-1.0.dist-info/METADATA", f"{name}-1.0.dist-info/RECORD"]))


def test_bisection_rolls_back_only_the_file_and_rule_an_import_needs(tmp_path, caplog):
    from runtime_builder import attribution

    raw, site, work = str(tmp_path / "raw"), str(tmp_path / "site"), str(tmp_path / "work")
    _tiny_package(raw)
    os.makedirs(work)
    plan = trim.plan(raw)
    j = os.path.join
    assert plan.removed[j("tinyp", "_src", "table.c")] == "sources"
    # lazy_loader stubs stay by rule; a stub nothing attaches goes
    assert j("lazyp", "__init__.pyi") not in plan.removed and plan.removed[j("lazyp", "sub.pyi")] == "stubs"
    trim.materialize(plan, site)
    options = {"sourceless": False, "skip_imports": ["lazyp"], "verify_modules": []}  # lazy_loader is not installed
    with caplog.at_level("WARNING", logger="runtime_builder"):
        modules, _ = attribution.verify_tree(plan, site, work, sys.executable, options)
    assert "tinyp" in modules
    assert os.path.exists(j(site, "tinyp", "_src", "table.c"))
    # the other files of the same rule, and every other rule, keep their savings
    for rel, rule in ((j("tinyp", "_src", "other.c"), "sources"), (j("tinyp", "_src", "more.h"), "sources"),
                      (j("tinyp", "api.pyi"), "stubs"), (j("tinyp", "tests", "test_a.py"), "tests"),
                      (j("tinyp", "docs", "guide.txt"), "docs")):
        assert plan.removed.get(rel) == rule and not os.path.exists(j(site, rel)), rel
    assert plan.rollbacks == [{"rule": "sources", "dists": ["tinyp"], "files": [j("tinyp", "_src", "table.c")],
                               "module": "tinyp", "error": "ImportError: tinyp needs its table",
                               "found_by": "found by bisection"}]
    msg = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert len(msg) == 1 and "`import tinyp` raised ImportError: tinyp needs its table" in msg[0]
    assert "trim rule 'sources'" in msg[0] and "tinyp/_src/table.c" in msg[0]


def test_lazy_loader_stub_keeps_skimage_style_imports_working(tmp_path):
    """A stand-in for lazy_loader.attach_stub (which reads __init__.pyi at import time): the kept stub imports."""
    from runtime_builder import attribution

    raw, site, work = str(tmp_path / "raw"), str(tmp_path / "site"), str(tmp_path / "work")
    _tiny_package(raw)
    _tree(raw, {"lazy_loader.py": ("import os\ndef attach_stub(name, filename):\n"
                                   "    with open(os.path.splitext(filename)[0] + '.pyi') as f:\n"
                                   "        names = [ln.split()[-1] for ln in f if ln.startswith('from')]\n"
                                   "    return (lambda n: 1), (lambda: names), names\n")})
    os.makedirs(work)
    plan = trim.plan(raw)
    trim.materialize(plan, site)
    modules, _ = attribution.verify_tree(plan, site, work, sys.executable,
                                         {"sourceless": False, "skip_imports": [], "verify_modules": []})
    assert "lazyp" in modules and not [r for r in plan.rollbacks if "lazyp" in r["dists"]]
    assert os.path.exists(os.path.join(site, "lazyp", "__init__.pyi"))


# --- choose the mode that fits -----------------------------------------------------


def _wheel(dirpath, name, version, files, tag="py3-none-any"):
    """A wheel written by hand (pure Python unless ``files`` holds bytes), for a local --find-links index."""
    import base64

    info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    record = []
    for rel, text in files.items():
        data = text if isinstance(text, bytes) else text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = os.path.join(dirpath, f"{name}-{version}-{tag}.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in sorted(files.items()):
            zf.writestr(rel, text)
    return path


def _fit_inputs(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # 2 MiB of comments: big as a source, almost nothing as bytecode
    _wheel(str(wheels), "fitpkg", "1.0", {"fitpkg/__init__.py": "# padding\n" * 210_000 + "VALUE = 42\n"})
    req = tmp_path / "requirements.txt"
    req.write_text(f"--find-links {wheels}\nfitpkg==1.0\n")
    return str(req)


@pytest.mark.slow
def test_fit_picks_sourceless_when_only_sourceless_fits(cache, tmp_path, monkeypatch, caplog):
    req = _fit_inputs(tmp_path)
    monkeypatch.setattr(budget, "LAYER_LIMIT", 1 * budget.MIB)  # a lowered budget: seconds, not minutes
    monkeypatch.setattr(budget, "FUNCTION_PACKAGE_RESERVE", 0)
    with pytest.raises(BudgetExceeded) as exc:
        runtime_builder.build(requirements_files=[req], output=str(tmp_path / "plain"), cache_dir=cache)
    text = _one_line(exc)
    assert "over the 250 MiB layer limit" in text or "layer limit" in text
    assert re.search(r"a sourceless layer (would|might) fit \(.*MiB( before bytecode)?\): pass --fit", text), text
    lock = tmp_path / "plain" / "requirements.lock"  # the failed build's lock (its --find-links kept)
    assert "--find-links" in lock.read_text() and "fitpkg==1.0" in lock.read_text()
    with caplog.at_level("WARNING", logger="runtime_builder"):
        res = runtime_builder.build(lock=str(lock), output=str(tmp_path / "fit"), cache_dir=cache, fit=True)
    mode = res.manifest["mode"]
    assert mode["name"] == "sourceless layer" and mode["sourceless"] and mode["kind"] == "layer"
    assert re.match(r"layer with sources is \d+\.\d MiB, over 1 MiB; sourceless layer is 0\.\d MiB, within 1 MiB",
                    mode["why"]), mode["why"]
    assert any("--fit chose a sourceless layer" in r.getMessage() for r in caplog.records)
    site = res.site_dir
    assert os.path.exists(os.path.join(site, "fitpkg", "__init__.pyc"))
    assert not os.path.exists(os.path.join(site, "fitpkg", "__init__.py"))
    assert os.path.exists(res.layer_zip) and not os.path.exists(res.archive)  # only what a layer needs
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {site!r}); "
                          "import fitpkg; print(fitpkg.VALUE)"], capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr


# --- libraries checked against the target's glibc --------------------------------------------

#: dlopen moved into libc at glibc 2.34: a library calling it, linked here, needs GLIBC_2.34
NEEDS_2_34 = '#include <dlfcn.h>\nvoid *wp_open(void) { return dlopen("libm.so.6", RTLD_LAZY); }\n'
#: strlen is as old as glibc's symbol versions on every architecture
NEEDS_OLD = '#include <string.h>\nsize_t wp_len(const char *s) { return strlen(s); }\n'


#: the target architecture this machine's compiler builds for
HOST_ARCH = "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


def _compile_so(tmp_path, name, code):
    """A shared library compiled by gcc from ``code`` (the test is skipped, saying why, without gcc)."""
    import shutil

    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no gcc or cc on this machine: cannot compile the test library")
    src, out = tmp_path / f"{name}.c", tmp_path / f"lib{name}.so"
    src.write_text(code)
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"{gcc} cannot build a shared library here: {proc.stderr.strip()[:200]}")
    return str(out)


def _needs_2_34(tmp_path):
    lib = _compile_so(tmp_path, "need234", NEEDS_2_34)
    if elf.newest_glibc(lib) != (2, 34):
        pytest.skip(f"this machine's glibc links dlopen as GLIBC_{'.'.join(map(str, elf.newest_glibc(lib) or ()))}, "
                    "not GLIBC_2.34 (it is older than 2.34)")
    return lib


def _verify_here(python):
    from runtime_builder.pipeline import target_interpreter
    from runtime_builder.targets import Target

    return target_interpreter(Target.make(python)) is not None


def _glibc_inputs(tmp_path, name, lib_path):
    """A wheel whose package loads (ctypes) a vendored library from ``<name>.libs/``, as auditwheel lays them out."""
    wheels = tmp_path / f"wheels-{name}"
    wheels.mkdir()
    lib = f"{name}.libs/libwp-1a2b3c4d.so.1"
    init = ("import ctypes, os\n_LIB = ctypes.CDLL(os.path.join(os.path.dirname(os.path.dirname("
            f"os.path.abspath(__file__))), {lib!r}))\n")
    with open(lib_path, "rb") as f:
        _wheel(str(wheels), name, "1.0", {f"{name}/__init__.py": init, lib: f.read()})
    req = tmp_path / f"{name}.txt"
    req.write_text(f"--find-links {wheels}\n{name}==1.0\n")
    return str(req), lib


def test_version_needs_come_from_the_dynamic_section(small, tmp_path):
    ext = [os.path.join(d, f) for d, _, fs in os.walk(small.site_dir) for f in fs if f.endswith(".so")]
    assert ext
    needs = elf.version_needs(ext[0])
    assert "libc.so.6" in needs and all(v.startswith(("GLIBC_", "GCC_", "GLIBCXX_", "CXXABI_"))
                                        for vs in needs.values() for v in vs)
    assert (2, 2) <= elf.newest_glibc(ext[0]) <= (2, 17)  # msgpack's manylinux2014 wheel
    assert elf.glibc_version("GLIBC_2.2.5") == (2, 2, 5) and elf.glibc_version("GLIBCXX_3.4") is None
    # the build's glibc stage passed that library, older than its target's glibc, and says so in the manifest
    g = small.manifest["glibc"]
    assert g["target"] == small.manifest["target"]["glibc"] and g["libraries"] == 1
    assert g["newest_needed_by"] == os.path.relpath(ext[0], small.site_dir)
    assert (2, 2) <= tuple(int(p) for p in g["newest_needed"].split(".")) <= (2, 17)
    assert elf.version_needs(_compile_so(tmp_path, "old", NEEDS_OLD))["libc.so.6"] <= {"GLIBC_2.2.5", "GLIBC_2.17"}
    lib = _needs_2_34(tmp_path)
    assert "GLIBC_2.34" in elf.version_needs(lib)["libc.so.6"]
    # read the way the loader reads it: the section headers a strip could drop are not used
    data = bytearray(open(lib, "rb").read())
    struct.pack_into("<QIHHHHHH", data, 40, 0, 0, 64, 56, struct.unpack_from("<H", data, 56)[0], 64, 0, 0)
    bare = tmp_path / "bare.so"
    bare.write_bytes(bytes(data))
    assert elf.newest_glibc(str(bare)) == (2, 34)


def test_glibc_check_against_each_runtime(tmp_path):
    from runtime_builder import glibc
    from runtime_builder.targets import Target

    site = tmp_path / "site"
    (site / "pkg.libs").mkdir(parents=True)
    with open(_needs_2_34(tmp_path), "rb") as f:
        (site / "pkg.libs" / "libx-0a1b.so.1").write_bytes(f.read())
    owner = {os.path.join("pkg.libs", "libx-0a1b.so.1"): "pkg"}.get
    args = (owner, {"pkg": "1.0"}, {"pkg": ["cp311-cp311-manylinux_2_17_x86_64"]})
    with pytest.raises(BuildError) as exc:
        glibc.check(str(site), Target.make("3.11", HOST_ARCH), *args)
    assert _one_line(exc).startswith("glibc check failed: pkg.libs/libx-0a1b.so.1 (from pkg 1.0, wheel tagged "
                                     "cp311-cp311-manylinux_2_17_x86_64) needs GLIBC_2.34, newer than the glibc 2.26 "
                                     "of python3.11 on Lambda (Amazon Linux 2)")
    summary = glibc.check(str(site), Target.make("3.12", HOST_ARCH), *args)  # Amazon Linux 2023 has 2.34
    assert summary == {"target": "2.34", "newest_needed": "2.34",
                       "newest_needed_by": os.path.join("pkg.libs", "libx-0a1b.so.1"), "libraries": 1}
    # a library for another architecture can never be loaded there: its needs do not count
    other = "arm64" if HOST_ARCH == "x86_64" else "x86_64"
    assert glibc.check(str(site), Target.make("3.11", other), *args)["libraries"] == 0


def test_build_names_a_library_that_needs_a_newer_glibc_than_the_target(cache, tmp_path):
    """It imports here (glibc 2.36) and would not load on python3.11's Amazon Linux 2 (2.26): the build says so."""
    req, lib = _glibc_inputs(tmp_path, "wpglibcnew", _needs_2_34(tmp_path))
    with pytest.raises(BuildError) as exc:
        runtime_builder.build(requirements_files=[req], python="3.11", arch=HOST_ARCH, output=str(tmp_path / "out"),
                              cache_dir=cache, verify_imports=_verify_here("3.11"))
    text = _one_line(exc)
    assert text.startswith(f"glibc check failed: {lib} (from wpglibcnew 1.0, wheel tagged py3-none-any) needs "
                           "GLIBC_2.34, newer than the glibc 2.26 of python3.11 on Lambda (Amazon Linux 2)"), text
    assert ("fix: pin an older wpglibcnew whose wheel is tagged manylinux_2_26 or lower (e.g. manylinux2014), or "
            "build for a newer runtime: --python 3.12 (Amazon Linux 2023, glibc 2.34)") in text, text
    assert exc.value.report["stage"] == "glibc" and "glibc" in exc.value.report["stage_seconds"]


# (by default: test_version_needs_come_from_the_dynamic_section checks the small runtime's build passed its
# msgpack extension, which needs only an old glibc, at the glibc stage and recorded it in the manifest, and that
# a library compiled here with old symbols only needs only those; test_build_names_a_library_that_needs_a_newer_
# glibc_than_the_target builds this layout (a vendored .libs library) through the same stage)
@pytest.mark.slow
def test_build_passes_a_library_that_needs_only_an_old_glibc(cache, tmp_path):
    req, lib = _glibc_inputs(tmp_path, "wpglibcold", _compile_so(tmp_path, "old", NEEDS_OLD))
    res = runtime_builder.build(requirements_files=[req], python="3.11", arch=HOST_ARCH, output=str(tmp_path / "out"),
                                cache_dir=cache, verify_imports=_verify_here("3.11"))
    g = res.manifest["glibc"]
    assert g["target"] == "2.26" and g["newest_needed_by"] == lib and g["libraries"] == 1
    assert tuple(int(p) for p in g["newest_needed"].split(".")) <= (2, 17)
    assert os.path.exists(os.path.join(res.site_dir, lib))


# --- stage times ------------------------------------------------------------------------------

BUILD_STAGES = ["resolve", "size-check", "install", "trim", "glibc", "bytecode", "budget", "verify", "pack"]


def test_stage_times_in_the_manifest_the_result_the_json_and_the_summary(small, cache, tmp_path, rebuilt):
    times = small.manifest["stage_seconds"]
    assert list(times) == BUILD_STAGES and all(isinstance(v, float) and v >= 0 for v in times.values())
    assert list(small.stage_seconds) == BUILD_STAGES + ["publish"]
    assert {k: small.stage_seconds[k] for k in BUILD_STAGES} == times
    assert sum(times.values()) <= small.seconds
    env = dict(os.environ, COLUMNS="400")
    # (the small runtime's build, in the session's cache: these are hits of it)
    cmd = [sys.executable, "-m", "wrenpack", "build-runtime", *PKGS, "--artifacts", "all", "--cache-dir", cache]
    proc = rebuilt[0]  # (`wrenpack build-runtime six idna msgpack --no-cache ...`: a build, not a cache hit)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("stages (s): "))
    assert [part.split()[0] for part in line[len("stages (s): "):].split(", ")] == BUILD_STAGES + ["publish"]
    proc = subprocess.run(cmd + ["--output", str(tmp_path / "built")], capture_output=True, text=True, env=env)
    assert "stages when it was built (s): resolve " in proc.stdout, proc.stdout
    proc = subprocess.run(cmd + ["--output", str(tmp_path / "built"), "--json"], capture_output=True, text=True)
    data = json.loads(proc.stdout)
    assert data["cache_hit"] and list(data["stage_seconds"]) == ["publish"]
    assert list(data["built_stage_seconds"]) == BUILD_STAGES


# --- torch: CPU-only advice that works as printed ---------------------------------------------

TORCH_LOCK = ("filelock==3.16.1 \\\n    --hash=sha256:aa\n    # via torch\n"
              "nvidia-cublas-cu12==12.4.5.8 \\\n    --hash=sha256:bb\n    # via torch\n"
              "torch==2.5.1 \\\n    --hash=sha256:dd\n    # via -r requirements.in\n"
              "triton==3.1.0 \\\n    --hash=sha256:ee\n    # via torch\n")


def _simple_index(root, wheels):
    """A PEP 503 index in a directory: ``root/<name>/index.html`` linking each wheel (with its sha256)."""
    import urllib.parse

    by_name = {}
    for path in wheels:
        by_name.setdefault(os.path.basename(path).split("-")[0], []).append(path)
    for name, paths in by_name.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        links = []
        for path in paths:
            fn = os.path.basename(path)
            os.replace(path, os.path.join(root, name, fn))
            links.append(f'<a href="{urllib.parse.quote(fn)}#sha256={_sha(os.path.join(root, name, fn))}">{fn}</a>')
        with open(os.path.join(root, name, "index.html"), "w") as f:
            f.write("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    return "file://" + root


def test_torch_advice_is_honest_when_no_cpu_build_can_be_reached(tmp_path, monkeypatch, closed_port):
    """The old advice (a +cpu pin from an index that does not answer) ended in 'pin torch==2.5.1': the GPU build again."""
    from runtime_builder import gpu, resolve
    from runtime_builder.targets import Target

    # pip sees only a stand-in for PyPI (the CUDA build, torch 2.5.1) and a CPU index that refuses connections
    pypi = tmp_path / "pypi"
    pypi.mkdir()
    _wheel(str(pypi), "torch", "2.5.1", {"torch/__init__.py": ""})
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", _simple_index(str(pypi), list(map(str, pypi.glob("*.whl")))))
    idx = f"http://127.0.0.1:{closed_port}/whl/cpu"
    monkeypatch.setenv(gpu.CPU_INDEX_ENV, idx)
    target = Target.make("3.11")
    plain_pin = re.compile(r"torch==[0-9.]+(?!\+|[0-9.])")  # torch==2.5.1 without +cpu: the GPU build

    with pytest.raises(BuildError) as exc:
        gpu.check_gpu(TORCH_LOCK, {"torch"}, target)
    text = _one_line(exc)
    assert text.startswith("torch pulls GPU-only libraries (nvidia-cublas-cu12, triton) that Lambda, which has no "
                           "GPU, cannot use, and no CPU-only build of torch can be reached from here: PyTorch's CPU "
                           f"index {idx} does not answer (connection refused)"), text
    assert not plain_pin.search(text), text
    assert "`--find-links DIR` and `torch==VERSION+cpu`" in text and "`wrenpack build-runtime -r FILE --python 3.11`" in text

    # following a +cpu pin anyway: the resolver's message must not send the user back to the GPU build
    err = resolve.explain_resolve("ERROR: No matching distribution found for torch==2.5.1+cpu", target,
                                  index=["--extra-index-url", idx])
    text = str(err)
    assert "\n" not in text and not plain_pin.search(text.replace("torch==2.5.1+cpu", "")), text
    assert f"could not read {idx}/torch/ (connection refused)" in text
    assert "no +cpu build of torch has one on the indexes pip reached" in text and "do not drop the +cpu" in text


def test_torch_cpu_advice_works_as_printed(cache, tmp_path, monkeypatch):
    from runtime_builder import gpu
    from runtime_builder.targets import Target

    cpu = tmp_path / "cpu"
    cpu.mkdir()
    wheels = [_wheel(str(cpu), "torch", "2.5.1+cpu", {"torch/__init__.py": "CPU_ONLY = True\n"}),
              # newer, but its wheel needs glibc 2.28: not for python3.11's Amazon Linux 2
              _wheel(str(cpu), "torch", "2.7.0+cpu", {"torch/__init__.py": ""},
                     tag="cp311-cp311-manylinux_2_28_x86_64")]
    idx = _simple_index(str(cpu), wheels)
    monkeypatch.setenv(gpu.CPU_INDEX_ENV, idx)
    with pytest.raises(BuildError) as exc:
        gpu.check_gpu(TORCH_LOCK, {"torch"}, Target.make("3.11", HOST_ARCH))
    text = _one_line(exc)
    command = "wrenpack build-runtime -r FILE --python 3.11" + (" --arch arm64" if HOST_ARCH == "arm64" else "")
    assert (f"fix: use the CPU-only build: put `--extra-index-url {idx}` and `torch==2.5.1+cpu` in a requirements "
            f"file (with your other requirements) and run `{command}`") in text, text
    # do exactly that
    lines = [q for q in re.findall(r"`([^`]+)`", text) if not q.startswith("wrenpack ")]
    req = tmp_path / "requirements.txt"
    req.write_text("".join(ln + "\n" for ln in lines))
    res = runtime_builder.build(requirements_files=[str(req)], python="3.11", arch=HOST_ARCH,
                                output=str(tmp_path / "out"), cache_dir=cache, verify_imports=_verify_here("3.11"))
    lock = open(res.lock).read()
    assert "torch==2.5.1+cpu" in lock and "nvidia" not in lock and "triton" not in lock
    assert {p["name"]: p["version"] for p in res.manifest["packages"]}["torch"] == "2.5.1+cpu"
