"""Which wheels are legal on a Lambda target: Python version + architecture -> pip flags.

Lambda's python3.8-3.11 run on Amazon Linux 2 (glibc 2.26), python3.12+ on
AL2023 (glibc 2.34). A wheel is legal when its manylinux tag asks for at most
that glibc, so we list every tag from the target's glibc down to 2.17
(manylinux2014), plus the legacy aliases pip still matches by name.
"""
from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from wrenpack.errors import BuildError

ARCHES = {"x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64", "amd64": "x86_64"}


#: Lambda's Python runtimes, newest first: (first Python version of the row, the OS they run on, its glibc).
RUNTIMES = (((3, 12), "Amazon Linux 2023", (2, 34)), ((3, 8), "Amazon Linux 2", (2, 26)))


def _runtime_for(python: str) -> tuple[tuple[int, int], str, tuple[int, int]]:
    version = tuple(int(p) for p in python.split(".")[:2])
    return next(row for row in RUNTIMES if version >= row[0])


def _glibc_for(python: str) -> tuple[int, int]:
    return _runtime_for(python)[2]


@dataclass(frozen=True)
class Target:
    """A Lambda runtime: ``python`` is "X.Y", ``arch`` is "x86_64" or "arm64"."""

    python: str
    arch: str = "x86_64"

    @classmethod
    def make(cls, python: str | None = None, arch: str | None = None) -> "Target":
        py = python or f"{sys.version_info.major}.{sys.version_info.minor}"
        parts = py.split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]) or (int(parts[0]), int(parts[1])) < (3, 8):
            raise BuildError(f"unsupported --python {py!r}: give a Lambda Python version such as 3.11 or 3.12")
        a = (arch or "x86_64").lower()
        if a not in ARCHES:
            raise BuildError(f"unsupported --arch {arch!r}: use x86_64 or arm64")
        return cls(python=f"{parts[0]}.{parts[1]}", arch="arm64" if ARCHES[a] == "aarch64" else "x86_64")

    @property
    def machine(self) -> str:
        """The ``uname -m`` / ELF name of the architecture."""
        return ARCHES[self.arch]

    @property
    def glibc(self) -> tuple[int, int]:
        return _glibc_for(self.python)

    @property
    def os_name(self) -> str:
        """The Amazon Linux release the runtime runs on (it fixes the glibc every library must load with)."""
        return _runtime_for(self.python)[1]

    def newer_runtime(self) -> tuple[str, str, tuple[int, int]] | None:
        """(first Python version, OS, glibc) of the oldest Lambda runtime with a newer glibc, if any."""
        newer = [row for row in RUNTIMES if row[2] > self.glibc]
        if not newer:
            return None
        first, os_name, glibc = newer[-1]
        return "%d.%d" % first, os_name, glibc

    @property
    def cp(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platform_tags(self) -> list[str]:
        """manylinux tags this target accepts, most specific first."""
        m = self.machine
        tags = [f"manylinux_2_{v}_{m}" for v in range(self.glibc[1], 16, -1)]
        tags.append(f"manylinux2014_{m}")
        if m == "x86_64":
            tags += [f"manylinux_2_12_{m}", f"manylinux2010_{m}", f"manylinux_2_5_{m}", f"manylinux1_{m}"]
        return tags

    def pip_args(self) -> list[str]:
        """Flags that make ``pip install``/``download`` pick this target's wheels."""
        args: list[str] = []
        for tag in self.platform_tags():
            args += ["--platform", tag]
        return args + ["--python-version", self.python, "--implementation", "cp", "--only-binary=:all:"]

    def marker_env(self) -> dict[str, str]:
        """PEP 508 marker values of the target (used to resolve for it from another host)."""
        return {
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": self.machine,
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "implementation_version": f"{self.python}.0",
        }

    def host_matches(self) -> bool:
        """Can this machine's interpreter of the target version import the runtime's extensions?"""
        return sys.platform.startswith("linux") and ARCHES.get(platform.machine().lower()) == self.machine

    @property
    def label(self) -> str:
        return f"python{self.python}-{self.arch}"
