"""Small builtin values skip cloudpickle's set-up (warm latency)
and are pickled to the very bytes cloudpickle writes; anything else is left
to cloudpickle."""
from __future__ import annotations

import pickle

import cloudpickle
import pytest

from wrenpack.worker import plain

PLAIN = [
    0, -7, 2**80, 1.5, float("inf"), 3j, True, None, "", "héllo", b"\x00\xff", (), [], {},
    (1, "a", None), [1, [2, [3]]], {"k": (1, 2.0), 3: [b"x"]}, {1, 2}, frozenset({"a"}),
    (("ok", 42)), ((1, 2), {"n": 3}),
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_pickle_to_cloudpickles_bytes(value):
    data = plain.dumps(value)
    assert data == cloudpickle.dumps(value, protocol=5)
    assert pickle.loads(data) == value


class Int(int):
    pass


class Thing:
    pass


def _fn():
    return 1


def _nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    Int(3), Thing(), _fn, lambda: 1, type, [Int(1)], {"a": Thing()}, (1, _fn),
    "x" * (plain.MAX_ATOM + 1), b"x" * (plain.MAX_ATOM + 1), list(range(plain.MAX_ITEMS + 1)),
    _nested(plain.MAX_ITEMS + 1),
], ids=lambda v: type(v).__name__)
def test_anything_else_is_left_to_cloudpickle(value):
    assert plain.dumps(value) is None


def test_a_container_that_holds_itself_is_left_to_cloudpickle():
    loop: list = [1]
    loop.append(loop)
    assert plain.dumps(loop) is None
