"""Fit ``y = c + a * n**b`` to measurements at a few input sizes, and extrapolate.

The constant matters: memory and time both carry a fixed part (buffers,
start-up work) that a plain power law folds into the exponent, which then
mispredicts badly far from the data. Without numpy or scipy: for each b on a
grid, c and a follow from ordinary linear least squares in closed form; the
best b is then refined by golden-section search. When scipy is importable,
``scipy.optimize.curve_fit`` polishes that result (kept only if it is better).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

B_MIN, B_MAX, B_STEP = 0.05, 4.0, 0.01
#: Extrapolating beyond this multiple of the largest measured size is flagged.
FAR_FACTOR = 4.0


@dataclass
class Fit:
    c: float
    a: float
    b: float
    r2: float
    method: str

    def predict(self, n: float) -> float:
        return self.c + self.a * float(n) ** self.b

    def to_dict(self) -> dict:
        return asdict(self)

    def formula(self, unit: str = "") -> str:
        return f"{self.c:.4g} + {self.a:.4g} * n^{self.b:.3f}{unit}"


def _linear(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares y = c + a*x -> (c, a, sse)."""
    k = len(xs)
    xm = sum(xs) / k
    ym = sum(ys) / k
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx <= 0:
        return ym, 0.0, sum((y - ym) ** 2 for y in ys)
    a = sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sxx
    c = ym - a * xm
    return c, a, sum((y - c - a * x) ** 2 for x, y in zip(xs, ys))


def fit_power(ns: Sequence[float], ys: Sequence[float]) -> Fit:
    """Least-squares fit of ``y = c + a*n^b``; needs at least three sizes."""
    if len(ns) != len(ys) or len(ns) < 3:
        raise ValueError("fit_power needs at least three (size, value) pairs")
    scale = float(max(ns))
    us = [float(n) / scale for n in ns]  # conditioning: fit on n/max(n), convert a at the end

    def sse_at(b: float) -> tuple[float, float, float]:
        return _linear([u**b for u in us], ys)

    steps = int(round((B_MAX - B_MIN) / B_STEP))
    best_b = min((B_MIN + i * B_STEP for i in range(steps + 1)), key=lambda b: sse_at(b)[2])
    lo, hi = max(B_MIN, best_b - B_STEP), min(B_MAX, best_b + B_STEP)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if sse_at(m1)[2] < sse_at(m2)[2]:
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    c, a_u, sse = sse_at(b)
    method = "grid+golden"
    try:  # optional polish
        import numpy as np
        from scipy.optimize import curve_fit

        def model(u, c_, a_, b_):
            return c_ + a_ * np.power(u, b_)

        with warnings.catch_warnings():  # e.g. "covariance could not be estimated" with 3 points: harmless here
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(model, np.array(us), np.array(ys, dtype=float), p0=(c, a_u, b), maxfev=20000)
        sse2 = float(sum((y - model(u, *popt)) ** 2 for u, y in zip(us, ys)))
        if math.isfinite(sse2) and sse2 < sse:
            c, a_u, b, sse = float(popt[0]), float(popt[1]), float(popt[2]), sse2
            method = "scipy.curve_fit"
    except Exception:  # noqa: BLE001 - scipy absent or the polish failed: keep the closed-form fit
        pass
    ym = sum(ys) / len(ys)
    sst = sum((y - ym) ** 2 for y in ys)
    r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse < 1e-12 else 0.0)
    return Fit(c=c, a=a_u / scale**b, b=b, r2=r2, method=method)


def extrapolation_warnings(sizes: Sequence[float], target: float, fits: dict[str, Fit]) -> list[str]:
    out = []
    largest = max(sizes)
    if target > FAR_FACTOR * largest:
        out.append(
            f"target {target:,.0f} is {target / largest:,.0f}x the largest measured size {largest:,.0f}: "
            f"far extrapolation, treat the prediction as rough (measure up to >= {target / FAR_FACTOR:,.0f} to tighten it)"
        )
    if len(sizes) < 4:
        out.append("only three sizes: the fit has no spare degrees of freedom, so R^2 says nothing; measure four or more")
    for name, fit in fits.items():
        if fit.r2 < 0.95:
            out.append(f"{name} fit is poor (R^2 = {fit.r2:.3f}): the measurements do not follow c + a*n^b well")
    return out
