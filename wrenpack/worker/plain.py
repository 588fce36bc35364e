"""Small values of builtin types, pickled by the standard pickler.

``cloudpickle.Pickler`` costs tens of microseconds to set up, more than a
warm call's own work when the value is a number or a short string. For
values made only of the builtin types below (exact types, no subclasses),
the standard pickler writes the very same bytes cloudpickle would: its
reducer override is consulted only for other types. So a call's small
arguments and results take this path and nothing changes for the reader,
which unpickles them as before. Anything else (functions, instances, numpy
arrays, subclasses, deep or long containers) returns None: the caller
pickles it with cloudpickle as always. Standard library only.
"""
from __future__ import annotations

import pickle
from typing import Any

#: types written by value, whatever their content (str and bytes: up to MAX_ATOM long)
_ATOMS = frozenset({int, float, complex, bool, type(None), str, bytes})
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
#: at most this many objects in all, each str/bytes at most MAX_ATOM long: the check stays cheap
MAX_ITEMS = 64
MAX_ATOM = 1024


def is_plain(value: Any) -> bool:
    """Only builtin numbers, strings, bytes, None and containers of them, and small."""
    budget = MAX_ITEMS
    stack = [value]
    while stack:
        v = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        t = type(v)
        if t in _ATOMS:
            if (t is str or t is bytes) and len(v) > MAX_ATOM:
                return False
            continue
        if t not in _CONTAINERS:
            return False
        if len(v) > MAX_ITEMS:
            return False
        if t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            stack.extend(v)
    return True


def dumps(value: Any) -> bytes | None:
    """``value`` pickled (protocol 5) if ``is_plain``, else None."""
    if not is_plain(value):
        return None
    return pickle.dumps(value, protocol=5)
