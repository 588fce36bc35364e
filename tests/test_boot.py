"""The interpreters wrenpack starts with ``python -c`` do not import the standard
library from the user's working directory (``wrenpack.boot.NO_CWD``)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRIVER = """
import os, sys, wrenpack
@wrenpack.remote(memory=256, timeout=60)
def f(x):
    import json
    return x + 1, json.__file__ == os.path.join(os.getcwd(), "json.py"), os.environ.get("PYTHONPATH")
print(wrenpack.get(f.map([1, 2])))
job = f.spawn_map([3], retention="1h")
print(job.results(timeout=60))
"""


@pytest.fixture
def project(tmp_path):
    """A project folder holding modules named like the standard library's: a worker,
    runner or supervisor that imported one of them dies at its first line."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("json", "socket", "signal"):
        (folder / f"{name}.py").write_text("raise SystemExit('the project\\'s own module was imported')\n")
    (folder / "mymod.py").write_text("def fn(n=1):\n    return n\n")
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_") and k != "PYTHONPATH"}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_CACHE_DIR=str(tmp_path / "cache"),
               WRENPACK_PROFILE_DIR=str(tmp_path / "profiles"), WRENPACK_PROGRESS="false", PYTHONPATH=REPO)
    return folder, env


def test_a_json_py_in_the_working_directory_does_not_break_the_workers(project, tmp_path):
    """Every local worker started from a folder holding a json.py died at start ("worker
    process died... crash in native code"): its boot line imported json with the working
    directory first on sys.path. A spawned job's calls also saw a PYTHONPATH the user never set."""
    folder, env = project
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py")], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the driver is a script elsewhere, so its own path does not hold json.py, and neither do its calls'
    # (and the PYTHONPATH the user set, this checkout, as it is: a spawned job's supervisor added its own)
    assert proc.stdout.splitlines() == [f"[(2, False, {REPO!r}), (3, False, {REPO!r})]", f"[(4, False, {REPO!r})]"], \
        proc.stdout


def test_profile_of_a_function_in_a_folder_holding_a_json_py(project):
    """``wrenpack profile mymod:fn`` there blamed the function ("os._exit() in the call?")."""
    folder, env = project
    # (the installed command, as users run it: ``python -m wrenpack`` would put the folder first itself)
    command = os.path.join(os.path.dirname(sys.executable), "wrenpack")
    if not os.path.exists(command):
        pytest.skip(f"no installed wrenpack command beside {sys.executable}")
    proc = subprocess.run([command, "profile", "mymod:fn", "--no-save", "--json"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"peak_memory_mb"' in proc.stdout or "peak" in proc.stdout
