"""The day the emulated Lambda tests deploy on.

The emulator runs the functions with this interpreter, so they deploy this
Python's runtime; AWS stopped taking python3.10/3.11 functions in 2026.
Tests about deploying and calling (not about runtime dates) therefore run
as of a day Lambda still took this Python: the day before its deprecation,
or today when it is still supported. Tests of the dates pass their own day.
"""
from __future__ import annotations

import datetime
import sys

import pytest

import wrenpack.backends.aws.runtimes as runtimes

PYTHON = "%d.%d" % sys.version_info[:2]


def day_this_python_deploys() -> datetime.date:
    row = runtimes.find(PYTHON)
    if row is None:
        pytest.skip(f"Lambda has no python{PYTHON} runtime in wrenpack's table: the emulated tests cannot deploy it")
    if row.state() == runtimes.SUPPORTED:
        return runtimes.today()
    return row.deprecated - datetime.timedelta(days=1)


def live_day_for_this_process() -> datetime.date:
    """The same, for a whole program a test runs (it deploys as of that day until it exits)."""
    day = day_this_python_deploys()
    runtimes.today = lambda: day
    return day


def deploy_as_of_a_live_day(monkeypatch: pytest.MonkeyPatch) -> datetime.date:
    """Make ``runtimes.today`` a day this Python's runtime is supported; that day."""
    day = day_this_python_deploys()
    monkeypatch.setattr(runtimes, "today", lambda: day)
    return day
