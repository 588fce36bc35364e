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
    jobs/<job_id>/job.json                      a spawned job's record: function, calls, settings, retention (MAC under the user's key)
    jobs/<job_id>/progress.json                 a spawned job's counts and state, as its supervisor sees them (sealed)

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

import re

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


def job_record_key(job_id: str) -> str:
    """A spawned job's record (``wire.job_record``): what ``wrenpack jobs`` lists
    and ``wrenpack.attach`` opens; sealed with the user's key."""
    return f"{JOBS}{job_id}/job.json"


def progress_key(job_id: str) -> str:
    """A spawned job's counts (done, failed, running, queued) and state, written
    by the process that runs its calls; sealed with the job's secret."""
    return f"{JOBS}{job_id}/progress.json"


def checkpoint_key(job_id: str, call_id: str) -> str:
    return f"{JOBS}{job_id}/checkpoint/{call_id}.pkl"


def cancel_key(job_id: str) -> str:
    """A job's cancel marker: present (and authentic) once the whole job is
    cancelled (``wrenpack.worker.cancel``). A call whose event names it as its
    ``cancel_key`` ends early when it appears."""
    return f"{JOBS}{job_id}/cancel"


def kept_for_late_writes(job_id: str) -> tuple[str, ...]:
    """What of a job stays while calls of it may still run where they outlive their
    driver (Lambda): its owner record, for ``wrenpack clean --stale``, and its cancel
    markers, the job's and each call's (``cancel_key`` is a prefix of both), for the
    calls to find (``Store.delete_prefix_except`` takes these)."""
    return owner_key(job_id), cancel_key(job_id)


def call_cancel_key(job_id: str, call_id: str) -> str:
    """One call's cancel marker (``wrenpack.cancel`` of a running call on Lambda):
    the key a call's event names as its ``cancel_key`` unless its job's is there."""
    return f"{JOBS}{job_id}/cancel.{call_id}"


#: the names wrenpack gives a job (``executor.core.new_job_id``: local time to the second, then
#: 32 random bits) and a map_reduce's intermediates (``shuffle/<id>/``, ``shuffle/<shard>/<id>/``:
#: 48 random bits; ``<shard>``, ``shuffle_shard``: 2 hex digits). ``wrenpack
#: clean --all`` and ``--stale`` remove only folders named so: a ``--storage`` naming a folder
#: wrenpack never wrote, with ``jobs/`` or ``shuffle/`` in it, lost those files.
JOB_ID_FORM = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")
SHUFFLE_ID_FORM = re.compile(r"[0-9a-f]{12}")


def is_job_id(name: str) -> bool:
    """Whether ``name`` has the form of a job id wrenpack makes."""
    return JOB_ID_FORM.fullmatch(name) is not None


def is_shuffle_id(name: str) -> bool:
    """Whether ``name`` has the form of a map_reduce's shuffle id."""
    return SHUFFLE_ID_FORM.fullmatch(name) is not None


def is_shuffle_shard(name: str) -> bool:
    """Whether ``name`` is a shard's folder under ``shuffle/`` (``shuffle_shard`` gives it)."""
    return re.fullmatch(r"[0-9a-f]{2}", name) is not None and int(name, 16) < SHUFFLE_SHARDS


def call_id_from_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def call_id(index: int) -> str:
    return f"{index:05d}"


#: The kinds of object that are sealed (``wrenpack.auth``), one per key family above.
KINDS = ("func", "input", "result", "segment", "checkpoint", "start", "owner", "job", "progress", "cancel")


def identity(job_id: str, kind: str, call_id: str = "", segment: int | None = None) -> str:
    """What a sealed object is: its job, call, kind and segment. The MAC covers
    it, so an object moved to another call's, kind's or job's key fails."""
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}")
    return f"wrenpack-object/1 job={job_id} call={call_id} kind={kind} segment={'' if segment is None else int(segment)}"


# -- map_reduce's intermediate objects --------------------------------------------------
#
#     shuffle/<shard>/<id>/m<mapper>-<n>     a mapper's n-th object: sealed partition sections
#     shuffle/<shard>/<id>/i<mapper>         where a mapper's sections are (written after them)
#     shuffle/<shard>/<id>/t<level>-<index>  a value waiting for the next reduce level
#     shuffle/<id>/owner.json                who runs the map_reduce (``wrenpack clean --stale``)
#     shuffle/<id>/abort                     the driver's word to reducers that wait for mappers
#
# ``<shard>`` (two hex digits, ``SHUFFLE_SHARDS`` of them) comes first, before the
# map_reduce's random id. S3 serves ~3,500 PUT and 5,500 GET per second per partition
# of a bucket's keyspace, a key range it splits only after minutes of sustained load:
# longer than most map_reduces last. With the id first (``shuffle/<id>/<shard>/``, the
# layout before), every map_reduce wrote into a range no split had ever touched, so
# splits made under one job's load never helped the next, and a 1 TB sort's reducers
# asked one partition for ~70,000 GET/s (``benchmarks/bench_s3_shuffle_plan.py``). With
# the shard first, the splits S3 makes at ``shuffle/<shard>/`` boundaries carry over
# from job to job (AWS's advice: spread the start of the key). A mapper's objects all
# lie in one shard, the mappers round-robin over them, and so do a reducer's reads of
# them, as do tree nodes by their index. The map_reduce's own small objects stay under
# ``shuffle/<id>/``, where one HEAD finds them; a shard's name (2 hex digits) never has
# an id's form (12), so ``wrenpack clean`` tells them apart. Removing a map_reduce's
# objects means one prefix per shard it used besides its own (``shuffle_prefixes``).

SHUFFLE = "shuffle/"
#: How many prefixes one map_reduce's objects spread over.
SHUFFLE_SHARDS = 64

#: Where the user's own objects (``wrenpack.store()``) live in the store.
DATA = "data/"
#: The folders wrenpack writes at a store's top: jobs, map_reduce intermediates, the user's
#: objects. Nothing else there is wrenpack's (``wrenpack clean`` leaves it, and its sweep of
#: stray temporary files looks only here).
STORE_FOLDERS = (JOBS, SHUFFLE, DATA)


def shuffle_prefix(shuffle_id: str) -> str:
    """The map_reduce's own objects (owner record, abort marker); its bulk objects are
    under ``shuffle_shard_prefix`` (an earlier version's layout had them all here)."""
    return f"{SHUFFLE}{shuffle_id}/"


def is_shuffle_own_prefix(prefix: str) -> bool:
    """Whether ``prefix`` is a map_reduce's own (``shuffle_prefix``: its owner record),
    which a removal of its objects takes last (``shuffle_prefixes``)."""
    return prefix.startswith(SHUFFLE) and prefix.endswith("/") and is_shuffle_id(prefix[len(SHUFFLE):-1])


def shuffle_shard_prefix(shuffle_id: str, shard: int) -> str:
    """The map_reduce's bulk objects in one shard."""
    return f"{SHUFFLE}{shuffle_shard(shard)}/{shuffle_id}/"


def shuffle_prefixes(shuffle_id: str, indices: int = SHUFFLE_SHARDS) -> list[str]:
    """Every prefix a map_reduce's objects may lie under when its mappers and tree nodes
    had ``indices`` indices (0 to ``indices - 1``, round-robin over the shards): the
    shards those fall in, then its own prefix (last: a removal that stops halfway keeps
    the owner record that says whose the rest is)."""
    return [shuffle_shard_prefix(shuffle_id, n) for n in range(min(indices, SHUFFLE_SHARDS))] + \
        [shuffle_prefix(shuffle_id)]


def shuffle_owner_key(shuffle_id: str) -> str:
    """Who runs the map_reduce whose intermediates are under ``shuffle_prefix``
    (an owner record, as a job's): ``wrenpack clean --stale`` removes those of
    a program that is gone (killed before it removed them)."""
    return f"{SHUFFLE}{shuffle_id}/owner.json"


def shuffle_owner_id(shuffle_id: str) -> str:
    """The name a shuffle's owner record is sealed for (never a job's id)."""
    return f"shuffle/{shuffle_id}"


def shuffle_shard(n: int) -> str:
    return f"{n % SHUFFLE_SHARDS:02x}"


def shuffle_part_key(shuffle_id: str, mapper: int, n: int = 0) -> str:
    return f"{shuffle_shard_prefix(shuffle_id, mapper)}m{mapper:05d}-{n:03d}"


def shuffle_tree_key(shuffle_id: str, level: int, index: int) -> str:
    return f"{shuffle_shard_prefix(shuffle_id, index)}t{level}-{index:05d}"


def shuffle_index_key(shuffle_id: str, mapper: int) -> str:
    """Where a mapper's sections are, written after them (a reducer started early waits for it)."""
    return f"{shuffle_shard_prefix(shuffle_id, mapper)}i{mapper:05d}"


def shuffle_abort_key(shuffle_id: str) -> str:
    """Written by the driver when a mapper failed ("abort": reducers that wait for mappers
    stop) or is run again ("again": they give up waiting; their partitions run after the
    map phase)."""
    return f"{SHUFFLE}{shuffle_id}/abort"
