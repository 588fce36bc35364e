"""Predict a larger input's cost from a few measured sizes: ``y = c + a * n**b``, chosen by cross-validation.

Memory and time both carry a fixed part (interpreter, buffers, start-up
work); a pure power law folds it into the exponent and then mispredicts far
from the data (a linear duration fitted as n^0.61 predicted 0.13 s where
2.06 s was measured). So every candidate keeps the constant ``c >= 0``, and
the growth is either one of the usual orders (n^1/2, n, n log n, n^3/2, n^2,
n^3) or n^b with b fitted freely. The candidate chosen is the one that best predicts each
measured point from the others (leave-one-out; predicting the largest size
from the smaller ones counts double, since that is what a prediction does);
where the data cannot tell candidates apart, a fixed growth order wins over
a free exponent, and among those the one predicting the most at the target.

The answer carries its uncertainty: the spread of the chosen model's
predictions when each point is left out (jackknife), widened by its
cross-validated relative error. Recommendations use the upper bound, so an
uncertain fit errs on the safe side, never below what the data allow.

Standard library only: c and a are ordinary least squares in closed form for
a given b; a free b is found on a grid refined by golden-section search.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

B_MIN, B_MAX, B_STEP = 0.05, 4.0, 0.01
#: Growth orders tried as fixed exponents, besides a freely fitted one.
ORDERS = (0.5, 1.0, 1.5, 2.0, 3.0)
#: Extrapolating beyond this multiple of the largest measured size is flagged.
FAR_FACTOR = 4.0
#: A cross-validated relative error above this is "poor".
POOR_CV = 0.10
#: Candidates whose CV error is within TIE_FACTOR x the best (+1 point) count as indistinguishable.
TIE_FACTOR = 1.25
#: The upper bound: prediction + Z jackknife standard errors, at least prediction x (1 + CV error).
Z = 2.0


@dataclass
class Fit:
    c: float
    a: float
    b: float
    r2: float
    method: str
    cv_error: float | None = None
    upper: dict[str, float] = field(default_factory=dict)
    log: bool = False  # c + a * n^b * ln(n) (n log n work: sorting)

    def predict(self, n: float) -> float:
        n = float(n)
        return self.c + self.a * n**self.b * (math.log(n) if self.log else 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def formula(self, unit: str = "") -> str:
        return f"{self.c:.4g} + {self.a:.4g} * n^{self.b:.3f}{' ln n' if self.log else ''}{unit}"


def _linear(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares y = c + a*x with c >= 0 and a >= 0 -> (c, a, sse)."""
    k = len(xs)
    xm = sum(xs) / k
    ym = sum(ys) / k
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx <= 0:
        return max(ym, 0.0), 0.0, sum((y - max(ym, 0.0)) ** 2 for y in ys)
    a = sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sxx
    c = ym - a * xm
    if c < 0:  # no negative fixed cost: through the origin
        sxx0 = sum(x * x for x in xs)
        c, a = 0.0, (sum(x * y for x, y in zip(xs, ys)) / sxx0 if sxx0 > 0 else 0.0)
    if a < 0:  # cost does not fall with size: a constant
        c, a = max(ym, 0.0), 0.0
    return c, a, sum((y - c - a * x) ** 2 for x, y in zip(xs, ys))


def _r2(ys: Sequence[float], sse: float) -> float:
    ym = sum(ys) / len(ys)
    sst = sum((y - ym) ** 2 for y in ys)
    return 1.0 - sse / sst if sst > 0 else (1.0 if sse < 1e-12 else 0.0)


def fit_fixed(ns: Sequence[float], ys: Sequence[float], b: float) -> Fit:
    """``c + a*n^b`` for a given exponent (closed form)."""
    scale = float(max(ns))
    c, a_u, sse = _linear([(float(n) / scale) ** b for n in ns], ys)
    return Fit(c=c, a=a_u / scale**b, b=b, r2=_r2(ys, sse), method=f"fixed b={b:g}")


def fit_power(ns: Sequence[float], ys: Sequence[float]) -> Fit:
    """Least-squares ``c + a*n^b`` with b free (grid, then golden-section search); at least three sizes."""
    if len(ns) != len(ys) or len(ns) < 3:
        raise ValueError("fit_power needs at least three (size, value) pairs")
    scale = float(max(ns))
    us = [float(n) / scale for n in ns]  # conditioning: fit on n/max(n), convert a at the end

    def sse_at(b: float) -> float:
        return _linear([u**b for u in us], ys)[2]

    steps = int(round((B_MAX - B_MIN) / B_STEP))
    best_b = min((B_MIN + i * B_STEP for i in range(steps + 1)), key=sse_at)
    lo, hi = max(B_MIN, best_b - B_STEP), min(B_MAX, best_b + B_STEP)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if sse_at(m1) < sse_at(m2):
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    c, a_u, sse = _linear([u**b for u in us], ys)
    return Fit(c=c, a=a_u / scale**b, b=b, r2=_r2(ys, sse), method="free b")


def fit_nlogn(ns: Sequence[float], ys: Sequence[float]) -> Fit:
    """``c + a*n*ln(n)`` (closed form)."""
    scale = float(max(ns)) * math.log(max(float(max(ns)), 2.0))
    c, a_u, sse = _linear([float(n) * math.log(max(float(n), 2.0)) / scale for n in ns], ys)
    return Fit(c=c, a=a_u / scale, b=1.0, r2=_r2(ys, sse), method="fixed n log n", log=True)


def _fit(kind: float | str | None, ns: Sequence[float], ys: Sequence[float]) -> Fit:
    if kind is None:
        return fit_power(ns, ys)
    if kind == "nlogn":
        return fit_nlogn(ns, ys)
    return fit_fixed(ns, ys, float(kind))


def _cv(kind: float | str | None, ns: list[float], ys: list[float]) -> tuple[float, list[Fit]]:
    """Leave-one-out relative error (the largest point counts double) and the left-out fits."""
    errs, weights, fits = [], [], []
    minimum = 3 if kind is None else 2
    # relative to the point, but never to less than a tenth of the largest value: a few ms of jitter
    # on a tiny first measurement must not outvote how well the larger sizes are predicted
    floor = 0.1 * max(abs(y) for y in ys)
    for i in range(len(ns)):
        rest_n = ns[:i] + ns[i + 1:]
        rest_y = ys[:i] + ys[i + 1:]
        if len(rest_n) < minimum:
            continue
        f = _fit(kind, rest_n, rest_y)
        fits.append(f)
        denom = max(abs(ys[i]), floor, 1e-12)
        w = 2.0 if ns[i] == max(ns) else 1.0
        errs.append(w * abs(f.predict(ns[i]) - ys[i]) / denom)
        weights.append(w)
    return (sum(errs) / sum(weights) if weights else float("inf")), fits


def choose(ns: Sequence[float], ys: Sequence[float], target: float | None = None) -> Fit:
    """The candidate model that cross-validates best, with its CV error and (for ``target``) its upper bound."""
    fit, loo = model(ns, ys)
    if target is not None:
        fit.upper = bounds(fit, loo, target)
    return fit


def model(ns: Sequence[float], ys: Sequence[float]) -> tuple[Fit, list[Fit]]:
    """The chosen model (with its CV error) and its leave-one-out fits, from which
    :func:`bounds` gives the prediction and upper bound at any size: the choice
    does not depend on the size predicted, so a call's own size needs no refit."""
    if len(ns) != len(ys) or len(ns) < 3:
        raise ValueError("scaling needs at least three (size, value) pairs")
    pairs = sorted(zip((float(n) for n in ns), (float(y) for y in ys)))
    xs, vs = [p[0] for p in pairs], [p[1] for p in pairs]
    kinds: list[float | str | None] = list(ORDERS) + ["nlogn"]
    if len(xs) >= 4:  # a free exponent needs a spare point to be judged on
        kinds.append(None)
    scored = []
    for kind in kinds:
        err, loo = _cv(kind, xs, vs)
        scored.append((err, 0 if kind is not None else 1, kind, loo))
    # Near-ties (the data cannot tell them apart) are settled for safety: a fixed growth order over a free
    # exponent, and among those the one that predicts the most at the target.
    best_err = min(s[0] for s in scored)
    ties = [s for s in scored if s[0] <= best_err * TIE_FACTOR + 0.01]
    fixed = [s for s in ties if s[2] is not None] or ties
    err, _, kind, loo = min(fixed, key=lambda s: s[0])
    fit = _fit(kind, xs, vs)
    fit.cv_error = err
    return fit, loo


def bounds(fit: Fit, loo: list[Fit], target: float) -> dict[str, float]:
    """Prediction at ``target`` with a jackknife standard error and the upper bound used for settings."""
    pred = fit.predict(target)
    preds = [f.predict(target) for f in loo]
    k = len(preds)
    se = math.sqrt((k - 1) / k * sum((p - sum(preds) / k) ** 2 for p in preds)) if k >= 2 else 0.0
    cv = fit.cv_error or 0.0
    upper = max(pred + Z * se, pred * (1 + cv), max(preds) if preds else pred)
    return {"prediction": pred, "stderr": se, "upper": upper, "lower": max(0.0, pred - Z * se)}


def extrapolation_warnings(sizes: Sequence[float], target: float, fits: dict[str, Fit]) -> list[str]:
    out = []
    largest = max(sizes)
    if target > FAR_FACTOR * largest:
        out.append(
            f"target {target:,.0f} is {target / largest:,.0f}x the largest measured size {largest:,.0f}: "
            f"far extrapolation, treat the prediction as rough (measure up to >= {target / FAR_FACTOR:,.0f} to tighten it)"
        )
    if len(sizes) < 4:
        out.append("only three sizes: the fit has no spare degrees of freedom to be checked on; measure four or more")
    for name, fit in fits.items():
        if fit.cv_error is not None and fit.cv_error > POOR_CV:
            out.append(f"{name} fit is poor: it predicts each measured size from the others with "
                       f"{fit.cv_error:.0%} error; the settings use its upper bound")
        elif fit.r2 < 0.95:
            out.append(f"{name} fit is poor (R^2 = {fit.r2:.3f}): the measurements do not follow c + a*n^b well")
        up = fit.upper
        if up and up.get("prediction", 0) > 0 and up["upper"] > 1.5 * up["prediction"]:
            out.append(f"{name} prediction is uncertain: {up['prediction']:.3g}, up to {up['upper']:.3g} "
                       f"(the settings use the upper figure)")
    return out
