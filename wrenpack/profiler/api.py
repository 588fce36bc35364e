"""Profiling entry points: ``profile``, ``run_profile``, ``predict_scaling``, ``auto_settings``.

Each measured call runs in a fresh process (see ``launcher``); this module
turns the raw figures into a :class:`Profile`, recommends Lambda settings,
saves the profile under the project's ``.wrenpack/profiles/`` and, for
scaling, fits growth curves over several input sizes.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import statistics
import sys
import threading
from typing import Any, Callable, Sequence

from wrenpack.errors import ProfileError
from wrenpack.profiler import launcher, packages, recommend, scaling, store
from wrenpack.profiler.codehash import code_hash
from wrenpack.profiler.model import Profile

log = logging.getLogger(__name__)

Target = Callable[..., Any] | str

NETWORK_NOT_MEASURABLE = {
    "measurable": False,
    "reason": "Linux keeps no per-process network byte counts; /proc/<pid>/net/dev counts the whole network "
    "namespace, so any figure would include other processes' traffic",
}


def profile(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Profile:
    """Measure ``fn(*args, **kwargs)`` in a clean child process; save and return its Profile."""
    return run_profile(fn, args, kwargs)


def run_profile(
    fn: Target,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    repeat: int = 1,
    lines: bool = False,
    save: bool = True,
    timeout: float | None = None,
    quiet_stdout: bool = False,
) -> Profile:
    """Profile ``fn`` (a callable or a ``"module:fn"`` / ``"path/file.py:fn"`` string) ``repeat`` times."""
    if repeat < 1:
        raise ProfileError(f"repeat must be at least 1, got {repeat}; pass --repeat 1 or more")
    call = {"args": tuple(args), "kwargs": dict(kwargs or {})}
    runs = [_measure(fn, call, timeout=timeout, quiet_stdout=quiet_stdout) for _ in range(repeat)]
    prof = _assemble(runs, args_repr=_args_repr(args, kwargs))
    if lines:
        prof.lines = _measure(fn, call, timeout=timeout, quiet_stdout=quiet_stdout, lines=True).get("lines")
    if save:
        _save(prof)
    return prof


def predict_scaling(
    fn: Target,
    make_input: Target,
    sizes: Sequence[int],
    target: int,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    repeat: int = 1,
    save: bool = True,
    timeout: float | None = None,
    quiet_stdout: bool = False,
) -> Profile:
    """Profile ``fn(make_input(n), *args, **kwargs)`` for each size and predict the ``target`` size.

    Returns the Profile of the largest size with ``.scaling`` filled in.
    Growth counts the generated input (a worker holds it too); the time is
    the fastest of ``repeat`` runs per size.
    """
    sizes = sorted({int(n) for n in sizes})
    if len(sizes) < 3:
        raise ProfileError(f"scaling needs at least three distinct sizes, got {sizes}; e.g. --sizes 1000,2000,4000,8000")
    if min(sizes) <= 0 or target <= 0:
        raise ProfileError("sizes and target must be positive integers")
    call: dict[str, Any] = {"args": tuple(args), "kwargs": dict(kwargs or {})}
    per_size: list[list[dict]] = []
    for n in sizes:
        per_size.append(
            [_measure(fn, call, make_input=make_input, size=n, timeout=timeout, quiet_stdout=quiet_stdout) for _ in range(repeat)]
        )
    growth = [max(r["peak_memory_mb"] - r["baseline_mb"] for r in runs) for runs in per_size]
    fastest = [min(r["duration_s"] for r in runs) for runs in per_size]
    cpu = [min(r["cpu_s"] for r in runs) for runs in per_size]
    baseline = statistics.median(r["baseline_mb"] for runs in per_size for r in runs)
    fits = {
        "memory": scaling.choose(sizes, growth, target),
        "time": scaling.choose(sizes, fastest, target),
        "cpu": scaling.choose(sizes, cpu, target),
    }
    pred = {k: max(0.0, f.upper["prediction"]) for k, f in fits.items()}
    upper = {k: max(0.0, f.upper["upper"]) for k, f in fits.items()}
    peak_t = baseline + pred["memory"]
    prof = _assemble(per_size[-1], args_repr=f"make_input({sizes[-1]})" + (", " + _args_repr(args, kwargs) if args or kwargs else ""))
    prof.scaling = {
        "input": _name(make_input),
        "sizes": sizes,
        "memory_growth_mb": [round(g, 3) for g in growth],
        "duration_s": fastest,
        "cpu_s": cpu,
        "baseline_mb": baseline,
        "memory_fit": fits["memory"].to_dict(),
        "time_fit": fits["time"].to_dict(),
        "cpu_fit": fits["cpu"].to_dict(),
        "target": target,
        "extrapolation_factor": target / sizes[-1],
        "predicted": {"peak_memory_mb": peak_t, "growth_mb": pred["memory"], "duration_s": pred["time"],
                      "cpu_s": pred["cpu"]},
        # the settings come from here: each prediction's upper bound (jackknife spread, cross-validated error)
        "upper": {"peak_memory_mb": baseline + upper["memory"], "growth_mb": upper["memory"],
                  "duration_s": upper["time"], "cpu_s": upper["cpu"]},
        "uncertainty": {k: {n: round(v, 6) for n, v in f.upper.items()} for k, f in fits.items()},
        "recommended": recommend.recommend(baseline + upper["memory"], upper["time"], upper["cpu"],
                                           _predict_tmp(sizes, per_size, target)),
        "warnings": scaling.extrapolation_warnings(sizes, target, {"memory": fits["memory"], "time": fits["time"]}),
    }
    if save:
        _save(prof)
    return prof


_auto_cache: dict[str, dict[str, Any]] = {}
_auto_lock = threading.Lock()


def auto_settings(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings for ``memory="auto"`` / ``timeout="auto"``: the saved profile, or a new one from this call.

    Returns ``{"memory_mb", "timeout_s", "ephemeral_storage_mb", "profile"}``.
    The profile is looked up by the hash of ``fn``'s code, so editing the
    function re-profiles it on next use; delete ``.wrenpack/profiles/`` to force it.
    """
    key = code_hash(fn)
    with _auto_lock:
        found = _auto_cache.get(key)
        if found is None:
            data = store.load(key)
            if data is not None and data.get("recommended"):
                prof = Profile.from_dict(data)
                log.info("using saved profile for %s (%s)", prof.target, key)
            else:
                log.info("no saved profile for %s: profiling it once with the first call's arguments", _name(fn))
                try:
                    prof = run_profile(fn, args, kwargs)
                except ProfileError as exc:
                    raise ProfileError(
                        f"memory/timeout='auto' profiles {_name(fn)} once with the first call's arguments, and that "
                        f"failed: {exc}; fix the call or pass memory= and timeout= explicitly"
                    ) from None
                if prof.code_hash != key:  # e.g. the child saw a different module name: keep under ours too
                    prof.code_hash = key
                    _save(prof)
            found = {
                "memory_mb": prof.memory_mb,
                "timeout_s": prof.timeout_s,
                "ephemeral_storage_mb": prof.ephemeral_storage_mb,
                "profile": prof,
            }
            _auto_cache[key] = found
        return dict(found)


# --------------------------------------------------------------------------- internals


def _name(fn: Target) -> str:
    if isinstance(fn, str):
        return fn
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _args_repr(args: Sequence[Any], kwargs: dict[str, Any] | None) -> str:
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in (kwargs or {}).items()]
    return ", ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sys_path() -> list[str]:
    return [os.getcwd() if p == "" else p for p in sys.path]


def _measure(
    fn: Target,
    call: dict[str, Any],
    *,
    make_input: Target | None = None,
    size: int | None = None,
    timeout: float | None = None,
    quiet_stdout: bool = False,
    lines: bool = False,
) -> dict[str, Any]:
    """One fresh-process run -> a flat dict of figures; ProfileError on any failure."""
    job: dict[str, Any] = {"sys_path": _sys_path(), "cwd": os.getcwd(), "stdout_to_stderr": quiet_stdout, "lines": lines}
    call = dict(call)
    if isinstance(fn, str):
        job["target"] = fn
        job["sys_path"] = [os.getcwd()] + job["sys_path"]
    else:
        call["fn"] = fn
    if make_input is not None:
        job["size"] = size
        if isinstance(make_input, str):
            job["input_target"] = make_input
        else:
            call["make_input"] = make_input
    name = _name(fn)
    try:
        result, launch = launcher.run_job(job, call, timeout=timeout)
    except launcher.JobFailed as exc:
        raise ProfileError(f"profiling {name} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pickling the function or its arguments
        if type(exc).__module__.startswith(("pickle", "cloudpickle", "_pickle")) or "pickle" in str(exc).lower():
            raise ProfileError(f"{name} or its arguments could not be pickled for the child process: {exc}") from None
        raise
    if launch.get("timed_out"):
        raise ProfileError(f"{name} did not finish within {timeout:g} s; raise --max-time or profile a smaller input")
    error = result.get("error")
    if error == "load":
        message = result.get("message", "")
        if result.get("type") == "LookupError":
            raise ProfileError(message)
        raise ProfileError(f"could not load {name} in a fresh process: {result.get('type')}: {message}")
    if error == "raised":
        stage = result.get("stage", "call")
        what = f"make_input({size})" if stage == "make_input" else name
        prefix = "pickling the result of " if stage.startswith("pickling") else ""
        err = ProfileError(f"{prefix}{what} raised {result.get('type')}: {result.get('message')}")
        err.remote_traceback = result.get("traceback")  # type: ignore[attr-defined]
        log.debug("traceback from the profiled call:\n%s", result.get("traceback"))
        raise err
    if "duration_s" not in result:
        raise ProfileError(f"the process running {name} {_death(launch.get('exit_code'))}")
    self_hwm = result["self_hwm_mb"]
    tree_peak = launch.get("tree_peak_mb", 0.0)
    children = result.get("children_maxrss_mb", 0.0)
    # The kernel's own figures first: a child's peak (ru_maxrss of the waited-for children) survives
    # however short it lived or however late the sampler ran; the sampled tree adds what lives at once.
    peak = max(self_hwm, tree_peak, children)
    samples = launch.get("samples", {})
    curve_t, curve_mb = _downsample(samples.get("t", []), samples.get("rss_mb", []))
    return {
        "peak_memory_mb": peak,
        "baseline_mb": result["baseline_mb"],
        "interpreter_mb": result["interpreter_mb"],
        "duration_s": result["duration_s"],
        "cpu_user_s": result["cpu_user_s"],
        "cpu_sys_s": result["cpu_sys_s"],
        "cpu_s": result["cpu_user_s"] + result["cpu_sys_s"],
        "serialize_s": result.get("serialize_s", 0.0),
        "result_bytes": result.get("result_bytes", 0),
        "tmp_peak_mb": launch.get("tmp_peak_mb", 0.0),
        "tmp_final_mb": launch.get("tmp_final_mb", 0.0),
        "processes": launch.get("max_processes", 1),
        "memory_sources": {
            "self_vmhwm_mb": self_hwm,
            "tree_sampled_peak_mb": tree_peak,
            "children_ru_maxrss_mb": result.get("children_maxrss_mb", 0.0),
            "launcher_wait4_maxrss_mb": launch.get("wait4_maxrss_mb"),
            "file_mapped_at_peak_mb": launch.get("file_mapped_at_peak_mb", 0.0),
            "rule": "max(runner VmHWM, children's ru_maxrss, sampled tree peak = runner RSS + each live "
                    "descendant's VmHWM)",
        },
        "samples": {
            "interval_s": launch.get("interval_s"),
            "t": curve_t,
            "rss_mb": curve_mb,
            "call_start_s": result.get("call_start", 0) - launch.get("t_start", 0),
            "call_end_s": result.get("call_end", 0) - launch.get("t_start", 0),
        },
        "modules": result.get("modules", {}),
        "code_hash": result.get("code_hash"),
        "target": result.get("target") or name,
        "lines": result.get("lines"),
        "size": size,
    }


def _death(code: Any) -> str:
    """How the runner died, in words that point at the cause (a segfault is not an out-of-memory kill)."""
    import signal as _signal

    if isinstance(code, int) and code < 0:
        try:
            sig = _signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        why = {
            "SIGSEGV": "a segmentation fault: native code (an extension module, ctypes) crashed",
            "SIGBUS": "a bus error: native code crashed, or a mapped file shrank",
            "SIGABRT": "abort(): a C library or extension gave up (see its message above)",
            "SIGKILL": "SIGKILL: the kernel's out-of-memory killer, or a kill -9",
            "SIGILL": "an illegal instruction: a wheel built for a newer CPU",
            "SIGFPE": "a floating-point exception in native code",
        }.get(sig, sig)
        return f"was killed by {sig} before reporting ({why})"
    return f"exited with code {code} before reporting (os._exit() in the call, or a thread called sys.exit?)"


MAX_CURVE_POINTS = 2000


def _downsample(t: list[float], y: list[float], limit: int = MAX_CURVE_POINTS) -> tuple[list[float], list[float]]:
    """At most ``limit`` points, keeping each bucket's maximum (peaks survive)."""
    if len(t) <= limit:
        return t, y
    step = -(-len(t) // limit)
    out_t, out_y = [], []
    for i in range(0, len(t), step):
        chunk = y[i : i + step]
        j = max(range(len(chunk)), key=chunk.__getitem__)
        out_t.append(t[i + j])
        out_y.append(chunk[j])
    return out_t, out_y


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _assemble(runs: list[dict[str, Any]], args_repr: str) -> Profile:
    """Several runs of the same call -> one Profile (peak: max; duration: median)."""
    peaks = [r["peak_memory_mb"] for r in runs]
    durations = [r["duration_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["duration_s"])[(len(runs) - 1) // 2]
    worst_peak_run = max(runs, key=lambda r: r["peak_memory_mb"])
    duration = statistics.median(durations)
    cpu = median_run["cpu_s"]
    pkgs, local = packages.map_modules(worst_peak_run["modules"])
    tmp_peak = max(r["tmp_peak_mb"] for r in runs)
    rec = recommend.recommend(max(peaks), max(durations), max(r["cpu_s"] for r in runs), tmp_peak)
    mapped = worst_peak_run["memory_sources"].get("file_mapped_at_peak_mb", 0.0)
    if mapped > max(16.0, 0.10 * max(peaks)):
        rec["notes"].append(
            f"{mapped:,.0f} MB of the sampled peak were file pages mapped from disk (mmap'd files, libraries): the "
            f"kernel can drop those under a memory limit (Lambda's, and the local backend's cgroup), so the call may "
            f"run, more slowly, with down to about {max(peaks) - mapped:,.0f} MB; the recommendation keeps them")
    first = runs[0]
    return Profile(
        target=first["target"],
        peak_memory_mb=round(max(peaks), 3),
        duration_s=duration,
        baseline_mb=round(statistics.median(r["baseline_mb"] for r in runs), 3),
        interpreter_mb=round(statistics.median(r["interpreter_mb"] for r in runs), 3),
        growth_mb=round(max(peaks) - statistics.median(r["baseline_mb"] for r in runs), 3),
        cpu_user_s=median_run["cpu_user_s"],
        cpu_sys_s=median_run["cpu_sys_s"],
        # below 10 ms the CPU clock's granularity makes cpu/wall meaningless ("14 cores" for a 0.6 us call)
        cores_busy=round(cpu / duration, 3) if duration >= recommend.MIN_CORES_WALL_S else 0.0,
        serialize_s=median_run["serialize_s"],
        result_bytes=median_run["result_bytes"],
        tmp_peak_mb=round(tmp_peak, 3),
        tmp_final_mb=round(max(r["tmp_final_mb"] for r in runs), 3),
        processes=max(r["processes"] for r in runs),
        network=dict(NETWORK_NOT_MEASURABLE),
        packages=pkgs,
        local_modules=local,
        memory_sources=worst_peak_run["memory_sources"],
        repeat={"n": len(runs), "peak_memory_mb": _stats(peaks), "duration_s": _stats(durations)},
        recommended=rec,
        samples=worst_peak_run["samples"],
        args=args_repr,
        code_hash=first["code_hash"],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=f"{sys.platform}-{platform.machine()}",
    )


def _predict_tmp(sizes: list[int], per_size: list[list[dict]], target: int) -> float:
    tmp = [max(r["tmp_peak_mb"] for r in runs) for runs in per_size]
    if max(tmp) <= 0:
        return 0.0
    try:
        return max(0.0, scaling.choose(sizes, tmp, target).upper["upper"])
    except ValueError:
        return max(tmp)


def _save(prof: Profile) -> None:
    try:
        store.save(prof.to_dict())
    except OSError as exc:  # a read-only project must not stop profiling
        log.warning("could not save the profile: %s", exc)
