"""A job report: what a job's calls did, with what settings, and what they cost.

``JobReport`` is built from plain per-invocation status records (dicts or
dataclasses, as the store and ``WrenFuture.status`` hold them) and a small
settings dict, so it serves a map's futures in this process
(``Executor.report``, ``wrenpack.job_report``) and a job read back from the
store alike. It shows:

- a timeline, one row per call: queued (made -> a worker took it, and the
  waits between invocations), then each invocation: finished, failed,
  retried (an attempt that failed and was tried again), checkpointed (a
  segment that saved its state and handed over to the next), running;
- the settings each call ran with (memory, timeout) and, where they were
  ``"auto"``, what the profile chose and why;
- the cost. On a backend that bills per call (Lambda) each invocation is
  billed as Lambda bills it: its duration rounded up to 1 ms x its memory at
  the GB-s price, plus one request; elsewhere the same sum prices the local
  durations and is marked *estimated* (what the job would cost on Lambda, a
  local core standing in for Lambda's CPU share). S3 requests are priced
  from a stated model (``S3_MODEL``) unless the settings give counts.
  Prices: ``wrenpack/data/lambda_prices.json``.

The durations are the worker's own (``start``/``end`` around the handler):
Lambda's billed duration also counts the runtime's few milliseconds around
it (and, where Lambda bills it, a cold start's init), so a billed figure here
is a slight underestimate of the bill.

Client side only: nothing here is shipped to workers. Standard library only;
a PNG needs matplotlib (``pip install 'wrenpack[plot]'``).
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import math
import threading
import time
import weakref
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from wrenpack import figure
from wrenpack.errors import ConfigError

log = logging.getLogger(__name__)

#: ``to_json()``'s layout; a change that renames or removes a field is a new version.
SCHEMA = 1

#: a call's state (one per row)
STATES = ("queued", "running", "finished", "failed", "cancelled")
#: the kinds of timeline segment, in legend order
KINDS = ("queued", "running", "finished", "failed", "retried", "checkpointed")
COLORS = {
    "queued": "#c9ced6",
    "running": "#f2b134",
    "finished": "#3a9e5f",
    "failed": "#d64545",
    "retried": "#9b59b6",
    "checkpointed": "#3b7dd8",
}

#: how S3 requests are counted when the settings give no counts (``s3_requests``)
S3_MODEL = ("per job: 1 PUT (owner record) + 1 LIST (removing its objects); per invocation: 1 PUT (its result "
            "or segment record) + 1 GET (the client's read), as Lambda's default Event invocations do; per "
            "checkpoint save 1 PUT, per restore 1 GET. Not counted: the client's polling LISTs, and functions or "
            "arguments too large to travel in the event (each 1 PUT, plus a GET per invocation)")

#: the settings a report takes (``JobReport``'s docstring says what each does)
SETTINGS = ("job_id", "label", "backend", "architecture", "billed", "memory_mb", "timeout_s", "ephemeral_storage_mb",
            "retries", "s3_requests", "now")

#: the output formats ``save`` and ``--plot`` take
FORMATS = (".html", ".json", ".png")


@lru_cache(maxsize=1)
def prices() -> dict[str, Any]:
    """The price table shipped in ``wrenpack/data/lambda_prices.json``."""
    return json.loads(resources.files("wrenpack").joinpath("data/lambda_prices.json").read_text())


def lambda_cost(memory_mb: float, billed_ms: float, invocations: int, architecture: str = "x86_64") -> float:
    """What ``invocations`` requests and ``billed_ms`` of duration at ``memory_mb``
    cost on Lambda (``prices()``), in its currency: the one formula the job
    report and ``wrenpack jobs`` share."""
    table = prices()["architectures"]
    price = table.get(architecture) or table["x86_64"]
    return billed_ms / 1000.0 * memory_mb / 1024.0 * price["per_gb_second"] + \
        invocations * price["per_million_requests"] / 1e6


def billed_ms(seconds: float) -> int:
    """Lambda's billed duration of an invocation that ran ``seconds``: whole
    milliseconds, rounded up, at least 1."""
    # (the epsilon keeps a float like 0.0030000000000001 at 3 ms, not 4)
    return max(1, math.ceil(seconds * 1000 - 1e-6))


# -- input ------------------------------------------------------------------------

def _plain(record: Any) -> dict[str, Any]:
    """A record as a dict: a mapping, a dataclass, or an object with ``to_dict``."""
    if isinstance(record, Mapping):
        return dict(record)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise ConfigError(f"a job report takes status records as dicts or dataclasses, not {type(record).__name__}; "
                      "pass what WrenFuture.status or the store's records hold")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _memory(record: Mapping[str, Any], settings: Mapping[str, Any]) -> tuple[float | None, str]:
    """(memory in MB, where the figure came from) for one record."""
    for key, source in (("memory_mb", "call"), ("memory", "call")):
        value = _number(record.get(key))
        if value is not None:
            return value, "auto" if isinstance(record.get("auto"), Mapping) and "memory" in record["auto"] else source
    auto = record.get("auto")
    if isinstance(auto, Mapping) and _number(auto.get("memory")) is not None:
        return float(auto["memory"]), "auto"
    for key in ("memory_mb", "memory"):
        value = _number(settings.get(key))
        if value is not None:
            return value, "job"
    return None, "unknown"


def _timeout(record: Mapping[str, Any], settings: Mapping[str, Any]) -> float | None:
    for source in (record, record.get("auto") if isinstance(record.get("auto"), Mapping) else {}, settings):
        for key in ("timeout_s", "timeout"):
            value = _number(source.get(key))
            if value is not None:
                return value
    return None


class JobReport:
    """What a job's calls did, with what settings, and what they cost.

    ``records``: one dict (or dataclass) per invocation, in any order: a
    status record as ``wrenpack.wire.status`` defines it (what
    ``WrenFuture.status``, ``.segment_statuses``, ``.retried_statuses``, a
    result object's header and a segment record hold). The fields read:

    - ``call_id`` (and ``job_id``): which call; the records of one call (its
      checkpointed segments, its attempts) make one row. ``row`` (any
      hashable), when given, groups instead (the futures of a map whose calls
      shared an invocation); ``label`` names the row (else ``call_id``).
    - ``segment``, ``attempt``, ``exit`` ("ok", "error", "timeout",
      "checkpointed", "expired"), ``start`` and ``end`` (seconds since the
      epoch, the worker's clock), ``duration_s``, ``peak_rss_mb``,
      ``checkpoint`` (``saves``, ``restored``), ``retried`` (what earlier
      attempts raised), ``retry: true`` on an attempt that was tried again;
    - ``memory_mb`` and ``timeout_s``: what the invocation ran with (else the
      settings'); ``auto``: what ``memory="auto"``/``timeout="auto"`` chose
      (``memory``, ``timeout``, ``why``, ``profile``, ``n``);
    - ``state`` (one of ``STATES``) and ``error`` (text): set by the client
      for a call with no outcome record yet (queued, running) or whose
      outcome came from the client (a worker that died, a cancel);
    - ``created_at`` and ``started_at`` (the client's clock): when the call
      was made and when a worker took it (the queued bar).

    ``settings`` (all optional): ``job_id``, ``label``, ``backend`` (shown
    only), ``architecture`` ("x86_64" or "arm64": which prices), ``billed``
    (True: the backend bills per call, so the cost is as billed; otherwise
    it is an estimate), ``memory_mb``, ``timeout_s``, ``ephemeral_storage_mb``,
    ``retries`` (the job's settings, for records that do not say),
    ``s3_requests`` (``{"put": n, "get": n, "list": n}`` counted elsewhere,
    instead of ``S3_MODEL``), ``now`` (seconds since the epoch: where running
    bars end; default the time of building).
    """

    def __init__(self, records: Iterable[Any], settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})
        unknown = [k for k in self.settings if k not in SETTINGS]
        if unknown:  # (a misspelt one would be ignored, and its figure silently not the one asked for)
            raise ConfigError(f"a job report has no setting {', '.join(map(repr, unknown))}; "
                              f"the settings are {', '.join(SETTINGS)}")
        self.now = _number(self.settings.get("now")) or time.time()
        rows: dict[Any, list[dict[str, Any]]] = {}
        for raw in records:
            record = _plain(raw)
            key = record.get("row")
            if key is None:
                if record.get("call_id") is None:
                    raise ConfigError(f"a status record without call_id (or row): {json.dumps(record, default=str)[:120]}; "
                                      "each record must name its call")
                key = (record.get("job_id"), record.get("call_id"))
            rows.setdefault(key, []).append(record)
        self._data = self._build(rows)

    # -- building -------------------------------------------------------------
    @classmethod
    def from_futures(cls, futures: Iterable[Any], settings: Mapping[str, Any] | None = None,
                     defaults: Mapping[str, Any] | None = None) -> "JobReport":
        """The report of a map's (or any) futures, running or done, one row each.
        ``defaults``: settings for what neither ``settings`` nor the futures' job
        say (an executor's); the futures of one spawned job bring that job's own
        (its memory, architecture, whether billed: ``job.client.SpawnedJobKey``)."""
        records: list[dict[str, Any]] = []
        spawned: list[Any] = []
        for i, fut in enumerate(futures):
            records.extend(records_of_future(fut, i))
            spawned.append(_spawned_settings(fut))
        own = spawned[0] if spawned and all(s is not None and s == spawned[0] for s in spawned) else {}
        settings = {**(defaults or {}), **own, **(settings or {})}
        if "job_id" not in settings:
            jobs = {r.get("job_id") for r in records if r.get("job_id")}
            if len(jobs) == 1:
                settings["job_id"] = jobs.pop()
        return cls(records, settings)

    def _build(self, rows: dict[Any, list[dict[str, Any]]]) -> dict[str, Any]:
        s = self.settings
        billed = bool(s.get("billed"))
        arch = s.get("architecture") or "x86_64"
        table = prices()
        if arch not in table["architectures"]:
            raise ConfigError(f"architecture={arch!r} has no prices in wrenpack/data/lambda_prices.json; "
                              f"use one of {', '.join(table['architectures'])}")
        per_gb_s = table["architectures"][arch]["per_gb_second"]
        per_request = table["architectures"][arch]["per_million_requests"] / 1e6
        seen: set[tuple[Any, ...]] = set()  # invocations already priced (calls that shared one)
        calls: list[dict[str, Any]] = []
        notes: list[str] = []
        total = {"invocations": 0, "billed_ms": 0, "gb_s": 0.0, "duration_usd": 0.0, "requests": 0,
                 "unpriced": 0, "saves": 0, "restores": 0}
        for index, (key, recs) in enumerate(rows.items()):
            calls.append(self._call(index, key, recs, seen, total, per_gb_s))
        t0_candidates = [t for c in calls for t in (c["_t0"],) if t is not None]
        t0 = min(t0_candidates) if t0_candidates else self.now
        t1_candidates = [seg["end"] for c in calls for seg in c["timeline"]]
        t1 = max(t1_candidates) if t1_candidates else t0
        # What the calls ran with, where each call's own record says it: the settings given (an
        # executor's defaults) are not what a function's own options (memory=, timeout=) made them run
        # with. ("auto" stays: what it chose for each call is the page's "auto" table.)
        ran: dict[str, Any] = {}
        for name, own in (("memory_mb", "_memory_own"), ("timeout_s", "_timeout_own")):
            if calls and all(c[own] for c in calls) and not isinstance(s.get(name), str):
                values = sorted({c[name] for c in calls})
                ran[name] = values[0] if len(values) == 1 else values
        for c in calls:
            del c["_t0"], c["_memory_own"], c["_timeout_own"]
            for seg in c["timeline"]:
                seg["start"] = round(seg["start"] - t0, 6)
                seg["end"] = round(seg["end"] - t0, 6)
        requests_usd = total["requests"] * per_request
        # (the model's per-job requests: a map launched as several jobs, or futures of two, made each)
        jobs = len({c["job_id"] for c in calls if c.get("job_id")}) or (1 if calls else 0)
        s3 = self._s3(total, jobs)
        if total["unpriced"]:
            notes.append(f"{total['unpriced']} invocation(s) left no record of their duration (a worker that died, an "
                         "event that expired): counted as requests, not priced by duration")
        if any(c["memory_source"] == "unknown" for c in calls):
            notes.append("some calls' memory is not known (pass settings memory_mb=): their duration is not priced")
        duration_usd = total["duration_usd"]
        cost = {
            "estimated": not billed,
            "basis": ("billed: each invocation's duration rounded up to 1 ms x its memory at the GB-s price, plus one "
                      "request per invocation; durations are the worker's (its handler's start to end), which Lambda's "
                      "billed duration exceeds by the runtime's few ms and, where Lambda bills it, a cold start's init") if billed else
                     ("estimated: what these invocations would cost on Lambda at the same memory, each local duration "
                      "rounded up to 1 ms (a local core standing in for Lambda's CPU share at that memory), plus one "
                      "request per invocation"),
            "currency": table.get("currency", "USD"),
            "architecture": arch,
            "invocations": total["invocations"],
            "requests": total["requests"],
            "billed_ms": total["billed_ms"],
            "gb_s": round(total["gb_s"], 9),
            "duration_usd": duration_usd,
            "requests_usd": requests_usd,
            "s3": s3,
            "total_usd": duration_usd + requests_usd + s3["usd"],
            "prices": {"date": table.get("date"), "region": table.get("region"), "per_gb_second": per_gb_s,
                       "per_request": per_request, "file": "wrenpack/data/lambda_prices.json"},
            "notes": notes,
        }
        states = {state: sum(1 for c in calls if c["state"] == state) for state in STATES}
        job = {
            "id": s.get("job_id"),
            "label": s.get("label") or _common_label(calls),
            "backend": s.get("backend"),
            "calls": len(calls),
            "states": states,
            "retried_calls": sum(1 for c in calls if c["attempts"] > 1),
            "checkpointed_calls": sum(1 for c in calls if c["segments"] > 1),
            "start": t0,
            "end": t1,
            "wall_s": round(t1 - t0 if calls else 0.0, 6),
            "settings": dict({k: v for k, v in s.items() if k not in ("now", "s3_requests") and _jsonable(v)}, **ran),
        }
        return {"schema": SCHEMA, "job": job, "cost": cost, "calls": calls}

    def _call(self, index: int, key: Any, recs: list[dict[str, Any]], seen: set[tuple[Any, ...]],
              total: dict[str, Any], per_gb_s: float) -> dict[str, Any]:
        s = self.settings
        meta: dict[str, Any] = {}
        for r in recs:  # client-side fields: the last record that has one wins
            for name in ("label", "state", "error", "created_at", "started_at", "auto", "job_id", "call_id"):
                if r.get(name) is not None and not (name == "error" and r.get("retry")):  # (a retried attempt's is in ``retried``)
                    meta[name] = r[name]
        runs = [r for r in recs if _number(r.get("start")) is not None or r.get("exit") is not None or "attempt" in r]
        runs.sort(key=lambda r: (int(r.get("segment") or 0), int(r.get("attempt") or 0), _number(r.get("start")) or 0.0))
        final = runs[-1] if runs else {}
        state = meta.get("state")
        if state not in STATES:
            exit_kind = final.get("exit")
            if exit_kind == "ok":
                state = "finished"
            elif exit_kind in ("error", "timeout", "expired"):
                state = "failed"
            elif runs:
                state = "running"  # the last record is a checkpointed segment: the next one is on its way
            else:
                state = "queued"
        memory, memory_source = _memory(dict(final, auto=meta.get("auto")) if meta.get("auto") else final, s)
        timeout = _timeout(dict(final, auto=meta.get("auto")) if meta.get("auto") else final, s)
        timeline: list[dict[str, Any]] = []
        created = _number(meta.get("created_at"))
        first_start = next((_number(r.get("start")) for r in runs if _number(r.get("start")) is not None), None)
        started = _number(meta.get("started_at"))
        queued_until = first_start if first_start is not None else started
        if queued_until is None and state == "queued":
            queued_until = self.now
        if created is not None and queued_until is not None:
            timeline.append({"kind": "queued", "start": created, "end": max(created, queued_until)})
        call_billed = 0
        call_gb_s = 0.0
        call_usd = 0.0
        invocations = untimed = pending = 0
        attempts_by_segment: dict[int, int] = {}
        own: dict[int, set[int]] = {}  # the attempts of each segment this row's records price
        peak = None
        last_end = None
        for pos, r in enumerate(runs):
            segment = int(r.get("segment") or 0)
            attempt = int(r.get("attempt") or 0)
            attempts_by_segment[segment] = max(attempts_by_segment.get(segment, 0), attempt + 1)
            start, end = _number(r.get("start")), _number(r.get("end"))
            if end is None and start is not None and _number(r.get("duration_s")) is not None:
                end = start + float(r["duration_s"])
            last = pos == len(runs) - 1
            if r.get("exit") == "checkpointed":
                kind = "checkpointed"
            elif r.get("retry") or not last:
                kind = "retried"
            elif state in ("finished", "failed"):
                kind = state
            else:
                kind = "running"
            if start is not None:
                if last_end is not None and start > last_end:
                    timeline.append({"kind": "queued", "start": last_end, "end": start})
                bar_end = end if end is not None else self.now
                timeline.append({"kind": kind, "start": start, "end": max(start, bar_end), "segment": segment,
                                 "attempt": attempt, "exit": r.get("exit")})
                last_end = bar_end
            p = _number(r.get("peak_rss_mb"))
            if p is not None:
                peak = p if peak is None else max(peak, p)
            ckpt = r.get("checkpoint") if isinstance(r.get("checkpoint"), Mapping) else {}
            ident = (r.get("job_id"), r.get("call_id"), segment, attempt, start) if r.get("call_id") is not None else (key, segment, attempt, start)
            if ident in seen:
                continue  # an invocation this row shares with another (a group of calls): priced once
            seen.add(ident)
            own.setdefault(segment, set()).add(attempt)
            total["saves"] += int(ckpt.get("saves") or 0)
            total["restores"] += 1 if ckpt.get("restored") else 0
            if start is not None and end is None and last and state == "running":
                pending += 1  # running now: billed once it ends
                continue
            if start is None or end is None:
                untimed += 1  # a worker that died, an event that expired: no duration to price
                continue
            invocations += 1
            mem_r, _ = _memory(r, s) if _number(r.get("memory_mb")) is not None else (memory, memory_source)
            ms = billed_ms(end - start)
            call_billed += ms
            if mem_r is not None:
                gb_s = mem_r / 1024.0 * ms / 1000.0
                call_gb_s += gb_s
                call_usd += gb_s * per_gb_s
        if state == "running" and started is not None and not any(_number(r.get("start")) is not None for r in runs):
            # A worker took it and has not reported yet: running since then (the client's clock).
            timeline.append({"kind": "running", "start": started, "end": max(started, self.now)})
        # Earlier attempts the records do not show (a worker that died before writing
        # one: the backend tried again) were invocations too, with no duration to price.
        missing = untimed + sum(max(attempts) + 1 - len(attempts) for attempts in own.values())
        if not runs and state == "failed":
            missing += 1  # failed with no record at all (its worker died on every attempt)
        elif not runs and state in ("queued", "running"):
            pending += 1  # its first invocation is sent (or about to be), with no record yet
        requests = invocations + missing + pending
        total["invocations"] += invocations
        total["requests"] += requests
        total["unpriced"] += missing
        total["billed_ms"] += call_billed
        total["gb_s"] += call_gb_s
        total["duration_usd"] += call_usd
        retried = list(final.get("retried") or [])
        for r in runs:
            if r.get("retry") and r.get("error") and r["error"] not in retried:
                retried.append(r["error"])
        segments = max(attempts_by_segment) + 1 if attempts_by_segment else 0
        auto = meta.get("auto") or final.get("auto")
        t0 = min([seg["start"] for seg in timeline], default=None)
        return {
            "index": index,
            "label": str(meta.get("label") or final.get("call_id") or meta.get("call_id") or key),
            "job_id": final.get("job_id", meta.get("job_id")),
            "call_id": final.get("call_id", meta.get("call_id")),
            "state": state,
            "error": meta.get("error") or (final.get("error") if state == "failed" else None),
            "attempts": max([int(r.get("attempt") or 0) + 1 for r in runs if int(r.get("segment") or 0) == segments - 1] or [1]),
            "retried": retried,
            "segments": segments,
            "exit": final.get("exit"),
            "memory_mb": memory,
            "memory_source": memory_source,
            "timeout_s": timeout,
            "auto": auto if isinstance(auto, Mapping) else None,
            "peak_rss_mb": peak,
            "run_s": round(sum((seg["end"] - seg["start"] for seg in timeline if seg["kind"] != "queued"), 0.0), 6),
            "queued_s": round(sum((seg["end"] - seg["start"] for seg in timeline if seg["kind"] == "queued"), 0.0), 6),
            "invocations": requests,
            "billed_ms": call_billed,
            "gb_s": round(call_gb_s, 9),
            "cost_usd": call_usd,
            "timeline": timeline,
            "_t0": t0,
            "_memory_own": memory is not None and memory_source in ("call", "auto"),
            "_timeout_own": timeout is not None and _timeout(dict(final, auto=meta.get("auto")), {}) is not None,
        }

    def _s3(self, total: dict[str, Any], jobs: int) -> dict[str, Any]:
        table = prices().get("s3_requests") or {}
        given = self.settings.get("s3_requests")
        if isinstance(given, Mapping):
            counts = {k: int(given.get(k) or 0) for k in ("put", "get", "list")}
            basis = "counted (given with the job's settings)"
        else:
            inv = total["invocations"] + total["unpriced"]
            counts = {"put": jobs + inv + total["saves"], "get": inv + total["restores"], "list": jobs}
            basis = "estimated: " + S3_MODEL
        usd = sum(counts[k] * float(table.get(f"per_thousand_{k}", 0.0)) / 1000.0 for k in counts)
        return dict(counts, usd=usd, basis=basis)

    # -- output ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The report as plain data (``json.dumps`` takes it), schema ``SCHEMA``::

            {"schema": 1,
             "job":  {id, label, backend, calls, states: {state: count}, retried_calls,
                      checkpointed_calls, start (epoch s), end, wall_s, settings},
             "cost": {estimated (bool), basis, currency, architecture, invocations, requests,
                      billed_ms, gb_s, duration_usd, requests_usd,
                      s3: {put, get, list, usd, basis}, total_usd, prices, notes},
             "calls": [{index, label, job_id, call_id, state, error, attempts, retried,
                        segments, exit, memory_mb, memory_source ("call", "auto", "job", "unknown"),
                        timeout_s, auto, peak_rss_mb, run_s, queued_s, invocations,
                        billed_ms, gb_s, cost_usd (duration only),
                        timeline: [{kind, start, end (s from job start), and for an
                                    invocation's bar segment, attempt, exit}]}]}
        """
        return json.loads(json.dumps(self._data, default=str))  # (a copy; a record's odd value as text)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self._data["calls"]

    @property
    def cost(self) -> dict[str, Any]:
        return self._data["cost"]

    def total_usd_text(self) -> str:
        """The job's cost as the HTML shows it (``$0.00001234``, then "estimated" or "billed")."""
        c = self._data["cost"]
        return f"{_usd(c['total_usd'])} ({'estimated' if c['estimated'] else 'billed'})"

    def to_html(self) -> str:
        """A self-contained HTML page: summary, cost, settings, an inline SVG
        timeline and a table of every call. No script, no network."""
        title = html.escape(f"wrenpack job report: {self._data['job']['label'] or self._data['job']['id'] or 'job'}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>"
                f"<body>{self._fragment()}</body></html>\n")

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the page's body (its styles scoped to it)."""
        return self._fragment()

    def _fragment(self) -> str:
        d = self._data
        job, cost = d["job"], d["cost"]
        e = html.escape
        out = [f"<div class=\"wrenpack-report\">{_STYLE}"]
        name = job["label"] or job["id"] or _n_calls(job["calls"])
        out.append(f"<h2>wrenpack job report: {e(str(name))}</h2>")
        head = [("job", job["id"]), ("backend", job["backend"]), ("calls", job["calls"]),
                ("states", ", ".join(f"{n} {k}" for k, n in job["states"].items() if n)),
                ("retried calls", job["retried_calls"]), ("checkpointed calls", job["checkpointed_calls"]),
                ("wall time", f"{job['wall_s']:.3f} s")]
        out.append("<table class=\"kv\" id=\"summary\">" + "".join(
            f"<tr><th>{e(k)}</th><td data-field=\"{e(k)}\">{e(str(v))}</td></tr>" for k, v in head if v is not None) + "</table>")
        kind = "estimated" if cost["estimated"] else "billed"
        out.append(f"<h3>Cost <span class=\"tag\">{kind}</span></h3>")
        out.append(f"<p class=\"total\">Total: <span id=\"job-cost\" data-usd=\"{cost['total_usd']!r}\" "
                   f"data-estimated=\"{str(cost['estimated']).lower()}\">{e(self.total_usd_text())}</span></p>")
        s3 = cost["s3"]
        rows = [("invocations (requests)", f"{cost['requests']:,}", f"{_usd(cost['requests_usd'])}", "requests_usd", cost["requests_usd"]),
                ("duration", f"{cost['billed_ms']:,} ms billed, {cost['gb_s']:.6f} GB-s", _usd(cost["duration_usd"]),
                 "duration_usd", cost["duration_usd"]),
                ("S3 requests", f"{s3['put']:,} PUT, {s3['get']:,} GET, {s3['list']:,} LIST", _usd(s3["usd"]), "s3_usd", s3["usd"])]
        out.append("<table class=\"grid\" id=\"cost\"><tr><th>item</th><th>quantity</th><th>USD</th></tr>" + "".join(
            f"<tr><td>{e(a)}</td><td>{e(b)}</td><td data-field=\"{f}\" data-usd=\"{v!r}\">{e(c)}</td></tr>" for a, b, c, f, v in rows)
            + "</table>")
        p = cost["prices"]
        per_gb_s_text = f"${p['per_gb_second']:.12f}".rstrip("0")  # ($0.0000166667, not $1.66667e-05)
        out.append(f"<p class=\"note\">{e(cost['basis'])}. Prices: {e(str(p['region']))}, {e(str(p['date']))}, "
                   f"{e(cost['architecture'])}, {per_gb_s_text} per GB-s, ${p['per_request'] * 1e6:g} per million "
                   f"requests ({e(p['file'])}). S3: {e(s3['basis'])}.</p>")
        for note in cost["notes"]:
            out.append(f"<p class=\"note\">{e(note)}</p>")
        settings = job["settings"]
        if settings:
            out.append("<h3>Job settings</h3><table class=\"kv\" id=\"settings\">" + "".join(
                f"<tr><th>{e(str(k))}</th><td>{e(_setting(v))}</td></tr>" for k, v in settings.items()) + "</table>")
        autos = _auto_groups(d["calls"])
        if autos:
            out.append("<h3>What \"auto\" chose</h3><table class=\"grid\" id=\"auto\"><tr><th>calls</th><th>memory</th>"
                       "<th>timeout</th><th>why</th></tr>" + "".join(
                           f"<tr><td>{n}</td><td>{e(str(a.get('memory', '')))}</td><td>{e(str(a.get('timeout', '')))}</td>"
                           f"<td>{e(str(a.get('why', '')))}</td></tr>" for a, n in autos) + "</table>")
        out.append("<h3>Timeline</h3>")
        out.append(self._svg())
        out.append("<h3>Calls</h3><table class=\"grid\" id=\"calls\"><tr><th>#</th><th>call</th><th>state</th>"
                   "<th>attempts</th><th>segments</th><th>memory MB</th><th>timeout s</th><th>queued s</th>"
                   "<th>ran s</th><th>billed ms</th><th>peak MB</th><th>USD (duration)</th><th>error / auto</th></tr>")
        for c in d["calls"]:
            extra = c["error"] or ""
            if c["auto"]:
                extra = (extra + " " if extra else "") + f"auto: {c['auto'].get('why', '')}"
            out.append(
                f"<tr class=\"call\" data-index=\"{c['index']}\" data-state=\"{c['state']}\" data-billed-ms=\"{c['billed_ms']}\" "
                f"data-usd=\"{c['cost_usd']!r}\"><td>{c['index']}</td><td>{e(c['label'])}</td>"
                f"<td class=\"st-{c['state']}\" data-field=\"state\">{c['state']}</td><td>{c['attempts']}</td>"
                f"<td>{c['segments']}</td><td>{_fmt(c['memory_mb'])}{' (auto)' if c['memory_source'] == 'auto' else ''}</td>"
                f"<td>{_fmt(c['timeout_s'])}</td><td>{c['queued_s']:.3f}</td><td>{c['run_s']:.3f}</td>"
                f"<td>{c['billed_ms']:,}</td><td>{_fmt(c['peak_rss_mb'])}</td><td>{_usd(c['cost_usd'])}</td>"
                f"<td>{e(extra[:300])}</td></tr>")
        out.append("</table></div>")
        return "".join(out)

    def _svg(self) -> str:
        """The timeline: one row per call, time across; each bar's tooltip says what it was."""
        calls = self._data["calls"]
        wall = max(self._data["job"]["wall_s"], 1e-3)
        n = max(len(calls), 1)
        row = 12 if n <= 250 else max(2, 3000 // n)
        left, plot_w, top = 150, 800, 34
        height = top + n * row + 30
        width = left + plot_w + 20
        scale = plot_w / wall
        e = html.escape
        out = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" width=\"{width}\" height=\"{height}\" "
               f"viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"10\" shape-rendering=\"crispEdges\">"]
        x = left
        for kind in KINDS:  # legend
            out.append(f"<rect x=\"{x}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{COLORS[kind]}\"/>"
                       f"<text x=\"{x + 14}\" y=\"15\">{kind}</text>")
            x += 95
        step = _tick_step(wall)
        t = 0.0
        while t <= wall + 1e-9:
            tx = left + t * scale
            out.append(f"<line x1=\"{tx:.1f}\" y1=\"{top - 4}\" x2=\"{tx:.1f}\" y2=\"{top + n * row}\" stroke=\"#e3e3e3\"/>"
                       f"<text x=\"{tx:.1f}\" y=\"{top + n * row + 14}\" text-anchor=\"middle\">{t:g} s</text>")
            t += step
        for c in calls:
            y = top + c["index"] * row
            if row >= 8:
                out.append(f"<text x=\"{left - 4}\" y=\"{y + row - 3}\" text-anchor=\"end\">{e(c['label'][:24])}</text>")
            out.append(f"<g class=\"row\" data-index=\"{c['index']}\" data-state=\"{c['state']}\">")
            # Waits first, invocations over them: a bar narrower than a pixel stays visible (1 px).
            for seg in sorted(c["timeline"], key=lambda seg: seg["kind"] != "queued"):
                sx = left + seg["start"] * scale
                sw = max((seg["end"] - seg["start"]) * scale, 1.0)
                what = f"{c['label']}: {seg['kind']} {seg['end'] - seg['start']:.3f} s"
                if "segment" in seg:
                    what += f" (segment {seg['segment']}, attempt {seg['attempt']}, exit {seg.get('exit')})"
                out.append(f"<rect class=\"seg {seg['kind']}\" x=\"{sx:.2f}\" y=\"{y + 1}\" width=\"{sw:.2f}\" "
                           f"height=\"{max(row - 2, 1)}\" fill=\"{COLORS[seg['kind']]}\"><title>{e(what)}</title></rect>")
            mark = _unrun_mark(c)
            if mark is not None:  # ended with no run timed (a worker that died, a memory limit): its end is marked
                out.append(f"<rect class=\"seg {c['state']} mark\" x=\"{left + mark * scale:.2f}\" y=\"{y + 1}\" width=\"3\" "
                           f"height=\"{max(row - 2, 1)}\" fill=\"{COLORS.get(c['state'], '#888')}\"><title>{e(c['label'])}: "
                           f"{c['state']} (no timing recorded)</title></rect>")
            out.append("</g>")
        out.append("</svg>")
        return "".join(out)

    def to_png(self, path: str | Path) -> Path:
        """The timeline as a PNG (matplotlib: ``pip install 'wrenpack[plot]'``)."""
        plt = figure.pyplot(ConfigError("saving a job report as .png needs matplotlib: pip install 'wrenpack[plot]' "
                                        "(or save it as .html)"))
        from matplotlib.collections import PolyCollection
        from matplotlib.patches import Patch
        from matplotlib.ticker import MaxNLocator

        calls = self._data["calls"]
        n = max(len(calls), 1)
        wall = max(self._data["job"]["wall_s"], 1e-3)
        fig, ax = plt.subplots(figsize=(10, min(2 + n * 0.12, 30)), dpi=100)
        try:
            # One collection per kind (barh makes an artist per bar: 10,000 calls took 20 s to draw);
            # waits first, invocations over them; a bar narrower than a pixel is drawn 1 px wide.
            least = wall / 1000
            for kind in KINDS:
                boxes = []
                for c in calls:
                    y0, y1 = c["index"] - 0.4, c["index"] + 0.4
                    segs = [(seg["start"], seg["end"]) for seg in c["timeline"] if seg["kind"] == kind]
                    mark = _unrun_mark(c)
                    if mark is not None and c["state"] == kind:  # (its end, as the page marks it)
                        segs.append((mark, mark + 3 * least))
                    for x0, end in segs:
                        x1 = max(end, x0 + least)
                        boxes.append(((x0, y0), (x0, y1), (x1, y1), (x1, y0)))
                if boxes:
                    ax.add_collection(PolyCollection(boxes, facecolors=COLORS[kind], linewidths=0, antialiaseds=False))
            ax.set_xlim(0, wall * 1.01)
            ax.set_ylim(n - 0.5, -0.5)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # (calls are numbered: no "call 0.5" of one or two)
            ax.set_xlabel("seconds since the job began")
            ax.set_ylabel("call")
            job = self._data["job"]
            name = job["label"] or job["id"]
            # (parse_math off: a "$" in a label or the cost is text, not matplotlib's math)
            ax.set_title(f"wrenpack job{' ' + str(name) if name else ''}: {_n_calls(job['calls'])}, {self.total_usd_text()}", fontsize=10,
                         parse_math=False)
            # (beside the plot, not over it: inside, it hid the end of the first calls' bars)
            ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in KINDS], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0.0, fontsize=7)
            fig.tight_layout()
        except BaseException:
            plt.close(fig)
            raise
        return figure.save(fig, path, lambda why: ConfigError(f"{why}; choose a writable path"))

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path``: ``.html`` (the page), ``.json``
        (``to_json``) or ``.png`` (the timeline, with matplotlib)."""
        out = Path(check_plot_path(str(path)))
        suffix = out.suffix.lower()
        if suffix == ".png":
            return self.to_png(out)
        text = self.to_html() if suffix == ".html" else json.dumps(self.to_json(), indent=1) + "\n"
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"could not write {out}: {exc.strerror or exc}; choose a writable path") from None
        return out

    def __repr__(self) -> str:
        job = self._data["job"]
        states = ", ".join(f"{n} {k}" for k, n in job["states"].items() if n)
        name = job["label"] or job["id"]
        return f"<JobReport{' ' + str(name) if name else ''}: {_n_calls(job['calls'])} ({states or 'none'}), {self.total_usd_text()}>"


class Parts:
    """The calls a future stands for, when it is no call of its own: a
    ``map_reduce``'s future stands for its mappers and reducers (both phases),
    and its report is theirs (``records_of_future``). The futures are kept
    while the job runs; ``settle`` keeps only their records once it has ended,
    so the outer future does not hold the mappers' results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: each call: its future, or (once settled) its records
        self._items: list[Any] = []

    def add(self, futures: Iterable[Any]) -> None:
        with self._lock:
            self._items.extend(futures)

    def settle(self) -> None:
        """The job has ended: the records of its calls replace their futures."""
        with self._lock:
            items = list(self._items)
        settled = [records_of_future(item, None) if not isinstance(item, list) and item.done() else item for item in items]
        with self._lock:
            self._items[: len(settled)] = settled

    def records(self, row: Any) -> list[dict[str, Any]]:
        """The records of every call, one row each (``(row, i)``)."""
        with self._lock:
            items = list(self._items)
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if isinstance(item, list):
                out.extend(dict(r, row=(row, i)) for r in item)
            else:
                out.extend(records_of_future(item, (row, i)))
        return out


#: futures that stand for calls of their own (``Parts``), weakly: they go with the future
_parts: "weakref.WeakKeyDictionary[Any, Parts]" = weakref.WeakKeyDictionary()


def stands_for(fut: Any) -> Parts:
    """The ``Parts`` of a future that stands for calls of its own (made on first use):
    its report shows them in its place."""
    parts = _parts.get(fut)
    if parts is None:
        parts = _parts[fut] = Parts()
    return parts


def records_of_future(fut: Any, row: Any) -> list[dict[str, Any]]:
    """A future's invocation records, for ``JobReport``: its checkpointed
    segments, its retried attempts, then its outcome (or its state while
    it runs), each tagged with the row and the client's times. A future
    that stands for calls of its own (a ``map_reduce``'s: ``Parts``) gives
    theirs, a row each."""
    if not hasattr(fut, "status"):  # (a future wrenpack did not make: no record of what it did or cost)
        raise ConfigError(f"a job report takes the futures wrenpack returned, but item {row} is a {type(fut).__name__} "
                          "it did not make; leave it out")
    parts = _parts.get(fut)
    if parts is not None:
        return parts.records(row)
    spawned = _spawned_settings(fut)
    if spawned:
        # (what the spawned job's calls ran with, for records that do not say: not the reporting executor's defaults)
        return [dict({k: spawned[k] for k in ("memory_mb", "timeout_s") if spawned.get(k) is not None}, **r)
                for r in _records_of_call(fut, row)]
    return _records_of_call(fut, row)


def _spawned_settings(fut: Any) -> Mapping[str, Any] | None:
    """The settings of the spawned job a future is a call of (``Job.report_settings``), or None."""
    settings = getattr(getattr(fut, "_job_key", None), "report_settings", None)
    return settings if isinstance(settings, Mapping) else None


def _records_of_call(fut: Any, row: Any) -> list[dict[str, Any]]:
    base = {"row": row, "label": getattr(fut, "label", None), "created_at": getattr(fut, "created_at", None),
            "started_at": getattr(fut, "started_at", None), "job_id": getattr(fut, "job_id", None) or None,
            "call_id": getattr(fut, "call_id", None) or None}
    auto = getattr(fut, "auto", None)
    if auto is not None:
        base["auto"] = auto
    out = [dict(r, row=row, label=base["label"]) for r in getattr(fut, "segment_statuses", None) or []]
    out += [dict(r, row=row, label=base["label"], retry=True) for r in getattr(fut, "retried_statuses", None) or []]
    if fut.done():
        status = dict(fut.status or {})
        if fut.cancelled():
            state, error = "cancelled", None
        else:
            exc = fut.exception()
            state = "failed" if exc is not None else "finished"
            error = _error_text(exc) if exc is not None else None
        record = dict(base, **{k: v for k, v in status.items() if v is not None})
        record.update(row=row, label=base["label"], state=state, created_at=base["created_at"], started_at=base["started_at"])
        if error:
            record["error"] = error
        out.append(record)
    else:
        out.append(dict(base, state="running" if fut.running() else "queued"))
    return out


def _error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (``error_line``), the type alone when
    ``str(exc)`` itself fails (a report is read when something went wrong: it
    must not fail too)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = ""
    return error_line(type(exc).__name__, text)


def error_line(type_name: str, message: str) -> str:
    """How a report (and ``wrenpack jobs show``) names a failed call's error:
    ``Type: first line of the message`` (its first line that is not blank; at
    most 300 characters), with credentials and job secrets redacted
    (``wrenpack.redact``): a report is a file that gets shared."""
    from wrenpack.redact import redact

    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return redact(f"{type_name}: {first}" if first else type_name)[:300]


# -- the command line: ``wrenpack jobs show ID --plot out.html`` ----------------------

def check_plot_path(path: str, formats: tuple[str, ...] = FORMATS, what: str = "a job report") -> str:
    """``path`` if it names one of ``formats`` (by default those ``save`` writes); else a one-line
    ConfigError. ``wrenpack profile --plot`` checks its memory curve's formats with it too."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ConfigError(f"cannot write {what} to {path!r}: name a file ending in {', '.join(formats)}")
    return path


def _plot_path(path: str) -> str:
    try:
        return check_plot_path(path)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--plot PATH`` to a command that shows a job (checked as the
    arguments are parsed, before anything is read)."""
    parser.add_argument("--plot", metavar="PATH", type=_plot_path, default=None,
                        help="write the job report: .html (timeline, settings, cost; opens in any browser), "
                             ".json (the same figures) or .png (the timeline; needs matplotlib)")


def write_plot(report: JobReport, path: str | None) -> Path | None:
    """Write ``report`` where ``--plot`` asked (nothing when it was not given); the path written."""
    if not path:
        return None
    out = report.save(path)
    log.info("wrote the job report to %s", out)
    return out


# -- helpers ------------------------------------------------------------------------

def _usd(value: float) -> str:
    """``$1.2345``, ``$0.0000123``; a figure under a cent keeps two significant
    digits, however small (a 1 ms call at 128 MB costs $0.0000000021: at a fixed
    8 decimals it showed as "$0.")."""
    if value == 0 or not math.isfinite(value):
        return "$0" if value == 0 else f"${value}"
    if abs(value) >= 0.01:
        return f"${value:,.4f}"
    decimals = max(8, 1 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}".rstrip("0").rstrip(".")


def _unrun_mark(call: dict[str, Any]) -> float | None:
    """Where a call that ended with no invocation timed (it failed: a worker
    that died, a memory limit; or it was cancelled) is marked on the timeline:
    at the end of its wait, or at 0 with none. None for a call with a bar of its
    own run, or one still to run: its bars say it all."""
    if call["state"] not in ("failed", "cancelled", "finished") or any(seg["kind"] != "queued" for seg in call["timeline"]):
        return None
    return max((seg["end"] for seg in call["timeline"]), default=0.0)


def _setting(value: Any) -> str:
    """A job setting as the page shows it: calls that ran with different ones list them."""
    if isinstance(value, list):
        return ", ".join(map(_fmt, value)) + " (per call)"
    return _fmt(value) if isinstance(value, float) else str(value)


def _n_calls(n: int) -> str:
    """``1 call``, ``3 calls``."""
    return f"{n:,} call{'' if n == 1 else 's'}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _tick_step(wall: float) -> float:
    raw = wall / 8
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _common_label(calls: list[dict[str, Any]]) -> str | None:
    """A map's name from its calls' labels (``f[0]``, ``f[1]`` -> ``f``)."""
    names = {c["label"].split("[", 1)[0] for c in calls if c.get("label")}
    return names.pop() if len(names) == 1 else None


def _auto_groups(calls: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """The distinct "auto" choices and how many calls got each."""
    groups: dict[str, tuple[dict[str, Any], int]] = {}
    for c in calls:
        if c["auto"]:
            key = json.dumps(c["auto"], sort_keys=True, default=str)
            record, n = groups.get(key, (c["auto"], 0))
            groups[key] = (record, n + 1)
    return list(groups.values())


_STYLE = """<style>
.wrenpack-report{font-family:sans-serif;font-size:13px;color:#222}
.wrenpack-report table{border-collapse:collapse;margin:4px 0 10px}
.wrenpack-report th,.wrenpack-report td{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
.wrenpack-report .grid td{font-variant-numeric:tabular-nums}
.wrenpack-report .tag{font-size:11px;background:#eef;padding:1px 6px;border-radius:3px}
.wrenpack-report .total{font-size:15px;font-weight:bold}
.wrenpack-report .note{color:#555;font-size:12px;max-width:960px}
.wrenpack-report .st-failed{color:#d64545}.wrenpack-report .st-finished{color:#3a9e5f}
</style>"""
