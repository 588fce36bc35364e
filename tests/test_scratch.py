"""A program's scratch area of the store (``wrenpack.scratch()``).

probe16's finding 7: ``examples/sort.py`` killed with SIGKILL left its input and output
(2x ``--size``, in memory on the default /dev/shm store) under ``data/sort-<run>/``, and
``wrenpack clean --stale`` neither removed nor named them: nothing told them from the
user's own data. A scratch area lives in a job's folder with an owner record: it goes
with its program, and ``clean --stale`` removes a killed program's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import wrenpack
from wrenpack.errors import ConfigError, ConfigTypeError

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _stored(tmp_path: Path) -> list[str]:
    store = tmp_path / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.exists() else []


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wrenpack", *args], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60)


def _read(area, key):
    return area.get(key)


def _makes_one(x):
    return wrenpack.scratch("inside")


def test_an_area_is_a_store_handle_calls_can_use_and_close_removes_it(tmp_path):
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        area = wrenpack.scratch("demo", executor=ex)
        area.put("in/0", b"hello")
        assert area.list() == ["in/0"] and area.list("in/") == ["in/0"]
        assert wrenpack.remote(_read, executor=ex).remote(area, "in/0").result(timeout=60) == b"hello"
        assert wrenpack.store(ex).list() == []  # (not the user's data/)
        assert f"jobs/{area.id}/owner.json" in _stored(tmp_path)
        with pytest.raises(wrenpack.WrenpackError, match="a call cannot make a scratch area"):
            wrenpack.remote(_makes_one, executor=ex).remote(1).result(timeout=60)
        assert area.close() == 2 and area.close() == 0
    assert _stored(tmp_path) == []


@pytest.mark.parametrize("label, error", [(3, ConfigTypeError), ("x" * 101, ConfigError), ("a\nb", ConfigError)])
def test_a_bad_label_is_one_line_and_makes_nothing(tmp_path, label, error):
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        with pytest.raises(error) as got:
            wrenpack.scratch(label, executor=ex)
    assert "\n" not in str(got.value) and _stored(tmp_path) == []
    with pytest.raises(ConfigTypeError, match="must be a wrenpack.Executor"):
        wrenpack.scratch("x", executor=str(tmp_path))


_PROGRAM = textwrap.dedent("""
    import sys, time, wrenpack
    area = wrenpack.scratch("probe")
    area.put("part/0", b"x" * 1000)
    if sys.argv[1] == "keep":
        area.keep()
    print(area.id, flush=True)
    if sys.argv[1] == "wait":
        time.sleep(60)
""")


@pytest.mark.parametrize("how", ["exit", "keep", "sigterm", "sigkill"])
def test_an_area_goes_with_its_program_and_clean_stale_removes_a_killed_ones(tmp_path, how):
    script = tmp_path / "prog.py"
    script.write_text(_PROGRAM)
    proc = subprocess.Popen([sys.executable, str(script), "wait" if how.startswith("sig") else how],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    area_id = proc.stdout.readline().strip()
    if how.startswith("sig"):
        listed = _cli(tmp_path, "jobs", "--json")
        rows = json.loads(listed.stdout)
        rows = rows.get("jobs", rows) if isinstance(rows, dict) else rows
        assert any(r.get("id") == area_id and "scratch probe" in json.dumps(r) for r in rows), listed.stdout
        shown = _cli(tmp_path, "jobs", "show", area_id)
        assert shown.returncode == 1 and "is a program's scratch area" in shown.stderr, shown.stderr
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.communicate(timeout=60)
    left = _stored(tmp_path)
    if how in ("exit", "sigterm"):
        assert left == [], left
        return
    assert f"jobs/{area_id}/data/part/0" in left, left  # (SIGKILL: nothing can run; keep: asked for)
    deadline = time.monotonic() + 10
    while True:  # (the killed program's pid must be gone: its parent, this test, reaped it above)
        cleaned = _cli(tmp_path, "clean", "--stale")
        if _stored(tmp_path) == [] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cleaned.returncode == 0 and _stored(tmp_path) == [], (cleaned.stdout, cleaned.stderr, _stored(tmp_path))


def test_sort_killed_with_sigkill_leaves_what_clean_stale_removes(tmp_path):
    """probe16's finding 7 itself: its input and output were left for good."""
    pytest.importorskip("numpy")
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "sort.py"), "--size", "20MB", "--mappers", "4",
                             "--memory", "512"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("generated ")  # (its input is in the store now)
    proc.kill()
    proc.communicate(timeout=60)
    time.sleep(1)  # (its workers end a moment after it)
    assert any("/in/" in p for p in _stored(tmp_path)), _stored(tmp_path)
    cleaned = _cli(tmp_path, "clean", "--stale")
    assert cleaned.returncode == 0 and _stored(tmp_path) == [], (cleaned.stdout, _stored(tmp_path))
