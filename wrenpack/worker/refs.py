"""Futures that travel: a pickled ``WrenFuture`` is a reference to
its call, so it can be passed into a remote function or returned from one.

::

    client: pickle(fut)  -> rebuild(ref)        ref = job, call, store spec, the job's secret
                         or finished(value)     (a future already done travels with its outcome)
    anywhere: unpickle   -> the live WrenFuture, if this process launched the call
                         -> else a CallRef that reads the call's sealed result
                            object from the store when asked (result()/done())

A job's secret never enters the store, not even inside a reference:

* pickled by wrenpack itself (a call's arguments, function, result or
  checkpoint, inside ``sealing_scope``), a reference carries no secret. The
  arguments' references are noted, and their jobs' secrets travel in the
  invocation (``event["ref_secrets"]``); a result's references need none,
  since a job launched inside a call derives its secret from that call's
  job's secret (``new_job_secret``: HMAC of the parent's secret and the new
  job id), and the reference names that chain of jobs, so the client, which
  holds the root job's secret, derives it again;
* pickled by the user (``pickle.dumps(fut)``, to keep for later), the
  reference carries the secret: the user holds that pickle, the store does not.

The executor keeps a job's objects while a reference to one of its calls may be
read (until it shuts down). Worker side: standard library and cloudpickle only.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import hmac
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterator, NamedTuple

from wrenpack import auth, keys
from wrenpack.errors import ObjectNotFound, WorkerLost, WrenpackError
from wrenpack.storage import open_store
from wrenpack.wire.outcome import Outcome
from wrenpack.wire.result import open_result

log = logging.getLogger(__name__)

_live: "weakref.WeakValueDictionary[tuple[str, str], cf.Future]" = weakref.WeakValueDictionary()


def register(fut: Any) -> None:
    """Make ``fut`` the one an unpickled reference to its call resolves to, here."""
    _live[(fut.job_id, fut.call_id)] = fut


def rebuild(ref: dict[str, Any]) -> cf.Future:
    origin = getattr(_adopting, "origin", None)
    if origin is not None:
        if not isinstance(origin, Origin):
            origin = _adopting.origin = origin()  # (made when an outcome holds a reference: ``adopting``)
        return _rebuild_from(origin, ref)
    fut = _live.get((ref["job_id"], ref["call_id"]))
    if fut is not None:
        return fut
    if ref.get("secret"):
        remember(ref["result_job"], _decode(ref["secret"]))
    return CallRef(ref)


class Origin(NamedTuple):
    """The call whose outcome is being unpickled (``adopting``): what references in it may name.

    A call's outcome is the job's code's to make, a reference in it too: one that named
    another job (its id is no secret: a call can list the store) was given that job's
    secret by the program that unpickled it, from its own keys or its live future, and a
    program that passed it on gave the secret to that call, whose code could then forge
    the job's results; the program also removed the job's objects at shutdown. So a
    reference from a call's outcome names a job the call was ``given`` (the jobs of the
    futures among its arguments, whose secrets its event carried), or one launched
    inside the call's job (its chain starts with that job's: its secret is derived from
    the call's job's ``secret``), or it is not trusted: it has no secret, and nothing
    is removed for it. A secret written into such a reference is never taken.

    The store such a reference names is the call's to write too: the program opened it,
    and sent requests signed with its own credentials to any endpoint a call named. So it
    is opened only as the program knows it (``_known_spec``): the call's own ``store``,
    one the program named in a reference it pickled, or a folder of this machine."""

    job: str
    chain: tuple[str, ...]
    secret: bytes | None
    given: frozenset[str] = frozenset()
    #: the spec of the store the call's job ran on (None: not known; only what ``_known_spec`` knows otherwise)
    store: dict[str, Any] | None = None


def _rebuild_from(origin: Origin, ref: dict[str, Any]) -> cf.Future:
    """``rebuild`` of a reference found in ``origin``'s outcome (``Origin``)."""
    ref = {k: v for k, v in ref.items() if k != "secret"}
    job, chain = ref["result_job"], tuple(ref.get("chain") or ())
    if job in origin.given and ref["job_id"] in origin.given:
        fut = _live.get((ref["job_id"], ref["call_id"]))
        if fut is not None:
            return fut  # (the program's own future, handed to the call and back)
        spec = _known_spec(ref.get("store"), origin)
        if spec is None:
            return CallRef(ref, trusted=False, refused=_elsewhere(ref))
        return CallRef(dict(ref, store=spec), secret_for(job, chain), trusted=True)
    secret = derived_from(origin, chain, job)
    if secret is not None:
        spec = _known_spec(ref.get("store"), origin)
        if spec is None:
            return CallRef(ref, trusted=False, refused=_elsewhere(ref))
        ref["store"] = spec
    adopted = getattr(_adopting, "refs", None)
    if secret is not None and adopted is not None and isinstance(ref.get("store"), dict) and ref["job_id"] == job:
        # (with the secret derived now: its ancestors' may be forgotten by the time the job is removed)
        adopted.append((ref["store"], job, ref["result_call"], secret))
    return CallRef(ref, secret, trusted=False)


def _place(spec: Any) -> tuple[Any, ...] | None:
    """Where a store spec sends the program's requests: its type and folder, or its
    bucket, prefix and endpoint (None for what is not a spec). Two specs of one place
    may differ in the rest (region, conditional writes), which a reference does not choose."""
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "s3":
        return (kind, spec.get("bucket"), str(spec.get("prefix") or "").strip("/"), spec.get("endpoint_url") or None)
    root = spec.get("root")
    return (kind, os.path.normpath(root) if isinstance(root, str) and root else None)


def _known_spec(named: Any, origin: Origin) -> dict[str, Any] | None:
    """The spec this program opens for the store a reference in ``origin``'s outcome names
    (``Origin``): the call's own job's, or one a reference this program pickled named
    (``_named_stores``), as the program knows it; or a folder of this machine, which the
    call's code could reach itself where it runs here, and which is only read, never made
    (``CallRef``): a job launched inside a call keeps its objects where the call's default
    executor puts them. None for anything else: an S3 store the call chose is not opened."""
    place = _place(named)
    if place is None:
        return None
    if origin.store is not None and place == _place(origin.store):
        return dict(origin.store)
    if place in _named_stores:
        return dict(_named_stores[place])
    if place[0] == "local" and place[1] is not None and os.path.isabs(place[1]):
        return {"type": "local", "root": place[1]}
    return None


def _elsewhere(ref: dict[str, Any]) -> str:
    """Why a reference in a call's outcome that names a store ``_known_spec`` does not know is not read."""
    named = ref.get("store")
    place = _place(named)
    if place is None:
        where = f"store {named!r}"
    elif place[0] == "s3":
        where = f"store s3://{place[1]}/{place[2]}" + (f" at {place[3]}" if place[3] else "")
    else:
        where = f"{place[0]} store {place[1]}"
    return (f"{ref.get('label') or ref.get('call_id')}: this reference came in a call's result and names the {where}, "
            "which is neither the store of the call's own job nor one this program named, so it was not opened "
            "(the call chose it); launch the job inside the call on the call's own storage, or wait for its result "
            "inside the call and return that")


#: the stores references this process pickled name, by place (``_place``): a call given one of those
#: futures may hand it back, and its store is then the one this process named
_named_stores: dict[Any, dict[str, Any]] = {}


def derived_from(origin: Origin, chain: tuple[str, ...], job: str) -> bytes | None:
    """The secret of ``job`` if its ``chain`` says it was launched inside ``origin``'s job
    (directly or further down), derived from that job's secret; None otherwise."""
    prefix = (*origin.chain, origin.job)
    if origin.secret is None or chain[:len(prefix)] != prefix:
        return None
    secret = origin.secret
    for below in (*chain[len(prefix):], job):
        secret = _derive(secret, below)
    return secret


_adopting = threading.local()

#: a job launched inside a call, named by a reference in the call's outcome, to remove once it
#: verifies (``core._delete_adopted``): (store spec, job id, call id, the secret derived for it)
Adopted = tuple[dict[str, Any], str, str, bytes]

#: jobs launched inside the job of a call whose result a reference read here (``CallRef``), named
#: by references in that result: (store spec, job id, call id, derived secret), for the executor
#: released next to remove (``take_adopted``), as it removes those in its own calls' outcomes
_adopted: list[Adopted] = []
_adopted_lock = threading.Lock()


def take_adopted() -> list[Adopted]:
    """The jobs references read here found since last asked (each removed only once it verifies)."""
    with _adopted_lock:
        out = list(_adopted)
        _adopted.clear()
    return out


@contextlib.contextmanager
def adopting(origin: "Origin | Callable[[], Origin]") -> Iterator[list[Adopted]]:
    """While a call's outcome is unpickled where it was launched (``origin``: that call,
    ``Origin``, or what makes it, called only if the outcome holds a reference: most
    hold none, and a call's completion should not pay for it): the jobs launched inside
    it that references in it name (a future the call returned, whose job was launched in
    the call's process). That process is gone without removing the job's objects, which
    the reference reads: the receiver removes them when it is done (``CallTable._adopt``),
    once one of them verifies with the secret derived for the job."""
    outer = getattr(_adopting, "refs", None), getattr(_adopting, "origin", None)
    got: list[Adopted] = []
    _adopting.refs, _adopting.origin = got, origin
    try:
        yield got
    finally:
        _adopting.refs, _adopting.origin = outer


# -- job secrets: in memory only ---------------------------------------------------
_keyring: dict[str, bytes] = {}
_keyring_lock = threading.Lock()
_scopes = threading.local()
#: The call this process is running now (worker side): (job id, secret, chain of its ancestor jobs).
_current: tuple[str, bytes, tuple[str, ...]] | None = None
#: In a job's child, which holds no secret (``wrenpack.worker.isolation``): asks
#: the parent for a sub-job's secret, derived there from the job's own
_deriver: Any = None


def _decode(text: str) -> bytes:
    return auth.decode_secret(text)


#: secrets the running call brought into this process (worker side), forgotten
#: when it ends: a warm worker would otherwise keep one per call it ever ran
_call_added: list[str] = []


def remember(job_id: str, secret: bytes, for_call: bool = False) -> None:
    """Keep a job's secret in this process's memory, to verify its results
    (``for_call``: only while the running call runs)."""
    with _keyring_lock:
        _forget_gone_keys()
        if for_call and job_id not in _keyring:
            _call_added.append(job_id)
        _keyring[job_id] = secret


def learn(secrets: dict[str, str] | None) -> None:
    """Secrets that came inside an invocation (``event["ref_secrets"]``), for its call."""
    for job_id, text in (secrets or {}).items():
        remember(job_id, _decode(text), for_call=True)


def _forget_call() -> None:
    with _keyring_lock:
        _forget_gone_keys()
        for job_id in _call_added:
            _keyring.pop(job_id, None)
        _call_added.clear()


def _derive(parent_secret: bytes, job_id: str) -> bytes:
    return hmac.new(parent_secret, b"wrenpack-subjob:" + job_id.encode(), hashlib.sha256).digest()


def derive(parent_secret: bytes, job_id: str) -> bytes:
    """The secret of a job launched inside a call of the job whose secret is ``parent_secret``."""
    return _derive(parent_secret, job_id)


def enter_call(job_id: str | None, secret: bytes = b"", chain: list[str] | tuple[str, ...] = (),
               derive: Any = None) -> None:
    """The handler says which call runs now (``None``: none, the secrets it
    brought are forgotten), so jobs launched inside derive their secret.

    A reference rebuilt during the call keeps the secret it verifies with
    (``CallRef``), so forgetting them does not stop one read later; a future
    of a job the call launched, kept by user code after the call, can no
    longer be pickled with its secret here (a clear error where it is read)."""
    global _current, _deriver
    _current = None if job_id is None else (job_id, secret, tuple(chain))
    _deriver = derive if job_id is not None else None
    if job_id is None:
        _forget_call()
    elif secret:
        remember(job_id, secret, for_call=True)


#: the weak references to the live ``JobKey``s (what keeps them, and so their callbacks, alive),
#: each with its job's id
_key_refs: "dict[weakref.ref[JobKey], str]" = {}
#: the references of the ``JobKey``s gone since the keyring was last looked at
_keys_gone: list["weakref.ref[JobKey]"] = []


class JobKey:
    """Held by a job's futures (and by its executor while the job runs or is
    kept for references): when the last holder goes, this process forgets the
    job's secret. A driver would otherwise keep one per job it ever launched;
    references rebuilt from it keep the secret they need (``CallRef``), and a
    reference pickled by the user carries its own.

    No Python code runs when one goes (no ``__del__``): Python runs a signal's
    handler at the first bytecode after the signal came, and an exception
    raised in a finaliser is printed and dropped. A SIGTERM handler raising
    ``SystemExit`` (or Ctrl-C's ``KeyboardInterrupt``) that came while a map's
    futures were being freed was raised in ``JobKey.__del__`` and lost: the
    program went on as if the signal had never come. Its weak reference's
    callback is ``list.append`` (C), and the job's secret is forgotten the next
    time this process looks at its keyring (``_forget_gone_keys``)."""

    __slots__ = ("job_id", "__weakref__")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        _key_refs[weakref.ref(self, _keys_gone.append)] = job_id  # (dict and list operations: atomic)


def kept_secrets() -> set[str]:
    """The jobs whose secrets this process keeps now (their ``JobKey`` alive, or their call running)."""
    with _keyring_lock:
        _forget_gone_keys()
        return set(_keyring)


def _forget_gone_keys() -> None:
    """Forget the secrets of the jobs whose ``JobKey`` went (``_keyring_lock`` held)."""
    while _keys_gone:
        job_id = _key_refs.pop(_keys_gone.pop(), None)
        if job_id is not None:
            _keyring.pop(job_id, None)


def in_call() -> bool:
    """Whether this process runs a call now (a new job's secret is then derived from it)."""
    return _current is not None


def new_job_secret(job_id: str) -> tuple[bytes, list[str]]:
    """A new job's secret and its chain of ancestor jobs: random in a client;
    inside a call, derived from the call's job's secret (the client re-derives it)."""
    cur = _current
    if cur is None:
        secret, chain = os.urandom(32), []
    elif not cur[1] and _deriver is not None:
        secret, chain = _deriver(job_id), [*cur[2], cur[0]]  # a job's child: the parent derives it
    else:
        secret, chain = _derive(cur[1], job_id), [*cur[2], cur[0]]
    remember(job_id, secret, for_call=cur is not None)
    return secret, chain


def secret_for(job_id: str, chain: list[str] | tuple[str, ...] = ()) -> bytes | None:
    """The secret of ``job_id``, known here or derived along ``chain``; None if neither.
    A job launched inside a call (a ``chain`` of its ancestor jobs) has its secret derived
    from the closest ancestor known here, before its own is looked up by its id (a job's
    process that launched it knows only its own): a reference that named a job this
    process holds, with a made-up chain, got that job's secret, where a genuine
    reference, naming its real ancestors, gets the same secret either way."""
    path = [*chain, job_id]
    with _keyring_lock:
        _forget_gone_keys()
        for i in (*range(len(path) - 2, -1, -1), len(path) - 1) if chain else (0,):
            secret = _keyring.get(path[i])
            if secret is not None:
                for later in path[i + 1:]:
                    secret = _derive(secret, later)
                return secret
    return None


@contextlib.contextmanager
def sealing_scope() -> Iterator[set[tuple[str, tuple[str, ...]]]]:
    """While wrenpack pickles an object for the store: references pickle
    without their secret; the jobs they refer to are collected."""
    stack = getattr(_scopes, "stack", None)
    if stack is None:
        stack = _scopes.stack = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack.append(seen)
    try:
        yield seen
    finally:
        stack.pop()


def reduce_ref(ref: dict[str, Any], known: bytes | None = None, trusted: bool = True) -> tuple[Any, ...]:
    """How a reference pickles: without its secret inside ``sealing_scope``
    (``known``: the secret, if the caller holds it already; not ``trusted``: a
    reference from a call's outcome, ``Origin``, whose job's secret is only ``known``,
    never looked up here)."""
    stack = getattr(_scopes, "stack", None)
    chain = tuple(ref.get("chain") or ())
    if stack:
        store = ref.get("store") or {}
        if store.get("type") == "local" and os.environ.get("AWS_LAMBDA_RUNTIME_API"):
            # (where the call's outcome is sealed, on Lambda: its program could never read this)
            raise WrenpackError(
                f"{ref.get('label') or ref['call_id']}: a future of a job launched inside this call on this Lambda "
                f"environment's own local workers (storage {store.get('root')}) cannot leave the call: they stop when "
                "it returns, and the program cannot reach that folder; wait for its result inside the call "
                "(fut.result()) and return that, or launch the job with backend='lambda' and S3 storage")
        if trusted or (known is not None and chain):  # (an untrusted one: only a derived secret travels)
            stack[-1].add((ref["result_job"], chain))
            if isinstance(ref.get("store"), dict) and len(_named_stores) < 1024:
                _named_stores.setdefault(_place(ref["store"]), dict(ref["store"]))
        return (rebuild, ({k: v for k, v in ref.items() if k != "secret"},))
    if not ref.get("secret"):
        secret = known if known is not None or not trusted else secret_for(ref["result_job"], chain)
        if secret is not None:
            ref = dict(ref, secret=auth.encode_secret(secret))
    return (rebuild, (ref,))


class DoneRef(cf.Future):
    """A future that was done when it was pickled (it travels with its outcome)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def __reduce__(self) -> tuple[Any, ...]:
        if self.cancelled():
            return (finished, (self.label, "cancelled", None))
        exc = self.exception(0)
        return (finished, (self.label, "ok", self.result(0)) if exc is None else (self.label, "error", exc))


def finished(label: str, state: str, value: Any) -> cf.Future:
    """A future that was done when it was pickled."""
    fut = DoneRef(label)
    if state == "ok":
        fut.set_result(value)
    elif state == "error":
        fut.set_exception(value)
    else:
        fut.cancel()
        fut.set_running_or_notify_cancel()
    return fut


_stores: dict[str, Any] = {}


class _Waiters(list):  # type: ignore[type-arg]
    """A ``CallRef``'s ``_waiters``: the standard library's ``wait`` and ``as_completed``
    append a waiter and block on it, which only ``set_result`` wakes. A reference
    resolves when something looks at the store, and those never do: appended to
    here, the reference is watched (``_watcher``)."""

    def __init__(self, ref: "CallRef") -> None:
        super().__init__()
        self._ref = weakref.ref(ref)

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        ref = self._ref()
        if ref is not None and not cf.Future.done(ref):
            _watcher.watch(ref)


class _Watcher:
    """Looks at the store for the references that something waits on without looking
    itself: a done-callback (``asyncio.wrap_future``'s, ``await``'s, the program's), or a
    waiter of ``concurrent.futures.wait``. Before, such a reference resolved only when
    ``done()``, ``result()`` or wrenpack's ``wait`` looked, and those waited for good.
    One thread, started when the first is watched and gone once none is left; the looks
    back off from ``FIRST_S`` to ``EVERY_S`` (a look is a GET on S3). A reference with a
    callback is held until it resolves (as an executor holds its futures: the callback
    runs even where the program let go of the future, in a thread of its own:
    ``CallRef._invoke_callbacks``); one only waited on is let go once nothing waits (a
    ``wait`` that timed out). A forked child watches none of its parent's."""

    FIRST_S = 0.01
    EVERY_S = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, CallRef] = {}
        #: the watcher's thread while it runs
        self.thread: threading.Thread | None = None

    def watch(self, ref: "CallRef") -> None:
        with self._lock:
            self._watched[id(ref)] = ref
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="wrenpack-ref-watcher", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        delay = self.FIRST_S
        try:
            while True:
                time.sleep(delay)
                with self._lock:
                    refs = list(self._watched.values())
                for ref in refs:
                    if not cf.Future.done(ref) and (ref._waiters or ref._done_callbacks):
                        try:
                            ref._poll()
                        except Exception:  # noqa: BLE001 - the store did not answer: looked at again later
                            log.debug("looking for the result of %s", ref.label, exc_info=True)
                    if cf.Future.done(ref) or not (ref._waiters or ref._done_callbacks):
                        with self._lock:
                            self._watched.pop(id(ref), None)
                refs = ref = None  # type: ignore[assignment]
                with self._lock:
                    if not self._watched:
                        self.thread = None
                        return
                delay = min(delay * 1.5, self.EVERY_S)
        finally:
            with self._lock:
                if self.thread is threading.current_thread():  # (ended by surprise: the next watch starts another)
                    self.thread = None

    def forget(self) -> None:
        """In a forked child: the thread stayed in the parent, and the references watched are
        the parent's to resolve (their callbacks ran in both); the child watches those it waits on."""
        self._lock = threading.Lock()
        self.thread = None
        self._watched.clear()


_watcher = _Watcher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watcher.forget)


#: how long a reference's result may be missing before it asks whether its job is still there, and how often then
_GONE_AFTER_S = 1.0
_GONE_EVERY_S = 5.0


def _store(spec: dict[str, Any]) -> Any:
    token = repr(sorted(spec.items()))
    if token not in _stores:
        _stores[token] = open_store(spec)
    return _stores[token]


class CallRef(cf.Future):
    """The future of a call launched elsewhere; resolves by reading (and
    verifying) the call's result object from the store."""

    def __init__(self, ref: dict[str, Any], secret: bytes | None = None, trusted: bool | None = None,
                 refused: str | None = None) -> None:
        """``secret``/``trusted``: as ``_rebuild_from`` judged a reference from a call's
        outcome (not trusted: only that secret verifies it, none looked up later);
        by default the secret known here. ``refused``: why it is not read at all."""
        super().__init__()
        self._ref = ref
        self._refused = refused
        self.job_id: str = ref["job_id"]
        self.call_id: str = ref["call_id"]
        self.label: str = ref.get("label") or self.call_id
        self.status: dict[str, Any] | None = None
        self.logs: str | None = None
        self._fetching = threading.Lock()
        #: the secret its result verifies with, as known where it was rebuilt
        self._secret = secret if trusted is not None else secret_for(ref["result_job"], ref.get("chain") or ())
        #: False for a reference from a call's outcome that names a job the call was not given
        self._trusted = trusted is not False
        #: when the store was first found without the result, and last asked whether the job is there at all
        self._missing_since: float | None = None
        self._job_checked = 0.0
        # (``concurrent.futures.wait``/``as_completed`` append their waiter here: the watcher then looks)
        self._waiters = _Waiters(self)

    def add_done_callback(self, fn: Callable[[cf.Future], Any]) -> None:
        """As ``concurrent.futures.Future``'s; the callback runs once the result is in the
        store, whoever looks (``_watcher``, until then: in its thread)."""
        super().add_done_callback(fn)
        if not super().done():
            _watcher.watch(self)

    def __await__(self) -> Iterator[Any]:
        """``await ref``: as a wrenpack future's (``asyncio.wrap_future``, whose callback the watcher runs)."""
        import asyncio

        return asyncio.wrap_future(self).__await__()

    def _invoke_callbacks(self) -> None:
        """The done-callbacks, in a thread of their own when the watcher resolved this
        reference: run in the watcher's, a callback that waited for another reference
        waited for good (only the watcher resolves it), a slow one held up every other,
        and one that called ``sys.exit()`` ended the watcher."""
        if threading.current_thread() is _watcher.thread:
            threading.Thread(target=_run_callbacks, args=(self,), name="wrenpack-ref-callbacks", daemon=True).start()
        else:
            super()._invoke_callbacks()  # type: ignore[misc]

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_ref(self._ref, self._secret, self._trusted)

    def _poll(self) -> bool:
        """One look at the store; True once resolved."""
        if super().done():
            return True
        with self._fetching:
            if super().done():
                return True
            ref = self._ref
            if self._refused is not None:
                self.set_exception(WrenpackError(self._refused))
                return True
            if self._secret is None and not self._trusted:
                # (not read, nor its store opened: the store it names is the call's to choose)
                self.set_exception(WrenpackError(
                    f"{self.label}: this reference came in a call's result and names job {ref['result_job']}, which "
                    "that call was neither given (a future among its arguments) nor launched, so its result is not "
                    "trusted; read that job's own future instead"))
                return True
            spec = ref["store"]
            if spec.get("type") == "local" and not os.path.isdir(str(spec.get("root"))):
                # (not made here: a folder of another machine, a Lambda environment's, say)
                self.set_exception(ObjectNotFound(
                    f"{self.label}: its job's storage {spec.get('root')} is not on this machine (a folder of the "
                    "machine or Lambda environment that launched it), so its result cannot be read here"))
                return True
            key = keys.result_key(ref["result_job"], ref["result_call"])
            store = _store(spec)
            try:
                blob = store.get(key)
            except ObjectNotFound:
                gone = self._job_gone(store)
                if gone is not None:
                    self.set_exception(gone)
                    return True
                return False
            self._missing_since = None
            try:
                chain = tuple(ref.get("chain") or ())
                secret = self._secret if not self._trusted else self._secret or secret_for(ref["result_job"], chain)
                if secret is None:
                    raise WrenpackError(
                        f"{self.label}: this process does not hold the secret of job {ref['result_job']}, so its result "
                        "cannot be verified; pass the future into a wrenpack call, or pickle it yourself (pickle.dumps) "
                        "in the process that launched it"
                    )
                # (the references in that result are judged as in a call's outcome: ``Origin``)
                with adopting(Origin(ref["result_job"], chain, secret, store=spec)) as nested:
                    status, outcome = open_result(
                        secret, ref["result_job"], ref["result_call"], blob, f"result object of {self.label}"
                    )
                if nested:
                    with _adopted_lock:
                        _adopted.extend(nested)
                if ref.get("item") is not None and outcome.ok:
                    outcome = Outcome.from_tuple(outcome.value[ref["item"]], f"result object of {self.label}")
            except WrenpackError as exc:
                self.set_exception(exc)
                return True
            self.status = status
            self.logs = status.pop("logs", None) if isinstance(status, dict) else None
            if outcome.ok:
                self.set_result(outcome.value)
            else:
                self.set_exception(outcome.rebuild(self.label, self.job_id))
            return True

    def _job_gone(self, store: Any) -> WrenpackError | None:
        """Why the call's result, not in the store yet, never will be; None while it may
        come. Its job has no objects left (its owner record, which a job whose future was
        pickled has from then until its objects are removed, is gone too), or the record
        says the job was lost with its owner: a job launched inside a local call runs on
        that call's process's own workers, which end with that process (a call of another
        function on its worker replaces it), and the reference waited for ever. Asked once
        the result has been missing for ``_GONE_AFTER_S``, then every ``_GONE_EVERY_S``: a
        look costs a request (a GET on S3)."""
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        if now - self._missing_since < _GONE_AFTER_S or now - self._job_checked < _GONE_EVERY_S:
            return None
        self._job_checked = now
        job = self._ref["result_job"]
        try:
            blob = store.get(keys.owner_key(job))
        except ObjectNotFound:
            return ObjectNotFound(
                f"{self.label}: its job {job} is gone from {store.url}, and its result with it: the program that "
                "launched the call ended (or shut its executor down) and removed the job's objects before this "
                "reference was read; read a pickled future while its launcher runs, or launch the call with .spawn() "
                "for a result that outlives its launcher")
        except WrenpackError:
            return None  # (the store did not answer: looked at again later)
        try:
            from wrenpack.executor import owner as owners  # (the client's: a worker on Lambda has none)
        except ImportError:
            return None
        record = owners.lost_with_owner(job, blob)
        if record is None:
            return None
        with contextlib.suppress(WrenpackError):
            if store.exists(keys.result_key(job, self._ref["result_call"])):
                return None  # (written, and its writer gone, since the result was looked for)
        return WorkerLost(
            f"{self.label}: the process that launched its job {job} (pid {record.get('pid')}) has ended, and the local "
            "workers that ran the job's calls ended with it, before the call's result was written: it never will be. "
            "A job launched inside a call runs on after the call only while the call's process lasts (a call of "
            "another function on its worker ends it); wait for its results inside the call and return them, or "
            "launch the job from the program")

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while not self._poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise cf.TimeoutError(f"{self.label} not finished after {timeout} s")
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, 0.5)

    def done(self) -> bool:
        return self._poll()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        return False  # only the executor that launched the call can take it back


def _run_callbacks(ref: "CallRef") -> None:
    """A resolved reference's done-callbacks, in a thread of their own (``CallRef._invoke_callbacks``).
    ``concurrent.futures`` logs a callback's exception and runs the next; a ``sys.exit()`` there
    ends this thread, quietly, as it would a thread of the program's."""
    try:
        cf.Future._invoke_callbacks(ref)  # type: ignore[attr-defined]
    except SystemExit:
        log.debug("a done-callback of %s called sys.exit(): the callbacks after it do not run", ref.label)
