"""Where a job's objects live in the store: the one place that says so.

::

    jobs/<job_id>/func.pkl                      the function, cloudpickled once per map
    jobs/<job_id>/input/<call_id>.pkl           arguments too large to travel in the event
    jobs/<job_id>/result/<s>/<call_id>.res      the call's status and outcome, written once, last
    jobs/<job_id>/result/<s>/<call_id>.<n>.seg  segment n of a split call saved a checkpoint (JSON status)
    jobs/<job_id>/start/<call_id>               a call that began late (queued in Lambda) marks its start (sealed)
    jobs/<job_id>/checkpoint/<call_id>.pkl      the latest saved state of a split call
    jobs/<job_id>/cancel                        the job's cancel marker: every call stops (sealed)
    jobs/<job_id>/cancel.<call_id>              one call's cancel marker (sealed)
    jobs/<job_id>/owner.json                    the client process that launched the job (MAC under the user's key, never unpickled)

``<s>`` is the call's shard (its index modulo ``RESULT_SHARDS``): the records
workers write spread over a few prefixes, so one job is not capped by one
prefix's request rate (S3: ~3,500 PUT/s per prefix), while one LIST per shard
still finds every ended invocation of a job, in call order (``StartAfter``).

Every object here that wrenpack unpickles or acts on is sealed
(``wrenpack.auth``) with the job's secret and its ``identity``: job, call,
kind and segment. A result object is one atomic write holding both the status record (JSON:
start/end, peak RSS, exit kind) and the outcome (cloudpickled ``("ok", value)``
or ``("error", ...)``), see ``wrenpack.wire.result``. It is written with
"if absent", so when a call is delivered twice the first complete result
wins. A poller that lists ``result/`` sees only finished calls. ``call_id`` is
the call's zero-padded index in its map. Standard library only.
"""
from __future__ import annotations

JOBS = "jobs/"
#: How many prefixes a job's result and segment records spread over.
RESULT_SHARDS = 4


def job_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}/"


def func_key(job_id: str) -> str:
    return f"{JOBS}{job_id}/func.pkl"


def input_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/input/{call_id}.pkl"


def shard_of(call_id: str) -> int:
    return int(call_id) % RESULT_SHARDS if call_id.isdigit() else 0


def result_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/result/{shard_of(call_id)}/{call_id}.res"


def result_prefix(job_id: str) -> str:
    """Every result and segment record of the job (all shards)."""
    return f"{JOBS}{job_id}/result/"


def shard_prefix(job_id: str, shard: int) -> str:
    return f"{JOBS}{job_id}/result/{shard}/"


def segment_key(job_id: str, call_id: str, segment: int) -> str:
    return f"{JOBS}{job_id}/result/{shard_of(call_id)}/{call_id}.{segment}.seg"


def start_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/start/{call_id}"


def owner_key(job_id: str) -> str:
    """Who launched the job (JSON: host, pid, process start time): ``wrenpack
    clean --stale`` removes jobs whose owner is gone."""
    return f"{JOBS}{job_id}/owner.json"


def checkpoint_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/checkpoint/{call_id}.pkl"


def cancel_key(job_id: str) -> str:
    """A job's cancel marker: present (and authentic) once the whole job is
    cancelled (``wrenpack.worker.cancel``). A call whose event names it as its
    ``cancel_key`` ends early when it appears."""
    return f"{JOBS}{job_id}/cancel"


def call_cancel_key(job_id: str, call_id: str) -> str:
    """One call's cancel marker (``wrenpack.cancel`` of a running call on Lambda):
    the key a call's event names as its ``cancel_key`` unless its job's is there."""
    return f"{JOBS}{job_id}/cancel.{call_id}"


def call_id_from_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def call_id(index: int) -> str:
    return f"{index:05d}"


#: The kinds of object that are sealed (``wrenpack.auth``), one per key family above.
KINDS = ("func", "input", "result", "segment", "checkpoint", "start", "owner", "cancel")


def identity(job_id: str, kind: str, call_id: str = "", segment: int | None = None) -> str:
    """What a sealed object is: its job, call, kind and segment. The MAC covers
    it, so an object moved to another call's, kind's or job's key fails."""
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}")
    return f"wrenpack-object/1 job={job_id} call={call_id} kind={kind} segment={'' if segment is None else int(segment)}"
