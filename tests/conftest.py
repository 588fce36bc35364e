from __future__ import annotations

import os

import pytest

import wrenpack
from wrenpack.executor import Executor


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch, tmp_path_factory):
    """Tests never read the developer's WRENPACK_* settings or pyproject."""
    for key in list(os.environ):
        if key.startswith("WRENPACK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WRENPACK_PROGRESS", "false")


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    """One local executor (two warm workers) shared by a test module."""
    store = tmp_path_factory.mktemp("store")
    ex = Executor(storage=str(store), concurrency=2, backend="local", retries=1)
    yield ex
    ex.shutdown()


@pytest.fixture
def remote(executor):
    """``remote(fn, **options)`` bound to the module's executor."""

    def make(fn=None, **options):
        return wrenpack.remote(fn, executor=executor, **options) if fn else wrenpack.remote(executor=executor, **options)

    return make


@pytest.fixture(scope="session")
def profile_of():
    """``profile_of(name, args)``: ``run_profile`` of a ``profiler_targets`` function, once per
    session. The accuracy and the backend tests profile the same calls; each profile is a
    fresh child process that takes seconds (numpy's, Python's allocations)."""
    from wrenpack.profiler import run_profile

    import profiler_targets as targets

    profiles: dict[tuple[str, tuple], object] = {}

    def get(name: str, args: tuple = ()):
        key = (name, tuple(args))
        if key not in profiles:
            profiles[key] = run_profile(getattr(targets, name), tuple(args), save=False)
        return profiles[key]

    return get
