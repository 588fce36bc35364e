"""``pywren.runtime``: the one helper PyWren's tests import from it."""
from __future__ import annotations

from typing import Any


def version_str(version_info: Any) -> str:
    return "%d.%d" % tuple(version_info[:2])
