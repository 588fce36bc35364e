"""Hash-based .pyc for cold start.

Importing numpy+scipy+pandas+sklearn from sources costs seconds of compiling
on every cold start; shipped bytecode removes that. Timestamp-based .pyc
would be invalidated by zip/tar timestamps, so we write unchecked hash-based
.pyc: the runtime is immutable once built. The compile runs in the target
interpreter (bytecode is version specific) with a fixed hash seed so that the
output bytes are reproducible (frozenset constants follow string hashes).

The bytecode holds no column positions (``-X no_debug_ranges``, Python 3.11+):
they only draw the ``^^^^`` under the failing expression of a traceback line,
and they are 5% of the bytecode (0.8 MiB of pandas + pyarrow + numpy). File,
line and source line are all still there; the code is the same.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess

from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

PYC_PREFIX = "/opt/python"

_SCRIPT = r"""
import compileall, json, os, py_compile, sys
a = json.loads(sys.argv[1])
mode = py_compile.PycInvalidationMode[a["mode"]]
root = a["root"]
if a.get("files"):
    bad = []
    for rel in a["files"]:
        if not compileall.compile_file(os.path.join(root, rel), quiet=2, invalidation_mode=mode,
                                       stripdir=root, prependdir=a["prefix"], legacy=a["legacy"]):
            bad.append(rel)
else:
    compileall.compile_dir(root, quiet=2, workers=0, invalidation_mode=mode, stripdir=root,
                           prependdir=a["prefix"], legacy=a["legacy"])
"""


def compile_tree(python: str, root: str, *, sourceless: bool = False, files: list[str] | None = None,
                 mode: str = "UNCHECKED_HASH") -> int:
    """Compile .py under ``root`` (or just ``files``); return bytes of bytecode added.

    With ``sourceless`` each ``x.py`` becomes ``x.pyc`` beside it and the source is removed
    (only where compiling succeeded).
    """
    before = _tree_size(root)
    args = {"root": root, "mode": mode, "legacy": sourceless, "prefix": PYC_PREFIX,
            "files": [f for f in (files or []) if f.endswith(".py")]}
    if files is not None and not args["files"]:
        return 0
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONNODEBUGRANGES="1")  # (inherited by compileall's workers)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([python, "-s", "-c", _SCRIPT, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise BuildError(f"compiling bytecode with {python} failed (exit {proc.returncode}): "
                         f"{lines[-1] if lines else 'no message'}; fix: check that interpreter runs (`{python} -V`)")
    if sourceless:
        for dirpath, _, filenames in os.walk(root):
            for fn in filenames:
                if fn.endswith(".py") and os.path.exists(os.path.join(dirpath, fn + "c")):
                    os.unlink(os.path.join(dirpath, fn))
    return _tree_size(root) - before


def _tree_size(root: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            total += os.path.getsize(os.path.join(dirpath, fn))
    return total
