"""The call protocol, in one place: what the client sends a worker (``Event``)
and what comes back (``Outcome``, inside a sealed result object).

::

    client: Event(...).to_dict()  --invocation-->  worker: Event.from_dict(d)  (validated)
    worker: Outcome.from_exception(exc) / Outcome.success(value)
            -> result object = seal(pack(status, outcome.dumps()))  --store or reply-->
    client: unseal -> unpack -> Outcome.loads(...) -> .value / .rebuild(label)

The event is versioned (``"wrenpack": VERSION``); the handler refuses another
version, a missing or mistyped field, and any key outside the job's prefix, as
a ``ProtocolError`` (a wrenpack error, never the user's). Backends copy the
dict and change only ``attempt`` and ``timeout_s``; other helpers add optional
fields to ``OPTIONAL`` below. Outcomes are the 6-tuple
``("error", exc_bytes_or_None, type_name, message, traceback_text, kind)`` or
``("ok", value)``, built only by ``error_tuple``/``Outcome``. Standard library
and cloudpickle only: the worker imports this.
"""
from __future__ import annotations

import base64
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject, ProtocolError, RemoteError, WrenpackError

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
    "checkpoint": (dict, type(None)),   # what earlier segments learned: save_s, step_s
    "reply_limit": (int, type(None)),   # contract 2: result object in the reply if at most this many bytes
    "env": (dict, type(None)),          # issue 11: environment variables for the call
    "capture_logs": (int, type(None)),  # issue 11: bytes of the call's log tail in the status
    "cancel_key": (str, type(None)),    # issue 11: cancellation marker key
    "mark_start_after": (int, float, type(None)),
    "ref_secrets": (dict, type(None)),  # issue 11/14: secrets of the jobs whose futures the arguments hold
    "chain": (list, type(None)),        # a job launched inside a call: its ancestor jobs (secret derivation)
    "handoff": (int, type(None)),       # local worker: results pickled larger than this go back as a sealed memfd
    "func_hash": (str,),                # issue 15: sha256 of the pickled function (workers cache functions by it)
    "func_inline": (str,),              # issue 15: the pickled function itself (base64), for small jobs
    "owner": (dict,),                   # issue 15: the owner record, for the worker to write before it stores anything
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
        if "func_inline" in d and "func_hash" not in d:
            raise ProtocolError("the event carries its function inline without its func_hash")
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


def _check_type(name: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ProtocolError(f"the event's field {name!r} must be {allowed}, got {type(value).__name__}")


def inline_args(data: bytes) -> dict[str, Any]:
    return {"inline": base64.b64encode(data).decode("ascii")}


# -- outcomes -----------------------------------------------------------------------
def error_tuple(exc: BaseException, kind: str, tb_text: str | None = None) -> tuple[Any, ...]:
    """The one place the error 6-tuple is built; an unpicklable exception keeps
    its type name and message. ``kind``: "user" (theirs) or "wrenpack" (ours)."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception is still reported
        exc_bytes = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return ("error", exc_bytes, name, str(exc), tb_text, kind)


def user_traceback(exc: BaseException) -> str:
    """The traceback of a user exception without the frame that called their code."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    return "".join(traceback.format_exception(type(exc), exc, tb))


@dataclass
class Outcome:
    """What a call produced: a value, or an exception (as the error 6-tuple)."""

    ok: bool
    value: Any = None
    error: tuple[Any, ...] | None = None

    @classmethod
    def success(cls, value: Any) -> "Outcome":
        return cls(True, value)

    @classmethod
    def from_exception(cls, exc: BaseException, kind: str = "user", tb_text: str | None = None) -> "Outcome":
        return cls(False, error=error_tuple(exc, kind, tb_text))

    @classmethod
    def from_tuple(cls, t: Any, what: str = "result object") -> "Outcome":
        if isinstance(t, tuple) and len(t) == 2 and t[0] == "ok":
            return cls(True, t[1])
        if isinstance(t, tuple) and len(t) == 6 and t[0] == "error":
            return cls(False, error=t)
        raise CorruptObject(f"the {what} is corrupt (unexpected content); re-run the call")

    def to_tuple(self) -> tuple[Any, ...]:
        return ("ok", self.value) if self.ok else tuple(self.error or ())

    def dumps(self) -> bytes:
        """Pickled; raises the pickling error of an unpicklable value."""
        return cloudpickle.dumps(self.to_tuple())

    def rebuild(self, label: str) -> BaseException:
        """Client side: the exception to raise for a failed call."""
        return rebuild_exception(self.to_tuple(), label)


def rebuild_exception(outcome: tuple[Any, ...], label: str) -> BaseException:
    """The exception an error 6-tuple stands for, with the remote traceback as
    its cause; a type the client cannot rebuild becomes ``RemoteError``."""
    from wrenpack.futures import RemoteTraceback  # client side only

    _, exc_bytes, type_name, message, tb_text, kind = outcome
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = cloudpickle.loads(exc_bytes)
        except Exception:  # noqa: BLE001 - the type may not exist on the client
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{label} raised {type_name}: {message} (the exception type could not be rebuilt here)")
    elif kind == "wrenpack" and isinstance(exc, WrenpackError):
        try:
            rebuilt = type(exc)(f"{label}: {exc}{_version_note(exc)}")
            rebuilt.__dict__.update({k: v for k, v in exc.__dict__.items() if k not in rebuilt.__dict__})
            if isinstance(exc, ImportError):
                rebuilt.name, rebuilt.path = exc.name, exc.path
            exc = rebuilt
        except Exception:  # noqa: BLE001
            pass
    if tb_text:
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc


def _version_note(exc: BaseException) -> str:
    """For a pickle the worker could not load: the versions, when client and worker differ."""
    worker = getattr(exc, "worker_versions", None)
    here = ("%d.%d" % sys.version_info[:2], cloudpickle.__version__)
    if not isinstance(worker, tuple) or len(worker) != 2 or tuple(worker) == here:
        return ""
    return (f"; besides, the client runs Python {here[0]} with cloudpickle {here[1]} but the worker Python {worker[0]} "
            f"with cloudpickle {worker[1]}: run the same versions on both")


# -- sealed objects ----------------------------------------------------------------------
def open_result(secret: bytes, job_id: str, call_id: str, blob: bytes, what: str) -> tuple[dict[str, Any], Outcome]:
    """Verify and read a call's result object (from the store or a reply)."""
    from wrenpack.worker import result

    data = auth.unseal_view(secret, keys.identity(job_id, "result", call_id), blob, keys.result_key(job_id, call_id))
    status, outcome_bytes = result.unpack(data, what)
    return status, loads_outcome(outcome_bytes, what)


def loads_outcome(data: Any, what: str, buffers: Any = None) -> "Outcome":
    """Unpickle an authentic outcome: bytes of a verified result object, or a
    local hand-off's stream (a file)."""
    try:
        t = cloudpickle.load(data, buffers=buffers) if hasattr(data, "read") else cloudpickle.loads(data, buffers=buffers)
    except ModuleNotFoundError as exc:
        from wrenpack.errors import MissingDependency

        err = MissingDependency(f"the {what} needs module {exc.name!r}, which the client lacks; install it here "
                                f"(pip install {MissingDependency.distribution(exc.name)})")
        err.name = exc.name
        raise err from None
    except Exception as exc:  # noqa: BLE001
        raise CorruptObject(f"the {what} is authentic but cannot be unpickled here ({type(exc).__name__}: {exc}); "
                            "client and worker must run the same Python and cloudpickle") from None
    return Outcome.from_tuple(t, what)


def reply_result(reply: dict[str, Any]) -> bytes | None:
    """The sealed result object a handler's reply carries (bytes from a local
    worker, base64 text from Lambda), removed from ``reply``; None if absent."""
    data = reply.pop("result", None)
    if data is None or isinstance(data, (bytes, bytearray)):
        return data
    try:
        return base64.b64decode(data, validate=True)
    except (TypeError, ValueError):
        raise CorruptObject("the result in the worker's reply is not base64; re-run the call") from None


def seal_result(secret: bytes, job_id: str, call_id: str, status: dict[str, Any], outcome_bytes: bytes) -> bytes:
    from wrenpack.worker import result

    return auth.seal_parts(secret, keys.identity(job_id, "result", call_id), *result.parts(status, outcome_bytes))


def is_authentic_result(secret: bytes, job_id: str, call_id: str, blob: bytes) -> bool:
    try:
        auth.unseal_view(secret, keys.identity(job_id, "result", call_id), blob, keys.result_key(job_id, call_id))
        return True
    except CorruptObject:
        return False


def seal_segment(secret: bytes, job_id: str, call_id: str, segment: int, status_json: bytes) -> bytes:
    return auth.seal(secret, keys.identity(job_id, "segment", call_id, segment), status_json)


def open_segment(secret: bytes, job_id: str, call_id: str, segment: int, blob: bytes) -> dict[str, Any]:
    """Verify and read a segment record (a JSON status)."""
    import json

    key = keys.segment_key(job_id, call_id, segment)
    data = auth.unseal(secret, keys.identity(job_id, "segment", call_id, segment), blob, key)
    try:
        status = json.loads(data)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise CorruptObject(f"{key} is authentic but unreadable; re-run the call")
    return status
