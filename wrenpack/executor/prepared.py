"""A launch's pickled function and arguments: made by ``Executor.prepare``
before anything is stored or runs, so a call that cannot be sent fails first;
the strategies launch subsets of one (``grouping``) or one call at a time (``feed``)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prepared:
    """A launch's pickled function and arguments (``Executor.prepare``)."""

    fn_bytes: bytes
    payloads: list[bytes]
    #: (job, chain) of the futures the arguments hold
    referenced: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
