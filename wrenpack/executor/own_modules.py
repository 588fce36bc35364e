"""Before a launch on workers that lack this machine's files (Lambda): refuse a
pickle that names a module of the user's own code instead of carrying it.

What travels by value is decided elsewhere (``serialize.user_modules_of``: the
modules a function names as globals) and is not changed here. A function can
still reach a module of the user's own code that it does not name (``from
helpers import clean`` in its module: ``clean`` is pickled by reference, as
``helpers.clean``), and an argument can be an instance of the user's class.
Locally that works (the workers share the driver's files and ``sys.path``); on
Lambda every such call failed at run time, ``ModuleNotFoundError``. Here the
launch is refused first, in one line naming the module, its file and the fix,
before anything is stored or sent.

What counts (``_own``): a module the pickle names (``serialize.modules_named``)
that is the user's own code by ``serialize.is_user_module``'s rule (a file
outside site-packages and the standard library), that is not registered to
pickle by value (``cloudpickle.register_pickle_by_value``), and that the
call's runtime (``runtime=``, a built runtime) does not hold in its
``python/`` directory. The built runtime's manifest records distributions, not
the modules a user copied into ``python/``: the directory itself is looked at.

A function deployed from a container image (``wrenpack deploy --image-uri``) may
hold the user's modules, and this client cannot look into it; registering a
compiled module by value is no way out either. So where a module would be
refused, the backend is asked whether the calls' function is an image
(``Backend.image_of``: on Lambda its ``PackageType``, read once per function):
if it is, the launch goes ahead and each such module is warned about once per
process, naming its file and what fails if the image lacks it; if it is not,
or that cannot be read, the launch is refused as it would be without asking.
Asked only then: a launch that names none of the user's modules asks nothing.

Cost: nothing on a backend that shares the driver's files (the caller asks the
capability first), nor when none of the user's modules is imported. A pickle's
opcodes are read (about a microsecond each: a pickle of a million floats takes
most of a second) only when the top-level name of one of the user's imported
modules occurs in its bytes at all (a search in C, at memory speed); a
function's answer is kept by its pickle's hash, so a map or ``.remote()`` in a
loop reads it once.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import logging
import os
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import cloudpickle

from wrenpack import serialize
from wrenpack.errors import SerializationError

if TYPE_CHECKING:
    from wrenpack.backends.base import ImageAnswer

log = logging.getLogger(__name__)

#: sha256 of a function's pickle -> the modules it names (``serialize.modules_named``)
_named: "OrderedDict[bytes, frozenset[str]]" = OrderedDict()
_named_lock = threading.Lock()
_MAX_NAMED = 256
#: (the names in sys.modules when last read, the top-level names of the user's modules among them)
_tops: tuple[list[Any], frozenset[str]] = ([], frozenset())
#: the modules let through to a container image (``_warn``): each is warned about once per process
_warned: set[str] = set()
_warned_lock = threading.Lock()


def check(fn_bytes: bytes, payloads: Sequence[Any], runtime: str | None, label: str, backend: str,
          first: int = 0, image: Callable[[], ImageAnswer | None] | None = None) -> None:
    """Refuse (``SerializationError``, one line) a launch whose function or
    arguments name a module of the user's own code the workers will not have.
    ``payloads``: the calls' pickled arguments (bytes; others are not read),
    the first of them call ``first``; ``runtime``: the calls' built runtime.
    ``image``: whether the calls' function is a container image (``Backend.image_of``),
    asked at most once, and only when a module would be refused: then each such
    module is warned about once per process (``_warn``) instead."""
    registered = frozenset(cloudpickle.list_registry_pickle_by_value())
    tops = _user_tops() - registered
    if not tops:
        return  # (none of the user's modules is imported: no pickle can name one)
    answer: list[ImageAnswer | None] = []

    def allowed(name: str, path: str, needs: str) -> frozenset[str]:
        """The top-level names still to look for once ``name`` (at ``path``) was allowed; refused: raises."""
        if not answer:
            answer.append(image() if image is not None else None)
        found = answer[0]
        if found is None or not found.image:
            raise SerializationError(_message(label, backend, name, path, needs, found))
        _warn(name, path, found.function)
        # (the rest of the arguments are read only for modules of packages not found yet: reading each
        # of a map's arguments to warn about a package already warned about would cost what the check saves)
        return frozenset(top for top in tops if top != name.partition(".")[0])

    for name in sorted(_function_names(fn_bytes, tops)):
        path = _own(name, registered, runtime)
        if path is not None:
            allowed(name, path, "the function needs")
    left = tops
    for i, data in enumerate(payloads, first):
        if not left:
            return
        if type(data) is not bytes or not serialize.names_any(data, left):
            continue
        for name in sorted(serialize.modules_named(data)):
            path = _own(name, registered, runtime)
            if path is not None and name.partition(".")[0] in left:
                left = left & allowed(name, path, f"the arguments of call {i} need")


def _warn(name: str, path: str, function: str) -> None:
    """Once per module per process: a module of the user's own code that a pickle names is let
    through to a container image, which may hold it; this client cannot tell whether it does."""
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    top = name.partition(".")[0]
    log.warning("module %r is your own code (%s) and does not travel with the calls: Lambda function %s is a "
                "container image, which this client cannot look into, so the launch goes ahead; the image must hold "
                "%r importable, else every call fails with ModuleNotFoundError (or register it in the driver so it "
                "travels by value: cloudpickle.register_pickle_by_value(%s))", name, path, function, top, top)


def _function_names(fn_bytes: bytes, tops: frozenset[str]) -> frozenset[str]:
    """``serialize.modules_named(fn_bytes)``, kept by the pickle's hash (a map pickles its
    function once, and ``.remote()`` in a loop reuses the very pickle); not read at all
    when none of ``tops`` occurs in it (a closure over a large list, read once per content,
    would take a second)."""
    key = hashlib.sha256(fn_bytes).digest()
    with _named_lock:
        hit = _named.get(key)
        if hit is not None:
            _named.move_to_end(key)
            return hit
    if not serialize.names_any(fn_bytes, tops):
        return frozenset()
    found = serialize.modules_named(fn_bytes)
    with _named_lock:
        _named[key] = found
        while len(_named) > _MAX_NAMED:
            _named.popitem(last=False)
    return found


def _user_tops() -> frozenset[str]:
    """The top-level names of the user's own modules imported now: a module a pickle names
    is in ``sys.modules`` (it was pickled from there), and its name holds its top-level one."""
    global _tops
    names = list(sys.modules)
    kept = _tops
    if names == kept[0]:
        return kept[1]
    tops = set()
    for name in names:
        top = name.partition(".")[0]
        if top not in tops and serialize.is_user_module(sys.modules.get(name)):
            tops.add(top)
    _tops = (names, frozenset(tops))
    return _tops[1]


def _own(name: str, registered: frozenset[str], runtime: str | None) -> str | None:
    """The file (or package folder) of module ``name`` if it is the user's own code that
    will not be on the worker; None if it will be there, or is not the user's."""
    top = name.partition(".")[0]
    if any(name == r or name.startswith(r + ".") for r in registered):
        return None  # registered to travel by value (a name is only left if something else asked for it)
    module = sys.modules.get(name)
    owner = module if serialize.is_user_module(module) else sys.modules.get(top)
    if not serialize.is_user_module(owner):
        return None
    if runtime is not None and _in_runtime(runtime, top):
        return None  # copied into the runtime's python/ directory
    path = owner.__file__  # type: ignore[union-attr]
    return os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path


def _in_runtime(runtime: str, top: str) -> bool:
    """Whether the built runtime ``runtime`` (its output directory) holds module or package ``top``."""
    from runtime_builder.layout import SITE

    site = os.path.join(runtime, SITE)
    if os.path.isdir(os.path.join(site, top)):
        return True
    return any(os.path.exists(os.path.join(site, top + suffix)) for suffix in importlib.machinery.all_suffixes())


def _message(label: str, backend: str, name: str, path: str, needs: str, found: ImageAnswer | None = None) -> str:
    note = serialize.own_module_note(name, needs)
    if note is None:  # (its top-level package is not the user's: a namespace package, say)
        top = name.partition(".")[0]
        note = (f"{needs} module {name!r}, which is your own code ({path}): it did not travel with the function; "
                f"register it in the driver so it travels by value (import {top}, cloudpickle; "
                f"cloudpickle.register_pickle_by_value({top})), or copy it into the runtime's python/ directory")
    if found is not None and found.image is None:
        note += (f"; whether Lambda function {found.function} is a container image, which may hold it, could not be "
                 "read (lambda:GetFunctionConfiguration)")
    elif found is not None:
        note += (f"; or, the other way, deploy {found.function} from a container image that holds it "
                 "(wrenpack deploy --image-uri URI): its launches go ahead, with a warning")
    return f"cannot launch {label} on the {backend} backend, whose workers do not have this machine's files: {note}"
