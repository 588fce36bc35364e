"""`wrenpack build-runtime` options a user can get wrong: refused in one line before anything is resolved,
and text from packages shown as written. Fast: nothing here downloads or installs."""
from __future__ import annotations

import io

import pytest

import runtime_builder
from runtime_builder import pipeline, resolve
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
