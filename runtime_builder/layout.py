"""The output directory contract, shared by the builder and the local backend.

A built runtime directory holds::

    python/             the trimmed runtime: the directory a worker puts on sys.path
                        (the same tree as the layer zip's ``python/`` prefix)
    manifest.json       packages, versions, sizes, per-rule savings, content hash
    layer.zip           Lambda layer (entries under ``python/``)
    runtime.tar.zst     the same tree for extraction into /tmp at cold start
    requirements.lock   pinned requirements with hashes (commit it)

This module is light on purpose: the client imports it to find ``python/``.
"""
from __future__ import annotations

import os

from wrenpack.errors import BuildError

SITE = "python"
MANIFEST = "manifest.json"
LAYER_ZIP = "layer.zip"
ARCHIVE = "runtime.tar.zst"
LOCK = "requirements.lock"
DEFAULT_OUTPUT = os.path.join(".wrenpack", "runtime")


def site_dir(path: str | os.PathLike[str]) -> str:
    """The ``python/`` directory of a built runtime, given it or its output directory."""
    p = os.path.abspath(os.fspath(path))
    if os.path.basename(p) == SITE and os.path.isfile(os.path.join(os.path.dirname(p), MANIFEST)):
        return p
    if os.path.isfile(os.path.join(p, MANIFEST)) and os.path.isdir(os.path.join(p, SITE)):
        return os.path.join(p, SITE)
    raise BuildError(f"{path} is not a built runtime (no {MANIFEST} and {SITE}/ found): "
                     f"run `wrenpack build-runtime --output {path}` first")
