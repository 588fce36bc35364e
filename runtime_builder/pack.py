"""Deterministic artifacts: layer zip, tar.zst archive, content hash.

Same tree in, same bytes out: entries are sorted, timestamps fixed, owners
and permissions normalised (0644, or 0755 for executables).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile

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


def write_zip(root: str, out: str, prefix: str = "python/") -> int:
    """A Lambda layer zip; returns its size."""
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for rel, full in walk(root):
            info = zipfile.ZipInfo(prefix + rel, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | _mode(full)) << 16
            with open(full, "rb") as src, zf.open(info, "w") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
    os.replace(tmp, out)
    return os.path.getsize(out)


def write_tar_zst(root: str, out: str, prefix: str = "python/", level: int = 19, threads: int = 0) -> int:
    """A tar archive of the tree under ``prefix``, zstd-compressed; returns its size."""
    import zstandard

    tmp = out + ".tmp"
    dirs = set()
    for rel, _ in walk(root):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    # Long-distance matching over a 128 MiB window finds the libraries that wheels
    # bundle twice (each of numpy.libs and scipy.libs carries libgfortran): about
    # 2-3% smaller at level 19, and no slower. 2**27 is the largest window the
    # zstd command line decodes without extra flags.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, enable_ldm=True, window_log=27, threads=threads or (os.cpu_count() or 1), write_checksum=True
    )
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with open(tmp, "wb") as raw, cctx.stream_writer(raw, closefd=False) as zw:
        with tarfile.open(fileobj=zw, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            top = tarfile.TarInfo(prefix.rstrip("/"))
            _norm(top, tarfile.DIRTYPE, 0o755)
            tar.addfile(top)
            entries = [(d, None) for d in dirs] + walk(root)
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
