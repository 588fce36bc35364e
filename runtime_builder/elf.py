"""Read what the dynamic loader reads in shared objects, and strip them without breaking them.

``strip`` rewrites a file's layout; on libraries that auditwheel/patchelf
already rewrote (numpy.libs/ and scipy.libs/ OpenBLAS) the result can have
PT_LOAD segments whose file offset and address no longer agree modulo the
alignment, and the dynamic loader then refuses them ("ELF load command
address/offset not page-aligned"). So we strip a copy and keep it only if
every PT_LOAD still satisfies ``(p_offset - p_vaddr) % p_align == 0``.

:func:`version_needs` reads the symbol versions a library needs from other
libraries (``GLIBC_2.34`` from libc.so.6...) the way the loader does, through
the dynamic segment, so it works on stripped files and needs no external tool.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PT_LOAD = 1
PT_DYNAMIC = 2
DT_NULL = 0
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
#: more than any real library has; bounds the walk of a corrupt table
_MAX_ENTRIES = 100_000
_GLIBC = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")
EM_X86_64 = 62
EM_AARCH64 = 183


@dataclass(frozen=True)
class Segment:
    p_type: int
    p_offset: int
    p_vaddr: int
    p_align: int
    p_filesz: int = 0


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
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, p_align = struct.unpack(
                    endian + "IIQQQQQQ", raw[:56])
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _flags, p_align = struct.unpack(
                    endian + "IIIIIIII", raw[:32])
            segments.append(Segment(p_type, p_offset, p_vaddr, p_align, p_filesz))
    return segments


def _dynamic_tags(f: Any, dyn: Any) -> tuple[str, dict[int, int]]:
    """The byte order of the open ELF file ``f`` and its dynamic section's tags
    (the first value of each, up to DT_NULL): what both readers below start from."""
    f.seek(0)
    ident = f.read(16)
    is64 = ident[4] == 2
    endian = "<" if ident[5] == 1 else ">"
    entry = struct.Struct(endian + ("qQ" if is64 else "iI"))
    f.seek(dyn.p_offset)
    raw = f.read(dyn.p_filesz)
    tags: dict[int, int] = {}
    for i in range(0, min(len(raw), _MAX_ENTRIES * entry.size) - entry.size + 1, entry.size):
        tag, val = entry.unpack_from(raw, i)
        if tag == DT_NULL:
            break
        tags.setdefault(tag, val)
    return endian, tags


def _file_offset(loads: list[Any], vaddr: int) -> int | None:
    """Where in the file the loaded address ``vaddr`` lies; None if no loaded segment holds it."""
    for seg in loads:
        if seg.p_vaddr <= vaddr < seg.p_vaddr + seg.p_filesz:
            return vaddr - seg.p_vaddr + seg.p_offset
    return None


def version_needs(path: str) -> dict[str, set[str]]:
    """{needed library: version names} from the dynamic section's version-needs table (DT_VERNEED).

    These are the versions the loader insists on when it maps the file
    (``libc.so.6: {"GLIBC_2.2.5", "GLIBC_2.34"}``); a file without a dynamic
    segment or version needs gives ``{}``. Raises ValueError for a malformed file.
    """
    segs = program_headers(path)
    loads = [s for s in segs if s.p_type == PT_LOAD]
    dyn = next((s for s in segs if s.p_type == PT_DYNAMIC), None)
    if dyn is None:
        return {}

    def offset(vaddr: int) -> int:
        at = _file_offset(loads, vaddr)
        if at is None:
            raise ValueError(f"{path}: address {vaddr:#x} is in no loaded segment")
        return at

    with open(path, "rb") as f:
        endian, tags = _dynamic_tags(f, dyn)
        if DT_VERNEED not in tags or DT_STRTAB not in tags:
            return {}
        f.seek(offset(tags[DT_STRTAB]))
        strtab = f.read(tags.get(DT_STRSZ, 1 << 20))

        def name(at: int) -> str:
            end = strtab.find(b"\0", at)
            if at >= len(strtab) or end < 0:
                raise ValueError(f"{path}: version name outside the string table")
            return strtab[at:end].decode("ascii", "replace")

        # Elf32_Verneed/Elf64_Verneed and their Vernaux have the same 16-byte layout.
        verneed = struct.Struct(endian + "HHIII")  # vn_version vn_cnt vn_file vn_aux vn_next
        vernaux = struct.Struct(endian + "IHHII")  # vna_hash vna_flags vna_other vna_name vna_next
        out: dict[str, set[str]] = {}
        at = offset(tags[DT_VERNEED])
        for _ in range(min(tags.get(DT_VERNEEDNUM, _MAX_ENTRIES), _MAX_ENTRIES)):
            f.seek(at)
            _, count, file_name, aux, nxt = verneed.unpack(f.read(verneed.size))
            versions = out.setdefault(name(file_name), set())
            aux_at = at + aux
            for _ in range(min(count, _MAX_ENTRIES)):
                f.seek(aux_at)
                _, _, _, vna_name, vna_next = vernaux.unpack(f.read(vernaux.size))
                versions.add(name(vna_name))
                if not vna_next:
                    break
                aux_at += vna_next
            if not nxt:
                break
            at += nxt
    return out


def soname(path: str) -> str | None:
    """The library's ``DT_SONAME`` (the name the loader opens it by), or None when it has none."""
    segs = program_headers(path)
    loads = [s for s in segs if s.p_type == PT_LOAD]
    dyn = next((s for s in segs if s.p_type == PT_DYNAMIC), None)
    if dyn is None:
        return None
    with open(path, "rb") as f:
        endian, tags = _dynamic_tags(f, dyn)
        if DT_SONAME not in tags or DT_STRTAB not in tags:
            return None
        strtab = _file_offset(loads, tags[DT_STRTAB])
        if strtab is None:
            raise ValueError(f"{path}: the string table is in no loaded segment")
        f.seek(strtab + tags[DT_SONAME])
        name = f.read(4096).split(b"\0", 1)[0]
    return name.decode("utf-8", "replace") or None


def glibc_version(name: str) -> tuple[int, ...] | None:
    """``"GLIBC_2.34"`` -> (2, 34); None for other names (``GLIBC_PRIVATE``, ``GLIBCXX_3.4``)."""
    m = _GLIBC.match(name)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def newest_glibc(path: str) -> tuple[int, ...] | None:
    """The newest ``GLIBC_x.y`` the file needs from any library, or None when it needs none."""
    found = [v for names in version_needs(path).values() for v in map(glibc_version, names) if v]
    return max(found) if found else None


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


DT_NEEDED = 1
SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
SHN_UNDEF = 0
STB_LOCAL = 0


def needed(path: str) -> list[str]:
    """The libraries the loader opens for this file: its ``DT_NEEDED`` entries, in order ([] without any)."""
    segs = program_headers(path)
    loads = [s for s in segs if s.p_type == PT_LOAD]
    dyn = next((s for s in segs if s.p_type == PT_DYNAMIC), None)
    if dyn is None:
        return []
    with open(path, "rb") as f:
        entries, _, _ = _dynamic_entries(f, dyn)
        strtab = next((v for t, v in entries if t == DT_STRTAB), None)
        if strtab is None:
            return []
        at = _file_offset(loads, strtab)
        if at is None:
            raise ValueError(f"{path}: the string table is in no loaded segment")
        out = []
        for tag, val in entries:
            if tag == DT_NEEDED:
                f.seek(at + val)
                out.append(f.read(4096).split(b"\0", 1)[0].decode("utf-8", "replace"))
    return out


def _dynamic_entries(f: Any, dyn: Any) -> tuple[list[tuple[int, int]], struct.Struct, bytes]:
    """Every (tag, value) of the dynamic section before its DT_NULL, the entry layout and the raw bytes."""
    f.seek(0)
    ident = f.read(16)
    entry = struct.Struct(("<" if ident[5] == 1 else ">") + ("qQ" if ident[4] == 2 else "iI"))
    f.seek(dyn.p_offset)
    raw = f.read(dyn.p_filesz)
    entries = []
    for i in range(0, min(len(raw), _MAX_ENTRIES * entry.size) - entry.size + 1, entry.size):
        tag, val = entry.unpack_from(raw, i)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    return entries, entry, raw


def drop_needed(path: str, names: set[str]) -> list[str]:
    """Remove the ``DT_NEEDED`` entries naming ``names`` from the file at ``path``; return the names removed.

    Only the dynamic section's entries move (the ones after a removed entry
    shift up, DT_NULL fills the end): the file's size, layout and every other
    byte stay as they were, so the loader maps it exactly as before. The file
    is replaced (written beside and renamed), never written into: it may be a
    hard link to the installed tree. Whether dropping an entry is safe is the
    caller's question (:func:`symbols`); this only edits.
    """
    segs = program_headers(path)
    loads = [s for s in segs if s.p_type == PT_LOAD]
    dyn = next((s for s in segs if s.p_type == PT_DYNAMIC), None)
    if dyn is None or not names:
        return []
    with open(path, "rb") as f:
        entries, entry, raw = _dynamic_entries(f, dyn)
        strtab = next((v for t, v in entries if t == DT_STRTAB), None)
        at = None if strtab is None else _file_offset(loads, strtab)
        if at is None:
            return []
        keep, dropped = [], []
        for tag, val in entries:
            if tag == DT_NEEDED:
                f.seek(at + val)
                name = f.read(4096).split(b"\0", 1)[0].decode("utf-8", "replace")
                if name in names:
                    dropped.append(name)
                    continue
            keep.append((tag, val))
        if not dropped:
            return []
        f.seek(0)
        data = bytearray(f.read())
    table = b"".join(entry.pack(t, v) for t, v in keep)
    table += entry.pack(DT_NULL, 0) * (len(entries) + 1 - len(keep))
    data[dyn.p_offset:dyn.p_offset + len(table)] = table
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".needed")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dropped


@dataclass(frozen=True)
class Symbols:
    """A file's dynamic symbols: those it defines, and those it needs with the library a symbol
    version ties each one to (None: unversioned, or versioned by the file itself)."""

    defined: frozenset[str]
    undefined: dict[str, str | None]


def symbols(path: str) -> Symbols:
    """Read the dynamic symbol table (``.dynsym``, through the section headers, which ``strip`` keeps) and
    the symbol versions of what the file needs from other libraries (``.gnu.version``/``.gnu.version_r``).

    Raises ValueError when the file has no section headers to find them by (nothing can then be said of
    what it needs, so nothing it lists may be dropped)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(e + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
        sh = struct.Struct(e + "IIQQQQIIQQ")
        sym = struct.Struct(e + "IBBHQQ")
    else:
        shoff, = struct.unpack_from(e + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x2E)
        sh = struct.Struct(e + "IIIIIIIIII")
        sym = struct.Struct(e + "IIIBBH")
    if not shoff or not shnum or shoff + shnum * shentsize > len(data):
        raise ValueError(f"{path}: no section headers")
    sections = []
    for i in range(min(shnum, _MAX_ENTRIES)):
        _, sh_type, _, _, off, size, link, info, _, entsize = sh.unpack_from(data, shoff + i * shentsize)
        sections.append((sh_type, off, size, link, info, entsize))
    dynsym = next((s for s in sections if s[0] == SHT_DYNSYM), None)
    if dynsym is None:
        raise ValueError(f"{path}: no dynamic symbol table")
    _, off, size, link, _, entsize = dynsym
    strtab_off = sections[link][1]

    def cstr(at: int) -> str:
        end = data.find(b"\0", at)
        return data[at:end].decode("utf-8", "replace")

    # version index -> the library it is needed from (.gnu.version_r: Verneed/Vernaux, 16 bytes each)
    from_lib: dict[int, str] = {}
    verneed = next((s for s in sections if s[0] == SHT_GNU_VERNEED), None)
    if verneed is not None:
        vstr = sections[verneed[3]][1]
        at, count = verneed[1], verneed[4]
        for _ in range(min(count, _MAX_ENTRIES)):
            _, cnt, vn_file, vn_aux, vn_next = struct.unpack_from(e + "HHIII", data, at)
            lib = cstr(vstr + vn_file)
            aux = at + vn_aux
            for _ in range(min(cnt, _MAX_ENTRIES)):
                _, _, other, _, vna_next = struct.unpack_from(e + "IHHII", data, aux)
                from_lib[other & 0x7FFF] = lib
                if not vna_next:
                    break
                aux += vna_next
            if not vn_next:
                break
            at += vn_next
    versym = next((s for s in sections if s[0] == SHT_GNU_VERSYM), None)
    entsize = entsize or sym.size
    defined, undefined = set(), {}
    for i in range(1, size // entsize):
        fields = sym.unpack_from(data, off + i * entsize)
        if is64:
            name_at, info, _, shndx, _, _ = fields
        else:
            name_at, _, _, info, _, shndx = fields
        if info >> 4 == STB_LOCAL or not name_at:
            continue
        name = cstr(strtab_off + name_at)
        if shndx == SHN_UNDEF:
            ver = struct.unpack_from(e + "H", data, versym[1] + 2 * i)[0] & 0x7FFF if versym else 0
            undefined[name] = from_lib.get(ver)
        else:
            defined.add(name)
    return Symbols(frozenset(defined), undefined)
