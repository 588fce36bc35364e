"""Collect what the runtime must contain, from every input form, as requirement lines."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

#: never resolved from an index: the worker handler ships separately
SKIP = {"wrenpack"}
#: requirements-file options that choose where packages come from; passed on to pip-compile and the lock
INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--pre",
                 "--no-index", "--prefer-binary")


def _name(req: str) -> str:
    """The canonical project name of a requirement line ("" when it is not one)."""
    try:
        return canonicalize_name(Requirement(req).name)
    except InvalidRequirement:
        return ""


@dataclass
class Inputs:
    """Requirement lines (pip syntax), index options, and modules the verification must import."""

    requirements: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    #: canonical names pinned from a profile (their version may fall back to one with a target wheel)
    from_profile: set[str] = field(default_factory=set)
    #: every module the profiled function imported (``imported_modules``): keeps the optional components they need
    imported: list[str] = field(default_factory=list)

    def names(self) -> set[str]:
        return {n for n in (_name(r) for r in self.requirements) if n}

    def add(self, req: str, where: str = "argument") -> None:
        req = req.strip()
        if not req or req.startswith("#") or req in self.requirements:
            return
        if req.startswith("-c "):
            self.requirements.append(req)
            return
        try:
            name = canonicalize_name(Requirement(req).name)
        except InvalidRequirement as exc:
            raise BuildError(f"{where}: {req!r} is not a valid requirement ({exc}); fix: write it as "
                             f"NAME[extras] SPECIFIER, e.g. 'numpy>=2'") from None
        if name not in SKIP:
            self.requirements.append(req)

    def replace(self, name: str, req: str) -> None:
        """Swap the requirement for canonical ``name`` (keeps its position)."""
        self.requirements = [req if _name(r) == name else r for r in self.requirements]

    def text(self) -> str:
        return "".join(o + "\n" for o in self.options) + "".join(r + "\n" for r in self.requirements)


def index_args(text: str) -> list[str]:
    """pip flags for the index options at the top of a requirements text or lock (``--extra-index-url URL``...)."""
    out: list[str] = []
    for _, line in _logical_lines(text):
        m = re.match(r"^(-[a-zA-Z]|--[\w-]+)(?:=|\s+)?(.*)$", line)
        if m and m.group(1) in INDEX_OPTIONS:
            out += [m.group(1)] + ([m.group(2).strip()] if m.group(2).strip() else [])
    return out


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) with backslash continuations joined and comments removed, as pip reads them."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        logical = re.sub(r"(^|\s+)#.*$", "", buf).strip()
        buf = ""
        if logical:
            out.append((start, logical))
    if buf.strip():
        out.append((start, re.sub(r"(^|\s+)#.*$", "", buf).strip()))
    return out


def read_requirements_file(path: str, into: Inputs, _seen: set[str] | None = None) -> None:
    """pip's requirements-file syntax: -r/-c (relative to the file), index options, continuations, comments."""
    seen = _seen if _seen is not None else set()
    path = os.path.abspath(path)
    if path in seen:
        return
    seen.add(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BuildError(f"cannot read requirements file {path}: {exc.strerror}; check the -r path") from None
    here = os.path.dirname(path)
    for lineno, line in _logical_lines(text):
        where = f"{path}:{lineno}"
        if not line.startswith("-"):
            into.add(line, where)
            continue
        m = re.match(r"^(-[a-zA-Z]|--[\w-]+)(?:=|\s+)?(.*)$", line)
        opt, value = (m.group(1), m.group(2).strip()) if m else (line, "")
        if opt in ("-r", "--requirement"):
            read_requirements_file(os.path.join(here, value), into, seen)
        elif opt in ("-c", "--constraint"):
            into.add(f"-c {os.path.join(here, value)}", where)
        elif opt in INDEX_OPTIONS:
            if opt in ("-f", "--find-links") and "://" not in value:
                value = os.path.join(here, value)
            option = f"{opt} {value}".strip()
            if option not in into.options:
                into.options.append(option)
        elif opt in ("-e", "--editable"):
            raise BuildError(f"{where}: editable requirement {value!r} cannot go into a runtime; fix: build a "
                             f"wheel of it, or list it by name and version")
        else:
            log.warning("%s: ignoring pip option %s (it does not change what a runtime contains)", where, opt)


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
        into.add(dep, path)


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
        into.add(f"{p['name']}=={p['version']}" if p.get("version") else str(p["name"]), path)
        if p.get("version"):
            into.from_profile.add(canonicalize_name(str(p["name"])))
        for m in p.get("modules") or []:
            if m not in into.modules:
                into.modules.append(m)
    seen = data.get("imported_modules")
    for m in seen if isinstance(seen, list) else []:
        if isinstance(m, str) and m not in into.imported:
            into.imported.append(m)
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
