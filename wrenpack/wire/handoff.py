"""The hand-off layout: what a memfd passed between the driver and a local
worker holds (``wrenpack.worker.handoff`` makes, seals, sends and maps them).

The pickle stream (protocol 5) at offset 0, then its out-of-band buffers
(``PickleBuffer``: numpy arrays and the like), each at the next offset that is
a multiple of ``ALIGN`` (zero bytes between). The layout travels beside the
file, in the message or reply header (JSON values)::

    {"size": total bytes, "stream": stream bytes, "buffers": [[offset, length], ...]}

``image`` builds the same bytes in memory (the definition, and what
tests/test_wire_golden.py holds the memfds to). Standard library only: the
worker imports this.
"""
from __future__ import annotations

from typing import Any

#: The file's layout and the layout dict; a change of either is a new version (tests/test_wire_golden.py).
VERSION = 1
#: buffers start at multiples of this
ALIGN = 64


def padding(pos: int) -> int:
    """Zero bytes to write at ``pos`` before the next buffer."""
    return -pos % ALIGN


def layout(size: int, stream: int, spans: list[list[int]]) -> dict[str, Any]:
    """The layout of a file of ``size`` bytes whose stream is ``stream`` bytes,
    with buffers at ``spans`` (``[offset, length]`` each)."""
    return {"size": size, "stream": stream, "buffers": spans}


def check_layout(layout: Any) -> dict[str, Any]:
    """A received layout, validated (ValueError says what is wrong)."""
    if not isinstance(layout, dict) or set(layout) != {"size", "stream", "buffers"}:
        raise ValueError("the hand-off layout must have size, stream and buffers")
    size, stream, spans = layout["size"], layout["stream"], layout["buffers"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (size, stream)) or stream > size:
        raise ValueError("the hand-off layout's size/stream are not byte counts")
    if not isinstance(spans, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in s)
        and s[0] >= stream and s[0] + s[1] <= size for s in spans
    ):
        raise ValueError("the hand-off layout's buffers are not spans inside it")
    return layout


def image(stream: bytes, buffers: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """The bytes of a hand-off holding ``stream`` and ``buffers``, and its layout."""
    out = bytearray(stream)
    spans = []
    for buf in buffers:
        out += bytes(padding(len(out)))
        spans.append([len(out), len(buf)])
        out += buf
    return bytes(out), layout(len(out), len(stream), spans)
