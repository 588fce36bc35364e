"""The peer suites' tables stay true: every README difference an expected
failure names is in the README, and every test a table names exists (a typo
would otherwise leave a failure unmarked, or a stale entry behind)."""
from __future__ import annotations

import importlib
import pathlib

import pytest

from tests.peers import _adapter

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
PEERS = ("test_cpython_futures", "test_loky_executor", "test_pywren_simple")


def _differences_section() -> str:
    text = README.read_text()
    start = text.index("### Differences from `concurrent.futures`")
    return text[start:text.index("\n### ", start + 1)]


def test_every_difference_named_is_a_readme_bullet():
    bullets = [line[2:] for line in _differences_section().splitlines() if line.startswith("- ")]
    for difference in _adapter.DIFFERENCES:
        assert any(b.startswith(difference) for b in bullets), f"no README bullet begins {difference!r}"


@pytest.mark.parametrize("name", PEERS)
def test_tables_name_existing_tests(name):
    try:
        module = importlib.import_module(name)  # (as pytest imported it: tests/peers is on sys.path)
    except pytest.skip.Exception as exc:
        pytest.skip(f"{name} is skipped: {exc}")
    for key in set(module.XFAIL) | set(module.SKIP) | set(module.FAST):
        cls_name, _, test = key.partition("::")
        cls = getattr(module, cls_name.split("[")[0], None)
        assert cls is not None, f"{name}: {key}: no class or test function {cls_name}"
        assert not test or callable(getattr(cls, test.split("[")[0], None)), f"{name}: {key}: no test {test}"
    assert not set(module.FAST) & set(module.SKIP), f"{name}: a FAST test is skipped"
    for reason in module.XFAIL.values():
        assert any(f'"{d} ..."' in reason for d in _adapter.DIFFERENCES), reason
