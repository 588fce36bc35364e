"""`wrenpack build-runtime` options a user can get wrong: refused in one line before anything is resolved,
and text from packages shown as written. Fast: nothing here downloads or installs."""
from __future__ import annotations

import io
import os

import pytest

import runtime_builder
from runtime_builder import pipeline, resolve
from runtime_builder.targets import Target
from wrenpack.cli import main as cli_main
from wrenpack.errors import BuildError


@pytest.fixture
def no_resolve(monkeypatch, tmp_path):
    """Fail the test if resolution starts; builds write under tmp_path."""
    def refuse(*a, **k):
        raise AssertionError("resolution started for bad input")

    monkeypatch.setattr(resolve, "compile_lock", refuse)
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("tmp_mb", [0, 100, 511, 10241, 100_000])
def test_tmp_size_outside_lambdas_range_is_refused(tmp_mb, no_resolve):
    # --tmp-size 100 built an "archive in /tmp" against a 100 MiB budget Lambda cannot have (its /tmp is
    # 512..10240 MB), and --tmp-size 100000 passed a 97 GiB runtime as fitting
    with pytest.raises(BuildError, match=r"--tmp-size .* 512\.\.10240"):
        runtime_builder.build(["six"], output=str(no_resolve / "out"), target="archive", tmp_size_mb=tmp_mb)


@pytest.mark.parametrize("level", [0, -5, 23, 50])
def test_zstd_level_outside_1_to_22_is_refused(level, no_resolve):
    # zstandard clamps silently: --zstd-level 50 built at 22 (slowly) and said nothing
    with pytest.raises(BuildError, match=r"--zstd-level .* 1\.\.22"):
        runtime_builder.build(["six"], output=str(no_resolve / "out"), zstd_level=level)


def test_unknown_trim_rule_is_refused_naming_the_rules(no_resolve):
    # a misspelt --disable-rule turned nothing off, silently
    with pytest.raises(BuildError, match=r"unknown --disable-rule 'test': the rules are ") as info:
        runtime_builder.build(["six"], output=str(no_resolve / "out"), disabled_rules=["test"])
    message = str(info.value)
    assert "\n" not in message
    for name in (" tests,", " duplicate-libs,", "optional:pyarrow.flight"):
        assert name in message, message


def test_cli_unknown_trim_rule_is_one_line(no_resolve, capsys):
    code = cli_main(["build-runtime", "six", "-o", str(no_resolve / "out"), "--disable-rule", "nosuchrule"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unknown --disable-rule 'nosuchrule'" in lines[0], err


@pytest.mark.parametrize("python", ["3.15", "4.0", "3.9"])
def test_cli_python_lambda_has_no_runtime_for_is_one_line(python, no_resolve, capsys):
    # a layer or archive runs on a managed runtime: --python 3.15 or 4.0 resolved and installed for a
    # runtime Lambda does not have, and only a deploy would have found out
    code = cli_main(["build-runtime", "six", "-o", str(no_resolve / "out"), "--python", python])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert f"Lambda has no python{python} runtime" in lines[0] and "--docker --python" in lines[0], lines[0]
    assert not (no_resolve / "out").exists()


def test_component_rules_and_optional_are_known():
    known = pipeline.known_rules()
    assert {"tests", "docs", "duplicate-libs", "optional", "optional:pyarrow.flight", "strip-so"} <= known


def test_disabling_strip_so_turns_stripping_off(monkeypatch, tmp_path):
    # --disable-rule strip-so was accepted and did nothing: .so files were still stripped
    seen = {}

    def stop(tmp, tgt, inp, lock_text, interp, options, *a, **k):
        seen.update(options)
        raise BuildError("stop here")

    monkeypatch.setattr(pipeline, "_build_into", stop)
    with pytest.raises(BuildError, match="stop here"):
        runtime_builder.build(["six"], output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                              disabled_rules=["strip-so"], verify_imports=False)
    assert seen["strip"] is False


def test_summary_shows_package_text_as_written(monkeypatch):
    # rich read [...] as markup in the summary: a rollback's error 'No module named [x]' lost its text, and
    # a closing tag in one crashed the summary after a successful build
    from rich.console import Console

    from wrenpack.cli import cmd_build_runtime

    manifest = {
        "packages": [{"name": "pkg", "version": "1.0", "bytes_before": 10, "bytes_after": 5}],
        "rules": {"tests": {"bytes_saved": 5, "files": 1, "rolled_back_for": ["a[/b]"]}},
        "bytecode": {"bytes_added": 0},
        "rollbacks": [{"rule": "tests", "dists": ["pkg"], "files": ["x"], "module": "pkg.t",
                       "error": "ImportError: cannot import [/x] from [bold]y"}],
        "fallbacks": [], "components": {}, "mode": {},
        "sizes": {"raw": 10, "trimmed": 5, "layer_zip": 3},
        "target": {"kind": "layer", "limit_bytes": 250 * 2**20},
        "verified": {"ok": True, "modules": ["pkg"]}, "glibc": {},
    }

    class Res:
        pass

    res = Res()
    res.manifest, res.cache_hit, res.seconds, res.stage_seconds = manifest, False, 1.0, {}
    res.output, res.lock = "/o/[x]", "/o/[x]/requirements.lock"
    buf = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: Console(file=buf, width=300))
    cmd_build_runtime._print_human(res)
    out = buf.getvalue()
    for text in ("cannot import [/x] from [bold]y", "a[/b]", "/o/[x]"):
        assert text in out, (text, out)


# ---------------------------------------------------------------- --from-profile and projects not from the index

NO_DIST = "ERROR: No matching distribution found for {spec}\n"


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """pip-compile that finds no file for the pins in ``missing``; the index's versions from ``versions``."""
    state = {"versions": {}, "calls": []}

    def compile_lock(requirements_in, lock_out, target, **k):
        state["calls"].append(requirements_in)
        for line in requirements_in.splitlines():
            if line in state["missing"]:
                raise resolve.explain_resolve(NO_DIST.format(spec=line), target)
        raise BuildError("stop: resolved")

    monkeypatch.setattr(resolve, "compile_lock", compile_lock)
    monkeypatch.setattr(resolve, "probe", lambda names, target, index=None: resolve.Probe(
        {n: state["versions"][n] for n in names if n in state["versions"]}))
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    return state


def _profile(tmp_path, packages):
    import json

    path = tmp_path / "prof.json"
    path.write_text(json.dumps({"schema": "wrenpack.profile/1", "packages": packages}))
    return str(path)


def test_a_profile_pin_the_index_never_released_is_not_swapped_for_another_project(fake_index, tmp_path):
    # the profile of a function importing the user's own `utils` 0.0.1.dev0 (not from any index) built the
    # index's unrelated `utils` 1.0.1 instead, with only a note: a stranger's code under the imported name
    fake_index["missing"] = {"utils==0.0.1.dev0"}
    fake_index["versions"]["utils"] = {"target": ["1.0.0", "1.0.1"], "any": ["1.0.0", "1.0.1"]}
    prof = _profile(tmp_path, [{"name": "utils", "version": "0.0.1.dev0"}])
    with pytest.raises(BuildError) as info:
        runtime_builder.build(profile=prof, output=str(tmp_path / "out"), verify_imports=False)
    message = str(info.value)
    assert "stop: resolved" not in message, "it fell back to the index's utils"
    assert "utils==0.0.1.dev0" in message and "no release 0.0.1.dev0" in message and "\n" not in message, message
    assert len(fake_index["calls"]) == 1


def test_a_released_profile_pin_without_a_target_wheel_still_falls_back(fake_index, tmp_path):
    fake_index["missing"] = {"numpy==2.4.6"}
    fake_index["versions"]["numpy"] = {"target": ["2.2.5", "2.2.6"], "any": ["2.2.5", "2.2.6", "2.4.6"]}
    prof = _profile(tmp_path, [{"name": "numpy", "version": "2.4.6"}])
    with pytest.raises(BuildError, match="stop: resolved"):
        runtime_builder.build(profile=prof, output=str(tmp_path / "out"), verify_imports=False)
    assert "numpy==2.2.6" in fake_index["calls"][-1]


def test_a_requirement_for_a_version_never_released_says_so(fake_index, tmp_path):
    fake_index["missing"] = {"six==99.0"}
    fake_index["versions"]["six"] = {"target": ["1.16.0", "1.17.0"], "any": ["1.16.0", "1.17.0"]}
    with pytest.raises(BuildError, match=r"the index has no release 99\.0 of six.*pin six==1\.17\.0"):
        runtime_builder.build(["six==99.0"], output=str(tmp_path / "out"), verify_imports=False)


# ---------------------------------------------------------------- the target's interpreter


def _fake_python(tmp_path, body):
    path = tmp_path / "python3.12"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("body", [
    "echo 'pyenv: python3.12: command not found' >&2; exit 127",  # a pyenv shim of a version not selected
    'exec "' + __import__("sys").executable + '" "$@"',  # a python3.12 name that runs another version
])
def test_a_python_on_path_that_is_not_the_target_version_is_not_used(body, tmp_path, monkeypatch, no_resolve):
    # `--python 3.12 --no-verify` found pyenv's python3.12 shim (3.12 installed but not selected), resolved and
    # installed, then failed with "compiling bytecode failed: ['      Python versions to be found at the same
    # time.']"; with the import check on, it was not refused up front as "no python3.12 interpreter here"
    from runtime_builder.pipeline import target_interpreter
    from runtime_builder.targets import Target

    fake = _fake_python(tmp_path, body)
    monkeypatch.setattr(pipeline.shutil, "which", lambda name, *a, **k: fake if name == "python3.12" else None)
    assert target_interpreter(Target.make("3.12")) is None
    with pytest.raises(BuildError, match=r"cannot verify a python3\.12-x86_64 runtime: no python3\.12 interpreter"):
        runtime_builder.build(["six"], python="3.12", output=str(no_resolve / "out"))


# ---------------------------------------------------------------- the layer budget


def test_layer_budget_leaves_room_for_the_functions_own_package():
    # Lambda's 250 MiB counts the function's package with its layers, and wrenpack deploys its handler
    # package (worker code and cloudpickle, ~0.5 MiB unzipped) beside the runtime layer: a 249.8 MiB
    # runtime passed the check and then could not be deployed
    import zipfile

    from runtime_builder import budget
    from wrenpack.backends.aws.deploy import handler_package

    handler = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(handler_package())).infolist())
    limit = budget.limit_for("layer")
    assert limit + handler <= 250 * budget.MIB, (limit, handler)
    from wrenpack.errors import BudgetExceeded

    with pytest.raises(BudgetExceeded, match="function's own package"):
        budget.check(250 * budget.MIB - handler // 2, {"big": 250 * budget.MIB}, target="layer")


# ---------------------------------------------------------------- --lock


@pytest.mark.parametrize("text,message", [
    ("six==1.17.0\n", r"no --hash for six==1\.17\.0"),
    ("six>=1.16 \\\n    --hash=sha256:" + "a" * 64 + "\n", r"not pinned with ==: six"),
    ("# only a comment\n", r"holds no requirements"),
])
def test_a_lock_that_pip_cannot_install_exactly_is_refused_before_anything_runs(text, message, tmp_path,
                                                                              monkeypatch):
    # a lock without hashes got as far as pip install and then failed with pip's message cut mid-sentence:
    # "Hashes are required in --require-hashes mode, ... (If you did not enable --require- (run with -v ...)"
    from runtime_builder import installer

    def refuse(*a, **k):
        raise AssertionError("the build went on with a lock pip cannot install")

    monkeypatch.setattr(installer, "install", refuse)
    monkeypatch.setattr(pipeline, "_precheck_wheels", refuse)
    lock = tmp_path / "requirements.lock"
    lock.write_text(text)
    with pytest.raises(BuildError, match=message) as info:
        runtime_builder.build(lock=str(lock), output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(info.value) and str(lock) in str(info.value)


def test_a_mode_that_fits_only_before_bytecode_is_not_promised():
    # the early check (sizes before bytecode) said "a sourceless layer would fit (at least 220.5 MiB): pass
    # --fit" for the scipy stack; its bytecode took it to 254.4 MiB, and --fit built an archive instead
    from runtime_builder import budget
    from wrenpack.errors import BudgetExceeded

    options = {"tmp_size_mb": 512, "fit": False, "target": "layer", "sourceless": False}
    with pytest.raises(BudgetExceeded) as info:
        pipeline._choose_mode(300 * budget.MIB, 220 * budget.MIB, {"big": 300 * budget.MIB}, options, {},
                              lower_bound=True)
    message = str(info.value)
    assert "might fit (at least 220.0 MiB before bytecode)" in message and "would fit" not in message, message
    with pytest.raises(BudgetExceeded, match=r"would fit \(220\.0 MiB\)"):
        pipeline._choose_mode(300 * budget.MIB, 220 * budget.MIB, {"big": 300 * budget.MIB}, options, {})


# ---------------------------------------------------------------- --output that holds someone else's files


@pytest.mark.parametrize("theirs", ["python/mycode.py", "manifest.json", "layer.zip"])
def test_an_output_holding_files_no_build_wrote_is_refused_before_anything_runs(theirs, no_resolve):
    # `wrenpack build-runtime six -o .` in a project with a python/ folder of its own deleted that folder
    # (and replaced its manifest.json) without a word
    out = no_resolve / "proj"
    (out / theirs).parent.mkdir(parents=True, exist_ok=True)
    (out / theirs).write_text('{"mine": 1}')
    with pytest.raises(BuildError, match=r"--output .*proj.* holds .* that no wrenpack build wrote") as info:
        runtime_builder.build(["six"], output=str(out))
    assert "\n" not in str(info.value)
    assert (out / theirs).read_text() == '{"mine": 1}'


def test_an_output_a_build_wrote_is_replaced(tmp_path, monkeypatch):
    out = tmp_path / "rt"
    (out / "python").mkdir(parents=True)
    (out / "manifest.json").write_text('{"manifest_version": 1, "content_hash": "abc", "target": {}, "packages": []}')
    pipeline._check_output(str(out))  # (no error)
    pipeline._check_output(str(tmp_path / "new"))
    (tmp_path / "lockonly").mkdir()
    (tmp_path / "lockonly" / "requirements.lock").write_text(  # a build's committed lock seeds the build
        "cloudpickle==3.1.1 --hash=sha256:" + "a" * 64 + "\nsix==1.17.0 --hash=sha256:" + "b" * 64 + "\n")
    pipeline._check_output(str(tmp_path / "lockonly"))


# ---------------------------------------------------------------- Lambda's SDK and packages that pin it


def _fake_dist(root, name, version, requires=(), modules=None):
    modules = modules or [name.replace("-", "_")]
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"] + [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for m in modules:
        (root / m).mkdir()
        (root / m / "__init__.py").write_text("X = 1\n")
        record.append(f"{m}/__init__.py,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_the_sdk_stays_when_a_package_pins_a_version_lambdas_may_not_have(tmp_path):
    # s3fs -> aiobotocore requires botocore>=1.37.2,<1.37.4: trimmed as "Lambda provides it", the runtime got
    # Lambda's botocore instead, a version aiobotocore does not work with
    from runtime_builder import trim

    pinned = tmp_path / "pinned"
    _fake_dist(pinned, "botocore", "1.37.3")
    _fake_dist(pinned, "aiobotocore", "2.21.1", requires=["botocore<1.37.4,>=1.37.2", "aiohttp>=3.9"])
    plan = trim.plan(str(pinned))
    assert os.path.join("botocore", "__init__.py") not in plan.removed, plan.removed
    exact = tmp_path / "exact"
    _fake_dist(exact, "botocore", "1.37.3")
    _fake_dist(exact, "pins-it", "1.0", requires=["botocore~=1.37.0"])
    assert os.path.join("botocore", "__init__.py") not in trim.plan(str(exact)).removed
    loose = tmp_path / "loose"
    _fake_dist(loose, "botocore", "1.37.3")
    _fake_dist(loose, "user-lib", "1.0", requires=["botocore>=1.20,<2", "boto3==1.35.0; extra == 'aws'"])
    _fake_dist(loose, "other-lib", "1.0", requires=["botocore~=1.35"])
    plan = trim.plan(str(loose))
    assert plan.removed.get(os.path.join("botocore", "__init__.py")) == "lambda-provided", plan.removed


def test_docker_build_refuses_the_options_it_would_ignore(no_resolve, capsys):
    # --docker builds an image with Dockerfile.runtime: --zstd-level, --fit, --tmp-size... were ignored without a word
    code = cli_main(["build-runtime", "six", "-o", str(no_resolve / "out"), "--docker", "--zstd-level", "5", "--fit"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert "--fit, --zstd-level apply to a layer or archive build, not to --docker" in lines[0], lines[0]


@pytest.mark.parametrize("spec", ["six", "six==1.17.0"])
def test_no_wheel_behind_an_index_that_did_not_answer_asks_for_that_index_not_a_pin(spec, monkeypatch):
    # a requirements file's --index-url that refused connections: pip-compile saw nothing, the probe saw the
    # configured indexes' six 1.17.0, and the fix said "pin six==1.17.0", even to a file that pinned it
    idx = "http://127.0.0.1:9/simple"
    monkeypatch.setattr(resolve, "probe", lambda names, target, index=None: resolve.Probe(
        {"six": {"target": ["1.17.0"], "any": ["1.17.0"]}}, {f"{idx}/six/": "[Errno 111] Connection refused"}))
    text = str(resolve.explain_resolve(NO_DIST.format(spec=spec), Target.make("3.11"), index=["--index-url", idx]))
    assert "\n" not in text and "pin six==" not in text, text
    assert f"could not read {idx}/six/ (connection refused); fix: make the index that did not answer reachable" in text


def test_no_wheel_of_a_pin_the_index_has_a_wheel_of_does_not_ask_for_that_pin(monkeypatch):
    monkeypatch.setattr(resolve, "probe", lambda names, target, index=None: resolve.Probe(
        {"six": {"target": ["1.17.0"], "any": ["1.17.0"]}}))
    text = str(resolve.explain_resolve(NO_DIST.format(spec="six==1.17"), Target.make("3.11")))
    assert "pin six==" not in text and "run with -v" in text, text
