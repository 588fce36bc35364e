"""The one place wrenpack touches pip and pip-tools internals (a subprocess entry point).

pip-tools resolves for the interpreter it runs in: it evaluates environment
markers and picks wheels for this host. A runtime is for another machine
(Lambda's glibc, maybe another Python or arm64), so before calling
pip-compile we point pip's marker environment, wheel-tag selection and
Requires-Python checks at the target. The patches live only in this
short-lived process, and :func:`_check_versions` refuses to apply them to a
pip or pip-tools whose internals moved (one line naming the versions).

Usage::

    python -m runtime_builder._piptools_target compile TARGET_JSON -- <pip-compile args>
    python -m runtime_builder._piptools_target versions TARGET_JSON NAME...
    python -m runtime_builder._piptools_target sizes TARGET_JSON NAME==VERSION...
    python -m runtime_builder._piptools_target select TARGET_JSON NAME==VERSION...

``compile`` prints, on a resolution failure, one ``WRENPACK-ERROR {json}``
line on stderr (the exception pip raised, without its traceback).
``versions`` prints ``{"versions": {name: {"target": [...], "any": [...]}},
"unreachable": {page URL: why}}``: the versions with a file installable on the
target, every version the indexes have, and the index pages pip could not
read (so "no such version" is never said of an index that did not answer).
TARGET_JSON's optional ``index_args`` (``--extra-index-url URL``...) add to pip's
configured indexes. ``sizes`` prints ``{name: bytes | null}``: the
size of the file the target would install (PEP 700 ``size``, or the file itself).
``select`` prints ``{name: {"size": bytes | null, "url": URL | null, "sha256": hex | null}}``: the same
look-up, with the file itself, so another installer (uv) fetches exactly the file
``pip install`` would have chosen.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

#: pip / pip-tools majors whose internals this module was written against (checked by attribute, too).
TESTED = {"pip": (23, 25), "pip-tools": (7, 7)}
MARKER = "WRENPACK-ERROR "
_OPEN: list[Any] = []


class Unsupported(Exception):
    """pip or pip-tools changed the internals patched here."""


def _check_versions() -> None:
    from importlib.metadata import version

    import pip._internal.cli.req_command as rc
    from pip._vendor.packaging import markers

    for dist, (lo, hi) in TESTED.items():
        v = version(dist)
        major = int(v.split(".")[0])
        if not lo <= major <= hi:
            print(f"wrenpack: warning: {dist} {v} is outside the versions its resolver shim was tested "
                  f"with ({lo}..{hi}.x); if resolution misbehaves, install {dist}<{hi + 1}", file=sys.stderr)
    needed = [(rc.RequirementCommand, "_build_package_finder"), (rc.RequirementCommand, "make_resolver"),
              (markers, "default_environment")]
    try:
        from piptools.repositories.pypi import PyPIRepository

        needed.append((PyPIRepository, "_get_file_hash"))
    except ImportError as exc:
        raise Unsupported(f"pip-tools {version('pip-tools')} has no piptools.repositories.pypi ({exc})") from None
    for owner, attr in needed:
        if not hasattr(owner, attr):
            raise Unsupported(f"{owner.__name__}.{attr} is gone in pip {version('pip')} / pip-tools "
                              f"{version('pip-tools')}; install pip<{TESTED['pip'][1] + 1} pip-tools<"
                              f"{TESTED['pip-tools'][1] + 1}")


def _patch(target: dict[str, Any]) -> None:
    from pip._internal.cli import cmdoptions
    from pip._internal.cli.req_command import RequirementCommand
    from pip._vendor.packaging import markers

    env = dict(target["markers"])
    original_env = markers.default_environment

    def default_environment() -> dict[str, str]:
        out = original_env()
        out.update(env)
        return out

    markers.default_environment = default_environment  # type: ignore[assignment]
    py_version = tuple(int(p) for p in target["python"].split("."))

    original_finder = RequirementCommand._build_package_finder

    def _build_package_finder(self, options, session, target_python=None, ignore_requires_python=None):  # type: ignore[no-untyped-def]
        if target_python is None and getattr(options, "platforms", None):
            target_python = cmdoptions.make_target_python(options)
        return original_finder(self, options, session, target_python, ignore_requires_python)

    RequirementCommand._build_package_finder = _build_package_finder  # type: ignore[method-assign]

    original_resolver = RequirementCommand.make_resolver.__func__  # type: ignore[attr-defined]

    def make_resolver(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("py_version_info", py_version)
        return original_resolver(cls, *args, **kwargs)

    RequirementCommand.make_resolver = classmethod(make_resolver)  # type: ignore[method-assign, assignment]

    # pip-tools downloads every file of a release to hash it when the index's
    # JSON API does not answer for that URL; the simple index already gives
    # each link's sha256, so use it and skip hundreds of megabytes of downloads.
    from piptools.repositories.pypi import PyPIRepository

    original_hash = PyPIRepository._get_file_hash

    def _get_file_hash(self, link):  # type: ignore[no-untyped-def]
        if link.hash_name == "sha256" and link.hash:
            return f"sha256:{link.hash}"
        return original_hash(self, link)

    PyPIRepository._get_file_hash = _get_file_hash  # type: ignore[method-assign]


def _report(exc: BaseException) -> None:
    message = str(exc).strip().splitlines()
    print(MARKER + json.dumps({"type": type(exc).__name__, "message": message[0] if message else ""}),
          file=sys.stderr)


def compile_main(target: dict[str, Any], rest: list[str]) -> int:
    _patch(target)
    from pip._internal.exceptions import PipError
    from piptools.scripts.compile import cli

    try:
        cli.main(args=rest, prog_name="pip-compile", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    except PipError as exc:  # resolution failed: pip already logged the why (conflicts, missing names)
        _report(exc)
        return 2
    return 0


def _finder(pip_args: list[str], *, ignore_requires_python: bool) -> Any:
    from pip._internal.cli import cmdoptions
    from pip._internal.commands import create_command

    cmd = create_command("download")
    ctx = cmd.main_context()  # pip's session lives in it; kept open until this short process ends
    ctx.__enter__()
    _OPEN.append(ctx)
    options, _ = cmd.parse_args(pip_args)
    session = cmd.get_default_session(options)
    target_python = cmdoptions.make_target_python(options) if options.platforms or options.python_version else None
    return cmd._build_package_finder(options=options, session=session, target_python=target_python,
                                     ignore_requires_python=ignore_requires_python)


class _Unreachable(logging.Handler):
    """Collects the index pages pip's link collector could not fetch ("Could not fetch URL %s: %s - skipping")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pages: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Could not fetch URL") and len(record.args or ()) >= 2:
            page, why = record.args[0], record.args[1]  # type: ignore[index]
            if "404" not in str(why):  # the index answered: it just has no such project
                self.pages.setdefault(str(page), str(why))


def versions_main(target: dict[str, Any], names: list[str]) -> int:
    """Versions per name: on the target (its wheels, its Python) and on the indexes at all; pages not read."""
    collector = logging.getLogger("pip._internal.index.collector")
    unreachable = _Unreachable()
    collector.addHandler(unreachable)
    collector.setLevel(logging.DEBUG)
    collector.propagate = False
    index_args = list(target.get("index_args", []))
    on_target = _finder(list(target["pip_args"]) + index_args, ignore_requires_python=False)
    anywhere = _finder(index_args, ignore_requires_python=True)
    out = {}
    for name in names:
        tv = sorted({c.version for c in on_target.find_all_candidates(name)})
        av = sorted({c.version for c in anywhere.find_all_candidates(name)})
        out[name] = {"target": [str(v) for v in tv], "any": [str(v) for v in av]}
    print(json.dumps({"versions": out, "unreachable": unreachable.pages}))
    return 0


def sizes_main(target: dict[str, Any], pins: list[str]) -> int:
    """Bytes of the file pip would install on the target, per ``name==version`` (when the index says)."""
    print(json.dumps({name: chosen["size"] for name, chosen in _select(target, pins).items()}))
    return 0


def select_main(target: dict[str, Any], pins: list[str]) -> int:
    """The file pip would install on the target (its URL) and its size, per ``name==version``."""
    print(json.dumps(_select(target, pins)))
    return 0


def _select(target: dict[str, Any], pins: list[str]) -> dict[str, dict[str, Any]]:
    import hashlib
    import os
    import urllib.parse
    import urllib.request

    from pip._internal.models.link import Link
    from pip._vendor.packaging.specifiers import SpecifierSet

    known: dict[str, int] = {}
    original = Link.from_json.__func__  # type: ignore[attr-defined]

    def from_json(cls, file_data, page_url):  # type: ignore[no-untyped-def]
        link = original(cls, file_data, page_url)
        if link is not None and isinstance(file_data.get("size"), int):  # PEP 700
            known[link.url_without_fragment] = file_data["size"]
        return link

    Link.from_json = classmethod(from_json)  # type: ignore[method-assign, assignment]
    finder = _finder(list(target["pip_args"]) + list(target.get("index_args", [])), ignore_requires_python=False)
    out: dict[str, dict[str, Any]] = {}
    for pin in pins:
        name, _, ver = pin.partition("==")
        best = finder.find_best_candidate(name, SpecifierSet(f"=={ver}")).best_candidate
        size = url = sha256 = None
        if best is not None:
            url = best.link.url_without_fragment
            size = known.get(url)
            sha256 = best.link.hash if best.link.hash_name == "sha256" else None
            if url.startswith("file:"):
                path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
                if os.path.isfile(path):
                    size = os.path.getsize(path) if size is None else size
                    if sha256 is None:
                        with open(path, "rb") as f:
                            sha256 = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(
                                hashlib, "file_digest") else hashlib.sha256(f.read()).hexdigest()
        out[name] = {"size": size, "url": url, "sha256": sha256}
    return out


def main(argv: list[str]) -> int:
    mode, target = argv[0], json.loads(argv[1])
    try:
        _check_versions()
    except Unsupported as exc:
        _report(exc)
        return 3
    if mode == "compile":
        return compile_main(target, argv[argv.index("--") + 1:])
    if mode == "versions":
        return versions_main(target, argv[2:])
    if mode == "sizes":
        return sizes_main(target, argv[2:])
    if mode == "select":
        return select_main(target, argv[2:])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
