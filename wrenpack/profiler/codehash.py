"""A stable hash of a function's code, the key its saved profile is stored under.

The same source gives the same hash in any process (no ids, no addresses, set
order fixed); changing the body, a constant, a default or a small closed-over
value gives a new one. Standard library only: the runner computes it too.
"""
from __future__ import annotations

import hashlib
import re
import sys
import types
from typing import Any, Callable

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_REPR = 4096


def _cheap_repr(value: Any) -> str:
    """repr() without memory addresses; big values reduced to type and size."""
    if isinstance(value, (frozenset, set)):
        return type(value).__name__ + "{" + ",".join(sorted(_cheap_repr(v) for v in value)) + "}"
    if isinstance(value, types.CodeType):
        return "code:" + _code_digest(value)
    if isinstance(value, types.FunctionType):
        return f"function:{value.__module__}.{value.__qualname__}:{_code_digest(value.__code__)}"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - some reprs fail; the type still says something
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    if len(text) > _MAX_REPR:
        size = getattr(value, "__len__", None)
        return f"<{type(value).__qualname__} len={size() if callable(size) else '?'}>"
    return _ADDRESS.sub("", text)


def _code_digest(code: types.CodeType) -> str:
    h = hashlib.sha256()
    h.update(code.co_code)
    for part in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(repr(part).encode())
    for const in code.co_consts:
        h.update(_cheap_repr(const).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def code_hash(fn: Callable[..., Any]) -> str:
    """Hex digest naming ``fn``'s code, constants, defaults and closure."""
    h = hashlib.sha256()
    h.update(("py%d.%d" % sys.version_info[:2]).encode())
    target = getattr(fn, "func", None) if type(fn).__name__ == "partial" else None
    if target is not None:  # functools.partial: the wrapped function plus its bound arguments
        h.update(code_hash(target).encode())
        h.update(_cheap_repr(fn.args).encode())
        h.update(_cheap_repr(fn.keywords).encode())
        return h.hexdigest()[:40]
    h.update(f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}".encode())
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: hash its class's __call__
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's own method, not a test
        code = getattr(call, "__code__", None)
    if code is not None:
        h.update(_code_digest(code).encode())
    h.update(_cheap_repr(getattr(fn, "__defaults__", None)).encode())
    h.update(_cheap_repr(getattr(fn, "__kwdefaults__", None)).encode())
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            h.update(_cheap_repr(cell.cell_contents).encode())
        except ValueError:  # empty cell
            h.update(b"<empty>")
    return h.hexdigest()[:40]
