"""``wrenpack jobs [--json]``, ``wrenpack jobs show ID [--json]``, ``wrenpack jobs cancel ID [--json]``.

Lists the jobs in the store: spawned ones (``f.spawn_map``) with their state,
call counts (done, failed, running, queued, cancelled), owner, start and cost so far
(Lambda's price of the billed time and requests; on the local backend, what the
same calls would cost on Lambda), and jobs launched with ``.map()`` that have
objects there (as their owner records say). Only records sealed with your own
key are believed: another user's or a forged job shows as "untrusted".
Exit codes: 0 ok, 1 no such job (or it cannot be cancelled), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wrenpack.errors import StoreError, WrenpackError
from wrenpack.report import _usd, add_plot_arguments, write_plot
from wrenpack.cli import json_errors

#: the fields of each row of `wrenpack jobs --json`, in every state: a job launched with .map(), one whose
#: record does not verify or cannot be read holds None where a spawned job has a figure (a script reading
#: row["done"] or row["cost"] must not fail on the first such row)
ROW_FIELDS = ("id", "spawned", "function", "state", "why", "calls", "done", "failed", "running", "queued", "cancelled",
              "created", "updated", "ended", "invocations", "billed_ms", "cost", "backend", "owner", "retention_s",
              "expires", "settings", "supervisor")
#: the fields of each call of `wrenpack jobs show ID --json` ("calls_status"), in every state: a queued or
#: running call, with no outcome record yet, holds None where an ended one has its figures
CALL_FIELDS = ("call_id", "state", "exit", "error", "attempt", "attempts", "segment", "start", "end", "duration_s",
               "peak_rss_mb", "segments", "call_run_s")


def _store(args: argparse.Namespace) -> Any:
    """The store the options name; None for a local one that does not exist (not created)."""
    from wrenpack.config import current
    from wrenpack.job.client import missing_local_store
    from wrenpack.storage import store_for_config

    overrides = {k: v for k, v in (("storage", args.storage), ("aws_region", args.region),
                                   ("aws_profile", args.profile), ("s3_endpoint_url", args.s3_endpoint_url))
                 if v is not None}  # (an empty one is refused before: cli.empty_option)
    config = current(**overrides)
    missing = missing_local_store(config)
    if missing is not None:
        args.missing_store = missing
        return None
    return store_for_config(config)


def _when(t: Any) -> str:
    from wrenpack.job.client import when

    return when(t)


def _owner(row: dict[str, Any]) -> str:
    owner = row.get("owner") or {}
    if "user" in owner:
        return f"{owner.get('user')}@{owner.get('host')}"
    return f"pid {owner.get('pid')}@{owner.get('host')}" if owner else "-"


def _counts(row: dict[str, Any]) -> str:
    if not row.get("spawned"):
        return "-"
    return f"{row['done']}/{row['failed']}/{row['running']}/{row['queued']}/{row.get('cancelled') or 0}"


@json_errors
def cmd_jobs(args: argparse.Namespace) -> int:
    from wrenpack.cli.cmd_clean import map_reduce_ids
    from wrenpack.executor.owner import user_key
    from wrenpack.job.client import describe, describe_map_reduce, job_ids, printable

    action = getattr(args, "action", None)
    if action == "show":
        return _show(args)
    if action == "cancel":
        return _cancel(args)
    store = _store(args)
    key = user_key(create=False)
    rows = [describe(store, j, key) for j in job_ids(store)] if store is not None else []
    if store is not None:  # (a map_reduce's intermediates: the objects it holds until it ends, or `clean --stale`)
        try:
            shuffles = map_reduce_ids(store)
        except StoreError as exc:  # (the jobs are listed all the same: a role that may not list shuffle/, say)
            print(f"wrenpack jobs: the map_reduces' intermediates in {store.url} could not be listed: {exc}", file=sys.stderr)
            shuffles = []
        rows += [describe_map_reduce(store, s, key) for s in shuffles]
    url = store.url if store is not None else args.missing_store
    if args.json:
        whole = [dict({k: r.get(k) for k in ROW_FIELDS}, **r) for r in rows]
        print(json.dumps({"store": url, "store_exists": store is not None, "jobs": whole}, default=str))
        return 0
    if not rows:
        hint = "" if store is not None else " (there is no store there: check --storage)" if args.storage else \
            " (there is no store there yet)"
        print(f"no jobs in {url}{hint}")
        return 0
    # (CANCELLED too: a cancelled 6-call job showed 0/0/0/0, its calls in no column)
    head = ("ID", "FUNCTION", "STATE", "DONE/FAILED/RUNNING/QUEUED/CANCELLED", "OWNER", "STARTED", "COST")
    table = [head] + [tuple(map(printable, (
        r["id"], str(r.get("function") or "-"), r["state"], _counts(r), _owner(r), _when(r.get("created")),
        _usd(r["cost"]) if r.get("cost") is not None else "-"))) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0


def _open(args: argparse.Namespace) -> Any:
    from wrenpack import keys
    from wrenpack.job.client import JobNotFound, NotSpawned, check_job_id, open_job

    given = args.job_id.rstrip("/") or args.job_id
    if keys.is_shuffle_id(given):  # (an id `wrenpack jobs` lists, as a map_reduce's row)
        raise NotSpawned(f"{given} is a map_reduce's intermediate objects, not a job: `wrenpack jobs` says whether "
                         "its program still runs, and `wrenpack clean --stale` removes them once it is gone")
    # (a trailing slash: a folder name the shell completed; anything else that is not an id is
    # refused before the store is opened)
    job_id = check_job_id(given, f"wrenpack jobs {args.action}")
    store = _store(args)
    if store is None:
        raise JobNotFound(f"no job {job_id!r}: there is no store at {args.missing_store}; check --storage "
                          "(or the storage setting)")
    return open_job(store, job_id)


def _show(args: argparse.Namespace) -> int:
    from wrenpack.executor.owner import user_key
    from wrenpack.job.client import describe, printable

    job = _open(args)  # (the one-line errors: not found, not spawned, untrusted)
    row = describe(job.store, job.id, user_key(create=False))
    earlier: dict[str, list[dict[str, Any]]] = {}
    for seg in job.segment_statuses():
        earlier.setdefault(str(seg.get("call_id")), []).append(seg)
    row["calls_status"] = [_whole_call(dict({k: rec.get(k) for k in CALL_FIELDS}, **rec), earlier.get(str(rec.get("call_id")), []))
                           for rec in job.statuses()]
    if args.plot:
        written = write_plot(job.report(), args.plot)
        print(f"report: {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(row, default=str))
        return 0
    settings = row.get("settings") or {}
    sup = row.get("supervisor") or {}
    print(f"job        {row['id']}")
    print(f"function   {row['function']} ({row['calls']} calls) on {row.get('backend')}, "
          f"memory={settings.get('memory')} MB, timeout={settings.get('timeout')} s")
    why = f" ({printable(str(row['why']))})" if row.get("why") else ""
    print(f"state      {row['state']}{why}: {row['done']} done, {row['failed']} failed, {row['running']} running, "
          f"{row['queued']} queued, {row['cancelled']} cancelled")
    print(f"owner      {_owner(row)}; supervisor pid {sup.get('pid', '-')} "
          f"({'running' if sup.get('alive') else 'ended' if sup.get('alive') is False else 'unknown'})")
    print(f"started    {_when(row.get('created'))}; ended {_when(row.get('ended'))}; kept until {_when(row.get('expires'))}")
    # (Lambda's price of the invocations and their billed time; S3's requests are the report's to
    # estimate, so this says what it holds: on a local backend, what the calls would cost on Lambda)
    billed = "billed" if settings.get("billed") else "estimated: what they would cost on Lambda"
    print(f"cost       {_usd(row['cost'])} ({billed}; {row['invocations']} invocations, {row['billed_ms'] / 1000:.3f} s; "
          "Lambda only, S3 requests not counted: --plot FILE reports them)")
    for rec in row["calls_status"]:
        extra = ""
        if rec.get("call_run_s") is not None:
            peak = rec.get("peak_rss_mb")  # (none where it cannot be measured: Lambda)
            segments = rec.get("segments") or 1
            extra = (f" {rec['call_run_s']:.3f} s" + (f" in {segments} segments" if segments > 1 else "") + ", " +
                     (f"peak {peak} MB, " if peak is not None else "") + f"attempts {rec.get('attempts')}")
        # (the error's type and the first line of its message, redacted as the report's; or how the call ended)
        why = rec.get("error") or (rec.get("exit") if rec.get("exit") not in (None, "ok") else None)
        if why and rec["state"] != "cancelled":
            extra += f" ({printable(str(why))})"
        print(f"  {printable(str(rec['call_id']))}  {rec['state']}{extra}")
    return 0


def _whole_call(call: dict[str, Any], earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """``call`` (a row of ``calls_status``) with the figures of the whole call, as the report
    (``--plot``) has them: ``segments`` (its invocations, a checkpointed call's segments) and
    ``call_run_s`` (its run time across them), its peak the highest of them. Its own record is
    its last segment's alone: `jobs show` said "done 0.105 s" of a call that ran 3.55 s in
    three segments. Both None for a call with no outcome yet."""
    if call.get("duration_s") is None:
        call["segments"] = call["call_run_s"] = None
        return call
    run = 0.0
    for rec in [*earlier, call]:
        start, end = rec.get("start"), rec.get("end")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            run += max(0.0, float(end) - float(start))  # (as the report's bars: start to end)
        elif isinstance(rec.get("duration_s"), (int, float)):
            run += max(0.0, float(rec["duration_s"]))
    call["segments"] = max([int(rec.get("segment") or 0) for rec in [*earlier, call]]) + 1
    call["call_run_s"] = round(run, 6)
    peaks = [rec["peak_rss_mb"] for rec in [*earlier, call] if isinstance(rec.get("peak_rss_mb"), (int, float))]
    call["peak_rss_mb"] = max(peaks) if peaks else call.get("peak_rss_mb")
    return call


def _cancel(args: argparse.Namespace) -> int:
    job = _open(args)
    again = job.cancelled()
    if not job.cancel():
        raise WrenpackError(f"job {job.id} has already ended ({job.status()['state']}); nothing to cancel")
    running = "running ones are stopped" if job.stops_running else \
        "running ones run to their end (it was spawned with cancellable=False)"
    if args.json:
        print(json.dumps({"id": job.id, "cancelled": True, "already": again, "stops_running": job.stops_running}))
        return 0
    said = f"job {job.id} was already cancelled" if again else f"cancelled job {job.id}"
    print(f"{said}: queued calls will not start, {running}; `wrenpack jobs show {job.id}` follows it")
    return 0


def _common(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument("--storage", default=default, help="the store (default: the storage setting)")
    p.add_argument("--region", default=default)
    p.add_argument("--profile", default=default)
    p.add_argument("--s3-endpoint-url", default=default)


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(name, help="list spawned jobs, show one, or cancel one",
                              description="List the jobs in the store (spawned ones with state, counts, owner, "
                                          "start and cost so far); `show ID` for one, `cancel ID` to cancel one. "
                                          "Exit codes: 0 ok, 1 not found or failed, 2 usage.")
    p.add_argument("--json", action="store_true", help="one JSON document")
    _common(p)
    p.set_defaults(func=cmd_jobs, action=None)
    # The actions' options default to nothing (SUPPRESS), so one given before the action
    # (`wrenpack jobs --storage S cancel ID`) is not reset by the action's parser.
    quiet = argparse.SUPPRESS
    sub = p.add_subparsers(dest="action", metavar="[ACTION]")
    show = sub.add_parser("show", help="one job: record, counts, cost and every call's status",
                          description="Show one spawned job: its record, counts, cost and every call's status.")
    show.add_argument("job_id", metavar="ID")
    show.add_argument("--json", action="store_true", default=quiet, help="one JSON document")
    add_plot_arguments(show)
    _common(show, quiet)
    cancel = sub.add_parser("cancel", help="cancel a spawned job (queued calls never start)",
                            description="Cancel a spawned job: its queued calls never start, running ones are "
                                        "stopped (unless it was spawned with cancellable=False: they run to their "
                                        "end), and its futures fail with CancelledError. Exit codes: 0 ok, 1 no "
                                        "such job or it has already ended, 2 usage.")
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--json", action="store_true", default=quiet, help="one JSON document")
    _common(cancel, quiet)
