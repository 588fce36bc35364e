"""Backends run invocations. A backend is one module (or folder) with a
``Backend`` subclass, named by one line in ``_BACKENDS``; ``register_backend``
adds one at run time (a plug-in, or a test's toy backend). Backend modules are
imported only when chosen."""
from __future__ import annotations

from typing import Any

from wrenpack.backends.base import Backend, Capabilities, Invocation, InvocationResult, PrivateReply
from wrenpack.errors import ConfigError
from wrenpack.plugins import Registry

__all__ = ["Backend", "Capabilities", "Invocation", "InvocationResult", "PrivateReply", "backend_names",
           "create_backend", "register_backend"]

#: name -> "module:Class" (a new backend is one module or folder and one line here)
_BACKENDS: Registry[Backend] = Registry("backend", {
    "local": "wrenpack.backends.local:LocalBackend",
    "lambda": "wrenpack.backends.aws:LambdaBackend",
})


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Make ``Executor(backend=name)`` and the ``backend`` setting use ``target``
    (a ``Backend`` subclass with ``from_config(config)``, or its "module:Class")."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"backend name {name!r} must be a short identifier, e.g. 'local'")
    _BACKENDS.register(name, target)


def backend_names() -> tuple[str, ...]:
    return _BACKENDS.names()


def backend_class(name: str) -> type[Backend]:
    return _BACKENDS.load(name)


def create_backend(name: str, config: Any) -> Backend:
    return backend_class(name).from_config(config)
