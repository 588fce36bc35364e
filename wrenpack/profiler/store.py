"""Saved profiles: ``<project>/.wrenpack/profiles/<code hash>.json`` (one call)
and ``<code hash>.scaling.json`` (a scaling run over several input sizes).

The two kinds are kept apart: a scaling profile sizes each call from its input,
a single-call profile describes one call, and neither may overwrite the other
(they once shared a file, and whichever ran last won).

The project is the directory of the nearest ``pyproject.toml`` above the
working directory (the same rule ``wrenpack.config`` uses), else the working
directory. ``WRENPACK_PROFILE_DIR`` overrides the folder outright.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable


log = logging.getLogger(__name__)


def project_dir(start: str | os.PathLike[str] | None = None) -> Path:
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").is_file():
            return directory
    return here


def profiles_dir(start: str | os.PathLike[str] | None = None) -> Path:
    from wrenpack.config import env_directory  # (here: the config module is most of the profiler's import time)

    override = env_directory("WRENPACK_PROFILE_DIR")  # (checked: a ConfigError naming it if unusable)
    if override:
        return Path(override)
    return project_dir(start) / ".wrenpack" / "profiles"


#: the two kinds of saved profile
CALL, SCALING = "call", "scaling"


def file_name(code_hash: str, kind: str = CALL) -> str:
    return f"{code_hash}.scaling.json" if kind == SCALING else f"{code_hash}.json"


def kind_of(data: dict[str, Any]) -> str:
    """A profile dict's kind: a scaling run carries ``scaling``."""
    return SCALING if data.get("scaling") else CALL


def path_for(code_hash: str, start: str | os.PathLike[str] | None = None, kind: str = CALL) -> Path:
    return profiles_dir(start) / file_name(code_hash, kind)


#: profiles this process saved: a launch's kept reading of them is stale once it moves
saves = 0


def save(data: dict[str, Any], start: str | os.PathLike[str] | None = None) -> Path | None:
    """Write a profile dict under its ``code_hash`` and kind; returns the path (None if unhashable)."""
    global saves
    code_hash = data.get("code_hash")
    if not code_hash:
        return None
    path = path_for(code_hash, start, kind_of(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
    saves += 1
    log.info("saved profile %s", path)
    return path


#: (working directory, WRENPACK_PROFILE_DIR) -> profiles folder; path -> ((mtime_ns, size), profile)
_dirs: dict[tuple[str, str | None], Path] = {}
_loaded: dict[Path, tuple[tuple[int, int], dict[str, Any] | None]] = {}


def load_cached(code_hash: str | Callable[[], str], kind: str = CALL) -> dict[str, Any] | None:
    """``load`` for the launch path, which asks on every ``.remote()``: the
    folder is found once per working directory and a profile is read again
    only when its file changed (one ``stat`` per call, not a parent walk and a
    read). ``code_hash`` may be a function computing it, called only when
    there is a profiles folder at all."""
    where = (os.getcwd(), os.environ.get("WRENPACK_PROFILE_DIR"))
    folder = _dirs.get(where)
    if folder is None:
        if len(_dirs) > 64:
            _dirs.clear()
        folder = _dirs[where] = profiles_dir()
    if callable(code_hash):
        if not os.path.isdir(folder):
            return None
        code_hash = code_hash()
    path = folder / file_name(code_hash, kind)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if kind == SCALING:  # saved before the kinds were kept apart
            data = load_cached(code_hash, CALL)
            return data if data and data.get("scaling") else None
        return None
    except OSError:
        return load(code_hash, kind=kind)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _loaded.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    data = load(code_hash, kind=kind)
    if len(_loaded) > 1024:
        _loaded.clear()
    _loaded[path] = (stamp, data)
    return data


def load(code_hash: str, start: str | os.PathLike[str] | None = None, kind: str = CALL) -> dict[str, Any] | None:
    """The saved profile of that kind; a scaling profile saved before the kinds
    were kept apart (in the single-call file) is found as a scaling one."""
    path = path_for(code_hash, start, kind)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if kind == SCALING:
            data = load(code_hash, start)
            return data if data and data.get("scaling") else None
        return None
    except (OSError, ValueError) as exc:
        warn_unusable(path, exc)
        return None
    if not isinstance(data, dict):  # (plain JSON that any process of the user can write: `[]` crashed its readers)
        warn_unusable(path, f"it holds a JSON {type(data).__name__}, not a profile")
        return None
    return data


def warn_unusable(path: Path, why: Any) -> None:
    """The one warning for a saved profile that cannot be used: the function is then profiled afresh."""
    log.warning("ignoring unreadable saved profile %s: %s; profiling the function again", path, why)
