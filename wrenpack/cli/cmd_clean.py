"""``wrenpack clean [JOB_ID ... | --all]``: remove jobs' objects from the store.

Works on any store ``open_store`` knows (local directory or S3), so a job
left behind by ``keep_objects=True`` or a crashed client can be removed.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from wrenpack import keys
from wrenpack.errors import ConfigError


def cmd_clean(args: argparse.Namespace) -> int:
    from wrenpack.config import current
    from wrenpack.storage import store_for_config

    overrides = {k: v for k, v in (("storage", args.storage), ("aws_region", args.region),
                                   ("aws_profile", args.profile), ("s3_endpoint_url", args.s3_endpoint_url)) if v}
    store = store_for_config(current(**overrides))
    if args.all == bool(args.job_ids):
        raise ConfigError("name the jobs to remove (wrenpack clean JOB_ID ...) or pass --all, not both")
    prefixes = [keys.JOBS] if args.all else [keys.job_prefix(j.strip("/")) for j in args.job_ids]
    removed = {p: store.delete_prefix(p) for p in prefixes}
    total = sum(removed.values())
    if args.json:
        print(json.dumps({"store": store.url, "removed": total, "prefixes": removed}))
    else:
        print(f"removed {total} object(s) from {store.url}")
    return 0


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(name, help="remove a job's objects (or all jobs) from the store")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="job(s) to remove")
    p.add_argument("--all", action="store_true", help="remove every job's objects")
    p.add_argument("--storage", help="store to clean (default: the storage setting)")
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--s3-endpoint-url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clean)
