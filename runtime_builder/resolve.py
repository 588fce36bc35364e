"""Resolve and pin with pip-tools, for the Lambda target, into a hashed lock file.

The lock (``requirements.lock``) lists every distribution at one version with
the sha256 of all its files; installing from it with ``--require-hashes`` is
reproducible, so users commit it. An existing lock seeds the resolution, so
pins only move when the inputs need it (or with ``upgrade``).
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

from runtime_builder.targets import Target
from wrenpack.errors import BuildError, NoSuitableWheel

log = logging.getLogger(__name__)

_NO_DIST = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the requirement)\s+(\S+)")


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
    spec = {"python": target.python, "markers": target.marker_env()}
    cmd = [sys.executable, "-m", "runtime_builder._piptools_target", json.dumps(spec), "--",
           "--generate-hashes", "--quiet", "--no-header", "--strip-extras", "--allow-unsafe",
           "--no-emit-options", "--resolver=backtracking",
           "--pip-args", shlex.join(pip_args), "--output-file", os.path.basename(lock_out),
           os.path.basename(in_path)]
    if upgrade:
        cmd.append("--upgrade")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_parent(), env.get("PYTHONPATH", "")] if p)
    log.info("resolving %d requirements for %s with pip-compile", len(requirements_in.splitlines()), target.label)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise _explain(proc.stderr + proc.stdout, target, "resolving")
    with open(lock_out, encoding="utf-8") as f:
        return f.read()


def pins(lock_text: str) -> dict[str, str]:
    """name -> version from a lock file."""
    out = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def install(lock_path: str, dest: str, target: Target) -> None:
    """``pip install --target`` the target's wheels, exactly as locked."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
           "--no-compile", "--no-warn-script-location", "--disable-pip-version-check",
           "--target", dest, "-r", lock_path, *target.pip_args()]
    log.info("installing %s wheels into %s", target.label, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise _explain(proc.stderr + proc.stdout, target, "installing")


def _explain(output: str, target: Target, stage: str) -> BuildError:
    log.debug("pip output while %s:\n%s", stage, output)
    m = _NO_DIST.search(output)
    if m:
        req = m.group(1).rstrip(")")
        return NoSuitableWheel(
            f"no wheel of {req} for python{target.python} on manylinux {target.machine} "
            f"(glibc {target.glibc[0]}.{target.glibc[1]}): pin a version that ships one, or build it "
            f"in a Lambda image with --docker")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "WARNING" not in ln]
    last = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "unknown error")
    return BuildError(f"{stage} requirements failed: {last[:300]} (run with -v for pip's output)")


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
