"""Configuration, resolved in one place.

Precedence, highest first: arguments (to ``remote``/``Executor``/``configure``)
> environment variables ``WRENPACK_<FIELD>`` > ``[tool.wrenpack]`` in the
nearest pyproject.toml (searched upward from the working directory) > defaults.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wrenpack.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _default_storage() -> str:
    # Job objects live only until their results are read (unless keep_objects),
    # so a memory-backed filesystem suits them: creating a file there costs a
    # tenth of what it costs on a journaled disk, and a map creates one per call.
    import tempfile

    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"wrenpack-{os.getuid()}", "store")


@dataclass(frozen=True)
class Config:
    """Every setting wrenpack reads. Units are Lambda's: MB (MiB) and seconds."""

    #: where calls run: "local" (worker processes here) or "lambda"
    backend: str = "local"
    #: the object store: a path, file:///path, or s3://bucket/prefix
    storage: str = field(default_factory=_default_storage)
    #: how many calls run at once (local: worker processes; lambda: invocations in flight)
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: per-call memory limit, MB (Lambda: 128..10240)
    memory: int = 1024
    #: per-call time limit, seconds (Lambda: at most 900)
    timeout: float = 300.0
    #: per-call /tmp size limit, MB (Lambda: 512..10240)
    ephemeral_storage: int = 512
    #: how often a call whose worker crashed is tried again
    retries: int = 1
    #: arguments whose pickle is at most this many bytes travel inside the event
    inline_limit: int = 64 * 1024
    #: keep a job's objects in the store after its results are read
    keep_objects: bool = False
    #: show a progress bar in ``wrenpack.get`` (None: only on a terminal)
    progress: bool | None = None
    #: a runtime built by ``wrenpack build-runtime`` for the workers (local: only it is importable)
    runtime: str | None = None
    #: seconds an idle local worker stays warm
    keep_warm: float = 300.0
    # --- AWS ---
    function_name: str = "wrenpack-worker"
    aws_region: str | None = None
    aws_profile: str | None = None
    s3_endpoint_url: str | None = None
    lambda_endpoint_url: str | None = None
    invocation_type: str = "Event"

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **_coerce_all(changes, "argument"))

    @classmethod
    def load(cls, start: str | os.PathLike[str] | None = None, **overrides: Any) -> "Config":
        values: dict[str, Any] = {}
        values.update(_coerce_all(_pyproject_settings(start), "[tool.wrenpack]"))
        values.update(_coerce_all(_env_settings(), "environment"))
        values.update(_coerce_all({k: v for k, v in overrides.items() if v is not None}, "argument"))
        return cls(**values)


_FIELDS = {f.name: f for f in fields(Config)}
_ENV_PREFIX = "WRENPACK_"
_global_overrides: dict[str, Any] = {}


def _coerce_all(values: dict[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown wrenpack setting {name!r} (from {source}); known: {', '.join(sorted(_FIELDS))}")
        out[name] = _coerce(name, value, source)
    return out


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _FIELDS[name].type
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if value is None:
            return None
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                if low in ("", "auto", "none") and "None" in kind:
                    return None
                raise ValueError(value)
            return bool(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r} from {source} must be {kind.split(' ')[0]}, got {value!r}") from None


def _env_settings() -> dict[str, Any]:
    out = {}
    for key, value in os.environ.items():
        if key.startswith(_ENV_PREFIX):
            name = key[len(_ENV_PREFIX):].lower()
            if name in _FIELDS:
                out[name] = value
    return out


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _pyproject_settings(start: str | os.PathLike[str] | None) -> dict[str, Any]:
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix the file or its [tool.wrenpack] table") from None
    table = data.get("tool", {}).get("wrenpack", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.wrenpack] in {path} must be a table")
    # Relative storage paths are relative to the pyproject's directory.
    if isinstance(table.get("storage"), str) and "://" not in table["storage"]:
        table = dict(table, storage=str((path.parent / os.path.expanduser(table["storage"])).resolve()))
    return table


def configure(**settings: Any) -> Config:
    """Set process-wide settings (they rank as arguments) and return the result.

    The default executor is rebuilt on its next use so new settings apply."""
    _coerce_all(settings, "argument")
    _global_overrides.update(settings)
    from wrenpack import executor

    executor.reset_default_executor()
    return current()


def current(**overrides: Any) -> Config:
    merged = dict(_global_overrides)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Config.load(**merged)
