"""The peer suites (CPython's test_concurrent_futures, loky's executor tests,
PyWren's test_simple) run against ``wrenpack.Executor``.

``vendor/`` holds the peers' files unchanged; each ``test_*.py`` here builds
the peer's test classes on ``wrenpack.Executor`` and says, per test, what is
expected of it in three tables of its own:

* ``XFAIL``: a test that fails by design, each with the README difference
  ("Differences from concurrent.futures") that says why. Strict: a test that
  starts to pass fails the run, so the list stays true.
* ``SKIP``: a test that does not exercise the executor under test at all
  (it builds the peer's own executor, or needs a module wrenpack's peer lacks).
* ``FAST``: the tests of the default run; every other peer test is ``slow``
  (the peers sleep a lot: ``-m slow`` runs them all).
"""
from __future__ import annotations

import pytest

collect_ignore = ["vendor", "shims"]


def pytest_configure(config):
    for mark in ("broken_pool: loky's mark: the test expects its pool to end up broken",
                 "high_memory: loky's mark: the test allocates gigabytes"):
        config.addinivalue_line("markers", mark)


def _key(item: pytest.Item) -> str:
    """``Class::test`` (what the tables name), parameters included."""
    parts = item.nodeid.split("::")
    return "::".join(parts[1:])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:  # (every item of the session: only the peer modules here have the tables)
        module = getattr(item, "module", None)
        if module is None or not hasattr(module, "XFAIL") or "peers" not in item.nodeid.split("::")[0]:
            continue
        key = _key(item)
        if key in module.SKIP:
            item.add_marker(pytest.mark.skip(reason=module.SKIP[key]))
        elif key in module.XFAIL:
            item.add_marker(pytest.mark.xfail(reason=module.XFAIL[key], strict=True))
        if key not in module.FAST:
            item.add_marker(pytest.mark.slow)


