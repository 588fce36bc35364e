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
import io
import os
import sys
import sysconfig
import threading
import types
from collections import ChainMap, OrderedDict
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator

import cloudpickle

from wrenpack.errors import SerializationError


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


def own_module_note(name: str | None, needs: str = "the function needs") -> str | None:
    """For a module a worker could not import: when it is the user's own code here
    (``is_user_module``'s rule: a file outside site-packages and the standard
    library), the message to give instead of the worker's "add it to the runtime
    (wrenpack build-runtime NAME)", which would install a PyPI project of that
    name, someone else's code. None for any other module. ``needs``: who needs it
    (a launch refused before it starts names the arguments of a call too)."""
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
    return (f"{needs} module {name!r}, which is your own code ({where}), not a package to install: it "
            f"did not travel with the function (only the modules the function names as globals do); register it in "
            f"the driver so it travels by value (import {top}, cloudpickle; cloudpickle.register_pickle_by_value({top})), "
            f"or copy it into the runtime's python/ directory; do not install a package named {top!r} (from PyPI "
            f"that would be someone else's code)")


#: opcodes that push a string (a module or attribute name, among others)
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                         "SHORT_BINSTRING"})
#: opcodes that change no value on the stack (the memo's and the framing's)
_QUIET_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO", "MARK"})
#: cloudpickle's ``subimport(name)``: how it pickles a module by reference (``import name`` in the worker)
_SUBIMPORT = frozenset({("cloudpickle.cloudpickle", "subimport"), ("cloudpickle.cloudpickle_fast", "subimport")})


def modules_named(data: bytes) -> frozenset[str]:
    """The modules a pickle names for the unpickler to import: the module of
    every global it refers to by name (``GLOBAL``, ``INST``, ``STACK_GLOBAL``:
    a function or class pickled by reference, an instance's class) and every
    module cloudpickle pickles by reference (``subimport(name)``).

    It reads opcodes only (``pickletools.genops``): nothing is imported, built
    or run. ``STACK_GLOBAL`` takes its module and name from the two values
    pushed just before it, as a pickler writes them: strings, or memo entries
    that hold strings (the memo is followed for that). A pickle of many small
    values takes one step per opcode (about a microsecond each): a large
    argument's is searched first for the names that matter (``names_any``)."""
    import pickletools

    found: set[str] = set()
    memo: dict[int, Any] = {}
    last: Any = None  # the value the last opcode pushed, as far as it matters here
    before: Any = None  # the one pushed before it
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _QUIET_OPS:
            if name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = last
            continue
        if name in _STRING_OPS:
            pushed: Any = arg if isinstance(arg, str) else None
            if pushed is not None and last in _SUBIMPORT:
                found.add(pushed)  # subimport's argument: the module it imports
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
            if isinstance(pushed, str) and last in _SUBIMPORT:
                found.add(pushed)
        elif name == "STACK_GLOBAL":
            pushed = None
            if isinstance(before, str) and isinstance(last, str):
                found.add(before)
                pushed = (before, last)
            before = None
            last = pushed
            continue
        elif name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.add(module)
            pushed = (module, qualname) if name == "GLOBAL" else None
        else:
            pushed = None
        before, last = last, pushed
    return frozenset(found)


def names_any(data: bytes, names: Iterable[str]) -> bool:
    """Whether any of ``names`` occurs in ``data`` at all: a search in C, at
    memory speed, that a pickle must pass before ``modules_named`` reads its
    opcodes (a module the pickle names occurs in it as text, UTF-8)."""
    return any(name.encode("utf-8", "surrogatepass") in data for name in names)


@lru_cache(maxsize=4096)
def _outside_libraries(path: str) -> bool:
    # realpath is a few system calls, asked on every launch for each module a function names
    return not os.path.realpath(path).startswith(_library_dirs())


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

    try:
        visit(fn, 0)
    finally:
        del visit  # it refers to itself: a reference cycle on every launch otherwise
    return found


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
    with by_value(user_modules_of(fn) if user_modules is None else user_modules):
        try:
            return dumps(fn)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - (an exit() in a __reduce__ must not end the program)
            if raised_by_a_signal(exc):
                raise
            where = describe_unpicklable(fn, f"function {getattr(fn, '__qualname__', fn)!r}")
            raise SerializationError(f"cannot send {where}: {_short(exc)}; {_FIX}") from None


def _check_returns_values(fn: Callable[..., Any]) -> None:
    """A generator or async function is refused before anything launches: each call would
    return a generator or a coroutine, which cannot travel back from a worker (every call
    would fail there, "cannot pickle 'generator' object", after it ran)."""
    import inspect

    from wrenpack.errors import ConfigTypeError

    name = getattr(fn, "__name__", None) or "f"
    if inspect.isasyncgenfunction(fn):  # (list() of one fails: collected in an async function, run by a plain one)
        raise ConfigTypeError(f"{name} is an async generator function: its calls would return async generators, which "
                              f"cannot come back from a worker; send a plain function that collects it, e.g. "
                              f"async def {name}_all(x): return [v async for v in {name}(x)] and "
                              f"def {name}_list(x): return asyncio.run({name}_all(x))")
    if inspect.isgeneratorfunction(fn):
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
    if not _CP_HELPERS or not isinstance(fn, types.FunctionType):
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
    (bytes, or a sealed memfd for the local backend's hand-off)."""
    with by_value(user_modules or set()):
        try:
            if spill is None:
                return dumps((args, kwargs))
            try:
                Pickler(spill, protocol=5, buffer_callback=spill.buffer).dump((args, kwargs))
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
