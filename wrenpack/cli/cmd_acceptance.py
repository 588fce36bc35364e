"""``wrenpack doctor --acceptance``: the command line of the acceptance run.

Options -> ``AcceptanceOptions``, and printing: a line per check as it ends
(stderr), then a pass/fail table, or ``--json``. What the run does is in
``wrenpack.backends.aws.acceptance``. SIGTERM is turned into Ctrl-C, so a
killed run still deletes what it created.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from wrenpack.backends.aws.acceptance import CHECKS, AcceptanceOptions, encode_rows, run_acceptance

_MARK = {True: "PASS", False: "FAIL", None: "SKIP"}


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("acceptance run (deploys into your account, checks, deletes what it created)")
    g.add_argument("--acceptance", action="store_true",
                   help="deploy small functions and check what no emulator can: OOM and timeout replies, payload "
                        "limits, throttling, the async queue, the worker's SDK, cold starts, requests per call")
    g.add_argument("--role", help="--acceptance: execution role ARN for the functions it creates")
    g.add_argument("--runtime-dir", help="--acceptance: a `wrenpack build-runtime` output, to time it as a layer and an archive")
    g.add_argument("--image-uri", help="--acceptance: a container image with wrenpack, to time its cold start")
    g.add_argument("--memory", type=int, default=256, help="--acceptance: the test function's memory, MB (default 256)")
    g.add_argument("--skip", action="append", default=[], choices=list(CHECKS), metavar="CHECK",
                   help=f"--acceptance: leave a check out (repeatable): {', '.join(CHECKS)}")


def run(args: argparse.Namespace, cfg: Any) -> int:
    options = AcceptanceOptions(role=args.role, runtime_dir=args.runtime_dir, image_uri=args.image_uri,
                                memory=args.memory, skip=tuple(args.skip))

    def progress(row: dict[str, Any]) -> None:
        print(f"{_MARK[row['ok']]:4}  {row['check']}  ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)

    restore = _sigterm_as_interrupt()
    try:
        rows = run_acceptance(cfg, options, on_row=progress)
    except KeyboardInterrupt:
        print("interrupted; what the run created was deleted (see the cleanup line above)", file=sys.stderr)
        return 130
    finally:
        restore()
    report = encode_rows(rows)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console  # only for the table: --json needs none of it
        from rich.table import Table

        table = Table(title="wrenpack acceptance")
        for col in ("check", "result", "s", "detail"):
            table.add_column(col)
        for r in rows:
            mark = {True: "[green]PASS[/green]", False: "[red]FAIL[/red]", None: "[yellow]SKIP[/yellow]"}[r["ok"]]
            table.add_row(r["check"], mark, f"{r['seconds']:.1f}", r["detail"])
        Console().print(table)
    return 0 if report["ok"] else 1


def _sigterm_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt in the main thread while the run lasts (so cleanup runs)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)
