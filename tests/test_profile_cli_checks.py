"""``wrenpack profile``: bad options and targets it cannot measure are refused in one line before the function
runs; what it leaves behind (nothing in /tmp) and where it caches (WRENPACK_CACHE_DIR)."""
from __future__ import annotations

import pytest

from wrenpack.cli import main as cli_main


@pytest.fixture
def targets(tmp_path, monkeypatch):
    """A module of targets that mark a file when they run."""
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))
    marker = tmp_path / "ran"
    mod = tmp_path / "tgt.py"
    mod.write_text(f"""\
import asyncio, os
MARK = {str(marker)!r}

def ok(n=1):
    open(MARK, "a").close()
    return n

async def coro(n=1):
    open(MARK, "a").close()
    await asyncio.sleep(0)
    return n

def gen(n=3):
    open(MARK, "a").close()
    yield from range(n)

async def agen(n=3):
    open(MARK, "a").close()
    yield n

def reads():
    open(MARK, "a").close()
    return input()
""")
    return mod, marker


def cli(*argv, capsys):
    try:
        code = cli_main(["profile", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("extra", [["--input", "{mod}:ok", "--sizes", "1,2,3", "--target", "1e999"],
                                   ["--input", "{mod}:ok", "--sizes", "1,2,3", "--target", "0"],
                                   ["--plot", "{tmp}/x.txt"], ["--plot", "{tmp}/x"]])
def test_bad_options_are_one_usage_line_before_the_function_runs(extra, targets, tmp_path, capsys):
    # --target 1e999 ended in OverflowError, --plot x.txt in matplotlib's ValueError, both after the call ran
    mod, marker = targets
    argv = [a.format(mod=mod, tmp=tmp_path) for a in extra]
    code, out, err = cli(f"{mod}:ok", *argv, "--no-save", capsys=capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("wrenpack profile: error: argument "), err
    assert "Traceback" not in err and not marker.exists()
    assert not (tmp_path / "x.txt").exists()


def test_sizes_too_large_to_be_a_number_are_one_line(targets, capsys):
    mod, marker = targets
    code, out, err = cli(f"{mod}:ok", "--input", f"{mod}:ok", "--sizes", "1,2,1e999", "--target", "5", "--no-save",
                         capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "--sizes '1,2,1e999' must be" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("name, kind, fix", [("coro", "an async function", "asyncio.run(coro(x))"),
                                             ("gen", "a generator function", "list(gen(x))"),
                                             ("agen", "an async generator function",
                                              "async def agen_all(x): return [v async for v in agen(x)] and "
                                              "def agen_list(x): return asyncio.run(agen_all(x))")])
def test_generator_and_async_functions_are_refused_before_they_run(name, kind, fix, targets, capsys):
    # "pickling the result of coro raised PicklingError: cannot pickle 'coroutine' object" and a RuntimeWarning
    mod, marker = targets
    code, out, err = cli(f"{mod}:{name}", "--no-save", capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1 and f"{name} is {kind}" in err and fix in err, err
    assert "pickl" not in err and "RuntimeWarning" not in err
    assert not marker.exists()


def test_an_async_function_object_is_refused_by_the_api_too():
    import asyncio

    import wrenpack
    from wrenpack.errors import ProfileError

    async def twice(n):
        await asyncio.sleep(0)
        return 2 * n

    with pytest.raises(ProfileError, match=r"twice is an async function: .*asyncio\.run\(twice\(x\)\)"):
        wrenpack.profile(twice, 1, save=False)


def test_a_plot_path_that_cannot_be_written_is_refused_before_the_function_runs(targets, capsys):
    """/proc passes the folder checks (root's access() says yes): the picture failed after the run."""
    mod, marker = targets
    code, out, err = cli(f"{mod}:ok", "--plot", "/proc/nope.png", "--no-save", capsys=capsys)
    assert code == 1 and err.strip().splitlines() == [
        "wrenpack: error: --plot /proc/nope.png: cannot write it (No such file or directory); choose a writable path "
        "for --plot"], err
    assert not marker.exists()


def test_the_profiled_function_reads_no_stdin(targets, tmp_path):
    """Its process read the command's stdin: with a pipe held open (`sleep 20 | wrenpack profile`), a
    function that reads it waited 20 s. It now gets /dev/null, and EOF at once."""
    import os
    import subprocess
    import sys
    import time

    mod, marker = targets
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "wrenpack", "profile", f"{mod}:reads", "--no-save"], cwd=tmp_path,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # (not communicate(): it closes stdin, the EOF this test must not give)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None, "the profiled function waited on the command's stdin"
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 1 and "EOFError" in err and marker.exists(), (out, err)
    assert time.monotonic() - t0 < 60


def test_a_plain_function_still_runs(targets, capsys):
    mod, marker = targets
    code, out, err = cli(f"{mod}:ok", "--no-save", "--json", capsys=capsys)
    assert code == 0, err
    assert marker.exists()


def test_the_package_map_is_kept_in_wrenpack_cache_dir(tmp_path):
    # it went to ~/.cache/wrenpack/packages-*.json whatever WRENPACK_CACHE_DIR said
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "tgt.py").write_text("def ok(n=1):\n    return n\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(HOME=str(tmp_path / "home"), WRENPACK_CACHE_DIR=str(tmp_path / "cache"),
               WRENPACK_PROFILE_DIR=str(tmp_path / "profiles"), PYTHONPATH=os.pathsep.join([root, str(tmp_path)]))
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "profile", "tgt:ok", "--no-save", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p.name.startswith("packages-") for p in (tmp_path / "cache").iterdir()] == [True]
    assert not (tmp_path / "home").exists()


def test_the_cache_keeps_a_bounded_number_of_package_maps(tmp_path, monkeypatch):
    """Each path (the profiled script's folder is its first entry) has a map of its own: the
    least recently used go once there are more than ``KEEP_MAPS``; one read is used, so kept."""
    import os

    from wrenpack.profiler import packages

    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path))
    old = []
    for i in range(packages.KEEP_MAPS + 5):
        path = tmp_path / f"packages-old{i:02d}.json"
        path.write_text('{"modules": {}, "dists": {}}')
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        old.append(path)
    (tmp_path / "owner.key").write_bytes(b"k" * 32)  # (not a map: left alone)
    monkeypatch.setattr(packages, "_paths_key", lambda: "old00")
    packages._Cache()  # read: old00 is the most recently used now
    monkeypatch.setattr(packages, "_paths_key", lambda: "fresh")
    cache = packages._Cache()
    cache.dirty = True
    cache.save()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in left if n.startswith("packages-")]) == packages.KEEP_MAPS
    assert "packages-fresh.json" in left and "packages-old00.json" in left and "owner.key" in left
    assert "packages-old01.json" not in left and f"packages-old{packages.KEEP_MAPS + 4:02d}.json" in left
