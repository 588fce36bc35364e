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

import collections
import contextlib
import functools
import io
import itertools
import logging
import operator
import os
import sys
import sysconfig
import threading
import types
import weakref
from collections import ChainMap, OrderedDict
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

import cloudpickle

from wrenpack.errors import SerializationError


log = logging.getLogger(__name__)

_DYNAMIC_CODE = "<dynamic-code>"
_cp_code_reduce = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)


def _code_reduce(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    """cloudpickle's reduction of a code object with its file name kept.

    cloudpickle (3.0 on) writes ``"<dynamic-code>"`` for the file name of code it
    pickles by value, so its pickles do not depend on where a notebook cell ran;
    a traceback from the worker then says ``File "<dynamic-code>"`` where the
    user's file and line belong. The file name goes back in its place
    (``co_filename`` comes before ``co_name`` in every layout of the arguments),
    so the worker's traceback names the user's file, and shows the line where
    that file exists (a local worker)."""
    func, args = _cp_code_reduce(code)  # type: ignore[misc]
    for i, arg in enumerate(args):
        if type(arg) is str and arg == _DYNAMIC_CODE:
            args = (*args[:i], code.co_filename, *args[i + 1:])
            break
    return func, args


class Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, keeping code objects' file names (``_code_reduce``)."""

    if _cp_code_reduce is not None:
        dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    """``cloudpickle.dumps`` with code objects' file names kept (``Pickler``)."""
    with io.BytesIO() as f:
        Pickler(f, protocol=protocol).dump(obj)
        return f.getvalue()


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
    return _outside_libraries(path)


def own_module_note(name: str | None) -> str | None:
    """For a module a worker could not import: when it is the user's own code here
    (``is_user_module``'s rule: a file outside site-packages and the standard
    library), the message to give instead of the worker's "add it to the runtime
    (wrenpack build-runtime NAME)", which would install a PyPI project of that
    name, someone else's code. None for any other module."""
    if not name:
        return None
    top = name.split(".")[0]
    module = sys.modules.get(top)
    if module is not None:
        if not is_user_module(module):
            return None
        path = module.__file__
    else:
        import importlib.util

        if top in ("wrenpack", "runtime_builder", "cloudpickle") or top in sys.builtin_module_names:
            return None
        try:
            spec = importlib.util.find_spec(top)  # (a top-level name: finds it, runs nothing)
        except (ImportError, ValueError):
            return None
        path = getattr(spec, "origin", None)
        if not path or not os.path.isabs(path) or not _outside_libraries(path):
            return None
    where = os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path
    return (f"the function needs module {name!r}, which is your own code ({where}), not a package to install: it "
            f"did not travel with the function (one imported by a name made at run time does not); import it with an "
            f"import statement in the function (then it is sent with it), or register it in the driver if the function "
            f"reaches its objects another way (import {top}, cloudpickle; cloudpickle.register_pickle_by_value({top})), "
            f"or copy it into the runtime's python/ directory; do not install a package named {top!r} (from PyPI "
            f"that would be someone else's code)")


@lru_cache(maxsize=4096)
def _outside_libraries(path: str) -> bool:
    # realpath is a few system calls, asked on every launch for each module a function names
    return not os.path.realpath(path).startswith(_library_dirs())


def _top_package(module: types.ModuleType) -> types.ModuleType:
    top = module.__name__.split(".")[0]
    return sys.modules.get(top, module)


class Needs(NamedTuple):
    """What a function (or a call's arguments) needs from the user's own code."""

    #: top-level user packages and modules, pickled by value while it is pickled
    modules: frozenset[types.ModuleType]
    #: user modules a function body imports by name (``import helper``): shipped
    #: with the pickle into the worker's ``sys.modules`` (by value alone, an
    #: import statement run there would not find them)
    imported: tuple[str, ...]


_NO_NEEDS = Needs(frozenset(), ())
_AN_ATOM = object()  # (a cell's value was a number, a string, bytes...)
#: how far the walk goes: objects visited in all, and steps from the function
_WALK_NODES = 4000
_WALK_DEPTH = 12
#: items of one container looked into
_WALK_ITEMS = 256


def user_modules_of(fn: Any) -> set[types.ModuleType]:
    """The user modules a function's pickle would otherwise refer to by name."""
    return set(needs_of(fn).modules)


def needs_of(fn: Any) -> Needs:
    """The user modules ``fn`` reaches, as cloudpickle will pickle it: through its
    globals (its nested functions' and comprehensions' too), closures, defaults,
    the user modules it names (their whole namespace: a module pickled by value
    carries all of it), the classes it reaches (bases, methods, properties), the
    functions those reach, and the modules its body imports. Each of those
    would otherwise go by name, and the worker, which lacks them, would fail
    with ``MissingDependency`` (the local backend, which sees the driver's
    ``sys.path``, would not: "works locally, fails on Lambda").

    Walked once per function and kept while every read the walk made (a global,
    a cell, a namespace, an entry of ``sys.modules``) still gives the same object;
    a launch checks that instead of walking again (``_Reads``)."""
    key = id(fn)
    hit = _needs.get(key)
    if hit is not None and hit[0]() is fn and hit[1].valid():
        return hit[2]
    needs, reads = _walk([fn])
    try:
        # (weakly: a function the user dropped, and what it closes over, is not kept here)
        ref = weakref.ref(fn, lambda r: _forget_needs(key, r))
    except TypeError:
        return needs  # (not weakly referable: walked at each launch)
    with _needs_lock:
        _purge_needs()
        _needs[key] = (ref, reads, needs)
        _needs.move_to_end(key)
        while len(_needs) > _MAX_NEEDS:
            _needs.popitem(last=False)
    return needs


def _forget_needs(key: int, ref: Any) -> None:
    """A function's walk goes when the function does (a weak reference's callback).
    That can run at any allocation, also inside ``_needs_lock`` or in the middle of
    a change of ``_needs`` in this thread: the entry is only noted then, and
    removed at the next walk kept (never a deadlock on the lock)."""
    _needs_dead.append((key, ref))
    if _needs_lock.acquire(blocking=False):
        try:
            _purge_needs()
        finally:
            _needs_lock.release()


def _purge_needs() -> None:
    """(Under ``_needs_lock``.) Drop the entries of functions that are gone."""
    while _needs_dead:
        key, ref = _needs_dead.pop()
        hit = _needs.get(key)
        if hit is not None and hit[0] is ref:
            del _needs[key]


def needs_of_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Needs:
    """What a call's arguments need: the user classes of the arguments (and of the
    items of an argument that is a container, and of the attributes of one that
    is an instance of a user class, one level down), each walked once per class
    (``_type_needs``), and the functions and classes passed as arguments. Per call,
    so it stays shallow; a user class deeper in the data than that still travels
    by value when its module is one the function reaches."""
    todo: list[tuple[Any, int]] = [(value, 1) for value in args]
    if kwargs:
        todo += [(value, 1) for value in kwargs.values()]
    parts: list[Needs] = []
    for value, down in todo:  # (grows as it goes: one level down)
        t = type(value)
        if t in _ATOMS:
            continue
        if t in _CONTAINERS:
            if down:
                todo += [(item, 0) for item in itertools.islice(value.values() if t is dict else value, 16)]
            continue
        if t in _OBJECT_KINDS or isinstance(value, type):
            needs = needs_of(value)  # (a function or class passed as an argument)
        else:
            needs, users = _type_needs(t)
            if down and users:
                attrs = getattr(value, "__dict__", None)
                if type(attrs) is dict:
                    todo += [(item, 0) for item in itertools.islice(attrs.values(), 16)]
        if needs.modules or needs.imported:
            parts.append(needs)
    return _merge(parts)


def _merge(parts: list[Needs]) -> Needs:
    parts = [p for p in parts if p.modules or p.imported]
    if not parts:
        return _NO_NEEDS
    if len(parts) == 1:
        return parts[0]
    return Needs(frozenset().union(*(p.modules for p in parts)),
                 tuple(dict.fromkeys(name for p in parts for name in p.imported)))


def _type_needs(t: type) -> tuple[Needs, bool]:
    """``needs_of`` for an argument's class, and whether it is pickled by value
    (the user's own); kept per class: the class of a map's arguments is walked
    once, not per call (a class changed after its first call is not walked again)."""
    try:
        return _types_walked[t]
    except KeyError:
        pass
    except TypeError:  # (not weakly referable)
        return _walk([t])[0], _pickled_by_value(t)[0]
    found = (_walk([t])[0], _pickled_by_value(t)[0])
    with _needs_lock, contextlib.suppress(TypeError):
        _types_walked[t] = found
    return found


#: id(fn) -> (a weak reference to fn, the reads its walk made, what it found)
_needs: "OrderedDict[int, tuple[Any, _Reads, Needs]]" = OrderedDict()
_needs_lock = threading.Lock()
#: (id, weak reference) of functions gone whose entries are still to be dropped
_needs_dead: list[tuple[int, Any]] = []
_MAX_NEEDS = 256
_types_walked: "weakref.WeakKeyDictionary[type, tuple[Needs, bool]]" = weakref.WeakKeyDictionary()
_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_OBJECT_KINDS = frozenset({types.FunctionType, types.MethodType, functools.partial})


class _Reads:
    """The reads a walk made, to tell later whether it would find the same: each
    mapping's keys and the objects they gave (``_MISSING`` for absent), the
    length of those read whole (only that for a container too large to look at
    every item of), cells' contents, functions' attributes, lists' items. Checked
    by identity, in C (``map``), far cheaper than the walk."""

    __slots__ = ("keys", "whole", "cells", "attrs", "lists")

    def __init__(self) -> None:
        self.keys: dict[int, tuple[Any, list[Any], list[Any]]] = {}
        self.whole: list[tuple[Any, int]] = []
        #: (a weak reference to a function, the index of its cell, the value or a weak reference to it)
        self.cells: list[tuple[Any, int, Any]] = []
        #: (a weak reference to a function: these would keep the function alive, attribute, value)
        self.attrs: list[tuple[Any, str, Any]] = []
        self.lists: list[tuple[list[Any], tuple[Any, ...]]] = []

    def get(self, mapping: Any, key: Any) -> Any:
        value = mapping.get(key, _MISSING)
        entry = self.keys.get(id(mapping))
        if entry is None:
            entry = self.keys[id(mapping)] = (mapping, [], [])
        entry[1].append(key)
        entry[2].append(value)
        return value

    def items(self, mapping: Any) -> list[Any]:
        """A namespace read whole (a user module's, a class's, an instance's)."""
        pairs = list(mapping.items())
        entry = self.keys.get(id(mapping))
        if entry is None:
            entry = self.keys[id(mapping)] = (mapping, [], [])
        for k, v in pairs:
            entry[1].append(k)
            entry[2].append(v)
        self.whole.append((mapping, len(pairs)))
        return [v for _, v in pairs]

    def valid(self) -> bool:
        is_ = operator.is_
        for mapping, keys, values in self.keys.values():
            if not all(map(is_, map(mapping.get, keys, itertools.repeat(_MISSING)), values)):
                return False
        for mapping, n in self.whole:
            if len(mapping) != n:
                return False
        for ref, i, value in self.cells:
            fn = ref()
            if fn is None:
                return False
            try:
                now = fn.__closure__[i].cell_contents
            except ValueError:
                now = _MISSING
            if value is _AN_ATOM:
                if type(now) not in _ATOMS:
                    return False
            elif now is not (value() if type(value) is weakref.ref else value):
                return False
        for ref, attr, value in self.attrs:
            obj = ref()
            if obj is None or getattr(obj, attr, _MISSING) is not value:
                return False
        for items, kept in self.lists:
            if len(items) != len(kept) or not all(map(is_, items, kept)):
                return False
        return True


@lru_cache(maxsize=4096)
def _code_info(code: types.CodeType) -> tuple[tuple[str, ...], tuple[tuple[str, int, tuple[str, ...]], ...]]:
    """A code object's names (its nested code objects' too: inner functions,
    lambdas, comprehensions share its globals) and its imports: (name, level,
    fromlist) of each ``IMPORT_NAME``. Code objects are immutable: kept per code."""
    import dis

    names: dict[str, None] = {}
    imports: list[tuple[str, int, tuple[str, ...]]] = []
    todo = [code]
    while todo:
        c = todo.pop()
        names.update(dict.fromkeys(c.co_names))
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        if not c.co_names:
            continue
        # IMPORT_NAME takes the level and the fromlist the two instructions before it push
        before: list[Any] = [None, None]
        for ins in dis.get_instructions(c):
            if ins.opname == "IMPORT_NAME":
                level, fromlist = (_const(i) for i in before)
                imports.append((ins.argval, level if type(level) is int else 0,
                                tuple(x for x in fromlist if isinstance(x, str)) if type(fromlist) is tuple else ()))
            before = [before[1], ins]
    return tuple(names), tuple(imports)


def _const(ins: Any) -> Any:
    """The constant an instruction pushes (LOAD_CONST; LOAD_SMALL_INT on newer Pythons), else None."""
    return ins.argval if ins is not None and ins.opname in ("LOAD_CONST", "LOAD_SMALL_INT") else None


def _pickled_by_value(obj: Any) -> tuple[bool, types.ModuleType | None]:
    """Whether cloudpickle will pickle function or class ``obj`` by value once the
    user modules are registered, and its module when that is a user module."""
    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__":
        return True, None  # (dynamic: cloudpickle's own by-value case)
    if is_user_module(module):
        return True, module
    if _CP_HELPERS:
        try:
            return not _cp._should_pickle_by_reference(obj), None
        except Exception:  # noqa: BLE001 - an odd object: by name, as before
            return False, None
    return False, None


def _resolve_import(name: str, level: int, package: Any) -> str | None:
    if not level:
        return name
    if not isinstance(package, str) or not package:
        return None
    parts = package.rsplit(".", level - 1)
    if len(parts) < level:
        return None
    base = parts[0]
    return f"{base}.{name}" if name else base


def _walk(roots: list[Any]) -> tuple[Needs, _Reads]:
    """``needs_of``'s walk, breadth first from ``roots`` (``_WALK_NODES``, ``_WALK_DEPTH``)."""
    reads = _Reads()
    found: set[types.ModuleType] = set()
    imported: dict[str, None] = {}
    seen: set[int] = set()
    queue = collections.deque((root, 0) for root in roots)
    nodes = 0
    while queue:
        obj, depth = queue.popleft()
        t = type(obj)
        if t in _ATOMS or id(obj) in seen:
            continue
        seen.add(id(obj))
        nodes += 1
        if nodes > _WALK_NODES:
            log.debug("stopped looking for the user modules %r needs after %d objects", roots[0], _WALK_NODES)
            break
        down = depth + 1
        more: list[Any] = []
        try:
            if isinstance(obj, types.ModuleType):
                if is_user_module(obj):
                    found.add(_top_package(obj))
                    # Pickled by value, a module carries its whole namespace (not its __builtins__).
                    more = reads.items(vars(obj))
                    builtins = obj.__dict__.get("__builtins__")
                    if builtins is not None:
                        seen.add(id(builtins))
            elif t is types.FunctionType:
                by_value, module = _pickled_by_value(obj)
                if not by_value:
                    continue
                if module is not None:
                    found.add(_top_package(module))
                code = obj.__code__
                ref = weakref.ref(obj)
                reads.attrs.append((ref, "__code__", code))
                names, imports = _code_info(code)
                g = obj.__globals__
                more = [v for v in (reads.get(g, n) for n in names) if v is not _MISSING]
                for i, cell in enumerate(obj.__closure__ or ()):
                    try:
                        value = cell.cell_contents
                    except ValueError:
                        value = _MISSING
                    if type(value) in _ATOMS:  # (its kind is all the walk looks at: a large bytes is not kept)
                        reads.cells.append((ref, i, _AN_ATOM))
                        continue
                    try:  # (weakly where it can: a nested function that calls itself holds itself in a cell)
                        reads.cells.append((ref, i, weakref.ref(value)))
                    except TypeError:
                        reads.cells.append((ref, i, value))
                    if value is not _MISSING:
                        more.append(value)
                for attr in ("__defaults__", "__kwdefaults__"):
                    value = getattr(obj, attr)
                    reads.attrs.append((ref, attr, value))
                    if value:
                        more.append(value)
                for name, level, fromlist in imports:
                    absolute = _resolve_import(name, level, reads.get(g, "__package__"))
                    if absolute is None:
                        continue
                    wanted = [absolute] + [f"{absolute}.{x}" for x in fromlist if x != "*"]
                    for full in wanted:
                        parts = full.split(".")
                        for i in range(1, len(parts) + 1):
                            module = reads.get(sys.modules, ".".join(parts[:i]))
                            if isinstance(module, types.ModuleType) and is_user_module(module):
                                found.add(_top_package(module))
                                imported[module.__name__] = None
                                more.append(module)
            elif isinstance(obj, type):
                by_value, module = _pickled_by_value(obj)
                if not by_value:
                    continue
                if module is not None:
                    found.add(_top_package(module))
                more = list(obj.__mro__[1:]) + reads.items(obj.__dict__)
            elif t in (staticmethod, classmethod):
                more = [obj.__func__]
            elif t is property:
                more = [obj.fget, obj.fset, obj.fdel]
            elif t is types.MethodType:
                more = [obj.__func__, obj.__self__]
            elif t is functools.partial:
                more = [obj.func, obj.args, obj.keywords]
            elif t is dict:
                if len(obj) <= _WALK_ITEMS:
                    more = reads.items(obj)
                else:  # (data, most likely: its first items, and a change of its size walks again)
                    reads.whole.append((obj, len(obj)))
                    more = list(itertools.islice(obj.values(), _WALK_ITEMS))
            elif t is list:
                if len(obj) <= _WALK_ITEMS:
                    reads.lists.append((obj, tuple(obj)))
                else:
                    reads.whole.append((obj, len(obj)))
                more = obj[:_WALK_ITEMS]
            elif t in _CONTAINERS:
                more = list(itertools.islice(obj, _WALK_ITEMS))
            else:
                # An instance: its class, and its attributes where it is the user's own or a
                # callable object (the Batch that chunksize sends holds the functions it calls).
                more = [t]
                attrs = getattr(obj, "__dict__", None)
                if type(attrs) is dict and (callable(obj) or _pickled_by_value(t)[0]):
                    more += reads.items(attrs)
        except Exception:  # noqa: BLE001 - an object that will not be looked into (a proxy): not followed
            log.debug("could not look into %s while looking for user modules", type(obj).__name__, exc_info=True)
            continue
        if down <= _WALK_DEPTH:
            queue.extend((value, down) for value in more)
    return Needs(frozenset(found), tuple(imported)), reads


class _Shipped:
    """A pickled object with the user modules it imports by name (``Needs.imported``):
    unpickled, those are put in the worker's ``sys.modules`` first, where an import
    statement in the function finds them."""

    __slots__ = ("modules", "obj")

    def __init__(self, modules: list[types.ModuleType], obj: Any) -> None:
        self.modules, self.obj = modules, obj

    def __reduce__(self) -> tuple[Any, ...]:
        return _install_shipped, (self.modules, self.obj)


def _install_shipped(modules: list[Any], obj: Any) -> Any:
    """Runs where the pickle is loaded: each module goes into ``sys.modules`` unless
    that holds one of the name already (a worker that can import the real one, or
    the driver itself), other than one shipped here before (a later pickle's copy
    is the newer). Pickled by value (``__module__`` below): a worker of any version
    runs it."""
    loaded = __import__("sys").modules
    for module in modules:
        have = loaded.get(module.__name__)
        if have is None or getattr(have, "__wrenpack_shipped__", False):
            module.__wrenpack_shipped__ = True
            loaded[module.__name__] = module
    return obj


_install_shipped.__module__ = "wrenpack._shipped_by_value"  # (no such module: cloudpickle pickles it by value)


def shipped(obj: Any, needs: Needs) -> Any:
    """``obj`` to pickle, with the modules ``needs.imported`` names (inside the
    caller's ``by_value(needs.modules)``, so that they travel by value)."""
    modules = [sys.modules[name] for name in needs.imported if name in sys.modules]
    return _Shipped(modules, obj) if modules else obj


_registry_lock = threading.Lock()
#: module name -> how many wrenpack scopes need it pickled by value now
_scope_counts: dict[str, int] = {}


_NO_MODULES = contextlib.nullcontext()


def by_value(modules: set[types.ModuleType]) -> "contextlib.AbstractContextManager[None]":
    """Pickle ``modules`` by value while inside. Safe across threads: the
    registration is counted, so a module stays registered until the last scope
    that needs it ends; a module registered by the user stays registered."""
    return _by_value(modules) if modules else _NO_MODULES  # (none: most calls, twice per launch)


@contextlib.contextmanager
def _by_value(modules: set[types.ModuleType]) -> Iterator[None]:
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
    _check_returns_values(fn)
    needs = needs_of(fn)
    with by_value(set(needs.modules) if user_modules is None else user_modules):
        try:
            return dumps(shipped(fn, needs) if needs.imported else fn)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - (an exit() in a __reduce__ must not end the program)
            if raised_by_a_signal(exc):
                raise
            where = describe_unpicklable(fn, f"function {getattr(fn, '__qualname__', fn)!r}")
            fix = _FIX_MODULE if "your module " in where else _FIX
            raise SerializationError(f"cannot send {where}: {_short(exc)}; {fix}") from None


def _check_returns_values(fn: Callable[..., Any]) -> None:
    """A generator or async function is refused before anything launches: each call would
    return a generator or a coroutine, which cannot travel back from a worker (every call
    would fail there, "cannot pickle 'generator' object", after it ran)."""
    import inspect

    from wrenpack.errors import ConfigTypeError

    name = getattr(fn, "__name__", None) or "f"
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigTypeError(f"{name} is a generator function: its calls would return generators, which cannot come "
                              f"back from a worker; send a function that returns a list, e.g. "
                              f"def {name}_list(x): return list({name}(x))")
    if inspect.iscoroutinefunction(fn):
        raise ConfigTypeError(f"{name} is an async function: its calls would return coroutines, which cannot come back "
                              f"from a worker; send a plain function that runs it, e.g. "
                              f"def {name}_run(x): return asyncio.run({name}(x))")


class _Uncacheable(Exception):
    """The function reaches something whose pickle identity checks cannot vouch for."""


#: id(fn) -> (fn, names of the modules pickled by value, checks, pickle)
_pickled: "OrderedDict[int, tuple[Any, frozenset[str], list[tuple[Any, ...]], bytes]]" = OrderedDict()
_pickled_lock = threading.Lock()
_MAX_PICKLED = 64
#: larger pickles are not kept: the cache holds the function, and with it what it
#: closes over, alive after the user dropped them (a 200 MB table, twice); a large
#: function is pickled again for each launch, as ProcessPoolExecutor does
MAX_PICKLED_BYTES = 1024 * 1024
#: and all pickles kept together (the least recently used go first)
_MAX_PICKLED_TOTAL = 16 * 1024 * 1024
#: checks one function may need (one whose globals reach further is pickled every time)
_MAX_CHECKS = 500
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis), type(NotImplemented)})
_MISSING = object()
#: what cloudpickle's ``_function_getstate`` returns; any other entry (a newer
#: cloudpickle) is not covered by the checks, and the function is not cached
_SLOTS = frozenset({"__name__", "__qualname__", "__annotations__", "__kwdefaults__", "__defaults__", "__module__",
                    "__doc__", "__closure__", "_cloudpickle_submodules", "__globals__"})
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
# Check kinds: (kind, object, ...); see _still_valid.
_ATTR, _GLOBAL, _CELL, _DICT, _BY_REF, _SUBMODULES, _LIST = range(7)
# cloudpickle's own helpers decide by value/by reference exactly as its pickler
# does (private: without them there is no cache, and nothing else changes).
_cp = getattr(cloudpickle, "cloudpickle", None)
_CP_HELPERS = all(hasattr(_cp, n) for n in ("_should_pickle_by_reference", "_function_getstate",
                                             "_extract_code_globals", "_find_imported_submodules"))


def dumps_function_cached(fn: Callable[..., Any], user_modules: set[types.ModuleType]) -> bytes:
    """``dumps_function``, reusing the last pickle of ``fn`` while nothing it
    pickles has changed (``.remote()`` in a loop pickles the function once).

    Why a stale function never ships: when ``fn`` is pickled, a list of checks
    is made of everything cloudpickle puts into its pickle (the keys of its
    own ``_function_getstate`` are verified to be the ones covered): the code
    object, defaults, keyword defaults, closure cells, ``__dict__``,
    annotations, name, qualname, module, doc, the globals the code names (and
    the absence of those it names but that are not defined), the module
    attributes the pickle carries and the submodules it would import, and
    recursively the same for every function it pickles by value; for each
    function, class and module pickled by reference, cloudpickle's decision
    to do so. The pickle is reused only while every check still holds, run
    again at each call inside the caller's ``by_value`` scope. The checks
    compare by *identity* (``is``), and they keep the objects they compare
    against alive, so an id is never reused: any rebinding (``K = 4``,
    ``f.__defaults__ = ...``, a new cell value) fails them. Identity is
    enough only for values that cannot change in place, so the cache takes
    only those: numbers, strings, bytes, None, tuples and frozensets of them,
    and functions, classes and modules pickled by reference; a function that
    reaches a list, dict, set, an instance or a class pickled by value is
    pickled on every call, as before. A change made by another thread while
    the pickle is made is caught by running the checks again after it."""
    if not _CP_HELPERS or not isinstance(fn, types.FunctionType) or needs_of(fn).imported:
        # (modules shipped for its imports: open-ended namespaces no check covers)
        return dumps_function(fn, user_modules)
    kept = cached_pickle(fn, user_modules)
    if kept is not None:
        return kept
    modules = frozenset(m.__name__ for m in user_modules)
    try:
        checks = _checks(fn)
    except _Uncacheable:
        checks = None
    data = dumps_function(fn, user_modules)
    with _pickled_lock:
        if checks is not None and len(data) <= MAX_PICKLED_BYTES and _still_valid(checks):
            _pickled[id(fn)] = (fn, modules, checks, data)
            _pickled.move_to_end(id(fn))
            total = sum(len(entry[3]) for entry in _pickled.values())
            while len(_pickled) > _MAX_PICKLED or total > _MAX_PICKLED_TOTAL:
                total -= len(_pickled.popitem(last=False)[1][3])
        else:
            _pickled.pop(id(fn), None)
    return data


def cached_pickle(fn: Callable[..., Any], user_modules: set[types.ModuleType]) -> bytes | None:
    """The pickle ``dumps_function_cached`` keeps for ``fn`` while every one of
    its checks still holds (the same bytes object each time), else None. It
    never pickles: the caller runs it inside its ``by_value(user_modules)``
    scope, as ``dumps_function_cached`` is run."""
    hit = _pickled.get(id(fn))  # (one lookup of the C OrderedDict: atomic; changes to it take the lock)
    if hit is None or hit[0] is not fn:
        return None
    modules = frozenset(m.__name__ for m in user_modules) if user_modules else _NO_NAMES
    if hit[1] != modules or not _still_valid(hit[2]):
        return None
    with _pickled_lock:
        if id(fn) in _pickled:
            _pickled.move_to_end(id(fn))
    return hit[3]


def is_cached_pickle(fn: Callable[..., Any], data: bytes) -> bool:
    """Whether ``data`` is the pickle of ``fn`` that ``dumps_function_cached`` keeps
    (a launch that would reuse it checks it with ``cached_pickle``)."""
    with _pickled_lock:
        hit = _pickled.get(id(fn))
    return hit is not None and hit[0] is fn and hit[3] is data


_NO_NAMES: frozenset[str] = frozenset()


def _still_valid(checks: list[tuple[Any, ...]]) -> bool:
    should_ref = _cp._should_pickle_by_reference
    for check in checks:
        kind, obj = check[0], check[1]
        if kind == _ATTR:
            if getattr(obj, check[2]) is not check[3]:
                return False
        elif kind == _GLOBAL:
            if obj.get(check[2], _MISSING) is not check[3]:
                return False
        elif kind == _CELL:
            try:
                value = obj.cell_contents
            except ValueError:
                value = _MISSING
            if value is not check[2]:
                return False
        elif kind == _DICT:
            items = check[2]
            if len(obj) != len(items) or any(obj.get(k, _MISSING) is not v for k, v in items):
                return False
        elif kind == _BY_REF:
            if should_ref(obj) is not check[2]:
                return False
        elif kind == _SUBMODULES:
            if _imported_submodules(obj, check[2]) != check[3]:
                return False
        elif kind == _LIST:
            if obj != check[2]:
                return False
    return True


#: the names in sys.modules when they were last scanned (``_imported_submodules``), and what
#: each (package prefix, code names) found among them: while the names stay the same, so does that
_scanned: tuple[list[Any], dict[tuple[str, tuple[str, ...]], tuple[str, ...]]] = ([], {})
_scanned_lock = threading.Lock()


def _imported_submodules(code: types.CodeType, deps: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """cloudpickle's ``_find_imported_submodules(code, deps)``, as a tuple: the
    submodules of the packages among ``deps`` imported now whose names the code
    can address, in ``sys.modules``' order. cloudpickle walks every name in
    ``sys.modules`` in Python for each package (hundreds once numpy is
    imported), which a warm call's pickle check would do on every call. Here
    the walk's outcome (which names) is kept while the names in sys.modules
    are the very same, in the same order (a comparison in C); else the names
    are joined into one string and searched for each package's prefix in C (a
    name that is not a string, or holds the separator, takes cloudpickle's own
    walk). The modules are looked up afresh each time. None if one left
    ``sys.modules`` meanwhile."""
    packages = [x for x in deps if isinstance(x, types.ModuleType) and hasattr(x, "__package__") and x.__package__]
    if not packages:
        return ()
    global _scanned
    modules = sys.modules
    names = list(modules)
    kept_names, found_names = _scanned
    if names != kept_names:
        found_names = {}
        with _scanned_lock:
            _scanned = (names, found_names)
    co_names = code.co_names
    found: list[Any] = []
    joined = None
    try:
        for package in packages:
            prefix = package.__name__ + "."
            key = (prefix, co_names)
            hit = found_names.get(key)
            if hit is None:
                if joined is None:
                    try:
                        joined = "\0".join(names)
                    except TypeError:  # (older pytest put None in sys.modules)
                        return tuple(_cp._find_imported_submodules(code, deps))
                    if joined.count("\0") != len(names) - 1:
                        return tuple(_cp._find_imported_submodules(code, deps))
                    joined = "\0" + joined + "\0"  # every name between two separators
                hit = found_names[key] = _names_under(joined, prefix, set(co_names))
            found.extend(modules[name] for name in hit)
    except KeyError:
        return None
    return tuple(found)


def _names_under(joined: str, prefix: str, co_names: set[str]) -> tuple[str, ...]:
    """The names in ``joined`` (NUL-separated) under ``prefix`` whose every part the code names."""
    needle = "\0" + prefix
    out = []
    at = joined.find(needle)
    while at >= 0:
        end = joined.index("\0", at + 1)
        name = joined[at + 1:end]
        if not set(name[len(prefix):].split(".")) - co_names:
            out.append(name)
        at = joined.find(needle, end)
    return tuple(out)


def _checks(fn: types.FunctionType) -> list[tuple[Any, ...]]:
    """The identity checks that vouch for ``fn``'s pickle (``_Uncacheable``: none can)."""
    should_ref = _cp._should_pickle_by_reference
    checks: list[tuple[Any, ...]] = []
    seen: set[int] = set()

    def add(check: tuple[Any, ...]) -> None:
        checks.append(check)
        if len(checks) > _MAX_CHECKS:
            raise _Uncacheable

    def value(v: Any) -> None:
        t = type(v)
        if t in _ATOMS:
            return
        if t is tuple or t is frozenset:
            for item in v:
                value(item)
        elif t is types.ModuleType or t is types.FunctionType or isinstance(v, type):
            if t is types.FunctionType and id(v) in seen:
                return
            by_ref = should_ref(v)
            add((_BY_REF, v, by_ref))
            if by_ref:
                return
            if t is not types.FunctionType:
                raise _Uncacheable  # a module or class pickled by value: an open-ended namespace
            function(v)
        elif t is not types.BuiltinFunctionType:  # (those pickle by name)
            raise _Uncacheable

    def mapping(owner: Any, attr: str) -> None:
        d = getattr(owner, attr)
        add((_ATTR, owner, attr, d))
        if d is None:
            return
        if type(d) is not dict:
            raise _Uncacheable
        add((_DICT, d, tuple(d.items())))
        for k, v in d.items():
            value(k)
            value(v)

    def function(f: types.FunctionType) -> None:
        seen.add(id(f))
        state, slots = _cp._function_getstate(f)
        if set(slots) != _SLOTS:
            raise _Uncacheable
        add((_ATTR, f, "__code__", f.__code__))
        for attr in ("__name__", "__qualname__", "__module__", "__doc__", "__defaults__"):
            v = getattr(f, attr)
            add((_ATTR, f, attr, v))
            value(v)
        mapping(f, "__kwdefaults__")
        mapping(f, "__annotations__")
        mapping(f, "__dict__")
        g = f.__globals__
        for name in _BASE_GLOBALS:
            v = g.get(name, _MISSING)
            add((_GLOBAL, g, name, v))
            if name == "__path__" and type(v) is list and all(type(p) is str for p in v):
                add((_LIST, v, list(v)))
            elif v is not _MISSING:
                value(v)
        deps: list[Any] = []
        for name in _cp._extract_code_globals(f.__code__):
            v = g.get(name, _MISSING)
            add((_GLOBAL, g, name, v))
            if v is not _MISSING:
                deps.append(v)
                value(v)
        for cell in f.__closure__ or ():
            try:
                v = cell.cell_contents
            except ValueError:
                v = _MISSING
            add((_CELL, cell, v))
            if v is not _MISSING:
                deps.append(v)
                value(v)
        if any(type(d) is types.ModuleType and getattr(d, "__package__", None) for d in deps):
            # cloudpickle adds the package's submodules imported now that the code names
            subs = tuple(_cp._find_imported_submodules(f.__code__, deps))
            add((_SUBMODULES, f.__code__, tuple(deps), subs))

    try:
        if should_ref(fn):
            add((_BY_REF, fn, True))  # pickled by name: only that decision matters
        else:
            add((_BY_REF, fn, False))
            function(fn)
    finally:
        del add, value, mapping, function  # they call each other: a reference cycle otherwise
    return checks


def dumps_call(args: tuple[Any, ...], kwargs: dict[str, Any], label: str, user_modules: set[types.ModuleType] | None = None,
               spill: Any = None) -> Any:
    """Pickle one call's arguments; on failure name the argument and the object inside it.

    ``spill`` (a ``wrenpack.worker.handoff.Spill``): pickle into it as it goes
    (protocol 5, large buffers out of band) and return what it finishes as
    (bytes, or a sealed memfd for the local backend's hand-off).

    The user classes of the arguments travel by value too (``needs_of_args``:
    an instance of the user's class, whose methods use the user's package)."""
    extra = needs_of_args(args, kwargs)
    payload: Any = shipped((args, kwargs), extra) if extra.imported else (args, kwargs)
    with by_value(set(user_modules or ()) | extra.modules):
        try:
            if spill is None:
                return dumps(payload)
            try:
                Pickler(spill, protocol=5, buffer_callback=spill.buffer).dump(payload)
                return spill.finish()
            except BaseException:
                spill.discard()
                raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - (an exit() in a __reduce__ must not end the program)
            if raised_by_a_signal(exc):
                raise
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
_FIX_MODULE = ("your own modules travel whole, by value (a worker cannot import them): create such an object when it "
               "is first used (inside a function), not when the module is imported")


def raised_by_a_signal(exc: BaseException) -> bool:
    """Whether ``exc`` came from a signal's Python handler (a SIGTERM handler's
    ``SystemExit`` that landed while the arguments were pickled), not from what was
    pickled: a ``sys.exit()`` in a ``__reduce__`` is reported as the object's fault, and
    the program's own exit was, so its SIGTERM ended nothing ("the arguments of call 0
    of f: pickling it called sys.exit(143)"). Told by its traceback: a frame of a
    handler of one of ``interrupts.HELD`` now set."""
    import signal

    from wrenpack.interrupts import HELD

    codes = set()
    for signum in HELD:
        handler = signal.getsignal(signum)
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def _short(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"pickling it called sys.exit({exc.code!r})"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dumps(obj)
        return True
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        if raised_by_a_signal(exc):
            raise
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
        for name in _code_info(obj.__code__)[0]:
            if name not in obj.__globals__:
                continue
            value = obj.__globals__[name]
            if not isinstance(value, types.ModuleType):
                children.append((f"global {name!r} used by {path}", value))
            elif is_user_module(value):
                children.append((f"your module {value.__name__!r} used by {path}", value))
        for i, d in enumerate(obj.__defaults__ or ()):
            children.append((f"default argument {i} of {path}", d))
    elif isinstance(obj, types.ModuleType):
        if is_user_module(obj):  # (it travels by value, with its whole namespace: the worker cannot import it)
            children = [(f"global {k!r} of {path}", v) for k, v in vars(obj).items() if k != "__builtins__"]
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
