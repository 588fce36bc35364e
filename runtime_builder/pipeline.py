"""The build pipeline, start to finish::

    inputs (-r, pyproject, packages, profile) + cloudpickle==client
      -> cache key (inputs, target, options, builder code)  --hit-->  copy to output
      -> pip-compile for the target -> requirements.lock (hashes)
      -> pip install --target raw/ (target wheels only)
      -> trim plan (rules) -> python/ (kept files, .so stripped safely)
      -> every ELF file's GLIBC_x.y needs <= the target's glibc
      -> hash-based .pyc
      -> verify imports in an isolated interpreter; roll back a rule that breaks one
      -> budget check -> layer.zip + runtime.tar.zst + manifest.json
      -> cache entry -> output dir

Each stage is its own module; this one only sequences them and keeps score,
including each stage's seconds (``stage_seconds`` in the manifest, the
result and the failure report).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterable

from runtime_builder import (attribution, budget, bytecode, components, dedup, glibc, gpu, inputs as inputs_mod,
                             installer, layout, pack, resolve, trim)
from runtime_builder.targets import Target
from wrenpack.config import cache_dir
from wrenpack.errors import BudgetExceeded, BuildError, NoSuitableWheel

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
    #: this run's stages (a cache hit only publishes); the manifest's ``stage_seconds`` are its build's
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return self.manifest["sizes"]


def default_cache_dir() -> str:
    """Built runtimes, by their inputs' hash: ``runtimes/`` in wrenpack's cache directory."""
    return os.path.join(cache_dir(), "runtimes")


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
    """A local interpreter of the target's Python version, if any.

    A ``pythonX.Y`` on PATH is used only once it has run and said it is X.Y: a pyenv shim of a version
    installed but not selected is on PATH too, and fails (exit 127); taken on trust, it passed the check
    "no pythonX.Y interpreter here" and the build failed after installing, at the bytecode stage."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == target.python:
        return sys.executable
    found = shutil.which(f"python{target.python}")
    if found is None:
        return None
    try:
        proc = subprocess.run([found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("not using %s: %s", found, exc)
        return None
    if proc.returncode != 0 or proc.stdout.strip() != target.python:
        log.info("not using %s as python%s: it %s", found, target.python,
                 f"says it is {proc.stdout.strip()}" if proc.returncode == 0 else
                 f"failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[0]}")
        return None
    return found


#: The stages, in the order they run (``stage_seconds`` keys; publish is timed after the manifest is written).
STAGES = ("resolve", "size-check", "install", "trim", "glibc", "bytecode", "budget", "verify", "pack", "publish")
MODES = (("layer", False), ("layer", True), ("archive", False))
MODE_NAMES = {("layer", False): "layer with sources", ("layer", True): "sourceless layer",
              ("archive", False): "archive in /tmp", ("archive", True): "sourceless archive in /tmp"}
REPORT = "build-report.json"
#: a failed build's lock, beside a runtime it left in place (whose ``requirements.lock`` stays its own)
FAILED_LOCK = "requirements.failed.lock"


def _check_writable(path: str, flag: str) -> None:
    """Fail in a second, before resolving anything, when ``path`` cannot become a writable directory."""
    p = os.path.abspath(path)
    probe = p
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(p) and not os.path.isdir(p):
        raise BuildError(f"cannot write {flag} {path}: it is a file, not a directory; fix: pass another {flag} DIR")
    if not os.path.isdir(probe):
        raise BuildError(f"cannot write {flag} {path}: {probe} is a file, not a directory; fix: pass another {flag} DIR")
    try:  # a real write: access() says yes to root even on a read-only mount's permissions
        fd, name = tempfile.mkstemp(prefix=".wrenpack-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        where = "it" if probe == p else probe
        raise BuildError(f"cannot write {flag} {path}: {where} is not writable ({exc.strerror}); fix: pass a "
                         f"writable {flag} DIR (or fix its permissions)") from None


#: zstd's levels that ``--zstd-level`` takes (the library clamps others silently)
ZSTD_LEVELS = (1, 22)


def known_rules(extra_rules: Iterable[trim.Rule] = ()) -> set[str]:
    """Every name ``--disable-rule`` accepts: the trim rules, ``strip-so``, ``duplicate-libs``, each optional
    component's rule and ``optional`` (all of them)."""
    names = {r.name for r in trim.default_rules(keep_boto3=False, requested=set(), kept_tests=set(),
                                                doc_dirs_without_init=set(), owner={})}
    names |= {trim.STRIP_RULE, trim.DUPLICATE_RULE, "optional"} | set(components.by_rule())
    return names | {r.name for r in extra_rules}


def _check_options(tmp_size_mb: int, zstd_level: int | None, disabled_rules: Iterable[str],
                   extra_rules: Iterable[trim.Rule]) -> None:
    """Refuse, before anything is resolved, options that would be ignored or measured against a limit
    Lambda does not have: a --tmp-size outside Lambda's /tmp range (100 MiB made a budget no function
    can have, 100000 passed a 97 GiB runtime), a --zstd-level zstd clamps without a word, a misspelt
    --disable-rule that turned nothing off."""
    from wrenpack.limits import MAX_EPHEMERAL_MB, MIN_EPHEMERAL_MB

    if isinstance(tmp_size_mb, bool) or not isinstance(tmp_size_mb, int) or \
            not MIN_EPHEMERAL_MB <= tmp_size_mb <= MAX_EPHEMERAL_MB:
        raise BuildError(f"--tmp-size {tmp_size_mb!r} is outside Lambda's ephemeral storage range: give a whole "
                         f"number of MiB in {MIN_EPHEMERAL_MB}..{MAX_EPHEMERAL_MB} (the function's /tmp size)")
    lo, hi = ZSTD_LEVELS
    if zstd_level is not None and (isinstance(zstd_level, bool) or not isinstance(zstd_level, int)
                                   or not lo <= zstd_level <= hi):
        raise BuildError(f"--zstd-level {zstd_level!r} is not a zstd level: give a whole number in {lo}..{hi} "
                         f"(default {pack.DEFAULT_ZSTD_LEVEL}; --max-compression uses {pack.MAX_ZSTD_LEVEL})")
    known = known_rules(extra_rules)
    unknown = [r for r in disabled_rules if r not in known]
    if unknown:
        plain = sorted(n for n in known if not n.startswith(components.PREFIX))
        raise BuildError(f"unknown --disable-rule {unknown[0]!r}: the rules are {', '.join(plain)}, and "
                         f"optional:<component> ({', '.join(sorted(components.by_rule()))})")


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_runtime_manifest(path: str) -> bool:
    """A ``manifest.json`` a build wrote: the version, content hash, target and packages a build records."""
    data = _load_json(path)
    return (isinstance(data, dict) and isinstance(data.get("manifest_version"), int)
            and isinstance(data.get("content_hash"), str) and isinstance(data.get("target"), dict)
            and isinstance(data.get("packages"), list))


def _is_build_report(path: str) -> bool:
    """A ``build-report.json`` a failed build wrote (``ok: false``, the stage and the error)."""
    data = _load_json(path)
    return isinstance(data, dict) and data.get("ok") is False and "stage" in data and "error" in data


def _is_build_lock(path: str, lock: str | None) -> bool:
    """A lone ``requirements.lock`` a build wrote (and committed): every pin hashed, cloudpickle among them
    (a build from requirements always adds it), or exactly the ``--lock`` this build installs (rewriting it
    changes nothing)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    if lock is not None:
        try:
            with open(lock, encoding="utf-8") as f:
                if f.read() == text:
                    return True
        except (OSError, UnicodeDecodeError):
            pass
    hashes = resolve.lock_hash_counts(text)
    return "cloudpickle" in hashes and all(hashes.values())


#: what a build writes into --output, and nothing else
BUILD_FILES = (layout.SITE, layout.MANIFEST, layout.LAYER_ZIP, layout.ARCHIVE, layout.LOCK, REPORT, FAILED_LOCK)


def _check_output(output: str, lock: str | None = None) -> None:
    """Refuse, before anything runs, an existing non-empty --output that is not a previous build's output:
    publishing replaces its python/, manifest.json, layer.zip, runtime.tar.zst and requirements.lock, and
    ``-o .`` in a project deleted its own python/ folder, ``-o proj`` replaced the project's own lock,
    ``-o /etc`` wrote into /etc, all without a word.

    A previous build's output holds only what a build writes (:data:`BUILD_FILES`) and is recognised by its
    wrenpack ``manifest.json`` or, after a failed build, its ``build-report.json``; a directory holding only a
    ``requirements.lock`` is one when that lock is a build's (a committed lock seeds the build, see
    :func:`_is_build_lock`). ``lock``: the ``--lock`` file being installed, if any."""
    try:
        names = sorted(os.listdir(output))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise BuildError(f"cannot read --output {output} ({exc.strerror}); fix: pass a new or empty "
                         f"--output DIR (default {layout.DEFAULT_OUTPUT})") from None
    if not names:
        return
    fix = f"fix: pass a new or empty --output DIR (default {layout.DEFAULT_OUTPUT})"
    foreign = [n for n in names if n not in BUILD_FILES]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BuildError(f"--output {output} holds {shown} that no wrenpack build wrote (it is not a build's "
                         f"output, and a build writes its files there); {fix}")
    if _is_runtime_manifest(os.path.join(output, layout.MANIFEST)):
        return
    artifacts = [n for n in names if n in (layout.SITE, layout.MANIFEST, layout.LAYER_ZIP, layout.ARCHIVE)]
    if artifacts:
        shown = ", ".join(n + "/" if n == layout.SITE else n for n in artifacts)
        raise BuildError(f"--output {output} holds {shown} that no wrenpack build wrote (no wrenpack "
                         f"{layout.MANIFEST}), and a build replaces them; {fix}")
    if REPORT in names and not _is_build_report(os.path.join(output, REPORT)):
        raise BuildError(f"--output {output} holds a {REPORT} that no wrenpack build wrote, and a build "
                         f"replaces it; {fix}")
    if layout.LOCK in names and REPORT not in names and not _is_build_lock(os.path.join(output, layout.LOCK),
                                                                           lock):
        raise BuildError(f"--output {output} holds a {layout.LOCK} that no wrenpack build wrote (not a hashed "
                         f"lock pinning cloudpickle), and a build replaces it; {fix}, with -r "
                         f"{os.path.join(output, layout.LOCK)} to build from that lock")


def _check_lock(path: str, lock_text: str) -> None:
    """Refuse a --lock that ``pip install --require-hashes`` cannot install exactly, before anything runs: a
    lock without hashes got as far as the install and failed there with pip's message cut mid-sentence."""
    hashes = resolve.lock_hash_counts(lock_text)
    pinned = resolve.pins(lock_text)
    fix = ("fix: build from the requirements instead (the build writes a hashed requirements.lock), or "
           "regenerate the lock with pip-compile --generate-hashes")
    if not hashes:
        raise BuildError(f"lock file {path} holds no requirements; {fix}")
    loose = sorted(set(hashes) - set(pinned))
    if loose:
        raise BuildError(f"lock file {path} has requirements not pinned with ==: {', '.join(loose[:5])}; {fix}")
    bare = sorted(n for n in pinned if not hashes.get(n))
    if bare:
        named = ", ".join(f"{n}=={pinned[n]}" for n in bare[:5]) + (f" and {len(bare) - 5} more" if len(bare) > 5 else "")
        raise BuildError(f"lock file {path} has no --hash for {named}: the install checks every file against "
                         f"the lock's hashes; {fix}")


def build(packages: Iterable[str] = (), *, requirements_files: Iterable[str] = (),
          pyproject: str | None = None, profile: str | None = None, lock: str | None = None,
          python: str | None = None, arch: str | None = None,
          output: str = layout.DEFAULT_OUTPUT, sourceless: bool = False, keep_boto3: bool = False,
          target: str = "layer", tmp_size_mb: int = budget.DEFAULT_TMP_MB, strip: bool = True,
          verify_imports: bool = True, verify_modules: Iterable[str] = (), skip_imports: Iterable[str] = (),
          cache_dir: str | None = None, use_cache: bool = True, upgrade: bool = False,
          zstd_level: int | None = None, max_compression: bool = False, artifacts: str = "auto",
          fit: bool = False, extra_rules: Iterable[trim.Rule] = (),
          disabled_rules: Iterable[str] = (), installer_choice: str | None = None) -> BuildResult:
    """Build (or fetch from cache) a verified runtime into ``output``; see the module docstring.

    A build that fails after resolving still leaves ``output/requirements.lock`` and
    ``output/build-report.json`` (what failed, at which stage); the exception carries
    the report as ``.report``.
    """
    t0 = time.perf_counter()
    tgt = Target.make(python, arch)
    how = installer.choice(installer_choice)  # a bad choice fails now, not after resolving
    if target not in ("layer", "archive"):
        raise BuildError(f"unknown --target {target!r}: use layer or archive")
    if artifacts not in ("auto", "all"):
        raise BuildError(f"unknown artifacts {artifacts!r}: use auto (what the target needs) or all")
    _check_options(tmp_size_mb, zstd_level, disabled_rules, extra_rules)
    if trim.STRIP_RULE in set(disabled_rules):  # the rule is applied while copying, not by the plan
        strip = False
    output = os.path.abspath(output)
    cache_root = os.path.abspath(cache_dir or default_cache_dir())
    _check_output(output, lock)  # first: /etc is writable to root, and the probe would write into it
    _check_writable(output, "--output")
    _check_writable(cache_root, "--cache-dir")
    inp = inputs_mod.gather(packages, requirements_files, pyproject, profile)
    lock_text = None
    if lock:
        try:
            with open(lock, encoding="utf-8") as f:
                lock_text = f.read()
        except OSError as exc:
            raise BuildError(f"cannot read lock file {lock}: {exc.strerror}; check --lock") from None
        _check_lock(lock, lock_text)
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

    level = zstd_level if zstd_level is not None else (pack.MAX_ZSTD_LEVEL if max_compression else pack.DEFAULT_ZSTD_LEVEL)
    options = {
        "target": target, "tmp_size_mb": tmp_size_mb, "sourceless": sourceless, "keep_boto3": keep_boto3,
        "strip": strip, "verify": verify_imports, "verify_modules": modules, "skip_imports": sorted(skip),
        "zstd_level": level, "zip_level": pack.MAX_ZIP_LEVEL if max_compression else pack.DEFAULT_ZIP_LEVEL,
        "artifacts": artifacts, "fit": fit, "extra_rules": [r.name for r in extra_rules],
        "disabled_rules": sorted(disabled_rules),
    }
    key_src = {"requirements": inp.text(), "lock": lock_text, "python": tgt.python, "arch": tgt.arch,
               "options": options, "builder": _builder_fingerprint(), "imported": sorted(set(inp.imported))}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    entry = os.path.join(cache_root, key[:32])

    if use_cache and not upgrade and os.path.isfile(os.path.join(entry, layout.MANIFEST)):
        log.info("cache hit %s", entry)
        hit_stages: dict[str, float] = {}
        t = time.perf_counter()
        _publish(entry, output)
        _drop_report(output)
        _timed(hit_stages, "publish", t)
        res = _result(output, cache_hit=True, seconds=time.perf_counter() - t0)
        res.stage_seconds = hit_stages
        return res

    os.makedirs(cache_root, exist_ok=True)
    tmp = f"{entry}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    stages: dict[str, float] = {}
    state: dict[str, Any] = {"stage": "resolve"}
    t_build = time.perf_counter()
    try:
        manifest = _build_into(tmp, tgt, inp, lock_text, interp, options, extra_rules, stages, state,
                               seed_lock=os.path.join(output, layout.LOCK), upgrade=upgrade,
                               requested=inp.names(), how=how)
        manifest["cache_key"] = key
        with open(os.path.join(tmp, layout.MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except BuildError as exc:
        # the stage that failed gets the time it ran, too
        failed = time.perf_counter() - t_build - sum(stages.values())
        stages[state["stage"]] = round(stages.get(state["stage"], 0.0) + max(failed, 0.0), 3)
        exc.report = _failure_report(exc, tmp, output, tgt, inp, options, state, stages,  # type: ignore[attr-defined]
                                     time.perf_counter() - t0)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    _publish(entry, output)  # after the manifest is written: its time is in the result, not the manifest
    _drop_report(output)
    _timed(stages, "publish", t)
    res = _result(output, cache_hit=False, seconds=time.perf_counter() - t0)
    res.stage_seconds = stages
    return res


def _drop_report(output: str) -> None:
    """A build that succeeded: an earlier failure's report and lock no longer describe anything."""
    for name in (REPORT, FAILED_LOCK):
        try:
            os.unlink(os.path.join(output, name))
        except OSError:
            pass


def _failure_report(exc: BuildError, tmp: str, output: str, tgt: Target, inp: inputs_mod.Inputs,
                    options: dict[str, Any], state: dict[str, Any], stages: dict[str, float],
                    seconds: float) -> dict[str, Any]:
    """Write ``build-report.json`` (and the lock, when resolution got that far) into ``output``.

    A runtime already there stays, and so does its ``requirements.lock``: the lock committed beside
    it must go on describing it, so the failed build's lock goes to ``requirements.failed.lock``."""
    os.makedirs(output, exist_ok=True)
    kept = os.path.isfile(os.path.join(output, layout.MANIFEST))
    if not kept:
        _drop_report(output)  # (an earlier failure's, over a runtime since removed: this report replaces it)
    lock_src = os.path.join(tmp, layout.LOCK)
    lock_out = None
    pinned: dict[str, str] = {}
    if os.path.isfile(lock_src):
        lock_out = os.path.join(output, FAILED_LOCK if kept else layout.LOCK)
        shutil.copyfile(lock_src, lock_out)
        with open(lock_src, encoding="utf-8") as f:
            pinned = resolve.pins(f.read())
    report = {
        "ok": False, "stage": state.get("stage"), "error": type(exc).__name__, "message": str(exc),
        "target": {"python": tgt.python, "arch": tgt.arch, "kind": options["target"]},
        "requirements": inp.requirements, "lock": lock_out, "packages": pinned,
        "sizes": state.get("sizes"), "rollbacks": state.get("rollbacks", []),
        "previous_runtime_kept": kept,
        "seconds": round(seconds, 3), "stage_seconds": stages,
        "rows": [[n, s] for n, s in getattr(exc, "rows", None) or []],
    }
    with open(os.path.join(output, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    return report


def _result(output: str, *, cache_hit: bool, seconds: float) -> BuildResult:
    with open(os.path.join(output, layout.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if isinstance(manifest.get("stage_seconds"), dict):  # the file's keys are sorted: put them back in run order
        times = manifest["stage_seconds"]
        manifest["stage_seconds"] = {k: times[k] for k in sorted(times, key=lambda k: (
            STAGES.index(k) if k in STAGES else len(STAGES), k))}
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
    """Add the seconds since ``t`` to stage ``name`` (a stage met twice, like budget, adds up); return now."""
    now = time.perf_counter()
    stages[name] = round(stages.get(name, 0.0) + now - t, 3)
    log.info("%s took %.1f s", name, now - t)
    return now


def _resolve(inp: inputs_mod.Inputs, tgt: Target, work: str, seed_lock: str, upgrade: bool,
             state: dict[str, Any]) -> str:
    """pip-compile; a profile's pin with no wheel for the target falls back (with a warning) to the newest that has one."""
    fallbacks = state.setdefault("fallbacks", [])
    for _ in range(len(inp.from_profile) + 1):
        try:
            return resolve.compile_lock(inp.text(), os.path.join(work, layout.LOCK), tgt, seed=seed_lock,
                                        upgrade=upgrade)
        except NoSuitableWheel as exc:
            name, best = getattr(exc, "name", None), getattr(exc, "newest", None)
            if not (name in inp.from_profile and best) or any(f["name"] == name for f in fallbacks):
                raise
            old = next((r for r in inp.requirements if inputs_mod._name(r) == name), name)
            if getattr(exc, "released", None) is False:
                # not a release without a target wheel: a project installed from elsewhere (the user's own,
                # editable), and the index's project of that name may be another one. Never swapped in.
                raise BuildError(
                    f"the profile pins {old}, but the index has no release {exc.pinned} of {name} (its newest "  # type: ignore[attr-defined]
                    f"with a wheel for {tgt.label} is {best}): the {name} installed here came from elsewhere (your "
                    f"own or an editable project?), and the index's {name} may be another project; fix: ship that "
                    f"code with the function, or require {name} yourself (PACKAGE or -r) if the index's is the same "
                    f"project") from None
            log.warning("the profile pins %s, which has no wheel for %s; using %s==%s, the newest version that has "
                        "one (pin it yourself to silence this)", old, tgt.label, name, best)
            inp.replace(name, f"{name}=={best}")
            fallbacks.append({"name": name, "profile": old, "using": best})
    raise BuildError("resolving kept failing after falling back from the profile's versions; run with -v")


def _precheck_wheels(lock_text: str, tgt: Target, options: dict[str, Any]) -> dict[str, dict]:
    """Fail in seconds, before downloading, when the wheels alone (compressed) exceed every allowed budget.

    Returns pip's choice of file for every pin (``resolve.select_wheels``), which the installer reuses.
    """
    kind = max((k for k, _ in _modes(options)), key=lambda k: budget.limit_for(k, options["tmp_size_mb"]))
    limit = budget.limit_for(kind, options["tmp_size_mb"])
    skip = set(trim.BUILD_TOOLS) | (set() if options["keep_boto3"] else set(trim.LAMBDA_PROVIDED))
    # pip's configured indexes only, as the size check always looked: a pin found only through the lock's own
    # index options (a CPU-only torch index, a local --find-links) has no file here, and pip installs the lock
    wheels = resolve.select_wheels(resolve.pins(lock_text), tgt)
    sizes = {n: w.get("size") for n, w in wheels.items() if n not in skip}
    known = {n: s for n, s in sizes.items() if s}
    total = sum(known.values())
    if total <= limit:
        return wheels
    rows = sorted(known.items(), key=lambda kv: -kv[1])[:10]
    top = ", ".join(f"{n} {s / budget.MIB:.1f}" for n, s in rows[:5])
    where = budget.where(kind, options["tmp_size_mb"])
    raise BudgetExceeded(
        f"the wheels alone are {total / budget.MIB:.1f} MiB compressed, over {where} before unpacking (largest "
        f"MiB: {top}); nothing was installed; fix: drop packages, use --target archive with a larger --tmp-size "
        f"(up to 10240), or build a container image with --docker", rows)


def _py_with_pyc(site: str) -> dict[str, int]:
    """.py files (rel path -> size) whose hash-based .pyc exists in __pycache__: what sourceless drops."""
    out: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(site):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        parent = os.path.dirname(dirpath)
        for fn in filenames:
            if fn.endswith(".pyc"):
                src = os.path.join(parent, fn.split(".", 1)[0] + ".py")
                if os.path.isfile(src):
                    out[os.path.relpath(src, site)] = os.path.getsize(src)
    return out


def _to_sourceless(site: str) -> int:
    """Move each __pycache__ .pyc beside its source as ``x.pyc`` and drop ``x.py``; return bytes freed.

    The result is what ``--sourceless`` builds: the .pyc bytes are the same
    (compileall's legacy layout only changes where they are written).
    """
    freed = 0
    for dirpath, _dirnames, filenames in os.walk(site, topdown=False):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        parent = os.path.dirname(dirpath)
        for fn in filenames:
            if not fn.endswith(".pyc"):
                continue
            stem = fn.split(".", 1)[0]
            src = os.path.join(parent, stem + ".py")
            if os.path.isfile(src):
                freed += os.path.getsize(src)
                os.replace(os.path.join(dirpath, fn), os.path.join(parent, stem + ".pyc"))
                os.unlink(src)
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    return freed


def _modes(options: dict[str, Any]) -> list[tuple[str, bool]]:
    if options["fit"]:
        return [m for m in MODES if not (options["sourceless"] and not m[1])]
    return [(options["target"], options["sourceless"])]


def _mode_table(size: int, sourceless_size: int, tmp_mb: int) -> list[dict[str, Any]]:
    out = []
    for kind, sl in MODES:
        n = sourceless_size if sl else size
        limit = budget.limit_for(kind, tmp_mb)
        out.append({"mode": MODE_NAMES[(kind, sl)], "kind": kind, "sourceless": sl, "bytes": n,
                    "limit_bytes": limit, "fits": n <= limit})
    return out


def _choose_mode(size: int, sourceless_size: int, per_dist: dict[str, int], options: dict[str, Any],
                 state: dict[str, Any], *, lower_bound: bool = False) -> tuple[str, bool]:
    """The first allowed mode whose size fits; else BudgetExceeded that names a smaller mode that fits.

    ``lower_bound``: the sizes are before bytecode (an early check that only fails, never chooses).
    """
    tmp_mb = options["tmp_size_mb"]
    tried = _mode_table(size, sourceless_size, tmp_mb)
    allowed = _modes(options)
    rows = [r for r in tried if (r["kind"], r["sourceless"]) in allowed]
    if not lower_bound:
        state["modes"] = tried
    for row in rows:
        if row["fits"]:
            if options["fit"] and not lower_bound:
                skipped = [f"{r['mode']} is {r['bytes'] / budget.MIB:.1f} MiB, over {r['limit_bytes'] / budget.MIB:.0f} MiB"
                           for r in rows[: rows.index(row)]]
                why = "; ".join(skipped + [f"{row['mode']} is {row['bytes'] / budget.MIB:.1f} MiB, within "
                                           f"{row['limit_bytes'] / budget.MIB:.0f} MiB"])
                state["fit"] = {"chosen": row["mode"], "why": why}
                log.warning("--fit chose a %s: %s", row["mode"], why)
            return row["kind"], row["sourceless"]
    at_least = "at least " if lower_bound else ""
    if options["fit"]:
        sizes = "; ".join(f"{r['mode']} {at_least}{r['bytes'] / budget.MIB:.1f} MiB (limit "
                          f"{r['limit_bytes'] / budget.MIB:.0f})" for r in rows)
        top = ", ".join(f"{n} {b / budget.MIB:.1f}" for n, b in sorted(per_dist.items(), key=lambda kv: -kv[1])[:5])
        raise BudgetExceeded(f"no mode fits: {sizes} (largest MiB: {top}); fix: drop or split packages, raise "
                             f"--tmp-size (up to 10240), or build a container image with --docker",
                             sorted(per_dist.items(), key=lambda kv: -kv[1])[:10])
    kind, sl = allowed[0]
    fitting = [r for r in tried if r["fits"]]
    # Before bytecode the sizes are lower bounds: a sourceless layer's .pyc added 34 MiB to the scipy stack's
    # 220.5, and the layer that "would fit" did not (--fit then built an archive).
    fits = ("might fit" if lower_bound else "would fit")
    hint = (f"; a {fitting[0]['mode']} {fits} ({at_least}{fitting[0]['bytes'] / budget.MIB:.1f} MiB"
            f"{' before bytecode' if lower_bound else ''}): pass --fit to build the first mode that fits"
            if fitting else "")
    try:
        budget.check(sourceless_size if sl else size, per_dist, target=kind, tmp_mb=tmp_mb)
    except BudgetExceeded as exc:
        raise BudgetExceeded(f"{exc}{hint}", exc.rows) from None
    return kind, sl  # pragma: no cover - check() raised: nothing allowed fits


def _build_into(tmp: str, tgt: Target, inp: inputs_mod.Inputs, lock_text: str | None, interp: str | None,
                options: dict[str, Any], extra_rules: Iterable[trim.Rule], stages: dict[str, float],
                state: dict[str, Any], *, seed_lock: str, upgrade: bool, requested: set[str],
                how: str = "auto") -> dict[str, Any]:
    t = time.perf_counter()
    work = os.path.join(tmp, "work")
    os.makedirs(work)
    lock_path = os.path.join(tmp, layout.LOCK)
    if lock_text is None:
        lock_text = _resolve(inp, tgt, work, seed_lock, upgrade, state)
        if inp.options:  # index options (e.g. a CPU-only wheel index) travel with the lock, for pip install
            lock_text = "".join(o + "\n" for o in inp.options if o not in lock_text) + lock_text
    with open(lock_path, "w", encoding="utf-8") as f:
        f.write(lock_text)
    t = _timed(stages, "resolve", t)

    state["stage"] = "size-check"
    gpu.check_gpu(lock_text, requested, tgt)
    wheels = _precheck_wheels(lock_text, tgt, options)
    t = _timed(stages, "size-check", t)

    state["stage"] = "install"
    raw = os.path.join(work, "raw")
    installed_by = installer.install(lock_path, raw, tgt, wheels, how)
    t = _timed(stages, "install", t)

    state["stage"] = "trim"
    plan = trim.plan(raw, keep_boto3=options["keep_boto3"], requested=requested, extra_rules=extra_rules,
                     disabled=options["disabled_rules"],
                     imported=set(options["verify_modules"]) | set(inp.imported))
    site = os.path.join(tmp, layout.SITE)
    trim.materialize(plan, site, strip=options["strip"])
    linked = dedup.link_identical(site)
    files = trim.scan_files(site)
    per_dist = _per_dist(files, {rel: _owner_of(rel, plan) for rel in files})
    py_bytes = sum(n for rel, n in files.items() if rel.endswith(".py"))
    trimmed = sum(files.values())
    state["sizes"] = {"raw": sum(plan.files.values()), "trimmed_without_bytecode": trimmed}
    # Bytecode only adds (with sources) or replaces the .py (sourceless): fail now, not after compiling and verifying.
    _choose_mode(trimmed, trimmed - py_bytes, per_dist, options, state, lower_bound=True)
    t = _timed(stages, "trim", t)

    state["stage"] = "glibc"
    dists, _ = trim.read_dists(raw)
    glibc_summary = glibc.check(site, tgt, lambda rel: _owner_of(rel, plan), {n: d.version for n, d in dists.items()},
                                glibc.wheel_tags(raw), unowned=trim.UNOWNED)
    t = _timed(stages, "glibc", t)

    state["stage"] = "bytecode"
    pyc_bytes = 0
    if interp:
        pyc_bytes = bytecode.compile_tree(interp, site, sourceless=options["sourceless"])
    else:
        log.warning("no python%s interpreter: shipping without bytecode (slower cold start)", tgt.python)
    t = _timed(stages, "bytecode", t)

    state["stage"] = "budget"
    files = trim.scan_files(site)
    size = sum(files.values())
    sourceless_size = size - sum(_py_with_pyc(site).values()) if not options["sourceless"] else size
    per_dist = _per_dist(files, {rel: _owner_of(rel, plan) for rel in files})
    kind, sl = _choose_mode(size, sourceless_size, per_dist, options, state)
    if sl and not options["sourceless"]:
        freed = _to_sourceless(site)
        log.info("sourceless: dropped %.1f MiB of sources", freed / budget.MIB)
    options = dict(options, target=kind, sourceless=sl)
    t = _timed(stages, "budget", t)

    want = {"layer": {layout.LAYER_ZIP}, "archive": {layout.ARCHIVE}}[kind]
    if options["artifacts"] == "all":
        want = {layout.LAYER_ZIP, layout.ARCHIVE}

    state["stage"] = "verify"
    checked: list[str] = []
    import_seconds = None
    packed: Future[tuple[int | None, int | None, str]] | None = None
    if options["verify"] and interp:
        # a kept optional component is proven too: the modules that needed it are imported
        needed = {m for mods in plan.kept_components.values() for m in mods}
        verify_options = dict(options, verify_modules=sorted(set(options["verify_modules"]) | needed))
        # The import check only reads the tree (python -B), so the artifacts are packed beside it, on the
        # core it leaves idle; a rollback changes the tree, and then they are packed again.
        rollbacks_before = len(plan.rollbacks)
        packer = ThreadPoolExecutor(max_workers=1)
        packed = packer.submit(_pack, site, tmp, want, options)
        verified = False
        try:
            checked, import_seconds = attribution.verify_tree(plan, site, work, interp, verify_options)
            verified = True
        finally:
            state["rollbacks"] = plan.rollbacks
            if not verified or len(plan.rollbacks) != rollbacks_before:
                packed.cancel()
                packer.shutdown(wait=True)  # never leave a writer behind in a directory about to go
                packed = None
            packer.shutdown(wait=False)
    t = _timed(stages, "verify", t)

    state["stage"] = "budget"
    before = _per_dist(plan.files, plan.owner)
    after_files = trim.scan_files(site)
    after = _per_dist(after_files, {rel: _owner_of(rel, plan) for rel in after_files})
    size = sum(after_files.values())
    try:
        budget.check(size, after, target=kind, tmp_mb=options["tmp_size_mb"])
    except BudgetExceeded:
        if packed is not None:
            packed.cancel()
            wait([packed])
        raise
    t = _timed(stages, "budget", t)

    state["stage"] = "pack"
    zip_size, arc_size, content = packed.result() if packed is not None else _pack(site, tmp, want, options)
    t = _timed(stages, "pack", t)
    shutil.rmtree(work, ignore_errors=True)

    rules = {}
    descriptions = {r.name: r.description for r in trim.default_rules(
        keep_boto3=False, requested=set(), kept_tests=set(), doc_dirs_without_init=set(), owner={})}
    descriptions.update(plan.descriptions)
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
                   "glibc": "%d.%d" % tgt.glibc, "kind": kind,
                   "limit_bytes": budget.limit_for(kind, options["tmp_size_mb"])},
        "mode": {"name": MODE_NAMES[(kind, sl)], "kind": kind, "sourceless": sl,
                 "chosen_by": "--fit" if options["fit"] else "options", "why": (state.get("fit") or {}).get("why"),
                 "sizes": state.get("modes")},
        "requirements": inp.requirements,
        "fallbacks": state.get("fallbacks", []),
        "packages": [
            {"name": d.name, "version": d.version, "bytes_before": before.get(d.name, 0),
             "bytes_after": after.get(d.name, 0),
             "removed": d.name in (trim.BUILD_TOOLS | trim.LAMBDA_PROVIDED) and after.get(d.name, 0) == 0}
            for d in sorted(dists.values(), key=lambda d: d.name)
        ],
        "provided_by_lambda": sorted(n for n in trim.LAMBDA_PROVIDED if n in dists and after.get(n, 0) == 0),
        "rules": rules,
        "rollbacks": plan.rollbacks,
        "bytecode": {"bytes_added": pyc_bytes, "invalidation": "unchecked-hash",
                     "sourceless": sl, "compiled": interp is not None, "column_positions": False},
        "sizes": {"raw": sum(plan.files.values()), "trimmed": size, "files": len(after_files),
                  "layer_zip": zip_size, "archive": arc_size},
        "packing": {"zstd_level": options["zstd_level"], "zip_level": options["zip_level"],
                    "artifacts": sorted(want)},
        "verified": {"ok": bool(options["verify"] and interp), "modules": checked,
                     "skipped": options["skip_imports"]},
        "glibc": glibc_summary,
        "installer": installed_by,
        "components": {"kept": plan.kept_components,
                       "trimmed": sorted(n for n in rules if n.startswith(components.PREFIX)),
                       "unlinked": {rel: sorted(n) for rel, n in sorted(plan.unlinked.items())},
                       "kept_libraries": plan.kept_libraries},
        "identical_files": {"hard_linked": len(linked), "bytes_stored_once": sum(linked.values())},
        "stage_seconds": dict(stages),
        "kept_test_files": sorted(plan.kept_tests),
        "lock_sha256": lock_hash,
        "content_hash": content,
        "files": {"site": layout.SITE, "layer_zip": layout.LAYER_ZIP if zip_size is not None else None,
                  "archive": layout.ARCHIVE if arc_size is not None else None, "lock": layout.LOCK},
    }


def _pack(site: str, tmp: str, want: set[str], options: dict[str, Any]) -> tuple[int | None, int | None, str]:
    """Write the artifacts ``want`` asks for; (zip size, archive size, the tree's content hash), None for an
    artifact not written. The hash is here because it reads every file too, beside the import check."""
    zip_size = arc_size = None
    if layout.LAYER_ZIP in want:
        zip_size = pack.write_zip(site, os.path.join(tmp, layout.LAYER_ZIP), level=options["zip_level"])
    if layout.ARCHIVE in want:
        arc_size = pack.write_tar_zst(site, os.path.join(tmp, layout.ARCHIVE), level=options["zstd_level"])
    return zip_size, arc_size, pack.content_hash(site)


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


def _verify(plan: trim.Plan, site: str, work: str, interp: str, options: dict[str, Any]) -> tuple[list[str], float]:
    """The import check with exact rollbacks (kept here for the Docker build stage, which calls it)."""
    return attribution.verify_tree(plan, site, work, interp, options)
