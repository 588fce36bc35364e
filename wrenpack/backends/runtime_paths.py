"""What a local worker may import when it runs with a built runtime.

Only the runtime's site directory, the standard library, wrenpack's own
package (through a shim directory holding nothing else) and what Lambda's
Python runtime itself provides (boto3 and its dependencies, from this
machine, after the runtime's own copies) are on its path. So a dependency
missing from the runtime fails here exactly as it would on Lambda.
"""
from __future__ import annotations

import hashlib
import os
from importlib import metadata

from wrenpack.config import cache_dir  # (WRENPACK_CACHE_DIR first: the shims went to ~/.cache/wrenpack whatever it said)

#: Distributions the Lambda Python runtime ships, importable by every function.
LAMBDA_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")


def site_dir(runtime: str) -> str:
    from runtime_builder.layout import site_dir as _site_dir

    return _site_dir(os.path.expanduser(runtime))


def _link(target: str, link: str) -> None:
    if os.path.islink(link) and os.readlink(link) == target:
        return
    tmp = f"{link}.{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _shim_dir() -> str:
    """A directory whose only entry is wrenpack's package."""
    import wrenpack

    package = os.path.dirname(os.path.abspath(wrenpack.__file__))
    shims = os.path.join(cache_dir(), "worker-shim")
    shim = os.path.join(shims, hashlib.sha256(package.encode()).hexdigest()[:12])
    if not os.path.isdir(shim):
        _prune_dangling(shims)
    os.makedirs(shim, exist_ok=True)
    _link(package, os.path.join(shim, "wrenpack"))
    return shim


def _prune_dangling(folder: str) -> None:
    """Remove the shim folders in ``folder`` whose links all point nowhere now (a checkout
    or venv since removed): one was made per path and none was ever removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        shim = os.path.join(folder, name)
        try:
            links = [os.path.join(shim, e) for e in os.listdir(shim)]
        except OSError:
            continue
        if links and all(os.path.islink(link) and not os.path.exists(link) for link in links):
            try:
                for link in links:
                    os.unlink(link)
                os.rmdir(shim)
            except OSError:
                pass  # (made again meanwhile by another process, or holding something else: left)


def _top_level_entries(dist: metadata.Distribution) -> set[str]:
    names: set[str] = set()
    for f in dist.files or ():
        first = f.parts[0] if f.parts else ""
        if not first or first.endswith((".dist-info", ".egg-info")) or first in ("..", "__pycache__", "bin"):
            continue
        names.add(first)
    return names


def _lambda_provided_dir() -> str | None:
    """Symlinks to this machine's copies of what Lambda provides (boto3, ...)."""
    entries: dict[str, str] = {}
    for name in LAMBDA_PROVIDED:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        base = str(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            path = os.path.join(base, entry)
            if os.path.exists(path):
                entries[entry] = path
    if not entries:
        return None
    digest = hashlib.sha256(repr(sorted(entries.items())).encode()).hexdigest()[:12]
    shims = os.path.join(cache_dir(), "lambda-provided")
    shim = os.path.join(shims, digest)
    if not os.path.isdir(shim):
        _prune_dangling(shims)
    os.makedirs(shim, exist_ok=True)
    for entry, path in entries.items():
        _link(path, os.path.join(shim, entry))
    return shim


def worker_paths(runtime: str) -> list[str]:
    paths = [_shim_dir(), site_dir(runtime)]
    provided = _lambda_provided_dir()
    if provided:
        paths.append(provided)
    return paths
