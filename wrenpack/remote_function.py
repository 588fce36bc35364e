"""``@wrenpack.remote``: a plain function that can also run as remote calls.

A thin decorator over the executor: it keeps the function, its options and
its ``LaunchState``, and every launch goes through ``executor.launch_calls``."""
from __future__ import annotations

import functools
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar, overload

from wrenpack.errors import ConfigError, ConfigTypeError, ExecutorShutdown
from wrenpack.executor import Executor, LaunchState, check_executor, check_options, default_executor, launch_calls
from wrenpack.executor.arguments import check_call, check_calls, check_keywords
from wrenpack.executor.batching import check_chunksize
from wrenpack.futures import WrenFuture
from wrenpack.job import Job
from wrenpack.job.spawn import spawn_calls

T = TypeVar("T")


class RemoteFunction(Generic[T]):
    """A function with ``.remote``, ``.map`` and ``.starmap``; calling it runs it here."""

    def __init__(self, fn: Callable[..., T], /, executor: Executor | None = None, _source: str = "@wrenpack.remote", **options: Any) -> None:
        if not callable(fn):
            raise ConfigTypeError(f"@wrenpack.remote needs a function, got {type(fn).__name__}")
        check_executor(executor, _source)
        options = check_options(options, _source)
        # Name, docstring and __wrapped__ of the function, but never its
        # attributes: they would overwrite this object's own (an attribute
        # named ``fn`` of a callable object, say).
        functools.update_wrapper(self, fn, updated=())
        self.fn = fn
        self._executor = executor
        self._options = options
        self._state = LaunchState()

    def __get__(self, instance: Any, owner: type | None = None) -> "RemoteFunction[T]":
        """``@wrenpack.remote`` on a method: looked up on an instance, the function
        is bound to it as a plain method is, so ``obj.m(x)``, ``obj.m.remote(x)``
        and ``obj.m.map(xs)`` pass ``obj`` as ``self`` (it travels with each
        call). On the class, or when the wrapped callable binds nothing (a
        builtin, a ``functools.partial``, a staticmethod's function), this
        function itself. Only attribute lookups on instances come here: a
        module-level function's calls never do."""
        bind = getattr(type(self.fn), "__get__", None)
        if instance is None or bind is None:
            return self
        method = bind(self.fn, instance, owner)
        if method is self.fn:
            return self
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)  # (name, docstring, executor, options)
        bound.fn = bound.__wrapped__ = method  # (its signature is the bound method's: no self)
        bound._state = LaunchState()  # (what a launch keeps is for one function object: not shared with the unbound one)
        return bound

    # -- local ------------------------------------------------------------------
    def __call__(self, /, *args: Any, **kwargs: Any) -> T:
        return self.fn(*args, **kwargs)

    def local(self, /, *args: Any, **kwargs: Any) -> T:
        """Run here, in this process: no backend, no limits."""
        return self.fn(*args, **kwargs)

    # -- remote -----------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        return self._executor or default_executor()

    def options(self, /, **options: Any) -> "RemoteFunction[T]":
        """A copy with some options changed: ``f.options(memory=2048).map(...)``,
        ``f.options(env={"OMP_NUM_THREADS": "1"}, retry_on=(ConnectionError,))``."""
        executor = options.pop("executor", self._executor)
        copy = RemoteFunction(self.fn, executor=executor, _source="options()", **{**self._options, **options})
        copy._state.shape = self._state.shape  # (the same function: its signature, if read, need not be read again)
        return copy

    def remote(self, /, *args: Any, **kwargs: Any) -> WrenFuture:
        """Run one call remotely; returns its future. Every keyword is the function's.
        Arguments the function cannot take are refused here, before launch."""
        check_call(self.fn, args, kwargs, self._state, "remote()")
        executor = self._executor or default_executor()
        try:
            return launch_calls(executor, self.fn, [(args, kwargs)], self._options, None, self._state)[0]
        except ExecutorShutdown as exc:
            return self._on_new_default(exc, executor, [(args, kwargs)], None)[0]

    def map(self, items: Iterable[Any], /, *, chunksize: int | str | None = None, **kwargs: Any) -> list[WrenFuture]:
        """One call per item, ``fn(item, **kwargs)``; futures in the items' order.

        ``chunksize=k`` runs k consecutive calls per invocation (each keeps its
        own future); the limits then apply to the whole group. ``chunksize="auto"``
        groups calls that the function's saved profile says are short, so each
        invocation runs about a second (never more than half its timeout)."""
        if chunksize is not None:
            chunksize = check_chunksize(chunksize, "map()")
        if kwargs:
            check_keywords(self.fn, kwargs, "map()", self._state)
        calls = [((item,), kwargs) for item in _iterate(items, "map()")]
        # (every call is fn(item, **kwargs): the first one fits or none does)
        check_calls(self.fn, calls[:1], "map()", self._state, hint=_map_hint)
        return self._launch(calls, chunksize)

    def starmap(self, items: Iterable[Iterable[Any]], /, *, chunksize: int | str | None = None, **kwargs: Any) -> list[WrenFuture]:
        """One call per argument tuple, ``fn(*item, **kwargs)``."""
        if chunksize is not None:
            chunksize = check_chunksize(chunksize, "starmap()")
        if kwargs:
            check_keywords(self.fn, kwargs, "starmap()", self._state)
        calls = [(item if type(item) is tuple else _arguments(item, i), kwargs)
                 for i, item in enumerate(_iterate(items, "starmap()"))]
        check_calls(self.fn, calls, "starmap()", self._state)  # (each item: none launches if one does not fit)
        return self._launch(calls, chunksize)

    def _launch(self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], chunksize: Any) -> list[WrenFuture]:
        executor = self._executor or default_executor()
        try:
            return launch_calls(executor, self.fn, calls, self._options, chunksize, self._state)
        except ExecutorShutdown as exc:
            return self._on_new_default(exc, executor, calls, chunksize)

    def _on_new_default(self, exc: ExecutorShutdown, executor: Executor,
                        calls: list[tuple[tuple[Any, ...], dict[str, Any]]], chunksize: Any) -> list[WrenFuture]:
        """A launch found ``executor`` shut down. When it is the default one, that was
        ``configure()`` retiring it (in another thread, or while the arguments were
        pickled) after this launch looked it up: the user shut nothing down, so the
        new default executor takes the calls. None was launched on the old one (a
        launch that meets a shut-down executor starts none of its calls; with
        "auto" settings, whose groups of calls launch one after another, that is
        not sure, and the error is raised). An executor given to the function is
        the user's own: its shutdown is raised, as at interpreter exit."""
        while True:
            if self._executor is not None or executor._exited or any(
                    self._options.get(name) == "auto" for name in ("memory", "timeout", "ephemeral_storage")):
                raise exc
            new = default_executor()
            if new is executor:
                raise exc
            executor = new
            try:
                return launch_calls(executor, self.fn, calls, self._options, chunksize, self._state)
            except ExecutorShutdown as again:
                exc = again

    def spawn_map(self, items: Iterable[Any], /, *, retention: Any = None, chunksize: Any = None, **kwargs: Any) -> "Job":
        """Like ``map``, as a job that outlives this program: returns a
        ``wrenpack.Job`` at once (``.id``, ``.futures()``, ``.status()``,
        ``.cancel()``, ``.results()``), and the calls go on after this process
        exits or is killed. Any process of yours attaches with
        ``wrenpack.attach(job.id)``. Results stay in the store for
        ``retention`` (seconds, or "7d"/"12h"; default 7 days) for
        ``wrenpack clean --stale`` to remove after."""
        if chunksize is not None:
            raise ConfigError(f"spawn_map runs one invocation per call; chunksize={chunksize!r} is for .map() "
                              "(leave it out, or group the items yourself)")
        calls = [((item,), kwargs) for item in _iterate(items, "spawn_map()")]
        return spawn_calls(self.executor, self.fn, calls, self._options, retention)

    def spawn(self, /, *args: Any, **kwargs: Any) -> "Job":
        """One call as a job that outlives this program (``spawn_map`` of one
        call; every keyword is the function's)."""
        return spawn_calls(self.executor, self.fn, [(args, kwargs)], self._options)

    def launch_parts(self) -> tuple[Callable[..., T], dict[str, Any], LaunchState]:
        """What an executor's ``submit``/``map`` and ``map_reduce`` launch: the
        function, its options, its launch state."""
        return self.fn, dict(self._options), self._state

    @property
    def bound_executor(self) -> Executor | None:
        """The executor given to this function, if any (else the default is used)."""
        return self._executor

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside a worker a remote function is called as a plain function: its
        # executor and launch state stay behind.
        return (RemoteFunction, (self.fn,), {"_options": self._options})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._options = state.get("_options", {})

    def __repr__(self) -> str:
        return f"<RemoteFunction {getattr(self.fn, '__qualname__', self.fn)}>"


def _iterate(items: Any, what: str) -> Iterator[Any]:
    """An iterator over a map's items, or one line saying they are no iterable
    (the bare ``'int' object is not iterable`` named neither the map nor the fix)."""
    try:
        return iter(items)
    except TypeError:
        raise ConfigTypeError(f"{what} takes an iterable of items (a list, a range, a generator), one call each, not "
                              f"{type(items).__name__}; for one call, use .remote()") from None


def _map_hint(kwargs: dict[str, Any]) -> str:
    """What ``map`` passes: a function of more than one argument wants ``starmap``."""
    return " (map() calls it as fn(item, **keywords) for each item; for tuples of arguments use starmap())"


def _arguments(item: Any, index: int) -> tuple[Any, ...]:
    """A starmap item as the call's positional arguments."""
    try:
        args = iter(item)
    except TypeError:
        raise ConfigTypeError(f"starmap() takes an iterable of argument tuples, but item {index} is "
                              f"{type(item).__name__} {item!r:.40}; pass [(a, b), ...], or use map() for one "
                              "argument per call") from None
    return tuple(args)


@overload
def remote(fn: Callable[..., T], **options: Any) -> RemoteFunction[T]: ...
@overload
def remote(fn: None = None, **options: Any) -> Callable[[Callable[..., T]], RemoteFunction[T]]: ...


def remote(fn: Callable[..., T] | None = None, **options: Any) -> Any:
    """Decorate a function so it can run as remote calls.

    Options (all optional; Lambda units): ``memory`` (MB, or "auto" from its
    profile), ``timeout`` (s, or "auto"), ``retries`` (how often a call is tried
    again after a worker crash, or an exception listed in ``retry_on``),
    ``retry_on`` (exception types, e.g. ``(ConnectionError, wrenpack.TaskTimeout)``),
    ``env`` (environment variables for the calls), ``ephemeral_storage`` (MB of
    /tmp), ``runtime`` (a built runtime directory), ``executor`` (an
    ``Executor`` instead of the default one).
    """
    executor = options.pop("executor", None)
    if fn is None:
        return lambda f: RemoteFunction(f, executor=executor, **options)
    return RemoteFunction(fn, executor=executor, **options)
