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
import tarfile
import zipfile
from typing import IO

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
DEFAULT_ZIP_LEVEL = 6
MAX_ZIP_LEVEL = 9


def write_zip(root: str, out: str | IO[bytes], prefix: str = "python/", level: int = DEFAULT_ZIP_LEVEL) -> int:
    """A deterministic zip of the tree under ``prefix`` (a path or a binary file); returns its size."""
    def write(dst: IO[bytes] | str) -> None:
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            for rel, full in walk(root):
                info = zipfile.ZipInfo(prefix + rel, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (stat.S_IFREG | _mode(full)) << 16
                with open(full, "rb") as src, zf.open(info, "w") as zdst:
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
    """A deterministic tar stream of the tree under ``prefix``: sorted, mtime 0, root-owned, 0644/0755."""
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
        for rel, full in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(prefix + rel)
            if full is None:
                _norm(info, tarfile.DIRTYPE, 0o755)
                tar.addfile(info)
                continue
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
