"""Imported top-level modules -> installed distributions and versions.

Feeds ``wrenpack build-runtime --from-profile``. The standard library, wrenpack
itself and what every worker already has (cloudpickle) are left out; modules
that belong to no distribution are reported as the project's own code.

The module -> distribution map (``importlib.metadata.packages_distributions()``)
reads every installed distribution's file list: 0.07 s here, 0.38 s in a larger
environment, paid by every ``wrenpack profile``. It is kept on disk
(``$WRENPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/wrenpack/``, else ``~/.cache/wrenpack/``) under a key of the
interpreter, ``sys.path`` and, in each path entry, the distributions' metadata
folders (``*.dist-info``, ``*.egg-info``) with their modification times:
installing, upgrading or removing a distribution adds, renames or rewrites one,
so the key changes with what is installed. Not the entry's own mtime: the
project's directory is on the path too, and every file saved there changed it
(one listing of each entry, ~1 ms in all, against 0.07-0.38 s for a new map).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: Always present in a worker; never listed as a need.
IMPLIED = {"wrenpack", "cloudpickle"}
#: bump when the cached file's layout changes
CACHE_VERSION = 2
#: package maps kept in the cache directory at most, the least recently used removed first: the key
#: changes with the path, whose first entry is the profiled script's folder, so a user who profiles
#: scripts from many folders (or a test suite's temporary ones) would otherwise add a file each time
KEEP_MAPS = 16


def cache_dir() -> str:
    """wrenpack's cache directory, as the rest of wrenpack finds it (``wrenpack.config.cache_dir``).
    (The map went to ``~/.cache/wrenpack`` even with ``WRENPACK_CACHE_DIR`` set: into a home that
    may be read-only, or shared.)"""
    from wrenpack.config import cache_dir as wrenpack_cache_dir

    return wrenpack_cache_dir()


_METADATA_DIRS = (".dist-info", ".egg-info")


def _paths_key() -> str:
    """What the installed distributions depend on: the interpreter, the path, and each entry's
    distribution metadata folders with their mtimes (a file entry, e.g. a zip: its own mtime)."""
    parts: list[Any] = [CACHE_VERSION, sys.executable, sys.version]
    for entry in sys.path:
        entry = entry or os.getcwd()
        try:
            with os.scandir(entry) as it:
                found = sorted((e.name, e.stat().st_mtime_ns) for e in it if e.name.endswith(_METADATA_DIRS))
            parts.append((entry, found))
        except NotADirectoryError:
            try:
                parts.append((entry, os.stat(entry).st_mtime_ns))
            except OSError:
                parts.append((entry, None))
        except OSError:
            parts.append((entry, None))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


class _Cache:
    """The map and the distributions' names and versions, read from and written to one file."""

    def __init__(self) -> None:
        self.path = os.path.join(cache_dir(), f"packages-{_paths_key()}.json")
        self.modules: dict[str, list[str]] | None = None
        self.dists: dict[str, list[Any]] = {}
        self.dirty = False
        try:
            with open(self.path) as f:
                data = json.load(f)
            self.modules, self.dists = data["modules"], data.get("dists", {})
            os.utime(self.path)  # (used now: the last to be removed, ``_prune``)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if self.modules is None:
            from importlib import metadata  # (a fifth of the import time of the profiler: only on a miss)

            self.modules = {k: list(v) for k, v in metadata.packages_distributions().items()}
            self.dirty = True

    def canonical(self, dist: str) -> tuple[str, str | None]:
        hit = self.dists.get(dist)
        if hit is None:
            from importlib import metadata

            try:
                meta = metadata.metadata(dist)
                hit = [meta["Name"] or dist, metadata.version(dist)]
            except metadata.PackageNotFoundError:
                hit = [dist, None]
            self.dists[dist] = hit
            self.dirty = True
        return hit[0], hit[1]

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.part"
            with open(tmp, "w") as f:
                json.dump({"modules": self.modules, "dists": self.dists}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:  # a read-only home must not stop profiling
            log.debug("could not keep the package map in %s: %s", self.path, exc)
            return
        _prune(os.path.dirname(self.path), keep=self.path)


def _prune(folder: str, keep: str) -> None:
    """Remove all but the ``KEEP_MAPS`` most recently used package maps in ``folder`` (never ``keep``)."""
    try:
        with os.scandir(folder) as it:
            maps = [(e.stat().st_mtime_ns, e.path) for e in it
                    if e.name.startswith("packages-") and e.name.endswith(".json") and e.is_file(follow_symlinks=False)]
    except OSError:
        return
    maps.sort(reverse=True)
    for _mtime, path in maps[KEEP_MAPS:]:
        if path != keep:
            try:
                os.unlink(path)
            except OSError:
                pass


_cache: _Cache | None = None


def _current() -> _Cache:
    """This process's cache, read again when what is installed (the key) changed."""
    global _cache
    path = os.path.join(cache_dir(), f"packages-{_paths_key()}.json")
    if _cache is None or _cache.path != path:
        _cache = _Cache()
    return _cache


def warm() -> None:
    """Read (or build) the package map, and find the installed packages' directories, now: e.g. while
    a measured call runs elsewhere (``sysconfig`` alone is a few ms)."""
    _current()
    _installed_roots()


def _module_to_dists() -> dict[str, list[str]]:
    return _current().modules or {}


def _canonical(dist: str) -> tuple[str, str | None]:
    return _current().canonical(dist)


@lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Directories of the standard library and installed packages: nothing there is the project's own code.

    (``_sysconfigdata_*`` lives in the standard library without being in
    ``sys.stdlib_module_names``; Cython's shared ``_cyutility`` belongs to no distribution.)
    """
    import os
    import site
    import sysconfig

    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= set(site.getsitepackages()) if hasattr(site, "getsitepackages") else set()
    paths.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else None)
    return tuple(sorted(os.path.realpath(p) + os.sep for p in paths if p))


def _under(file: str, roots: tuple[str, ...]) -> bool:
    import os

    real = os.path.realpath(file)
    return real.startswith(roots) or f"{os.sep}site-packages{os.sep}" in real or f"{os.sep}dist-packages{os.sep}" in real


def map_modules(modules: dict[str, str | None]) -> tuple[list[dict[str, str | None]], list[str]]:
    """``{top-level module: file}`` -> (sorted packages [{name, version}], local module names)."""
    cache = _current()
    mapping = cache.modules or {}
    outside = _installed_roots()
    found: dict[str, str | None] = {}
    local: list[str] = []
    for name, file in sorted(modules.items()):
        if name in sys.stdlib_module_names or name in sys.builtin_module_names or name.startswith("_") and file is None:
            continue
        dists = mapping.get(name)
        if dists:
            for dist in dists:
                canon, version = cache.canonical(dist)
                if canon.lower().replace("_", "-") in IMPLIED:
                    continue
                found[canon] = version
        elif name not in IMPLIED and name != "__main__" and file and not _under(file, outside):
            local.append(name)
    cache.save()
    packages = [{"name": n, "version": v} for n, v in sorted(found.items(), key=lambda kv: kv[0].lower())]
    return packages, local
