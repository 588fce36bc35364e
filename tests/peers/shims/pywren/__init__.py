"""PyWren's API (as PyWren's tests/test_simple.py uses it) mapped onto wrenpack.

Only what has a wrenpack meaning is mapped: ``default_executor()`` is an
executor whose ``call_async``/``map``/``reduce`` launch wrenpack calls and
return wrenpack futures; ``wait``/``get_all_results`` are ``wrenpack.wait`` and
``wrenpack.get``. PyWren's performance knobs of ``map`` (``invoke_pool_threads``,
``data_all_as_one``, ``use_cached_runtime``, ``overwrite_invoke_args``,
``exclude_modules``) change nothing a call computes and are accepted and
ignored; ``extra_env`` is wrenpack's ``env``; a future's ``cancel()`` is
``wrenpack.cancel`` (PyWren's stops a running call); ``extra_meta`` is refused (wrenpack
has no per-call metadata). PyWren's configuration dicts (``pywren.wrenconfig``,
``lambda_executor(config)``) have no counterpart and are not provided.

Every executor here shares one ``wrenpack.Executor`` (local backend, ten calls
at once: PyWren's tests expect many calls to run at once), built on first use
and shut down at interpreter exit.
"""
from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Iterable

import wrenpack
from pywren import runtime, wren  # noqa: F401 - PyWren's submodules the tests reach for
from pywren.wren import ALL_COMPLETED, ALWAYS, ANY_COMPLETED

_lock = threading.Lock()
_shared: wrenpack.Executor | None = None


def _executor() -> wrenpack.Executor:
    global _shared
    with _lock:
        if _shared is None:
            from tests.peers._adapter import PeerExecutor

            _shared = PeerExecutor(10)
            atexit.register(_shared.shutdown)
        return _shared


def _reduce(function: Callable[[list[Any]], Any], futures: list[Any]) -> Any:
    """Runs remotely: the futures travel as references to their calls."""
    return function([f.result() for f in futures])


class Executor:
    """``pywren.default_executor()``."""

    def __init__(self) -> None:
        self._ex = _executor()

    def call_async(self, func: Callable[[Any], Any], data: Any, extra_env: dict[str, str] | None = None,
                   extra_meta: dict[str, Any] | None = None) -> wrenpack.WrenFuture:
        return self.map(func, [data], extra_env, extra_meta)[0]

    def map(self, func: Callable[[Any], Any], iterdata: Iterable[Any], extra_env: dict[str, str] | None = None,
            extra_meta: dict[str, Any] | None = None, invoke_pool_threads: int = 64, data_all_as_one: bool = True,
            use_cached_runtime: bool = True, overwrite_invoke_args: Any = None, exclude_modules: Any = None) -> list[wrenpack.WrenFuture]:
        if extra_meta:
            raise TypeError("extra_meta: wrenpack calls carry no metadata of their own")
        fn = wrenpack.remote(func, executor=self._ex)
        if extra_env:
            fn = fn.options(env=dict(extra_env))
        futures = fn.map(list(iterdata))
        for fut in futures:
            # PyWren's ResponseFuture.cancel() stops the call, running or not: wrenpack.cancel
            # (a concurrent.futures Future's cancel() takes back only a call not started).
            fut.cancel = lambda fut=fut: wrenpack.cancel([fut])[0]
        return futures

    def reduce(self, function: Callable[[list[Any]], Any], list_of_futures: list[Any], extra_env: dict[str, str] | None = None,
               extra_meta: dict[str, Any] | None = None) -> wrenpack.WrenFuture:
        return self.map(lambda futs: _reduce(function, futs), [list(list_of_futures)], extra_env, extra_meta)[0]


def default_executor(**kwargs: Any) -> Executor:
    if kwargs:
        raise TypeError(f"default_executor({', '.join(kwargs)}=...): PyWren's configuration has no wrenpack counterpart here")
    return Executor()


def wait(fs: list[Any], return_when: int = ALL_COMPLETED, THREADPOOL_SIZE: int = 64, WAIT_DUR_SEC: float = 5) -> tuple[list[Any], list[Any]]:
    """PyWren's ``wait``: lists (in the order given) of the futures done and not done."""
    if return_when == ALWAYS:
        done, _ = wrenpack.wait(fs, timeout=0)
    elif return_when == ANY_COMPLETED:
        done, _ = wrenpack.wait(fs, return_when=wrenpack.FIRST_COMPLETED)
    elif return_when == ALL_COMPLETED:
        done, _ = wrenpack.wait(fs)
    else:
        raise ValueError(f"return_when={return_when!r}")
    return [f for f in fs if f in done], [f for f in fs if f not in done]


def get_all_results(fs: list[Any]) -> list[Any]:
    return wrenpack.get(fs)
