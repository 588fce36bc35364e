"""What a function's saved profile says before its calls launch: how long a
call takes (Lambda's CPU share applied where the backend gives CPU by memory)
and whether the function checkpoints. Read on every launch, so the profiler's
modules are imported once and a function's code hash is kept while its code,
defaults and closure cells stay the same objects."""
from __future__ import annotations

from typing import Any, Callable

_profiler_parts: tuple[Any, Any, Any] | None = None


def _profiler() -> tuple[Any, Any, Any]:
    """The profiler modules a launch asks (imported on first use: a program
    that never launches never loads the profiler)."""
    global _profiler_parts
    if _profiler_parts is None:
        from wrenpack.profiler import recommend, store
        from wrenpack.profiler.codehash import code_hash

        _profiler_parts = (recommend, store, code_hash)
    return _profiler_parts


def profile_saves() -> int:
    """How many profiles this process saved (a launch's cached reading is stale after one)."""
    return _profiler()[1].saves


def uses_checkpoint(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s code (or code nested in it) names ``checkpoint``."""
    code = getattr(fn, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        if "checkpoint" in c.co_names:
            return True
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return False


def code_key(fn: Callable[..., Any]) -> str:
    """The function's code hash (how the executor's timings name it); an odd
    callable is named by its identity."""
    try:
        return _profiler()[2](fn)
    except Exception:  # noqa: BLE001 - an odd callable: time it by identity
        return f"id:{id(fn)}"


def profiled_duration(fn: Callable[..., Any], memory_mb: int, lambda_cpu: bool, owner: Any = None) -> float | None:
    """The saved profile's duration for ``fn`` at this memory (``lambda_cpu``: with
    Lambda's CPU share at that memory, on a backend that gives CPU by memory).

    ``owner`` (the function's ``LaunchState``) keeps the code hash while the
    function's code, defaults and closure cells stay the same objects (it only picks a profile)."""
    try:
        recommend, store, code_hash = _profiler()

        def hashed() -> str:
            stamp = (getattr(fn, "__code__", None), getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None),
                     tuple(id(c) for c in getattr(fn, "__closure__", None) or ()))
            kept = getattr(owner, "code_hash", None) if owner is not None else None
            if kept is not None and kept[0] == stamp and stamp[0] is not None:
                return kept[1]
            digest = code_hash(fn)
            if owner is not None:
                owner.code_hash = (stamp, digest)
            return digest

        # the single-call profile; else a scaling run's largest measured size (the two are kept apart)
        data = store.load_cached(hashed) or store.load_cached(hashed, store.SCALING)
    except Exception:  # noqa: BLE001 - no profile, no plan
        return None
    if not data or not data.get("duration_s"):
        return None
    wall = float(data["duration_s"])
    if not lambda_cpu:
        return wall
    cpu = float(data.get("cpu_user_s", 0.0)) + float(data.get("cpu_sys_s", 0.0))
    wait = data.get("wait_s")
    if wait is None:  # saved before the wait was measured
        return recommend.lambda_duration(wall, cpu, memory_mb)
    # CPU at Lambda's share plus the non-CPU wait: the measuring machine's load is in neither
    cores = cpu / wall if wall >= recommend.MIN_CORES_WALL_S else 1.0
    return recommend.duration_at(cpu, float(wait), memory_mb, cores if cores > 1.1 else 1.0)
