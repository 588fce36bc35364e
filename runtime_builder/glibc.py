"""Check every shared library of a runtime against the glibc of the Lambda runtime it is for.

The import check runs on this machine, whose glibc (2.36, say) can be newer
than the target's (2.26 on Amazon Linux 2, 2.34 on Amazon Linux 2023): a
library that needs ``GLIBC_2.34`` imports here and then fails on Lambda with
"version `GLIBC_2.34' not found". What a file needs is written in it, in the
version-needs table of its dynamic section, which is what the loader checks;
so every ELF file in the tree (extension modules and the vendored libraries
in ``<pkg>.libs/`` alike) is read (:func:`elf.version_needs`) and compared with
the target's glibc. No container and no external tool: this runs on any host,
for any target, with or without the import check.

Standard library only, like the rest of what the Docker build stage may load.
"""
from __future__ import annotations

import logging
import os
import struct
from importlib import metadata
from typing import Any, Callable

from runtime_builder import elf
from runtime_builder.targets import Target
from runtime_builder.trim import canonical
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)


def _fmt(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


#: ELF ``e_machine`` of each target architecture (``Target.machine``)
MACHINES = {"x86_64": elf.EM_X86_64, "aarch64": elf.EM_AARCH64}


def scan(site: str, machine: str | None = None) -> dict[str, tuple[int, ...]]:
    """rel path -> the newest ``GLIBC_x.y`` it needs, for every ELF file under ``site`` that needs one.

    With ``machine`` ("x86_64", "aarch64"), files built for another architecture
    are skipped: Lambda can never load them, whatever glibc they ask for.
    """
    want = MACHINES.get(machine) if machine else None
    out: dict[str, tuple[int, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames.sort()
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            if os.path.islink(path) or not elf.is_elf(path):
                continue
            try:
                if want is not None and elf.machine(path) != want:
                    continue
                newest = elf.newest_glibc(path)
            except (ValueError, struct.error, OSError) as exc:
                log.warning("cannot read the version needs of %s (%s); not checked against the target's glibc",
                            os.path.relpath(path, site), exc)
                continue
            if newest:
                out[os.path.relpath(path, site)] = newest
    return out


def wheel_tags(root: str) -> dict[str, list[str]]:
    """Canonical distribution name -> the tags its wheel declared (its ``WHEEL`` file), for the distributions in ``root``."""
    out: dict[str, list[str]] = {}
    for d in metadata.distributions(path=[root]):
        text = d.read_text("WHEEL") or ""
        tags = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Tag:")]
        if d.metadata["Name"] and tags:
            out[canonical(d.metadata["Name"])] = tags
    return out


def check(site: str, target: Target, owner: Callable[[str], str], versions: dict[str, str],
          tags: dict[str, list[str]], unowned: str = "") -> dict[str, Any]:
    """Fail in one line when a library needs a newer glibc than the target's; else return the manifest's summary.

    ``owner`` maps a rel path to its distribution (``unowned`` when none),
    ``versions`` a distribution to its version, ``tags`` to its wheel's tags.
    """
    needs = scan(site, target.machine)
    limit = target.glibc
    too_new = sorted(((v, rel) for rel, v in needs.items() if v > limit), key=lambda x: (tuple(-p for p in x[0]), x[1]))
    newest = max(needs.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    summary = {"target": _fmt(limit), "newest_needed": _fmt(newest[1]) if newest else None,
               "newest_needed_by": newest[0] if newest else None, "libraries": len(needs)}
    if not too_new:
        log.info("glibc check: %d libraries need at most glibc %s; the target has %s", len(needs),
                 summary["newest_needed"] or "(none)", summary["target"])
        return summary
    needed, rel = too_new[0]
    dist = owner(rel)
    if dist and dist != unowned:
        tag = ", ".join(tags.get(dist, [])[:1])
        source = f"from {dist} {versions.get(dist, '')}".rstrip() + (f", wheel tagged {tag}" if tag else "")
        older = (f"pin an older {dist} whose wheel is tagged manylinux_{limit[0]}_{limit[1]} or lower (e.g. "
                 f"manylinux2014)")
    else:
        source = "not from any installed distribution"
        older = f"replace it with a build for glibc {_fmt(limit)} or older"
    others = sorted({owner(r) or unowned for _, r in too_new[1:]})
    more = (f" ({len(too_new) - 1} more too-new librar{'y' if len(too_new) == 2 else 'ies'}, from "
            f"{', '.join(others)})" if len(too_new) > 1 else "")
    newer = target.newer_runtime()
    if newer and newer[2] >= needed:
        other = f", or build for a newer runtime: --python {newer[0]} ({newer[1]}, glibc {_fmt(newer[2])})"
    else:
        other = ", or build it from source in Lambda's own image with --docker"
    raise BuildError(
        f"glibc check failed: {rel} ({source}) needs GLIBC_{_fmt(needed)}, newer than the glibc {_fmt(limit)} of "
        f"python{target.python} on Lambda ({target.os_name}), whose loader would refuse it (this machine's "
        f"newer glibc hides that from the import check){more}; fix: {older}{other}")
