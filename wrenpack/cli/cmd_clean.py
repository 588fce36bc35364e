"""``wrenpack clean [JOB_ID ... | --stale | --all [--force]]``: remove jobs' objects from the store.

Works on any store ``open_store`` knows (local directory or S3), so a job
left behind by ``keep_objects=True`` or a crashed client can be removed. Each
job records its owner (``jobs/<job>/owner.json``: host, pid, process start
time, sealed with the user's owner key: ``wrenpack.executor.owner``):
``--stale`` removes the jobs whose owner process is gone, as only such a
record can say; a job whose owner cannot be checked (no record, one anybody
else could have written, one from another host) is kept and the output says
why (``--stale --force`` removes those too). ``--all`` and named jobs refuse
to remove a job whose owner still runs unless ``--force``. A job's (or map_reduce's)
folder with no owner record at all goes by ``--all`` or ``--stale --force`` only once
nothing in it changed for five minutes (``TMP_AGE_S``), looked at again right before
its removal: a writer that starts a job makes its folder before its owner record is
in it (``_starting``); named, it goes at once. On a local store,
temporary files (``.tmp-*``) that writers killed mid-write left behind more
than five minutes ago are swept too, and with ``--all``/``--stale`` the empty
folders of wrenpack's names such writers left (unchanged for as long).

``--all`` and ``--stale`` touch only folders whose names wrenpack gives
(``keys.is_job_id``, ``keys.is_shuffle_id``, ``keys.is_shuffle_shard``), whatever
they hold: anything else under ``jobs/`` or ``shuffle/``, and any symbolic link
there (never followed), is left and reported as skipped, and a
``--storage`` with nothing of wrenpack's in it is said not to be a store (nothing
removed, nothing swept). A map_reduce's objects are under ``shuffle/<id>/`` and
``shuffle/<shard>/<id>/`` (``wrenpack.keys``); an earlier version put them all under
``shuffle/<id>/``, and those go the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from wrenpack import keys
from wrenpack.errors import ConfigError, ObjectNotFound, StoreError
from wrenpack.executor.owner import owner_state, user_key
from wrenpack.wire import owner as owner_record
from wrenpack.cli import json_errors

#: what a writer leaves while it works is left until unchanged this long (s): temporary files, empty
#: folders, and a job's (or map_reduce's) folder without its owner record, which a writer that starts
#: one makes before it has written the record (``_starting``). One rule, said in ``--help``.
TMP_AGE_S = 300.0
#: the state of a job (or map_reduce) whose folder has no owner record at all: "unknown" to the user,
#: but removed only once nothing in it changed for ``TMP_AGE_S`` (a job may be starting there)
UNOWNED = "unowned"
#: an S3 multipart upload unfinished this long after it started is a stopped writer's (s): a call
#: runs at most 15 minutes, and a driver's upload of gigabytes over a slow link takes hours, not a day
UPLOAD_AGE_S = 86400.0


def job_state(store: Any, job_id: str, key: bytes | None = None) -> tuple[str, str]:
    """(state, why): "live" (its owner process runs), "stale" (its owner is gone),
    "unknown" (an unreadable owner record, one not sealed with the user's owner
    ``key``, or one from another host: whether its owner runs cannot be told from
    here), or ``UNOWNED`` (no owner record at all: as "unknown", and a job being
    started may be writing it now, ``_starting``).

    A spawned job (one with a job record, ``wrenpack.job``) is judged by its
    record instead: "live" while its supervisor runs, "retained" (kept) until
    its retention ends, then "stale"; "unknown" when its record does not
    verify or its supervisor ran on another host and has not finished."""
    from wrenpack.job.client import removal_state

    try:
        spawned = removal_state(store, job_id, key)
    except StoreError as exc:  # (one job's unreadable object: that job is in doubt, not the whole clean)
        return "unknown", f"it cannot be read ({exc})"
    if spawned is not None:
        state, why = spawned
        return ("stale" if state == "expired" else state), why
    return _record_state(store, keys.owner_key(job_id), job_id, key)


def _record_state(store: Any, owner_key: str, record_id: str, key: bytes | None) -> tuple[str, str]:
    """``owner_state`` of the record at ``owner_key``; ``UNOWNED`` if there is none."""
    try:
        record: dict[str, Any] | None = owner_record.loads(store.get(owner_key))
    except ObjectNotFound:
        return UNOWNED, "it has no owner record"
    except (StoreError, ValueError):
        record = None
    return owner_state(record_id, record, key)


def shuffle_state(store: Any, shuffle_id: str, key: bytes | None = None) -> tuple[str, str]:
    """``job_state`` of a map_reduce's intermediates (``shuffle/<id>/``), from the
    owner record its driver wrote there (none: ``UNOWNED``)."""
    return _record_state(store, keys.shuffle_owner_key(shuffle_id), keys.shuffle_owner_id(shuffle_id), key)


@json_errors
def cmd_clean(args: argparse.Namespace) -> int:
    from wrenpack.config import current
    from wrenpack.job.client import JobNotFound, check_job_id, missing_local_store, printable
    from wrenpack.storage import store_for_config

    overrides = {k: v for k, v in (("storage", args.storage), ("aws_region", args.region),
                                   ("aws_profile", args.profile), ("s3_endpoint_url", args.s3_endpoint_url))
                 if v is not None}  # (an empty one is refused before: cli.empty_option)
    if sum((bool(args.job_ids), args.all, args.stale)) != 1:
        # (usage, as its --help says: exit 2 with the usage line, as argparse's own errors)
        args.parser.error("name the jobs to remove (wrenpack clean JOB_ID ...), or pass --all or --stale (one of them)")
    # A named job is one id (a trailing slash allowed): a path ("JOB/result", "..") would remove
    # part of a job, or of another, without the checks below seeing it.
    given = [check_job_id(j.rstrip("/") or j, "wrenpack clean") for j in args.job_ids]
    config = current(**overrides)
    missing = missing_local_store(config)
    if missing is not None:  # (not created: a mistyped --storage must not leave a directory)
        if given:
            # (JobNotFound, as `jobs show`/`cancel` of a missing job: --json's "error" names it alike)
            raise JobNotFound(f"no job {given[0]!r}: there is no store at {missing}; nothing was removed: check "
                              "--storage (or the storage setting)")
        if args.json:
            print(json.dumps({"store": missing, "store_exists": False, "removed": 0, "prefixes": {}, "jobs": 0,
                              "map_reduces": 0, "awaiting_late_writes": {}, "tmp_swept": 0, "empty_folders_removed": 0, "skipped": [],
                              "skipped_why": {}}))
        else:
            hint = ": check --storage" if args.storage else " yet"
            print(f"removed 0 object(s) of 0 job(s) from {missing} (there is no store there{hint})")
        return 0
    store = store_for_config(config)
    key = user_key(create=False)
    found_jobs: list[str] = []
    found_shuffles: list[str] = []
    shards: dict[str, list[str]] = {}  # map_reduce id -> the prefixes of the shards holding its objects
    foreign: dict[str, str] = {}  # --all/--stale: folders under jobs/ or shuffle/ that wrenpack did not name -> why
    emptied = 0
    if not given:
        from wrenpack.storage.local import LocalStore

        found_shuffles = _discover(store, found_jobs, shards, foreign)
        if not found_jobs and not found_shuffles and (foreign or _holds_other_things(store)):
            return _not_a_store(store, foreign, args.json)
        # (once it is known to be a wrenpack store: such a folder is then neither a job found nor one kept)
        if isinstance(store, LocalStore):
            emptied = _remove_empty_folders(store)
            if emptied:
                found_jobs.clear()
                shards.clear()
                foreign.clear()
                found_shuffles = _discover(store, found_jobs, shards, foreign)
    kept: dict[str, str] = {}  # --stale: job -> why it was kept
    retained: dict[str, str] = {}  # --stale: spawned jobs kept for their retention
    running: dict[str, str] = {}  # --stale: jobs kept because their owner (a spawned job's supervisor) runs
    live: list[str] = []
    # (each job's and map_reduce's state, read once: a record that appears after it was read
    # changes nothing here, ``_starting`` looks again right before a removal)
    states: dict[str, tuple[str, str]] = {}
    shuffle_states: dict[str, tuple[str, str]] = {}
    if args.stale:
        # Only what the user's own sealed record says is gone; a job in doubt is kept (--force removes it too).
        targets = []
        for j in found_jobs:
            state, why = states[j] = job_state(store, j, key)
            if state == "stale" or (state in ("unknown", UNOWNED) and args.force):
                targets.append(j)
            elif state in ("unknown", UNOWNED):
                kept[j] = why
            elif state == "retained":
                retained[j] = why
            elif state == "live":  # (before, left out of "skipped": --json did not say it was there)
                running[j] = why
        shuffles = []
        for sid in found_shuffles:
            state, why = shuffle_states[sid] = shuffle_state(store, sid, key)
            if state == "stale" or (state in ("unknown", UNOWNED) and args.force):
                shuffles.append(sid)
            elif state in ("unknown", UNOWNED):
                kept[f"map_reduce {sid}"] = why
    else:
        named = found_jobs if args.all else given
        shuffles = found_shuffles if args.all else []
        if not args.all:
            unknown = [j for j in named if not j or not store.list(keys.job_prefix(j))]
            if unknown:
                shown = ", ".join(map(repr, unknown[:3])) + (" ..." if len(unknown) > 3 else "")
                raise JobNotFound(f"no job {shown} in the store {store.url}; nothing was removed: check the id "
                                  "(a future's .job_id) and --storage, or remove orphaned jobs with --stale")
        states = {j: job_state(store, j, key) for j in named}
        live = [j for j in named if states[j][0] == "live"]
        if live:
            # A spawned job's supervisor would go on writing its results: --force never removes it while
            # it runs, so the way out is to cancel it (not --force, which the message below names).
            from wrenpack.job.client import removal_state

            spawned_live = [j for j in live if (removal_state(store, j, key) or ("",))[0] == "live"]
            if spawned_live:
                shown = ", ".join(spawned_live[:3]) + (" ..." if len(spawned_live) > 3 else "")
                raise ConfigError(f"{len(spawned_live)} spawned job(s) are still running ({shown}); cancel them "
                                  "first (wrenpack jobs cancel ID), then clean")
        # (a running map_reduce's intermediates: the program that runs it still reads them)
        shuffle_states = {sid: shuffle_state(store, sid, key) for sid in shuffles}
        live += [f"map_reduce {sid}" for sid in shuffles if shuffle_states[sid][0] == "live"]
        if live and not args.force:
            shown = ", ".join(live[:3]) + (" ..." if len(live) > 3 else "")
            raise ConfigError(f"{len(live)} job(s) belong to a program still running ({shown}); "
                              "wait for it to end, use --stale for orphaned jobs only, or pass --force")
        targets = list(named)  # (its own list: one kept at the last look, ``_starting``, leaves it)
    # --stale: a gone driver's calls on Lambda may still write for a while: what they wrote so far
    # goes, the owner record (and the cancel markers they look for) until then, for a later clean.
    late: dict[str, float] = {}
    if args.stale and key is not None:
        now = time.time()
        for j in targets:
            until = _late_writes_until(store, keys.owner_key(j), j, key, now)
            if until is not None:
                late[j] = until
        for sid in shuffles:
            until = _late_writes_until(store, keys.shuffle_owner_key(sid), keys.shuffle_owner_id(sid), key, now)
            if until is not None:
                late[f"map_reduce {sid}"] = until
    # (each job's own prefix, --all --force too: one removal of jobs/ took folders that are not
    # wrenpack's, or a job's a writer has just made, with it)
    # A folder of wrenpack's name with no owner record, found by --all or --stale --force (a job
    # named is the user's word): a job or map_reduce being started, whose writer has made its folder
    # and not yet put its record there (a local store: the folder, a temporary file, the record),
    # or a stopped writer's. Each is looked at right before its removal, and kept while its record
    # has appeared or anything in it changed within TMP_AGE_S (``_starting``): --all removed the
    # folder of a map_reduce being started, and the map_reduce failed.
    starting: dict[str, str] = {}
    removed: dict[str, int] = {}
    for j in list(targets):
        if states.get(j, ("",))[0] == UNOWNED and not given:
            why = _starting(store, keys.owner_key(j), [keys.job_prefix(j)])
            if why is not None:
                starting[j] = why
                targets.remove(j)
                continue
        removed[keys.job_prefix(j)] = (store.delete_prefix_except(keys.job_prefix(j), keys.kept_for_late_writes(j))
                                       if j in late else store.delete_prefix(keys.job_prefix(j)))
    if shuffles:
        # Their shards listed again, now that each was found stale (or is removed by --all): a killed
        # driver's last local worker may have made one after the listing above and ended before its
        # map_reduce was judged, and that shard stayed. Nothing of a gone driver writes after the
        # judging found it gone. (One more LIST of shuffle/ and of each shard, when one is removed.)
        listed_again: dict[str, list[str]] = {}
        _shuffles(store, listed_again, {})
        for sid in shuffles:
            shards[sid] = list(dict.fromkeys([*shards.get(sid, []), *listed_again.get(sid, [])]))
    for sid in list(shuffles):  # a map_reduce's intermediates, and its owner record with them (last)
        prefix = keys.shuffle_prefix(sid)
        if shuffle_states.get(sid, ("",))[0] == UNOWNED:
            why = _starting(store, keys.shuffle_owner_key(sid), [prefix, *shards.get(sid, [])])
            if why is not None:
                starting[f"map_reduce {sid}"] = why
                shuffles.remove(sid)
                continue
        removed[prefix] = store.delete_prefixes(shards.get(sid, [])) + (
            store.delete_prefix_except(prefix, (keys.shuffle_owner_key(sid),))
            if f"map_reduce {sid}" in late else store.delete_prefix(prefix))
    skipped = sorted(kept) + sorted(retained) + sorted(running) + sorted(starting) + sorted(foreign)
    _remove_logs(targets)
    swept = 0
    from wrenpack.storage.local import LocalStore, sweep_tmp

    if isinstance(store, LocalStore):
        swept = sweep_tmp(store, TMP_AGE_S)
    else:
        from wrenpack.storage.data import USER_PREFIX
        from wrenpack.storage.s3 import S3Store

        if isinstance(store, S3Store):  # (a writer's unfinished multipart uploads: billed until aborted)
            swept = sum(store.abort_unfinished_uploads(p, UPLOAD_AGE_S) for p in (keys.JOBS, keys.SHUFFLE, USER_PREFIX))
    total = sum(removed.values())
    if args.json:
        print(json.dumps({"store": store.url, "store_exists": True, "wrenpack_store": True, "removed": total, "prefixes": removed, "jobs": len(targets),
                          "map_reduces": len(shuffles), "awaiting_late_writes": late,
                          "tmp_swept": swept, "empty_folders_removed": emptied, "skipped": skipped,
                          "skipped_why": {**kept, **retained, **running, **starting, **foreign}}))
    else:
        extra = (f", {swept} stray temporary file(s)" if isinstance(store, LocalStore) else
                 f", {swept} unfinished upload(s) over a day old") if swept else ""
        extra += f", {emptied} empty folder(s) a stopped writer left" if emptied else ""
        of = f"{len(targets)} job(s)" + (f" and {len(shuffles)} map_reduce(s)' intermediates" if shuffles else "")
        print(f"removed {total} object(s) of {of}{extra} from {store.url}")
        if kept:
            shown = "; ".join(printable(f"{j}: {why}") for j, why in list(kept.items())[:3]) + \
                ("; ..." if len(kept) > 3 else "")
            print(f"kept {len(kept)} job(s) whose owner cannot be checked ({shown}); remove them by name, "
                  "or with --stale --force")
        if retained:
            print(f"kept {len(retained)} spawned job(s) within their retention (remove one by name)")
        if running:
            print(f"kept {len(running)} job(s) still running")
        if starting:
            print(f"kept {len(starting)} job(s) or map_reduce(s) with no owner record that changed in the last "
                  f"{TMP_AGE_S / 60:.0f} minutes (one being started writes its record first; --json says which); "
                  "a later clean removes them if they still have none")
        if foreign:
            print(f"left {len(foreign)} folder(s) or link(s) wrenpack did not make (--json says why): {_folders(foreign)}")
        if late:
            until = time.strftime("%H:%M", time.localtime(max(late.values())))
            print(f"kept the owner record of {len(late)} job(s) whose calls, sent before their program was gone, may "
                  f"still write until {until}; a `wrenpack clean --stale` after that removes what they wrote")
    return 0


def _discover(store: Any, found_jobs: list[str], shards: dict[str, list[str]], foreign: dict[str, str]) -> list[str]:
    """What ``--all``/``--stale`` look at: the jobs (into ``found_jobs``), the map_reduces
    (returned; their shards' prefixes into ``shards``) and what is not wrenpack's under
    ``jobs/`` and ``shuffle/`` (into ``foreign``, with why), links included: one at
    ``jobs/<name>`` or at ``jobs`` or ``shuffle`` itself, never followed, went unsaid."""
    from wrenpack.job.client import job_ids
    from wrenpack.storage.local import LocalStore

    for j in job_ids(store):
        if keys.is_job_id(j):
            found_jobs.append(j)
        else:
            foreign[keys.job_prefix(j)] = "not a job id wrenpack makes (such as 20261205-143416-73377e87): not wrenpack's"
    for name, kind in _entries(store, keys.JOBS).items():
        if kind == "link":
            foreign[f"{keys.JOBS}{name}"] = _LINK
    if isinstance(store, LocalStore):  # (S3 has no links, and a client's policy lists no more than its folders)
        for name, kind in store.folder_entries("").items():
            if kind == "link" and f"{name}/" in (keys.JOBS, keys.SHUFFLE):
                foreign[name] = _LINK
    return _shuffles(store, shards, foreign)


def map_reduce_ids(store: Any) -> list[str]:
    """The map_reduces whose intermediate objects are in the store (``_shuffles``: ``wrenpack jobs`` lists them)."""
    return _shuffles(store, {}, {})


def _shuffles(store: Any, shards: dict[str, list[str]], foreign: dict[str, str]) -> list[str]:
    """The map_reduces whose objects are in the store, by id: those with a folder
    ``shuffle/<id>/`` (an owner record, or, from an earlier version, everything) and
    those with a folder in a shard, ``shuffle/<shard>/<id>/``, whose prefixes go to
    ``shards``. A folder of such a name is wrenpack's whatever it holds: one left with
    nothing but a writer's temporary file (killed during its first write), or nothing
    once that was swept, is found too (before, such a shard was called not wrenpack's,
    and once it was all the store held, the store itself was). Folders of other
    names, and links (never followed), go to ``foreign``, with why; an empty shard
    folder is neither (a writer killed between making it and its id's: nothing to
    remove or keep). One LIST of ``shuffle/`` and one of each shard found (64 at
    most, on S3 by CommonPrefixes)."""
    not_ours = "not a map_reduce id wrenpack makes (12 hex digits): not wrenpack's"
    link = _LINK
    found: set[str] = set()
    for name, kind in _entries(store, keys.SHUFFLE).items():
        if kind == "link":
            foreign[f"{keys.SHUFFLE}{name}"] = link
        elif keys.is_shuffle_id(name):
            found.add(name)
        elif keys.is_shuffle_shard(name):
            if kind == "empty":
                continue
            shard = f"{keys.SHUFFLE}{name}/"
            said = False  # (whether this shard's folder held anything found or reported)
            for sid, inner in _entries(store, shard).items():
                if inner == "link":
                    foreign[f"{shard}{sid}"] = link
                elif keys.is_shuffle_id(sid):
                    found.add(sid)
                    shards.setdefault(sid, []).append(keys.shuffle_shard_prefix(sid, int(name, 16)))
                elif inner == "empty":
                    continue
                else:
                    foreign[f"{shard}{sid}/"] = not_ours
                said = True
            if not said:  # (objects right in the shard's folder: none of a map_reduce's)
                foreign[shard] = "holds no map_reduce's folder: not wrenpack's"
        elif kind != "empty":
            foreign[keys.shuffle_prefix(name)] = (
                "not a map_reduce id (12 hex digits) or shard (2 hex digits, "
                f"00 to {keys.SHUFFLE_SHARDS - 1:02x}) wrenpack makes: not wrenpack's")
    return sorted(found)


def _starting(store: Any, owner_key: str, prefixes: list[str]) -> str | None:
    """Why a folder whose owner record (at ``owner_key``) was missing when clean read it must
    stay, looked at right before its removal: the record is there now (a job or map_reduce
    started meanwhile), or something under ``prefixes`` changed within ``TMP_AGE_S`` (one
    being started: its writer makes the folder, then puts the record). None: it may go,
    nothing there for ``TMP_AGE_S`` and still no record (a stopped writer's). By the store's
    clock on S3 (``Store.unchanged_for``); a HEAD and a LIST per prefix, for such folders only."""
    if store.exists(owner_key):
        return "its owner record appeared while clean ran: a job (or map_reduce) was starting there"
    ages = [age for age in (store.unchanged_for(p) for p in prefixes) if age is not None]
    if ages and min(ages) < TMP_AGE_S:
        return (f"it has no owner record and changed {min(ages):.0f} s ago: one being started writes its record "
                f"first; a clean once it is {TMP_AGE_S / 60:.0f} minutes unchanged removes it if it still has none")
    return None


def _remove_empty_folders(store: Any) -> int:
    """Remove the empty folders of wrenpack's names in a local store's ``jobs/`` and
    ``shuffle/`` (and its shards) that have not changed for ``TMP_AGE_S``: what a writer
    killed between making a folder and writing into it left, which no object's removal
    ever takes (there is none under it). One that has emptied just now (its temporary
    file swept by this run) goes at the next clean. How many went."""
    removed = 0
    for name, kind in store.folder_entries(keys.JOBS).items():
        if kind == "empty" and keys.is_job_id(name):
            removed += store.remove_empty_folder(keys.job_prefix(name), TMP_AGE_S)
    for name, kind in store.folder_entries(keys.SHUFFLE).items():
        if kind == "empty" and (keys.is_shuffle_id(name) or keys.is_shuffle_shard(name)):
            removed += store.remove_empty_folder(f"{keys.SHUFFLE}{name}/", TMP_AGE_S)
        elif kind != "link" and keys.is_shuffle_shard(name):
            shard = f"{keys.SHUFFLE}{name}/"
            for sid, inner in store.folder_entries(shard).items():
                if inner == "empty" and keys.is_shuffle_id(sid):
                    removed += store.remove_empty_folder(f"{shard}{sid}/", TMP_AGE_S)
    return removed


#: why a link under jobs/ or shuffle/ is left
_LINK = "a symbolic link (not followed): wrenpack makes none, so not wrenpack's"


def _entries(store: Any, prefix: str) -> dict[str, str]:
    """The folders (and, in a local store, links) one level below ``prefix``: name ->
    "folder", "temporary", "empty" or "link" (``LocalStore.folder_entries``). On S3 a
    folder is a prefix with objects under it, never empty, and there are no links."""
    from wrenpack.storage.local import LocalStore

    if isinstance(store, LocalStore):
        return store.folder_entries(prefix)
    return {name: "folder" for name in store.list_folders(prefix)}


def _folders(foreign: dict[str, str]) -> str:
    """The folders ``foreign`` names, a few of them, printable."""
    from wrenpack.job.client import printable

    names = sorted(foreign)
    return printable(", ".join(names[:3])) + (", ..." if len(names) > 3 else "")


def _holds_other_things(store: Any) -> bool:
    """Whether a local store's directory holds anything wrenpack does not put at its top
    (``jobs/``, ``shuffle/``, ``data/`` of ``wrenpack.store()``, temporary files): a
    ``--storage`` naming a project folder, or ``/etc``. (One look at that directory; on
    S3 the listing of ``jobs/`` and ``shuffle/`` alone decides.)"""
    from wrenpack.storage.local import LocalStore

    if not isinstance(store, LocalStore):
        return False
    ours = {folder.rstrip("/") for folder in keys.STORE_FOLDERS}
    try:
        with os.scandir(store.root) as entries:
            return any(e.name not in ours and not e.name.startswith(".tmp-") for e in entries)
    except OSError:
        return False


def _not_a_store(store: Any, foreign: dict[str, str], as_json: bool) -> int:
    """``clean --all``/``--stale`` on a folder with nothing of wrenpack's in it: said in one
    line, nothing removed (not even stray temporary files in its jobs/, shuffle/ or data/)."""
    if as_json:
        print(json.dumps({"store": store.url, "store_exists": True, "wrenpack_store": False, "removed": 0, "prefixes": {},
                          "jobs": 0, "map_reduces": 0, "awaiting_late_writes": {}, "tmp_swept": 0, "empty_folders_removed": 0,
                          "skipped": sorted(foreign), "skipped_why": foreign}))
    else:
        left = f"; left {len(foreign)} folder(s): {_folders(foreign)}" if foreign else ""
        print(f"removed nothing from {store.url}: it does not look like a wrenpack store (nothing under jobs/ or "
              f"shuffle/ is a folder named as wrenpack names its own{left}); check --storage")
    return 0


def _late_writes_until(store: Any, owner_key: str, record_id: str, key: bytes, now: float) -> float | None:
    """Until when a stale job's (or map_reduce's) calls may still write, if that is still
    ahead: its sealed owner record says how long they may run on after their driver
    (``late_s``, on Lambda); the first clean that finds the driver gone marks the record
    (``swept``, sealed again) and the wait counts from then. None: they can no longer
    (that time has passed, or the calls its driver's exit stopped, ``running``, have
    all written their results)."""
    try:
        record = owner_record.loads(store.get(owner_key))
    except (ObjectNotFound, StoreError, ValueError):
        return None
    late = record.get("late_s")
    if type(late) not in (int, float) or not late > 0 or not owner_record.verify(key, record_id, record):
        return None
    running = record.get("running")  # (the calls its driver's exit stopped: once each has its result, none writes)
    if isinstance(running, list) and all(isinstance(c, str) and store.exists(keys.result_key(record_id, c))
                                         for c in running):
        return None
    swept = record.get("swept")
    if type(swept) not in (int, float):
        swept = now
        marked = {k: v for k, v in record.items() if k != "mac"}
        marked["swept"] = now
        store.put(owner_key, json.dumps(owner_record.seal(key, record_id, marked)).encode())
    until = float(swept) + float(late)
    return until if now < until else None


def _remove_logs(job_ids: list[str]) -> None:
    """The logs of removed spawned jobs' supervisors (in wrenpack's cache directory)."""
    from wrenpack.job.client import log_path

    for j in job_ids:
        try:
            os.unlink(log_path(j))
        except OSError:
            pass


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(
        name, help="remove a job's objects (orphaned jobs, or all jobs) from the store",
        description="Remove jobs' objects from the store: the jobs named, those whose owner is gone (--stale), or "
                    "every job (--all); stray .tmp-* files older than five minutes go too (on S3: multipart uploads "
                    "left unfinished for over a day). A job or map_reduce folder with no owner record is removed by "
                    "--all or --stale --force only once unchanged for five minutes (one being started writes its "
                    "record just after making its folder). A spawned job whose supervisor runs is never removed: "
                    "cancel it first (wrenpack jobs cancel ID). Exit codes: 0 ok, 1 no such job or refused, 2 usage.")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="job(s) to remove")
    p.add_argument("--stale", action="store_true", help="remove the jobs whose owner process is gone (as their "
                   "owner records sealed with your key say)")
    p.add_argument("--all", action="store_true", help="remove every job's objects (refused while an owner runs; folders whose "
                   "names wrenpack never gives are left)")
    p.add_argument("--force", action="store_true", help="remove jobs even if their owner still runs (with --stale: "
                   "also the jobs whose owner cannot be checked, never those whose owner runs)")
    p.add_argument("--storage", help="store to clean (default: the storage setting)")
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--s3-endpoint-url")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_clean, parser=p)
