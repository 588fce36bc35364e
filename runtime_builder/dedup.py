"""Identical files in a runtime: names nothing loads are dropped, the rest stored once.

Wheels cannot hold symbolic links, so a library shipped under its real name,
its soname and its development name (pyarrow's ``libarrow_python.so``,
``.so.2000`` and ``.so.2000.0.0``) is three full copies. The dynamic loader
only ever opens the soname (it is what every ``DT_NEEDED`` entry says), so
:func:`soname_duplicates` names the other copies for the ``duplicate-libs``
trim rule; the import check proves the result loads, and a failure rolls the
rule back like any other.

Other byte-identical files (kept under names that are all used) are hard-linked
by :func:`link_identical`: one copy on disk in the runtime directory and one
in the tar archive (a link entry, re-linked on extraction). The layer zip
still holds each name in full: a zip has no hard links, and AWS does not
document that Lambda keeps a zip's symbolic links, so none are relied on.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Iterable

from runtime_builder import elf

log = logging.getLogger(__name__)

#: ``libfoo.so``, ``libfoo.so.20``, ``libfoo.so.20.0.1`` -> ``libfoo``
_SO_NAME = re.compile(r"^(?P<stem>.+?)\.so(?:\.\d+)*$")
#: below this, hard-linking saves less than it costs to look
MIN_LINK_BYTES = 4096


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def _same_content(root: str, rels: list[str]) -> list[list[str]]:
    """The groups of ``rels`` (paths under ``root``) whose bytes are identical, two or more each."""
    by_hash: dict[str, list[str]] = {}
    for rel in rels:
        by_hash.setdefault(_digest(os.path.join(root, rel)), []).append(rel)
    return [same for same in by_hash.values() if len(same) > 1]

def soname_duplicates(root: str, files: dict[str, int]) -> dict[str, str]:
    """rel path -> the kept copy, for identical shared libraries in one directory that differ only in their
    version suffix, where the kept copy is named as the library's ``DT_SONAME`` (what the loader opens)."""
    groups: dict[tuple[str, str, int], list[str]] = {}
    for rel, size in files.items():
        m = _SO_NAME.match(os.path.basename(rel))
        if m and size:
            groups.setdefault((os.path.dirname(rel), m.group("stem"), size), []).append(rel)
    out: dict[str, str] = {}
    for (_, _, _), rels in sorted(groups.items()):
        if len(rels) < 2:
            continue
        for same in _same_content(root, rels):
            try:
                soname = elf.soname(os.path.join(root, same[0]))
            except (ValueError, OSError):
                soname = None
            keep = next((r for r in same if os.path.basename(r) == soname), None)
            if keep is None:
                continue  # no copy carries the loader's name: which one is opened is unknown, keep them all
            for rel in same:
                if rel != keep:
                    out[rel] = keep
    return out


def link_identical(root: str, paths: Iterable[str] | None = None) -> dict[str, int]:
    """Hard-link byte-identical files under ``root`` (same size, mode and sha256) to one copy.

    Returns ``{rel path of a linked copy: bytes it no longer takes}``. Files
    are replaced by links atomically; none is written into.
    """
    by_size: dict[tuple[int, bool], list[str]] = {}
    if paths is None:
        paths = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
    for rel in sorted(paths):
        full = os.path.join(root, rel)
        if os.path.islink(full) or not os.path.isfile(full):
            continue
        st = os.stat(full)
        if st.st_size >= MIN_LINK_BYTES:
            by_size.setdefault((st.st_size, bool(st.st_mode & 0o100)), []).append(rel)
    saved: dict[str, int] = {}
    for (size, _), rels in by_size.items():
        if len(rels) < 2:
            continue
        for same in _same_content(root, rels):
            first = os.path.join(root, same[0])
            for rel in same[1:]:
                full = os.path.join(root, rel)
                if os.path.samefile(first, full):
                    continue
                tmp = full + ".wrenpack-link"
                os.link(first, tmp)
                os.replace(tmp, full)
                saved[rel] = size
    if saved:
        log.info("stored %d identical files once (hard links): %.1f MiB", len(saved), sum(saved.values()) / 2**20)
    return saved
