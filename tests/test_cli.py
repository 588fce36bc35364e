"""The command line's shape: help, version, exit codes."""
from __future__ import annotations

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "wrenpack", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_available_command():
    from wrenpack.cli import _available

    out = run("--help")
    assert out.returncode == 0
    for name in _available():
        assert name in out.stdout


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("wrenpack ")


def test_no_command_is_usage_error():
    assert run().returncode == 2


def test_unknown_command_is_usage_error():
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
