"""``wrenpack clean [JOB_ID ... | --stale | --all [--force]]``: remove jobs' objects from the store.

Works on any store ``open_store`` knows (local directory or S3), so a job
left behind by ``keep_objects=True`` or a crashed client can be removed. Each
job records its owner (``jobs/<job>/owner.json``: host, pid, process start
time): ``--stale`` removes the jobs whose owner process is gone; ``--all``
and named jobs refuse to remove a job whose owner still runs unless
``--force``. On a local store, temporary files (``.tmp-*``) that writers killed
mid-write left behind more than five minutes ago are swept too.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from wrenpack import keys
from wrenpack.errors import ConfigError, ObjectNotFound, StoreError

#: temporary files younger than this may belong to a write in progress
TMP_AGE_S = 300.0


def job_ids(store: Any) -> list[str]:
    """Every job that has objects in the store."""
    found = {key[len(keys.JOBS):].split("/", 1)[0] for key in store.list(keys.JOBS)}
    return sorted(j for j in found if j)


def job_state(store: Any, job_id: str) -> str:
    """"live" (its owner process runs), "stale" (owner gone, or unknown), or
    "elsewhere" (launched on another host: cannot tell from here)."""
    from wrenpack.executor import owner_alive

    try:
        record = json.loads(store.get(keys.owner_key(job_id)))
    except ObjectNotFound:
        return "stale"
    except (StoreError, ValueError):
        return "stale"
    if not isinstance(record, dict):
        return "stale"
    alive = owner_alive(record)
    return "elsewhere" if alive is None else ("live" if alive else "stale")


def cmd_clean(args: argparse.Namespace) -> int:
    from wrenpack.config import current
    from wrenpack.storage import store_for_config

    overrides = {k: v for k, v in (("storage", args.storage), ("aws_region", args.region),
                                   ("aws_profile", args.profile), ("s3_endpoint_url", args.s3_endpoint_url)) if v}
    if sum((bool(args.job_ids), args.all, args.stale)) != 1:
        raise ConfigError("name the jobs to remove (wrenpack clean JOB_ID ...), or pass --all or --stale (one of them)")
    store = store_for_config(current(**overrides))
    if args.stale:
        targets = [j for j in job_ids(store) if job_state(store, j) == "stale"]
        skipped: list[str] = []
    else:
        named = job_ids(store) if args.all else [j.strip("/") for j in args.job_ids]
        if not args.all:
            unknown = [j for j in named if not j or not store.list(keys.job_prefix(j))]
            if unknown:
                shown = ", ".join(map(repr, unknown[:3])) + (" ..." if len(unknown) > 3 else "")
                raise ConfigError(f"no job {shown} in the store {store.url}; nothing was removed: check the id "
                                  "(a future's .job_id) and --storage, or remove orphaned jobs with --stale")
        live = [j for j in named if job_state(store, j) == "live"]
        if live and not args.force:
            shown = ", ".join(live[:3]) + (" ..." if len(live) > 3 else "")
            raise ConfigError(f"{len(live)} job(s) belong to a program still running ({shown}); "
                              "wait for it to end, use --stale for orphaned jobs only, or pass --force")
        targets, skipped = named, []
    if args.all and args.force:
        removed = {keys.JOBS: store.delete_prefix(keys.JOBS)}
    else:
        removed = {keys.job_prefix(j): store.delete_prefix(keys.job_prefix(j)) for j in targets}
    swept = 0
    from wrenpack.storage.local import LocalStore, sweep_tmp

    if isinstance(store, LocalStore):
        swept = sweep_tmp(store, TMP_AGE_S)
    total = sum(removed.values())
    if args.json:
        print(json.dumps({"store": store.url, "removed": total, "prefixes": removed, "jobs": len(targets),
                          "tmp_swept": swept, "skipped": skipped}))
    else:
        extra = f", {swept} stray temporary file(s)" if swept else ""
        print(f"removed {total} object(s) of {len(targets)} job(s){extra} from {store.url}")
    return 0


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(name, help="remove a job's objects (orphaned jobs, or all jobs) from the store")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="job(s) to remove")
    p.add_argument("--stale", action="store_true", help="remove the jobs whose owner process is gone")
    p.add_argument("--all", action="store_true", help="remove every job's objects (refused while an owner runs)")
    p.add_argument("--force", action="store_true", help="remove jobs even if their owner still runs")
    p.add_argument("--storage", help="store to clean (default: the storage setting)")
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--s3-endpoint-url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clean)
