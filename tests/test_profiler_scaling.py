"""Scaling prediction: the c + a*n^b fit, alone and on a function with known growth."""
from __future__ import annotations

import builtins
import concurrent.futures
import math

import pytest

from wrenpack.profiler import predict_scaling, run_profile
from wrenpack.profiler import scaling
from wrenpack.profiler.scaling import choose, fit_power

import profiler_targets as targets


@pytest.fixture(autouse=True)
def _profiles_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_PROFILE_DIR", str(tmp_path / "profiles"))


@pytest.fixture
def no_scipy(monkeypatch):
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in ("scipy", "numpy"):
            raise ImportError(f"{name} blocked for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)


@pytest.mark.parametrize("c,a,b", [(12.0, 0.003, 1.0), (0.05, 2e-9, 2.0), (30.0, 0.8, 0.5), (0.0, 1e-4, 1.5)])
def test_fit_recovers_known_curves_without_numpy_or_scipy(c, a, b, no_scipy):
    ns = [1000, 2000, 4000, 8000, 16000]
    ys = [c + a * n**b for n in ns]
    fit = fit_power(ns, ys)
    assert fit.method == "free b"
    assert fit.b == pytest.approx(b, abs=0.01)
    assert fit.r2 > 0.9999
    target = 64000
    assert fit.predict(target) == pytest.approx(c + a * target**b, rel=0.02)


@pytest.mark.parametrize("name,f", [
    ("linear with a fixed cost", lambda n: 0.05 + 1e-5 * n),   # constant-dominated: a free exponent says n^0.6
    ("quadratic", lambda n: 0.002 + 2.5e-8 * n * n),
    ("n log n", lambda n: 0.001 + 1e-6 * n * math.log(n)),
])
def test_cross_validation_picks_the_growth_order(name, f):
    ns = [1000, 2000, 3000, 4000]
    ys = [f(n) * (1 + 0.003 * (-1) ** i) for i, n in enumerate(ns)]
    fit = choose(ns, ys, 16000)
    truth = f(16000)
    assert fit.upper["prediction"] == pytest.approx(truth, rel=0.05), fit
    assert truth * 0.95 <= fit.upper["upper"] <= truth * 1.25, fit
    assert fit.cv_error < 0.02 and fit.method.startswith("fixed")


def test_poor_fit_warns_and_widens_the_upper_bound():
    ns = [1000, 2000, 3000, 4000]
    ys = [1.0, 3.0, 1.5, 4.0]  # no smooth growth
    fit = choose(ns, ys, 16000)
    assert fit.upper["upper"] >= fit.upper["prediction"] * (1 + fit.cv_error)
    warnings = scaling.extrapolation_warnings(ns, 16000, {"time": fit})
    assert any("time fit is poor" in w for w in warnings), warnings


def test_fit_needs_three_points():
    with pytest.raises(ValueError):
        fit_power([1, 2], [1, 2])


def test_prediction_on_known_growth_matches_a_measurement():
    """memory ~ 2,000 bytes * n, time ~ 1e-8 s * n^2: predict n=16,000 from 1,000..8,000, then measure it."""
    sizes = [1000, 2000, 4000, 8000]
    # The measurement at the target runs while the fit's points are measured (each run is a
    # process of its own, its time a sleep and its memory its own: neither moves the other's).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        measured = pool.submit(run_profile, targets.known_growth, (16000,), save=False)
        # the fastest of two runs per size: a loaded machine's scheduling delays moved a single
        # 10 ms sleep enough to call the time fit poor
        prof = predict_scaling(targets.known_growth, targets.make_input, sizes, 16000, repeat=2, save=False)
        actual = measured.result()
    sc = prof.scaling
    assert sc["memory_fit"]["b"] == pytest.approx(1.0, abs=0.1)
    assert sc["time_fit"]["b"] == pytest.approx(2.0, abs=0.2)
    assert sc["memory_fit"]["r2"] > 0.99 and sc["time_fit"]["r2"] > 0.99
    assert sc["upper"]["peak_memory_mb"] >= sc["predicted"]["peak_memory_mb"]
    assert sc["warnings"] == []  # 2x beyond the largest size is not "far"

    expected_growth = 2000 * 16000 / 2**20  # 30.5 MB
    assert sc["predicted"]["growth_mb"] == pytest.approx(expected_growth, rel=0.10)
    assert sc["predicted"]["peak_memory_mb"] == pytest.approx(actual.peak_memory_mb, rel=0.05)
    assert sc["predicted"]["duration_s"] == pytest.approx(actual.duration_s, rel=0.10)
    assert sc["predicted"]["duration_s"] == pytest.approx(1e-8 * 16000**2, rel=0.10)
    # settings come from the upper bound, never below the truth at the target
    assert sc["recommended"]["memory_mb"] == max(128, math.ceil(sc["upper"]["peak_memory_mb"] * 1.1 + 32))


def test_far_extrapolation_warns_and_long_runs_need_segments(monkeypatch):
    from wrenpack.profiler import api

    # Each size's call timed for 0.05 s, not 0.25 (its sleeps are their own clock): the fit's b is
    # 2.0 either way, and the prediction ~10,000 s against the 900 s this test needs (0.6 s less)
    monkeypatch.setattr(api, "MIN_TIMED_S", 0.05)
    prof = predict_scaling(targets.known_growth, targets.make_input, [1000, 2000, 4000, 8000], 1_000_000, save=False)
    sc = prof.scaling
    assert any("far extrapolation" in w for w in sc["warnings"])
    # truly 1e-8 * (1e6)^2 = 10,000 s; any sane fit lands far beyond Lambda's 900 s, so checkpointed segments
    assert sc["predicted"]["duration_s"] > 900
    rec = sc["recommended"]
    assert rec["timeout_s"] == 900 and rec["segments"] == math.ceil(rec["estimated_duration_s"] / 810) >= 2
    assert any("checkpointed segments" in n for n in sc["recommended"]["notes"])


@pytest.mark.parametrize("fn,sizes", [
    (targets.linear_cost, [1000, 2000, 3000, 4000]),
    pytest.param(targets.quadratic_cost, [500, 1000, 1500, 2000], marks=pytest.mark.slow),  # (10 s; O(n) covers the path)
], ids=["O(n)", "O(n^2)"])
def test_prediction_at_4x_is_close_and_not_low(fn, sizes):
    """Deterministic memory and sleep-timed work, so a loaded machine does not move the figures."""
    target = 4 * sizes[-1]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # (at once, as test_prediction_on_known_growth_...)
        measured = pool.submit(run_profile, fn, (target,), repeat=2, save=False)  # the fastest of two, as the fit's points
        sc = predict_scaling(fn, targets.make_input, sizes, target, repeat=2, save=False).scaling
        actual = measured.result()
    actual_growth = actual.peak_memory_mb - actual.baseline_mb
    for what, pred, upper, truth in (
        ("memory", sc["predicted"]["growth_mb"], sc["upper"]["growth_mb"], actual_growth),
        ("time", sc["predicted"]["duration_s"], sc["upper"]["duration_s"], actual.repeat["duration_s"]["min"]),
    ):
        print(f"{fn.__name__} {what}: predicted {pred:.4g}, upper {upper:.4g}, measured {truth:.4g}")
        assert pred == pytest.approx(truth, rel=0.15), (what, sc)
        assert upper >= 0.95 * truth, (what, sc)
        assert upper <= 1.5 * truth, (what, sc)  # safe, not absurd (sleep overshoots ~10% at load average 10)
