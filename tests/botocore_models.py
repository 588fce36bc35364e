"""botocore's data files (service models, endpoints, partitions) read once per test process.

Every boto3 ``Session`` gets a loader of its own, and each loader parses botocore's JSON
again: ~50 ms for S3 and Lambda with endpoints.json, and ~17,000 directory listings for
its list of services. wrenpack makes a session for each store client, each backend and
each doctor check, so the tests that run it against the AWS stand-ins spent a large part
of their time re-reading the same files (a doctor test: 1.6 s of 4.4 s).

``share_loaded_models()`` makes the loaders of this process share what they read. Each
loader still looks its data up by the same arguments, and the cache key adds what the
result depends on (its search paths, extras and file loader), read at lookup time because
boto3 appends its own data path to a loader after making it. botocore already hands the
same objects to every client of one session (its ``instance_cache``), so no caller
changes them; the lookups are serialised by one lock, so two sessions loading a model at
once never see it half-built (``load_service_model`` merges its extras into the loaded
data). Nothing of wrenpack changes: only where botocore's read-only data comes from.
"""
from __future__ import annotations

import threading
from typing import Any

_SHARED: dict[tuple, Any] = {}
_LOCK = threading.RLock()
#: the loader methods botocore caches per instance (``instance_cache``)
_CACHED = ("list_available_services", "determine_latest_version", "list_api_versions", "load_service_model",
           "load_data_with_path")


class _SharedCache:
    """A loader's ``_cache``, backed by the process-wide ``_SHARED``."""

    __slots__ = ("loader",)

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def _key(self, key: tuple) -> tuple:
        loader = self.loader
        return tuple(loader.search_paths), tuple(loader.extras_types), type(loader.file_loader), key

    def __contains__(self, key: tuple) -> bool:
        return self._key(key) in _SHARED

    def __getitem__(self, key: tuple) -> Any:
        return _SHARED[self._key(key)]

    def __setitem__(self, key: tuple, value: Any) -> None:
        _SHARED[self._key(key)] = value


def share_loaded_models() -> None:
    """Make every botocore loader of this process share what it read: now if botocore is
    loaded, else when it is (a process that never uses AWS does not import it for this)."""
    import sys

    if "botocore.loaders" in sys.modules:
        _patch(sys.modules["botocore.loaders"])
    elif not any(isinstance(finder, _WhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenImported())


class _WhenImported:
    """A meta path finder that patches ``botocore.loaders`` once it has been executed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "botocore.loaders":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _patch(loaders: Any) -> None:
    if getattr(loaders.Loader, "_wrenpack_tests_shared", False):
        return
    original_init = loaders.Loader.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._cache = _SharedCache(self)

    def locked(method: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _LOCK:
                return method(self, *args, **kwargs)

        run.__name__, run.__doc__ = method.__name__, method.__doc__
        return run

    loaders.Loader.__init__ = __init__
    for name in _CACHED:
        setattr(loaders.Loader, name, locked(getattr(loaders.Loader, name)))
    loaders.Loader._wrenpack_tests_shared = True
