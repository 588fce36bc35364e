"""A program's temporary area of the store: objects that go when the program does.

A program that writes its own objects through ``wrenpack.store()`` (the sort
example's input and output, hundreds of MB) removes them in a ``finally``; killed
with SIGKILL it cannot, and nothing told those objects from the user's own data:
``wrenpack clean --stale`` neither removed nor named them. ``wrenpack.scratch()`` gives
an area whose objects live under a job's folder (``jobs/<id>/data/``), next to an
owner record sealed as a job's (``executor.owner.owner_record``): the program
removes the area when it is closed, at exit and on SIGTERM (``close_all``, from the
executor's exit hook), and the store's tools judge it as a job: ``wrenpack jobs``
lists it ("scratch LABEL"), and ``wrenpack clean --stale`` removes it once its
program is gone. Client side only: an area's owner is the program that made it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from wrenpack import keys
from wrenpack.errors import ConfigError, ConfigTypeError
from wrenpack.storage.data import DataStore, store

log = logging.getLogger(__name__)

#: the longest label (it shows in ``wrenpack jobs``)
MAX_LABEL = 100

#: the areas this process made and has not closed (removed at exit)
_open: dict[str, "Scratch"] = {}
_lock = threading.Lock()
_hooked = False


class Scratch(DataStore):
    """A ``DataStore`` over a temporary area (``scratch``): the same
    put/get/list/objects, removed with ``close()`` (or at the end of a ``with``
    block, or of the program). Pickled into a call, it is a plain handle on the
    same objects: the area stays the program's."""

    def __init__(self, base: DataStore, job_id: str, label: str) -> None:
        super().__init__(base.store, keys.job_prefix(job_id) + "data/")
        #: the area's id: a job id (``wrenpack jobs``, ``wrenpack clean JOB_ID``)
        self.id = job_id
        self.label = label
        self.closed = False
        self._pid = os.getpid()  # (a forked child's exit leaves its parent's areas alone)

    def __repr__(self) -> str:
        return f"Scratch({self.url()}{', closed' if self.closed else ''})"

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> int:
        """Remove the area's objects, its owner record last; returns how many. Once."""
        with _lock:
            if self.closed:
                return 0
            self.closed = True
            _open.pop(self.id, None)
        removed = self.store.delete_prefix(self.prefix)
        return removed + self.store.delete_prefix(keys.job_prefix(self.id))

    def keep(self) -> None:
        """Leave the area in the store when the program ends (to look at its objects);
        ``wrenpack clean --stale`` removes it after that, ``wrenpack clean ID`` at once."""
        with _lock:
            _open.pop(self.id, None)
            self.closed = True


def scratch(label: str = "", executor: Any = None) -> Scratch:
    """``wrenpack.scratch()``: a temporary area of the store ``wrenpack.store(executor)``
    names (``Scratch``: a ``DataStore`` of its own, which calls take as an argument). Its
    objects go with ``close()``, at the end of a ``with`` block or of the program (SIGTERM
    too); ``wrenpack clean --stale`` removes those of a program that was killed.
    ``label`` names it in ``wrenpack jobs``. Its owner record is written first."""
    from wrenpack.executor.core import check_executor, new_job_id
    from wrenpack.executor.owner import owner_record
    from wrenpack.storage import data

    if data._bound is not None:
        raise ConfigError("wrenpack.scratch(): a call cannot make a scratch area (its owner would be the worker); make it in "
                          "the program and pass it to the calls")
    if not isinstance(label, str):
        raise ConfigTypeError(f"wrenpack.scratch(label={label!r}): the label must be text (it names the area in wrenpack jobs)")
    if len(label) > MAX_LABEL or not label.isprintable():
        raise ConfigError(f"wrenpack.scratch(label={label[:40]!r}): a label is printable text of at most {MAX_LABEL} "
                          "characters; shorten it")
    check_executor(executor, "wrenpack.scratch()")
    base = store(executor)
    job_id = new_job_id()
    area = Scratch(base, job_id, label)
    base.store.put(keys.owner_key(job_id), json.dumps(owner_record(f"scratch {label}".rstrip(), job_id, kind="scratch")).encode())
    with _lock:
        _open[job_id] = area
    _hook_exit()
    return area


def close_all() -> None:
    """Remove every area this process made and did not close or keep: at exit and on
    SIGTERM, from the executors' exit hook (``core._at_exit``), after their calls, which
    may write to an area, were stopped."""
    with _lock:
        areas = [area for area in _open.values() if area._pid == os.getpid()]
    for area in areas:
        try:
            area.close()
        except Exception:  # noqa: BLE001 - the rest still go; `wrenpack clean --stale` removes this one
            log.warning("could not remove the scratch area %s at exit (wrenpack clean --stale removes it)", area.id,
                        exc_info=log.isEnabledFor(logging.DEBUG))


def _hook_exit() -> None:
    """Areas go at exit as jobs' objects do, SIGTERM included (``termination``), with or
    without an executor made: ``core._at_exit``, registered when ``core`` is imported,
    removes them."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    from wrenpack.executor import core
    from wrenpack.executor.termination import exit_on_sigterm
    from wrenpack.futures import let_go_for_good

    exit_on_sigterm(core._at_exit, let_go_for_good)
