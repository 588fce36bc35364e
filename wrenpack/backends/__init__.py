"""Backends run invocations. A backend is one module (or folder) with a
``Backend`` subclass, named by one line in ``_BACKENDS``; ``register_backend``
adds one at run time (a plug-in, or a test's toy backend). Backend modules are
imported only when chosen."""
from __future__ import annotations

import importlib
from typing import Any

from wrenpack.backends.base import Backend, Capabilities, Invocation, InvocationResult, PrivateReply
from wrenpack.errors import ConfigError

__all__ = ["Backend", "Capabilities", "Invocation", "InvocationResult", "PrivateReply", "backend_names",
           "create_backend", "register_backend"]

#: name -> "module:Class" (or the class itself, once registered or loaded)
_BACKENDS: dict[str, Any] = {
    "local": "wrenpack.backends.local:LocalBackend",
    "lambda": "wrenpack.backends.aws:LambdaBackend",
}


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Make ``Executor(backend=name)`` and the ``backend`` setting use ``target``
    (a ``Backend`` subclass with ``from_config(config)``, or its "module:Class")."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"backend name {name!r} must be a short identifier, e.g. 'local'")
    _BACKENDS[name] = target


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    target = _BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(map(repr, _BACKENDS))}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return target


def create_backend(name: str, config: Any) -> Backend:
    return backend_class(name).from_config(config)
