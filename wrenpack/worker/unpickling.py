"""Why a pickle the client made does not load here: what was being rebuilt when it failed.

An unpickling error says what went wrong (``AuthenticationError: digest sent
was rejected``), never in what. The usual cause, client and worker running the
same versions, is an object that pickles on the client but cannot be rebuilt
in another process: a ctypes library, a ``multiprocessing.Manager()`` proxy,
a handle to something only the client has. On that failure (only then) the
pickle is read again by the standard library's pure-Python unpickler, whose
stacks stay readable after it fails: they hold the name of the global being
rebuilt (cloudpickle sends a function's globals as a dict of name -> value)
and the object or function that failed. Standard library only.
"""
from __future__ import annotations

import io
import pickle
import types
from typing import Any


class _Tracing(pickle._Unpickler):  # type: ignore[name-defined]  # (the pure-Python one: its stacks stay readable)
    """Remembers the last class or function it looked up by name."""

    looked_up: str | None = None

    def find_class(self, module: str, name: str) -> Any:
        self.looked_up = f"{module}.{name}"
        return super().find_class(module, name)


def culprit(data: Any, buffers: Any = None) -> str | None:
    """Which part of the pickle ``data`` (bytes, or a file at its start) fails to
    load, in words (``global 'libc' (a ctypes.CDLL)``); None when that cannot
    be told, or when it loads this time."""
    try:
        stream = data if hasattr(data, "read") else io.BytesIO(data)
        if hasattr(stream, "seek"):
            stream.seek(0)
        unpickler = _Tracing(stream, buffers=buffers)
    except Exception:  # noqa: BLE001 - a hint only
        return None
    try:
        unpickler.load()
    except (Exception, SystemExit):  # noqa: BLE001 - the failure the caller already reports
        try:
            return _describe(unpickler)
        except Exception:  # noqa: BLE001
            return None
    return None


def _describe(u: Any) -> str | None:
    frames: list[list[Any]] = [*u.metastack, u.stack]
    names: list[str] = []
    value: Any = None
    for i, frame in enumerate(frames):
        for j in range(len(frame) - 1):
            if type(frame[j]) is str and frame[j] == "__globals__" and isinstance(frame[j + 1], dict):
                rest = frame[j + 2:] or (frames[i + 1] if i + 1 < len(frames) else [])
                keys = [k for k in range(0, len(rest), 2) if type(rest[k]) is str]
                if keys:
                    names.append(rest[keys[-1]])
                    value = rest[keys[-1] + 1] if keys[-1] + 1 < len(rest) else None
    what = _kind(value, u.looked_up)
    if names:
        path = "global " + " -> ".join(repr(n) for n in names)
        return f"{path} ({what})" if what else path
    return what


def _kind(value: Any, looked_up: str | None) -> str | None:
    """The object being rebuilt, or the function rebuilding it, in words."""
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
        return f"rebuilt by {name}"
    if value is not None and not isinstance(value, (dict, list, tuple, str, bytes, int, float)):
        t = type(value)
        return f"a {t.__module__}.{t.__qualname__}"
    return f"while rebuilding {looked_up}" if looked_up else None
