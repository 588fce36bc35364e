"""Bundled libraries that a trim removes while kept files still list them as ``DT_NEEDED``.

Wheels link more than they use: every pyarrow extension module (and
``libarrow_python``) lists ``libarrow_substrait`` and ``libarrow_dataset``
among the libraries the loader must open, whether or not a symbol of theirs is
used. Removing such a library with its bindings would leave those entries
dangling ("cannot open shared object file"), so :func:`plan_unlinks` decides,
for each kept ELF file listing a removed bundled library, whether the entry
can be dropped instead (``elf.drop_needed``, which moves nothing but the
dynamic section's entries):

* every symbol the file needs unversioned (or with a version of a bundled
  library) that a removed library defines must also be defined by a kept
  library in the file's dependency closure. Symbols versioned against a
  system library (``GLIBCXX_3.4``, ``GLIBC_2.14``: vouched for by the wheel's
  manylinux tag) are the system's either way. So a library whose definitions
  a kept file really uses stays: ``libarrow_acero`` carries the newer
  libstdc++ pieces ``libarrow_python`` binds to (Amazon Linux 2's libstdc++
  lacks them);
* no version need of the file names the library (the loader asserts on that);
* a file whose dynamic symbols cannot be read keeps every entry, so the
  library stays.

A library that must stay is taken out of the removals and checked again as a
kept file (its own entries may name other removed libraries). What remains is
proven afterwards like every trim: the import check loads each extension
module with ``RTLD_NOW``, which binds every symbol at load time.
"""
from __future__ import annotations

import logging
import os

from runtime_builder import elf

log = logging.getLogger(__name__)


def _is_shared_object(rel: str) -> bool:
    base = os.path.basename(rel)
    return base.endswith(".so") or ".so." in base


def plan_unlinks(root: str, files: dict[str, int], removed: dict[str, str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """``({kept file: sonames to drop from its DT_NEEDED}, {removed library that must stay: why})``.

    ``root`` is the installed tree, ``files`` its files, ``removed`` the trim's removals (rel path -> rule);
    the second result's libraries are to be taken out of ``removed`` by the caller.
    """
    removed_libs: dict[str, str] = {}  # basename -> rel path, removed shared objects
    for rel in removed:
        if _is_shared_object(rel):
            removed_libs.setdefault(os.path.basename(rel), rel)
    if not removed_libs:
        return {}, {}
    kept_names = {os.path.basename(rel) for rel in files if rel not in removed and _is_shared_object(rel)}
    gone = {name: rel for name, rel in removed_libs.items() if name not in kept_names}
    if not gone:
        return {}, {}
    cache: dict[str, elf.Symbols | None] = {}
    needs: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for rel in files:
        if _is_shared_object(rel):
            by_name.setdefault(os.path.basename(rel), rel)

    def needed_of(rel: str) -> list[str]:
        if rel not in needs:
            try:
                needs[rel] = elf.needed(os.path.join(root, rel)) if elf.is_elf(os.path.join(root, rel)) else []
            except (ValueError, OSError):
                needs[rel] = []
        return needs[rel]

    def symbols_of(rel: str) -> elf.Symbols | None:
        if rel not in cache:
            try:
                cache[rel] = elf.symbols(os.path.join(root, rel))
            except (ValueError, OSError, IndexError) as exc:  # struct.error is a ValueError
                log.debug("cannot read the dynamic symbols of %s: %s", rel, exc)
                cache[rel] = None
        return cache[rel]

    stay: dict[str, str] = {}
    edits: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        edits = {}
        for rel in sorted(files):
            if (rel in removed and os.path.basename(rel) not in stay) or not _is_shared_object(rel):
                continue
            dangling = [n for n in needed_of(rel) if n in gone and n not in stay]
            if not dangling:
                continue
            why = _blocker(root, rel, dangling, gone, stay, by_name, needed_of, symbols_of)
            if why is None:
                edits[rel] = set(dangling)
                continue
            lib, reason = why
            stay[lib] = f"{rel} {reason}"
            log.info("keeping %s: %s %s", lib, rel, reason)
            changed = True
            break
    return edits, {gone[name]: why for name, why in stay.items()}


def _blocker(root: str, rel: str, dangling: list[str], gone: dict[str, str], stay: dict[str, str],
             by_name: dict[str, str], needed_of, symbols_of) -> tuple[str, str] | None:
    """None when ``rel`` can drop every ``dangling`` entry; else (a library it needs, why)."""
    mine = symbols_of(rel)
    if mine is None:
        return dangling[0], "has no readable dynamic symbol table"
    try:
        vneeds = elf.version_needs(os.path.join(root, rel))
    except (ValueError, OSError):
        return dangling[0], "has an unreadable version-needs table"
    for name in dangling:
        if name in vneeds:
            return name, f"needs symbol versions of it ({', '.join(sorted(vneeds[name]))})"
    # what the kept part of its dependency closure defines
    kept_defined: set[str] = set()
    seen: set[str] = set()
    todo = [n for n in needed_of(rel) if not (n in gone and n not in stay)]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        syms = symbols_of(by_name[name])
        if syms is not None:
            kept_defined |= syms.defined
        todo.extend(n for n in needed_of(by_name[name]) if not (n in gone and n not in stay))
    bundled = set(by_name)
    for name in dangling:
        lib = symbols_of(gone[name])
        if lib is None:
            return name, "needs it and its dynamic symbols cannot be read"
        for sym, version_of in mine.undefined.items():
            if version_of is not None and version_of not in bundled:
                continue  # versioned against a system library: the system's either way
            if sym in lib.defined and sym not in kept_defined:
                return name, f"binds {sym} to it"
    return None
