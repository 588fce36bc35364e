"""Run pip-compile as if on the Lambda target (a subprocess entry point).

pip-tools resolves for the interpreter it runs in: it evaluates environment
markers and picks wheels for this host. A runtime is for another machine
(Lambda's glibc, maybe another Python or arm64), so before calling
pip-compile we point pip's marker environment, wheel-tag selection and
Requires-Python checks at the target. The patches live only in this
short-lived process.

Usage: python -m runtime_builder._piptools_target TARGET_JSON -- <pip-compile args>
"""
from __future__ import annotations

import json
import sys
from typing import Any


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


def main(argv: list[str]) -> int:
    target = json.loads(argv[0])
    rest = argv[argv.index("--") + 1:]
    _patch(target)
    from piptools.scripts.compile import cli

    try:
        cli.main(args=rest, prog_name="pip-compile", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
