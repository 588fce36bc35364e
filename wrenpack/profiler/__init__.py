"""Profile a function before it ships: peak memory, time, CPU, /tmp, packages.

    prof = wrenpack.profile(fn, *args, **kwargs)   # -> Profile
    prof.recommended["memory_mb"], prof.recommended["timeout_s"]

See docs/profile.md. Imported lazily (module ``__getattr__``): the launcher and
runner, which live in this package, must not pull in the rest of it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "profile": "wrenpack.profiler.api",
    "run_profile": "wrenpack.profiler.api",
    "predict_scaling": "wrenpack.profiler.api",
    "auto_settings": "wrenpack.profiler.api",
    "auto_plan": "wrenpack.profiler.api",
    "Profile": "wrenpack.profiler.model",
    "SCHEMA": "wrenpack.profiler.model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wrenpack.profiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from wrenpack.profiler.api import auto_plan, auto_settings, predict_scaling, profile, run_profile
    from wrenpack.profiler.model import SCHEMA, Profile
