"""Resolve and pin with pip-tools, for the Lambda target, into a hashed lock file.

The lock (``requirements.lock``) lists every distribution at one version with
the sha256 of all its files; installing from it with ``--require-hashes`` is
reproducible, so users commit it. An existing lock seeds the resolution, so
pins only move when the inputs need it (or with ``upgrade``).

Everything that needs pip's internals runs in ``_piptools_target`` (one
version-checked module, in a subprocess); this module turns pip's output into
one-line errors that say what to do.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from runtime_builder.inputs import index_args
from runtime_builder.targets import Target
from wrenpack.errors import BuildError, NoSuitableWheel

log = logging.getLogger(__name__)

_NO_DIST = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the requirement)\s+(\S+)")
_CANNOT = re.compile(r"Cannot install (.+?) because these package versions have conflicting dependencies")
MARKER = "WRENPACK-ERROR "
#: pip flags for look-ups that only inform a message: an index that does not answer costs seconds, not minutes
QUICK = ["--retries", "1", "--timeout", "15"]


class ResolveFailed(BuildError):
    """pip-compile could not produce a lock (``kind`` says why: conflict, unknown, no-wheel, other)."""

    def __init__(self, message: str, kind: str, name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


def _shim(mode: str, target: Target, args: list[str], *, cwd: str | None = None,
          extra_index_args: list[str] | None = None) -> subprocess.CompletedProcess:
    spec = {"python": target.python, "markers": target.marker_env(), "pip_args": target.pip_args(),
            "index_args": extra_index_args or []}
    cmd = [sys.executable, "-m", "runtime_builder._piptools_target", mode, json.dumps(spec), *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_parent(), env.get("PYTHONPATH", "")] if p)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def compile_lock(requirements_in: str, lock_out: str, target: Target, *, seed: str | None = None,
                 upgrade: bool = False, binary_only: bool = True) -> str:
    """Run pip-compile for ``target``; write and return the lock text."""
    work = os.path.dirname(lock_out)
    os.makedirs(work, exist_ok=True)
    in_path = os.path.join(work, "requirements.in")
    with open(in_path, "w", encoding="utf-8") as f:
        f.write(requirements_in)
    if seed and os.path.exists(seed) and not upgrade and os.path.abspath(seed) != os.path.abspath(lock_out):
        shutil.copyfile(seed, lock_out)
    pip_args = target.pip_args() if binary_only else [a for a in target.pip_args() if a != "--only-binary=:all:"]
    args = ["--", "--generate-hashes", "--quiet", "--no-header", "--strip-extras", "--allow-unsafe",
            "--no-emit-options", "--resolver=backtracking",
            "--pip-args", shlex.join(pip_args), "--output-file", os.path.basename(lock_out),
            os.path.basename(in_path)]
    if upgrade:
        args.append("--upgrade")
    log.info("resolving %d requirements for %s with pip-compile", len(requirements_in.splitlines()), target.label)
    proc = _shim("compile", target, args, cwd=work)
    if proc.returncode != 0:
        raise explain_resolve(proc.stderr + proc.stdout, target, index=index_args(requirements_in))
    with open(lock_out, encoding="utf-8") as f:
        return f.read()


@dataclass
class Pin:
    """One locked distribution: name, version and the packages that pulled it in (``# via``)."""

    name: str
    version: str
    via: list[str] = field(default_factory=list)


def parse_lock(lock_text: str) -> dict[str, Pin]:
    """The pins of a pip-compile lock (requirements parsed by ``packaging``), with their ``# via``."""
    out: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in lock_text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if current is not None and text.startswith("via"):
                rest = text[3:].strip()
                in_via = not rest
                if rest:
                    current.via.append(rest)
            elif current is not None and in_via and text and not text.startswith("-"):
                current.via.append(text.split()[0])
            continue
        if raw[:1].isspace() or line.startswith("-"):
            continue  # --hash continuation lines, options
        in_via = False
        spec = line.rstrip("\\").strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
        if exact:
            current = Pin(canonicalize_name(req.name), exact[0])
            out[current.name] = current
    return out


def pins(lock_text: str) -> dict[str, str]:
    """name -> version from a lock file."""
    return {n: p.version for n, p in parse_lock(lock_text).items()}


@dataclass
class Probe:
    """What the indexes offer for some names, and which index pages did not answer."""

    #: {name: {"target": versions with an installable file on the target, "any": all versions}}
    versions: dict[str, dict[str, list[str]]]
    #: index page URL -> why pip could not read it (connection refused, name not resolved...)
    unreachable: dict[str, str] = field(default_factory=dict)

    def unreachable_note(self) -> str:
        """``"; could not read https://x/simple/y/ (its host name does not resolve)"`` or ``""``."""
        if not self.unreachable:
            return ""
        return "; could not read " + ", ".join(f"{url} ({short_reason(why)})" for url, why in
                                               sorted(self.unreachable.items()))

    def index_down(self, index_url: str) -> str | None:
        """Why ``index_url`` (an index or find-links URL) did not answer, or None when it did."""
        base = index_url.rstrip("/")
        return next((short_reason(why) for url, why in self.unreachable.items() if url.startswith(base)), None)


def short_reason(why: str) -> str:
    """pip's connection error -> a few words (the full text is in the -v log)."""
    checks = (("NameResolution", "its host name does not resolve"),
              ("Name or service not known", "its host name does not resolve"),
              ("Temporary failure in name resolution", "its host name does not resolve"),
              ("Connection refused", "connection refused"), ("timed out", "timed out"),
              ("Network is unreachable", "network unreachable"), ("SSL", "a TLS certificate problem"),
              ("ProxyError", "the proxy refused it"))
    return next((words for key, words in checks if key in why), why.splitlines()[0][:120] if why else "no answer")


def probe(names: list[str], target: Target, index: list[str] | None = None) -> Probe:
    """Versions of ``names`` on pip's configured indexes plus ``index`` (pip index flags), quickly."""
    if not names:
        return Probe({})
    proc = _shim("versions", target, list(names), extra_index_args=list(index or []) + QUICK)
    if proc.returncode != 0:
        log.debug("version query failed: %s", proc.stderr[-2000:])
        raise BuildError(f"could not list the versions of {', '.join(names)} on the package index: "
                         f"{_last_error(proc.stderr)}; check the network and the index settings")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    for url, why in data["unreachable"].items():
        log.debug("index page %s could not be read: %s", url, why)
    return Probe(data["versions"], data["unreachable"])


def target_versions(names: list[str], target: Target) -> dict[str, dict[str, list[str]]]:
    """{name: {"target": versions with an installable file on the target, "any": all versions}}."""
    return probe(names, target).versions


def wheel_sizes(locked: dict[str, str], target: Target) -> dict[str, int | None]:
    """Bytes of the wheel each pin installs on the target (None where the index does not say)."""
    return {n: w.get("size") for n, w in select_wheels(locked, target).items()}


def select_wheels(locked: dict[str, str], target: Target, index: list[str] | None = None) -> dict[str, dict]:
    """``{name: {"size": bytes | None, "url": URL | None}}``: the file ``pip install`` would pick for each pin.

    One look-up serves the size check and the installer: uv is then handed
    these exact files, so it installs what pip would have (uv's platform
    names skip glibc 2.18-2.27, which would otherwise change the choice).
    An empty answer means the query failed (the caller falls back to pip).
    """
    if not locked:
        return {}
    proc = _shim("select", target, [f"{n}=={v}" for n, v in sorted(locked.items())],
                 extra_index_args=list(index or []))
    if proc.returncode != 0:
        log.debug("wheel query failed: %s", proc.stderr[-2000:])
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lock_hashes(lock_text: str) -> dict[str, list[str]]:
    """Canonical name -> the ``sha256:...`` hashes the lock allows for it."""
    return _hash_options(lock_text, r"--hash[= ](sha256:[0-9a-fA-F]{64})")


def lock_hash_counts(lock_text: str) -> dict[str, int]:
    """Canonical name of every requirement line -> how many ``--hash`` options it has (any algorithm pip takes)."""
    return {name: len(found) for name, found in _hash_options(lock_text, r"--hash[= ](\w+:[0-9a-fA-F]+)").items()}


def _hash_options(lock_text: str, pattern: str) -> dict[str, list[str]]:
    """Canonical name of every requirement line of a pip lock -> what ``pattern`` finds in
    it and in its continuation lines (its ``--hash`` options)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for raw in lock_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw[:1].isspace() and not line.startswith("-"):
            spec = line.rstrip("\\").split("--hash")[0].strip()
            try:
                current = canonicalize_name(Requirement(spec).name)
            except InvalidRequirement:
                current = None
        if current:
            out.setdefault(current, []).extend(re.findall(pattern, line))
    return out


def local_label(version: str) -> str | None:
    """``"2.6.0+cpu"`` -> ``"cpu"``; None for a version without a local label (or not a version)."""
    try:
        return Version(version).local
    except InvalidVersion:
        return None


def newest(versions: list[str]) -> str | None:
    def key(v: str) -> tuple[int, Version | str]:
        try:
            return (1, Version(v))
        except InvalidVersion:
            return (0, v)

    good = [v for v in versions if key(v)[0]]
    return max(good, key=key) if good else None


def install(lock_path: str, dest: str, target: Target) -> None:
    """``pip install --target`` the target's wheels, exactly as locked."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
           "--no-compile", "--no-warn-script-location", "--disable-pip-version-check",
           "--target", dest, "-r", lock_path, *target.pip_args()]
    log.info("installing %s wheels into %s", target.label, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        with open(lock_path, encoding="utf-8") as f:
            index = index_args(f.read())
        raise explain_resolve(proc.stderr + proc.stdout, target, stage="installing", index=index)


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith(MARKER)
             and "WARNING" not in ln]
    return next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "unknown error")[:300]


def explain_resolve(output: str, target: Target, stage: str = "resolving", index: list[str] | None = None) -> BuildError:
    """pip's output -> one line: a conflict, a package that does not exist, no wheel for the target, or other.

    ``index``: the requirements' own index flags, looked at with pip's configured
    indexes. A version with a local label (``torch==2.6.0+cpu``) is only ever
    replaced by one with the same label: the unlabelled release is another
    build (for torch, the GPU one), so suggesting it would send the user back.
    """
    log.debug("pip output while %s:\n%s", stage, output)
    lines = output.splitlines()
    cannot = next((m for m in map(_CANNOT.search, lines) if m), None)
    if cannot:
        causes = []
        for i, ln in enumerate(lines):
            if ln.strip().startswith("The conflict is caused by"):
                for nxt in lines[i + 1:]:
                    if not nxt.strip() or not nxt.startswith((" ", "\t")):
                        break
                    causes.append(nxt.strip())
                break
        why = f": {'; '.join(causes)}" if causes else ""
        return ResolveFailed(f"conflicting requirements: pip cannot install {cannot.group(1)} together{why}; "
                             f"fix: relax or drop one of these pins", "conflict")
    m = _NO_DIST.search(output)
    if m:
        spec = m.group(1).rstrip(")")
        labels: set[str] = set()
        pinned: str | None = None
        try:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            labels = {lbl for lbl in (local_label(s.version) for s in req.specifier) if lbl}
            pinned = next((s.version for s in req.specifier if s.operator in ("==", "===")), None)
        except InvalidRequirement:
            name = canonicalize_name(re.split(r"[<>=!~;\[ ]", spec)[0])
        where = f"python{target.python} on manylinux {target.machine} (glibc {target.glibc[0]}.{target.glibc[1]})"
        try:
            looked = probe([name], target, index)
            found: dict[str, list[str]] | None = looked.versions.get(name, {"target": [], "any": []})
        except BuildError:
            looked, found = Probe({}), None
        unread = looked.unreachable_note()
        if found is not None and not found["any"]:
            if unread:
                return ResolveFailed(f"no index pip reached has {name!r}{unread}; fix: check the network and the index "
                                     f"URLs (--index-url/--extra-index-url in the requirements file or pip config)",
                                     "unreachable", name)
            return ResolveFailed(f"package {name!r} does not exist on the package index (no release of any version); "
                                 f"fix: check the spelling of {spec!r}, or the --index-url in your pip config",
                                 "unknown", name)
        candidates = found["target"] if found else []
        if labels:
            candidates = [v for v in candidates if local_label(v) in labels]
        best = newest(candidates)
        plus = "/".join(f"+{lbl}" for lbl in sorted(labels))
        why = ""
        # A pin of a version the index never released is no missing wheel: the distribution installed here came
        # from elsewhere (the user's own or an editable project), and the index's project of that name may be
        # another one entirely (pipeline._resolve must not swap it in).
        released = None if pinned is None or found is None else _released(pinned, found["any"])
        if released is False:
            what = f"the index has no release {pinned} of {name}"
        if labels and not best:
            why = (f", and no {plus} build of {name} has one on the indexes pip reached (a version without {plus} is "
                   f"another build: do not drop the {plus})")
            fix = (f"make the index with the {plus} builds reachable (or name a mirror of it with --extra-index-url "
                   f"in the requirements file), or choose another --python")
        elif unread:
            # What the silent index holds is unknown, and pip-compile may not have looked where the probe did
            # (a requirements file's --index-url replaces the configured indexes): pinning is no fix here.
            fix = ("make the index that did not answer reachable (what it holds is unknown), then build again"
                   + (f"; the indexes that answered have {name} {best} with one" if best else ""))
        elif best and pinned is not None and _released(best, [pinned]):
            fix = ("the index has that version with a wheel for the target, yet pip did not install it: "
                   "run with -v for pip's output")
        elif best:
            fix = f"the newest version with one is {best}: pin {name}=={best}, or build it in a Lambda image with --docker"
        else:
            fix = "no version has one: build it in a Lambda image with --docker"
        head = what if released is False else f"no wheel of {spec} for {where}"
        err = NoSuitableWheel(f"{head}{unread}{why}; fix: {fix}")
        err.kind = "no-wheel"  # type: ignore[attr-defined]
        err.name = name  # type: ignore[attr-defined]
        err.newest = best  # type: ignore[attr-defined]
        err.pinned = pinned  # type: ignore[attr-defined]
        err.released = released  # type: ignore[attr-defined]
        return err
    for ln in lines:
        if ln.startswith(MARKER):
            try:
                info = json.loads(ln[len(MARKER):])
            except ValueError:
                continue
            if info.get("type") == "Unsupported":
                return ResolveFailed(f"the resolver cannot run: {info['message']}", "unsupported")
    return ResolveFailed(f"{stage} requirements failed: {_last_error(output)} (run with -v for pip's output)", "other")


def _released(version: str, versions: list[str]) -> bool:
    """Whether ``version`` is one of the index's ``versions`` (compared as versions: 1.0 is 1.0.0)."""
    try:
        want = Version(version)
    except InvalidVersion:
        return version in versions
    for v in versions:
        try:
            if Version(v) == want:
                return True
        except InvalidVersion:
            continue
    return False


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
