"""Imported top-level modules -> installed distributions and versions.

Feeds ``wrenpack build-runtime --from-profile``. The standard library, wrenpack
itself and what every worker already has (cloudpickle) are left out; modules
that belong to no distribution are reported as the project's own code.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from importlib import metadata

#: Always present in a worker; never listed as a need.
IMPLIED = {"wrenpack", "cloudpickle"}


@lru_cache(maxsize=1)
def _module_to_dists() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _canonical(dist: str) -> tuple[str, str | None]:
    try:
        meta = metadata.metadata(dist)
        return meta["Name"] or dist, metadata.version(dist)
    except metadata.PackageNotFoundError:
        return dist, None


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
    mapping = _module_to_dists()
    outside = _installed_roots()
    found: dict[str, str | None] = {}
    local: list[str] = []
    for name, file in sorted(modules.items()):
        if name in sys.stdlib_module_names or name in sys.builtin_module_names or name.startswith("_") and file is None:
            continue
        dists = mapping.get(name)
        if dists:
            for dist in dists:
                canon, version = _canonical(dist)
                if canon.lower().replace("_", "-") in IMPLIED:
                    continue
                found[canon] = version
        elif name not in IMPLIED and name != "__main__" and file and not _under(file, outside):
            local.append(name)
    packages = [{"name": n, "version": v} for n, v in sorted(found.items(), key=lambda kv: kv[0].lower())]
    return packages, local
