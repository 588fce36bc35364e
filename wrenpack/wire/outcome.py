"""A call's outcome: what it produced, as the pickle that travels back.

::

    worker: Outcome.success(value).dumps() / cloudpickle.dumps(error_tuple(exc, kind))
            --inside a result object (wire.result), a private reply or a hand-off-->
    client: loads_outcome(data) -> Outcome -> .value / .rebuild(label)

An outcome is the pickled 2-tuple ``("ok", value)`` or the 6-tuple
``("error", exc_bytes_or_None, type_name, message, traceback_text, kind)``,
built only here (``error_tuple``/``Outcome``); ``kind`` is "user" for the
user's own exceptions and "wrenpack" for ours. Standard library and
cloudpickle only: the worker imports this.
"""
from __future__ import annotations

import builtins
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import cloudpickle

from wrenpack.errors import CorruptObject, MissingDependency, RemoteError, RemoteTraceback, WrenpackError, exc_text

#: The outcome tuples' shape; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 1


#: an error outcome's kind when the driver's side wrote it, its message naming the call already
#: (a "wrenpack" kind is relabelled with the call's name where it is read)
LABELLED = "wrenpack-labelled"


def error_tuple(exc: BaseException, kind: str, tb_text: str | None = None) -> tuple[Any, ...]:
    """The one place the error 6-tuple is built; an unpicklable exception keeps
    its type name and message. ``kind``: "user" (theirs) or "wrenpack" (ours).
    Never raises for the exception's own faults: its message is taken with
    ``exc_text`` (an exception whose ``__str__`` raises travels as itself, its
    message read on the client when asked, as ``ProcessPoolExecutor`` does)."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    found = _stand_in(exc)
    exc_bytes = None if found is None else found[1]
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return ("error", exc_bytes, name, exc_text(exc), tb_text, kind)


def _stand_in(exc: BaseException, depth: int = 0) -> tuple[Any, bytes] | None:
    """(what to pickle for ``exc``, its pickle), checked to load again; None if nothing does.

    An exception pickles as its type called with its args, which fails to load when its
    __init__ takes other arguments than it passes up (``def __init__(self, a, b):
    super().__init__(a)``): then it travels as its type, args and attributes, no __init__
    run (``_ByState``). An exception group holding one such travels as a group of stand-ins,
    each sub-exception the way it travels alone (before, the whole group became a
    ``RemoteError`` and ``except*`` matched nothing)."""
    ways: list[Any] = [exc, _ByState(exc)]
    if _GROUP is not None and isinstance(exc, _GROUP) and depth < 8:
        ways.append(_GroupByState(exc, depth))
    for way in ways:
        try:
            data = cloudpickle.dumps(way)
            cloudpickle.loads(data)
        except Exception:  # noqa: BLE001 - an exception that cannot travel is still reported by name
            continue
        return way, data
    return None


#: Python 3.11's exception groups (none on 3.10)
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)


class _GroupByState:
    """Pickles an exception group as its type, message, attributes and its sub-exceptions'
    stand-ins (``_group_without_init`` rebuilds it); a sub-exception that travels no way
    is left out, named in a note."""

    def __init__(self, exc: BaseException, depth: int) -> None:
        self.exc = exc
        self.depth = depth

    def __reduce__(self) -> tuple[Any, ...]:
        exc: Any = self.exc
        subs, lost = [], []
        for sub in exc.exceptions:
            found = _stand_in(sub, self.depth + 1)
            if found is None:
                lost.append(f"{type(sub).__qualname__}: {exc_text(sub)}")
            else:
                subs.append(found[0])
        state = dict(getattr(exc, "__dict__", None) or {})
        return _group_without_init, (type(exc), exc.message, subs, lost, state)


def _group_without_init(cls: type, message: str, subs: list[BaseException], lost: list[str],
                        state: dict[str, Any]) -> BaseException:
    """An exception group of ``cls`` holding ``subs``, its __init__ not run."""
    if not subs:
        raise ValueError("no sub-exception could travel")
    group = _GROUP.__new__(cls, message, subs)
    group.__dict__.update(state)
    for note in lost:
        group.add_note(f"(a sub-exception could not travel: {note})")
    return group


class _ByState:
    """Pickles an exception as its type, args and attributes (``_without_init`` rebuilds it)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return _without_init, (type(exc), exc.args, dict(getattr(exc, "__dict__", None) or {}))


def _without_init(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An exception of ``cls`` with ``args`` and ``state``, its __init__ not run."""
    exc = BaseException.__new__(cls)  # type: ignore[call-overload]
    exc.args = args
    exc.__dict__.update(state)
    return exc


def user_traceback(exc: BaseException) -> str:
    """The traceback of a user exception without the frame that called their code."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    return "".join(traceback.format_exception(type(exc), exc, tb))


@dataclass
class Outcome:
    """What a call produced: a value, or an exception (as the error 6-tuple)."""

    ok: bool
    value: Any = None
    error: tuple[Any, ...] | None = None

    @classmethod
    def success(cls, value: Any) -> "Outcome":
        return cls(True, value)

    @classmethod
    def from_exception(cls, exc: BaseException, kind: str = "user", tb_text: str | None = None) -> "Outcome":
        return cls(False, error=error_tuple(exc, kind, tb_text))

    @classmethod
    def from_tuple(cls, t: Any, what: str = "result object") -> "Outcome":
        if isinstance(t, tuple) and len(t) == 2 and t[0] == "ok":
            return cls(True, t[1])
        if isinstance(t, tuple) and len(t) == 6 and t[0] == "error":
            return cls(False, error=t)
        raise CorruptObject(f"the {what} is corrupt (unexpected content); re-run the call")

    def to_tuple(self) -> tuple[Any, ...]:
        return ("ok", self.value) if self.ok else tuple(self.error or ())

    def dumps(self) -> bytes:
        """Pickled; raises the pickling error of an unpicklable value."""
        return cloudpickle.dumps(self.to_tuple())

    def rebuild(self, label: str, job_id: str | None = None) -> BaseException:
        """Client side: the exception to raise for a failed call."""
        return rebuild_exception(self.to_tuple(), label, job_id)


def rebuild_exception(outcome: tuple[Any, ...], label: str, job_id: str | None = None) -> BaseException:
    """The exception an error 6-tuple stands for, with the remote traceback as
    its cause; a type the client cannot rebuild becomes ``RemoteError``.

    The call's own exception keeps its type and arguments and gains a note naming
    the call, "raised by work[2] (job <id>)": re-raised from ``wrenpack.get`` of a
    map, nothing else said which of its calls failed (wrenpack's own errors and
    ``RemoteError`` name it in their message already)."""
    _, exc_bytes, type_name, message, tb_text, kind = outcome
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = cloudpickle.loads(exc_bytes)
        except Exception:  # noqa: BLE001 - the type may not exist on the client
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{label} raised {type_name}: {message} (the exception type could not be rebuilt here)")
    elif kind == "wrenpack" and isinstance(exc, WrenpackError):
        try:
            text = (_own_module_note(exc) if isinstance(exc, MissingDependency) else None) or str(exc)
            # (a worker's message may name the call already, as the local backend's do: not twice)
            named = text.startswith((f"{label}: ", f"{label} ")) and bool(label)
            rebuilt = type(exc)(f"{text if named else f'{label}: {text}'}{_version_note(exc)}")
            rebuilt.__dict__.update({k: v for k, v in exc.__dict__.items() if k not in rebuilt.__dict__})
            if isinstance(exc, ImportError):
                rebuilt.name, rebuilt.path = exc.name, exc.path
            exc = rebuilt
        except Exception:  # noqa: BLE001
            pass
    else:
        add_note(exc, f"raised by {label}" + (f" (job {job_id})" if job_id else ""))
    if tb_text:
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc



def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11), or the ``__notes__`` list it keeps (3.10: shown by
    no traceback there, but there for ``except`` blocks and loggers to read)."""
    try:
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # pragma: no cover - Python 3.10
            notes = getattr(exc, "__notes__", None)
            exc.__notes__ = [*(notes if isinstance(notes, list) else []), note]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an exception that refuses attributes: it goes without the note
        pass


def _own_module_note(exc: MissingDependency) -> str | None:
    """The message for a module the worker lacks that is the user's own code: only the
    client can tell (the worker knows only that it cannot import it, and its hint is to
    install a package of that name: someone else's, from PyPI, for names like ``utils``).
    The client's ``wrenpack.serialize`` decides; a worker, which has none, keeps the hint."""
    serialize = sys.modules.get("wrenpack.serialize")
    note = getattr(serialize, "own_module_note", None)
    if note is None:
        return None
    try:
        return note(exc.name)
    except Exception:  # noqa: BLE001 - a better hint only
        return None


def _version_note(exc: BaseException) -> str:
    """For a pickle the worker could not load: the versions, when client and worker differ."""
    worker = getattr(exc, "worker_versions", None)
    here = ("%d.%d" % sys.version_info[:2], cloudpickle.__version__)
    if not isinstance(worker, tuple) or len(worker) != 2 or tuple(worker) == here:
        return ""
    return (f"; besides, the client runs Python {here[0]} with cloudpickle {here[1]} but the worker Python {worker[0]} "
            f"with cloudpickle {worker[1]}: run the same versions on both")

def loads_outcome(data: Any, what: str, buffers: Any = None) -> Outcome:
    """Unpickle an authentic outcome: bytes of a verified result object, or a
    local hand-off's stream (a file)."""
    try:
        t = cloudpickle.load(data, buffers=buffers) if hasattr(data, "read") else cloudpickle.loads(data, buffers=buffers)
    except ModuleNotFoundError as exc:
        err = MissingDependency(f"the {what} needs module {exc.name!r}, which the client lacks; install it here "
                                f"(pip install {MissingDependency.distribution(exc.name)})")
        err.name = exc.name
        raise err from None
    except Exception as exc:  # noqa: BLE001
        raise CorruptObject(f"the {what} is authentic but cannot be unpickled here ({type(exc).__name__}: {exc_text(exc)}); "
                            "client and worker must run the same Python and cloudpickle") from None
    return Outcome.from_tuple(t, what)
