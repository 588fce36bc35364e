"""Lambda's Python runtimes and their life cycle, from ``wrenpack/data/lambda_runtimes.json``.

AWS deprecates a managed runtime, then blocks creating functions on it, then
blocks updating them (python3.10 and 3.11, on Amazon Linux 2: 2026-06-30,
2026-07-31, 2026-08-31). wrenpack's functions must run the client's Python
minor version (functions travel as bytecode, see ``wrenpack.serialize``), so
a client on a blocked Python cannot simply deploy a newer runtime: it has to
move to a live Python, or ship its Python in a container image, which no
runtime block touches. Deploy, doctor and build-runtime read the dates here
rather than each keeping its own, and compare them with ``today()`` (a test
passes a date instead).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources

from wrenpack.errors import ConfigError

#: the states of a runtime on a day, in the order they come
SUPPORTED, DEPRECATED, CREATE_BLOCKED, BLOCKED = "supported", "deprecated", "create-blocked", "blocked"
_VERSION = re.compile(r"^(?:python)?(\d+)\.(\d+)$")


def today() -> date:
    """The day the dates are compared with: the only place the clock is read."""
    return date.today()


@dataclass(frozen=True)
class PythonRuntime:
    """One row of the table: a managed runtime and its dates."""

    identifier: str  # python3.12
    python: str  # 3.12
    os: str
    glibc: str
    deprecated: date
    block_create: date
    block_update: date

    def state(self, on: date | None = None) -> str:
        """``supported``, ``deprecated`` (still deployable), ``create-blocked`` (only existing functions update) or ``blocked``."""
        day = on or today()
        if day >= self.block_update:
            return BLOCKED
        if day >= self.block_create:
            return CREATE_BLOCKED
        if day >= self.deprecated:
            return DEPRECATED
        return SUPPORTED

    def describe(self, on: date | None = None) -> str:
        """One line: the runtime, its OS and glibc, and where it is in its life cycle."""
        state = self.state(on)
        where = f"{self.identifier} ({self.os}, glibc {self.glibc})"
        if state == SUPPORTED:
            return f"{where}: supported; AWS deprecates it on {self.deprecated}"
        if state == DEPRECATED:
            return (f"{where}: deprecated since {self.deprecated}; AWS blocks creating functions on {self.block_create} "
                    f"and updating them on {self.block_update}")
        if state == CREATE_BLOCKED:
            return (f"{where}: AWS blocks creating functions since {self.block_create} and updating them on "
                    f"{self.block_update}; deployed functions keep running")
        return (f"{where}: AWS blocks creating functions since {self.block_create} and updating them since "
                f"{self.block_update}; deployed functions keep running")


@lru_cache(maxsize=1)
def table() -> tuple[PythonRuntime, ...]:
    """Every Python runtime in the shipped table, newest first."""
    doc = json.loads(resources.files("wrenpack").joinpath("data/lambda_runtimes.json").read_text())
    rows = [PythonRuntime(r["identifier"], r["python"], r["os"], r["glibc"], date.fromisoformat(r["deprecated"]),
                          date.fromisoformat(r["block_create"]), date.fromisoformat(r["block_update"]))
            for r in doc["python"]]
    return tuple(sorted(rows, key=lambda r: _key(r.python), reverse=True))


def table_date() -> str:
    """When the table was read from AWS's page (``YYYY-MM``)."""
    return str(json.loads(resources.files("wrenpack").joinpath("data/lambda_runtimes.json").read_text())["date"])


def _key(python: str) -> tuple[int, int]:
    major, minor = python.split(".")[:2]
    return int(major), int(minor)


def minor(python: str, what: str = "--python") -> str:
    """``3.12`` from ``3.12``, ``python3.12``; anything else is a one-line error."""
    m = _VERSION.match(str(python).strip())
    if not m:
        raise ConfigError(f"{what} {python!r} is not a Python minor version; give it as X.Y, e.g. 3.12")
    return f"{m.group(1)}.{m.group(2)}"


def find(python: str) -> PythonRuntime | None:
    """The table's row for ``python`` (X.Y or pythonX.Y), None if Lambda has no such runtime."""
    wanted = minor(python)
    return next((r for r in table() if r.python == wanted), None)


def live(on: date | None = None) -> list[str]:
    """The Pythons (X.Y, newest first) whose runtime still takes new functions on ``on``."""
    return [r.python for r in table() if r.state(on) in (SUPPORTED, DEPRECATED)]


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def ways_out(python: str, on: date | None = None) -> str:
    """What a user whose functions must run ``python`` does once Lambda no longer takes it."""
    alive = live(on)
    newer = f"run wrenpack on a live Python ({_or_list(alive)}) and deploy from there" if alive else \
        "run wrenpack on a Python that Lambda still runs"
    return (f"{newer}, or deploy a container image that carries Python {python} "
            f"(`wrenpack build-runtime --docker --python {python} PACKAGE...`, push it to ECR, then "
            f"`wrenpack deploy --image-uri URI --python {python} --role ARN`)")


def refusal(python: str, on: date | None = None, creating: bool = True) -> str | None:
    """Why a zip-package function for ``python`` cannot be deployed on ``on`` (one line,
    naming the ways out), or None when it can. ``creating``: a new function
    (refused from the block-create date); else an update (from the block-update date)."""
    wanted = minor(python)
    row = find(wanted)
    same = "the functions must run the client's Python minor version (calls travel as bytecode)"
    if row is None:
        known = ", ".join(r.python for r in table())
        return (f"python{wanted} is not among the Lambda runtimes wrenpack knows ({known}, as AWS listed them in "
                f"{table_date()}) and {same}: {ways_out(wanted, on)}")
    state = row.state(on)
    if state == BLOCKED or (creating and state == CREATE_BLOCKED):
        update = "since" if state == BLOCKED else "from"
        return (f"AWS no longer accepts {row.identifier} functions (creating them blocked since {row.block_create}, "
                f"updating them {update} {row.block_update}) and {same}: {ways_out(wanted, on)}")
    return None


def warning(python: str, on: date | None = None) -> str | None:
    """What to tell a user who deploys ``python`` while it is deprecated or can only be updated (None: nothing)."""
    row = find(python)
    if row is None:
        return None
    state = row.state(on)
    if state == DEPRECATED:
        return (f"{row.identifier} is deprecated since {row.deprecated}: AWS blocks creating its functions on "
                f"{row.block_create} and updating them on {row.block_update}; before then {ways_out(row.python, on)}")
    if state == CREATE_BLOCKED:
        return (f"AWS blocks creating {row.identifier} functions since {row.block_create} and updating them on "
                f"{row.block_update}: existing functions update until then, new settings sets are refused; "
                f"{ways_out(row.python, on)}")
    return None
