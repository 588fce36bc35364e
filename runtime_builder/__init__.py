"""Build slim, verified Lambda runtimes (``wrenpack build-runtime``).

Public surface: :func:`build` -> :class:`BuildResult`, and :func:`site_dir`
to find the ``python/`` directory of a built runtime. Only ``site_dir`` is
imported eagerly (the client calls it); the pipeline loads on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime_builder.layout import site_dir
from wrenpack.errors import BudgetExceeded, BuildError, NoSuitableWheel

if TYPE_CHECKING:
    from runtime_builder.pipeline import BuildResult, build

__all__ = ["build", "BuildResult", "site_dir", "BuildError", "BudgetExceeded", "NoSuitableWheel"]


def __getattr__(name: str) -> Any:
    if name in ("build", "BuildResult", "default_cache_dir"):
        import importlib

        _build_mod = importlib.import_module("runtime_builder.pipeline")

        return getattr(_build_mod, name)
    raise AttributeError(f"module 'runtime_builder' has no attribute {name!r}")
