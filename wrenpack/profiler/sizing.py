"""Settings at any input size from a scaling run's measured points.

A scaling run (``predict_scaling``) measures ``fn(make_input(n))`` at a few
sizes. Its saved points answer for any n, not only for the run's target:
``memory="auto"`` sizes each call from the prediction at that call's own input
size, read from its first argument by the rule the run found (the argument is
n itself, or its ``len()``, or its ``nbytes``, in proportion to n) or by the
user's ``auto_size`` function. The run's own recommendation at its target is
made here too, so a call at the target gets exactly what the report says.

Time is predicted from CPU time and the non-CPU wait (I/O, sleeps), fitted
apart: both hold still on a busy machine, where wall time does not. A part
that is a small share of the whole is not fitted (a fit through clock noise
extrapolates noise): it is scaled in proportion to n from its value at the
largest measured size, never below that value. A time
prediction that cannot be trusted is flagged, and the timeout then does not
come from it (``recommend``'s ``untrusted_time``).
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

from wrenpack.errors import ConfigError
from wrenpack.profiler import recommend, scaling

#: how a size may be read from the first argument, in order of preference
MEASURES = ("value", "len", "nbytes")
#: a measure is "in proportion to n" when its ratio to n varies less than this across sizes
PROPORTION_TOL = 0.02
#: a time part (CPU, wait) below this share of the largest measured time, or below
#: NEGLIGIBLE_S, is scaled in proportion to n, not fitted
NEGLIGIBLE_SHARE = 0.05
NEGLIGIBLE_S = 0.002
#: a size timed for less than this in all (after repeats) is below what the clocks resolve
MIN_TIMED_TOTAL_S = 0.005
#: a time fit whose cross-validated error exceeds this is not used for the timeout
UNTRUSTED_CV = 0.25
#: predictions kept per scaling profile (a map's calls repeat sizes)
CACHE_SIZE = 4096


def size_rule(sizes: Sequence[int], measures: Sequence[dict[str, float]]) -> dict[str, Any] | None:
    """The first measure of the generated input that is in proportion to n at
    every size: ``{"measure": "value"|"len"|"nbytes", "per_unit": ratio}``."""
    for name in MEASURES:
        values = [m.get(name) for m in measures]
        if len(values) != len(sizes) or any(v is None or v <= 0 for v in values):
            continue
        ratios = [float(v) / n for v, n in zip(values, sizes)]  # type: ignore[arg-type]
        if max(ratios) <= min(ratios) * (1 + PROPORTION_TOL):
            return {"measure": name, "per_unit": statistics.median(ratios)}
    return None


def describe_rule(rule: dict[str, Any] | None) -> str:
    if not rule:
        return "no size rule"
    what = {"value": "the first argument's value", "len": "len() of the first argument",
            "nbytes": ".nbytes of the first argument"}[rule["measure"]]
    per = rule["per_unit"]
    return what if abs(per - 1.0) < 1e-9 else f"{what} / {per:g}"


def read_size(rule: dict[str, Any] | None, args: Sequence[Any]) -> float | None:
    """A call's n by the profile's rule; None when its first argument does not have it."""
    if not rule or not args:
        return None
    x = args[0]
    try:
        if rule["measure"] == "value":
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                return None
            value = float(x)
        elif rule["measure"] == "len":
            value = float(len(x))
        else:
            nbytes = getattr(x, "nbytes", None)
            if isinstance(nbytes, bool) or not isinstance(nbytes, int):
                return None
            value = float(nbytes)
    except TypeError:
        return None
    return value / rule["per_unit"] if value > 0 else None


class Sizer:
    """Predictions and settings at any n from one scaling profile's ``scaling`` section."""

    def __init__(self, sc: dict[str, Any]) -> None:
        self.sc = sc
        self.sizes = [float(n) for n in sc["sizes"]]
        self.baseline = float(sc.get("baseline_mb", 0.0))
        self.rule = sc.get("size_rule")
        self.models: dict[str, tuple[scaling.Fit, list[scaling.Fit]] | None] = {
            "memory": scaling.model(self.sizes, sc["memory_growth_mb"]),
        }
        self.constant: dict[str, float] = {}
        self.split = sc.get("wait_s") is not None  # saved before CPU and wait were fitted apart: wall time
        if self.split:
            total = max(c + w for c, w in zip(sc["cpu_s"], sc["wait_s"]))
            for part in ("cpu", "wait"):
                ys = [float(y) for y in sc[f"{part}_s"]]
                if max(ys) < max(NEGLIGIBLE_S, NEGLIGIBLE_SHARE * total):
                    self.models[part] = None
                    self.constant[part] = ys[-1] if ys[-1] > 0 else max(ys)
                else:
                    self.models[part] = scaling.model(self.sizes, ys)
        else:
            self.models["time"] = scaling.model(self.sizes, sc["duration_s"])
            self.models["cpu"] = scaling.model(self.sizes, sc["cpu_s"])
        tmp = sc.get("tmp_mb")
        self.models["tmp"] = scaling.model(self.sizes, tmp) if tmp and max(tmp) > 0 else None
        self.cores = float(sc.get("cores") or 1.0)
        self.untrusted = self._untrusted()
        self._cache: dict[float, dict[str, Any]] = {}

    def fits(self) -> dict[str, scaling.Fit]:
        return {k: m[0] for k, m in self.models.items() if m is not None}

    def _untrusted(self) -> str | None:
        """Why the time prediction cannot be trusted (None: it can)."""
        timed = self.sc.get("timed_s")
        if timed and min(timed) < MIN_TIMED_TOTAL_S:
            i = min(range(len(timed)), key=timed.__getitem__)
            return (f"the calls at n={self.sizes[i]:,.0f} were timed for {timed[i] * 1e3:.2f} ms in all, "
                    "below what the clocks resolve")
        for part in ("cpu", "wait") if self.split else ("time",):
            m = self.models.get(part)
            if m is not None and (m[0].cv_error or 0.0) > UNTRUSTED_CV:
                return (f"the {part} time fit predicts each measured size from the others with "
                        f"{m[0].cv_error:.0%} error")
        return None

    def _part(self, part: str, n: float) -> dict[str, float]:
        m = self.models.get(part)
        if m is None:
            v = self.constant.get(part, 0.0) * max(1.0, n / max(self.sizes))
            return {"prediction": v, "stderr": 0.0, "upper": v, "lower": v}
        b = scaling.bounds(m[0], m[1], n)
        return {k: max(0.0, v) for k, v in b.items()}

    def at(self, n: float) -> dict[str, Any]:
        """``predicted``, ``upper``, ``uncertainty`` and ``recommended`` at input size ``n``."""
        n = float(n)
        hit = self._cache.get(n)
        if hit is not None:
            return hit
        mem = self._part("memory", n)
        unc = {"memory": mem}
        tmp = self._part("tmp", n)["upper"] if self.models.get("tmp") else 0.0
        if self.split:
            cpu, wait = self._part("cpu", n), self._part("wait", n)
            unc.update(cpu=cpu, wait=wait)
            cores = self.cores if self.cores > 1.1 else 1.0
            wall_p = cpu["prediction"] / cores + wait["prediction"]
            wall_u = cpu["upper"] / cores + wait["upper"]
            rec = recommend.recommend(self.baseline + mem["upper"], wall_u, cpu["upper"], tmp,
                                      wait_s=wait["upper"], untrusted_time=self.untrusted)
            predicted = {"duration_s": wall_p, "cpu_s": cpu["prediction"], "wait_s": wait["prediction"]}
            upper = {"duration_s": wall_u, "cpu_s": cpu["upper"], "wait_s": wait["upper"]}
        else:
            time, cpu = self._part("time", n), self._part("cpu", n)
            unc.update(time=time, cpu=cpu)
            rec = recommend.recommend(self.baseline + mem["upper"], time["upper"], cpu["upper"], tmp,
                                      untrusted_time=self.untrusted)
            predicted = {"duration_s": time["prediction"], "cpu_s": cpu["prediction"]}
            upper = {"duration_s": time["upper"], "cpu_s": cpu["upper"]}
        out = {
            "n": n,
            "predicted": {"peak_memory_mb": self.baseline + mem["prediction"], "growth_mb": mem["prediction"], **predicted},
            "upper": {"peak_memory_mb": self.baseline + mem["upper"], "growth_mb": mem["upper"], **upper},
            "uncertainty": {k: {name: round(v, 6) for name, v in b.items()} for k, b in unc.items()},
            "recommended": rec,
        }
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[n] = out
        return out

    def for_call(self, args: Sequence[Any], kwargs: dict[str, Any], label: str,
                 size_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Settings for one call: at its own size where it can be read, else at the target."""
        target = float(self.sc["target"])
        n: float | None
        if size_fn is not None:
            try:
                n, how = float(size_fn(*args, **kwargs)), "auto_size"
            except Exception as exc:  # noqa: BLE001 - the user's function: one line naming it
                raise ConfigError(f"auto_size raised {type(exc).__name__}: {exc} for a call of {label}; it must "
                                  "return the call's input size (the n of the scaling profile) as a number") from None
        else:
            n, how = read_size(self.rule, args), describe_rule(self.rule)
        if n is None or n <= 0:
            got = self.at(target)
            reason = ("its input's size could not be read (" + (
                f"the profile reads it as {how}, which this call's first argument does not have"
                if self.rule else "no measure of the generated input was in proportion to n") +
                "; pass auto_size=lambda *args, **kwargs: n to say it)")
            why = f"scaling profile of {label}: {reason}: the settings at its target n={target:,.0f}"
            sized = None
        else:
            got = self.at(n)
            up = got["upper"]
            timing = (f"CPU {up['cpu_s']:.3g} s + wait {up['wait_s']:.3g} s" if self.split
                      else f"{up['duration_s']:.3g} s")
            why = (f"scaling profile of {label}: n={n:,.0f} ({how}) -> peak up to {up['peak_memory_mb']:,.0f} MB, "
                   f"{timing} (upper bounds; measured up to n={max(self.sizes):,.0f})")
            if n > scaling.FAR_FACTOR * max(self.sizes):
                why += f"; {n / max(self.sizes):,.0f}x the largest measured size: far extrapolation"
            sized = n
        rec = got["recommended"]
        if not rec.get("time_trusted", True):
            why += f"; timeout {rec['timeout_s']} s: {self.untrusted}"
        return {"memory_mb": rec["memory_mb"], "timeout_s": rec["timeout_s"],
                "ephemeral_storage_mb": rec["ephemeral_storage_mb"], "n": sized, "why": why,
                "estimated_duration_s": rec["estimated_duration_s"]}
