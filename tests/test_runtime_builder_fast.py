"""The build at installer speed and the slimmer heavy stacks: uv install, parallel zip, identical files,
optional components. Default-run tests use small local trees; the pandas + pyarrow build is ``slow``."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import runtime_builder
from runtime_builder import attribution, components, dedup, installer, pack, trim
from runtime_builder.targets import Target
from tests.test_runtime_builder import PKGS, _tree
from wrenpack.profiler import runner


def _dist(root, name, files):
    """A hand-made installed distribution (dist-info with a RECORD of ``files``)."""
    _tree(root, files)
    info = os.path.join(root, f"{name}-1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n")
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("".join(f"{t},,\n" for t in list(files) + [f"{name}-1.0.dist-info/METADATA",
                                                           f"{name}-1.0.dist-info/RECORD"]))


# --- the installer ------------------------------------------------------------------------------

def test_uv_gets_exactly_the_file_pip_chose_with_the_locks_hash():
    lock = ("six==1.17.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
            "    # via -r requirements.in\n")
    chosen = {"six": {"url": "https://files.example/six-1.17.0-py2.py3-none-any.whl", "sha256": "b" * 64}}
    assert installer.uv_requirements(lock, chosen) == (
        "six @ https://files.example/six-1.17.0-py2.py3-none-any.whl --hash=sha256:" + "b" * 64 + "\n")
    # a file whose hash the lock does not list, or no known file: pip installs (and checks) the lock
    assert installer.uv_requirements(lock, {"six": dict(chosen["six"], sha256="c" * 64)}) is None
    assert installer.uv_requirements(lock, {}) is None


def test_uv_platform_accepts_every_wheel_the_target_does():
    assert installer.uv_platform(Target.make("3.11", "x86_64")) == "x86_64-manylinux_2_28"  # glibc 2.26
    assert installer.uv_platform(Target.make("3.12", "arm64")) == "aarch64-manylinux_2_34"


def test_installer_choice_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("WRENPACK_INSTALLER", "conda")
    with pytest.raises(runtime_builder.BuildError, match="WRENPACK_INSTALLER='conda' is not an installer"):
        installer.choice()
    assert installer.choice("PIP") == "pip"  # --installer wins over the environment
    with pytest.raises(runtime_builder.BuildError, match="unknown installer 'npm'; fix: pass --installer"):
        runtime_builder.build(["six"], output=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"),
                              installer_choice="npm")
    assert not os.path.exists(tmp_path / "o" / "requirements.lock")  # refused before resolving


def test_uv_and_pip_install_the_same_runtime(tmp_path, monkeypatch):
    """The small runtime's lock, installed by each: byte-identical trees (same files, same content hash)."""
    if installer.find_uv() is None:
        pytest.skip("uv is not installed (pip install wrenpack[fast])")
    out = {}
    for how in ("uv", "pip"):
        monkeypatch.setenv("WRENPACK_INSTALLER", how)
        res = runtime_builder.build(PKGS, output=str(tmp_path / how), cache_dir=str(tmp_path / "cache"),
                                    verify_imports=False, use_cache=False)
        out[how] = res.manifest
    assert out["uv"]["installer"].startswith("uv ") and out["pip"]["installer"] == "pip"
    assert out["uv"]["content_hash"] == out["pip"]["content_hash"]
    assert not os.path.exists(tmp_path / "uv" / "python" / ".lock")  # uv's own lock file is not shipped


# --- packing ------------------------------------------------------------------------------------

def _packable(root):
    big = b"".join(b"row %08d of a large, compressible file\n" % i for i in range(150_000))  # ~6 MiB
    files = {"pkg/__init__.py": b"X = 1\n", "pkg/big.bin": big, "pkg/a/lib.so": b"\x7fELF" + b"\x01" * 9000,
             "pkg/b/lib.so": b"\x7fELF" + b"\x01" * 9000, "pkg/empty.txt": b""}
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return files


def test_parallel_zip_is_valid_deterministic_and_holds_every_name(tmp_path):
    root = str(tmp_path / "t")
    files = _packable(root)
    assert dedup.link_identical(root) == {os.path.join("pkg", "b", "lib.so"): 9004}
    assert os.path.samefile(os.path.join(root, "pkg/a/lib.so"), os.path.join(root, "pkg/b/lib.so"))
    one, two = io.BytesIO(), io.BytesIO()
    pack.write_zip(root, one, workers=1)
    pack.write_zip(root, two, workers=3)
    assert one.getvalue() == two.getvalue()  # the thread count does not show in the bytes
    with zipfile.ZipFile(one) as zf:
        assert zf.testzip() is None
        assert {i.filename: zf.read(i) for i in zf.infolist()} == {"python/" + k: v for k, v in files.items()}
        assert all(i.date_time == pack.ZIP_EPOCH and i.external_attr >> 16 == 0o100644 for i in zf.infolist())
    # the large file went in pieces, and unzip (not only Python's zipfile) reads the stream
    assert os.path.getsize(os.path.join(root, "pkg/big.bin")) > 2 * pack.CHUNK
    if shutil.which("unzip"):
        path = tmp_path / "t.zip"
        path.write_bytes(one.getvalue())
        assert subprocess.run(["unzip", "-tq", str(path)], capture_output=True).returncode == 0


def test_tar_stores_identical_files_once_and_extraction_links_them(tmp_path):
    root = str(tmp_path / "t")
    files = _packable(root)
    dedup.link_identical(root)
    buf = io.BytesIO()
    pack.write_tar(root, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        kinds = {m.name: (m.type, m.linkname) for m in tar}
    assert kinds["python/pkg/b/lib.so"] == (tarfile.LNKTYPE, "python/pkg/a/lib.so")
    assert kinds["python/pkg/a/lib.so"][0] == tarfile.REGTYPE
    arc = str(tmp_path / "r.tar.zst")
    pack.write_tar_zst(root, arc)
    dest = str(tmp_path / "x")
    pack.extract_tar_zst(arc, dest)
    for rel, data in files.items():
        with open(os.path.join(dest, "python", rel), "rb") as f:
            assert f.read() == data, rel


# --- identical libraries and optional components --------------------------------------------------

def _soname_lib(tmp_path):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no gcc or cc on this machine: cannot compile the test library")
    src = tmp_path / "dup.c"
    src.write_text("int dup_value(void) { return 7; }\n")
    out = tmp_path / "libdup.so.3"
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-Wl,-soname,libdup.so.3", "-o", str(out), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a shared library here: {proc.stderr.strip()[:200]}")
    return out.read_bytes()


def test_duplicate_libs_keep_the_copy_named_as_the_soname(tmp_path):
    lib = _soname_lib(tmp_path)
    raw = str(tmp_path / "raw")
    _dist(raw, "duppkg", {"duppkg/__init__.py": "import ctypes, os\n"
                          "LIB = ctypes.CDLL(os.path.join(os.path.dirname(__file__), 'libdup.so.3'))\n"
                          "assert LIB.dup_value() == 7\n"})
    for name in ("libdup.so", "libdup.so.3", "libdup.so.3.0.1"):
        with open(os.path.join(raw, "duppkg", name), "wb") as f:
            f.write(lib)
    plan = trim.plan(raw)
    j = os.path.join
    assert {p for p, r in plan.removed.items() if r == trim.DUPLICATE_RULE} == {j("duppkg", "libdup.so"),
                                                                             j("duppkg", "libdup.so.3.0.1")}
    site, work = str(tmp_path / "site"), str(tmp_path / "work")
    os.makedirs(work)
    trim.materialize(plan, site, strip=False)
    options = {"sourceless": False, "skip_imports": [], "verify_modules": []}
    modules, _ = attribution.verify_tree(plan, site, work, sys.executable, options)
    assert "duppkg" in modules and plan.rollbacks == []
    assert plan.savings()[trim.DUPLICATE_RULE] == {"bytes": 2 * len(lib), "files": 2}


def test_components_are_trimmed_unless_a_module_of_them_is_imported():
    flight = components.by_rule()["optional:pyarrow.flight"]
    assert flight.matches("pyarrow/_flight.cpython-311-x86_64-linux-gnu.so")
    assert flight.matches("pyarrow/libarrow_flight.so.2000") and flight.matches("pyarrow/__pycache__/flight.cpython-311.pyc")
    assert not flight.matches("pyarrow/lib.cpython-311-x86_64-linux-gnu.so")
    trimmed, kept = components.split(["pyarrow", "pyarrow.flight", "pyarrow._flight", "numpy.distutils.core"])
    assert kept == {"pyarrow.flight": ["pyarrow._flight", "pyarrow.flight"], "numpy.distutils": ["numpy.distutils.core"]}
    assert "pyarrow.flight" not in {c.name for c in trimmed} and "pyarrow.orc" in {c.name for c in trimmed}


SIMD = os.path.join("numpy", "_core", "_simd.cpython-311-x86_64-linux-gnu.so")


def _fake_numpy(raw, init="import numpy.distutils\n"):
    _dist(raw, "numpy", {"numpy/__init__.py": init, "numpy/distutils/__init__.py": "X = 1\n",
                         "numpy/_core/__init__.py": "", SIMD: "not loaded by anything\n"})


def test_a_component_something_imports_is_rolled_back_by_the_import_check(tmp_path):
    raw, site, work = str(tmp_path / "raw"), str(tmp_path / "site"), str(tmp_path / "work")
    _fake_numpy(raw)
    os.makedirs(work)
    plan = trim.plan(raw)
    j = os.path.join
    assert plan.removed[j("numpy", "distutils", "__init__.py")] == "optional:numpy.distutils"
    assert plan.removed[SIMD] == "optional:numpy-test-modules"
    trim.materialize(plan, site)
    options = {"sourceless": False, "skip_imports": [], "verify_modules": []}
    attribution.verify_tree(plan, site, work, sys.executable, options)
    assert [(r["rule"], r["module"]) for r in plan.rollbacks] == [("optional:numpy.distutils", "numpy")]
    assert os.path.exists(j(site, "numpy", "distutils", "__init__.py"))
    assert not os.path.exists(j(site, SIMD))  # the other component keeps its savings


def test_a_component_the_profile_saw_imported_is_kept(tmp_path):
    raw = str(tmp_path / "raw")
    _fake_numpy(raw, init="")
    plan = trim.plan(raw, imported=["numpy", "numpy.distutils.core"])
    assert os.path.join("numpy", "distutils", "__init__.py") not in plan.removed
    assert plan.kept_components == {"numpy.distutils": ["numpy.distutils.core"]}
    assert "optional:numpy.distutils" not in {r for r in plan.removed.values()}
    # and --disable-rule optional turns every component rule off
    assert not [r for r in trim.plan(raw, disabled=["optional"]).removed.values() if r.startswith("optional:")]


def test_profile_imported_modules_feed_the_build(tmp_path):
    import json

    from runtime_builder import inputs

    assert runner.imported_modules({"pyarrow", "pyarrow.flight", "json.decoder", "wrenpack.x", "old.sub"},
                                   {"old", "json"}) == ["pyarrow", "pyarrow.flight"]
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"packages": [{"name": "pyarrow", "version": "20.0.0"}],
                                "imported_modules": ["pyarrow", "pyarrow._flight", "pyarrow.flight"]}))
    inp = inputs.gather(profile=str(prof))
    assert inp.imported == ["pyarrow", "pyarrow._flight", "pyarrow.flight"] and inp.modules == []


def _gcc(tmp_path, name, source, *args):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no gcc or cc on this machine: cannot compile the test libraries")
    src = tmp_path / (name + ".c")
    src.write_text(source)
    out = tmp_path / name
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), str(src), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a shared library here: {proc.stderr.strip()[:200]}")
    return out


def test_a_removed_library_nothing_binds_to_is_dropped_from_dt_needed(tmp_path):
    """Overlinked objects (pyarrow lists libarrow_substrait everywhere and binds nothing to it): the library
    goes and the entries naming it are dropped; a library something binds a symbol to stays."""
    from runtime_builder import elf

    libs = tmp_path / "libs"
    libs.mkdir()
    _gcc(libs, "libcore.so.1", "int core_value(void) { return 40; }\n", "-Wl,-soname,libcore.so.1")
    _gcc(libs, "libunused.so.1", "int unused_value(void) { return 1; }\n", "-Wl,-soname,libunused.so.1")
    _gcc(libs, "libused.so.1", "int used_value(void) { return 2; }\n", "-Wl,-soname,libused.so.1")
    link = ["-Wl,--no-as-needed", f"-L{libs}", "-Wl,-rpath,$ORIGIN"]
    _gcc(libs, "mod.so", "int core_value(void);\nint mod_value(void) { return core_value() + 2; }\n",
         *link, "-l:libcore.so.1", "-l:libunused.so.1")
    _gcc(libs, "other.so", "int used_value(void);\nint other_value(void) { return used_value(); }\n",
         *link, "-l:libused.so.1", "-l:libunused.so.1")
    raw = str(tmp_path / "raw")
    files = {f"linkpkg/{n}": "" for n in ("libcore.so.1", "libunused.so.1", "libused.so.1", "mod.so", "other.so")}
    _dist(raw, "linkpkg", {"linkpkg/__init__.py": "", **files})
    for rel in files:
        shutil.copyfile(libs / os.path.basename(rel), os.path.join(raw, rel))
    gone = {os.path.join("linkpkg", "libunused.so.1"), os.path.join("linkpkg", "libused.so.1")}
    rule = trim.Rule("drop-libs", "test", lambda rel, dist: rel in gone)
    plan = trim.plan(raw, extra_rules=[rule])
    j = os.path.join
    assert {p for p, r in plan.removed.items() if r == "drop-libs"} == {j("linkpkg", "libunused.so.1")}
    assert plan.kept_libraries == {j("linkpkg", "libused.so.1"): f"{j('linkpkg', 'other.so')} binds used_value to it"}
    assert plan.unlinked == {j("linkpkg", "mod.so"): {"libunused.so.1"}, j("linkpkg", "other.so"): {"libunused.so.1"}}
    site = str(tmp_path / "site")
    trim.materialize(plan, site, strip=False)
    assert elf.needed(j(site, "linkpkg", "mod.so"))[:1] == ["libcore.so.1"]
    assert "libunused.so.1" not in elf.needed(j(site, "linkpkg", "mod.so"))
    assert "libunused.so.1" in elf.needed(j(raw, "linkpkg", "mod.so"))  # the installed tree is never written to
    assert os.path.getsize(j(site, "linkpkg", "mod.so")) == os.path.getsize(j(raw, "linkpkg", "mod.so"))
    check = ("import ctypes, os, sys; d = sys.argv[1]\n"
             "m = ctypes.CDLL(os.path.join(d, 'mod.so'), mode=os.RTLD_NOW)\n"
             "o = ctypes.CDLL(os.path.join(d, 'other.so'), mode=os.RTLD_NOW)\n"
             "print(m.mod_value(), o.other_value())\n")
    out = subprocess.run([sys.executable, "-c", check, j(site, "linkpkg")], capture_output=True, text=True)
    assert out.stdout.split() == ["42", "2"], out.stderr


def test_heavy_stack_components_and_static_libraries():
    by_rule = components.by_rule()
    sub, ds = by_rule["optional:pyarrow.substrait"], by_rule["optional:pyarrow.dataset"]
    assert sub.matches("pyarrow/libarrow_substrait.so.2000") and ds.matches("pyarrow/libarrow_dataset.so.2000")
    assert ds.matches("pyarrow/_dataset_parquet.cpython-311-x86_64-linux-gnu.so")
    assert not ds.matches("pyarrow/libarrow_acero.so.2000")  # libarrow_python binds libstdc++ pieces in it
    assert not ds.matches("pyarrow/_dataset_orc.cpython-311-x86_64-linux-gnu.so")  # the ORC component's
    # substrait needs libarrow_dataset: keeping substrait keeps datasets
    assert set(components.split(["pyarrow.substrait"])[1]) == {"pyarrow.substrait", "pyarrow.dataset"}
    # a part that needs a dependency pandas does not install goes only while that dependency is absent
    style = "pandas/io/formats/__pycache__/style_render.cpython-311.pyc"
    assert by_rule["optional:pandas.io.formats.style"].matches(style)
    trimmed, kept = components.split([], installed=["pandas", "Jinja2"])
    assert kept == {"pandas.io.formats.style": ["pandas.io.formats.style", "pandas.io.formats.style_render"]}
    assert "pandas.plotting._matplotlib" in {c.name for c in trimmed}
    sas = by_rule["optional:pandas.io.sas"]
    assert sas.matches("pandas/_libs/sas.cpython-311-x86_64-linux-gnu.so") and sas.matches("pandas/io/sas/sas7bdat.py")
    assert not sas.matches("pandas/io/sas/sasreader.py") and not sas.matches("pandas/io/sas/__init__.py")
    rules = {r.name: r for r in trim.default_rules(keep_boto3=False, requested=set(), kept_tests=set(),
                                                   doc_dirs_without_init=set(), owner={})}
    assert rules["static-libs"].match("numpy/_core/lib/libnpymath.a", "numpy")
    assert not rules["static-libs"].match("pkg/data.arrow", "pkg")


def test_bytecode_has_no_column_positions(tmp_path):
    """Column positions only draw a traceback's ^^^^; without them bytecode is 5% smaller."""
    import marshal

    from runtime_builder import bytecode

    if sys.version_info < (3, 11):
        pytest.skip("column positions came with Python 3.11")
    (tmp_path / "m.py").write_text("def f(a, b):\n    return a.x + b[0]\n")
    bytecode.compile_tree(sys.executable, str(tmp_path))
    pyc = next((tmp_path / "__pycache__").glob("m.*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    fn = next(c for c in code.co_consts if hasattr(c, "co_positions"))
    assert {(start, end) for _, _, start, end in fn.co_positions()} == {(None, None)}
    assert {line for line, *_ in fn.co_positions()} >= {2}  # lines stay


# --- the heavy stack (downloads pandas and pyarrow: slow) ---------------------------------------------

ROUND_TRIP = ("import io, pandas as pd, pyarrow as pa, pyarrow.parquet as pq\n"
              "df = pd.read_csv(io.StringIO('a,b\\n1,x\\n2,y\\n3,z\\n'))\n"
              "assert pd.read_csv(io.BytesIO(b'a,b\\n1,x\\n'), engine='pyarrow')['a'].tolist() == [1]\n"
              "buf = io.BytesIO(); df.to_parquet(buf); buf.seek(0)\n"
              "assert pd.read_parquet(buf).equals(df)\n"
              "t = pa.table({'n': [1.5, 2.5]}); sink = pa.BufferOutputStream(); pq.write_table(t, sink)\n"
              "assert pq.read_table(pa.BufferReader(sink.getvalue())).equals(t)\n"
              "print('ok')\n")


@pytest.mark.slow
def test_pandas_pyarrow_runtime_is_slim_and_round_trips(tmp_path):
    kw = dict(python="%d.%d" % sys.version_info[:2], cache_dir=str(tmp_path / "cache"),
              verify_modules=["pandas", "pyarrow", "pyarrow.parquet"])
    res = runtime_builder.build(["pandas", "pyarrow"], output=str(tmp_path / "rt"), **kw)
    sl = runtime_builder.build(lock=res.lock, output=str(tmp_path / "sl"), sourceless=True, **kw)
    rules = res.manifest["rules"]
    assert rules["optional:pyarrow.flight"]["bytes_saved"] > 10 * 2**20
    assert rules["duplicate-libs"]["files"] >= 2
    # with sources, as built by default (AWS's SDK-for-pandas layer is about 154 MiB)
    assert res.sizes["trimmed"] <= 154 * 2**20, res.sizes
    assert sl.sizes["trimmed"] < res.sizes["trimmed"]
    for r in (res, sl):
        out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {r.site_dir!r})\n"
                              + ROUND_TRIP], capture_output=True, text=True)
        assert out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.slow
def test_artifacts_packed_beside_the_import_check_hold_the_rolled_back_tree(tmp_path):
    """The zip and archive are written while the import check runs; a rollback must repack them."""
    small = runtime_builder.build(PKGS, output=str(tmp_path / "small"), cache_dir=str(tmp_path / "c"),
                                  verify_imports=False)
    bad = trim.Rule("delete-idnadata", "deliberately broken",
                    lambda rel, dist: rel == os.path.join("idna", "idnadata.py"))
    res = runtime_builder.build(lock=small.lock, output=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"),
                                extra_rules=[bad], artifacts="all")
    assert res.manifest["rules"]["delete-idnadata"]["rolled_back_for"] == ["idna"]
    with zipfile.ZipFile(res.layer_zip) as zf:
        assert "python/idna/idnadata.py" in zf.namelist()
    pack.extract_tar_zst(res.archive, str(tmp_path / "x"))
    assert pack.content_hash(str(tmp_path / "x" / "python")) == res.manifest["content_hash"]


def test_a_failed_import_check_leaves_no_packing_behind(tmp_path):
    from tests.test_runtime_builder import _wheel

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pad = "".join(f"# {i:06d} padding so the zip takes a moment\n" for i in range(200_000))
    _wheel(str(wheels), "failpkg", "1.0", {"failpkg/__init__.py": "raise ImportError('failpkg cannot load')\n",
                                           "failpkg/pad.py": pad})
    req = tmp_path / "requirements.txt"
    req.write_text(f"--find-links {wheels}\nfailpkg==1.0\n")
    cache = tmp_path / "cache"
    with pytest.raises(runtime_builder.BuildError, match="import check failed: `import failpkg`"):
        runtime_builder.build(requirements_files=[str(req)], output=str(tmp_path / "out"), cache_dir=str(cache))
    assert os.listdir(cache) == []  # the build's directory is gone, and no writer put anything back


def test_bisection_scratch_never_writes_into_the_installed_files(tmp_path):
    """Trimmed files are hard links to the installed ones (and those to uv's cache): undoing a scratch
    restore must replace the file, not write the stripped bytes through the link."""
    raw, site, work = str(tmp_path / "raw"), str(tmp_path / "site"), str(tmp_path / "work")
    rel = os.path.join("pkg", "lib.so")
    _dist(raw, "pkg", {"pkg/__init__.py": "", "pkg/lib.so": "the installed, unstripped bytes\n"})
    plan = trim.plan(raw)
    trim.materialize(plan, site, strip=False)
    os.unlink(os.path.join(site, rel))
    with open(os.path.join(site, rel), "w") as f:  # what a strip leaves: another file at the same path
        f.write("stripped\n")
    scratch = attribution._Scratch(plan, site, work)
    undo = scratch.apply([rel])
    assert open(os.path.join(site, rel)).read() == "the installed, unstripped bytes\n"
    scratch.revert(undo)
    assert open(os.path.join(site, rel)).read() == "stripped\n"
    assert open(os.path.join(raw, rel)).read() == "the installed, unstripped bytes\n"
