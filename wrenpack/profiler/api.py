"""Profiling entry points: ``profile``, ``run_profile``, ``predict_scaling``, ``auto_settings``.

Each measured call runs in a fresh process (see ``launcher``); this module
turns the raw figures into a :class:`Profile`, recommends Lambda settings,
saves the profile under the project's ``.wrenpack/profiles/`` and, for
scaling, fits growth curves over several input sizes.
"""
from __future__ import annotations

import datetime as _dt
import logging
import platform
import statistics
import sys
import threading
from typing import Any, Callable, Sequence

from wrenpack import limits
from wrenpack.errors import ProfileError
from wrenpack.profiler import launcher, packages, recommend, scaling, sizing, store
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
    started: launcher.Started | None = None,
) -> Profile:
    """Profile ``fn`` (a callable or a ``"module:fn"`` / ``"path/file.py:fn"`` string) ``repeat`` times.

    ``started``: the first run, already started (``launcher.start_job`` with
    this call's job): the command line starts it before importing the rest."""
    if repeat < 1 or not _timeout_ok(timeout):
        if started is not None:
            started.wait()  # (nothing left behind)
        if repeat < 1:
            raise ProfileError(f"repeat must be at least 1, got {repeat}; pass --repeat 1 or more")
        _check_timeout(timeout)
    call = {"args": tuple(args), "kwargs": dict(kwargs or {})}
    runs = [_measure(fn, call, timeout=timeout, quiet_stdout=quiet_stdout, started=started if i == 0 else None)
            for i in range(repeat)]
    prof = _assemble(runs, args_repr=_args_repr(args, kwargs))
    if lines:
        prof.lines = _measure(fn, call, timeout=timeout, quiet_stdout=quiet_stdout, lines=True).get("lines")
    if save:
        _save(prof)
    return prof


#: a scaling run repeats a size's call (on fresh inputs) until this much of it is timed
MIN_TIMED_S = 0.25
#: at most this many calls per size and process
MAX_REPS = 100


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
    Growth counts the generated input (a worker holds it too). Time is CPU
    time and non-CPU wait, fitted apart (wall time swings with the machine's
    load); a short call is repeated on fresh inputs until ``MIN_TIMED_S`` of it
    is timed, and each size's figure is the median call of the fastest process.
    The saved points let ``memory="auto"`` size each call at its own n
    (``sizing.Sizer``); the rule reading n from a call's first argument is found
    here (``sizing.size_rule``).
    """
    _check_timeout(timeout)
    sizes = sorted({int(n) for n in sizes})
    if len(sizes) < 3:
        raise ProfileError(f"scaling needs at least three distinct sizes, got {sizes}; e.g. --sizes 1000,2000,4000,8000")
    if min(sizes) <= 0 or target <= 0:
        raise ProfileError("sizes and target must be positive integers")
    call: dict[str, Any] = {"args": tuple(args), "kwargs": dict(kwargs or {})}
    per_size: list[list[dict]] = []
    for n in sizes:
        per_size.append(
            [_measure(fn, call, make_input=make_input, size=n, timeout=timeout, quiet_stdout=quiet_stdout,
                      min_timed_s=MIN_TIMED_S) for _ in range(repeat)]
        )
    growth = [max(r["peak_memory_mb"] - r["baseline_mb"] for r in runs) for runs in per_size]
    timed = [min(runs, key=lambda r: r["call_cpu_s"] + r["call_wait_s"]) for runs in per_size]
    baseline = statistics.median(r["baseline_mb"] for runs in per_size for r in runs)
    tmp = [max(r["tmp_peak_mb"] for r in runs) for runs in per_size]
    largest = timed[-1]
    sc: dict[str, Any] = {
        "input": _name(make_input),
        "sizes": sizes,
        "memory_growth_mb": [round(g, 3) for g in growth],
        "duration_s": [min(r["call_wall_s"] for r in runs) for runs in per_size],
        "cpu_s": [r["call_cpu_s"] for r in timed],
        "wait_s": [r["call_wait_s"] for r in timed],
        "runq_s": [r["call_runq_s"] for r in timed],
        "reps": [r["reps"] for r in timed],
        "timed_s": [r["timed_s"] for r in timed],
        "tmp_mb": [round(t, 3) for t in tmp],
        "cores": round(largest["call_cpu_s"] / largest["call_wall_s"], 3) if largest["call_wall_s"] >= recommend.MIN_CORES_WALL_S else 1.0,
        "baseline_mb": baseline,
        "size_rule": sizing.size_rule(sizes, [runs[0].get("input_measures") or {} for runs in per_size]),
        "target": target,
        "extrapolation_factor": target / sizes[-1],
    }
    sizer = sizing.Sizer(sc)
    at = sizer.at(target)
    fits = sizer.fits()
    # the wall-time fit, kept for comparison: the settings never come from it (it moves with the machine's load)
    wall_fit = scaling.choose(sizes, sc["duration_s"], target)
    for name, key in (("memory", "memory_fit"), ("cpu", "cpu_fit"), ("wait", "wait_fit")):
        fit = fits.get(name)
        if fit is not None:
            fit.upper = at["uncertainty"][name]
            sc[key] = fit.to_dict()
        else:  # a small share of the time: scaled in proportion to n, not fitted
            v = sizer.constant.get(name, 0.0)
            sc[key] = {"method": "negligible: in proportion to n from the largest size", "c": 0.0,
                       "a": v / sizes[-1], "b": 1.0, "log": False, "r2": 1.0, "cv_error": None,
                       "upper": at["uncertainty"][name]}
    sc["time_fit"] = wall_fit.to_dict()
    sc["predicted"] = at["predicted"]
    sc["upper"] = at["upper"]
    sc["uncertainty"] = at["uncertainty"]
    sc["recommended"] = at["recommended"]
    sc["time_trusted"] = sizer.untrusted is None
    sc["time_untrusted_reason"] = sizer.untrusted
    judged = {"memory": fits["memory"]}
    judged.update({f"{k} time": f for k, f in fits.items() if k in ("cpu", "wait")})
    sc["warnings"] = scaling.extrapolation_warnings(sizes, target, judged)
    if sizer.untrusted:
        sc["warnings"].append(f"time prediction not trusted: {sizer.untrusted}; the timeout is not made from it")
    if sc["size_rule"] is None:
        sc["warnings"].append("no measure of the generated input (its value, len(), .nbytes) is in proportion to n: "
                              "memory=\"auto\" sizes calls at the target unless given auto_size=")
    prof = _assemble(per_size[-1], args_repr=f"make_input({sizes[-1]})" + (", " + _args_repr(args, kwargs) if args or kwargs else ""))
    prof.scaling = sc
    if save:
        _save(prof)
    return prof


_auto_cache: dict[str, dict[str, Any]] = {}
_auto_lock = threading.Lock()
#: code hash -> (the scaling profile dict it was built from, its Sizer)
_sizers: dict[str, tuple[dict[str, Any], sizing.Sizer]] = {}


class AutoPlan:
    """What ``memory="auto"`` / ``timeout="auto"`` run a function's calls with.

    With a scaling profile, each call is sized at its own input size
    (``sizing.Sizer.for_call``); with a single-call profile, every call gets its
    recommendation. ``for_call`` returns ``{"memory_mb", "timeout_s",
    "ephemeral_storage_mb", "n", "why", "profile": "scaling"|"call"}``."""

    def __init__(self, label: str, sizer: sizing.Sizer | None = None, single: dict[str, Any] | None = None,
                 size_fn: Callable[..., Any] | None = None) -> None:
        self.label = label
        self.sizer = sizer
        self.single = single
        self.size_fn = size_fn

    @property
    def per_call(self) -> bool:
        """Whether calls may get different settings (a scaling profile)."""
        return self.sizer is not None

    def for_call(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.sizer is not None:
            got = self.sizer.for_call(args, kwargs or {}, self.label, self.size_fn)
            got["profile"] = "scaling"
            return got
        assert self.single is not None
        return dict(self.single)


def auto_plan(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
              size_fn: Callable[..., Any] | None = None) -> AutoPlan:
    """The plan for ``fn``'s "auto" calls: its saved scaling profile if there is
    one (re-read when its file changes), else its single-call profile, else a
    new single-call profile of this call (``args``, ``kwargs``)."""
    key = code_hash(fn)
    label = _name(fn)
    with _auto_lock:
        data = store.load_cached(key, store.SCALING)
        if data is not None and data.get("scaling"):
            kept = _sizers.get(key)
            if kept is None or kept[0] is not data:
                try:
                    kept = _sizers[key] = (data, sizing.Sizer(data["scaling"]))
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("ignoring the saved scaling profile of %s: %s", label, exc)
                    kept = None
                else:
                    log.info("using the saved scaling profile of %s (%s)", label, key)
            if kept is not None:
                return AutoPlan(label, sizer=kept[1], size_fn=size_fn)
        found = _auto_cache.get(key)
        if found is None:
            data = store.load(key)
            saved = _saved_call_profile(data, key) if data is not None and data.get("recommended") else None
            if saved is not None:
                prof = saved
                log.info("using saved profile for %s (%s)", prof.target, key)
            else:
                # (a warning: it runs the call here, to its end, before anything is launched, so its
                # side effects happen twice and this machine must hold its memory)
                log.warning("wrenpack: no saved profile for %s: running it here once, with the first call's "
                            "arguments, to size memory/timeout='auto' (its side effects happen here too; "
                            "`wrenpack profile` ahead of time avoids this)", label)
                try:
                    prof = run_profile(fn, args, kwargs)
                except ProfileError as exc:
                    raise ProfileError(
                        f"memory/timeout='auto' profiles {label} once with the first call's arguments, and that "
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
    prof = found["profile"]
    why = f"single-call profile of {label} ({prof.args or 'no arguments'}): its recommendation"
    if size_fn is not None:
        why += " (auto_size is used only with a scaling profile)"
    single = {k: found[k] for k in ("memory_mb", "timeout_s", "ephemeral_storage_mb")}
    single.update(n=None, why=why, profile="call")
    return AutoPlan(label, single=single)


def auto_settings(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                  size_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Settings for ``memory="auto"`` / ``timeout="auto"`` for this call.

    Returns ``{"memory_mb", "timeout_s", "ephemeral_storage_mb", "n", "why", "profile"}``:
    with a saved scaling profile, sized at this call's input size (``n``; read
    from its first argument as the scaling run found, or by ``size_fn``);
    else the saved single-call profile's recommendation (``profile`` is then
    the Profile), profiling ``fn`` once with these arguments if there is none.
    Profiles are looked up by the hash of ``fn``'s code, so editing the
    function re-profiles it on next use; delete ``.wrenpack/profiles/`` to force it.
    """
    plan = auto_plan(fn, args, kwargs, size_fn)
    out = plan.for_call(args, kwargs)
    if not plan.per_call:
        out["profile"] = _auto_cache[code_hash(fn)]["profile"]
    return out


# --------------------------------------------------------------------------- internals


def _saved_call_profile(data: dict[str, Any], key: str) -> Profile | None:
    """The saved single-call profile ``data`` if its recommendation is one Lambda takes;
    else None, with the warning an unparsable file gets. Profiles are plain JSON that any
    process of the user (a job's code too) can write: one with the wrong fields or types
    crashed every "auto" call with a traceback, and an out-of-range memory was refused as
    the caller's "options", its file unnamed."""
    try:
        prof = Profile.from_dict(data)
        if not isinstance(prof.recommended, dict):
            raise TypeError("its 'recommended' is not a table")
        memory, timeout, ephemeral = prof.memory_mb, prof.timeout_s, prof.ephemeral_storage_mb
        limits.check_memory(memory, name="memory_mb")
        limits.check_timeout(timeout, name="timeout_s")
        limits.check_ephemeral(ephemeral, name="ephemeral_storage_mb")
    except (TypeError, ValueError, OverflowError) as exc:  # (ConfigError is a ValueError)
        store.warn_unusable(store.path_for(key), exc)
        return None
    return prof



def _timeout_ok(timeout: float | None) -> bool:
    return timeout is None or (isinstance(timeout, (int, float)) and timeout > 0)  # (NaN is not > 0)


def _check_timeout(timeout: float | None) -> None:
    """Refuse a timeout that is not a positive number before anything runs: the launcher read 0 as
    "no limit" (a hung call ran for ever) and a negative one as "stop at once", after the start."""
    if not _timeout_ok(timeout):
        raise ProfileError(f"timeout must be a positive number of seconds, got {timeout!r}; pass e.g. timeout=60 "
                           "(--max-time 60), or None for no limit")


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


def _measure(
    fn: Target,
    call: dict[str, Any],
    *,
    make_input: Target | None = None,
    size: int | None = None,
    timeout: float | None = None,
    quiet_stdout: bool = False,
    lines: bool = False,
    min_timed_s: float = 0.0,
    started: launcher.Started | None = None,
) -> dict[str, Any]:
    """One fresh-process run -> a flat dict of figures; ProfileError on any failure."""
    job = launcher.job_spec(fn if isinstance(fn, str) else None, quiet_stdout=quiet_stdout, lines=lines)
    if min_timed_s > 0:
        job.update(min_timed_s=min_timed_s, max_reps=MAX_REPS)
    call = dict(call)
    if not isinstance(fn, str):
        call["fn"] = fn
    if make_input is not None:
        job["size"] = size
        if isinstance(make_input, str):
            job["input_target"] = make_input
        else:
            call["make_input"] = make_input
    name = _name(fn)
    try:
        result, launch = (started or launcher.start_job(job, call, timeout=timeout)).wait()
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
        if result.get("type") in ("LookupError", "Refused"):  # (runner.Refused: a generator or async function)
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
    cpu = result["cpu_user_s"] + result["cpu_sys_s"]
    return {
        **_call_timing(result, cpu),
        "wait_s": result.get("wait_s"),
        "runq_s": result.get("runq_s"),
        "input_measures": result.get("input_measures"),
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
        "threads": launch.get("max_threads", 1),
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
        "imported_modules": result.get("imported_modules", []),
        "code_hash": result.get("code_hash"),
        "target": result.get("target") or name,
        "lines": result.get("lines"),
        "size": size,
    }


def _call_timing(result: dict[str, Any], cpu: float) -> dict[str, Any]:
    """One call's time in the runner's figures: the median of its timed repeats
    (the first call alone when it was not repeated), split into CPU, the wait
    for a core (``runq``: the machine's load) and the rest (``wait``: I/O, sleeps)."""
    timing = result.get("timing")
    if not timing:
        wall = result["duration_s"]
        runq = result.get("runq_s")
        wait = result.get("wait_s")
        return {"call_wall_s": wall, "call_cpu_s": cpu, "call_runq_s": runq,
                "call_wait_s": max(0.0, wall - cpu) if wait is None else wait, "reps": 1, "timed_s": wall}
    walls, cpus, runqs = timing["wall_s"], timing["cpu_s"], timing.get("runq_s")
    waits = [max(0.0, w - c - (runqs[i] if runqs else 0.0)) for i, (w, c) in enumerate(zip(walls, cpus))]
    med = statistics.median
    return {"call_wall_s": med(walls), "call_cpu_s": med(cpus), "call_runq_s": med(runqs) if runqs else None,
            "call_wait_s": med(waits), "reps": len(walls), "timed_s": sum(walls)}


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
    waits = [r.get("wait_s") for r in runs]
    wait = max(waits) if all(w is not None for w in waits) else None  # type: ignore[type-var]
    threads = max(r.get("threads", 1) for r in runs)
    longest = max(runs, key=lambda r: r["duration_s"])
    rec = recommend.recommend(max(peaks), max(durations), max(r["cpu_s"] for r in runs), tmp_peak, wait_s=wait,
                              threads=threads, runq_s=longest.get("runq_s"))
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
        wait_s=median_run.get("wait_s"),
        runq_s=median_run.get("runq_s"),
        # (below 10 ms the CPU clock's granularity makes cpu/wall meaningless: "14 cores" for a 0.6 us call;
        # the time its threads waited for a core is the machine's load, not the call's)
        cores_busy=round(recommend.cores_busy(cpu, duration, median_run.get("runq_s")), 3),
        serialize_s=median_run["serialize_s"],
        result_bytes=median_run["result_bytes"],
        tmp_peak_mb=round(tmp_peak, 3),
        tmp_final_mb=round(max(r["tmp_final_mb"] for r in runs), 3),
        processes=max(r["processes"] for r in runs),
        threads=threads,
        network=dict(NETWORK_NOT_MEASURABLE),
        packages=pkgs,
        local_modules=local,
        imported_modules=worst_peak_run.get("imported_modules", []),
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


def _save(prof: Profile) -> None:
    try:
        store.save(prof.to_dict())
    except OSError as exc:  # a read-only project must not stop profiling
        log.warning("could not save the profile: %s", exc)
