"""End-to-end runtime builds (real pip-compile, real PyPI wheels) and unit tests of the parts.

The small runtime (six, idna, msgpack with its compiled extension, cloudpickle)
is built once per session into a session cache; pip's own cache keeps the
downloads quick on repeated runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from importlib.metadata import version

import pytest

import runtime_builder
from runtime_builder import budget, elf, pack, trim, verify
from wrenpack.errors import BudgetExceeded, BuildError, NoSuitableWheel

PKGS = ["six", "idna", "msgpack"]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("wrenpack-cache"))


@pytest.fixture(scope="session")
def small(cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rt") / "runtime")
    return runtime_builder.build(PKGS, output=out, cache_dir=cache)


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


def test_cache_hit_is_fast_and_rebuild_is_byte_identical(small, cache, tmp_path):
    t = time.perf_counter()
    hit = runtime_builder.build(PKGS, output=str(tmp_path / "again"), cache_dir=cache)
    assert hit.cache_hit and time.perf_counter() - t < 1.5
    assert _sha(hit.layer_zip) == _sha(small.layer_zip)
    # a full rebuild (no cache, another cache dir, another output dir) gives the same bytes
    fresh = runtime_builder.build(PKGS, output=str(tmp_path / "fresh"), cache_dir=str(tmp_path / "c2"),
                                  use_cache=False)
    assert not fresh.cache_hit
    for a, b in ((fresh.layer_zip, small.layer_zip), (fresh.archive, small.archive),
                 (fresh.manifest_path, small.manifest_path), (fresh.lock, small.lock)):
        assert _sha(a) == _sha(b), os.path.basename(a)


def test_building_from_the_lock_is_reproducible(small, cache, tmp_path):
    res = runtime_builder.build(lock=small.lock, output=str(tmp_path / "fromlock"), cache_dir=cache)
    assert res.manifest["content_hash"] == small.manifest["content_hash"]


def test_broken_trim_rule_is_caught_and_rolled_back(cache, tmp_path):
    # idna/core.py imports idna.idnadata: a rule deleting it breaks `import idna`
    bad = trim.Rule("delete-idnadata", "deliberately broken", lambda rel, dist: rel == os.path.join("idna", "idnadata.py"))
    res = runtime_builder.build(PKGS, output=str(tmp_path / "out"), cache_dir=cache, extra_rules=[bad])
    assert res.manifest["rules"]["delete-idnadata"]["rolled_back_for"] == ["idna"]
    assert os.path.exists(os.path.join(res.site_dir, "idna", "idnadata.py"))
    assert res.manifest["verified"]["ok"]


def test_import_failure_not_caused_by_trimming_fails_the_build(cache, tmp_path):
    with pytest.raises(BuildError, match=r"import no_such_module_here.*--skip-import no_such_module_here"):
        runtime_builder.build(PKGS, output=str(tmp_path / "out"), cache_dir=cache,
                              verify_modules=["no_such_module_here"])


def test_no_wheel_for_target_suggests_docker(cache, tmp_path):
    # msgpack 0.5.6 predates Python 3.11: no cp311 manylinux wheel exists
    with pytest.raises(NoSuitableWheel, match=r"msgpack.*--docker") as exc:
        runtime_builder.build(["msgpack==0.5.6"], output=str(tmp_path / "out"), cache_dir=cache)
    assert "\n" not in str(exc.value)


def test_over_budget_fails_with_largest_packages(cache, tmp_path):
    with pytest.raises(BudgetExceeded, match=r"over /tmp \(0 MiB\).*largest MiB: .*fix:") as exc:
        runtime_builder.build(PKGS, output=str(tmp_path / "out"), cache_dir=cache, target="archive", tmp_size_mb=0)
    assert exc.value.rows and exc.value.rows[0][1] >= exc.value.rows[-1][1]
    assert "\n" not in str(exc.value)


def test_cli_json_and_budget_table(small, cache, tmp_path):
    env_out = str(tmp_path / "cli")
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", *PKGS, "--json", "--output", env_out,
                           "--cache-dir", cache], capture_output=True, text=True)
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
    with pytest.raises(BudgetExceeded, match=r"300\.0 MiB unzipped, over the 250 MiB layer limit by 50\.0 MiB"):
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
