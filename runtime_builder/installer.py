"""Install a lock's wheels into a directory: uv when it is there, pip otherwise.

pip downloads and unpacks one wheel at a time; uv does both in parallel and
is an order of magnitude faster on a cold cache. Which file each pin installs
is still pip's choice: the size check already asked pip's finder, for the
target (its Python, architecture and every manylinux tag up to its glibc),
which file ``pip install`` would take, and uv is handed exactly those URLs
with the lock's hashes (``--require-hashes``). So uv never picks another file
than pip would (its platform names skip glibc 2.18-2.27, so left to itself it
would, for Amazon Linux 2), and the lock is enforced the same way.

``WRENPACK_INSTALLER`` chooses: ``auto`` (default: uv when found, pip when not,
or when uv fails), ``uv`` (uv or an error) or ``pip``. ``WRENPACK_UV`` names a
uv binary; else the ``uv`` package's binary (``pip install wrenpack[fast]``),
else ``uv`` on PATH.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from functools import lru_cache

from runtime_builder import resolve
from runtime_builder.targets import Target
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

INSTALLERS = ("auto", "uv", "pip")
#: the manylinux glibc minors uv's ``--python-platform`` names (2.17, then 2.28 and up)
UV_MANYLINUX = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


def choice(explicit: str | None = None) -> str:
    """``explicit`` (``--installer``), else ``$WRENPACK_INSTALLER``, else ``auto``."""
    if explicit:
        value = explicit.strip().lower()
        if value not in INSTALLERS:
            raise BuildError(f"unknown installer {value!r}; fix: pass --installer auto, uv or pip")
        return value
    value = (os.environ.get("WRENPACK_INSTALLER") or "auto").strip().lower()
    if value not in INSTALLERS:
        raise BuildError(f"WRENPACK_INSTALLER={value!r} is not an installer; fix: set it to auto, uv or pip")
    return value


def find_uv() -> str | None:
    """The uv binary to use, or None: ``$WRENPACK_UV``, the ``uv`` package's binary, then ``uv`` on PATH."""
    named = os.environ.get("WRENPACK_UV")
    if named:
        return named if os.access(named, os.X_OK) else None
    try:
        import uv  # the optional dependency: a wheel that carries the binary

        path = uv.find_uv_bin()
        if path and os.access(path, os.X_OK):
            return path
    except (ImportError, FileNotFoundError, AttributeError):
        pass
    return shutil.which("uv")


@lru_cache(maxsize=8)
def uv_version(uv: str) -> str:
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "uv"
    return " ".join(out[:2]) if out else "uv"


def uv_platform(target: Target) -> str:
    """uv's name of a platform that accepts every wheel the target accepts (pip already chose the files)."""
    minor = target.glibc[1]
    best = next((m for m in UV_MANYLINUX if m >= minor), UV_MANYLINUX[-1])
    return f"{target.machine}-manylinux_2_{best}"


def uv_requirements(lock_text: str, wheels: dict[str, dict]) -> str | None:
    """``name @ URL --hash=...`` for every pin of the lock, or None when pip's choice of a file is unknown.

    The hash is the chosen file's, and it must be one the lock lists for that pin.
    """
    pins = resolve.pins(lock_text)
    hashes = resolve.lock_hashes(lock_text)
    lines = []
    for name in sorted(pins):
        chosen = wheels.get(name) or {}
        url, digest = chosen.get("url"), f"sha256:{chosen.get('sha256')}"
        if not url or digest not in hashes.get(name, ()):
            # pip will install (and check) it; a file whose hash the lock lacks fails there, as before
            log.info("uv not used: pip's file for %s==%s is %s", name, pins[name],
                     "not known" if not url else "not one the lock lists")
            return None
        lines.append(f"{name} @ {url} --hash={digest}")
    return "".join(line + "\n" for line in lines)


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    cert = env.get("PIP_CERT")
    if cert and "SSL_CERT_FILE" not in env:  # the CA bundle pip is told to trust (a proxy's), for uv too
        env["SSL_CERT_FILE"] = cert
    return env


def install_uv(uv: str, requirements: str, work: str, dest: str, target: Target) -> None:
    path = os.path.join(work, "uv-requirements.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(requirements)
    # Files hard-linked from uv's cache (its default on Linux, named so a UV_LINK_MODE=symlink cannot put
    # links where the trim expects files). Safe here because no step of the build writes into an installed
    # file (trim links or strips into new files, rollbacks replace them); the output directory gets copies.
    # A cache on another file system makes uv copy instead.
    cmd = [uv, "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--no-build", "--no-config",
           "--link-mode", "hardlink", "--python", sys.executable, "--python-version", target.python,
           "--python-platform", uv_platform(target), "--target", dest, "-r", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_uv_env())
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise BuildError(f"uv could not install the lock: {' '.join(lines[-3:])[:400]}")
    lock = os.path.join(dest, ".lock")  # uv's own lock file for the target directory: not part of the runtime
    if os.path.isfile(lock) and os.path.getsize(lock) == 0:
        os.unlink(lock)


def install(lock_path: str, dest: str, target: Target, wheels: dict[str, dict] | None = None,
            how: str | None = None) -> str:
    """Install the lock into ``dest``; return which installer did (``"uv 0.x.y"`` or ``"pip"``).

    ``wheels``: the size check's answer (:func:`resolve.select_wheels`); without
    it, or when a pin has no known file, pip installs. With ``auto``, a uv that
    fails (a TLS setup only pip is configured for, say) is logged and pip runs.
    """
    how = choice(how)
    uv = find_uv() if how != "pip" else None
    if how == "uv" and uv is None:
        raise BuildError("WRENPACK_INSTALLER=uv but no uv was found; fix: pip install uv (or wrenpack[fast]), "
                         "set WRENPACK_UV to its path, or unset WRENPACK_INSTALLER")
    if uv is not None:
        with open(lock_path, encoding="utf-8") as f:
            reqs = uv_requirements(f.read(), wheels or {})
        if reqs is None and how == "uv":
            raise BuildError("WRENPACK_INSTALLER=uv but pip's choice of a wheel is unknown for some pin (the index "
                             "query failed); fix: check the index, or set WRENPACK_INSTALLER=pip")
        if reqs is not None:
            try:
                log.info("installing %s wheels into %s with %s", target.label, dest, uv_version(uv))
                install_uv(uv, reqs, os.path.dirname(dest), dest, target)
                return uv_version(uv)
            except BuildError as exc:
                if how == "uv":
                    raise
                log.warning("%s; installing with pip instead", exc)
                shutil.rmtree(dest, ignore_errors=True)
    resolve.install(lock_path, dest, target)
    return "pip"
