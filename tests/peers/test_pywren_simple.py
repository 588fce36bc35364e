"""PyWren's ``tests/test_simple.py`` (vendor/pywren_tests, unchanged) run
against wrenpack through ``tests/peers/shims/pywren``, a small module that maps
PyWren's ``default_executor()``, ``call_async``, ``map``, ``reduce``, ``wait``
and ``get_all_results`` onto wrenpack's API. What each test is expected to do:
``XFAIL``, ``SKIP``, ``FAST`` (see tests/peers/conftest.py)."""
from __future__ import annotations

import os
import sys

import pytest

from tests.peers._adapter import FUTURES, PICKLING, because

pytest.importorskip("numpy", reason="PyWren's tests use numpy; pip install -e '.[test]'")
pytest.importorskip("six", reason="PyWren's tests import six; pip install six")

_SHIMS = os.path.join(os.path.dirname(__file__), "shims")
if _SHIMS not in sys.path:
    sys.path.insert(0, _SHIMS)

from tests.peers.vendor.pywren_tests.test_simple import (  # noqa: E402
    ConfigErrors,
    EnvVars,
    Futures,
    Limits,
    RuntimeCaching,
    SerializeFutures,
    SimpleAsync,
    SimpleMap,
    SimpleReduce,
    WaitTest,
)

__all__ = ["ConfigErrors", "EnvVars", "Futures", "Limits", "RuntimeCaching", "SerializeFutures", "SimpleAsync",
           "SimpleMap", "SimpleReduce", "WaitTest"]

WRENCONFIG = "builds PyWren configuration dicts (pywren.wrenconfig) for its executor: they have no wrenpack counterpart to map onto"

XFAIL: dict[str, str] = {
    "SimpleAsync::test_exit": because(PICKLING, "expects 'non-zero return code' for sys.exit() in the function"),
    "Futures::test_succeeded_errored": because(FUTURES, "calls PyWren's fut.succeeded()/errored()"),
    "RuntimeCaching::test_cached_runtime": because(FUTURES, "reads PyWren's fut.run_status['runtime_cached']"),
}
SKIP: dict[str, str] = {
    "ConfigErrors::test_version_mismatch": WRENCONFIG + " (wrenpack's Python check: tests/test_python_mismatch.py)",
    "Limits::test_map_item_limit": WRENCONFIG,
}
FAST: set[str] = {
    "SimpleAsync::test_exception2",
    "SimpleAsync::test_exit",
    "SimpleMap::test_empty_map",
    "EnvVars::test_env",
}
