"""Verify a trimmed tree imports, and when trimming broke an import, find exactly what to undo.

A failure is first matched precisely: the missing module, or the file the
exception names, was removed by some rule -> restore those files. When the
error names nothing (lazy_loader's stubs, a data file checked with
``os.path.exists``), but the untrimmed tree imports the module, the culprit
is found by bisection: each rule's changes for the module's distribution are
restored alone, in a scratch check, until one makes the import work; then that
rule's files are halved until the smallest set that still fixes it remains.
Only that is rolled back; every other rule keeps its savings, and the log says
which module failed, with what exception, and which rule (and files) caused it.

Standard library only: the Docker build stage runs this inside the Lambda image.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

from runtime_builder import bytecode, trim, verify
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

#: Rounds of check -> roll back -> check again before giving up.
MAX_ROUNDS = 12


def provided_dir(plan: trim.Plan, work: str) -> list[str]:
    """Stand-ins for the packages Lambda's runtime provides (removed by the lambda-provided rule)."""
    tops = sorted({p.split(os.sep)[0] for p, r in plan.removed.items() if r == "lambda-provided"
                   and not p.split(os.sep)[0].endswith(".dist-info")})
    if not tops:
        return []
    d = os.path.join(work, "lambda-provided")
    os.makedirs(d, exist_ok=True)
    for top in tops:
        if not os.path.lexists(os.path.join(d, top)):
            os.symlink(os.path.join(plan.root, top), os.path.join(d, top))
    return [d]


def precise(f: verify.Failure, plan: trim.Plan, site: str) -> dict[str, list[str]]:
    """rule -> removed files an import failure names (the missing module, or the file in the exception)."""
    found: dict[str, set[str]] = {}
    if f.name:
        stem = f.name.replace(".", os.sep)
        for p, rule in plan.removed.items():
            if p == stem + ".py" or p.startswith(stem + os.sep) or (p.startswith(stem + ".") and p.endswith(".so")):
                found.setdefault(rule, set()).add(p)
    if f.filename:
        rel = os.path.relpath(str(f.filename), site)
        if rel in plan.removed:
            found.setdefault(plan.removed[rel], set()).add(rel)
    return {r: sorted(ps) for r, ps in found.items()}


def _dists_of(module: str, plan: trim.Plan) -> list[str]:
    top = module.split(".")[0]
    return sorted({o for p, o in plan.owner.items() if p.split(os.sep)[0] in (top, top + ".py")
                   or (p.split(os.sep)[0].startswith(top + ".") and p.endswith(".so"))} - {trim.UNOWNED})


class _Scratch:
    """Put raw copies of some files into the trimmed tree, and take them back out exactly."""

    def __init__(self, plan: trim.Plan, site: str, work: str) -> None:
        self.plan, self.site = plan, site
        self.backup = os.path.join(work, "bisect-backup")

    def apply(self, paths: list[str]) -> list[tuple[str, bool]]:
        undo = []
        for rel in paths:
            dest = os.path.join(self.site, rel)
            existed = os.path.exists(dest)
            if existed:  # a stripped .so: keep the stripped copy to put back
                keep = os.path.join(self.backup, rel)
                os.makedirs(os.path.dirname(keep), exist_ok=True)
                shutil.copy2(dest, keep)
            trim.restore(self.plan, self.site, [rel])
            undo.append((rel, existed))
        return undo

    def revert(self, undo: list[tuple[str, bool]]) -> None:
        for rel, existed in undo:
            dest = os.path.join(self.site, rel)
            if os.path.lexists(dest):  # the restored file is a hard link to the raw one: never write through it
                os.unlink(dest)
            if existed:
                shutil.copy2(os.path.join(self.backup, rel), dest)


def bisect(module: str, plan: trim.Plan, site: str, work: str, interp: str,
           extra: list[str]) -> tuple[str, list[str]] | None:
    """The (rule, smallest set of files) whose restoration makes ``import module`` work, if one rule does."""
    scratch = _Scratch(plan, site, work)

    def fixes(paths: list[str]) -> bool:
        undo = scratch.apply(paths)
        try:
            failures, _ = verify.check_imports(interp, site, [module], extra)
            return module not in failures
        finally:
            scratch.revert(undo)

    own = _dists_of(module, plan)
    for scope in ([own] if own else []) + [[None]]:  # the module's own distribution first, then everything
        changes: dict[str, list[str]] = {}
        for d in scope:
            for r, ps in plan.removals(d).items():
                changes.setdefault(r, []).extend(ps)
        for rule in sorted(changes, key=lambda r: len(changes[r])):
            paths = sorted(changes[rule])
            if not paths or not fixes(paths):
                continue
            while len(paths) > 1:
                half = len(paths) // 2
                if fixes(paths[:half]):
                    paths = paths[:half]
                elif fixes(paths[half:]):
                    paths = paths[half:]
                else:
                    break  # it needs files from both halves: keep them all
            return rule, paths
    return None


def roll_back(plan: trim.Plan, site: str, interp: str, options: dict[str, Any], rule: str, paths: list[str],
              f: verify.Failure, how: str) -> None:
    restored = plan.rollback_files(rule, paths, why={"module": f.module, "error": str(f), "found_by": how})
    trim.restore(plan, site, restored)
    bytecode.compile_tree(interp, site, sourceless=options["sourceless"], files=restored)
    shown = ", ".join(restored[:3]) + (f" and {len(restored) - 3} more" if len(restored) > 3 else "")
    log.warning("`import %s` raised %s; trim rule %r caused it (%s): rolled back %d file(s) of %s: %s", f.module, f,
                rule, how, len(restored), ", ".join(sorted({plan.owner.get(p, trim.UNOWNED) for p in restored})),
                shown)


def verify_tree(plan: trim.Plan, site: str, work: str, interp: str, options: dict[str, Any],
                on_rollback: Callable[[], None] | None = None) -> tuple[list[str], float]:
    """Required modules (top level + asked for) must import; extensions are checked best effort.

    A failure trimming explains is rolled back as narrowly as it can be (see
    the module docstring) and the check runs again. A required module failing
    for another reason fails the build; an extension module doing so (some
    only import in a particular order or need optional libraries) is logged.
    """
    skip = set(options["skip_imports"])
    required = sorted((set(verify.top_level_modules(site)) | set(options["verify_modules"])) - skip)
    extensions = [m for m in verify.extension_modules(site) if m not in skip and m not in required]
    extra = provided_dir(plan, work)
    seconds = 0.0
    for _ in range(MAX_ROUNDS):
        failures, seconds = verify.check_imports(interp, site, required + extensions, extra)
        if not failures:
            break
        progress = False
        unexplained = []
        for f in failures.values():
            found = precise(f, plan, site)
            if not found:
                unexplained.append(f.module)
            for rule, paths in sorted(found.items()):
                roll_back(plan, site, interp, options, rule, paths, f, "the error names these files")
                progress = True
        if unexplained and not progress:
            # Trimming is to blame only if the untrimmed tree imports the module.
            raw_fail, _ = verify.check_imports(interp, plan.root, unexplained, extra)
            for m in unexplained:
                if m in raw_fail:
                    continue
                hit = bisect(m, plan, site, work, interp, extra)
                if hit is None:
                    for d in _dists_of(m, plan):  # no single rule explains it: undo all of them for its package
                        for rule, paths in plan.removals(d).items():
                            roll_back(plan, site, interp, options, rule, paths, failures[m],
                                      "no single rule explains it; rolling back every rule for the package")
                            progress = True
                else:
                    roll_back(plan, site, interp, options, hit[0], hit[1], failures[m], "found by bisection")
                    progress = True
                break  # one culprit per round: others may share its cause
        if progress:
            if on_rollback:
                on_rollback()
            continue
        bad = sorted(m for m in failures if m in required)
        for m in sorted(set(failures) - set(bad)):
            log.warning("extension module %s does not import on its own (%s); not caused by trimming", m, failures[m])
            extensions.remove(m)
        if bad:
            f = failures[bad[0]]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise BuildError(f"import check failed: `import {bad[0]}` raised {f}{more}, and no trim rule explains "
                             f"it; fix: add the missing dependency to the requirements, or pass --skip-import {bad[0]}")
        # Nothing was rolled back, so the tree is the one just checked, and every module left imported in
        # this very round: checking them all again proves nothing new (it cost the scipy stack 4 s).
        break
    else:
        raise BuildError("import check still failing after rolling back trim rules; run with -v for details")
    log.info("verified %d modules and %d extension modules import (%.2f s)", len(required), len(extensions), seconds)
    return required + extensions, seconds

