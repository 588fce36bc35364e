"""Strip shared objects without breaking them.

``strip`` rewrites a file's layout; on libraries that auditwheel/patchelf
already rewrote (numpy.libs/ and scipy.libs/ OpenBLAS) the result can have
PT_LOAD segments whose file offset and address no longer agree modulo the
alignment, and the dynamic loader then refuses them ("ELF load command
address/offset not page-aligned"). So we strip a copy and keep it only if
every PT_LOAD still satisfies ``(p_offset - p_vaddr) % p_align == 0``.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

PT_LOAD = 1
EM_X86_64 = 62
EM_AARCH64 = 183


@dataclass(frozen=True)
class Segment:
    p_type: int
    p_offset: int
    p_vaddr: int
    p_align: int


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def machine(path: str) -> int | None:
    """The ELF ``e_machine`` of a file, or None when it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    return struct.unpack_from(endian + "H", head, 18)[0]


def program_headers(path: str) -> list[Segment]:
    """Parse the program header table (32- or 64-bit, either endianness)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            hdr = f.read(48)
            # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
            _, _, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(endian + "HHIQQQIHHH", hdr[:42])
        else:
            hdr = f.read(36)
            _, _, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(endian + "HHIIIIIHHH", hdr[:30])
        segments = []
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            raw = f.read(phentsize)
            if is64:
                p_type, _flags, p_offset, p_vaddr, _paddr, _filesz, _memsz, p_align = struct.unpack(
                    endian + "IIQQQQQQ", raw[:56])
            else:
                p_type, p_offset, p_vaddr, _paddr, _filesz, _memsz, _flags, p_align = struct.unpack(
                    endian + "IIIIIIII", raw[:32])
            segments.append(Segment(p_type, p_offset, p_vaddr, p_align))
    return segments


def load_segments_aligned(path: str) -> bool:
    """True when every PT_LOAD keeps ``(p_offset - p_vaddr) % p_align == 0``."""
    try:
        segs = program_headers(path)
    except (ValueError, struct.error, OSError):
        return False
    loads = [s for s in segs if s.p_type == PT_LOAD]
    if not loads:
        return False
    return all(s.p_align <= 1 or (s.p_offset - s.p_vaddr) % s.p_align == 0 for s in loads)


def strip_tool(elf_machine: int | None) -> str | None:
    """A strip binary able to handle this architecture, or None."""
    host = os.uname().machine
    native = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}.get(host)
    candidates = ["strip", "llvm-strip"] if elf_machine == native else ["llvm-strip"]
    if elf_machine == EM_AARCH64:
        candidates.insert(0, "aarch64-linux-gnu-strip")
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def safe_strip(src: str, dest: str) -> int:
    """Write a stripped copy of ``src`` to ``dest`` if it stays loadable; return bytes saved.

    When stripping is impossible or unsafe ``dest`` gets the original bytes and 0 is returned.
    """
    saved = 0
    tool = strip_tool(machine(src)) if is_elf(src) else None
    if tool and load_segments_aligned(src):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", suffix=".strip")
        os.close(fd)
        try:
            proc = subprocess.run([tool, "--strip-unneeded", "-o", tmp, src], capture_output=True)
            if proc.returncode != 0:
                log.debug("strip failed on %s: %s", src, proc.stderr.decode(errors="replace").strip())
            elif not load_segments_aligned(tmp):
                log.info("kept %s unstripped: stripping would misalign a PT_LOAD segment", os.path.basename(src))
            else:
                saved = os.path.getsize(src) - os.path.getsize(tmp)
                if saved > 0:
                    os.replace(tmp, dest)
                    return saved
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    shutil.copyfile(src, dest)
    return 0
