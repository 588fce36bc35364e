"""Call options: the limits and settings one map's calls run under, checked
where they are given (decorator, ``options()``, ``submit``) so a bad one fails
at once, naming the option, where it came from and what is allowed."""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from wrenpack import limits
from wrenpack.backends.runtime_paths import site_dir
from wrenpack.config import NOT_TEXT, Config, refuse_text
from wrenpack.errors import ConfigError

#: bytes of a call's stdout/stderr kept as ``fut.logs`` (the tail)
LOG_TAIL_BYTES = 64 * 1024

#: the most ``env=`` may hold, names and values, as JSON (it travels in every call's event)
ENV_MAX_BYTES = 256 * 1024
#: one variable's ``NAME=value`` must be shorter than this: Linux's MAX_ARG_STRLEN, past which
#: execve fails (E2BIG), so no program the call starts could be given it
ENV_VAR_MAX_BYTES = 128 * 1024
#: per-function options (decorator, ``options()``, ``submit`` of a RemoteFunction)
OPTION_NAMES = ("memory", "timeout", "retries", "ephemeral_storage", "runtime", "retry_on", "env", "auto_size",
                "cancellable")


@dataclass
class CallOptions:
    """The limits one map's calls run under (already resolved from config)."""

    memory: int
    timeout: float
    ephemeral_storage: int
    retries: int
    runtime: str | None = None
    #: exception types (and TaskTimeout) a call is tried again on, up to ``retries``
    retry_on: tuple[type[BaseException], ...] = ()
    #: environment variables set in the worker for each call (restored after)
    env: dict[str, str] = field(default_factory=dict)
    capture_logs: int = LOG_TAIL_BYTES
    extra: dict[str, Any] = field(default_factory=dict)
    #: how long one invocation runs, by the function's saved profile (None: unknown)
    expected_s: float | None = None
    #: whether a running call can be stopped (``wrenpack.cancel``, ``Job.cancel``). On
    #: Lambda that costs the call's invocation a look for its cancel marker 2 s in and
    #: then after gaps as long as it has run (an S3 GET each: 5 for a 60 s call,
    #: $2 per million such calls); False saves them, and running calls then keep
    #: ``concurrent.futures``' contract on every backend: they run to their end.
    cancellable: bool = True


def check_known(given: Iterable[str], source: str, own: Sequence[str] = ()) -> None:
    """A ConfigError naming the keywords in ``given`` that are neither call options nor
    ``own`` (the keywords ``source`` itself takes, ``map_reduce``'s ``partitions``...),
    each with its close match, if it has one, and every known name. One line."""
    known = [*own, *(name for name in OPTION_NAMES if name not in own)]
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    close = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
    guesses = [(name, found[0]) for name, found in close.items() if found]
    plural = "s" if len(unknown) > 1 else ""
    said = f"unknown option{plural} {', '.join(unknown)} (from {source})"
    if not guesses:
        raise ConfigError(f"{said}; known: {', '.join(known)}")
    meant = guesses[0][1] if len(unknown) == 1 else ", ".join(f"{meant} (for {name})" for name, meant in guesses)
    raise ConfigError(f"{said}: did you mean {meant}? (known: {', '.join(known)})")


def check_options(options: dict[str, Any], source: str, own: Sequence[str] = ()) -> dict[str, Any]:
    """Validate per-function options where they are given (``"auto"`` allowed
    for memory, timeout and ephemeral_storage), so a bad one fails at once with
    a ConfigError naming the option, its source and what is allowed (an unknown
    one with its close match among the options and ``own``: ``check_known``)."""
    check_known(options, source, own)
    out = dict(options)
    for name, value in options.items():
        if value is None or (value == "auto" and name in ("memory", "timeout", "ephemeral_storage")):
            continue
        if isinstance(value, str) and name in NOT_TEXT:  # (remote(memory="512"), as Executor(memory="512"))
            refuse_text(name, value, source)
        if name == "memory":
            out[name] = limits.check_memory(value, source)
        elif name == "timeout":
            out[name] = limits.check_timeout(value, source)
        elif name == "ephemeral_storage":
            out[name] = limits.check_ephemeral(value, source)
        elif name == "retries":
            out[name] = _retries(value, source)
        elif name == "runtime" and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"runtime={value!r} (from {source}) must be a path to a built runtime")
        elif name == "retry_on":
            out[name] = _retry_on(value, source)
        elif name == "env":
            out[name] = _env(value, source)
        elif name == "cancellable" and not isinstance(value, bool):
            raise ConfigError(f"cancellable={value!r} (from {source}) must be True or False (False: running calls are "
                              "never stopped early, and on Lambda they do not look for a cancel marker)")
        elif name == "auto_size" and not callable(value):
            raise ConfigError(f"auto_size={value!r} (from {source}) must be a function of the call's arguments returning "
                              "its input size (the n of the function's scaling profile), e.g. auto_size=lambda xs: len(xs)")
    return out


def _retries(value: Any, source: str) -> int:
    return limits.check_retries(value, source)


def _retry_on(value: Any, source: str) -> tuple[type[BaseException], ...]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in items):
        raise ConfigError(f"retry_on={value!r} (from {source}) must be an exception type or a tuple of them, "
                          "e.g. retry_on=(ConnectionError, wrenpack.TaskTimeout)")
    return items


def _env(value: Any, source: str) -> dict[str, str]:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        for k, v in value.items()
    )
    if not ok:
        raise ConfigError(f"env={value!r} (from {source}) must be a dict of variable names to text, e.g. env={{'OMP_NUM_THREADS': '1'}}")
    env = {k: str(v) for k, v in value.items()}
    for k, v in env.items():
        if "\0" in v:
            # (the process environment is C strings: setting it failed in each call's worker, a bare ValueError)
            raise ConfigError(f"env[{k!r}] (from {source}) holds a NUL byte ('\\0'), which no environment variable "
                              "can hold; remove it (pass binary data as an argument)")
        size = len(k.encode("utf-8", "surrogatepass")) + 1 + len(v.encode("utf-8", "surrogatepass"))
        if size >= ENV_VAR_MAX_BYTES:
            # (Linux refuses such a string to execve: every program the call started failed, E2BIG)
            raise ConfigError(f"env[{k!r}] (from {source}) is {size:,} bytes as NAME=value; one variable must be "
                              f"under {ENV_VAR_MAX_BYTES:,} bytes (Linux's limit: no program the call starts could get "
                              "it); pass large data as an argument or through wrenpack.store()")
    # Counted as it travels, JSON in each call's event (a control character is 6 bytes there, an
    # emoji 12): 248 KiB of them passed a count of the text and made an Event payload over 1 MB.
    total = len(json.dumps(env))
    if total > ENV_MAX_BYTES:
        # (a worker hands it to the call's process in a bounded message: before, 1 MiB or more
        # killed the worker, reported as a crash in native code)
        raise ConfigError(f"env= (from {source}) is {total / 1024:,.0f} KiB as it travels (JSON in each call's event); "
                          f"the most is {ENV_MAX_BYTES // 1024} KiB; pass large data as an argument or through "
                          "wrenpack.store()")
    return env


def resolve_options(config: Config, given: dict[str, Any]) -> CallOptions:
    """The limits calls run under: ``given`` (checked here), else ``config``'s."""
    c = config
    given = check_options({k: v for k, v in given.items() if v is not None and k != "auto_size"}, "options")
    pick = lambda name, default: given[name] if given.get(name) is not None else default  # noqa: E731
    opts = CallOptions(
        memory=limits.check_memory(pick("memory", c.memory), "options"),
        timeout=limits.check_timeout(pick("timeout", c.timeout), "options"),
        ephemeral_storage=limits.check_ephemeral(pick("ephemeral_storage", c.ephemeral_storage), "options"),
        retries=_retries(pick("retries", c.retries), "options"),
        runtime=pick("runtime", c.runtime),
        retry_on=given.get("retry_on", ()),
        env=given.get("env", {}),
        cancellable=given.get("cancellable", True),
    )
    if opts.runtime is not None:
        # Fail here, before anything launches, if it is not a built runtime.
        opts.runtime = os.path.dirname(site_dir(opts.runtime))
    return opts
