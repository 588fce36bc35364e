"""A joblib backend that runs joblib's batches as wrenpack calls.

    import wrenpack.integrations.joblib          # or wrenpack.register_joblib()
    with joblib.parallel_config(backend="wrenpack"):
        GridSearchCV(...).fit(X, y)              # each batch of fits is one wrenpack call

Importing this module registers the backend under the name ``"wrenpack"``, as
Dask's ``distributed.joblib`` once did; ``register()`` does it again (Ray's
``register_ray()``, Lithops' ``register_lithops()``). Keyword arguments given
with the backend name choose the executor and the calls' options::

    joblib.parallel_config(backend="wrenpack", executor=ex, memory=2048, timeout=600)

How joblib's contract maps onto wrenpack:

- ``n_jobs`` is how many batches run at once: -1 (the default with this
  backend, as with Dask's) is the executor's concurrency, -2 one fewer, and so
  on; a positive ``n_jobs`` is capped at the executor's concurrency (more
  could only wait). An effective ``n_jobs`` of 1 makes joblib run the tasks in
  this process, as it does for every backend.
- A batch (joblib's ``BatchedCalls``, sized by joblib's auto-batching from how
  long batches take) is one call under the executor's limits; its functions
  come from modules your workers may not have, so those are pickled by value,
  as for ``@wrenpack.remote``.
- Results come back in joblib's order; a task's exception is raised by
  ``Parallel`` with its own type and the remote traceback as its cause;
  wrenpack's own failures (``MemoryLimitExceeded``, ``TaskTimeout``...) are
  raised as they are.
- When joblib gives up (a task failed, ``Parallel(timeout=...)`` ran out, a
  generator was closed), the batches not yet launched are dropped and the
  launched ones that have not started are cancelled; running ones finish and
  their results are discarded.
- Nested ``Parallel`` calls inside a task use joblib's default nested backend
  (threads) in the worker.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import threading
from typing import Any, Callable

from wrenpack import serialize
from wrenpack.errors import ConfigError, MissingDependency
from wrenpack.executor import Executor, check_options, default_executor

try:
    import joblib
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase
except ImportError:  # joblib is an optional dependency
    raise MissingDependency("wrenpack's joblib backend needs joblib: pip install joblib (scikit-learn brings it)") from None

__all__ = ["NAME", "WrenpackBackend", "register"]

#: the name joblib knows the backend by
NAME = "wrenpack"


class WrenpackBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` over a wrenpack ``Executor``: each
    batch joblib dispatches is one wrenpack call, at most ``n_jobs`` at once.

    Batches are launched (pickled and sent) by a short-lived thread of the
    backend's own, never by the thread that finished the previous call:
    pickling a batch's arguments there would hold up the results of every
    other call."""

    #: results are handed to joblib from the futures' callbacks (what joblib asks new backends for)
    supports_retrieve_callback = True
    #: n_jobs=None means every call the executor can run at once
    default_n_jobs = -1
    #: tasks run in other processes (or on Lambda): nothing is shared with this one
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 executor: Executor | None = None, **options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        source = f"the joblib backend {NAME!r}"
        if executor is not None and not isinstance(executor, Executor):
            raise ConfigError(f"executor={executor!r} (from {source}) must be a wrenpack.Executor")
        options = check_options(options, source)
        auto = sorted(name for name, value in options.items() if value == "auto")
        if auto:
            raise ConfigError(f"{auto[0]}='auto' (from {source}) needs a function's saved profile, which a joblib batch has not; give a number")
        self._given_executor = executor
        self._options = options
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        #: how many batches may be launched and not finished at once (``n_jobs``)
        self._limit = 1
        #: batches launched, or being launched, whose call has not finished
        self._in_flight = 0
        #: the futures of launched batches whose call has not finished
        self._running: set[cf.Future] = set()
        #: batches joblib dispatched that wait for a slot
        self._waiting: collections.deque[tuple[Any, _Completion]] = collections.deque()
        self._launcher_running = False
        #: bumped by ``abort_everything``: a launch that began before is cancelled when it ends
        self._generation = 0

    # -- what joblib asks -------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        concurrency = self.executor.capabilities.concurrency
        if n_jobs is None or n_jobs < 0:
            return max(concurrency + 1 + (n_jobs or -1), 1)
        return min(n_jobs, concurrency)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                  **backend_kwargs: Any) -> int:
        """Called by each ``Parallel`` call (its other keywords, joblib's
        memmapping and verbosity settings, do not apply to remote calls)."""
        self.parallel = parallel
        self._executor = None  # the default executor may have been replaced since (wrenpack.configure)
        n = self.effective_n_jobs(n_jobs)
        with self._lock:
            self._limit = n
        return n

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> cf.Future:
        """Queue the batch ``func`` for launch; ``callback`` gets its call's
        future once the call ends. Returns a future with the same outcome."""
        handle: cf.Future = cf.Future()
        with self._lock:
            self._waiting.append((func, _Completion(handle, callback)))
            self._start_launcher()
        return handle

    def retrieve_result_callback(self, out: cf.Future) -> Any:
        """The batch's results (a list, one per task), or its exception raised."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """joblib will not read the results: drop the batches not launched and
        cancel the launched ones that have not started (those running finish)."""
        with self._lock:
            self._waiting.clear()
            self._generation += 1
            running = list(self._running)
        for fut in running:
            fut.cancel()

    def terminate(self) -> None:
        """The ``Parallel`` call ended. The executor is not ours to stop (the
        default one, or the user's): its warm workers serve the next call."""
        self.abort_everything()
        self._executor = None

    # -- ours ---------------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        """The executor batches run on: the one given, else the default one."""
        if self._executor is None:
            self._executor = self._given_executor or default_executor()
        return self._executor

    def _start_launcher(self) -> None:
        """(Under the lock.) Start the launching thread if a batch waits for a
        free slot and no launcher runs; it ends when there is nothing to launch."""
        if self._waiting and self._in_flight < self._limit and not self._launcher_running:
            self._launcher_running = True
            threading.Thread(target=self._launch_waiting, name="wrenpack-joblib-launch", daemon=True).start()

    def _launch_waiting(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._in_flight >= self._limit:
                    self._launcher_running = False
                    return
                batch, completion = self._waiting.popleft()
                self._in_flight += 1
                generation = self._generation
            fut = self._launch(batch)
            with self._lock:
                aborted = generation != self._generation
                self._running.add(fut)
            if aborted:
                fut.cancel()
            fut.add_done_callback(functools.partial(self._finished, completion))
            batch = completion = fut = None  # (the call and joblib hold them now)

    def _launch(self, batch: Any) -> cf.Future:
        """One call running ``batch()``: its future, or a future holding the
        reason it could not be launched (joblib raises it from ``Parallel``)."""
        try:
            executor = self.executor
            # The tasks' functions, not joblib's batch object, name the modules
            # a worker may lack: those are pickled by value, as @wrenpack.remote does.
            modules: set[Any] = set()
            for fn, _args, _kwargs in getattr(batch, "items", ()):
                modules |= serialize.user_modules_of(fn)
            # Every batch runs as a call of one function, ``run_batch``: the calls then share their
            # worker's warm process (the function names it), where each batch as a function of its
            # own started a process and imported the tasks' packages again (scikit-learn, for a
            # grid search's 27 fits: 30-70 s instead of a few).
            with serialize.by_value(modules):
                return executor.launch(run_batch, [((batch,), {})], executor.options(**self._options),
                                       label=_label(batch))[0]
        except Exception as exc:  # noqa: BLE001 - raised by Parallel as a task's error would be
            failed: cf.Future = cf.Future()
            failed.set_exception(exc)
            return failed

    def _finished(self, completion: "_Completion", fut: cf.Future) -> None:
        """A batch's call ended: its slot goes to the next batch waiting, then joblib is told."""
        with self._lock:
            self._running.discard(fut)
            self._in_flight -= 1
            self._start_launcher()
        completion(fut)


class _Completion:
    """What is told when a batch's call ends: the future ``submit`` returned
    gets the outcome, and joblib's callback the call's future."""

    def __init__(self, handle: cf.Future, callback: Callable[[Any], None] | None) -> None:
        self.handle = handle
        self.callback = callback

    def __call__(self, fut: cf.Future) -> None:
        if fut.cancelled():
            self.handle.cancel()
        elif fut.exception() is not None:
            self.handle.set_exception(fut.exception())
        else:
            self.handle.set_result(fut.result())
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(fut)


def run_batch(batch: Callable[[], Any]) -> Any:
    """What a worker runs for a batch of joblib tasks: the batch."""
    return batch()


def _label(batch: Any) -> str:
    """``joblib batch of 3 x _fit_and_score``: what wrenpack's messages call the call."""
    items = getattr(batch, "items", None) or []
    names = sorted({_name(fn) for fn, _args, _kwargs in items})
    what = names[0] if len(names) == 1 else "mixed tasks"
    return f"joblib batch of {len(items)} x {what}"


def _name(fn: Any) -> str:
    inner = getattr(fn, "function", None)  # scikit-learn's delayed() wrapper keeps the function here
    if callable(inner):
        fn = inner
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def register() -> None:
    """Make ``"wrenpack"`` a joblib backend name (again: idempotent)."""
    joblib.register_parallel_backend(NAME, WrenpackBackend)


register()
