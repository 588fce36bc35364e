"""The user's own modules that a function imports by statement, shipped as source.

A module the client pickles by value travels as the objects the function
reaches; an ``import helpers`` in a function's body (or in the body of a
module that travels) is run on the worker, which has no ``helpers``: the user's
project is not on a Lambda's ``sys.path``. The client sends the source of such
modules inside the function's pickle (``wrenpack.serialize``), and loading the
pickle calls ``install``: a finder, last on ``sys.meta_path``, serves those
modules to ``import`` when nothing the worker has does (the runtime's packages
keep their place). Standard library only.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import types
from typing import Any, Sequence

#: (name, file name, source, is a package), as the client sends each module
Entry = tuple[str, str, str, bool]


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the shipped modules (one per process, shared by every job)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.lock = threading.Lock()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None) -> Any:
        entry = self.entries.get(fullname)
        if entry is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=entry[1], is_package=entry[3])

    def create_module(self, spec: Any) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        _, filename, source, _ = self.entries[module.__name__]
        module.__file__ = filename  # (tracebacks and the module's own __file__ name the user's file)
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)


_finder = _Finder()


def install(entries: tuple[Entry, ...]) -> None:
    """Make ``entries`` importable here. A module loaded earlier from another
    version of its source (a warm worker's previous job) is dropped from
    ``sys.modules``, so the next import runs the source this job sent."""
    with _finder.lock:
        for entry in entries:
            name = entry[0]
            old = _finder.entries.get(name)
            if old == entry:
                continue
            _finder.entries[name] = entry
            module = sys.modules.get(name)
            if old is not None and module is not None and getattr(module, "__loader__", None) is _finder:
                del sys.modules[name]
        if _finder not in sys.meta_path:
            sys.meta_path.append(_finder)
