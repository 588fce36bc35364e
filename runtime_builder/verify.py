"""Prove the runtime imports: each module in a fresh, isolated interpreter.

``python -I -S -B`` ignores PYTHON* variables, the user's and the system's
site-packages and the current directory, so ``sys.path`` is the standard
library only; we prepend the runtime (and, after it, stand-ins for what the
Lambda runtime itself provides, e.g. boto3). A module that imports here
imports on Lambda, with the same files.
"""
from __future__ import annotations

import json
import keyword
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

_SCRIPT = r"""
import importlib, json, sys, time, traceback
a = json.loads(sys.argv[1])
sys.path[:0] = [a["root"]]
sys.path += a["extra"]
out = {}
t0 = time.perf_counter()
for m in a["modules"]:
    try:
        importlib.import_module(m)
        out[m] = None
    except BaseException as e:
        tb = traceback.extract_tb(e.__traceback__)
        out[m] = {"type": type(e).__name__, "message": str(e).splitlines()[0][:400] if str(e) else "",
                  "name": getattr(e, "name", None), "filename": getattr(e, "filename", None),
                  "files": [f.filename for f in tb]}
with open(a["report"], "w") as f:
    json.dump({"results": out, "seconds": time.perf_counter() - t0}, f)
"""


@dataclass
class Failure:
    module: str
    type: str
    message: str
    name: str | None
    filename: str | None
    files: list[str]

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


def top_level_modules(root: str) -> list[str]:
    """Importable top-level names in a runtime directory."""
    names = set()
    for entry in os.listdir(root):
        full = os.path.join(root, entry)
        if entry.endswith((".dist-info", ".libs", ".data", ".egg-info")) or entry == "__pycache__":
            continue
        if os.path.isdir(full):
            if not os.path.exists(os.path.join(full, "__init__.py")) and \
                    not os.path.exists(os.path.join(full, "__init__.pyc")):
                continue
            name = entry
        elif entry.endswith((".py", ".pyc")):
            name = entry.rsplit(".", 1)[0]
        elif entry.endswith(".so"):
            name = entry.split(".", 1)[0]
        else:
            continue
        if name.isidentifier() and not keyword.iskeyword(name):
            names.add(name)
    return sorted(names)


def check_imports(python: str, root: str, modules: list[str], extra_path: list[str] | None = None,
                  timeout: float = 600) -> tuple[dict[str, Failure], float]:
    """Import ``modules`` with only ``root`` (+ stdlib, + ``extra_path``) visible.

    Returns the failures and the seconds the imports took. A crash of the
    interpreter (segfault in an extension) is retried one module per process
    so the culprit is named.
    """
    failures, seconds = _run(python, root, modules, extra_path or [], timeout)
    if failures is None:
        failures, seconds = {}, 0.0
        for m in modules:
            one, s = _run(python, root, [m], extra_path or [], timeout)
            seconds += s
            if one is None:
                failures[m] = Failure(m, "Crash", "the interpreter died importing it", None, None, [])
            else:
                failures.update(one)
    return failures, seconds


def _run(python: str, root: str, modules: list[str], extra: list[str],
         timeout: float) -> tuple[dict[str, Failure] | None, float]:
    with tempfile.TemporaryDirectory(prefix="wrenpack-verify-") as tmp:
        report = os.path.join(tmp, "report.json")
        args = {"root": root, "extra": extra, "modules": modules, "report": report}
        proc = subprocess.run([python, "-I", "-S", "-B", "-c", _SCRIPT, json.dumps(args)], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if not os.path.exists(report):
            log.debug("verify interpreter exited %s: %s", proc.returncode, proc.stderr[-2000:])
            return None, 0.0
        with open(report) as f:
            data = json.load(f)
    out = {m: Failure(m, **r) for m, r in data["results"].items() if r is not None}
    return out, float(data["seconds"])


def extension_modules(root: str) -> list[str]:
    """Dotted names of compiled extension modules inside packages (``pkg/_ext.cpython-311-....so``).

    Many packages fall back to pure Python when their extension fails to load
    (msgpack, markupsafe), so importing only the package would hide a broken
    ``.so``; importing the extension itself does not.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if parts and (not all(p.isidentifier() for p in parts) or
                      not os.path.exists(os.path.join(root, parts[0], "__init__.py")) and
                      not os.path.exists(os.path.join(root, parts[0], "__init__.pyc"))):
            dirnames[:] = []
            continue
        for fn in filenames:
            if fn.endswith(".so") and "." in fn[:-3]:
                name = fn.split(".", 1)[0]
                if name.isidentifier() and parts:
                    out.append(".".join(parts + [name]))
    return sorted(out)
