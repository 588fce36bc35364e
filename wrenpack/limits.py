"""AWS Lambda's limits, defined once: the executor, the CLI, the profiler and
the backends check against these, so a setting that works locally works on
Lambda. Standard library only (the worker imports wrenpack modules freely).
"""
from __future__ import annotations

import math
import operator
from typing import Any

from wrenpack.errors import ConfigError

#: a function's memory, MB (integer)
MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 10240
#: a function's timeout, seconds: at least 1 (Lambda's minimum), at most 900
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 900
#: a function's /tmp (ephemeral storage), MB (integer)
MIN_EPHEMERAL_MB = 512
MAX_EPHEMERAL_MB = 10240
#: instruction set architectures Lambda runs
ARCHITECTURES = ("x86_64", "arm64")
#: how often a call is tried again, at most (``retries``): a failure that 20
#: new attempts did not get past is not transient, and 21 attempts of a 900 s
#: call already take over five hours; a larger number is a mistake
MAX_RETRIES = 20

MEMORY_RANGE = f"a whole number of MB in {MIN_MEMORY_MB}..{MAX_MEMORY_MB}"
TIMEOUT_RANGE = f"a number of seconds in (0, {MAX_TIMEOUT_S}] and at least {MIN_TIMEOUT_S} (Lambda's minimum)"
EPHEMERAL_RANGE = f"a whole number of MB in {MIN_EPHEMERAL_MB}..{MAX_EPHEMERAL_MB}"
RETRIES_RANGE = f"a whole number >= 0 and at most {MAX_RETRIES}"


def _where(source: str | None) -> str:
    return f" (from {source})" if source else ""


def whole_number(name: str, value: Any, source: str | None = None, allowed: str = "a whole number") -> int:
    """``value`` as an int, refusing fractions, NaN, booleans and text that is not one.

    ``1500.0`` and ``"1500"`` are accepted; ``1500.7``, ``"lots"``, ``nan`` are not."""
    bad = ConfigError(f"{name}={value!r}{_where(source)} must be {allowed}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise bad from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise bad
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise bad from None


def integral(value: Any) -> int | None:
    """``value`` as an int if it is of a whole-number type, as ``range()`` takes one
    (numpy's integers too); None for anything else: text, floats, and True and False,
    which are numbers only by accident. The strict form of ``whole_number``, for
    arguments of the API (``chunksize``, ``partitions``, ``MAX_SEGMENTS``), where
    text or a float is a mistake rather than a value from a file."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def real_number(name: str, value: Any, source: str | None = None, allowed: str = "a number") -> float:
    """``value`` as a finite float (no NaN or infinity, no booleans)."""
    bad = ConfigError(f"{name}={value!r}{_where(source)} must be {allowed}")
    if isinstance(value, bool):
        raise bad
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(out):
        raise bad
    return out


def _megabytes_in(name: str, value: Any, source: str | None, low: int, high: int, allowed: str) -> int:
    mb = whole_number(name, value, source, allowed)
    if not low <= mb <= high:
        raise ConfigError(f"{name}={mb} MB{_where(source)} is outside Lambda's range: must be {allowed}")
    return mb


def check_memory(value: Any, source: str | None = None, name: str = "memory") -> int:
    return _megabytes_in(name, value, source, MIN_MEMORY_MB, MAX_MEMORY_MB, MEMORY_RANGE)


def check_timeout(value: Any, source: str | None = None, name: str = "timeout") -> float:
    s = real_number(name, value, source, TIMEOUT_RANGE)
    if 0 < s < MIN_TIMEOUT_S:
        raise ConfigError(f"{name}={s:g} s{_where(source)} is below Lambda's minimum of {MIN_TIMEOUT_S} s: must be {TIMEOUT_RANGE}")
    if not MIN_TIMEOUT_S <= s <= MAX_TIMEOUT_S:
        raise ConfigError(
            f"{name}={s:g} s{_where(source)} is outside Lambda's range: must be {TIMEOUT_RANGE}; "
            "split longer work with wrenpack.checkpoint"
        )
    return s


def check_ephemeral(value: Any, source: str | None = None, name: str = "ephemeral_storage") -> int:
    return _megabytes_in(name, value, source, MIN_EPHEMERAL_MB, MAX_EPHEMERAL_MB, EPHEMERAL_RANGE)


def check_retries(value: Any, source: str | None = None, name: str = "retries") -> int:
    n = whole_number(name, value, source, RETRIES_RANGE)
    if not 0 <= n <= MAX_RETRIES:
        raise ConfigError(f"{name}={value!r}{_where(source)} must be {RETRIES_RANGE}; a call that fails that often "
                          "will not succeed on a retry: fix its cause")
    return n


def check_architecture(value: Any, source: str | None = None, name: str = "architecture") -> str:
    if value not in ARCHITECTURES:
        raise ConfigError(f"{name}={value!r}{_where(source)} must be one of {', '.join(ARCHITECTURES)}")
    return str(value)


#: The memory a call needs from its measured peak: the peak plus 10% plus the
#: worker runtime's own 32 MB (what ``wrenpack profile`` recommends, and what a
#: MemoryLimitExceeded hint suggests).
MEMORY_MARGIN_FRACTION = 0.10
MEMORY_MARGIN_FIXED_MB = 32


def memory_for(peak_mb: float) -> int:
    """The memory setting (MB) for a call whose peak was ``peak_mb``, within Lambda's range."""
    want = math.ceil(peak_mb * (1 + MEMORY_MARGIN_FRACTION) + MEMORY_MARGIN_FIXED_MB)
    return max(MIN_MEMORY_MB, min(MAX_MEMORY_MB, want))
