"""The measured process: load one function, call it once, report what it cost.

Started by ``wrenpack.profiler.launcher`` (never by the caller directly) as
``python -c "...runner import main..." JOBDIR`` (``launcher.RUNNER_ARGS``; ``-m`` would add runpy's imports). Standard library and
cloudpickle only, like the worker, so the interpreter-plus-imports baseline
matches what a worker carries before it loads the function.

Order of events (what each figure covers)::

    start -> import cloudpickle ........ interpreter_mb (VmRSS)
          -> load function, arguments .. baseline_mb   (VmRSS; includes the function's imports)
          -> [scaling: make_input(n)]
          -> call ........................ duration_s, cpu_*_s, runq_s, wait_s
          -> cloudpickle.dumps(result) ... (as the worker does; counted in the peak)
          -> VmHWM (self) + RUSAGE_CHILDREN ru_maxrss (descendants) -> result.json
          -> (the launcher stops sampling)
          -> [scaling: more timed calls on fresh inputs while the timed total is short] -> timing
          -> imported modules, code hash -> result.json again

Time is split three ways, because only one of them belongs to the call: its
CPU time (``getrusage``, self and waited-for children), the time its threads
sat runnable waiting for a core (``runq_s``, from /proc/self/task/*/schedstat:
other processes' load, not the call's), and the rest of the wall time
(``wait_s``: I/O, sleeps, waiting on children). Wall time alone swings with the
machine's load; CPU time and the non-CPU wait do not (much).

VmHWM is read, not ru_maxrss: a process's ``ru_maxrss`` can start from its
parent's peak (the kernel carries it across fork/exec), VmHWM belongs to
this process's own address space.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time

import cloudpickle

from wrenpack.worker.memory import children_peak_mb, peak_rss_mb, proc_status

EXIT_OK = 0
EXIT_LOAD = 3
EXIT_RAISED = 4


def _rss_mb() -> float:
    kb = proc_status("self", (b"VmRSS:",)).get(b"VmRSS:")
    if kb is None:  # not Linux: best effort
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return kb / 1024.0


def _runq_s() -> float | None:
    """Seconds this process's threads have waited on a run queue (None: no schedstat here).

    Field 2 of /proc/<tid>/schedstat, summed over the live threads: the time
    runnable but not running, which is what a busy machine adds to wall time."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            if tid == str(os.getpid()):
                return None
    return total / 1e9


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, args: tuple, kwargs: dict) -> tuple[object, float, float, float | None]:
    """Call once -> (value, wall, cpu, run-queue wait or None)."""
    q0, c0 = _runq_s(), _cpu_s()
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    t1 = time.perf_counter()
    c1, q1 = _cpu_s(), _runq_s()
    return value, t1 - t0, c1 - c0, (None if q0 is None or q1 is None else max(0.0, q1 - q0))


def _split(wall: float, cpu: float, runq: float | None) -> float:
    """The wall time that is neither CPU nor waiting for a core: I/O, sleeps."""
    return max(0.0, wall - cpu - (runq or 0.0))


def _measures(value) -> dict:
    """What a size could be read from (the api picks the one proportional to n)."""
    out: dict = {}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out["value"] = float(value)
    try:
        out["len"] = float(len(value))
    except Exception:  # noqa: BLE001 - no length
        pass
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(nbytes, bool):
        out["nbytes"] = float(nbytes)
    return out


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere): hands freed heap pages back to the OS."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def _repeat(fn, make_args, first: dict, budget_s: float, max_reps: int) -> dict:
    """More timed calls, each on fresh arguments (a call may change its input),
    until the timed total reaches ``budget_s``: one short call is below what the
    clocks resolve, and the median of several is steadier than any one.

    Each repeat starts as cold as the first call: freed heap memory goes back to
    the OS first. Otherwise a repeat reuses the pages the call before faulted in,
    but only below glibc's largest mmap threshold (32 MB), so small sizes were
    timed warm and large ones cold, and the fit took the difference for growth
    (a linear allocation fitted as n^2)."""
    walls, cpus, runqs = [first["wall"]], [first["cpu"]], [first["runq"]]
    trim = _malloc_trim()
    started = time.perf_counter()
    while len(walls) < max_reps and sum(walls) < budget_s and time.perf_counter() - started < 4 * budget_s + 1:
        try:
            args, kwargs = make_args()
            gc.collect()
            if trim is not None:
                trim(0)
            value, wall, cpu, runq = _timed(fn, args, kwargs)
            del value, args, kwargs
        except Exception:  # noqa: BLE001 - the first call's figures stand
            break
        walls.append(wall)
        cpus.append(cpu)
        runqs.append(runq)
    return {"reps": len(walls), "wall_s": walls, "cpu_s": cpus,
            "runq_s": None if any(q is None for q in runqs) else runqs}


def _hwm_mb() -> float:
    return peak_rss_mb("self") or 0.0


_children_maxrss_mb = children_peak_mb


def _write(jobdir: str, result: dict) -> None:
    path = os.path.join(jobdir, "result.json")
    try:
        with open(path + ".part", "w") as f:
            json.dump(result, f)
        os.replace(path + ".part", path)
    except FileNotFoundError:  # the folder is gone: its caller ended the run (nobody reads this any more)
        pass


def _same_file(a: str | None, b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _load_target(spec: str):
    """``module:attr`` or ``path/to/file.py:attr`` -> the object."""
    import importlib
    import importlib.util

    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise LookupError(f"target {spec!r} is not MODULE:FUNCTION or path/to/file.py:FUNCTION")
    if mod_part.endswith(".py") or os.sep in mod_part:
        path = os.path.abspath(mod_part)
        if not os.path.isfile(path):
            raise LookupError(f"no such file {mod_part!r}; give an existing path/to/file.py:FUNCTION")
        directory, name = os.path.split(path)
        name = name[:-3] if name.endswith(".py") else name
        # A file inside a package is imported as its module (pkg/sub/mod.py -> pkg.sub.mod, from the folder
        # above the package): loaded as a top-level ``mod``, its relative imports failed ("attempted relative
        # import with no known parent package").
        parts = [] if name == "__init__" else [name]
        root = directory
        while os.path.isfile(os.path.join(root, "__init__.py")):
            root, package = os.path.split(root)
            parts.insert(0, package)
        module = None
        if root != directory and parts and all(p.isidentifier() for p in parts):
            dotted = ".".join(parts)
            sys.path.insert(0, root)
            try:
                module = importlib.import_module(dotted)
            except ModuleNotFoundError as exc:  # the package's name is another's, imported already
                if not exc.name or not (dotted + ".").startswith(exc.name + "."):
                    raise
            if not _same_file(getattr(module, "__file__", None), path):  # (likewise)
                sys.path.remove(root)
                module = None
        if module is None:
            sys.path.insert(0, directory)
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_part)
        except ModuleNotFoundError as exc:
            if exc.name and mod_part.split(".")[0] == exc.name.split(".")[0]:
                raise LookupError(
                    f"no module named {mod_part!r}; run from the directory that holds it, "
                    "or give path/to/file.py:FUNCTION"
                ) from None
            raise
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LookupError(f"module {mod_part!r} has no function {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LookupError(f"{spec!r} is a {type(obj).__name__}, not a function")
    return obj


class Refused(TypeError):
    """A target the profiler will not call: reported to the caller as its one-line message."""


#: code flags of a function whose call returns a generator or a coroutine (inspect's CO_GENERATOR,
#: CO_COROUTINE, CO_ASYNC_GENERATOR: read here without importing inspect, a few ms of every run's start)
_CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200


def _check_returns_values(fn) -> None:
    """Refuse, before calling it, a generator or async function, as ``@wrenpack.remote`` does: its call
    returns a generator or a coroutine that does no work until iterated or awaited, so the figures would be
    of nothing, and pickling the result failed after the run ("cannot pickle 'coroutine' object", with a
    "never awaited" RuntimeWarning)."""
    import functools

    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    inner = getattr(inner, "__func__", inner)  # (a bound method)
    flags = getattr(getattr(inner, "__code__", None), "co_flags", 0)
    name = getattr(fn, "__name__", None) or getattr(inner, "__name__", None) or "f"
    if flags & _CO_ASYNC_GENERATOR:  # (list() of one fails: collected in an async function, run by a plain one)
        raise Refused(f"{name} is an async generator function: its calls return async generators, which do no work "
                      f"until iterated, so there is nothing to measure; profile a plain function that collects it, "
                      f"e.g. async def {name}_all(x): return [v async for v in {name}(x)] and "
                      f"def {name}_list(x): return asyncio.run({name}_all(x))")
    if flags & _CO_GENERATOR:
        raise Refused(f"{name} is a generator function: its calls return generators, which do no work until "
                      f"iterated, so there is nothing to measure; profile a function that returns a list, e.g. "
                      f"def {name}_list(x): return list({name}(x))")
    if flags & _CO_COROUTINE:
        raise Refused(f"{name} is an async function: its calls return coroutines, which do no work until awaited, "
                      f"so there is nothing to measure; profile a plain function that runs it, e.g. "
                      f"def {name}_run(x): return asyncio.run({name}(x))")


def _line_report(lp) -> list:
    import linecache

    out = []
    for filename, lines in lp.code_map.items():
        source = linecache.getlines(filename)
        for lineno, mem in lines:
            text = source[lineno - 1].rstrip("\n") if 0 < lineno <= len(source) else ""
            row = {"file": filename, "line": lineno, "source": text}
            if mem is not None:
                row.update(increment_mb=round(mem[0], 2), mem_mb=round(mem[1], 2), occurrences=mem[2])
            out.append(row)
    return out


def imported_modules(new: set[str], preloaded: set[str]) -> list[str]:
    """Every module (dotted, submodules too) the function's loading and call imported, outside the standard
    library and what the runner had already: which optional parts of a package it needs (pyarrow.flight...),
    for ``build-runtime --from-profile``."""
    return sorted(n for n in new if n.partition(".")[0] not in preloaded
                  and n.partition(".")[0] not in sys.stdlib_module_names and not n.startswith("wrenpack"))


def main(jobdir: str) -> int:
    interpreter_mb = _rss_mb()
    preloaded = set(sys.modules)
    with open(os.path.join(jobdir, "job.json")) as f:
        job = json.load(f)
    sys.path[:] = job["sys_path"]
    if job.get("cwd"):
        os.chdir(job["cwd"])
    result: dict = {"interpreter_mb": interpreter_mb, "pid": os.getpid()}

    # -- load: the function, its module's imports, the arguments ---------------
    try:
        with open(os.path.join(jobdir, "call.pkl"), "rb") as f:
            call_bytes = f.read()
        call = cloudpickle.loads(call_bytes)
        fn = call.get("fn") or _load_target(job["target"])
        _check_returns_values(fn)
        make_input = call.get("make_input")
        if make_input is None and job.get("input_target"):
            make_input = _load_target(job["input_target"])
        args, kwargs = tuple(call.get("args") or ()), dict(call.get("kwargs") or {})
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as one line
        import traceback as tb_  # (only on failure: its import is a few ms of every run's start)

        result.update(error="load", type=type(exc).__name__, message=str(exc), traceback=tb_.format_exc())
        _write(jobdir, result)
        return EXIT_LOAD
    result["baseline_mb"] = _rss_mb()
    result["load_hwm_mb"] = _hwm_mb()

    # -- call ------------------------------------------------------------------
    size = job.get("size")
    stage = "make_input"
    try:
        if make_input is not None and size is not None:
            t = time.perf_counter()
            args = (make_input(size),) + args
            result["make_input_s"] = time.perf_counter() - t
        stage = "call"
        call_fn, lp = fn, None
        if job.get("lines"):  # a separate, slower run: memory_profiler traces each line
            from memory_profiler import LineProfiler

            lp = LineProfiler(backend="psutil")
            call_fn = lp(fn)
        if size is not None:
            result["input_measures"] = _measures(args[0])
        q0 = _runq_s()
        self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        result["call_start"] = time.time()
        t0 = time.perf_counter()
        value = call_fn(*args, **kwargs)
        t1 = time.perf_counter()
        result["call_end"] = time.time()
        self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        q1 = _runq_s()
        stage = "pickling the result of"
        payload = cloudpickle.dumps(value)
        result["serialize_s"] = time.perf_counter() - t1
        result["result_bytes"] = len(payload)
        del payload, value
    except BaseException as exc:  # noqa: BLE001
        import traceback as tb_

        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
        result.update(
            error="raised", stage=stage, type=type(exc).__name__, message=str(exc),
            traceback="".join(tb_.format_exception(type(exc), exc, tb)),
        )
        _write(jobdir, result)
        return EXIT_RAISED
    if lp is not None:
        result["lines"] = _line_report(lp)
    result["duration_s"] = t1 - t0
    result["cpu_user_s"] = (self1.ru_utime - self0.ru_utime) + (kids1.ru_utime - kids0.ru_utime)
    result["cpu_sys_s"] = (self1.ru_stime - self0.ru_stime) + (kids1.ru_stime - kids0.ru_stime)
    runq = None if q0 is None or q1 is None else max(0.0, q1 - q0)
    result["runq_s"] = runq
    result["wait_s"] = _split(t1 - t0, result["cpu_user_s"] + result["cpu_sys_s"], runq)
    result["self_hwm_mb"] = _hwm_mb()
    result["children_maxrss_mb"] = _children_maxrss_mb()
    # Measurement done: the launcher stops sampling once result.json exists, so
    # the bookkeeping below (hashlib's OpenSSL alone is ~4 MB) stays out of the figures.
    _write(jobdir, result)

    budget = float(job.get("min_timed_s") or 0.0)
    if budget > 0 and lp is None:
        first = {"wall": t1 - t0, "cpu": result["cpu_user_s"] + result["cpu_sys_s"], "runq": runq}

        def fresh() -> tuple[tuple, dict]:
            again = cloudpickle.loads(call_bytes) if call.get("args") or call.get("kwargs") else {}
            rest = tuple(again.get("args") or ())
            if make_input is not None and size is not None:
                rest = (make_input(size),) + rest
            return rest, dict(again.get("kwargs") or {})

        del args, kwargs  # the first call's input: a repeat makes its own
        result["timing"] = _repeat(fn, fresh, first, budget, int(job.get("max_reps") or 50))

    # -- what it needed (after the measurement, so it costs nothing above) -------
    modules = {}
    for name in set(sys.modules) - preloaded:
        top = name.partition(".")[0]
        if top in modules or top in preloaded:
            continue
        mod = sys.modules.get(top)
        modules[top] = getattr(mod, "__file__", None) if mod is not None else None
    result["modules"] = modules
    result["imported_modules"] = imported_modules(set(sys.modules) - preloaded, preloaded)
    try:
        from wrenpack.profiler.codehash import code_hash

        result["code_hash"] = code_hash(fn)
    except Exception as exc:  # noqa: BLE001 - the profile is still useful without it
        result["code_hash"] = None
        result["code_hash_error"] = f"{type(exc).__name__}: {exc}"
    result["target"] = job.get("target") or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
    _write(jobdir, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.stdout.flush()
    sys.exit(main(sys.argv[1]))
