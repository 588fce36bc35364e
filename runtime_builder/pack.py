"""Deterministic artifacts: layer zip, tar.zst archive, content hash.

Same tree in, same bytes out: entries are sorted, timestamps fixed, owners
and permissions normalised (0644, or 0755 for executables).
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def walk(root: str) -> list[tuple[str, str]]:
    """Sorted (relative path, full path) of the regular files under ``root``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    return sorted(out)


def _mode(full: str) -> int:
    return 0o755 if os.stat(full).st_mode & stat.S_IXUSR else 0o644


def content_hash(root: str) -> str:
    """sha256 over every file's path, mode and content."""
    h = hashlib.sha256()
    for rel, full in walk(root):
        fh = hashlib.sha256()
        with open(full, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{rel}\0{_mode(full):o}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


#: Defaults chosen for build time: zstd level 10 on every core packs the scipy stack in seconds for an
#: archive ~10% larger than level 19, which took most of a build (84 of 152 s for a 14 MiB tree).
DEFAULT_ZSTD_LEVEL = 10
MAX_ZSTD_LEVEL = 19
#: zip level 4: the scipy stack's layer.zip is 73.6 MiB in 3.9 s of CPU, against 70.8 MiB in 7.1 s at level 6
#: (and 80.3 MiB in 2.7 s at level 1); --max-compression uses 9.
DEFAULT_ZIP_LEVEL = 4
MAX_ZIP_LEVEL = 9


def write_zip(root: str, out: str | IO[bytes], prefix: str = "python/", level: int = DEFAULT_ZIP_LEVEL,
              workers: int = 0) -> int:
    """A deterministic zip of the tree under ``prefix`` (a path or a binary file); returns its size.

    Entries are deflated on ``workers`` threads (0: every core; zlib lets go of
    the GIL) and written in path order, so the bytes do not depend on the
    thread count. Hard-linked files (identical copies, see ``dedup``) are
    compressed once and stored under each name: a zip has no hard links, and
    whether Lambda's extraction keeps a zip's symbolic links is not documented.
    A tree a plain zip cannot hold (65,535 entries, 4 GiB) is written by
    :mod:`zipfile` with ZIP64, one entry at a time.
    """
    files = walk(root)
    sizes = [os.path.getsize(full) for _, full in files]
    if len(files) >= 0xFFFF or sum(sizes) >= 0xFFFFFFFF // 2:
        return _write_zip_sequential(root, out, prefix, level)

    def write(dst: IO[bytes]) -> None:
        _write_zip_parallel(files, dst, prefix, level, workers or (os.cpu_count() or 1))

    if not isinstance(out, str):
        start = out.tell()
        write(out)
        return out.tell() - start
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, out)
    return os.path.getsize(out)


_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_DOS_DATE = (ZIP_EPOCH[0] - 1980) << 9 | ZIP_EPOCH[1] << 5 | ZIP_EPOCH[2]
_DOS_TIME = ZIP_EPOCH[3] << 11 | ZIP_EPOCH[4] << 5 | ZIP_EPOCH[5] // 2


def _deflate(full: str, level: int) -> tuple[int, int, bytes]:
    """(crc32, size, raw deflate stream) of a file, as zipfile writes ZIP_DEFLATED."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    crc = size = 0
    parts = []
    with open(full, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    return crc, size, b"".join(parts)


#: files above this are deflated in CHUNK pieces on several threads (pigz's way: each piece primed with the
#: previous 32 KiB and ended with a sync flush, so the pieces join into one valid deflate stream)
CHUNK = 1 << 20


def _deflate_piece(data: memoryview, start: int, level: int, last: bool) -> bytes:
    zdict = bytes(data[max(0, start - 32768):start])
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, zdict=zdict) if zdict else \
        zlib.compressobj(level, zlib.DEFLATED, -15)
    out = comp.compress(data[start:start + CHUNK])
    return out + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _Chunked:
    """A large file deflated in pieces on the pool; ``result()`` joins them (same interface as a Future)."""

    def __init__(self, pool: ThreadPoolExecutor, full: str, level: int) -> None:
        with open(full, "rb") as f:
            data = memoryview(f.read())
        self.crc, self.size = zlib.crc32(data), len(data)
        starts = range(0, len(data), CHUNK)
        self.pieces = [pool.submit(_deflate_piece, data, s, level, s + CHUNK >= len(data)) for s in starts]

    def result(self) -> tuple[int, int, bytes]:
        return self.crc, self.size, b"".join(p.result() for p in self.pieces)


def _write_zip_parallel(files: list[tuple[str, str]], dst: IO[bytes], prefix: str, level: int,
                        workers: int) -> None:
    """Entries deflated ahead on a thread pool (a bounded window), written in order; one copy per inode compressed."""
    central = []
    offset = 0
    by_inode: dict[tuple[int, int], Any] = {}
    window = max(2, workers * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: list[Any] = []

        def submit(i: int) -> None:
            full = files[i][1]
            st = os.stat(full)
            key = (st.st_dev, st.st_ino)
            fut = by_inode.get(key) if st.st_nlink > 1 else None
            if fut is None:
                fut = _Chunked(pool, full, level) if st.st_size > 2 * CHUNK else pool.submit(_deflate, full, level)
                if st.st_nlink > 1:
                    by_inode[key] = fut
            futures.append(fut)

        for i in range(min(window, len(files))):
            submit(i)
        for i, (rel, full) in enumerate(files):
            if i + window < len(files):
                submit(i + window)
            crc, size, data = futures[i].result()
            futures[i] = None  # type: ignore[call-overload]  # let the bytes go once written
            name = (prefix + rel).encode("utf-8")
            flags = 0x800 if not (prefix + rel).isascii() else 0
            dst.write(_LOCAL.pack(b"PK\x03\x04", 20, 0, flags, zipfile.ZIP_DEFLATED, _DOS_TIME, _DOS_DATE, crc,
                                  len(data), size, len(name), 0))
            dst.write(name)
            dst.write(data)
            attr = (stat.S_IFREG | _mode(full)) << 16
            central.append(_CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, flags, zipfile.ZIP_DEFLATED, _DOS_TIME,
                                         _DOS_DATE, crc, len(data), size, len(name), 0, 0, 0, 0, attr, offset) + name)
            offset += _LOCAL.size + len(name) + len(data)
    cd = b"".join(central)
    dst.write(cd)
    dst.write(_END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), len(cd), offset, 0))


def _write_zip_sequential(root: str, out: str | IO[bytes], prefix: str, level: int) -> int:
    """zipfile's writer (ZIP64 when needed), one entry at a time."""
    def write(dst: IO[bytes] | str) -> None:
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            for rel, full in walk(root):
                info = zipfile.ZipInfo(prefix + rel, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (stat.S_IFREG | _mode(full)) << 16
                with open(full, "rb") as src, zf.open(info, "w", force_zip64=True) as zdst:
                    shutil.copyfileobj(src, zdst, 1 << 20)

    if not isinstance(out, str):
        start = out.tell()
        write(out)
        return out.tell() - start
    tmp = out + ".tmp"
    write(tmp)
    os.replace(tmp, out)
    return os.path.getsize(out)


def write_tar(root: str, fileobj: IO[bytes], prefix: str = "python/") -> None:
    """A deterministic tar stream of the tree under ``prefix``: sorted, mtime 0, root-owned, 0644/0755.

    A file hard-linked to one already written (an identical copy, see ``dedup``)
    is a link entry: its bytes are stored once and extraction links it again.
    """
    dirs = set()
    files = walk(root)
    for rel, _ in files:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        if prefix:
            top = tarfile.TarInfo(prefix.rstrip("/"))
            _norm(top, tarfile.DIRTYPE, 0o755)
            tar.addfile(top)
        entries: list[tuple[str, str | None]] = [(d, None) for d in dirs]
        entries += files
        first: dict[tuple[int, int], str] = {}  # inode -> the first name it was stored under
        for rel, full in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(prefix + rel)
            if full is None:
                _norm(info, tarfile.DIRTYPE, 0o755)
                tar.addfile(info)
                continue
            st = os.stat(full)
            if st.st_nlink > 1:  # an identical copy, hard-linked by dedup: stored once, linked on extraction
                key = (st.st_dev, st.st_ino)
                if key in first:
                    _norm(info, tarfile.LNKTYPE, _mode(full))
                    info.linkname = first[key]
                    tar.addfile(info)
                    continue
                first[key] = prefix + rel
            _norm(info, tarfile.REGTYPE, _mode(full))
            info.size = os.path.getsize(full)
            with open(full, "rb") as f:
                tar.addfile(info, f)


def tar_gz_bytes(root: str, prefix: str = "python/") -> bytes:
    """The deterministic tar, gzip-compressed with a zero timestamp, in memory."""
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        write_tar(root, gz, prefix)  # type: ignore[arg-type]
    return buf.getvalue()


def write_tar_zst(root: str, out: str, prefix: str = "python/", level: int = DEFAULT_ZSTD_LEVEL,
                  threads: int = 0) -> int:
    """The deterministic tar, zstd-compressed on ``threads`` cores (0: all); returns its size.

    Multi-threaded zstd output does not depend on the thread count, so the
    bytes stay reproducible across machines.
    """
    import zstandard

    tmp = out + ".tmp"
    # Long-distance matching over a 128 MiB window finds the libraries that wheels
    # bundle twice (each of numpy.libs and scipy.libs carries libgfortran): about
    # 2-3% smaller, and no slower. 2**27 is the largest window the zstd command
    # line decodes without extra flags.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, enable_ldm=True, window_log=27, threads=threads or (os.cpu_count() or 1), write_checksum=True
    )
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with open(tmp, "wb") as raw, cctx.stream_writer(raw, closefd=False) as zw:
        write_tar(root, zw, prefix)  # type: ignore[arg-type]
    os.replace(tmp, out)
    return os.path.getsize(out)


def _norm(info: tarfile.TarInfo, kind: bytes, mode: int) -> None:
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""


def extract_tar_zst(archive: str, dest: str) -> None:
    """Unpack a runtime archive (what a worker does in /tmp at cold start)."""
    import zstandard

    with open(archive, "rb") as f:
        data = zstandard.ZstdDecompressor(max_window_size=2**27).stream_reader(f)
        with tarfile.open(fileobj=io.BufferedReader(data), mode="r|") as tar:  # type: ignore[arg-type]
            tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
