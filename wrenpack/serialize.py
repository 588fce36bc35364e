"""Client-side pickling: functions by value where the worker cannot import them.

cloudpickle pickles functions from ``__main__`` and notebooks by value, but a
function from an importable module by *reference*: the worker would have to
import that module. The user's own modules (scripts next to the notebook, a
project checked out but not installed) will not exist on Lambda, so wrenpack
registers them for pickling by value while it pickles. Installed packages
(site-packages) and the standard library stay by reference: the runtime
provides them.

When pickling fails, ``describe_unpicklable`` walks into the object (closure
cells, referenced globals, containers, attributes) to name the innermost
culprit, so the error says ``closure variable 'lock' (a _thread.lock)`` rather
than only "cannot pickle".
"""
from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
import types
from functools import lru_cache
from typing import Any, Callable, Iterator

import cloudpickle

from wrenpack.errors import SerializationError


@lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    import site

    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(sysconfig.get_paths()[key])
    with contextlib.suppress(AttributeError):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        dirs.add(site.getusersitepackages())
    dirs.update(p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")))
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


def is_user_module(module: types.ModuleType | None) -> bool:
    """True for modules the user wrote and did not install (so workers lack them)."""
    if module is None:
        return False
    name = module.__name__
    if name == "__main__" or name.split(".")[0] in ("wrenpack", "runtime_builder", "cloudpickle"):
        return False
    if name in sys.builtin_module_names:
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not real.startswith(_library_dirs())


def _top_package(module: types.ModuleType) -> types.ModuleType:
    top = module.__name__.split(".")[0]
    return sys.modules.get(top, module)


def user_modules_of(fn: Any) -> set[types.ModuleType]:
    """The user modules a function's pickle would otherwise refer to by name."""
    found: set[types.ModuleType] = set()
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        if is_user_module(module):
            found.add(_top_package(module))
        if isinstance(obj, types.FunctionType):
            for name in obj.__code__.co_names:
                if name in obj.__globals__:
                    value = obj.__globals__[name]
                    if isinstance(value, types.ModuleType):
                        if is_user_module(value):
                            found.add(_top_package(value))
                    else:
                        visit(value, depth + 1)
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):
                    visit(cell.cell_contents, depth + 1)
        elif isinstance(obj, type):
            for base in obj.__mro__[1:]:
                visit(base, depth + 1)
        elif callable(obj) and isinstance(getattr(obj, "__dict__", None), dict):
            # A callable object (e.g. the Batch that chunksize sends) holds the functions it calls.
            for value in list(obj.__dict__.values()):
                visit(value, depth + 1)

    visit(fn, 0)
    return found


_registry_lock = threading.Lock()
#: module name -> how many wrenpack scopes need it pickled by value now
_scope_counts: dict[str, int] = {}


@contextlib.contextmanager
def by_value(modules: set[types.ModuleType]) -> Iterator[None]:
    """Pickle ``modules`` by value while inside. Safe across threads: the
    registration is counted, so a module stays registered until the last scope
    that needs it ends; a module registered by the user stays registered."""
    mine: list[str] = []
    with _registry_lock:
        for module in modules:
            name = module.__name__
            count = _scope_counts.get(name, 0)
            if count == 0:
                if name in cloudpickle.list_registry_pickle_by_value():
                    continue  # registered by the user: theirs to undo, not ours
                try:
                    cloudpickle.register_pickle_by_value(module)
                except ValueError:  # not importable by name (not in sys.modules)
                    continue
            _scope_counts[name] = count + 1
            mine.append(name)
    try:
        yield
    finally:
        with _registry_lock:
            for name in mine:
                left = _scope_counts[name] - 1
                if left:
                    _scope_counts[name] = left
                    continue
                del _scope_counts[name]
                module = sys.modules.get(name)
                if module is not None:
                    with contextlib.suppress(ValueError):
                        cloudpickle.unregister_pickle_by_value(module)


def dumps_function(fn: Callable[..., Any], user_modules: set[types.ModuleType] | None = None) -> bytes:
    """Pickle a function for the workers, by value where they could not import it
    (``user_modules``: ``user_modules_of(fn)``, when the caller has it already)."""
    with by_value(user_modules_of(fn) if user_modules is None else user_modules):
        try:
            return cloudpickle.dumps(fn)
        except Exception as exc:  # noqa: BLE001
            where = describe_unpicklable(fn, f"function {getattr(fn, '__qualname__', fn)!r}")
            raise SerializationError(f"cannot send {where}: {_short(exc)}; {_FIX}") from None


def dumps_call(args: tuple[Any, ...], kwargs: dict[str, Any], label: str, user_modules: set[types.ModuleType] | None = None,
               spill: Any = None) -> Any:
    """Pickle one call's arguments; on failure name the argument and the object inside it.

    ``spill`` (a ``wrenpack.worker.handoff.Spill``): pickle into it as it goes
    (protocol 5, large buffers out of band) and return what it finishes as
    (bytes, or a sealed memfd for the local backend's hand-off)."""
    with by_value(user_modules or set()):
        try:
            if spill is None:
                return cloudpickle.dumps((args, kwargs))
            try:
                cloudpickle.Pickler(spill, protocol=5, buffer_callback=spill.buffer).dump((args, kwargs))
                return spill.finish()
            except BaseException:
                spill.discard()
                raise
        except Exception as exc:  # noqa: BLE001
            for i, value in enumerate(args):
                if not _picklable(value):
                    where = describe_unpicklable(value, f"argument {i} of {label}")
                    break
            else:
                for name, value in kwargs.items():
                    if not _picklable(value):
                        where = describe_unpicklable(value, f"keyword argument {name!r} of {label}")
                        break
                else:
                    where = f"the arguments of {label}"
            raise SerializationError(f"cannot send {where}: {_short(exc)}; {_FIX}") from None


_FIX = "pass plain data, or create the object inside the function"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def describe_unpicklable(obj: Any, path: str, depth: int = 0) -> str:
    """Name the innermost part of ``obj`` that cannot be pickled."""
    if depth > 6:
        return f"{path} (a {_type_name(obj)})"
    children: list[tuple[str, Any]] = []
    if isinstance(obj, types.FunctionType):
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            with contextlib.suppress(ValueError):
                children.append((f"closure variable {name!r} of {path}", cell.cell_contents))
        for name in obj.__code__.co_names:
            if name in obj.__globals__ and not isinstance(obj.__globals__[name], types.ModuleType):
                children.append((f"global {name!r} used by {path}", obj.__globals__[name]))
        for i, d in enumerate(obj.__defaults__ or ()):
            children.append((f"default argument {i} of {path}", d))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = [(f"item {i} of {path}", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        children = [(f"value {k!r} of {path}", v) for k, v in obj.items()]
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
        children = [(f"attribute {k!r} of {path}", v) for k, v in vars(obj).items()]
    for child_path, child in children[:200]:
        if not _picklable(child):
            return describe_unpicklable(child, child_path, depth + 1)
    return f"{path} (a {_type_name(obj)})"


def loads(data: bytes, what: str) -> Any:
    try:
        return cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001
        from wrenpack.errors import CorruptObject

        raise CorruptObject(f"{what} is corrupt or unreadable ({type(exc).__name__}: {_short(exc)}); re-run the call") from None
