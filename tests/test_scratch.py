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
        assert any(r.get("id") == area_id and r.get("kind") == "scratch" and r.get("function") == "scratch probe"
                   for r in rows), listed.stdout
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


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=["sigkill", "sigterm", "sighup"])
def test_sort_killed_leaves_nothing_or_what_clean_stale_removes(tmp_path, signum):
    """probe16's finding 7 itself: its input and output were left for good. SIGTERM and
    SIGHUP: wrenpack's handler removes them before the signal ends the program (the
    example once had a handler of its own for SIGTERM); SIGKILL: ``clean --stale`` does."""
    pytest.importorskip("numpy")
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "sort.py"), "--size", "20MB", "--mappers", "4",
                             "--memory", "512"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("generated ")  # (its input is in the store now)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signum, err
    if signum != signal.SIGKILL:
        assert _stored(tmp_path) == [] and "Traceback" not in err, err
        return
    time.sleep(1)  # (its workers end a moment after it)
    assert any("/in/" in p for p in _stored(tmp_path)), _stored(tmp_path)
    cleaned = _cli(tmp_path, "clean", "--stale")
    assert cleaned.returncode == 0 and _stored(tmp_path) == [], (cleaned.stdout, _stored(tmp_path))


def test_a_closed_area_refuses_every_use_in_one_line(tmp_path):
    """probe18's finding 1: a closed area went on taking put/get/list, and what was written then stayed."""
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        with wrenpack.scratch("x", executor=ex) as area:
            area.put("a", b"1")
        for use in (lambda: area.put("b", b"2"), lambda: area.get("a"), lambda: area.list(), lambda: area.exists("a"),
                    lambda: area.objects(), lambda: area.delete_prefix("a"), lambda: area.delete("a")):
            with pytest.raises(wrenpack.StoreError, match=f"the scratch area {area.id} is closed.*wrenpack.scratch") as got:
                use()
            assert "\n" not in str(got.value)
        kept = wrenpack.scratch("kept", executor=ex)
        kept.put("a", b"1")
        kept.keep()
        kept.put("b", b"2")  # (kept: still usable, and close() still removes it)
        assert kept.close() == 3
    assert _stored(tmp_path) == []


_WRITES_WHILE_CLOSED = textwrap.dedent("""
    import sys, time, wrenpack

    def write(area, i):
        time.sleep(0.3)
        area.put(f"part/{i}", b"x" * 100)
        return i

    try:
        with wrenpack.scratch("closing") as area:
            futures = [wrenpack.remote(write).remote(area, i) for i in range(8)]
            raise RuntimeError("the with block ends while its calls write")
    except RuntimeError:
        pass
    print(area.id, flush=True)
    time.sleep(float(sys.argv[1]))
""")


@pytest.mark.parametrize("linger", ["0", "1.5"])
def test_what_calls_write_into_a_closed_area_goes_at_exit(tmp_path, linger):
    """probe18's finding 1: a with block ended by an exception while its calls wrote into the
    area left their objects, with no owner record (clean --stale kept them for good). Closed
    while calls run, the area keeps its owner record until the program ends, which removes
    what they wrote; the program's exit stops them first."""
    script = tmp_path / "prog.py"
    script.write_text(_WRITES_WHILE_CLOSED)
    out = subprocess.run([sys.executable, str(script), linger], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert _stored(tmp_path) == [], _stored(tmp_path)


def _uses_area(x, area):
    return x


def test_a_spawned_job_cannot_take_an_area_that_goes_with_the_program(tmp_path, monkeypatch):
    """probe18's finding 4: spawn_map took one, and its calls wrote into it after the program removed it."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        with wrenpack.scratch("x", executor=ex) as area:
            with pytest.raises(wrenpack.WrenpackError, match="an argument is a scratch area.*spawned job outlives") as got:
                wrenpack.remote(_uses_area, executor=ex).spawn_map([1, 2], area=area)
            assert "\n" not in str(got.value)
    assert _stored(tmp_path) == []


_THREAD_FIRST = textwrap.dedent("""
    import threading, time, wrenpack
    made = []
    t = threading.Thread(target=lambda: made.append(wrenpack.scratch("in a thread")))
    t.start(); t.join()
    made[0].put("a", b"1")
    second = wrenpack.scratch("main")
    second.put("b", b"2")
    print("ready", flush=True)
    time.sleep(60)
""")


def test_sigterm_removes_areas_when_the_first_was_made_in_a_thread(tmp_path):
    """probe18's finding 5: the first area made in a thread marked the exit hooks as in place, and
    SIGTERM's handler (which only the main thread can install) never was: SIGTERM left them all."""
    script = tmp_path / "prog.py"
    script.write_text(_THREAD_FIRST)
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM and _stored(tmp_path) == [], _stored(tmp_path)


_IN_CHILDREN = textwrap.dedent("""
    import multiprocessing, sys, wrenpack

    def child(_):
        area = wrenpack.scratch("child")
        area.put("a", b"1")
        return area.id

    if __name__ == "__main__":
        mine = wrenpack.scratch("parent")
        mine.put("p", b"1")
        ctx = multiprocessing.get_context(sys.argv[1])
        p = ctx.Process(target=child, args=(0,)); p.start(); p.join()
        with ctx.Pool(2) as pool:
            pool.map(child, range(2))
        assert mine.list() == ["p"], mine.list()  # (the children's exits left the parent's area alone)
        print("ok", flush=True)
""")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_areas_made_in_multiprocessing_children_go_with_them(tmp_path, method):
    """probe18's finding 6: a multiprocessing child ends with os._exit, which runs no atexit hook:
    its areas stayed (until a clean --stale)."""
    script = tmp_path / "prog.py"
    script.write_text(_IN_CHILDREN)
    out = subprocess.run([sys.executable, str(script), method], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert _stored(tmp_path) == [], _stored(tmp_path)


def test_where_calls_may_write_after_the_program_its_exit_leaves_the_record_for_clean_stale(tmp_path, monkeypatch):
    """probe18's finding 2: on Lambda, calls the program cannot stop wrote into an area after its
    exit removed it, and clean --stale removed the area at once (no late-write window, unlike a
    job's), so what they wrote after stayed for good. Such an area's record carries Lambda's window
    (``late_s``), and an exit while its calls ran leaves the record, as a job's, for clean --stale."""
    from wrenpack.executor.owner import owner_state
    from wrenpack.storage import scratch as scratch_module
    from wrenpack.wire import owner as owner_wire

    monkeypatch.setattr(scratch_module, "_late_writes_s", lambda executor: 900.0)
    with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
        area = wrenpack.scratch("lambda-like", executor=ex)
        area.put("a", b"1")
        record = owner_wire.loads((tmp_path / "store" / "jobs" / area.id / "owner.json").read_bytes())
        assert record["late_s"] == 900.0 and record["kind"] == "scratch"
        assert owner_state(area.id, record, None)  # (a record the store's tools read as a job's)
        scratch_module.close_all(late_writes=True)
        assert _stored(tmp_path) == [f"jobs/{area.id}/owner.json"]
        with pytest.raises(wrenpack.StoreError, match="is closed"):
            area.put("b", b"2")
        scratch_module._exited_in = None  # (this test's process goes on making areas)
    (tmp_path / "store" / "jobs" / area.id / "owner.json").unlink()
