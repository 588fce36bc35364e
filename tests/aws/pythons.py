"""The machine's other Pythons, for running the emulated Lambda path under each.

Client and worker must run one Python minor version: a function travels as
cloudpickle bytecode, which only that minor version runs. So the tests that
matter for a version run both sides under it: the worker in the Runtime
Interface Emulator (``python -m awslambdaric``) and the client in a
subprocess. This module finds a version's interpreter and gives it a cached
virtual environment with the packages wrenpack needs there:

* ``worker``: the project's dependencies and ``awslambdaric`` (client and worker);
* ``tests``: the project's dependencies and its ``test`` extras (pytest, moto,
  rclone, ...), to run ``tests/aws`` itself under that Python.

wrenpack itself is not installed: the client and the emulated worker import it
from this checkout (``PYTHONPATH``, as the emulator already does), so a venv
never holds a stale copy and serves every worktree. A venv is kept under
``$WRENPACK_TEST_CACHE`` (default ~/.cache/wrenpack-test) as ``venv-X.Y`` or
``venv-X.Y-tests`` and rebuilt when its key changes: the interpreter (path
and full version) and the requirement list read from pyproject.toml. pip
installs from the index pip is configured with here.

From a shell, the venv's interpreter (built if need be)::

    python -m tests.aws.pythons 3.12 --flavor tests    # prints .../venv-3.12-tests/bin/python
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.aws.servers import CACHE, REPO, Unavailable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's own fallback (wrenpack/config.py)
    import tomli as tomllib

#: The Python minor versions Lambda runs that the tests try.
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
#: This interpreter's X.Y.
RUNNING = "%d.%d" % sys.version_info[:2]
FLAVORS = ("worker", "tests")
#: What a venv must import for each flavor (a check that the interpreter running the tests has them too).
_IMPORTS = {"worker": ("awslambdaric", "boto3", "cloudpickle", "psutil"),
            "tests": ("awslambdaric", "boto3", "cloudpickle", "psutil", "pytest", "moto")}
_KEY_FILE = ".wrenpack-key"


@dataclass(frozen=True)
class PythonEnv:
    """An interpreter of one Python version with a flavor's packages."""

    version: str
    python: str
    #: seconds it took to build the venv now; 0.0 when it was cached (or is this interpreter)
    built_s: float = 0.0


def _minor_of(exe: str) -> str | None:
    """The X.Y an executable reports, or None if it does not run (a pyenv shim with no such version exits 127)."""
    try:
        proc = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version_key(path: str) -> tuple[int, ...]:
    found = re.search(r"versions/(\d+)\.(\d+)\.(\d+)", path)
    return tuple(int(x) for x in found.groups()) if found else ()


def interpreter(version: str) -> str:
    """An interpreter of Python ``version`` (X.Y): this one, ``pythonX.Y`` on PATH, or
    pyenv's newest X.Y.Z; ``Unavailable`` says where it looked."""
    if version == RUNNING:
        return sys.executable
    candidates = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    for root in dict.fromkeys(r for r in roots if r):
        found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))
        candidates += sorted(found, key=_version_key, reverse=True)
    for exe in candidates:
        if _minor_of(exe) == version:
            return exe
    raise Unavailable(f"no Python {version} on this machine (looked for python{version} on PATH and in pyenv's versions/{version}.*)")


def requirements(flavor: str) -> list[str]:
    """The requirement strings of a flavor, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    test = list(project["optional-dependencies"]["test"])
    if flavor == "tests":
        return deps + test
    if flavor == "worker":
        return deps + [r for r in test if re.match(r"awslambdaric\b", r)]
    raise ValueError(f"unknown flavor {flavor!r}; one of {FLAVORS}")


def venv_dir(version: str, flavor: str) -> Path:
    return CACHE / (f"venv-{version}" if flavor == "worker" else f"venv-{version}-{flavor}")


def _key(exe: str, flavor: str) -> str:
    full = subprocess.run([exe, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, timeout=60).stdout
    doc = {"python": os.path.realpath(exe), "version": full.strip(), "flavor": flavor, "requirements": requirements(flavor)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _has_modules(exe: str, modules: tuple[str, ...]) -> bool:
    code = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    return subprocess.run([exe, "-c", code, *modules], capture_output=True, timeout=60).returncode == 0


def _tail(text: str) -> str:
    """The last line of pip's output that says something (not its notes about the index's missing folders)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln]
    return lines[-1][-300:] if lines else "no output"


def is_cached(version: str, flavor: str = "worker") -> bool:
    """Whether ``ensure`` would find the venv built (it checks the key; this only that one was finished)."""
    if version == RUNNING and flavor == "worker":
        return True
    return (venv_dir(version, flavor) / _KEY_FILE).exists()


def ensure(version: str, flavor: str = "worker") -> PythonEnv:
    """Python ``version`` with a flavor's packages: this interpreter when it is that
    version and has them, else the cached venv, built first when missing or stale.
    ``Unavailable`` when there is no such interpreter or pip cannot install a package."""
    if version == RUNNING and _has_modules(sys.executable, _IMPORTS[flavor]):
        return PythonEnv(version, sys.executable)
    exe = interpreter(version) if version != RUNNING else _base_interpreter()
    target = venv_dir(version, flavor)
    python = target / "bin" / "python"
    key = _key(exe, flavor)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same venv: wait, then use it
        key_file = target / _KEY_FILE
        if key_file.exists() and key_file.read_text() == key and python.exists():
            return PythonEnv(version, str(python))
        start = time.monotonic()
        shutil.rmtree(target, ignore_errors=True)
        made = subprocess.run([exe, "-m", "venv", str(target)], capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise Unavailable(f"`python{version} -m venv` failed: {_tail(made.stderr + made.stdout)}")
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements(flavor)],
                             capture_output=True, text=True, timeout=1800)
        if pip.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise Unavailable(f"pip could not install the {flavor} packages for Python {version}: {_tail(pip.stderr + pip.stdout)}")
        key_file.write_text(key)  # last: a venv without its key is unfinished and is built again
        return PythonEnv(version, str(python), round(time.monotonic() - start, 1))


def _base_interpreter() -> str:
    """The interpreter this one's venv (if any) was made from."""
    return getattr(sys, "_base_executable", None) or sys.executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.aws.pythons", description="Print (building it if need be) the "
                                     "interpreter of a cached venv for the emulated Lambda tests.")
    parser.add_argument("version", choices=VERSIONS)
    parser.add_argument("--flavor", choices=FLAVORS, default="worker")
    args = parser.parse_args(argv)
    try:
        env = ensure(args.version, args.flavor)
    except Unavailable as exc:
        print(f"pythons: error: {exc}", file=sys.stderr)
        return 1
    if env.built_s:
        print(f"built in {env.built_s} s", file=sys.stderr)
    print(env.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
