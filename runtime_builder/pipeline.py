"""The build pipeline, start to finish::

    inputs (-r, pyproject, packages, profile) + cloudpickle==client
      -> cache key (inputs, target, options, builder code)  --hit-->  copy to output
      -> pip-compile for the target -> requirements.lock (hashes)
      -> pip install --target raw/ (target wheels only)
      -> trim plan (rules) -> python/ (kept files, .so stripped safely)
      -> hash-based .pyc
      -> verify imports in an isolated interpreter; roll back a rule that breaks one
      -> budget check -> layer.zip + runtime.tar.zst + manifest.json
      -> cache entry -> output dir

Each stage is its own module; this one only sequences them and keeps score.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from runtime_builder import budget, bytecode, inputs as inputs_mod, layout, pack, resolve, trim, verify
from runtime_builder.targets import Target
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


@dataclass
class BuildResult:
    """Where the artifacts are and what the manifest says."""

    output: str
    site_dir: str
    manifest_path: str
    layer_zip: str
    archive: str
    lock: str
    manifest: dict[str, Any]
    cache_hit: bool
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return self.manifest["sizes"]


def default_cache_dir() -> str:
    env = os.environ.get("WRENPACK_CACHE_DIR")
    if env:
        return os.path.join(env, "runtimes")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wrenpack", "runtimes")


def _builder_fingerprint() -> str:
    """Changes whenever the builder's code does, so stale cache entries are never reused."""
    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for fn in sorted(os.listdir(here)):
        if fn.endswith(".py"):
            with open(os.path.join(here, fn), "rb") as f:
                h.update(fn.encode() + b"\0" + f.read())
    return h.hexdigest()


def target_interpreter(target: Target) -> str | None:
    """A local interpreter of the target's Python version, if any."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == target.python:
        return sys.executable
    return shutil.which(f"python{target.python}")


def build(packages: Iterable[str] = (), *, requirements_files: Iterable[str] = (),
          pyproject: str | None = None, profile: str | None = None, lock: str | None = None,
          python: str | None = None, arch: str | None = None,
          output: str = layout.DEFAULT_OUTPUT, sourceless: bool = False, keep_boto3: bool = False,
          target: str = "layer", tmp_size_mb: int = budget.DEFAULT_TMP_MB, strip: bool = True,
          verify_imports: bool = True, verify_modules: Iterable[str] = (), skip_imports: Iterable[str] = (),
          cache_dir: str | None = None, use_cache: bool = True, upgrade: bool = False,
          zstd_level: int = 19, extra_rules: Iterable[trim.Rule] = (),
          disabled_rules: Iterable[str] = ()) -> BuildResult:
    """Build (or fetch from cache) a verified runtime into ``output``; see the module docstring."""
    t0 = time.perf_counter()
    tgt = Target.make(python, arch)
    if target not in ("layer", "archive"):
        raise BuildError(f"unknown --target {target!r}: use layer or archive")
    inp = inputs_mod.gather(packages, requirements_files, pyproject, profile)
    lock_text = None
    if lock:
        try:
            with open(lock, encoding="utf-8") as f:
                lock_text = f.read()
        except OSError as exc:
            raise BuildError(f"cannot read lock file {lock}: {exc.strerror}; check --lock") from None
    elif not inp.requirements and not (profile or pyproject or list(requirements_files)):
        raise BuildError("nothing to build: give package names, -r requirements.txt, --pyproject, "
                         "--from-profile or --lock")
    else:
        inputs_mod.add_cloudpickle(inp)
    modules = sorted(set(inp.modules) | set(verify_modules))
    skip = set(skip_imports)

    interp = target_interpreter(tgt)
    if verify_imports and (interp is None or not tgt.host_matches()):
        why = (f"no python{tgt.python} interpreter here" if interp is None
               else f"this machine cannot load {tgt.arch} extensions")
        raise BuildError(f"cannot verify a {tgt.label} runtime: {why}; build it with --docker, "
                         f"or pass --no-verify to ship it unverified")

    options = {
        "target": target, "tmp_size_mb": tmp_size_mb, "sourceless": sourceless, "keep_boto3": keep_boto3,
        "strip": strip, "verify": verify_imports, "verify_modules": modules, "skip_imports": sorted(skip),
        "zstd_level": zstd_level, "extra_rules": [r.name for r in extra_rules],
        "disabled_rules": sorted(disabled_rules),
    }
    key_src = {"requirements": inp.text(), "lock": lock_text, "python": tgt.python, "arch": tgt.arch,
               "options": options, "builder": _builder_fingerprint()}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    cache_root = os.path.abspath(cache_dir or default_cache_dir())
    entry = os.path.join(cache_root, key[:32])
    output = os.path.abspath(output)

    if use_cache and not upgrade and os.path.isfile(os.path.join(entry, layout.MANIFEST)):
        log.info("cache hit %s", entry)
        _publish(entry, output)
        return _result(output, cache_hit=True, seconds=time.perf_counter() - t0)

    os.makedirs(cache_root, exist_ok=True)
    tmp = f"{entry}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    stages: dict[str, float] = {}
    try:
        manifest = _build_into(tmp, tgt, inp, lock_text, interp, options, extra_rules, stages,
                               seed_lock=os.path.join(output, layout.LOCK), upgrade=upgrade,
                               requested=inp.names())
        manifest["cache_key"] = key
        with open(os.path.join(tmp, layout.MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _publish(entry, output)
    res = _result(output, cache_hit=False, seconds=time.perf_counter() - t0)
    res.stage_seconds = stages
    return res


def _result(output: str, *, cache_hit: bool, seconds: float) -> BuildResult:
    with open(os.path.join(output, layout.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    return BuildResult(
        output=output, site_dir=os.path.join(output, layout.SITE),
        manifest_path=os.path.join(output, layout.MANIFEST), layer_zip=os.path.join(output, layout.LAYER_ZIP),
        archive=os.path.join(output, layout.ARCHIVE), lock=os.path.join(output, layout.LOCK),
        manifest=manifest, cache_hit=cache_hit, seconds=seconds)


def _publish(entry: str, output: str) -> None:
    """Make ``output`` hold the cache entry's artifacts (a no-op when it already does)."""
    mine = os.path.join(output, layout.MANIFEST)
    theirs = os.path.join(entry, layout.MANIFEST)
    if os.path.isfile(mine) and os.path.isdir(os.path.join(output, layout.SITE)):
        with open(mine, "rb") as a, open(theirs, "rb") as b:
            if a.read() == b.read():
                return
    os.makedirs(output, exist_ok=True)
    for name in (layout.MANIFEST, layout.SITE, layout.LAYER_ZIP, layout.ARCHIVE, layout.LOCK):
        dst = os.path.join(output, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst):
            os.unlink(dst)
    for name in (layout.SITE, layout.LAYER_ZIP, layout.ARCHIVE, layout.LOCK, layout.MANIFEST):
        src = os.path.join(entry, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(output, name), copy_function=shutil.copy2)
        elif os.path.exists(src):
            shutil.copy2(src, os.path.join(output, name))


def _timed(stages: dict[str, float], name: str, t: float) -> float:
    now = time.perf_counter()
    stages[name] = round(now - t, 3)
    log.info("%s took %.1f s", name, now - t)
    return now


def _build_into(tmp: str, tgt: Target, inp: inputs_mod.Inputs, lock_text: str | None, interp: str | None,
                options: dict[str, Any], extra_rules: Iterable[trim.Rule], stages: dict[str, float], *,
                seed_lock: str, upgrade: bool, requested: set[str]) -> dict[str, Any]:
    t = time.perf_counter()
    work = os.path.join(tmp, "work")
    os.makedirs(work)
    lock_path = os.path.join(tmp, layout.LOCK)
    if lock_text is not None:
        with open(lock_path, "w", encoding="utf-8") as f:
            f.write(lock_text)
    else:
        resolve.compile_lock(inp.text(), os.path.join(work, layout.LOCK), tgt, seed=seed_lock, upgrade=upgrade)
        shutil.copyfile(os.path.join(work, layout.LOCK), lock_path)
    t = _timed(stages, "resolve", t)

    raw = os.path.join(work, "raw")
    resolve.install(lock_path, raw, tgt)
    t = _timed(stages, "install", t)

    plan = trim.plan(raw, keep_boto3=options["keep_boto3"], requested=requested, extra_rules=extra_rules,
                     disabled=options["disabled_rules"])
    site = os.path.join(tmp, layout.SITE)
    trim.materialize(plan, site, strip=options["strip"])
    t = _timed(stages, "trim", t)

    pyc_bytes = 0
    if interp:
        pyc_bytes = bytecode.compile_tree(interp, site, sourceless=options["sourceless"])
    else:
        log.warning("no python%s interpreter: shipping without bytecode (slower cold start)", tgt.python)
    t = _timed(stages, "bytecode", t)

    checked: list[str] = []
    import_seconds = None
    if options["verify"] and interp:
        checked, import_seconds = _verify(plan, site, work, interp, options)
    t = _timed(stages, "verify", t)

    dists, _ = trim.read_dists(raw)
    before = _per_dist(plan.files, plan.owner)
    after_files = trim.scan_files(site)
    after = _per_dist(after_files, {rel: _owner_of(rel, plan) for rel in after_files})
    size = sum(after_files.values())
    if options["target"] == "layer" or options["target"] == "archive":
        budget.check(size, after, target=options["target"], tmp_mb=options["tmp_size_mb"])

    zip_size = pack.write_zip(site, os.path.join(tmp, layout.LAYER_ZIP))
    arc_size = pack.write_tar_zst(site, os.path.join(tmp, layout.ARCHIVE), level=options["zstd_level"])
    t = _timed(stages, "pack", t)
    shutil.rmtree(work, ignore_errors=True)

    rules = {}
    descriptions = {r.name: r.description for r in trim.default_rules(
        keep_boto3=False, requested=set(), kept_tests=set(), doc_dirs_without_init=set(), owner={})}
    descriptions.update({r.name: r.description for r in extra_rules})
    descriptions[trim.STRIP_RULE] = "strip .so files, keeping any whose PT_LOAD segments would misalign"
    for name, s in plan.savings().items():
        rules[name] = {"bytes_saved": s["bytes"], "files": s["files"], "description": descriptions.get(name, ""),
                       "rolled_back_for": sorted(plan.rolled_back.get(name, ()))}
    for name, d in plan.rolled_back.items():
        rules.setdefault(name, {"bytes_saved": 0, "files": 0, "description": descriptions.get(name, "")})
        rules[name]["rolled_back_for"] = sorted(d)
    with open(lock_path, "rb") as f:
        lock_hash = hashlib.sha256(f.read()).hexdigest()
    return {
        "manifest_version": MANIFEST_VERSION,
        "target": {"python": tgt.python, "arch": tgt.arch, "platform_tags": tgt.platform_tags(),
                   "glibc": "%d.%d" % tgt.glibc, "kind": options["target"],
                   "limit_bytes": budget.limit_for(options["target"], options["tmp_size_mb"])},
        "requirements": inp.requirements,
        "packages": [
            {"name": d.name, "version": d.version, "bytes_before": before.get(d.name, 0),
             "bytes_after": after.get(d.name, 0),
             "removed": d.name in (trim.BUILD_TOOLS | trim.LAMBDA_PROVIDED) and after.get(d.name, 0) == 0}
            for d in sorted(dists.values(), key=lambda d: d.name)
        ],
        "provided_by_lambda": sorted(n for n in trim.LAMBDA_PROVIDED if n in dists and after.get(n, 0) == 0),
        "rules": rules,
        "bytecode": {"bytes_added": pyc_bytes, "invalidation": "unchecked-hash",
                     "sourceless": options["sourceless"], "compiled": interp is not None},
        "sizes": {"raw": sum(plan.files.values()), "trimmed": size, "files": len(after_files),
                  "layer_zip": zip_size, "archive": arc_size},
        "verified": {"ok": bool(options["verify"] and interp), "modules": checked,
                     "skipped": options["skip_imports"]},
        "kept_test_files": sorted(plan.kept_tests),
        "lock_sha256": lock_hash,
        "content_hash": pack.content_hash(site),
        "files": {"site": layout.SITE, "layer_zip": layout.LAYER_ZIP, "archive": layout.ARCHIVE,
                  "lock": layout.LOCK},
    }


def _owner_of(rel: str, plan: trim.Plan) -> str:
    if rel in plan.owner:
        return plan.owner[rel]
    # bytecode: pkg/__pycache__/mod.cpython-311.pyc or pkg/mod.pyc -> pkg/mod.py
    parts = rel.split(os.sep)
    if parts[-1].endswith(".pyc"):
        stem = parts[-1].split(".", 1)[0]
        dirparts = [p for p in parts[:-1] if p != "__pycache__"]
        src = os.path.join(*dirparts, stem + ".py") if dirparts else stem + ".py"
        if src in plan.owner:
            return plan.owner[src]
    top = parts[0]
    for p, o in plan.owner.items():
        if p.split(os.sep)[0] == top:
            return o
    return trim.UNOWNED


def _per_dist(files: dict[str, int], owner: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rel, size in files.items():
        d = owner.get(rel, trim.UNOWNED)
        out[d] = out.get(d, 0) + size
    return out


def _provided_dir(plan: trim.Plan, work: str) -> list[str]:
    """Stand-ins for the packages Lambda's runtime provides (removed by the lambda-provided rule)."""
    tops = sorted({p.split(os.sep)[0] for p, r in plan.removed.items() if r == "lambda-provided"
                   and not p.split(os.sep)[0].endswith(".dist-info")})
    if not tops:
        return []
    d = os.path.join(work, "lambda-provided")
    os.makedirs(d, exist_ok=True)
    for top in tops:
        os.symlink(os.path.join(plan.root, top), os.path.join(d, top))
    return [d]


def _culprits(f: verify.Failure, plan: trim.Plan, site: str, *, broad: bool) -> set[tuple[str, str]]:
    """(rule, dist) pairs whose removals can explain an import failure.

    Precise first: the missing module's or file's removing rule. With ``broad``
    (the module imports from the raw tree, so trimming broke it somehow), every
    rule applied to the module's own distribution.
    """
    found: set[tuple[str, str]] = set()
    if f.name:
        stem = f.name.replace(".", os.sep)
        for p, rule in plan.removed.items():
            if p == stem + ".py" or p.startswith(stem + os.sep) or (p.startswith(stem + ".") and p.endswith(".so")):
                found.add((rule, plan.owner.get(p, trim.UNOWNED)))
    if f.filename:
        rel = os.path.relpath(str(f.filename), site)
        if rel in plan.removed:
            found.add((plan.removed[rel], plan.owner.get(rel, trim.UNOWNED)))
    if not found and broad:
        top = f.module.split(".")[0]
        dists = {o for p, o in plan.owner.items() if p.split(os.sep)[0] in (top, top + ".py")
                 or (p.split(os.sep)[0].startswith(top + ".") and p.endswith(".so"))}
        for d in dists:
            found |= {(r, d) for r in plan.rules_for(d)}
    return {(r, d) for r, d in found if d not in plan.rolled_back.get(r, set())}


def _verify(plan: trim.Plan, site: str, work: str, interp: str, options: dict[str, Any]) -> tuple[list[str], float]:
    """Required modules (top level + asked for) must import; extensions are checked best effort.

    A failure that a trim rule explains rolls that rule back for the owning
    distribution and the check runs again. A required module failing for
    another reason fails the build; an extension module doing so (some only
    import in a particular order or need optional libraries) is logged.
    """
    skip = set(options["skip_imports"])
    required = sorted((set(verify.top_level_modules(site)) | set(options["verify_modules"])) - skip)
    extensions = [m for m in verify.extension_modules(site) if m not in skip and m not in required]
    extra = _provided_dir(plan, work)
    seconds = 0.0
    for _ in range(10):
        failures, seconds = verify.check_imports(interp, site, required + extensions, extra)
        if not failures:
            break
        progress = False
        unexplained = []
        for f in failures.values():
            pairs = _culprits(f, plan, site, broad=False)
            if not pairs:
                unexplained.append(f.module)
            progress |= _roll_back(plan, site, interp, options, pairs)
        if unexplained and not progress:
            # Trimming is to blame only if the untrimmed tree imports the module.
            raw_fail, _ = verify.check_imports(interp, plan.root, unexplained, extra)
            for m in unexplained:
                if m not in raw_fail:
                    progress |= _roll_back(plan, site, interp, options,
                                           _culprits(failures[m], plan, site, broad=True))
        if progress:
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
    else:
        raise BuildError("import check still failing after rolling back trim rules; run with -v for details")
    log.info("verified %d modules and %d extension modules import (%.2f s)", len(required), len(extensions), seconds)
    return required + extensions, seconds


def _roll_back(plan: trim.Plan, site: str, interp: str, options: dict[str, Any],
               pairs: set[tuple[str, str]]) -> bool:
    for rule, dist in sorted(pairs):
        restored = plan.rollback(rule, dist)
        trim.restore(plan, site, restored)
        bytecode.compile_tree(interp, site, sourceless=options["sourceless"], files=restored)
    return bool(pairs)
