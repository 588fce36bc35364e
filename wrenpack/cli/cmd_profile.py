"""``wrenpack profile TARGET [ARG ...]``: measure a function, recommend Lambda settings."""
from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import threading
from typing import Any

from wrenpack.errors import ProfileError
from wrenpack.cli import json_errors

EPILOG = """\
examples:
  wrenpack profile mymodule:fn 1000 "'text'" --kwargs '{"k": 2}'
  wrenpack profile path/to/file.py:fn --repeat 5 --json
  wrenpack profile mymodule:fn --input mymodule:make_input --sizes 1000,2000,4000,8000 --target 1000000
Arguments are Python literals (quote strings twice in the shell). See docs/profile.md for the JSON schema.
"""


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(
        name,
        help="measure a function's memory, time and needs; recommend Lambda settings",
        description="Run a function once (or --repeat N times) in a clean child process and report its peak "
        "memory as the OS sees it, time, CPU, /tmp use and packages, with recommended Lambda settings and cost.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="MODULE:FUNCTION or path/to/file.py:FUNCTION")
    # default=[]: argparse counts a "*" positional without a default as required in its error message
    p.add_argument("args", nargs="*", default=[], metavar="ARG", help="positional arguments, as Python literals")
    p.add_argument("--kwargs", metavar="DICT", help="keyword arguments: JSON or a Python dict literal")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="run N times (fresh process each), report min/median/max")
    p.add_argument("--json", action="store_true", help="print the profile as JSON (schema wrenpack.profile/1)")
    p.add_argument("--plot", metavar="FILE.png", type=_plot_path,
                   help="draw the memory-over-time curve: .png, .svg or .pdf (needs wrenpack[plot])")
    p.add_argument("--lines", action="store_true", help="also show memory per source line (memory_profiler; slow)")
    p.add_argument("--input", metavar="MODULE:FUNCTION", help="scaling: make_input(n) returns the first argument")
    p.add_argument("--sizes", metavar="N,N,...", help="scaling: input sizes to measure (at least three)")
    p.add_argument("--target", dest="scale_target", type=_target, metavar="N", help="scaling: size to predict (48000000, 48M)")
    p.add_argument("--max-time", type=_seconds, metavar="SECONDS", help="stop a run that takes longer than this")
    p.add_argument("--no-save", action="store_true", help="do not save the profile under .wrenpack/profiles/")
    p.set_defaults(func=run)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ProfileError(
            f"argument {text!r} is not a Python literal; quote strings for Python too, e.g. \"'{text}'\""
        ) from None


def _kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ProfileError(f"--kwargs {text!r} is neither JSON nor a Python dict literal; e.g. --kwargs '{{\"n\": 3}}'") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProfileError(f"--kwargs must be a mapping of names to values, got {type(value).__name__}")
    return value


_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9}

#: what ``--plot`` writes the memory curve as (formats matplotlib writes with its own Agg backend)
PLOT_FORMATS = (".png", ".svg", ".pdf")


def _count(text: str) -> int:
    """An input size: ``48000000``, ``48_000_000``, ``48M``, ``2k`` (powers of ten)."""
    t = text.strip().replace("_", "")
    scale = _SUFFIX.get(t[-1:].lower(), 1)
    if scale != 1:
        t = t[:-1]
    value = float(t) * scale if "." in t or "e" in t.lower() else int(t) * scale
    if not math.isfinite(value) or value != int(value):  # (1e999 is infinite: int() raised OverflowError)
        raise ValueError(text)
    return int(value)


def _target(text: str) -> int:
    """--target: a positive whole number, checked as the arguments are parsed (before anything runs)."""
    try:
        value = _count(text)
    except ValueError:
        value = 0
    if value <= 0:  # (0 read as "no --target" and asked for it)
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (e.g. 48000000 or 48M)")
    return value


def _plot_path(path: str) -> str:
    """--plot: a file name matplotlib writes the memory curve to, checked as the arguments are parsed, as
    ``wrenpack jobs show --plot`` checks its (``x.txt`` got matplotlib's ValueError after the run)."""
    from wrenpack.errors import ConfigError
    from wrenpack.report import check_plot_path

    try:
        return check_plot_path(path, formats=PLOT_FORMATS, what="the memory curve")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """--max-time: a positive number of seconds (0 once meant no limit at all, and -1 ran the call anyway)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds (e.g. --max-time 60)")
    return value


def _sizes(text: str | None) -> list[int]:
    try:
        return [_count(s) for s in (text or "").split(",") if s.strip()]
    except ValueError:
        raise ProfileError(f"--sizes {text!r} must be comma-separated whole numbers, e.g. --sizes 1000,2000,4000,8000 "
                           "or 1M,2M,4M,8M") from None


def _preload(tables: bool, saving: bool) -> None:
    """While the measured call runs in other processes, when this one only waits: import the report's
    tables (rich: ~30 ms; not for --json), read the package map and the price table, and import the
    settings module that saving reads (not for --no-save)."""
    try:
        from wrenpack.profiler import packages, recommend

        if tables:
            from wrenpack.profiler import report  # noqa: F401
        packages.warm()
        recommend.prices()  # (importlib.resources reads the price table)
        if saving:
            import wrenpack.config  # noqa: F401
    except Exception:  # noqa: BLE001 - done again, with its error, where it is needed
        pass


def _start_first_run(args: argparse.Namespace, pos: list[Any], kw: dict[str, Any]) -> Any:
    """Start the first measured run of a plain profile now, before the rest of the profiler and rich
    are imported: the launcher and runner start while this process imports what it needs to read
    and show their figures, instead of after (the arguments are literals: the standard pickle
    writes them). Returns the started run for ``api.run_profile(started=...)``; None when
    ``--repeat`` is below 1 (refused there, before anything runs)."""
    from wrenpack.profiler import launcher

    if args.repeat < 1:
        return None
    job = launcher.job_spec(args.target, quiet_stdout=args.json)
    return launcher.start_job(job, {"args": tuple(pos), "kwargs": kw}, timeout=args.max_time, plain=True)


def _check_plot(path: str) -> None:
    """Refuse a --plot the picture cannot be made for before anything runs: without matplotlib, or
    into a folder that is missing or not writable, the call was measured first and the error came after."""
    import importlib.util
    import os

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ProfileError("--plot needs matplotlib: pip install 'wrenpack[plot]' (or drop --plot)")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ProfileError(f"--plot {path} is a directory; give a file name such as {os.path.join(path, 'memory.png')}")
    if not os.path.isdir(folder):
        raise ProfileError(f"--plot {path}: no folder {folder}; create it or choose a writable path for --plot")
    if not os.access(folder, os.W_OK):
        raise ProfileError(f"--plot {path}: folder {folder} is not writable; choose a writable path for --plot")
    # The file itself, opened as the plot will be (not truncated, and removed again if this made it): a folder
    # writable by its mode may still refuse a file (/proc, a read-only mount, root's access() says yes to all).
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ProfileError(f"--plot {path}: cannot write it ({exc.strerror}); choose a writable path for --plot") from None
    os.close(fd)
    if not existed:
        os.unlink(path)


def _freeze_at_exit() -> None:
    """At exit, before the interpreter's final garbage collection, move every object to the permanent
    generation: that collection then skips what the profiler, rich and argparse left (~15 ms of CPU
    after the report is printed, on a command a plain run is compared with). In a long-lived process
    calling this command (tests) it runs only when that process exits."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


@json_errors
def run(args: argparse.Namespace) -> int:
    _freeze_at_exit()
    if ":" not in args.target:
        raise ProfileError(f"target {args.target!r} needs a function: MODULE:FUNCTION or path/to/file.py:FUNCTION")
    pos = [_literal(a) for a in args.args]
    kw = _kwargs(args.kwargs)
    if args.plot:
        _check_plot(args.plot)
    scaling = args.input or args.sizes or args.scale_target
    started = None if scaling else _start_first_run(args, pos, kw)

    threading.Thread(target=_preload, args=(not args.json, not args.no_save), name="wrenpack-preload",
                     daemon=True).start()
    try:
        from wrenpack.profiler import api
    except BaseException:
        if started is not None:
            started.wait()  # (nothing left behind)
        raise

    if scaling:
        if not (args.input and args.sizes and args.scale_target):
            raise ProfileError("scaling needs all of --input MODULE:FUNCTION, --sizes N,N,N and --target N")
        if args.lines:
            raise ProfileError("--lines works on a single call; drop it when predicting with --input/--sizes")
        prof = api.predict_scaling(
            args.target, args.input, _sizes(args.sizes), args.scale_target,
            args=pos, kwargs=kw, repeat=args.repeat, save=not args.no_save,
            timeout=args.max_time, quiet_stdout=args.json,
        )
    else:
        prof = api.run_profile(
            args.target, pos, kw, repeat=args.repeat, lines=args.lines, save=not args.no_save,
            timeout=args.max_time, quiet_stdout=args.json, started=started,
        )
    if args.plot:
        from wrenpack.profiler.plot import plot_memory

        plot_memory(prof, args.plot)
    if args.json:
        json.dump(prof.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from wrenpack.profiler import store
        from wrenpack.profiler.report import render

        saved = None
        kind = store.kind_of(prof.to_dict(samples=False))
        if not args.no_save and prof.code_hash and store.path_for(prof.code_hash, kind=kind).is_file():
            saved = str(store.path_for(prof.code_hash, kind=kind))
        render(prof, plot=args.plot, saved=saved)
    return 0
