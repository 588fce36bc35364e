"""Backends run invocations: ``local`` (worker processes on this machine) and
``lambda`` (AWS Lambda). One module each; ``get_backend`` picks by name."""
from __future__ import annotations

from typing import Any

from wrenpack.backends.base import Backend, Invocation, InvocationResult
from wrenpack.errors import ConfigError

__all__ = ["Backend", "Invocation", "InvocationResult", "create_backend"]


def create_backend(name: str, config: Any) -> Backend:
    if name == "local":
        from wrenpack.backends.local import LocalBackend

        return LocalBackend.from_config(config)
    if name == "lambda":
        from wrenpack.backends.aws_lambda import LambdaBackend

        return LambdaBackend.from_config(config)
    raise ConfigError(f"unknown backend {name!r}; use 'local' or 'lambda'")
