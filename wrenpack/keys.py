"""Where a job's objects live in the store: the one place that says so.

::

    jobs/<job_id>/func.pkl                  the function, cloudpickled once per map
    jobs/<job_id>/input/<call_id>.pkl       arguments too large to travel in the event
    jobs/<job_id>/output/<call_id>.pkl      the call's outcome: ("ok", value) or ("error", ...)
    jobs/<job_id>/status/<call_id>.json     written last: start/end, peak RSS, exit kind
    jobs/<job_id>/checkpoint/<call_id>.pkl  the latest saved state of a split call

A status object exists only after its output is complete, so a poller that
sees a status may read the output. ``call_id`` is the call's zero-padded index
in its map. Standard library only: the worker imports this.
"""
from __future__ import annotations

JOBS = "jobs/"


def job_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/"


def func_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/func.pkl"


def input_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/input/{call_id}.pkl"


def output_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/output/{call_id}.pkl"


def status_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/status/{call_id}.json"


def status_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/status/"


def checkpoint_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/checkpoint/{call_id}.pkl"


def call_id_from_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def call_id(index: int) -> str:
    return f"{index:05d}"
