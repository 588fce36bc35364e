"""What a local worker may import when it runs with a built runtime.

Only the runtime's site directory, the standard library and wrenpack's own
package (through a shim directory holding nothing else) are on its path, so a
dependency missing from the runtime fails here exactly as it would on Lambda.
"""
from __future__ import annotations

import hashlib
import os

from wrenpack.errors import ConfigError


def site_dir(runtime: str) -> str:
    path = os.path.abspath(os.path.expanduser(runtime))
    for candidate in (os.path.join(path, "python"), path):
        if os.path.isdir(candidate) and (
            os.path.exists(os.path.join(os.path.dirname(candidate), "manifest.json"))
            or os.path.exists(os.path.join(candidate, "manifest.json"))
            or candidate.endswith(os.sep + "python")
        ):
            return candidate
    raise ConfigError(
        f"runtime={runtime!r} is not a runtime built by `wrenpack build-runtime` (no python/ directory or "
        "manifest.json there); build one with `wrenpack build-runtime --output DIR` and pass that DIR"
    )


def _shim_dir() -> str:
    import wrenpack

    package = os.path.dirname(os.path.abspath(wrenpack.__file__))
    digest = hashlib.sha256(package.encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    shim = os.path.join(base, "wrenpack", "worker-shim", digest)
    link = os.path.join(shim, "wrenpack")
    if not os.path.islink(link) or os.readlink(link) != package:
        os.makedirs(shim, exist_ok=True)
        tmp = f"{link}.{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(package, tmp)
        os.replace(tmp, link)
    return shim


def worker_paths(runtime: str) -> list[str]:
    return [_shim_dir(), site_dir(runtime)]
