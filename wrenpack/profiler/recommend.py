"""Lambda settings and cost from measured figures.

Rules (all stated in every report, see :data:`RULES`):

* memory = peak x 1.10 + 32 MB, rounded up to a whole MB, within 128..10,240.
  The measured peak already contains the interpreter and cloudpickle (the
  runner imports them before its baseline), so the fixed 32 MB covers what
  the worker adds on top: the handler, the store client, output buffers.
* Lambda gives CPU in proportion to memory (1,769 MB = 1 vCPU, at most 6).
  A call that kept c cores busy locally gets min(c, vCPUs) there. Where the
  measurement split the wall time (``wait_s``: the part that was neither CPU
  nor waiting for a core, i.e. I/O and sleeps), the estimated Lambda duration
  is cpu_time / min(c, vCPUs) + wait: a busy machine's queueing is left out.
  Without the split it is max(wall, cpu_time / vCPUs).
* timeout = estimated duration x 1.5 + 10 s, rounded up, at most 900 s.
  Longer work needs checkpointed segments of at most 810 s (90% of 900 s).
* ephemeral storage = peak /tmp x 1.10 + 16 MB, rounded up, within
  512..10,240 (so 512 MB up to ~450 MB of /tmp use).
* cost per call = memory (GB) x billed duration (1 ms steps) x GB-s price
  + request price, for x86_64 and arm64, from ``wrenpack/data/lambda_prices.json``.
"""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from importlib import resources
from typing import Any

from wrenpack.limits import (
    MAX_EPHEMERAL_MB,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_S,
    MEMORY_MARGIN_FIXED_MB,
    MEMORY_MARGIN_FRACTION,
    MIN_EPHEMERAL_MB,
    MIN_MEMORY_MB,
    memory_for,
)

MB_PER_VCPU = 1769
#: Lambda's limit on processes and threads, together, per execution environment
MAX_THREADS = 1024
MAX_VCPUS = 6
TIMEOUT_FACTOR = 1.5
TIMEOUT_EXTRA_S = 10
SEGMENT_S = 810
DEFAULT_TMP_MB = MIN_EPHEMERAL_MB
#: Shorter calls get no CPU notes: getrusage's resolution makes cpu/wall noise below this.
MIN_CORES_WALL_S = 0.01
TMP_MARGIN_FRACTION = 0.10
TMP_MARGIN_FIXED_MB = 16


def _cores_here() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cores_busy(cpu_s: float, wall_s: float, runq_s: float | None = None) -> float:
    """How many cores the call kept busy: its CPU time over the wall time it would
    have taken with a core free whenever it wanted one. ``runq_s`` is the time its
    threads sat runnable waiting for a core (the machine's load: another program's
    work is not the call's); without it the whole wall time counts, which makes a
    CPU-bound call on a busy machine look half idle. ``runq_s`` sums every thread's
    wait, so a call whose own threads outnumber the cores (waiting for each other) is
    never taken below ``cpu_s`` over the cores here. 0 below ``MIN_CORES_WALL_S``
    (the CPU clock's granularity makes the ratio noise)."""
    if wall_s < MIN_CORES_WALL_S:
        return 0.0
    busy_wall = wall_s
    if runq_s:
        busy_wall = min(wall_s, max(wall_s - runq_s, cpu_s / _cores_here(), MIN_CORES_WALL_S))
    return cpu_s / busy_wall

RULES = {
    "memory": f"peak x {1 + MEMORY_MARGIN_FRACTION:.2f} + {MEMORY_MARGIN_FIXED_MB} MB (worker runtime), "
    f"rounded up, within {MIN_MEMORY_MB}..{MAX_MEMORY_MB} MB",
    "timeout": f"estimated Lambda duration x {TIMEOUT_FACTOR} + {TIMEOUT_EXTRA_S} s, rounded up, at most {MAX_TIMEOUT_S} s",
    "ephemeral_storage": f"peak /tmp x {1 + TMP_MARGIN_FRACTION:.2f} + {TMP_MARGIN_FIXED_MB} MB, rounded up, within "
    f"{DEFAULT_TMP_MB}..{MAX_EPHEMERAL_MB} MB",
    "duration": f"cpu time / min(cores busy, vCPUs) + non-CPU wait (I/O, sleeps), vCPUs = memory / {MB_PER_VCPU} "
    f"(at most {MAX_VCPUS}); max(wall, cpu time / vCPUs) where the wait was not measured",
}
#: what replaces the timeout rule when the time prediction cannot be trusted
UNTRUSTED_RULE = f"the time prediction cannot be trusted: Lambda's maximum, {MAX_TIMEOUT_S} s"


@lru_cache(maxsize=1)
def prices() -> dict[str, Any]:
    """The price table shipped in ``wrenpack/data/lambda_prices.json``."""
    text = resources.files("wrenpack").joinpath("data/lambda_prices.json").read_text()
    return json.loads(text)


def vcpus(memory_mb: float) -> float:
    return min(MAX_VCPUS, memory_mb / MB_PER_VCPU)


def lambda_duration(wall_s: float, cpu_s: float, memory_mb: float) -> float:
    """Wall time on Lambda at ``memory_mb``, assuming a vCPU as fast as a local core."""
    return max(wall_s, cpu_s / max(vcpus(memory_mb), 1e-9))


def duration_at(cpu_s: float, wait_s: float, memory_mb: float, cores: float = 1.0) -> float:
    """Lambda duration at ``memory_mb`` from CPU time and the non-CPU wait: the CPU
    work spread over min(cores it used, vCPUs there), plus the wait (which no
    vCPU share shortens). Load on the measuring machine is in neither figure."""
    share = min(max(cores, 1.0), vcpus(memory_mb))
    return cpu_s / max(share, 1e-9) + wait_s


def cost(memory_mb: float, duration_s: float) -> dict[str, Any]:
    table = prices()
    billed_s = math.ceil(max(duration_s, 0.001) * 1000) / 1000.0
    gb_s = memory_mb / 1024.0 * billed_s
    out: dict[str, Any] = {}
    for arch, p in table["architectures"].items():
        per_call = gb_s * p["per_gb_second"] + p["per_million_requests"] / 1e6
        out[arch] = {"per_call_usd": per_call, "per_million_usd": per_call * 1e6}
    out["billed_duration_s"] = billed_s
    out["prices"] = {"date": table["date"], "region": table["region"], "source": table["source"]}
    return out


def recommend(peak_mb: float, wall_s: float, cpu_s: float, tmp_peak_mb: float = 0.0, *,
              wait_s: float | None = None, untrusted_time: str | None = None, threads: int = 0,
              runq_s: float | None = None) -> dict[str, Any]:
    """Memory, timeout, /tmp and cost for a call that peaked at ``peak_mb``.

    ``wait_s``: the measured non-CPU wait (see :func:`duration_at`); without it
    the wall time stands in. ``untrusted_time``: why the time figures cannot be
    trusted; the timeout is then Lambda's maximum, not a figure made from them. ``threads``: the most
    threads (processes' main threads included) the call ran at once; above Lambda's limit it gets a note
    (no memory setting raises it). ``runq_s``: the time the call's threads waited for a core, left
    out of the cores it kept busy (``cores_busy``)."""
    notes: list[str] = []
    if threads > MAX_THREADS:
        notes.append(f"ran {threads:,} threads and processes at once; Lambda allows {MAX_THREADS:,} per execution "
                     "environment (the local backend too): starting more fails there (RuntimeError \"can't start new "
                     "thread\", BlockingIOError on fork); bound the pool or split the work into more calls")
    memory = memory_for(peak_mb)
    if peak_mb * (1 + MEMORY_MARGIN_FRACTION) + MEMORY_MARGIN_FIXED_MB > MAX_MEMORY_MB:
        notes.append(
            f"peak {peak_mb:,.0f} MB plus margin exceeds Lambda's {MAX_MEMORY_MB:,} MB: "
            "split the input or reduce memory use"
        )
    cores = cores_busy(cpu_s, wall_s, runq_s)
    cpu_there = vcpus(memory)
    if cores > 1.1:
        want = min(MAX_MEMORY_MB, math.ceil(cores * MB_PER_VCPU))
        notes.append(
            f"kept {cores:.1f} cores busy; Lambda gives 1 vCPU per {MB_PER_VCPU:,} MB, so {memory:,} MB gets "
            f"{cpu_there:.2f} vCPU; about {want:,} MB would give it {vcpus(want):.1f} and may finish sooner"
        )
    elif cores > 0.5 and cpu_there < 1:
        notes.append(
            f"CPU-bound: at {memory:,} MB Lambda gives {cpu_there:.2f} vCPU, so the call runs about "
            f"{1 / cpu_there:.1f}x slower than here; {MB_PER_VCPU:,} MB gives a full vCPU"
        )
    if wait_s is None:
        duration = lambda_duration(wall_s, cpu_s, memory)
    else:
        duration = duration_at(cpu_s, wait_s, memory, cores if cores > 1.1 else 1.0)
    timeout = math.ceil(duration * TIMEOUT_FACTOR + TIMEOUT_EXTRA_S)
    segments = 1
    rules = dict(RULES)
    if untrusted_time:
        notes.append(f"{untrusted_time}: the timeout is Lambda's maximum, {MAX_TIMEOUT_S} s, not a figure made "
                     "from it (measure larger sizes, or profile a call at the size you will run)")
        rules["timeout"] = UNTRUSTED_RULE
        timeout = max(timeout, MAX_TIMEOUT_S)
    if duration > MAX_TIMEOUT_S or timeout > MAX_TIMEOUT_S:
        segments = max(1, math.ceil(duration / SEGMENT_S))
        if duration > MAX_TIMEOUT_S:
            notes.append(
                f"estimated duration {duration:,.0f} s exceeds Lambda's {MAX_TIMEOUT_S} s limit: "
                f"it needs about {segments} checkpointed segments of at most {SEGMENT_S} s (wrenpack.checkpoint)"
            )
        else:
            notes.append(
                f"estimated duration {duration:,.0f} s leaves less than the usual margin (x{TIMEOUT_FACTOR} + "
                f"{TIMEOUT_EXTRA_S} s) under Lambda's {MAX_TIMEOUT_S} s: the timeout is the most Lambda allows, and a "
                f"run slower than this one would be stopped; save checkpoints (wrenpack.checkpoint) and such a run "
                f"goes on in a next segment instead"
            )
        timeout = MAX_TIMEOUT_S
    # The margin holds whenever it takes the setting above the default: applied only above 512 MB of use, a
    # call that wrote 500 MB got 512 MB (2% headroom) while one that wrote 513 MB got 581.
    tmp = DEFAULT_TMP_MB
    want_tmp = math.ceil(tmp_peak_mb * (1 + TMP_MARGIN_FRACTION) + TMP_MARGIN_FIXED_MB) if tmp_peak_mb > 0 else 0
    if want_tmp > DEFAULT_TMP_MB:
        tmp = min(MAX_EPHEMERAL_MB, want_tmp)
        notes.append(f"wrote {tmp_peak_mb:,.0f} MB under /tmp: set ephemeral storage to {tmp:,} MB")
        if tmp_peak_mb * (1 + TMP_MARGIN_FRACTION) > MAX_EPHEMERAL_MB:
            notes.append(f"/tmp use exceeds Lambda's {MAX_EPHEMERAL_MB:,} MB ephemeral storage maximum")
    return {
        "memory_mb": memory,
        "timeout_s": timeout,
        "ephemeral_storage_mb": tmp,
        "vcpus": round(cpu_there, 3),
        "estimated_duration_s": duration,
        "segments": segments,
        "cost": cost(memory, duration),
        "rules": rules,
        "notes": notes,
        "time_trusted": not untrusted_time,
    }
