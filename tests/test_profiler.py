"""wrenpack profile: API, CLI, errors, saved profiles, recommendations."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import wrenpack
from wrenpack.cli import main as cli_main
from wrenpack.errors import ProfileError
from wrenpack.profiler import Profile, auto_settings, recommend, run_profile, store
from wrenpack.profiler.codehash import code_hash

import profiler_targets as targets

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _profiles_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))


def cli(*argv, capsys):
    code = cli_main(["profile", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- API


def test_profile_api_returns_profile_and_saves_it(tmp_path):
    prof = wrenpack.profile(targets.spike, 100)
    assert isinstance(prof, Profile)
    assert 98 <= prof.growth_mb <= 110
    assert prof.baseline_mb < 40 and prof.interpreter_mb <= prof.baseline_mb
    assert prof.duration_s > 0.2 and prof.cpu_user_s + prof.cpu_sys_s > 0
    assert prof.network == {"measurable": False, "reason": prof.network["reason"]}
    assert prof.samples["t"] and max(prof.samples["rss_mb"]) <= prof.peak_memory_mb + 1
    saved = tmp_path / "profiles" / f"{code_hash(targets.spike)}.json"
    assert saved.is_file()
    assert Profile.from_dict(json.loads(saved.read_text())).peak_memory_mb == prof.peak_memory_mb


def test_repeat_reports_min_median_max():
    prof = run_profile(targets.tiny, repeat=3, save=False)
    rep = prof.repeat
    assert rep["n"] == 3
    assert rep["duration_s"]["min"] <= rep["duration_s"]["median"] <= rep["duration_s"]["max"]
    assert prof.peak_memory_mb == pytest.approx(rep["peak_memory_mb"]["max"], abs=0.01)


def test_closure_by_value_and_kwargs():
    size = 50

    def local_fn(extra, *, scale=1):
        return len(b"\1" * ((size + extra) * scale * 2**20))

    prof = run_profile(local_fn, (10,), {"scale": 2}, save=False)
    assert 115 <= prof.growth_mb <= 130


def test_result_is_pickled_like_the_worker_does():
    prof = run_profile(targets.returns_big, (100,), save=False)
    assert prof.result_bytes > 100 * 2**20
    assert prof.growth_mb > 190  # the value and its pickle exist together, as in the worker


def test_packages_map_to_distributions():
    pytest.importorskip("numpy")
    import numpy

    prof = run_profile(targets.numpy_heavy, (200,), save=False)
    names = {p["name"]: p["version"] for p in prof.packages}
    assert names.get("numpy") == numpy.__version__
    assert "wrenpack" not in names and "cloudpickle" not in names
    assert not any(n in sys.stdlib_module_names for n in names)
    assert "profiler_targets" in prof.local_modules


def test_errors_are_one_line():
    with pytest.raises(ProfileError, match=r"raises raised ValueError: bad input 42") as info:
        run_profile(targets.raises, save=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ProfileError, match=r"no module named 'no_such_mod'"):
        run_profile("no_such_mod:fn", save=False)
    with pytest.raises(ProfileError, match=r"has no function 'nope'"):
        run_profile("profiler_targets:nope", save=False)


def test_timeout_stops_the_run():
    with pytest.raises(ProfileError, match="did not finish within 0.5 s"):
        run_profile(targets.known_growth, (10000,), timeout=0.5, save=False)  # sleeps 1 s


# ---------------------------------------------------------------- saved profiles, auto


def test_code_hash_is_stable_across_processes_and_changes_with_code():
    here = code_hash(targets.known_growth)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import profiler_targets as t; "
         "from wrenpack.profiler.codehash import code_hash; print(code_hash(t.known_growth))", TESTS_DIR],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONHASHSEED="123"),
    )
    assert out.stdout.strip() == here

    def a(x):
        return x + 1

    def b(x):
        return x + 2

    def c(x, k=3):
        return x + 1

    assert len({code_hash(a), code_hash(b), code_hash(c)}) == 3


def test_auto_settings_profiles_once_then_uses_the_saved_profile(monkeypatch):
    from wrenpack.profiler import api

    api._auto_cache.clear()
    found = auto_settings(targets.spike, (150,))
    assert set(found) >= {"memory_mb", "timeout_s", "ephemeral_storage_mb", "profile"}
    assert found["memory_mb"] >= 150 * 1.1
    assert store.load(code_hash(targets.spike)) is not None

    api._auto_cache.clear()  # a new process: only the saved file remains

    def no_profiling(*a, **k):
        raise AssertionError("should have used the saved profile")

    monkeypatch.setattr(api, "run_profile", no_profiling)
    again = auto_settings(targets.spike, (150,))
    assert again["memory_mb"] == found["memory_mb"] and again["timeout_s"] == found["timeout_s"]


def test_project_dir_is_nearest_pyproject(tmp_path, monkeypatch):
    monkeypatch.delenv("WRENPACK_PROFILE_DIR")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert store.profiles_dir() == tmp_path / ".wrenpack" / "profiles"


# ---------------------------------------------------------------- recommendations


def test_recommend_rules():
    r = recommend.recommend(peak_mb=20, wall_s=0.1, cpu_s=0.01)
    assert r["memory_mb"] == 128 and r["ephemeral_storage_mb"] == 512 and r["segments"] == 1
    r = recommend.recommend(peak_mb=1000, wall_s=2, cpu_s=0.1)
    assert r["memory_mb"] == 1132  # ceil(1000 * 1.1 + 32)
    assert r["timeout_s"] == 13  # ceil(2 * 1.5 + 10)
    assert recommend.recommend(peak_mb=20000, wall_s=1, cpu_s=0)["memory_mb"] == 10240
    assert any("exceeds Lambda" in n for n in recommend.recommend(peak_mb=20000, wall_s=1, cpu_s=0)["notes"])
    # two cores busy: note the 1,769 MB-per-vCPU rule
    r = recommend.recommend(peak_mb=500, wall_s=10, cpu_s=20)
    assert any("1,769 MB" in n and "2.0 cores" in n for n in r["notes"])
    # longer than Lambda allows: capped timeout and checkpointed segments
    r = recommend.recommend(peak_mb=500, wall_s=2000, cpu_s=0)
    assert r["timeout_s"] == 900 and r["segments"] == 3
    assert any("3 checkpointed segments" in n for n in r["notes"])
    # /tmp above 512 MB
    r = recommend.recommend(peak_mb=100, wall_s=1, cpu_s=0, tmp_peak_mb=1000)
    assert r["ephemeral_storage_mb"] == 1116
    # cost: memory x billed duration x price + request
    c = recommend.cost(1024, 1.0)
    p = recommend.prices()["architectures"]
    assert c["x86_64"]["per_call_usd"] == pytest.approx(p["x86_64"]["per_gb_second"] + 0.2e-6)
    assert c["arm64"]["per_million_usd"] == pytest.approx(1e6 * (p["arm64"]["per_gb_second"] + 0.2e-6))
    assert recommend.prices()["date"] and recommend.prices()["source"]


# ---------------------------------------------------------------- CLI


def test_cli_json_schema(capsys, monkeypatch):
    monkeypatch.chdir(TESTS_DIR)
    code, out, err = cli("profiler_targets:spike", "50", "--json", capsys=capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["schema"] == "wrenpack.profile/1"
    for key in ("peak_memory_mb", "duration_s", "baseline_mb", "growth_mb", "cpu_user_s", "cpu_sys_s", "cores_busy",
                "tmp_peak_mb", "packages", "local_modules", "network", "repeat", "samples", "code_hash"):
        assert key in data, key
    assert isinstance(data["recommended"]["memory_mb"], int) and isinstance(data["recommended"]["timeout_s"], int)
    assert {"x86_64", "arm64"} <= set(data["recommended"]["cost"])
    assert all(set(p) == {"name", "version"} for p in data["packages"])


def test_cli_file_target_kwargs_and_table(capsys, tmp_path):
    src = tmp_path / "job.py"
    src.write_text("def work(n, scale=1):\n    return len(b'x' * (n * scale * 2**20))\n")
    code, out, err = cli(f"{src}:work", "20", "--kwargs", '{"scale": 2}', "--no-save", capsys=capsys)
    assert code == 0, err
    assert "peak memory" in out and "recommended Lambda settings" in out and "cost arm64" in out
    code, out, err = cli(f"{src}:work", "20", "--kwargs", "{'scale': 2}", "--no-save", "--json", capsys=capsys)
    assert code == 0 and 38 <= json.loads(out)["growth_mb"] <= 45


@pytest.mark.parametrize(
    "argv,message",
    [
        (["no_such_mod:fn"], "no module named 'no_such_mod'"),
        (["profiler_targets:nope"], "has no function 'nope'"),
        (["profiler_targets:raises"], "raised ValueError: bad input 42"),
        (["profiler_targets"], "needs a function"),
        (["profiler_targets:spike", "hello"], "not a Python literal"),
        (["profiler_targets:spike", "--kwargs", "[1]"], "mapping"),
        (["/nonexistent/x.py:f"], "no such file"),
        (["profiler_targets:known_growth", "--sizes", "1,2,3"], "scaling needs all of"),
    ],
)
def test_cli_errors_one_line_nonzero(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(TESTS_DIR)
    code, out, err = cli(*argv, "--no-save", capsys=capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrenpack: error: ") and message in lines[0], err


def test_cli_plot_and_lines(capsys, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(TESTS_DIR)
    png = tmp_path / "mem.png"
    code, out, err = cli("profiler_targets:spike", "60", "--plot", str(png), "--lines", "--no-save", capsys=capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "memory by line" in out and "b\"\\1\" * (mb * MB)" in out


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    from wrenpack.profiler.plot import plot_memory

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    prof = Profile(target="x:y", peak_memory_mb=1, duration_s=1)
    with pytest.raises(ProfileError, match=r"pip install 'wrenpack\[plot\]'"):
        plot_memory(prof, tmp_path / "x.png")


def test_user_stdout_does_not_break_json(capsys, tmp_path):
    src = tmp_path / "noisy.py"
    src.write_text("def f():\n    print('hello from the function')\n    return 1\n")
    code, out, err = cli(f"{src}:f", "--json", "--no-save", capsys=capsys)
    assert code == 0
    json.loads(out)


# ---------------------------------------------------------------- report defects


def test_segfault_is_named_as_a_crash_not_out_of_memory():
    with pytest.raises(ProfileError) as info:
        run_profile(targets.segfault, save=False)
    text = str(info.value)
    assert "SIGSEGV" in text and "segmentation fault" in text and "out of memory" not in text, text


def test_no_save_prints_no_saved_as(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(TESTS_DIR)
    code, out, err = cli("profiler_targets:tiny", "--no-save", capsys=capsys)
    assert code == 0 and "saved as" not in out, out
    code, out, err = cli("profiler_targets:tiny", capsys=capsys)
    assert code == 0 and "saved as" in out and str(tmp_path / "profiles") in out.replace("\n", "")


def test_tiny_call_claims_no_cores():
    prof = run_profile(targets.tiny, save=False)
    assert prof.duration_s < 0.01 and prof.cores_busy == 0.0
    assert not any("cores busy" in n for n in prof.recommended["notes"])
    assert recommend.recommend(peak_mb=20, wall_s=6e-7, cpu_s=1e-5)["notes"] == []


def test_time_waiting_for_a_core_is_not_the_calls(monkeypatch):
    """A CPU-bound call profiled on a busy machine waits for a core half the time: its
    cores busy were CPU over wall (0.5), so it got no CPU-bound note and a 2-core call
    no "kept 2 cores busy" note. The wait (runq) is the machine's load, not the call's."""
    from wrenpack.profiler.recommend import cores_busy

    monkeypatch.setattr(recommend, "_cores_here", lambda: 2)
    notes = recommend.recommend(peak_mb=20, wall_s=2.0, cpu_s=1.0, wait_s=0.0, runq_s=1.0)["notes"]
    assert any(n.startswith("CPU-bound") for n in notes), notes
    assert not any(n.startswith("CPU-bound") for n in recommend.recommend(peak_mb=20, wall_s=2.0, cpu_s=1.0)["notes"])
    assert cores_busy(1.0, 2.0, 1.0) == pytest.approx(1.0)
    assert cores_busy(2.0, 1.5, 1.0) == pytest.approx(2.0)  # two threads, one core taken by another program
    assert cores_busy(4.0, 2.0, 4.0) == pytest.approx(2.0)  # four threads on two cores wait for each other
    assert cores_busy(0.2, 2.0, 0.0) == pytest.approx(0.1)  # mostly I/O
    assert cores_busy(1.0, 0.001, 0.5) == 0.0  # too short to tell


def test_stdlib_and_unowned_installed_modules_are_not_project_modules():
    import sysconfig

    from wrenpack.profiler import packages

    stdlib = sysconfig.get_paths()["stdlib"]
    purelib = sysconfig.get_paths()["purelib"]
    mods = {"_sysconfigdata__linux_x86_64-linux-gnu": os.path.join(stdlib, "_sysconfigdata__linux_x86_64-linux-gnu.py"),
            "_cyutility": os.path.join(purelib, "_cyutility.cpython-311-x86_64-linux-gnu.so"),
            "profiler_targets": os.path.join(TESTS_DIR, "profiler_targets.py")}
    _, local = packages.map_modules(mods)
    assert local == ["profiler_targets"]


def test_price_source_names_no_local_path():
    source = recommend.prices()["source"]
    assert "/work" not in source and ".md" not in source, source


def test_mapped_file_pages_are_reported_apart():
    prof = run_profile(targets.mmap_reader, (200,), save=False)
    mapped = prof.memory_sources["file_mapped_at_peak_mb"]
    assert 180 <= mapped <= 230, prof.memory_sources
    assert prof.peak_memory_mb >= mapped
    assert any("file pages mapped from disk" in n for n in prof.recommended["notes"]), prof.recommended["notes"]


def test_cli_starts_the_run_before_importing_the_rest_of_the_profiler(tmp_path):
    """The command line starts the measured run first and imports the profiler's api (and rich) while
    it runs: a tiny function's profile costs little more than a plain run."""
    script = (
        "import sys\n"
        "from wrenpack.profiler import launcher\n"
        "start = launcher.start_job\n"
        "def spy(*a, **k):\n"
        "    sys.stderr.write('api imported at start: %s\\n' % ('wrenpack.profiler.api' in sys.modules))\n"
        "    return start(*a, **k)\n"
        "launcher.start_job = spy\n"
        "from wrenpack.cli import main\n"
        "sys.exit(main(['profile', 'profiler_targets:tiny', '--no-save', '--json']))\n"
    )
    env = dict(os.environ, WRENPACK_PROFILE_DIR=str(tmp_path / "profiles"),
               PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS_DIR), TESTS_DIR]))
    proc = subprocess.run([sys.executable, "-c", script], cwd=TESTS_DIR, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "api imported at start: False" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["target"] == "profiler_targets:tiny"


def test_the_profilers_api_imports_no_settings_module():
    """wrenpack.config (most of the api's import time) is read only when a profile is saved."""
    code = "import sys, wrenpack.profiler.api; print(sorted(m for m in sys.modules if m in ('wrenpack.config', 'rich')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(TESTS_DIR)))
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_launcher_starts_without_subprocess():
    """The launcher (python -I -S) imports only what sampling needs: its imports share a core with the
    measured call's and the caller's."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(TESTS_DIR)!r}); import wrenpack.profiler.launcher; "
            "print('subprocess' in sys.modules)")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_a_call_near_lambdas_limit_is_told_what_checkpoints_are_for():
    """A 600 s call was told to "checkpoint it (1 segment(s) of at most 810 s) to be safe": one
    segment is no split. The note says the timeout is Lambda's most and what a checkpoint buys."""
    rec = recommend.recommend(peak_mb=50, wall_s=600.0, cpu_s=0.5, wait_s=599.5)  # (mostly waiting: 600 s there too)
    assert rec["timeout_s"] == 900 and rec["segments"] == 1
    (note,) = [n for n in rec["notes"] if "margin" in n]
    assert "segment(s)" not in note and "would be stopped" in note and "wrenpack.checkpoint" in note, note
