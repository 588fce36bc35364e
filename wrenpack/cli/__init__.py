"""The ``wrenpack`` command line: a thin layer over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``;
the module is imported only when its command is named, so ``wrenpack --help``
and each command stay quick. Errors derived from ``WrenpackError`` print one
line and exit 1 (under ``--json`` a command also prints ``{"ok": false, ...}`` on stdout: ``json_errors``);
bad usage exits 2 (argparse's convention), and so does an option given as empty text
(``--storage "$STORE"`` with the variable unset: ``empty_option``); output to a reader
that went away (``| head``) ends the command with 141, as SIGPIPE ends other tools.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
from typing import Any, Callable, Sequence

#: command name -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "profile": ("wrenpack.cli.cmd_profile", "measure a function's memory, time and needs; recommend Lambda settings"),
    "build-runtime": ("wrenpack.cli.cmd_build_runtime", "build a slim, verified runtime that fits Lambda's limits"),
    "deploy": ("wrenpack.cli.cmd_aws", "create or update the Lambda worker function"),
    "undeploy": ("wrenpack.cli.cmd_aws", "remove the Lambda functions, layers and runtime objects deploy created"),
    "iam-policy": ("wrenpack.cli.cmd_aws", "print a least-privilege IAM policy for the bucket and function"),
    "doctor": ("wrenpack.cli.cmd_aws", "check credentials, bucket, function, runtime and Python versions"),
    "clean": ("wrenpack.cli.cmd_clean", "remove a job's objects (or all jobs) from the store"),
    "jobs": ("wrenpack.cli.cmd_jobs", "list spawned jobs, show one, or cancel one"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, help_)
    return out


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from wrenpack import __version__

    parser = argparse.ArgumentParser(
        prog="wrenpack",
        description="Run plain Python functions on AWS Lambda, or locally under Lambda's limits.",
    )
    parser.add_argument("--version", action="version", version=f"wrenpack {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = _available()
    # Import only the module of the command being run; list the rest by name.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (mod, help_) in available.items():
        if name == wanted:
            importlib.import_module(mod).register(sub, name)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


#: set on an error whose JSON document the command printed itself (``build-runtime``'s build report):
#: ``json_errors`` prints no second one
JSON_SHOWN = "_wrenpack_json_shown"


def json_errors(run: Callable[[argparse.Namespace], int] | None = None, *,
                indent: int | None = None) -> Any:
    """A command's ``run`` that, under ``--json``, also prints a failure as a JSON document on stdout,
    ``{"ok": false, "error": TYPE, "message": ...}``, before the usual one line on stderr: a script
    reading stdout got nothing at all (usage errors stay argparse's, exit 2). ``indent``: as the
    command's other documents are printed (``@json_errors(indent=2)``)."""
    if run is None:
        return functools.partial(json_errors, indent=indent)

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from wrenpack.errors import WrenpackError

        try:
            return run(args)
        except WrenpackError as exc:
            if getattr(args, "json", False) is True and not getattr(exc, JSON_SHOWN, False):
                _print_failure(type(exc).__name__, str(exc), indent)
            raise

    return wrapped


def _print_failure(error: str, message: str, indent: int | None) -> None:
    """The failure document ``--json`` prints on stdout: ``{"ok": false, "error": TYPE, "message": ...}``."""
    import json

    print(json.dumps({"ok": False, "error": error, "message": message}, indent=indent))


#: the exit of bad usage (argparse's), of an option given as empty text (``empty_option``), and of
#: settings a command refuses before it does anything (``usage_error``)
EXIT_USAGE = 2


def usage_error(args: argparse.Namespace, error: str, message: str, indent: int | None = None) -> int:
    """Bad settings or options, said before anything was done: under ``--json`` the failure
    document on stdout (as ``json_errors`` prints it: a script reading stdout gets one), then the
    one line on stderr; the exit is ``EXIT_USAGE``."""
    if getattr(args, "json", False) is True:
        _print_failure(error, message, indent)
    print(f"wrenpack: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _given_actions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The options of ``parser`` and of the subcommands ``args`` chose (``jobs show``), recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                yield from _given_actions(chosen, args)
        elif action.option_strings:
            yield action


def empty_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The one-line problem with an option given as empty (or blank) text, None if there is none.

    Every command read such a value as "not given": ``wrenpack clean --all --storage "$STORE"``
    with ``STORE`` unset cleaned the configured store, and ``--region ""``, ``--lock ""`` or
    ``--cache-dir ""`` fell back to the setting or default as quietly. No option of wrenpack's
    means anything when empty, so one check here refuses all of them, for every command, before
    it runs (exit 2, as a usage error; ``--json`` also gets the error as a document)."""
    for action in _given_actions(parser, args):
        value = getattr(args, action.dest, None)
        if value is action.default:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.strip():
                flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
                unset = " (or 'none' for no value)" if action.dest in _NULLABLE else ""
                return (f"{flag} {item!r} is empty (an unset shell variable?); give it a value{unset}, or leave "
                        f"{flag} out for its default")
    return None


#: options whose setting may be unset on purpose: ``--s3-endpoint-url none`` overrides WRENPACK_S3_ENDPOINT_URL
_NULLABLE = {"region", "profile", "aws_region", "aws_profile", "s3_endpoint_url", "lambda_endpoint_url"}


#: what a shell reports for a command SIGPIPE ended (128 + 13): the exit of a reader gone away
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Output to a reader that went away
    (``wrenpack jobs show ID | head``) ends the command quietly, as it ends
    other tools, instead of a ``BrokenPipeError`` traceback."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # (a reader gone shows here, not in the interpreter's flush at exit)
        return code
    except BrokenPipeError:
        # Nothing more reaches the reader: stdout goes to /dev/null, so the interpreter's
        # own flush at exit fails no more either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    from wrenpack.errors import WrenpackError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(levelname)s %(name)s: %(message)s",
    )
    from wrenpack import redact

    redact.install(logging.getLogger().handlers)  # no credentials or job secrets in logs, even at -vv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    problem = empty_option(parser, args)
    if problem is not None:
        return usage_error(args, "ConfigError", problem)
    try:
        return int(args.func(args) or 0)
    except WrenpackError as exc:
        print(f"wrenpack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wrenpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
