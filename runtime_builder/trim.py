"""Trim an installed tree: decide per file which rule removes it, then copy the rest.

The raw ``pip install --target`` tree is never modified (the trimmed tree's files are hard links to
it, and no later step writes into a file: each one is replaced). A :class:`Plan`
records, for every file, the rule that removes it (or none) and which
distribution owns it, so a rule that breaks an import can be rolled back for
one distribution by copying that distribution's files back from the raw tree.
Every rule's savings are reported per distribution in the manifest.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from runtime_builder import components, dedup, elf, libdeps

log = logging.getLogger(__name__)

UNOWNED = "<unowned>"
BUILD_TOOLS = frozenset({"pip", "setuptools", "wheel", "distribute"})
LAMBDA_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
TEST_DIRS = frozenset({"tests", "test"})
DOC_DIRS = frozenset({"doc", "docs", "example", "examples"})
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx", ".pyx", ".pxd", ".pxi",
                   ".f", ".f90", ".for", ".cu", ".cuh")
TOP_DATA_DIRS = frozenset({"bin", "share", "include", "etc"})
KEEP_DIST_INFO = re.compile(r"^(METADATA|entry_points\.txt|top_level\.txt|(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*)$",
                            re.IGNORECASE)
STRIP_RULE = "strip-so"


try:
    from packaging.utils import canonicalize_name as canonical
except ImportError:  # the Docker build stage runs with the standard library only: PEP 503, as packaging does it
    def canonical(name: str) -> str:  # type: ignore[misc]
        return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Dist:
    """An installed distribution (from its ``*.dist-info``)."""

    name: str
    version: str
    top_level: set[str] = field(default_factory=set)


@dataclass
class Rule:
    """One trim rule: ``match(rel_path, dist_name)`` is True for files it removes."""

    name: str
    description: str
    match: Callable[[str, str], bool]


@dataclass
class Plan:
    """The result of planning: per-file owner and removing rule, plus rollbacks."""

    root: str
    files: dict[str, int]  # rel path -> size in the raw tree
    owner: dict[str, str]  # rel path -> canonical dist name
    removed: dict[str, str] = field(default_factory=dict)  # rel path -> rule name
    stripped: dict[str, int] = field(default_factory=dict)  # rel path -> bytes saved
    rolled_back: dict[str, set[str]] = field(default_factory=dict)  # rule -> dists
    kept_tests: set[str] = field(default_factory=set)
    keep_unstripped: set[str] = field(default_factory=set)  # .so files a rollback wants as shipped
    #: why each rollback happened: {"rule", "dist", "files", "module", "error"}
    rollbacks: list[dict] = field(default_factory=list)
    #: rule name -> what it removes (the manifest's descriptions)
    descriptions: dict[str, str] = field(default_factory=dict)
    #: optional components kept -> the imported modules that need them
    kept_components: dict[str, list[str]] = field(default_factory=dict)
    #: kept shared objects -> removed bundled libraries dropped from their DT_NEEDED (``libdeps``)
    unlinked: dict[str, set[str]] = field(default_factory=dict)
    #: removed libraries a kept file still binds symbols to, put back: rel path -> why
    kept_libraries: dict[str, str] = field(default_factory=dict)

    def removals(self, dist: str | None = None) -> dict[str, list[str]]:
        """rule -> paths it changed (removed, or stripped for strip-so), for ``dist`` or every distribution."""
        out: dict[str, list[str]] = {}
        for p, r in sorted(self.removed.items()):
            if dist is None or self.owner.get(p) == dist:
                out.setdefault(r, []).append(p)
        for p in sorted(self.stripped):
            if dist is None or self.owner.get(p) == dist:
                out.setdefault(STRIP_RULE, []).append(p)
        return out

    def rollback_files(self, rule: str, paths: Iterable[str], *, why: dict | None = None) -> list[str]:
        """Undo ``rule`` for just ``paths``; return them. The owning distributions are marked rolled back."""
        restored = []
        for p in paths:
            if rule == STRIP_RULE and p in self.stripped:
                del self.stripped[p]
                self.keep_unstripped.add(p)
                restored.append(p)
            elif self.removed.get(p) == rule:
                del self.removed[p]
                restored.append(p)
        dists = sorted({self.owner.get(p, UNOWNED) for p in restored})
        for d in dists:
            self.rolled_back.setdefault(rule, set()).add(d)
        entry = {"rule": rule, "dists": dists, "files": sorted(restored)}
        entry.update(why or {})
        self.rollbacks.append(entry)
        return restored

    def rollback(self, rule: str, dist: str) -> list[str]:
        """Undo ``rule`` for ``dist``; return the restored paths."""
        restored = [p for p, r in self.removed.items() if r == rule and self.owner.get(p) == dist]
        if rule == STRIP_RULE:
            restored = [p for p in self.stripped if self.owner.get(p) == dist]
            for p in restored:
                del self.stripped[p]
        else:
            for p in restored:
                del self.removed[p]
        self.rolled_back.setdefault(rule, set()).add(dist)
        log.warning("rolled back trim rule %r for %s (%d files)", rule, dist, len(restored))
        return restored

    def rules_for(self, dist: str) -> list[str]:
        names = {r for p, r in self.removed.items() if self.owner.get(p) == dist}
        if any(self.owner.get(p) == dist for p in self.stripped):
            names.add(STRIP_RULE)
        return sorted(names)

    def savings(self) -> dict[str, dict[str, int]]:
        """rule -> {"bytes": saved, "files": count}."""
        out: dict[str, dict[str, int]] = {}
        for p, rule in self.removed.items():
            s = out.setdefault(rule, {"bytes": 0, "files": 0})
            s["bytes"] += self.files[p]
            s["files"] += 1
        if self.stripped:
            out[STRIP_RULE] = {"bytes": sum(self.stripped.values()), "files": len(self.stripped)}
        return dict(sorted(out.items()))


def read_dists(root: str) -> tuple[dict[str, Dist], dict[str, str]]:
    """Distributions in ``root`` and a map rel-path -> dist name, from each RECORD (``importlib.metadata``)."""
    from importlib import metadata

    dists: dict[str, Dist] = {}
    owner: dict[str, str] = {}
    for d in sorted(metadata.distributions(path=[root]), key=lambda d: (d.metadata["Name"] or "").lower()):
        files = list(d.files or [])
        info_dir = next((f.parts[0] for f in files if f.parts and f.parts[0].endswith(".dist-info")), None)
        name = canonical(d.metadata["Name"] or (info_dir or "unknown").split("-")[0])
        dist = Dist(name, d.version or "")
        dists[dist.name] = dist
        for f in files:
            rel = os.path.normpath(str(f))
            if rel.startswith(".."):  # scripts recorded relative to site-packages
                rel = os.path.join("bin", os.path.basename(rel))
            owner[rel] = dist.name
            top = rel.split(os.sep, 1)[0]
            if not top.endswith((".dist-info", ".pth")) and top not in TOP_DATA_DIRS:
                dist.top_level.add(top.split(".", 1)[0] if top.endswith((".py", ".so")) else top)
        if info_dir:
            for dirpath, _, filenames in os.walk(os.path.join(root, info_dir)):
                for fn in filenames:
                    owner.setdefault(os.path.relpath(os.path.join(dirpath, fn), root), dist.name)
    return dists, owner


def scan_files(root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            out[os.path.relpath(full, root)] = os.path.getsize(full)
    return out


def _is_test_path(rel: str) -> bool:
    parts = rel.split(os.sep)
    if parts[0].endswith(".dist-info"):
        return False
    return bool(TEST_DIRS.intersection(parts[1:-1])) or parts[-1] == "conftest.py"


_IMPORT_RE = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]*(?:\(([^)]*)\)|([\w \t,*]+))|import[ \t]+([\w., \t]+))", re.M)


def _imports(rel: str, text: str) -> Iterable[str]:
    """Dotted module names a source file may import (over-approximate, cheap)."""
    pkg = rel[: -len(".py")].split(os.sep)
    if pkg[-1] == "__init__":
        pkg = pkg[:-1]
    else:
        pkg = pkg[:-1]
    for m in _IMPORT_RE.finditer(text):
        if m.group(4):
            for name in m.group(4).split(","):
                name = (name.split() or [""])[0]
                if name:
                    yield name
            continue
        base = m.group(1)
        if base.startswith("."):
            dots = len(base) - len(base.lstrip("."))
            parent = pkg[: len(pkg) - (dots - 1)] if dots > 1 else pkg
            base = ".".join(parent + ([base.lstrip(".")] if base.lstrip(".") else []))
        yield base
        for name in (m.group(2) or m.group(3) or "").split(","):
            name = (name.split() or [""])[0]
            if name and name != "*" and name.isidentifier():
                yield f"{base}.{name}"


def _module_files(module: str, files: dict[str, int]) -> list[str]:
    stem = os.path.join(*module.split("."))
    found = [c for c in (stem + ".py", os.path.join(stem, "__init__.py")) if c in files]
    return found


def needed_test_files(root: str, files: dict[str, int]) -> set[str]:
    """Test-directory files that non-test code imports (and what those import, transitively)."""
    tests = {p for p in files if _is_test_path(p)}
    if not tests:
        return set()
    keep: set[str] = set()
    queue = [p for p in files if p.endswith(".py") and p not in tests]
    seen: set[str] = set()
    while queue:
        rel = queue.pop()
        if rel in seen:
            continue
        seen.add(rel)
        try:
            with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if "test" not in text and rel not in tests:
            continue
        for mod in _imports(rel, text):
            if "test" not in mod and rel not in tests:
                continue
            for target in _module_files(mod, files):
                if target in tests and target not in keep:
                    keep.add(target)
                    queue.append(target)
                    # parent packages inside the tests dir must stay importable too
                    parts = target.split(os.sep)
                    for i in range(1, len(parts)):
                        init = os.path.join(*parts[:i], "__init__.py")
                        if init in tests and init not in keep:
                            keep.add(init)
                            queue.append(init)
    return keep


def lazy_stubs(root: str, files: Iterable[str]) -> set[str]:
    """``__init__.pyi`` files that lazy_loader reads at import time (its ``attach_stub`` beside them).

    scikit-image, napari and others build their lazy namespace from the stub
    file, so removing it breaks ``import skimage`` with an error naming no file.
    """
    out = set()
    for rel in files:
        if os.path.basename(rel) == "__init__.pyi":
            init = os.path.join(root, rel[:-1])
            try:
                with open(init, encoding="utf-8", errors="replace") as f:
                    if "attach_stub" in f.read():
                        out.add(rel)
            except OSError:
                continue
    return out


def default_rules(*, keep_boto3: bool, requested: set[str], kept_tests: set[str],
                  doc_dirs_without_init: set[str], owner: dict[str, str],
                  keep_stubs: set[str] | frozenset[str] = frozenset()) -> list[Rule]:
    """The trim rules in the order they claim files (first match wins)."""

    def build_tools(rel: str, dist: str) -> bool:
        return dist in BUILD_TOOLS and dist not in requested

    def lambda_provided(rel: str, dist: str) -> bool:
        return not keep_boto3 and dist in LAMBDA_PROVIDED

    def pycache(rel: str, dist: str) -> bool:
        return "__pycache__" in rel.split(os.sep) or rel.endswith((".pyc", ".pyo"))

    def tests(rel: str, dist: str) -> bool:
        return _is_test_path(rel) and rel not in kept_tests

    def sources(rel: str, dist: str) -> bool:
        return rel.lower().endswith(SOURCE_SUFFIXES) and not rel.split(os.sep)[0].endswith(".dist-info")

    def static_libs(rel: str, dist: str) -> bool:
        return rel.endswith(".a") and not rel.split(os.sep)[0].endswith(".dist-info")

    def stubs(rel: str, dist: str) -> bool:
        return rel.endswith(".pyi") and rel not in keep_stubs

    def docs(rel: str, dist: str) -> bool:
        parent = os.path.dirname(rel)
        while parent:
            if parent in doc_dirs_without_init:
                return True
            parent = os.path.dirname(parent)
        return False

    def scripts_data(rel: str, dist: str) -> bool:
        return rel.split(os.sep)[0] in TOP_DATA_DIRS

    def dist_info(rel: str, dist: str) -> bool:
        parts = rel.split(os.sep)
        if not parts[0].endswith(".dist-info") or len(parts) < 2:
            return False
        if parts[1] in ("licenses", "LICENSES") or (len(parts) == 2 and KEEP_DIST_INFO.match(parts[1])):
            return False
        return True

    return [
        Rule("build-tools", "pip, setuptools and wheel (not needed at run time)", build_tools),
        Rule("lambda-provided", "boto3, botocore, s3transfer (Lambda's Python runtime has them)", lambda_provided),
        Rule("pycache", "__pycache__ and stale .pyc (recompiled as hash-based .pyc)", pycache),
        Rule("tests", "tests/ dirs and conftest.py, keeping test modules non-test code imports", tests),
        Rule("sources", "C/C++/Cython/Fortran sources and headers", sources),
        Rule("static-libs", "static libraries (.a: for linking C extensions against a package, never loaded)",
             static_libs),
        Rule("stubs", ".pyi type stubs (keeping __init__.pyi that lazy_loader.attach_stub reads)", stubs),
        Rule("docs", "doc/docs/examples dirs that are not Python packages", docs),
        Rule("scripts-data", "top-level bin/, share/, include/, etc/ (not importable)", scripts_data),
        Rule("dist-info", "dist-info extras (keeps METADATA, entry_points.txt, top_level.txt, licences)", dist_info),
    ]


DUPLICATE_RULE = "duplicate-libs"


def size_rules(root: str, files: dict[str, int], owner: dict[str, str],
               imported: Iterable[str]) -> tuple[list[Rule], dict[str, list[str]]]:
    """The optional-component rules (for components no imported module needs) and ``duplicate-libs``;
    plus the kept components and the modules that need them."""
    trimmed, kept = components.split(imported, installed=set(owner.values()))
    rules = []
    for c in trimmed:
        if any(owner.get(p) == c.dist for p in files):
            rules.append(Rule(c.rule, c.description + " (not imported)",
                              lambda rel, dist, c=c: dist == c.dist and c.matches(rel)))
    dups = dedup.soname_duplicates(root, files)
    rules.append(Rule(DUPLICATE_RULE, "identical copies of a shared library under names the loader never opens "
                      "(the copy named as its soname stays)", lambda rel, dist: rel in dups))
    return rules, kept


def sdk_pinned_by(root: str) -> list[tuple[str, str]]:
    """``(distribution, requirement)`` for every distribution in ``root`` (not the SDK itself) that caps
    boto3, botocore or s3transfer within their major version series (``<1.37.4``, ``==1.35.0``,
    ``~=1.35.0``), where Lambda's own copy, of whatever version, may well fall outside: the
    ``lambda-provided`` rule would swap it in (aiobotocore, which s3fs pulls, requires
    botocore>=1.37.2,<1.37.4). A cap at the next major version (``<2``, ``~=1.35``) is no such pin, and a
    requirement only of an extra is not counted."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    installed = {}
    for d in metadata.distributions(path=[root]):
        name = canonical(d.metadata["Name"] or "")
        if name in LAMBDA_PROVIDED:
            try:
                installed[name] = Version(d.version).major
            except InvalidVersion:
                installed[name] = 1
    out: list[tuple[str, str]] = []
    for d in metadata.distributions(path=[root]):
        name = canonical(d.metadata["Name"] or "")
        if name in LAMBDA_PROVIDED:
            continue
        for text in d.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            sdk = canonical(req.name)
            if sdk not in LAMBDA_PROVIDED or (req.marker and "extra" in str(req.marker)):
                continue
            newest_of_series = f"{installed.get(sdk, 1)}.999999.0"
            if req.specifier and not req.specifier.contains(newest_of_series, prereleases=True):
                out.append((name, f"{req.name}{req.specifier}"))
    return sorted(out)


def plan(root: str, *, keep_boto3: bool = False, requested: Iterable[str] = (),
         extra_rules: Iterable[Rule] = (), disabled: Iterable[str] = (), imported: Iterable[str] = ()) -> Plan:
    """Decide what each rule removes from the raw tree at ``root``.

    ``imported``: modules the function needs (its profile's, ``--verify-import``): an optional
    component any of them needs is kept.
    """
    files = scan_files(root)
    _, owner = read_dists(root)
    tops: dict[str, str] = {}
    for p in files:
        if p not in owner:
            owner[p] = UNOWNED
    # Files not in any RECORD: attribute by top-level name to the dist that owns siblings.
    for p, d in owner.items():
        if d != UNOWNED:
            tops.setdefault(p.split(os.sep)[0], d)
    for p in files:
        if owner[p] == UNOWNED:
            owner[p] = tops.get(p.split(os.sep)[0], UNOWNED)
    kept_tests = needed_test_files(root, files)
    dirs_with_init = {os.path.dirname(p) for p in files if os.path.basename(p) == "__init__.py"}
    # a doc dir is any ancestor named doc/docs/examples of a file, without __init__.py
    anc: set[str] = set()
    for p in files:
        d = os.path.dirname(p)
        while d:
            if os.path.basename(d) in DOC_DIRS and d not in dirs_with_init:
                anc.add(d)
            d = os.path.dirname(d)
    keep_stubs = lazy_stubs(root, files)
    pins = sdk_pinned_by(root)
    if pins and not keep_boto3:
        log.warning("keeping %s in the runtime: %s (Lambda's own copy may be another version)",
                    "/".join(sorted(LAMBDA_PROVIDED)), "; ".join(f"{d} requires {s}" for d, s in pins[:3]))
        keep_boto3 = True
    rules = default_rules(keep_boto3=keep_boto3, requested={canonical(r) for r in requested},
                          kept_tests=kept_tests, doc_dirs_without_init=anc, owner=owner, keep_stubs=keep_stubs)
    off = set(disabled)
    extra, kept = size_rules(root, files, owner, imported)
    rules += extra + list(extra_rules)
    rules = [r for r in rules if r.name not in off and not (r.name.startswith(components.PREFIX) and "optional" in off)]
    result = Plan(root=root, files=files, owner=owner, kept_tests=kept_tests,
                  descriptions={r.name: r.description for r in rules}, kept_components=kept)
    if kept:
        log.info("keeping optional components the function imports: %s",
                 "; ".join(f"{c} ({', '.join(m[:3])})" for c, m in sorted(kept.items())))
    for p in files:
        for rule in rules:
            if rule.match(p, owner[p]):
                result.removed[p] = rule.name
                break
    # Kept files that list a removed bundled library drop it from DT_NEEDED where nothing binds to it;
    # a library something binds to stays.
    result.unlinked, result.kept_libraries = libdeps.plan_unlinks(root, files, result.removed)
    for rel, why in result.kept_libraries.items():
        log.info("keeping %s (%s): %s", rel, result.removed.pop(rel), why)
    if kept_tests:
        log.info("keeping %d test files that other code imports", len(kept_tests))
    if keep_stubs:
        log.info("keeping %d lazy_loader stub files: %s", len(keep_stubs), ", ".join(sorted(keep_stubs)[:5]))
    return result


def _place(src: str, dest: str) -> None:
    """Put ``src``'s bytes at ``dest``: a hard link when the file system allows (the raw tree is never
    written to, and every later step replaces files rather than writing into them), else a copy."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):  # never write through a link into the raw tree
        os.unlink(dest)
    try:
        os.link(src, dest)
        return
    except OSError:
        shutil.copyfile(src, dest)
    if os.access(src, os.X_OK):
        os.chmod(dest, 0o755)


def _is_shared_object(rel: str) -> bool:
    base = os.path.basename(rel)
    return base.endswith(".so") or ".so." in base


def materialize(p: Plan, dest: str, *, strip: bool = True, only: Iterable[str] | None = None,
                workers: int = 0) -> None:
    """Hard-link (or copy) kept files from the raw tree to ``dest``, stripping shared objects safely (new
    files, on every core).

    ``only`` restricts the work to some paths (used after a rollback).
    """
    paths = sorted(only) if only is not None else sorted(p.files)
    todo = [rel for rel in paths if rel not in p.removed]
    so_files = []
    for rel in todo:
        src, out = os.path.join(p.root, rel), os.path.join(dest, rel)
        if strip and _is_shared_object(rel) and rel not in p.keep_unstripped and \
                not p.rolled_back.get(STRIP_RULE, set()) & {p.owner.get(rel)}:
            so_files.append(rel)
            continue
        _place(src, out)

    def do_strip(rel: str) -> tuple[str, int]:
        src, out = os.path.join(p.root, rel), os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if os.path.lexists(out):
            os.unlink(out)
        saved = elf.safe_strip(src, out)
        if os.access(src, os.X_OK):
            os.chmod(out, 0o755)
        return rel, saved

    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 1)) as pool:
        for rel, saved in pool.map(do_strip, so_files):
            if saved > 0:
                p.stripped[rel] = saved
            else:
                p.stripped.pop(rel, None)
    unlink(p, dest, todo)


def unlink(p: Plan, dest: str, paths: Iterable[str]) -> None:
    """Drop from the kept shared objects in ``paths`` the DT_NEEDED entries of bundled libraries the plan
    removes (``Plan.unlinked``, decided by ``libdeps``); a library a rollback brought back stays listed."""
    kept = {os.path.basename(rel) for rel in p.files if rel not in p.removed}
    for rel in paths:
        names = {n for n in p.unlinked.get(rel, ()) if n not in kept}
        if names and rel not in p.removed:
            dropped = elf.drop_needed(os.path.join(dest, rel), names)
            log.debug("%s: dropped %s from DT_NEEDED", rel, ", ".join(sorted(dropped)))


def restore(p: Plan, dest: str, paths: Iterable[str]) -> None:
    """Put raw (untrimmed, unstripped) copies of ``paths`` back into ``dest``."""
    for rel in paths:
        _place(os.path.join(p.root, rel), os.path.join(dest, rel))
