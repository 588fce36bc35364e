"""The invocation event: what the client sends a worker for one call.

::

    client: Event(...).to_dict() / event_dict(...)  --invocation-->  worker: Event.from_dict(d)  (validated)

On Lambda the event travels as JSON (``dumps``: the Invoke payload); to a
local worker inside the driver's message header (``wire.driver_message``).
The event is versioned (``"wrenpack": VERSION``); the handler refuses another
version, a missing or mistyped field, and any key outside the job's prefix, as
a ``ProtocolError`` (a wrenpack error, never the user's). Backends copy the
dict and change only ``attempt`` and ``timeout_s``; other helpers add optional
fields to ``OPTIONAL`` below. What comes back is ``wire.outcome`` inside a
``wire.result`` object. Standard library only: the worker imports this.

``deadline`` (seconds since the epoch, the client's clock): the client no
longer waits for this attempt to start after it, and the handler refuses the
event then, running nothing and writing nothing (Lambda may deliver an event
late, or twice). ``reply_within_s`` (RequestResponse): a call that ran longer
stores its result object instead of replying with it, so a client whose idle
connection was dropped finds it in the store.

``domain`` (``isolation_domain``): which of a warm worker's job processes may
run the call (``wrenpack.worker.isolation``). Calls with the same domain and
function share one warm process; the client makes it unguessable, the HMAC of
the function's content hash under a random key of the client's process, so
only calls of the same function from the same driver process share one. An
event without it (an older client) is its own job's domain.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from wrenpack import auth, keys
from wrenpack.errors import ProtocolError
from wrenpack.wire import checkpoint as checkpoint_format

#: The event's version; the handler refuses others.
VERSION = 2

#: Required event fields and their JSON types.
REQUIRED: dict[str, tuple[type, ...]] = {
    "wrenpack": (int,),
    "store": (dict,),
    "job_id": (str,),
    "call_id": (str,),
    "secret": (str,),
    "args": (dict,),
}
#: Optional event fields and their JSON types (helpers add theirs here).
OPTIONAL: dict[str, tuple[type, ...]] = {
    "func_key": (str,),           # always keys.func_key(job_id); kept for readers of raw events
    "attempt": (int,),
    "segment": (int,),
    "timeout_s": (int, float, type(None)),
    "function_name": (str,),
    "checkpoint": (dict, type(None)),   # what earlier segments learned (checkpoint.LEARNED): save_s, step_s, start, repeats, item
    "reply_limit": (int, type(None)),   # contract 2: result object in the reply if at most this many bytes
    "env": (dict, type(None)),          # environment variables for the call
    "capture_logs": (int, type(None)),  # bytes of the call's log tail in the status
    "cancel_key": (str, type(None)),    # cancellation marker key
    "mark_start_after": (int, float, type(None)),
    "ref_secrets": (dict, type(None)),  # secrets of the jobs whose futures the arguments hold
    "chain": (list, type(None)),        # a job launched inside a call: its ancestor jobs (secret derivation)
    "handoff": (int, type(None)),       # local worker: results pickled larger than this go back as a sealed memfd
    "func_hash": (str,),                # sha256 of the pickled function (workers cache functions by it)
    "func_inline": (str,),              # the pickled function itself (base64), for small jobs
    "owner": (dict,),                   # the owner record, for the worker to write before it stores anything
    "deadline": (int, float, type(None)),        # client clock: the attempt is not waited for if it starts later (refused)
    "reply_within_s": (int, float, type(None)),  # a result returns in the reply only from a call that ran at most this long
    "python": (str,),                   # the client's Python X.Y: a worker on another refuses the call (bytecode)
    "domain": (str,),                   # isolation domain: calls sharing it (and the function) share a job process
    "ckpt_retries": (int,),             # retry_on's retries: an attempt below it keeps its checkpoint on an error (for the retry)
    "ckpt_from": (list, type(None)),    # [segment, attempt, number]: the save to resume from (wire.checkpoint.Saves)
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_good_hashes: set[str] = set()  # func_hash values already checked
_FIELDS: dict[str, tuple[type, ...]] = {**REQUIRED, **OPTIONAL}
_REQUIRED_KEYS = frozenset(REQUIRED)
#: fields of the event dict that are not ``Event.extra`` (required ones, and optional ones with a field of their own)
_NOT_EXTRA = frozenset(REQUIRED) | {"func_key", "attempt", "segment", "timeout_s", "function_name", "checkpoint"}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Event:
    """One invocation of one call (or one segment of a split call)."""

    job_id: str
    call_id: str
    store: dict[str, Any]
    secret: bytes
    args: dict[str, Any]
    attempt: int = 0
    segment: int = 0
    timeout_s: float | None = None
    function_name: str = "call"
    checkpoint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def func_key(self) -> str:
        return keys.func_key(self.job_id)

    @property
    def label(self) -> str:
        return self.function_name or self.call_id

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict that travels to the worker."""
        return event_dict(self.job_id, self.call_id, self.store, self.secret, self.args, self.attempt, self.segment,
                          self.timeout_s, self.function_name, self.checkpoint, self.extra)

    @classmethod
    def from_dict(cls, d: Any) -> "Event":
        """Validate a received event; ``ProtocolError`` names what is wrong."""
        if not isinstance(d, dict):
            raise ProtocolError(f"the invocation event is a {type(d).__name__}, not a wrenpack event; invoke through wrenpack")
        version = d.get("wrenpack")
        if version != VERSION:
            raise ProtocolError(
                f"the event has protocol version {version!r} but this worker speaks {VERSION}; "
                "redeploy the worker (wrenpack deploy) with the client's wrenpack version"
            )
        keys_given = d.keys()
        if not _REQUIRED_KEYS <= keys_given:
            missing = next(name for name in REQUIRED if name not in d)
            raise ProtocolError(f"the event lacks the field {missing!r}; invoke through wrenpack")
        if not keys_given <= _FIELDS.keys():
            unknown = sorted(k for k in d if k not in _FIELDS)
            raise ProtocolError(f"the event has unknown field(s) {', '.join(unknown)}; client and worker wrenpack versions differ")
        for name, value in d.items():  # one pass over what came (every call is checked: keep it cheap)
            types = _FIELDS[name]
            if type(value) not in types:
                _check_type(name, value, types)
        job_id, call_id = d["job_id"], d["call_id"]
        for name, value in (("job_id", job_id), ("call_id", call_id)):
            if not _ID.match(value) or ".." in value:
                raise ProtocolError(f"the event's {name} {value!r} is not a wrenpack id")
        func_key = keys.func_key(job_id)
        if d.get("func_key", func_key) != func_key:
            raise ProtocolError(f"the event's func_key {d['func_key']!r} is not its job's ({func_key})")
        args = d["args"]
        if len(args) == 1 and type(args.get("inline")) is str:
            pass
        elif set(args) == {"key"} and args["key"] == keys.input_key(job_id, call_id):
            pass
        elif set(args) - {"blobs", "slab"} in ({"inline"}, {"key"}, {"handoff"}) and isinstance(args.get("blobs", []), list) \
                and isinstance(args.get("handoff", {}), dict) and isinstance(args.get("inline", ""), str) \
                and args.get("slab", True) is True \
                and args.get("key", keys.input_key(job_id, call_id)) == keys.input_key(job_id, call_id):
            pass  # local backend: sealed memfds came with the call (checked where they are opened)
        else:
            raise ProtocolError(f"the event's args must be inline base64 or the key {keys.input_key(job_id, call_id)}, got {sorted(args)}")
        store = d["store"]
        if store.get("type") not in ("local", "s3"):
            raise ProtocolError(f"the event's store type {store.get('type')!r} is not local or s3")
        try:
            secret = auth.decode_secret(d["secret"])
        except ValueError as exc:
            raise ProtocolError(f"the event's secret is invalid ({exc}); invoke through wrenpack") from None
        for ref_job, text in (d.get("ref_secrets") or {}).items():
            if not isinstance(ref_job, str) or not _ID.match(ref_job):
                raise ProtocolError(f"the event's ref_secrets names {ref_job!r}, not a wrenpack job id")
            try:
                auth.decode_secret(text)
            except ValueError as exc:
                raise ProtocolError(f"the event's secret for job {ref_job} is invalid ({exc})") from None
        for ancestor in d.get("chain") or ():
            if not isinstance(ancestor, str) or not _ID.match(ancestor):
                raise ProtocolError(f"the event's chain names {ancestor!r}, not a wrenpack job id")
        func_hash = d.get("func_hash")
        if func_hash is not None and func_hash not in _good_hashes:
            if not _SHA256.match(func_hash):
                raise ProtocolError("the event's func_hash is not a sha256 hex digest")
            if len(_good_hashes) > 256:
                _good_hashes.clear()
            _good_hashes.add(func_hash)  # (a warm worker's calls name a few functions, again and again)
        domain = d.get("domain")
        if domain is not None and not _SHA256.match(domain):
            raise ProtocolError("the event's domain is not a sha256 hex digest; invoke through wrenpack")
        if "func_inline" in d and "func_hash" not in d:
            raise ProtocolError("the event carries its function inline without its func_hash")
        if d.get("ckpt_from") is not None:
            checkpoint_format.check_from(d["ckpt_from"])
        attempt, segment = d.get("attempt", 0), d.get("segment", 0)
        if attempt < 0 or segment < 0:
            raise ProtocolError("the event's attempt and segment must be 0 or more")
        extra = {k: d[k] for k in d if k not in _NOT_EXTRA}
        # Every field given, all checked above: filled in directly (a frozen
        # dataclass's __init__ sets each field through object.__setattr__, which
        # costs more than the checks on a warm worker's every call).
        ev = object.__new__(cls)
        ev.__dict__.update(
            job_id=job_id,
            call_id=call_id,
            store=store,
            secret=secret,
            args=args,
            attempt=attempt,
            segment=segment,
            timeout_s=d.get("timeout_s"),
            function_name=d.get("function_name") or call_id,
            checkpoint=d.get("checkpoint"),
            extra=extra,
        )
        return ev


def event_dict(job_id: str, call_id: str, store: dict[str, Any], secret: bytes, args: dict[str, Any], attempt: int = 0,
               segment: int = 0, timeout_s: float | None = None, function_name: str = "call",
               checkpoint: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``Event(...).to_dict()`` without making the Event (the launch makes one per call)."""
    d: dict[str, Any] = {
        "wrenpack": VERSION,
        "store": store,
        "job_id": job_id,
        "call_id": call_id,
        "secret": auth.encode_secret(secret),
        "func_key": keys.func_key(job_id),
        "args": args,
        "attempt": attempt,
        "segment": segment,
        "timeout_s": timeout_s,
        "function_name": function_name,
    }
    if checkpoint:
        d["checkpoint"] = checkpoint
    if extra:
        d.update(extra)
    return d


#: this process's key for isolation domains (made on first use, a new one in every fork)
_domain_key: bytes | None = None
#: (function hash, its domain) of the last launch: a loop of ``.remote()`` computes it once
_last_domain: tuple[str, str] | None = None


def isolation_domain(func_hash: str) -> str:
    """The event's ``domain`` for a function with content hash ``func_hash``:
    HMAC-SHA256 under a random 32-byte key of this process. Calls of one
    function from this process share a warm job process in a worker (as a
    process pool's worker is shared); another function, or the same one from
    another process (its own key), never does. The key never leaves this
    process, and the job's code never sees an event, so no other job can name
    the domain.

    Per process, not per executor: code in this process can read every
    executor's secrets here anyway, so executors of one process keeping apart
    would protect nothing."""
    global _domain_key, _last_domain
    last = _last_domain
    if last is not None and last[0] == func_hash:
        return last[1]
    key = _domain_key
    if key is None:
        key = _domain_key = os.urandom(32)
    domain = hmac.new(key, func_hash.encode(), hashlib.sha256).hexdigest()
    _last_domain = (func_hash, domain)
    return domain


def _forget_domain_key() -> None:
    """A forked process is another driver: a key of its own (its calls share nothing with its parent's)."""
    global _domain_key, _last_domain
    _domain_key, _last_domain = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_domain_key)


def _check_type(name: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ProtocolError(f"the event's field {name!r} must be {allowed}, got {type(value).__name__}")


def inline_args(data: bytes) -> dict[str, Any]:
    """The event's ``args`` for arguments that travel inside it (base64)."""
    return {"inline": base64.b64encode(data).decode("ascii")}


def dumps(event: dict[str, Any]) -> bytes:
    """The event as Lambda's Invoke payload: compact JSON."""
    return json.dumps(event, separators=(",", ":")).encode()
