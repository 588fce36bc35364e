"""``Profile``: what one profiling session measured, and its stable JSON form.

The JSON schema (``SCHEMA``) is documented in docs/profile.md; fields are only
ever added, never renamed, within one schema version.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = "wrenpack.profile/1"


@dataclass
class Profile:
    """Measured memory, time and needs of one function (see docs/profile.md)."""

    target: str
    peak_memory_mb: float
    duration_s: float
    baseline_mb: float = 0.0
    interpreter_mb: float = 0.0
    growth_mb: float = 0.0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    #: the call's wall time that was neither CPU nor waiting for a core (I/O, sleeps); None: not measured
    wait_s: float | None = None
    #: the call's wait for a core (run queue): the machine's load, not the call's; None: not measurable here
    runq_s: float | None = None
    cores_busy: float = 0.0
    serialize_s: float = 0.0
    result_bytes: int = 0
    tmp_peak_mb: float = 0.0
    tmp_final_mb: float = 0.0
    processes: int = 1
    #: most threads of the call's process tree at once (every process counts its main thread), sampled every
    #: 10 ms: Lambda allows 1,024 processes and threads
    threads: int = 1
    network: dict[str, Any] = field(default_factory=dict)
    packages: list[dict[str, Any]] = field(default_factory=list)
    local_modules: list[str] = field(default_factory=list)
    #: every non-standard-library module the call imported, submodules too (``build-runtime --from-profile``)
    imported_modules: list[str] = field(default_factory=list)
    memory_sources: dict[str, Any] = field(default_factory=dict)
    repeat: dict[str, Any] = field(default_factory=dict)
    recommended: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, Any] | None = None
    lines: list[dict[str, Any]] | None = None
    args: str = ""
    code_hash: str | None = None
    created: str = ""
    python: str = ""
    platform: str = ""
    schema: str = SCHEMA

    # Convenience accessors for the settings everyone asks for.
    @property
    def memory_mb(self) -> int:
        return int(self.recommended.get("memory_mb", 0))

    @property
    def timeout_s(self) -> int:
        return int(self.recommended.get("timeout_s", 0))

    @property
    def ephemeral_storage_mb(self) -> int:
        return int(self.recommended.get("ephemeral_storage_mb", 512))

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not samples:
            data["samples"] = {k: v for k, v in self.samples.items() if k not in ("t", "rss_mb")}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __repr__(self) -> str:
        return (
            f"<Profile {self.target}: peak {self.peak_memory_mb:.1f} MB, {self.duration_s:.3f} s; "
            f"recommend memory={self.memory_mb} MB timeout={self.timeout_s} s>"
        )
