"""The launch reuses a function's pickle while nothing it pickles changed,
and never ships a stale one: whatever the function's globals, closure, defaults or
code became since the last call is what runs."""
from __future__ import annotations

import math
import textwrap

import cloudpickle
import pytest

from wrenpack import serialize

FACTOR = 2
ITEMS = [1]


def scaled(x):
    return x * FACTOR


def helper(x):
    return x + FACTOR


def via_helper(x):
    return helper(x) * 10


def from_list(x):
    return x + ITEMS[0]


def with_default(x, k=1, *, j=0):
    return x + k + j


@pytest.fixture
def pickles(monkeypatch):
    """How many times a function was really pickled."""
    made: list[object] = []
    real = serialize.dumps_function

    def counting(fn, *args):
        made.append(fn)
        return real(fn, *args)

    monkeypatch.setattr(serialize, "dumps_function", counting)
    return made


def _ship(fn):
    """What a worker would run: the launch path's pickle, loaded again."""
    mods = serialize.user_modules_of(fn)
    with serialize.by_value(mods):
        data = serialize.dumps_function_cached(fn, mods)
    return cloudpickle.loads(data)


def test_global_changed_between_two_calls_runs_the_new_value(remote, pickles, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "FACTOR", 2)
    f = remote(scaled)
    assert f.remote(5).result() == 10
    assert f.remote(6).result() == 12
    assert len(pickles) == 1  # unchanged: pickled once
    monkeypatch.setattr(__import__(__name__), "FACTOR", 3)
    assert f.remote(5).result() == 15
    assert len(pickles) == 2


def test_global_of_a_helper_function_and_the_helper_itself(monkeypatch):
    module = __import__(__name__)
    monkeypatch.setattr(module, "FACTOR", 2)
    assert _ship(via_helper)(1) == 30
    monkeypatch.setattr(module, "FACTOR", 5)
    assert _ship(via_helper)(1) == 60
    monkeypatch.setattr(module, "helper", lambda x: -x)
    assert _ship(via_helper)(1) == -10


def test_closure_cell_changed(pickles):
    k = 1

    def add(x):
        return x + k

    assert _ship(add)(1) == 2
    assert _ship(add)(1) == 2
    assert len(pickles) == 1
    k = 7  # noqa: F841 - read by the closure
    assert _ship(add)(1) == 8


def test_defaults_keyword_defaults_and_code_replaced(monkeypatch):
    monkeypatch.setattr(with_default, "__defaults__", (1,))
    monkeypatch.setattr(with_default, "__kwdefaults__", {"j": 0})
    assert _ship(with_default)(1) == 2
    with_default.__defaults__ = (10,)
    assert _ship(with_default)(1) == 11
    with_default.__kwdefaults__["j"] = 100  # in place
    assert _ship(with_default)(1) == 111
    monkeypatch.setattr(with_default, "__code__", (lambda x, k=1, *, j=0: -x).__code__)
    assert _ship(with_default)(1) == -1


def test_list_mutated_in_place_is_never_cached(pickles, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ITEMS", [1])
    assert _ship(from_list)(1) == 2
    ITEMS[0] = 40
    assert _ship(from_list)(1) == 41
    assert len(pickles) == 2
    with serialize.by_value(serialize.user_modules_of(from_list)), pytest.raises(serialize._Uncacheable):
        serialize._checks(from_list)


def test_function_attribute_and_by_reference_functions(pickles):
    def tagged(x):
        return getattr(tagged, "bonus", 0) + math.floor(x)

    assert _ship(tagged)(1.5) == 1
    tagged.bonus = 5
    assert _ship(tagged)(1.5) == 6
    assert _ship(textwrap.dedent)("  a") == "a"
    assert _ship(textwrap.dedent)("  a") == "a"
    assert pickles.count(textwrap.dedent) == 1  # pickled by name, cached too


def test_a_new_global_that_shadows_a_builtin(monkeypatch):
    def uses_len(x):
        return len(x)

    assert _ship(uses_len)("abc") == 3
    monkeypatch.setitem(uses_len.__globals__, "len", lambda x: 99)
    assert _ship(uses_len)("abc") == 99
