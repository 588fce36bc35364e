"""A local worker's stdout and stderr when the driver relays them
(``wrenpack.backends.local.output``): written line by line, in UTF-8, and
each call's output ended with its call.

The driver writes a worker's output to its own streams whole lines at a time,
and what a call printed before its reply first. A call that leaves a line
open (``print(..., end="")``) must have it ended before the next call writes,
or a worker running calls back to back (queued behind one another) glues the
next call's first line to it before the driver has read either: the
worker's process knows where one call's output ends, the driver does not.
Standard library only.
"""
from __future__ import annotations

import io
import sys


class LineTracking(io.TextIOWrapper):
    """A text stream that knows whether its last write left a line open."""

    line_open = False

    def write(self, s: str) -> int:
        n = super().write(s)
        if s:
            self.line_open = s[-1] != "\n"
        return n


def line_streams() -> None:
    """stdout and stderr, when they are not a terminal, replaced by line-buffered
    UTF-8 ``LineTracking`` streams on the same descriptors: a pipe's stream would
    hold a call's prints until 8 KiB had gathered. Processes forked from this one
    (the job's processes) write the same way."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        try:
            if stream is None or stream.isatty() or isinstance(stream, LineTracking):
                continue
            stream.flush()
            errors = stream.errors
            tracked = LineTracking(stream.detach(), encoding="utf-8", errors=errors, line_buffering=True)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # (replaced, closed, or not a text stream)
            continue
        setattr(sys, name, tracked)
        if getattr(sys, f"__{name}__", None) is stream:
            setattr(sys, f"__{name}__", tracked)


def end_call_output() -> None:
    """A call ended: the line it left open is ended, and what it printed written
    out (before its reply, which the driver reads after its output)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, f"__{name}__", None)
        for s in {id(x): x for x in (getattr(sys, name, None), stream) if x is not None}.values():
            try:
                if getattr(s, "line_open", False):
                    s.write("\n")
                s.flush()
            except Exception:  # noqa: BLE001 - a stream the call replaced or closed
                pass
