"""What a job's process may add to its call's status (``handler._child_outcome``):
each field only with its own type; a bool is no number and a number no bool."""
from __future__ import annotations

from wrenpack.wire.event import Event
from wrenpack.worker import handler


def _ev() -> Event:
    return Event(job_id="20260101-000000-abcdef01", call_id="00000", store={"type": "local", "path": "/nonexistent"},
                 secret=b"k" * 32, args={"inline": ""})


class _Float(float):
    pass


def test_fields_of_their_own_types_are_kept_others_dropped() -> None:
    got = {"t": "done", "kind": "ok", "run_s": 0.5, "logs": "tail", "checkpoint": {"save_s": 1.0},
           "peak_rss_mb": 12, "children_peak_rss_mb": _Float(3.5), "ckpt_restored": True, "ckpt_saves": 2,
           "children": False, "started": False, "other": 1}
    ran = handler._child_outcome(_ev(), got, bytearray(b"out"), [])
    assert ran.kind == "ok" and ran.outcome == b"out" and ran.run_s == 0.5
    assert ran.extra == {"logs": "tail", "checkpoint": {"save_s": 1.0}, "peak_rss_mb": 12,
                         "children_peak_rss_mb": 3.5, "ckpt_restored": True, "ckpt_saves": 2}


def test_mistyped_fields_are_dropped() -> None:
    got = {"t": "done", "kind": "error", "run_s": True, "logs": 3, "checkpoint": [], "peak_rss_mb": "9",
           "children_peak_rss_mb": None, "ckpt_restored": 1, "ckpt_saves": True}
    ran = handler._child_outcome(_ev(), got, bytearray(), [])
    assert ran.run_s is None and ran.extra == {}
