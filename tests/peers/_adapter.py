"""What the peer suites need to run against ``wrenpack.Executor``.

The peers build their executors as ``Executor(max_workers=n, mp_context=...,
initializer=..., ...)``. ``PeerExecutor`` is ``wrenpack.Executor`` under that
constructor: ``max_workers`` is wrenpack's ``concurrency`` (the README's first
difference), ``mp_context``/``context`` are dropped (wrenpack's workers are
started by its backend, not by a multiprocessing context: there is nothing to
choose), and everything else goes to ``wrenpack.Executor`` unchanged, so what
wrenpack does not have (``initializer``, ``max_tasks_per_child``, loky's
``timeout``/``kill_workers``...) fails as it would in a user's program.

Each executor runs on the local backend with a store of its own (a temporary
directory removed at interpreter exit), with wrenpack's default settings
otherwise (one retry of a crashed worker, as a user gets).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any

import wrenpack

_stores = tempfile.mkdtemp(prefix="wrenpack-peers-")
atexit.register(shutil.rmtree, _stores, True)


def store() -> str:
    """A fresh store directory for one executor."""
    return tempfile.mkdtemp(dir=_stores)


class PeerExecutor(wrenpack.Executor):
    """``wrenpack.Executor`` with the peers' constructor (see the module docstring)."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None, *, context: Any = None, **settings: Any) -> None:
        if max_workers is not None:
            settings["concurrency"] = max_workers
        settings.setdefault("backend", "local")
        settings.setdefault("storage", store())
        super().__init__(**settings)


# The README's "Differences from concurrent.futures", each named by the words its bullet begins
# with (tests/peers/test_tables.py checks they are there): every expected failure names one.
POOL_SIZE = "The pool size is `concurrency`"
POOL_SETTINGS = "What configures a pool of processes is not there"
SHARES_NOTHING = "Calls share nothing with the caller"
AT_EXIT = "Calls still running when the program exits"
PICKLING = "Pickling fails with `SerializationError`"
WORKER_DIES = "A worker that dies fails its own call"
CANCEL = "`fut.cancel()` takes back only calls not started"
FUTURES = "A future unpickled in a process"

DIFFERENCES = (POOL_SIZE, POOL_SETTINGS, SHARES_NOTHING, AT_EXIT, PICKLING, WORKER_DIES, CANCEL, FUTURES)


def because(difference: str, why: str) -> str:
    """An expected failure's reason: what the test expects, and the README difference that says why not."""
    assert difference in DIFFERENCES, difference
    return f'{why} (README, Differences from concurrent.futures: "{difference} ...")'
