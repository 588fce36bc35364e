"""Configuration, resolved in one place.

Precedence, highest first: arguments (to ``remote``/``Executor``/``configure``)
> environment variables ``WRENPACK_<FIELD>`` > ``[tool.wrenpack]`` in the
nearest pyproject.toml (searched upward from the working directory) > defaults.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from wrenpack import limits
from wrenpack.errors import ConfigError, ConfigTypeError
from wrenpack.storage import parse_store_url, store_location_problem

log = logging.getLogger("wrenpack")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: how long a spawned job's objects stay when neither ``retention=`` nor the setting says
DEFAULT_RETENTION_S = 7 * 24 * 3600.0


#: the longest retention (s): 100 years. Longer ones are not dates (a time_t of 1e300 s
#: made `wrenpack jobs show` and `wrenpack clean --stale` fail), and not meant: a job kept
#: that long is one to remove by name (`wrenpack clean ID`).
MAX_RETENTION_S = 100 * 365 * 86400.0


def parse_retention(value: Any, source: str = "retention=") -> float:
    """A retention in seconds: a number above 0, or text such as ``"7d"``,
    ``"12h"``, ``"30m"``, ``"90s"``, at most 100 years; a ``ConfigError`` naming ``source`` otherwise."""
    seconds: Any = value
    if isinstance(value, str):
        text = value.strip().lower()
        unit = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}.get(text[-1:], None)
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{source} {value!r} must be a number of seconds above 0, or text such as '7d', '12h' or '30m'")
    if seconds > MAX_RETENTION_S:
        raise ConfigError(f"{source} {value!r} is longer than 100 years; give at most '36500d' (a job kept until you "
                          "remove it: `wrenpack clean ID` removes it whatever its retention)")
    return float(seconds)


def default_storage() -> str:
    """The ``storage`` setting's default: a folder on this machine, whatever the backend
    (the lambda backend refuses it, naming it as the default: ``clients.non_s3_storage``)."""
    # Job objects live only until their results are read (unless keep_objects),
    # so a memory-backed filesystem suits them: creating a file there costs a
    # tenth of what it costs on a journaled disk, and a map creates one per call.
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"wrenpack-{os.getuid()}", "store")


@dataclass(frozen=True)
class Config:
    """Every setting wrenpack reads. Units are Lambda's: MB (MiB) and seconds."""

    #: where calls run: "local" (worker processes here) or "lambda"
    backend: str = "local"
    #: the object store: a path, file:///path, or s3://bucket/prefix
    storage: str = field(default_factory=default_storage)
    #: how many calls run at once (local: worker processes, default the CPU count;
    #: lambda: invocations in flight, default 100)
    concurrency: int | None = None
    #: per-call memory limit, MB (Lambda: 128..10240)
    memory: int = 1024
    #: per-call time limit, seconds (Lambda: at most 900)
    timeout: float = 300.0
    #: per-call /tmp size limit, MB (Lambda: 512..10240)
    ephemeral_storage: int = 512
    #: how often a call whose worker crashed is tried again
    retries: int = 1
    #: arguments whose pickle is at most this many bytes travel inside the event (less where
    #: the backend's events hold less: ``Capabilities.event_limit``, Lambda's request limit)
    inline_limit: int = 64 * 1024
    #: keep a job's objects in the store after its results are read
    keep_objects: bool = False
    #: what ``wrenpack.get`` shows while it waits (``wrenpack.progress``): None (a bar on a
    #: terminal, a widget in a notebook), True (also log lines elsewhere), False, or a
    #: display by name: "bar", "notebook", "log"
    progress: bool | str | None = None
    #: a runtime built by ``wrenpack build-runtime`` for the workers (local: only it is importable)
    runtime: str | None = None
    #: seconds an idle local worker stays warm
    keep_warm: float = 300.0
    #: how long a spawned job's objects stay in the store (``f.spawn_map``): seconds,
    #: or text such as "7d", "12h", "30m"; ``wrenpack clean`` removes them afterwards
    job_retention: float = DEFAULT_RETENTION_S
    # --- AWS ---
    function_name: str = "wrenpack-worker"
    aws_region: str | None = None
    aws_profile: str | None = None
    s3_endpoint_url: str | None = None
    lambda_endpoint_url: str | None = None
    invocation_type: str = "Event"
    #: the Lambda functions' instruction set: "x86_64" or "arm64" (part of which function a call runs on)
    architecture: str = "x86_64"
    #: create the Lambda function for a settings set on its first use (copying a deployed one's role and runtime)
    lambda_auto_deploy: bool = False
    #: child processes that make the Lambda backend's requests with boto3 clients of their own,
    #: off the driver's GIL (0: the driver's threads send); worth it with a core each to spare
    lambda_send_processes: int = 0

    def __post_init__(self) -> None:
        # Whatever built it (load, replace, Config(...)), a Config holds only valid values.
        for name in _FIELDS:
            object.__setattr__(self, name, _coerce(name, getattr(self, name), "Config"))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **_coerce_all(changes, "argument"))

    @classmethod
    def load(cls, start: str | os.PathLike[str] | None = None, **overrides: Any) -> "Config":
        values: dict[str, Any] = {}
        values.update(_coerce_all(_pyproject_settings(start), "[tool.wrenpack]"))
        values.update({k: _coerce(k, v, f"environment variable {_ENV_PREFIX}{k.upper()}") for k, v in _env_settings().items()})
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
    """``value`` checked and converted for setting ``name``; a ``ConfigError``
    naming the setting, where it came from and what is allowed otherwise."""
    kind = _FIELDS[name].type
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if value is None:
        return None
    if "None" in kind and isinstance(value, str) and value.strip().lower() in ("", "auto", "none"):
        return None
    if isinstance(value, str) and name in NOT_TEXT and source in _ARGUMENT_SOURCES:
        refuse_text(name, value, source)
    check = _CHECKS.get(name)
    if check is not None:
        return check(value, source)
    if kind.startswith("bool"):
        flag = _flag(value)
        if flag is None:
            raise ConfigError(f"setting {name!r}={value!r} (from {source}) must be true or false")
        return flag
    if not isinstance(value, str):
        raise ConfigTypeError(f"setting {name!r}={value!r} (from {source}) must be text")
    return value


#: where a setting comes as a Python value (not as text read from WRENPACK_* or [tool.wrenpack])
_ARGUMENT_SOURCES = ("argument", "configure()", "Config")
#: the settings that are numbers or flags, and what each must be: given as text in an argument
#: (``Executor(concurrency="4")``) they are the wrong type, a ``ConfigTypeError`` as the README says;
#: only the environment and pyproject give text, and there it is read as the number it spells
NOT_TEXT = {
    "concurrency": "a whole number", "memory": "a whole number of MB", "timeout": "a number of seconds",
    "ephemeral_storage": "a whole number of MB", "retries": "a whole number", "inline_limit": "a whole number",
    "keep_warm": "a number of seconds", "lambda_send_processes": "a whole number", "keep_objects": "True or False",
    "lambda_auto_deploy": "True or False",
}


def refuse_text(name: str, value: str, source: str) -> None:
    """The ``ConfigTypeError`` for text given as an argument where setting (or option) ``name`` takes
    a number or a flag: ``memory="512"`` was read as 512, as from WRENPACK_MEMORY, while the README
    promises a type error; the fix names the value the text spells, when it spells one."""
    try:
        meant = _CHECKS[name](value, source) if name in _CHECKS else _flag(value)
    except ConfigError as exc:  # (text that spells no value: the check's own line, what is allowed, as a type error)
        raise ConfigTypeError(str(exc)) from None
    fix = f"pass {name}={meant!r}" if meant is not None else f"pass {NOT_TEXT[name]}"
    raise ConfigTypeError(f"{name}={value!r} (from {source}) is text, but must be {NOT_TEXT[name]}; {fix} "
                          f"(text is read only from {_ENV_PREFIX}{name.upper()} and [tool.wrenpack])")


def _flag(value: Any) -> bool | None:
    """``value`` as a boolean (1/0, true/false, yes/no, on/off), None if it is none of them."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    elif isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    return None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(var: str) -> bool:
    """A WRENPACK_* switch that is not a setting (``WRENPACK_NO_CGROUPS``): unset or
    empty is false; anything but a boolean word is a ``ConfigError``, so a typo
    ("maybe", "ture") is not read as yes."""
    value = os.environ.get(var, "")
    if not value.strip():
        return False
    flag = _flag(value)
    if flag is None:
        raise ConfigError(f"environment variable {var}={value!r} must be a boolean word: "
                          f"{'/'.join(_TRUE)} or {'/'.join(_FALSE)}")
    return flag


def cache_dir() -> str:
    """wrenpack's cache directory (the runtime cache, the owner key, the profiler's package
    maps, the local workers' shim folders): ``WRENPACK_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/wrenpack``, else ``~/.cache/wrenpack``. A relative
    ``XDG_CACHE_HOME`` is ignored, as the XDG spec says (read against each
    process's working directory, it gave each its own owner key)."""
    env = os.environ.get("WRENPACK_CACHE_DIR", "")
    if env.strip():
        return _env_path("WRENPACK_CACHE_DIR", env)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wrenpack")


def _env_path(var: str, value: str) -> str:
    """The absolute path a WRENPACK_* directory variable names (``~`` expanded).

    A relative one is refused: each process would read it against its own working
    directory (a CLI run from elsewhere, a worker), so the driver's owner key, the
    runtime cache and the profiles would each be a different folder. A value with
    spaces around it (``' /abs'``, ``'/abs '``: a quoting slip) is refused too: the
    path would begin or end with a space."""
    path = os.path.expanduser(value)
    meant = os.path.abspath(os.path.expanduser(value.strip()))  # (what the fix suggests)
    if value != value.strip():
        raise ConfigError(f"environment variable {var}={value!r} has spaces around it (a quoting slip?); "
                          f"remove them: {var}={meant}")
    if path.startswith("~"):
        raise ConfigError(f"environment variable {var}={value!r}: {path.split(os.sep)[0]} names no user here; "
                          "use an absolute path")
    if not os.path.isabs(path):
        raise ConfigError(f"environment variable {var}={value!r} is a relative path, which each process would "
                          f"read against its own working directory; use an absolute path, e.g. {var}={meant}")
    return path


#: directories a WRENPACK_* variable named that proved usable (created, writable)
_usable_dirs: set[tuple[str, str]] = set()


def env_directory(var: str) -> str | None:
    """The directory a WRENPACK_* variable names (``WRENPACK_CACHE_DIR``,
    ``WRENPACK_PROFILE_DIR``), created if missing; None when unset or empty. A
    path that cannot be created or written in is a ``ConfigError`` naming the
    variable and why, here, rather than an OSError deep in whatever writes there."""
    value = os.environ.get(var, "")
    if not value.strip():
        return None
    path = _env_path(var, value)
    if (var, path) in _usable_dirs:
        return path
    why = None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        why = "it is not a directory" if os.path.exists(path) else f"cannot create it: {exc.strerror or exc}"
    if why is None:
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".wrenpack-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = f"cannot write in it: {exc.strerror or exc}"
    if why is not None:
        raise ConfigError(f"environment variable {var}={value!r} is not a usable directory ({why}); "
                          "point it at a folder you can write to, or unset it")
    _usable_dirs.add((var, path))
    return path


#: WRENPACK_* variables that are not settings but have a form wrenpack checks when it loads the settings
_ENV_CHECKS: dict[str, Callable[[str], Any]] = {
    "WRENPACK_NO_CGROUPS": env_flag,
    "WRENPACK_CACHE_DIR": env_directory,
    "WRENPACK_PROFILE_DIR": env_directory,
}


def _at_least(name: str, low: int, inclusive: bool = True, real: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, source: str) -> Any:
        what = ("a number of seconds" if real else "a whole number") + (f" >= {low}" if inclusive else f" > {low}")
        out = limits.real_number(name, value, source, what) if real else limits.whole_number(name, value, source, what)
        if out < low or (not inclusive and out == low):
            raise ConfigError(f"{name}={value!r} (from {source}) must be {what}")
        return out

    return check


def _one_of(name: str, allowed: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, source: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} (from {source}) must be one of {', '.join(map(repr, allowed))}")
        return str(value)

    return check


#: the displays ``progress`` may name (``wrenpack.progress``)
PROGRESS_MODES = ("bar", "notebook", "log")


def check_progress(value: Any, source: str) -> bool | str | None:
    """A ``progress`` value: None (automatic), True, False, or one of ``PROGRESS_MODES``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("", "auto", "none"):
            return None
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        if low in PROGRESS_MODES:
            return low
    raise ConfigError(f"progress={value!r} (from {source}) must be true, false, auto or one of {', '.join(map(repr, PROGRESS_MODES))}")


def _storage(value: Any, source: str) -> Any:
    """A store URL or path (checked as the store will read it: a ``ConfigError``
    now, not a store somewhere unexpected later), a spec dict, or a ``Store``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        problem = store_location_problem(value)  # (first: " s3://b/x" is a quoting slip, not an unknown scheme)
        if problem is not None:
            raise ConfigError(f"storage={value!r} (from {source}): {problem}")
        try:
            spec = parse_store_url(value)
        except ConfigError as exc:
            raise ConfigError(f"storage={value!r} (from {source}): {exc}") from None
        if spec["type"] == "local" and source.startswith("environment variable") \
                and not value.startswith("file://") and not os.path.isabs(os.path.expanduser(value)):
            # (as WRENPACK_CACHE_DIR: every process that inherits the variable, a CLI run from another
            # folder, reads it against its own working directory, each a different store)
            problem = (f"a relative path, which each process would read against its own working directory; use an "
                       f"absolute path, e.g. {spec['root']}")
        if problem is not None:
            raise ConfigError(f"storage={value!r} (from {source}): {problem}")
        if spec["type"] == "s3" and value.endswith("/"):  # (the same folder: "s3://b/x/" is "s3://b/x")
            value = value.rstrip("/")
        return value
    if isinstance(value, dict) or hasattr(value, "spec"):  # a spec, or a ready Store
        return value
    raise ConfigTypeError(f"storage={value!r} (from {source}) must be a path, file:///path or s3://bucket/prefix "
                          f"(text), or a wrenpack Store, not {type(value).__name__}")


#: a ``function_name``: wrenpack names each Lambda function ``<function_name>-<10 hex digits>`` (at most 64)
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,53}")


def _function_name(value: Any, source: str) -> str:
    if not isinstance(value, str) or not _FUNCTION_NAME.fullmatch(value):
        raise ConfigError(f"function_name={value!r} (from {source}) must be 1 to 53 letters, digits, '-' or '_' "
                          "(wrenpack appends -<settings hash> to name each Lambda function); unset it for 'wrenpack-worker'")
    return value


def _registered_backend(value: Any, source: str) -> str:
    from wrenpack.backends import backend_names

    names = backend_names()
    if value not in names:
        raise ConfigError(f"backend={value!r} (from {source}) must be one of {', '.join(map(repr, names))}")
    return str(value)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "backend": lambda v, src: _registered_backend(v, src),
    "memory": lambda v, src: limits.check_memory(v, src),
    "timeout": lambda v, src: limits.check_timeout(v, src),
    "ephemeral_storage": lambda v, src: limits.check_ephemeral(v, src),
    "concurrency": _at_least("concurrency", 1),
    "retries": lambda v, src: limits.check_retries(v, src),
    "storage": lambda v, src: _storage(v, src),
    "function_name": lambda v, src: _function_name(v, src),
    "inline_limit": _at_least("inline_limit", 0),
    "lambda_send_processes": _at_least("lambda_send_processes", 0),
    "keep_warm": _at_least("keep_warm", 0, inclusive=False, real=True),
    "invocation_type": _one_of("invocation_type", ("Event", "RequestResponse")),
    "architecture": _one_of("architecture", limits.ARCHITECTURES),
    "progress": check_progress,
    "job_retention": lambda v, src: parse_retention(v, f"setting 'job_retention' (from {src})"),
}

#: WRENPACK_* variables that are not settings but are read elsewhere (internal
#: or tool-specific); anything else unknown is warned about as a likely typo
_OTHER_ENV = {
    "CACHE_DIR", "DEPLOYED_PYTHON", "FUNCTION_FAMILY", "FUNCTION_SETTINGS", "EPHEMERAL_STORAGE_MB", "LOCAL_WORKER", "NO_CGROUPS", "PROFILE_DIR",
    "RUNTIME_ARCHIVE", "RUNTIME_ROOT", "RUNTIME_SHA256", "RUNTIME_TMP_MB", "SKIP_AWS_TESTS", "STORE_URL", "TEST_CACHE",
    # (what `wrenpack deploy` gives a Lambda function, and the zygote's marker: read by the worker, no setting;
    # a call there that launches calls of its own read its settings from that environment, and each call's
    # output said "ignoring unknown environment variable WRENPACK_VERSION" and WRENPACK_EVENT_PROTOCOL)
    "EVENT_PROTOCOL", "VERSION", "ZYGOTE",
}
_warned_env: set[str] = set()


def _env_settings() -> dict[str, Any]:
    out = {}
    for key, value in os.environ.items():
        if key.startswith(_ENV_PREFIX):
            name = key[len(_ENV_PREFIX):].lower()
            if name in _FIELDS:
                out[name] = value
            elif key in _ENV_CHECKS:
                _ENV_CHECKS[key](key)
            elif name.upper() not in _OTHER_ENV and key not in _warned_env:
                _warned_env.add(key)
                import difflib

                close = difflib.get_close_matches(name, list(_FIELDS), n=1)
                hint = f"; did you mean {_ENV_PREFIX}{close[0].upper()}?" if close else ""
                log.warning("ignoring unknown environment variable %s: not a wrenpack setting%s", key, hint)
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


#: called after ``configure`` changes settings (the executor module registers
#: one that retires the default executor); config imports nothing of the client
_on_configure: list[Callable[[], None]] = []


def configure(**settings: Any) -> Config:
    """Set process-wide settings (they rank as arguments) and return the result.

    The default executor is rebuilt on its next use so new settings apply; the
    old one finishes the calls already launched."""
    _coerce_all(settings, "configure()")
    _global_overrides.update(settings)
    for hook in list(_on_configure):
        hook()
    return current()


def current(**overrides: Any) -> Config:
    merged = dict(_global_overrides)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Config.load(**merged)
