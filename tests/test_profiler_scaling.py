"""Scaling prediction: the c + a*n^b fit, alone and on a function with known growth."""
from __future__ import annotations

import builtins
import math

import pytest

from wrenpack.profiler import predict_scaling, run_profile
from wrenpack.profiler.scaling import fit_power

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
    assert fit.method == "grid+golden"
    assert fit.b == pytest.approx(b, abs=0.01)
    assert fit.r2 > 0.9999
    target = 64000
    assert fit.predict(target) == pytest.approx(c + a * target**b, rel=0.02)


def test_fit_uses_scipy_when_present():
    pytest.importorskip("scipy")
    ns = [1000, 2000, 4000, 8000]
    ys = [5 + 0.01 * n**1.3 * (1 + 0.01 * (-1) ** i) for i, n in enumerate(ns)]
    fit = fit_power(ns, ys)
    assert fit.method in ("scipy.curve_fit", "grid+golden")
    assert 0.99 < fit.r2 <= 1.0


def test_fit_needs_three_points():
    with pytest.raises(ValueError):
        fit_power([1, 2], [1, 2])


def test_prediction_on_known_growth_matches_a_measurement():
    """memory ~ 2,000 bytes * n, time ~ 1e-8 s * n^2: predict n=16,000 from 1,000..8,000, then measure it."""
    sizes = [1000, 2000, 4000, 8000]
    prof = predict_scaling(targets.known_growth, targets.make_input, sizes, 16000, save=False)
    sc = prof.scaling
    assert sc["memory_fit"]["b"] == pytest.approx(1.0, abs=0.1)
    assert sc["time_fit"]["b"] == pytest.approx(2.0, abs=0.2)
    assert sc["memory_fit"]["r2"] > 0.99 and sc["time_fit"]["r2"] > 0.99
    assert sc["warnings"] == []  # 2x beyond the largest size is not "far"

    actual = run_profile(targets.known_growth, (16000,), save=False)
    expected_growth = 2000 * 16000 / 2**20  # 30.5 MB
    assert sc["predicted"]["growth_mb"] == pytest.approx(expected_growth, rel=0.10)
    assert sc["predicted"]["peak_memory_mb"] == pytest.approx(actual.peak_memory_mb, rel=0.05)
    assert sc["predicted"]["duration_s"] == pytest.approx(actual.duration_s, rel=0.10)
    assert sc["predicted"]["duration_s"] == pytest.approx(1e-8 * 16000**2, rel=0.10)
    assert sc["recommended"]["memory_mb"] == math.ceil(sc["predicted"]["peak_memory_mb"] * 1.1 + 32) or sc["recommended"]["memory_mb"] == 128


def test_far_extrapolation_warns_and_long_runs_need_segments():
    prof = predict_scaling(targets.known_growth, targets.make_input, [1000, 2000, 4000, 8000], 1_000_000, save=False)
    sc = prof.scaling
    assert any("far extrapolation" in w for w in sc["warnings"])
    # truly 1e-8 * (1e6)^2 = 10,000 s; any sane fit lands far beyond Lambda's 900 s, so checkpointed segments
    assert sc["predicted"]["duration_s"] > 900
    rec = sc["recommended"]
    assert rec["timeout_s"] == 900 and rec["segments"] == math.ceil(rec["estimated_duration_s"] / 810) >= 2
    assert any("checkpointed segments" in n for n in sc["recommended"]["notes"])
