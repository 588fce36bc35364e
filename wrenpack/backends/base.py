"""The backend contract: run an invocation somewhere, report once when it ends.

Where a call travels::

    RemoteFunction.map -> Executor: pickle function once, args inline or as objects,
        -> Backend.invoke(Invocation) -> worker runs handler(event, context)
        -> handler writes output + status to the store
        -> backend calls Invocation.on_start(inv) when the call begins running
        -> backend calls Invocation.on_done(InvocationResult) exactly once
        -> Executor reads the output and resolves the WrenFuture

Lifecycle hooks (the futures' states follow them): ``on_start`` marks the
future RUNNING (before it, the call is PENDING and ``Backend.cancel`` may
still take it back, after which ``on_done`` is never called for it).
``Backend.shutdown(wait=True)`` drains: queued calls still run and report;
``shutdown(wait=False)`` stops workers and fails what is left, each through
``on_done`` once. An executor that cancels pending futures calls ``cancel``
for each first.

A backend reports either the status record the handler wrote (``status``), or
an ``error`` for a failure outside the user's code that left no status
(timeout, memory limit, worker crash after retries, worker lost).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

from wrenpack.errors import WrenpackError


class ImageAnswer(NamedTuple):
    """Whether the function that would run a launch's calls is a container image
    (``Backend.image_of``), which may hold modules of the user's own code that the
    client cannot see: a launch whose pickles name such a module goes ahead then,
    with a warning, instead of being refused (``wrenpack.executor.own_modules``)."""

    #: the function's name, for the warning or the refusal
    function: str
    #: True: a container image; False: not one (a zip package, or not deployed);
    #: None: not known (its configuration could not be read)
    image: bool | None


#: what ``Backend.image_asker`` returns: (memory MB, timeout s, ephemeral storage MB, runtime) -> ``ImageAnswer``
ImageAsker = Callable[[int, float, int, "str | None"], "ImageAnswer | None"]


@dataclass
class InvocationResult:
    status: dict[str, Any] | None = None
    error: WrenpackError | None = None
    #: The sealed result object's bytes when the handler sent it in its reply
    #: (``event["reply_limit"]``, contract 2); the executor verifies it. None: read the store.
    data: bytes | None = None
    #: A reply that came over a channel of the backend's own (the local
    #: backend's private socketpair, or a memfd handed over on it): the backend
    #: supplies its reader, and the executor reads and closes it.
    private: PrivateReply | None = None


class PrivateReply(abc.ABC):
    """A call's outcome as a backend brought it, read by the backend's own code.

    It carries no MAC: a backend gives one only for a channel nobody but the
    worker it made can write to (see ``wrenpack.backends.local.replies``).
    Everything that leaves the driver again is sealed there (a pinned job's
    result goes to the store as a sealed result object)."""

    #: read on a reader thread, in parallel, as soon as it arrives (a large copy)
    slow: bool = False

    @property
    def size(self) -> int | None:
        """Bytes to read, if known cheaply (small replies complete on the backend's thread)."""
        return None

    @abc.abstractmethod
    def read(self) -> tuple[Any, bytes | None]:
        """The outcome (``wire.outcome.Outcome``) and, when there is one, the
        outcome's pickle as it came (sealed as is for a pinned job's store copy)."""

    def close(self) -> None:  # noqa: B027 - most replies hold nothing to free
        """Free what the reply holds (read or not)."""


@dataclass
class Invocation:
    """One call to run: the handler's event plus the limits it runs under."""

    event: dict[str, Any]
    on_done: Callable[["Invocation", InvocationResult], None]
    #: called (from a backend thread) when the call actually begins running:
    #: local, when a worker takes it; Lambda, when it is invoked. At most once
    #: per attempt; a retried call may report it again (harmless).
    on_start: Callable[["Invocation"], None] | None = None
    memory_mb: int = 1024
    timeout_s: float = 900.0
    ephemeral_storage_mb: int = 512
    retries: int = 0
    runtime: str | None = None
    attempt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: local backend: the arguments as a sealed memfd (``wrenpack.worker.handoff.Sealed``),
    #: sent with every attempt and segment; the executor closes it when the call ends
    handoff: Any = None

    @property
    def label(self) -> str:
        """How messages name this call, e.g. ``score[17]``."""
        return self.extra.get("label") or self.event.get("function_name") or "call"

    @property
    def key(self) -> tuple[str, str]:
        return self.event["job_id"], self.event["call_id"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the client decides from these, never from a name."""

    #: Calls end when the driver process does (local workers). A job that
    #: stores nothing at launch may then leave its owner record to the worker,
    #: written before the first object it stores; where calls outlive the
    #: driver (Lambda) the driver writes it first, so ``clean`` always finds one.
    calls_end_with_driver: bool = False
    #: Small results may come back in the invocation's reply instead of the store.
    reply_results: bool = False
    #: Large arguments and results may travel as sealed memfds
    #: (``wrenpack.worker.handoff``) instead of through the store.
    handoff: bool = False
    #: A fixed pool of warm workers on this machine, ``concurrency`` of them: a
    #: map may time its first calls and group the short ones
    #: (``executor.grouping``), and feed large arguments as workers take them.
    warm_pool: bool = False
    #: CPU is given in proportion to memory, as Lambda does (a profile's
    #: duration is scaled to the call's memory).
    cpu_scales_with_memory: bool = False
    #: Calls are billed per call as Lambda bills them (duration x memory, plus the
    #: request): a job report prices them as billed, not as an estimate.
    billed_per_call: bool = False
    #: Limits the backend itself holds calls to ("memory", "timeout", "ephemeral_storage").
    enforces: frozenset[str] = frozenset()
    #: Calls that may run at once.
    concurrency: int = 1
    #: ``Backend.cancel_calls`` stops calls that are already running (not only queued ones).
    cancel_running: bool = False
    #: How long after its driver is gone a call it sent may still write objects (s): 0
    #: where calls end with the driver. A job's owner record carries it, so that
    #: ``wrenpack clean --stale`` keeps the record (and the job's cancel markers) that
    #: long after it first removes the job's objects, and a later clean removes what
    #: such calls wrote late instead of leaving objects nothing names an owner of.
    late_writes_s: float = 0.0
    #: Workers do not see this machine's files (Lambda): a module of the user's own code
    #: (a file outside site-packages and the standard library) that a pickle names instead
    #: of carrying cannot be imported there, so a launch refuses it before it starts
    #: (``wrenpack.executor.own_modules``). False (the default): workers share the
    #: driver's files and its ``sys.path`` (local, a backend of processes on this
    #: machine), and nothing is checked.
    separate_files: bool = False
    #: The largest event, as the executor makes it (``wire.event.dumps``, bytes), that the
    #: backend can send: its transport's limit less what it adds to each event at send.
    #: The executor sends an argument inline (base64, 4/3 its size) only where its event
    #: still fits, else through the store, whatever ``inline_limit`` allows: what runs
    #: locally runs here. None: no limit (the local backend hands events over a pipe).
    event_limit: int | None = None


class Backend(abc.ABC):
    name: str = "?"
    #: calls are billed per call as Lambda bills them (``Capabilities.billed_per_call``),
    #: known without starting the backend: a spawned job's record says so
    bills_per_call: ClassVar[bool] = False
    #: workers do not see this machine's files (``Capabilities.separate_files``), known
    #: without starting the backend: a spawn's launch checks its pickles in the driver
    separate_files: ClassVar[bool] = False

    @property
    def capabilities(self) -> Capabilities:
        """What this backend can do (the conservative default: nothing special)."""
        return Capabilities()

    @classmethod
    def from_config(cls, config: Any) -> "Backend":
        """The backend the settings ask for (``wrenpack.Config``)."""
        return cls()

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse settings this backend cannot run with (one line naming the fix), without
        making one: what launches calls elsewhere (a spawned job's supervisor) checks them
        before anything of the job is stored. Default: nothing to check."""
        return None

    def image_of(self, memory_mb: int, timeout_s: float, ephemeral_mb: int, runtime: str | None) -> ImageAnswer | None:
        """Whether calls of these settings would run in a container image (``ImageAnswer``), asked
        only when a launch is about to be refused for naming a module of the user's own code
        (``Capabilities.separate_files``): an image may hold it, where this client cannot look.
        None (the default): the workers hold nothing but what the backend puts there."""
        return None

    @classmethod
    def image_asker(cls, config: Any) -> ImageAsker | None:
        """``image_of`` without making the backend (a spawn's driver makes none): a callable the
        caller keeps (it holds its answers), or None (the default) when there is nothing to ask."""
        return None

    @abc.abstractmethod
    def invoke(self, invocation: Invocation) -> None:
        """Start ``invocation`` (non-blocking). ``on_done`` is called exactly once,
        from a backend thread (or the caller's, in ``wait_here``), when it has
        ended one way or another. Crash retries
        (up to ``invocation.retries``) happen inside the backend."""

    def invoke_many(self, invocations: list[Invocation]) -> None:
        for inv in invocations:
            self.invoke(inv)

    def cancel(self, invocation: Invocation) -> bool:
        """Take back ``invocation`` if it has not started; True if it will
        never run (and ``on_done`` will not be called for it). The default
        cannot recall anything."""
        return False

    def cancel_calls(self, calls: "list[tuple[str, str]]") -> "set[tuple[str, str]]":
        """Stop these calls (``(job_id, call_id)``, as ``Invocation.key``) even
        if they are running: the ones returned will end, soon, through
        ``on_done`` with a ``CallCancelled`` error (a
        ``concurrent.futures.CancelledError``), whatever they had done; the
        others were not found running here (done, or never launched). Locally
        every process a call started ends with it; on Lambda the handler sees
        the call's cancel marker (``event["cancel_key"]``) within a few seconds.
        The default stops nothing (``Capabilities.cancel_running`` is False)."""
        return set()

    def stop_starting(self, reason: str) -> None:
        """From now on no call starts: queued calls wait (for the cancel that follows to take
        them back), and a call whose worker is lost is not run again: it ends
        ``CallCancelled`` naming ``reason``, with its run so far. For a process that stops
        its calls because it got SIGTERM (a spawned job's supervisor): a cgroup-wide stop
        (``systemctl stop``, ``docker stop``) sends it to the local workers too, they die
        of it, and a retry, or the next queued call, would start while the job is being
        cancelled. Called from a signal handler: no lock, no I/O. The default does nothing
        (a backend whose workers are not this machine's processes loses none to that signal)."""
        return None

    def wait_here(self, invocation: Invocation, until: float) -> None:
        """A thread is blocked on ``invocation``'s future: the backend may read
        the call's outcome on that thread, until ``time.time()`` reaches
        ``until`` at most, instead of its own thread reading it and then waking
        the waiter (one thread hand-off fewer on a call's way back). It returns
        early whenever it cannot; ``on_done`` is still called exactly once, on
        whichever thread read the outcome. The default does nothing."""
        return None

    @staticmethod
    def started(invocation: Invocation) -> None:
        """Report that ``invocation`` begins running (calls its ``on_start``);
        a failing hook never stops the backend."""
        hook = invocation.on_start
        if hook is not None:
            try:
                hook(invocation)
            except Exception:  # noqa: BLE001
                import logging

                logging.getLogger(__name__).exception("on_start callback failed")

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop workers/threads. ``wait=True`` drains: queued invocations still
        run and report; ``wait=False`` stops at once, failing what is pending
        (each through ``on_done``, once)."""
