"""A few environment variables read on every launch, cheaply.

``os.environ.get`` costs three Python calls (the mapping's ``get``, its
``__getitem__``, the key's encoding) each time; ``.remote()`` in a loop asks
for a few variables per call (the profile directory, the owner key's
directory). On POSIX ``os.environ`` keeps its values in a dict of encoded
bytes, which every change through it updates (``os.environ[k] = v``,
``del``, ``putenv`` through it): that dict is read here directly, the key
encoded once, the value decoded as ``os.environ`` decodes it. Anywhere else,
or if ``os.environ`` was replaced by another mapping, ``os.environ.get``."""
from __future__ import annotations

import os
import sys

_environ = os.environ
_data = getattr(_environ, "_data", None)
_direct = os.name == "posix" and type(_data) is dict
_encoding = sys.getfilesystemencoding()
#: name -> its encoded key
_keys: dict[str, bytes] = {}


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``."""
    if not _direct or os.environ is not _environ:
        return os.environ.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = name.encode(_encoding, "surrogateescape")
    value = _data.get(key)  # type: ignore[union-attr]
    return None if value is None else value.decode(_encoding, "surrogateescape")
