"""wrenpack: plain Python functions, run on AWS Lambda or locally under Lambda's limits.

The public surface is listed in ``__all__``. No submodule shares a name with
an attribute here (an imported submodule would shadow it). Everything is imported lazily so
that the worker, which imports ``wrenpack.worker.handler``, never loads the
client, the profiler, the runtime builder or the CLI.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # client API
    "remote": "wrenpack.remote_function",
    "RemoteFunction": "wrenpack.remote_function",
    "map_reduce": "wrenpack.executor.mapreduce",
    "get": "wrenpack.futures",
    "cancel": "wrenpack.futures",
    "wait": "wrenpack.futures",
    "as_completed": "wrenpack.futures",
    "WrenFuture": "wrenpack.futures",
    "ALL_COMPLETED": "wrenpack.futures",
    "FIRST_COMPLETED": "wrenpack.futures",
    "FIRST_EXCEPTION": "wrenpack.futures",
    "Executor": "wrenpack.executor",
    "job_report": "wrenpack.executor.core",
    "JobReport": "wrenpack.report",
    "Job": "wrenpack.job",
    "attach": "wrenpack.job",
    "Config": "wrenpack.config",
    # other libraries' APIs over wrenpack
    "register_joblib": "wrenpack.integrations",
    # data
    "store": "wrenpack.storage.data",
    "objects": "wrenpack.storage.data",
    "scratch": "wrenpack.storage.scratch",
    "configure": "wrenpack.config",
    # profiling
    "profile": "wrenpack.profiler",
    "Profile": "wrenpack.profiler",
    # checkpointing
    "checkpoint": "wrenpack.worker.checkpoint",
    "Checkpoint": "wrenpack.worker.checkpoint",
    # errors
    "WrenpackError": "wrenpack.errors",
    "ConfigError": "wrenpack.errors",
    "SerializationError": "wrenpack.errors",
    "StoreError": "wrenpack.errors",
    "CorruptObject": "wrenpack.errors",
    "TextDecodeError": "wrenpack.errors",
    "PayloadTooLarge": "wrenpack.errors",
    "TaskError": "wrenpack.errors",
    "MemoryLimitExceeded": "wrenpack.errors",
    "TaskTimeout": "wrenpack.errors",
    "EphemeralStorageExceeded": "wrenpack.errors",
    "WorkerCrashed": "wrenpack.errors",
    "CallCancelled": "wrenpack.errors",
    "WorkerLost": "wrenpack.errors",
    "MissingDependency": "wrenpack.errors",
    "RemoteError": "wrenpack.errors",
    "ExecutorShutdown": "wrenpack.errors",
    "ProfileError": "wrenpack.errors",
    "BuildError": "wrenpack.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wrenpack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from wrenpack.config import Config, configure
    from wrenpack.errors import *  # noqa: F401,F403
    from wrenpack.executor import Executor
    from wrenpack.integrations import register_joblib
    from wrenpack.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, WrenFuture, as_completed, cancel, get, wait
    from wrenpack.executor.core import job_report
    from wrenpack.executor.mapreduce import map_reduce
    from wrenpack.report import JobReport
    from wrenpack.job import Job, attach
    from wrenpack.remote_function import RemoteFunction, remote
    from wrenpack.storage.data import objects, store
    from wrenpack.storage.scratch import scratch
    from wrenpack.worker.checkpoint import Checkpoint, checkpoint
