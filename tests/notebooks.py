"""A Jupyter kernel of this interpreter for the tests that run a notebook
(the progress display, the job report's inline HTML)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the kernel ``local_kernel`` installs
KERNEL = "wrenpack-test"


def local_kernel(tmp_path: Path, monkeypatch: Any) -> tuple[Any, Any]:
    """(nbformat, nbclient), with a kernelspec of our own (``KERNEL``: this
    interpreter through ipykernel, so a system-wide "python3" never runs
    instead) whose Jupyter and IPython files, and wrenpack store, go to the
    test's directory; skips without nbformat, nbclient or ipykernel."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[test]')")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wrenpack test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    monkeypatch.setenv("WRENPACK_CONCURRENCY", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return nbformat, nbclient
