"""Collect what the runtime must contain, from every input form, as requirement lines."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable

from wrenpack.errors import BuildError

#: never resolved from an index: the worker handler ships separately
SKIP = {"wrenpack"}


def _name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""


@dataclass
class Inputs:
    """Requirement lines (pip syntax) plus modules the verification must import."""

    requirements: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)

    def names(self) -> set[str]:
        return {_name(r) for r in self.requirements if not r.startswith("-")}

    def add(self, req: str) -> None:
        req = req.strip()
        if req and not req.startswith("#") and req not in self.requirements and _name(req) not in SKIP:
            self.requirements.append(req)

    def text(self) -> str:
        return "".join(r + "\n" for r in self.requirements)


def read_requirements_file(path: str, into: Inputs, _seen: set[str] | None = None) -> None:
    seen = _seen if _seen is not None else set()
    path = os.path.abspath(path)
    if path in seen:
        return
    seen.add(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise BuildError(f"cannot read requirements file {path}: {exc.strerror}; check the -r path") from None
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            read_requirements_file(os.path.join(os.path.dirname(path), line.split(None, 1)[1]), into, seen)
        elif line.startswith("-c ") or line.startswith("--constraint "):
            continue
        else:
            into.add(line)


def read_pyproject(path: str, into: Inputs) -> None:
    import tomllib

    if os.path.isdir(path):
        path = os.path.join(path, "pyproject.toml")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}; pass --pyproject PATH to a pyproject.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path} is not valid TOML ({exc}); fix the file") from None
    deps = data.get("project", {}).get("dependencies")
    if deps is None:
        raise BuildError(f"{path} has no [project] dependencies; list them there or use -r requirements.txt")
    for dep in deps:
        into.add(dep)


def read_profile(path: str, into: Inputs) -> None:
    """A ``wrenpack profile --json`` output: ``packages`` = [{"name", "version"}], optional ``modules``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise BuildError(f"cannot read profile {path}: {exc.strerror}; pass a `wrenpack profile --json` file") from None
    except json.JSONDecodeError:
        raise BuildError(f"{path} is not JSON; write it with `wrenpack profile --json ... > {path}`") from None
    pkgs = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(pkgs, list):
        raise BuildError(f"{path} has no 'packages' list; pass the output of `wrenpack profile --json`")
    for p in pkgs:
        if not isinstance(p, dict) or "name" not in p:
            raise BuildError(f"{path}: each package needs a 'name' (got {p!r}); regenerate the profile")
        into.add(f"{p['name']}=={p['version']}" if p.get("version") else str(p["name"]))
        for m in p.get("modules") or []:
            if m not in into.modules:
                into.modules.append(m)
    mods = data.get("modules")
    if isinstance(mods, dict):
        mods = list(mods)
    for m in mods or []:
        if isinstance(m, str) and m not in into.modules and m.split(".")[0] not in sys.stdlib_module_names:
            into.modules.append(m)


def add_cloudpickle(into: Inputs) -> None:
    """The worker unpickles with cloudpickle, whose format needs client == worker version."""
    if "cloudpickle" in into.names():
        return
    from importlib.metadata import version

    into.add(f"cloudpickle=={version('cloudpickle')}")


def gather(packages: Iterable[str] = (), requirements_files: Iterable[str] = (), pyproject: str | None = None,
           profile: str | None = None) -> Inputs:
    """All requirement sources of a build, in one ``Inputs``."""
    inp = Inputs()
    for p in packages:
        inp.add(p)
    for rf in requirements_files:
        read_requirements_file(rf, inp)
    if pyproject:
        read_pyproject(pyproject, inp)
    if profile:
        read_profile(profile, inp)
    return inp
