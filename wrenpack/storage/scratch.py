"""A program's temporary area of the store: objects that go when the program does.

A program that writes its own objects through ``wrenpack.store()`` (the sort
example's input and output, hundreds of MB) removes them in a ``finally``; killed
with SIGKILL it cannot, and nothing told those objects from the user's own data:
``wrenpack clean --stale`` neither removed nor named them. ``wrenpack.scratch()`` gives
an area whose objects live under a job's folder (``jobs/<id>/data/``), next to an
owner record sealed as a job's (``executor.owner.owner_record``): the program
removes the area when it is closed, at exit and on SIGTERM or SIGHUP (``close_all``, from the
executor's exit hook), and the store's tools judge it as a job: ``wrenpack jobs``
lists it ("scratch LABEL"), and ``wrenpack clean --stale`` removes it once its
program is gone. Client side only: an area's owner is the program that made it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Any, Iterator

from wrenpack import keys
from wrenpack.errors import ConfigError, ConfigTypeError, StoreError
from wrenpack.storage.data import DataStore, store

log = logging.getLogger(__name__)

#: the longest label (it shows in ``wrenpack jobs``)
MAX_LABEL = 100

#: the areas this process removes at exit: those neither closed nor kept, and those closed while
#: calls of this process ran (what such a call writes after the close is removed then)
_open: dict[str, "Scratch"] = {}
_lock = threading.Lock()
#: the process whose exit hooks are in place (SIGTERM's needs the main thread: ``_hook_exit``)
_hooked_in: int | None = None
#: the process whose exit removed its areas: it makes no more (one made by a later exit hook stayed)
_exited_in: int | None = None
_spawning = threading.local()


class Scratch(DataStore):
    """A ``DataStore`` over a temporary area (``scratch``): the same
    put/get/list/objects, removed with ``close()`` (or at the end of a ``with``
    block, or of the program), after which it refuses every use. Pickled into a
    call, it is a plain handle on the same objects: the area stays the program's."""

    def __init__(self, base: DataStore, job_id: str, label: str, late_s: float) -> None:
        super().__init__(base.store, keys.job_prefix(job_id) + "data/")
        #: the area's id: a job id (``wrenpack jobs``, ``wrenpack clean JOB_ID``)
        self.id = job_id
        self.label = label
        #: removed: every use is refused
        self.closed = False
        #: how long after the program calls may still write into it (Lambda's, as its jobs')
        self.late_s = late_s
        self._at_exit = True  # (False once kept)
        self._pid = os.getpid()  # (a forked child's exit leaves its parent's areas alone)

    def __repr__(self) -> str:
        return f"Scratch({self.url()}{', closed' if self.closed else ''})"

    def __reduce__(self) -> tuple[Any, ...]:
        if getattr(_spawning, "label", None) is not None:
            raise ConfigError(
                f"{_spawning.label}: an argument is a scratch area ({self.id}), which goes with this program: the "
                "spawned job outlives it and would write into it after its removal; give it wrenpack.store() and a "
                "prefix of its own")
        return super().__reduce__()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"the scratch area {self.id} is closed, its objects removed; make another with "
                             "wrenpack.scratch()")

    def _full(self, key: str) -> str:
        self._check_open()  # (every use by key comes here: put, get, open, size, exists, delete)
        return super()._full(key)

    def list(self, prefix: str = "") -> list[str]:
        self._check_open()
        return super().list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        self._check_open()
        return super().delete_prefix(prefix)

    def objects(self, prefix: str = "", **options: Any) -> Any:
        self._check_open()
        return super().objects(prefix, **options)

    def close(self) -> int:
        """Remove the area's objects, then its owner record; returns how many. Once.
        While calls of this program run, one may still write into it: the record stays
        until the program ends, which removes what they wrote (``close_all``)."""
        with _lock:
            if self.closed:
                return 0
            self.closed = True
            running = _calls_running()
            if running:
                _open[self.id] = self
            else:
                _open.pop(self.id, None)
        removed = self.store.delete_prefix(self.prefix)
        return removed if running else removed + self.store.delete_prefix(keys.job_prefix(self.id))

    def keep(self) -> None:
        """Leave the area in the store when the program ends (to look at its objects;
        ``close()`` still removes it). ``wrenpack clean --stale`` removes a kept area
        once its program is gone, ``wrenpack clean ID`` at once."""
        with _lock:
            self._at_exit = False
            if not self.closed:
                _open.pop(self.id, None)

    def _sweep(self, late_writes: bool) -> None:
        """At exit: the objects, and the owner record unless calls may still write
        (``late_writes``: Lambda's, which the program cannot stop): ``wrenpack clean
        --stale`` waits for those as for a job's, then removes the rest."""
        self.closed = True
        self.store.delete_prefix(self.prefix)
        if late_writes and self.late_s > 0:
            log.warning("scratch area %s: calls sent before the program ended may still write to it; a "
                        "`wrenpack clean --stale` in %.0f minutes removes what they wrote", self.id, self.late_s / 60)
            return
        self.store.delete_prefix(keys.job_prefix(self.id))


def scratch(label: str = "", executor: Any = None) -> Scratch:
    """``wrenpack.scratch()``: a temporary area of the store ``wrenpack.store(executor)``
    names (``Scratch``: a ``DataStore`` of its own, which calls take as an argument). Its
    objects go with ``close()``, at the end of a ``with`` block or of the program (SIGTERM, SIGHUP
    too); ``wrenpack clean --stale`` removes those of a program that was killed.
    ``label`` names it in ``wrenpack jobs``. Its owner record is written first."""
    from wrenpack.executor import core
    from wrenpack.executor.owner import owner_record
    from wrenpack.storage import data

    if data._bound is not None:
        raise ConfigError("wrenpack.scratch(): a call cannot make a scratch area (its owner would be the worker); make "
                          "it in the program and pass it to the calls")
    if not isinstance(label, str):
        raise ConfigTypeError(f"wrenpack.scratch(label={label!r:.60}): the label must be text (it names the area in "
                              "wrenpack jobs)")
    if len(label) > MAX_LABEL:
        raise ConfigError(f"wrenpack.scratch(label={label[:40]!r}...): a label holds at most {MAX_LABEL} characters; "
                          "shorten it")
    if not label.isprintable():
        bad = next(ch for ch in label if not ch.isprintable())
        raise ConfigError(f"wrenpack.scratch(label={label!r}): {bad!r} is not printable (a label shows in wrenpack "
                          "jobs); use letters, digits, spaces and punctuation")
    core.check_executor(executor, "wrenpack.scratch()")
    if _exited_in == os.getpid():
        raise ConfigError("wrenpack.scratch(): the program is ending and has removed its scratch areas; make areas "
                          "before its exit hooks run")
    base = store(executor)
    late_s = _late_writes_s(executor)
    job_id = core.new_job_id()
    area = Scratch(base, job_id, label, late_s)
    record = owner_record(f"scratch {label}".rstrip(), job_id, late_s, kind="scratch")
    _hook_exit()
    base.store.put(keys.owner_key(job_id), json.dumps(record).encode())
    with _lock:
        _open[job_id] = area
    return area


def _late_writes_s(executor: Any) -> float:
    """How long after the program the calls of ``executor`` (the default one) may still
    write (``Capabilities.late_writes_s``: Lambda's); 0 if it cannot be made here."""
    from wrenpack.executor import core

    try:
        return float((executor or core.default_executor()).backend.capabilities.late_writes_s)
    except Exception:  # noqa: BLE001 - settings that launch nothing yet (a store without a backend to use)
        log.debug("no executor to ask how late its calls may write", exc_info=True)
        return 0.0


def _calls_running() -> bool:
    """Whether calls of this program's executors are still running (they may write to an area)."""
    from wrenpack.executor import core

    return core.calls_running()


def close_all(late_writes: bool = False) -> None:
    """Remove the areas this process made and did not close or keep, and what calls wrote
    into those closed meanwhile: at exit and on SIGTERM, from the executors' exit hook
    (``core._at_exit``), once their calls, which may write to an area, were stopped
    (``late_writes``: some ran on Lambda, which may write on after it). One run at a time,
    each to its end: ``core._at_exit``'s lock holds SIGTERM's cleanup thread and a
    ``multiprocessing`` child's finalizers apart."""
    global _exited_in
    pid = os.getpid()
    with _lock:
        _exited_in = pid
        areas = [area for area in _open.values() if area._pid == pid and (area.closed or area._at_exit)]
        for area in areas:
            _open.pop(area.id, None)
    for area in areas:
        try:
            area._sweep(late_writes)
        except Exception:  # noqa: BLE001 - the rest still go; `wrenpack clean --stale` removes this one
            log.warning("could not remove the scratch area %s at exit (wrenpack clean --stale removes it)",
                        area.id, exc_info=log.isEnabledFor(logging.DEBUG))


@contextlib.contextmanager
def refused_in(label: str) -> Iterator[None]:
    """While a spawned job's arguments are pickled: an area among them is refused."""
    _spawning.label = label
    try:
        yield
    finally:
        _spawning.label = None


def _hook_exit() -> None:
    """Areas go at exit as jobs' objects do, SIGTERM and SIGHUP included (``termination``), with or
    without an executor made: ``core._at_exit``, registered when ``core`` is imported,
    removes them. SIGTERM's handler needs the main thread: an area made in another is
    looked at again by the next one made. A ``multiprocessing`` child runs no atexit
    hook (it ends with ``os._exit``), only its finalizers, where ``core`` puts the hook."""
    global _hooked_in
    pid = os.getpid()
    if _hooked_in == pid:
        return
    from wrenpack.executor import core
    from wrenpack.executor.termination import exit_on_sigterm
    from wrenpack.futures import let_go_for_good

    if threading.current_thread() is threading.main_thread():
        exit_on_sigterm(core._at_exit, let_go_for_good)
        _hooked_in = pid
    core._exit_in_multiprocessing_child()
