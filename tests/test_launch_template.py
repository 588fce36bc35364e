"""``.remote()`` in a loop launches from what the last single call derived
(``Executor.relaunch``): the pickled function, the resolved options, the
event's fields. Each test changes one thing that derivation depends on and
checks that the very next call sees it, and that the shortcut is taken again
once nothing changes."""
from __future__ import annotations

import pytest

import wrenpack
from wrenpack.executor import core

pytestmark = pytest.mark.executor_settings(concurrency=1)

K = 1


def add_k(x):
    return x + K


def add_default(x, d=1):
    return x + d


def env_of(name):
    import os

    return os.environ.get(name)


def one_step(x):
    return x


class Box:
    def __init__(self, v):
        self.v = v


def unbox(b):
    return b.v + 1


@pytest.fixture
def ex(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1)
    yield ex
    ex.shutdown()


@pytest.fixture
def full(ex, monkeypatch):
    """The full launches (``Executor.prepare`` runs only in those), counted."""
    seen: list[str] = []
    real = ex.prepare
    monkeypatch.setattr(ex, "prepare", lambda fn, calls, *a, **k: seen.append(getattr(fn, "__name__", "?")) or real(fn, calls, *a, **k))
    return seen


def _started(executor, monkeypatch):
    """The jobs ``executor`` starts: (job id, secret, the event's fields beyond the call's own)."""
    seen: list[tuple[str, bytes, dict]] = []
    real = executor._start
    monkeypatch.setattr(executor, "_start", lambda job_id, label, options, secret, key, payloads, extra, **k:
                        seen.append((job_id, secret, dict(extra))) or real(job_id, label, options, secret, key, payloads, extra, **k))
    return seen


def test_repeated_calls_take_the_shortcut_each_its_own_job(ex, full, monkeypatch):
    started = _started(ex, monkeypatch)
    f = wrenpack.remote(add_k, executor=ex)
    futs = [f.remote(i) for i in range(6)]
    assert [fut.result(timeout=60) for fut in futs] == [i + 1 for i in range(6)]
    assert full == ["add_k"], "only the first call should take the full launch"
    assert [job_id for job_id, _s, _e in started] == [fut.job_id for fut in futs]
    assert len({job_id for job_id, _s, _e in started}) == 6 and len({secret for _j, secret, _e in started}) == 6
    first, last = started[0][2], started[-1][2]
    assert set(first) == set(last) and {k for k in first if first[k] != last[k]} == {"owner"}
    assert first["owner"]["mac"] != last["owner"]["mac"]


def test_a_rebound_global_takes_effect_on_the_next_call(ex, full, monkeypatch):
    f = wrenpack.remote(add_k, executor=ex)
    assert [f.remote(1).result(timeout=60) for _ in range(3)] == [2, 2, 2]
    monkeypatch.setattr(__import__(__name__), "K", 100)
    assert f.remote(1).result(timeout=60) == 101
    assert f.remote(1).result(timeout=60) == 101
    assert full == ["add_k", "add_k"]  # (the change took a full launch, then the shortcut again)


def test_changed_defaults_code_and_closure_take_effect_on_the_next_call(ex, full, monkeypatch):
    f = wrenpack.remote(add_default, executor=ex)
    assert f.remote(1).result(timeout=60) == 2
    assert f.remote(1).result(timeout=60) == 2
    monkeypatch.setattr(add_default, "__defaults__", (10,))
    assert f.remote(1).result(timeout=60) == 11
    monkeypatch.setattr(add_default, "__code__", (lambda x, d=1: x * d).__code__)
    assert f.remote(3).result(timeout=60) == 30
    assert len(full) == 3

    n = 5

    def closes():
        return n

    g = wrenpack.remote(closes, executor=ex)
    assert [g.remote().result(timeout=60) for _ in range(2)] == [5, 5]
    n = 6
    assert g.remote().result(timeout=60) == 6


def test_other_options_and_another_executor_are_their_own(ex, full, tmp_path, monkeypatch):
    f = wrenpack.remote(env_of, executor=ex)
    assert [f.remote("WP_TEMPLATE_T").result(timeout=60) for _ in range(2)] == [None, None]
    g = f.options(env={"WP_TEMPLATE_T": "1"})
    assert [g.remote("WP_TEMPLATE_T").result(timeout=60) for _ in range(2)] == ["1", "1"]
    assert f.remote("WP_TEMPLATE_T").result(timeout=60) is None
    h = g.options(env={"WP_TEMPLATE_T": "2"})
    assert h.remote("WP_TEMPLATE_T").result(timeout=60) == "2"
    # The same function's options given through submit: equal options, the same launch.
    assert ex.submit(g, "WP_TEMPLATE_T").result(timeout=60) == "1"
    # Another executor: its own jobs.
    other = wrenpack.Executor(storage=str(tmp_path / "store2"), concurrency=1)
    here, there = _started(ex, monkeypatch), _started(other, monkeypatch)
    try:
        moved = g.options(executor=other)
        futs = [moved.remote("WP_TEMPLATE_T") for _ in range(2)]
        assert [fut.result(timeout=60) for fut in futs] == ["1", "1"]
        fut = g.remote("WP_TEMPLATE_T")
        assert fut.result(timeout=60) == "1"
        assert [s[0] for s in there] == [f.job_id for f in futs] and [s[0] for s in here] == [fut.job_id]
    finally:
        other.shutdown()


def test_arguments_that_are_not_plain_data_take_the_full_launch(ex, full):
    f = wrenpack.remote(unbox, executor=ex)
    assert [f.remote(Box(i)).result(timeout=60) for i in range(3)] == [1, 2, 3]
    assert len(full) == 3
    large = "x" * (ex.config.inline_limit + 10)
    g = wrenpack.remote(len, executor=ex)
    assert g.remote("ab").result(timeout=60) == 2 and g.remote(large).result(timeout=60) == len(large)


def test_a_new_profile_directory_is_seen_on_the_next_call(ex, tmp_path, monkeypatch):
    from wrenpack.profiler import store
    from wrenpack.profiler.codehash import code_hash

    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "a"))
    f = wrenpack.remote(one_step, executor=ex, timeout=1)
    assert [f.remote(1).expected_segments for _ in range(2)] == [1, 1]
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "b"))
    store.save({"code_hash": code_hash(one_step), "duration_s": 4.0, "cpu_user_s": 4.0, "recommended": {"memory_mb": 128}})
    assert [f.remote(1).expected_segments for _ in range(2)] == [5, 5]
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "a"))
    assert f.remote(1).expected_segments == 1


def test_after_shutdown_the_next_call_is_refused(ex):
    f = wrenpack.remote(add_k, executor=ex)
    assert f.remote(1).result(timeout=60) == 2
    ex.shutdown()
    with pytest.raises(wrenpack.ExecutorShutdown):
        f.remote(1)


def test_the_shortcut_is_not_taken_inside_a_call(ex, full, monkeypatch):
    f = wrenpack.remote(add_k, executor=ex)
    assert f.remote(1).result(timeout=60) == 2
    kept = f._state.single
    assert kept is not None
    monkeypatch.setattr(core.refs, "in_call", lambda: True)
    assert ex.relaunch_payload(add_k, ((1,), {}), kept.job) is None


def test_submodule_scan_matches_cloudpickles(monkeypatch):
    """``serialize._imported_submodules`` (the pickle check's scan of sys.modules)
    gives what cloudpickle's own walk gives, including a name it cannot split."""
    import collections.abc
    import concurrent.futures
    import email.mime.text
    import json
    import types

    import cloudpickle

    from wrenpack import serialize

    def uses():
        return concurrent.futures.Future, json.decoder, email.mime.text, collections.abc, email.charset

    deps = (concurrent, json, email, collections, 3, "x")
    expected = tuple(cloudpickle.cloudpickle._find_imported_submodules(uses.__code__, deps))
    assert concurrent.futures in expected and json.decoder in expected and email.mime.text in expected
    assert serialize._imported_submodules(uses.__code__, deps) == expected
    # A package whose submodule is imported only now: the check sees it at once.
    fake = types.ModuleType("wp_fakepkg")
    fake.__package__ = "wp_fakepkg"
    sub = types.ModuleType("wp_fakepkg.decoder")
    monkeypatch.setitem(__import__("sys").modules, "wp_fakepkg", fake)
    before = serialize._imported_submodules(uses.__code__, (fake,))
    monkeypatch.setitem(__import__("sys").modules, "wp_fakepkg.decoder", sub)
    assert before == () and serialize._imported_submodules(uses.__code__, (fake,)) == (sub,)
    assert serialize._imported_submodules(uses.__code__, (fake,)) == (sub,)  # (the scan's outcome kept)
    other = types.ModuleType("wp_fakepkg.decoder")
    monkeypatch.setitem(__import__("sys").modules, "wp_fakepkg.decoder", other)  # same names, another module
    assert serialize._imported_submodules(uses.__code__, (fake,)) == (other,)
    monkeypatch.setitem(__import__("sys").modules, "wp_fakepkg.decoder", sub)
    monkeypatch.setitem(__import__("sys").modules, "wp_fake\0odd", fake)  # (not split exactly: cloudpickle's walk)
    assert serialize._imported_submodules(uses.__code__, (fake,)) == (sub,)


def uses_xml(x):
    try:
        return XML.dom is not None
    except AttributeError:
        return False


XML = __import__("xml")


def test_a_submodule_imported_between_calls_is_shipped_on_the_next_call(ex, full, monkeypatch):
    import sys

    for name in [n for n in sys.modules if n == "xml.dom" or n.startswith("xml.dom.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(XML, "dom", raising=False)
    f = wrenpack.remote(uses_xml, executor=ex)
    [f.remote(0).result(timeout=60) for _ in range(2)]  # (the worker may have imported xml.dom itself)
    assert full == ["uses_xml"]
    import xml.dom  # noqa: F401 - now the function's pickle names the submodule, and the worker imports it
    assert f.remote(0).result(timeout=60) is True
    assert full == ["uses_xml", "uses_xml"]


def test_submit_of_a_remote_function_and_auto_size_take_the_shortcut_too(ex, full):
    f = wrenpack.remote(add_k, executor=ex, auto_size=lambda x: x)
    assert [f.remote(i).result(timeout=60) for i in range(3)] == [1, 2, 3]
    assert [ex.submit(f, i).result(timeout=60) for i in range(3)] == [1, 2, 3]
    assert full == ["add_k"]
    assert [ex.submit(add_k, i).result(timeout=60) for i in range(2)] == [1, 2]  # (a plain function: full launches)
    assert full == ["add_k"] * 3
