"""memory="auto" / timeout="auto" from a scaling profile: each call sized at its own input size."""
from __future__ import annotations

import logging
import math
import os
import sys

import pytest

import wrenpack
from wrenpack.backends.local.process import memory_error
from wrenpack.futures import WrenFuture
from wrenpack.profiler import api, predict_scaling, recommend, run_profile, sizing, store
from wrenpack.profiler.codehash import code_hash

import profiler_targets as targets

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend's limits are Linux-only")


@pytest.fixture(autouse=True)
def _profiles_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))
    api._auto_cache.clear()
    api._sizers.clear()


@pytest.fixture
def executor(tmp_path):
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1, backend="local", retries=0)
    yield ex
    ex.shutdown()


@pytest.fixture
def memory_only(monkeypatch):
    """For tests of what a scaling profile says of memory, its size rule and where it is kept:
    each size's short call is timed for 0.05 s, not ``api.MIN_TIMED_S`` (0.25 s, ~1.2 s of a
    4-size profile). Their timeouts, if any, come from whatever time fit that gives; the time
    fits themselves are test_time_is_split_into_cpu_and_wait's and test_short_calls_are_repeated_..."""
    monkeypatch.setattr(api, "MIN_TIMED_S", 0.05)


SIZES = [1_000_000, 2_000_000, 3_000_000, 4_000_000]
TARGET = 24_000_000  # 192 MB of growth: above what the largest measured size's recommendation allows


def test_scaling_and_single_call_profiles_are_kept_apart(tmp_path, memory_only):
    single = run_profile(targets.eight_bytes, (1000,))
    scaled = predict_scaling(targets.eight_bytes, targets.make_input, SIZES[:3], TARGET)
    key = code_hash(targets.eight_bytes)
    assert single.code_hash == scaled.code_hash == key
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == sorted([f"{key}.json", f"{key}.scaling.json"])
    assert store.load(key)["scaling"] is None and store.load(key)["args"] == "1000"
    assert store.load(key, kind=store.SCALING)["scaling"]["target"] == TARGET
    # a later single-call run leaves the scaling profile alone
    run_profile(targets.eight_bytes, (2000,))
    assert store.load(key, kind=store.SCALING)["scaling"]["target"] == TARGET


@pytest.mark.parametrize("content, why", [
    ('{"recomm', "Unterminated string"),  # (unparsable: warned of before too)
    ("[]", "not a profile"),
    ('{"recommended": {"memory_mb": "512"}}', "missing"),
    ('{"target": "t", "peak_memory_mb": 1, "duration_s": 1, "recommended": {"memory_mb": NaN, "timeout_s": 10}}', "NaN"),
    ('{"target": "t", "peak_memory_mb": 1, "duration_s": 1, "recommended": {"memory_mb": -5, "timeout_s": 10}}',
     "memory_mb=-5 MB is outside Lambda's range"),
    ('{"target": "t", "peak_memory_mb": 1, "duration_s": 1, "recommended": {"memory_mb": 1000000000000, "timeout_s": 10}}',
     "outside Lambda's range"),
    ('{"target": "t", "peak_memory_mb": 1, "duration_s": 1, "recommended": {"memory_mb": 256, "timeout_s": 1e300}}',
     "timeout_s="),
])
def test_a_saved_profile_that_is_json_but_not_a_usable_profile_is_ignored(monkeypatch, caplog, content, why):
    """Profiles are plain JSON that any process of the user can write: valid JSON that is no
    profile crashed memory="auto" calls (AttributeError, TypeError, "cannot convert float NaN"),
    and an out-of-range memory was blamed on "options", the file unnamed. Each is now what an
    unparsable file was: a warning naming the file, and the function profiled afresh."""
    key = code_hash(targets.eight_bytes)
    path = store.path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    fresh = api.Profile(target="t", peak_memory_mb=1.0, duration_s=0.1, code_hash=key,
                        recommended={"memory_mb": 256, "timeout_s": 30, "ephemeral_storage_mb": 512})
    ran = []
    monkeypatch.setattr(api, "run_profile", lambda fn, args, kwargs: ran.append(1) or fresh)
    with caplog.at_level(logging.WARNING, logger="wrenpack.profiler"):
        got = api.auto_settings(targets.eight_bytes, (1000,))
    assert ran == [1] and got["memory_mb"] == 256 and got["timeout_s"] == 30
    assert f"ignoring unreadable saved profile {path}" in caplog.text and why in caplog.text, caplog.text
    # (and the run that follows is said, as a warning: it happens here, side effects and all)
    assert "running it here once, with the first call's arguments" in caplog.text, caplog.text


def test_size_rule_finds_value_len_and_nbytes():
    sizes = [10, 20, 40]
    assert sizing.size_rule(sizes, [{"value": n, "len": None} for n in sizes]) == {"measure": "value", "per_unit": 1.0}
    assert sizing.size_rule(sizes, [{"len": 3 * n} for n in sizes]) == {"measure": "len", "per_unit": 3.0}
    assert sizing.size_rule(sizes, [{"len": 1, "nbytes": 8 * n} for n in sizes]) == {"measure": "nbytes", "per_unit": 8.0}
    assert sizing.size_rule(sizes, [{"len": 1} for _ in sizes]) is None
    assert sizing.read_size({"measure": "len", "per_unit": 2.0}, ([0] * 10,)) == 5
    assert sizing.read_size({"measure": "value", "per_unit": 1.0}, ("text",)) is None
    assert sizing.read_size({"measure": "value", "per_unit": 1.0}, ()) is None


@linux_only
def test_memory_auto_sizes_each_call_from_the_scaling_profile(executor, caplog, memory_only):
    """The call at the target runs (the largest measured size's figure, 128 MB, would not hold it)."""
    prof = predict_scaling(targets.eight_bytes, targets.make_input, SIZES, TARGET)
    assert prof.memory_mb < prof.scaling["recommended"]["memory_mb"]  # the old answer was the largest measured size's
    assert prof.scaling["size_rule"] == {"measure": "value", "per_unit": 1.0}
    f = wrenpack.remote(targets.eight_bytes, executor=executor, memory="auto", timeout="auto")
    with caplog.at_level(logging.INFO, logger="wrenpack"):
        fut = f.remote(TARGET)
        assert fut.result(timeout=120) == 8 * TARGET
    auto = fut.status["auto"]
    assert auto is fut.auto and auto["profile"] == "scaling" and auto["n"] == TARGET
    assert auto["memory"] == prof.scaling["recommended"]["memory_mb"] > 8 * TARGET / 2**20
    assert auto["timeout"] == prof.scaling["recommended"]["timeout_s"]
    assert "n=24,000,000" in auto["why"] and "first argument's value" in auto["why"]
    assert fut.status["peak_rss_mb"] < auto["memory"]
    assert any("memory=%d" % auto["memory"] in r.getMessage() and "n=24,000,000" in r.getMessage() for r in caplog.records)

    # each call of a map at its own size, futures in order
    futs = f.map([1_000_000, TARGET, 4_000_000])
    assert [x.result(timeout=120) for x in futs] == [8_000_000, 8 * TARGET, 32_000_000]
    memory = [x.status["auto"]["memory"] for x in futs]
    assert memory[0] <= memory[2] < memory[1] == auto["memory"]


@linux_only
def test_auto_size_reads_a_size_no_measure_finds(executor, memory_only):
    prof = predict_scaling(targets.eight_bytes_boxed, targets.make_box, SIZES[:3], TARGET)
    assert prof.scaling["size_rule"] is None and any("auto_size" in w for w in prof.scaling["warnings"])
    plain = wrenpack.remote(targets.eight_bytes_boxed, executor=executor, memory="auto")
    small = plain.remote({"n": 1000})
    assert small.result(timeout=60) == 8000
    assert small.status["auto"]["memory"] == prof.scaling["recommended"]["memory_mb"]  # the target's: a safe fallback
    assert "could not be read" in small.status["auto"]["why"] and "auto_size" in small.status["auto"]["why"]
    sized = wrenpack.remote(targets.eight_bytes_boxed, executor=executor, memory="auto", auto_size=lambda box: box["n"])
    fut = sized.remote({"n": 1000})
    assert fut.result(timeout=60) == 8000
    assert fut.status["auto"]["n"] == 1000 and fut.status["auto"]["memory"] < prof.scaling["recommended"]["memory_mb"]
    with pytest.raises(wrenpack.ConfigError, match="auto_size"):
        wrenpack.remote(targets.eight_bytes_boxed, auto_size=3)


def test_an_untrusted_time_fit_sets_no_timeout_from_it():
    sc = {"sizes": [1000, 2000, 3000, 4000], "memory_growth_mb": [1, 2, 3, 4], "duration_s": [0.2, 0.9, 0.3, 1.5],
          "cpu_s": [0.2, 0.9, 0.3, 1.5], "wait_s": [0, 0, 0, 0], "timed_s": [0.3, 0.9, 0.3, 1.5],
          "baseline_mb": 20, "target": 16000, "cores": 1.0}
    sizer = sizing.Sizer(sc)
    assert sizer.untrusted and "cpu time fit" in sizer.untrusted
    rec = sizer.at(16000)["recommended"]
    assert rec["timeout_s"] == recommend.MAX_TIMEOUT_S and rec["time_trusted"] is False
    assert any("cannot be trusted" in n or "cpu time fit" in n for n in rec["notes"])
    # too short for the clock, even repeated
    short = dict(sc, cpu_s=[1e-4, 2e-4, 3e-4, 4e-4], duration_s=[1e-4, 2e-4, 3e-4, 4e-4], timed_s=[0.001] * 4)
    assert "clocks" in sizing.Sizer(short).untrusted
    good = dict(sc, cpu_s=[0.1, 0.2, 0.3, 0.4], duration_s=[0.1, 0.2, 0.3, 0.4])
    assert sizing.Sizer(good).untrusted is None
    assert sizing.Sizer(good).at(16000)["predicted"]["cpu_s"] == pytest.approx(1.6, rel=0.01)


def test_memory_hint_is_the_measured_peak_plus_margin_or_no_figure():
    stopped = str(memory_error("f", 129, 129.0))
    assert "not known" in stopped and "memory=2" not in stopped and "raise memory=" in stopped
    measured = str(memory_error("f", 256, 400.0, stopped=False))
    assert f"memory={math.ceil(400 * 1.1 + 32)}" in measured and "measured peak 400 MB" in measured


def test_status_carries_the_auto_record_whichever_comes_first():
    record = {"memory": 512, "timeout": 30, "why": "test"}
    before = WrenFuture("job", "0", "f")
    before.set_auto(record)
    before.status = {"exit": "ok"}
    after = WrenFuture("job", "1", "f")
    shared = {"exit": "ok"}
    after.status = shared
    after.set_auto(record)
    assert before.status == after.status == {"exit": "ok", "auto": record}
    plain = WrenFuture("job", "2", "f")
    plain.status = shared
    assert plain.status is shared and before.status is not shared


def test_time_is_split_into_cpu_and_wait():
    slept = run_profile(targets.sleepy, (0.2,), save=False)
    assert slept.wait_s == pytest.approx(0.2, abs=0.05) and slept.cpu_user_s + slept.cpu_sys_s < 0.05
    busy = run_profile(targets.busy, (0.2,), save=False)
    cpu = busy.cpu_user_s + busy.cpu_sys_s
    assert cpu == pytest.approx(0.2, abs=0.05) and busy.wait_s < 0.05
    if busy.runq_s is not None:  # the wall time is CPU + the wait for a core (load) + the rest
        assert busy.duration_s == pytest.approx(cpu + busy.runq_s + busy.wait_s, abs=0.02)
    # the estimate comes from CPU and wait, not from the (load-inflated) wall time
    assert busy.recommended["estimated_duration_s"] == pytest.approx(
        recommend.duration_at(cpu, busy.wait_s, busy.recommended["memory_mb"]), rel=0.01)


def test_short_calls_are_repeated_on_fresh_inputs():
    sc = predict_scaling(targets.consume, targets.make_zeros, [1000, 2000, 3000], 6000, save=False).scaling
    assert all(r > 1 for r in sc["reps"]), sc["reps"]  # the same list twice would have raised: one call only
    assert all(t >= api.MIN_TIMED_S for t in sc["timed_s"]) or max(sc["reps"]) == api.MAX_REPS


def test_package_map_is_kept_on_disk(tmp_path, monkeypatch):
    from importlib import metadata

    from wrenpack.profiler import packages

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(packages, "_cache", None)
    first = packages.map_modules({"pytest": None})
    assert first[0] and first[0][0]["name"] == "pytest"
    assert len(list((tmp_path / "cache" / "wrenpack").glob("packages-*.json"))) == 1

    def slow() -> None:
        raise AssertionError("the package map was built again")

    monkeypatch.setattr(metadata, "packages_distributions", slow)
    monkeypatch.setattr(packages, "_cache", None)  # a new process: only the file remains
    assert packages.map_modules({"pytest": None}) == first
    # a new path entry, or a distribution installed into one, builds the map again
    entry = tmp_path / "site"
    entry.mkdir()
    monkeypatch.syspath_prepend(str(entry))
    with pytest.raises(AssertionError, match="built again"):
        packages.map_modules({"pytest": None})
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(metadata, "packages_distributions", slow)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setattr(packages, "_cache", None)
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"pytest": ["pytest"]})
    packages.map_modules({"pytest": None})  # (built once for this path)
    monkeypatch.setattr(metadata, "packages_distributions", slow)
    # files saved in the project's directory (on the path, as the working directory is) leave it as it was
    (project / "notes.txt").write_text("x")
    (project / "mod.py").write_text("x = 1\n")
    os.utime(project, ns=(1, 10**18))
    monkeypatch.setattr(packages, "_cache", None)
    packages.map_modules({"pytest": None})
    (project / "thing-1.0.dist-info").mkdir()
    monkeypatch.setattr(packages, "_cache", None)
    with pytest.raises(AssertionError, match="built again"):
        packages.map_modules({"pytest": None})
