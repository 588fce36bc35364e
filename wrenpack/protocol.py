# TEMPORARY: re-exports for the lead's merge; delete after
"""Old home of the call protocol, now ``wrenpack.wire`` (one module per format).

Only wrenpack/executor.py and wrenpack/grouping.py still import it. Each name
is looked up in its new module when used (not copied here), so a test that
patches the new module's name patches what those callers call too.
"""
from __future__ import annotations

import importlib
from typing import Any

_MOVED = {
    "VERSION": "wrenpack.wire.event",
    "REQUIRED": "wrenpack.wire.event",
    "OPTIONAL": "wrenpack.wire.event",
    "Event": "wrenpack.wire.event",
    "event_dict": "wrenpack.wire.event",
    "inline_args": "wrenpack.wire.event",
    "Outcome": "wrenpack.wire.outcome",
    "error_tuple": "wrenpack.wire.outcome",
    "user_traceback": "wrenpack.wire.outcome",
    "rebuild_exception": "wrenpack.wire.outcome",
    "loads_outcome": "wrenpack.wire.outcome",
    "seal_result": "wrenpack.wire.result",
    "open_result": "wrenpack.wire.result",
    "is_authentic_result": "wrenpack.wire.result",
    "reply_result": "wrenpack.wire.result",
    "seal_segment": "wrenpack.wire.segment",
    "open_segment": "wrenpack.wire.segment",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'wrenpack.protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
