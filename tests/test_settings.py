"""Every setting is validated where it is given: each bad value is a
one-line ConfigError naming the setting, its source and what is allowed."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import wrenpack
from wrenpack import limits
from wrenpack.config import Config, current
from wrenpack.errors import ConfigError

BAD = [
    ("memory", "lots", "whole number of MB in 128..10240"),
    ("memory", 1500.7, "whole number of MB in 128..10240"),
    ("memory", float("nan"), "whole number of MB in 128..10240"),
    ("memory", 64, "outside Lambda's range"),
    ("memory", True, "whole number of MB"),
    ("timeout", float("nan"), r"\(0, 900\]"),
    ("timeout", 901, r"\(0, 900\]"),
    ("timeout", 0, r"\(0, 900\]"),
    ("ephemeral_storage", 600.5, "512..10240"),
    ("retries", "x", "whole number >= 0"),
    ("retries", 1.5, "whole number >= 0"),
    ("retries", -1, "whole number >= 0"),
]


@pytest.mark.parametrize("name,value,allowed", BAD)
def test_bad_option_fails_where_given(name, value, allowed):
    for source, make in (
        ("@wrenpack.remote", lambda: wrenpack.remote(abs, **{name: value})),
        ("options()", lambda: wrenpack.remote(abs).options(**{name: value})),
        ("argument", lambda: current(**{name: value})),
        ("configure()", lambda: wrenpack.configure(**{name: value})),
    ):
        with pytest.raises(ConfigError, match=allowed) as info:
            make()
        msg = str(info.value)
        assert name in msg and source in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "name,value,allowed",
    [("concurrency", "0", ">= 1"), ("keep_warm", "-1", "> 0"), ("keep_warm", "0", "> 0"), ("inline_limit", "-1", ">= 0"),
     ("memory", "1500.7", "whole number"), ("memory", "nan", "whole number"), ("retries", "1.5", "whole number"),
     # (read as 1e300 s, it was accepted; every spawned job then had a date no command could show)
     ("job_retention", "1e300", "longer than 100 years"), ("job_retention", "36501d", "longer than 100 years")],
)
def test_bad_environment_variable_names_itself(monkeypatch, name, value, allowed):
    var = f"WRENPACK_{name.upper()}"
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=allowed) as info:
        Config.load()
    assert f"environment variable {var}" in str(info.value)


def test_bad_pyproject_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.wrenpack]\nmemory = 1500.7\n")
    with pytest.raises(ConfigError, match=r"memory=1500.7 \(from \[tool.wrenpack\]\)"):
        Config.load()
    (tmp_path / "pyproject.toml").write_text("[tool.wrenpack]\nconcurrency = 0\n")
    with pytest.raises(ConfigError, match="concurrency"):
        Config.load()


def test_executor_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="concurrency=0"):
        wrenpack.Executor(storage=str(tmp_path), concurrency=0)
    with pytest.raises(ConfigError, match="keep_warm"):
        wrenpack.Executor(storage=str(tmp_path), keep_warm=-1)
    with pytest.raises(ConfigError, match="memory"):
        Config(memory="lots")


def test_whole_numbers_are_not_truncated_but_whole_floats_pass(monkeypatch):
    assert current(memory=2048.0, retries=2.0, concurrency=3).memory == 2048
    monkeypatch.setenv("WRENPACK_MEMORY", "2048")  # (text: from the environment, not as an argument)
    assert current().memory == 2048
    assert current(retries=2.0).retries == 2 and isinstance(current(retries=2.0).retries, int)
    assert limits.check_memory(1536.0) == 1536
    with pytest.raises(ConfigError):
        limits.check_memory(1536.5)


def test_misspelled_environment_variable_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("WRENPACK_MEMROY", "2048")
    with caplog.at_level(logging.WARNING, logger="wrenpack"):
        Config.load()
    assert any("WRENPACK_MEMROY" in r.getMessage() and "WRENPACK_MEMORY" in r.getMessage() for r in caplog.records)


def test_the_variables_wrenpack_deploy_gives_a_function_are_not_warned_about(monkeypatch, caplog):
    """A call on Lambda that launched calls of its own read its settings there, in the
    function's environment: each such call's output said "ignoring unknown environment
    variable WRENPACK_VERSION" and WRENPACK_EVENT_PROTOCOL (probe15's finding 8)."""
    from wrenpack.backends.local.process import _LAMBDA_FUNCTION_ENV
    from wrenpack import config as config_module

    monkeypatch.setattr(config_module, "_warned_env", set())
    for name in _LAMBDA_FUNCTION_ENV:
        if name.startswith("WRENPACK_"):
            monkeypatch.setenv(name, "1")
    with caplog.at_level(logging.WARNING, logger="wrenpack"):
        Config.load()
    assert not [r.getMessage() for r in caplog.records if "unknown environment variable" in r.getMessage()]


def test_config_does_not_import_the_executor():
    code = "import sys, wrenpack.config, wrenpack.limits; print('wrenpack.executor' in sys.modules, 'wrenpack.futures' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_limits_is_stdlib_only():
    code = (
        "import sys; before = set(sys.modules); import wrenpack.limits; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(','.join(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'wrenpack')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
