"""Lambda entry point for a runtime kept as an archive in S3 (PyWren's model).

``wrenpack deploy --runtime-archive DIR`` uploads the runtime's ``python/``
tree as ``runtime-<sha256>.tar.gz`` and sets this module's ``handler`` as the
function's handler, with ``WRENPACK_RUNTIME_ARCHIVE=s3://bucket/key`` and
``WRENPACK_RUNTIME_SHA256``. Once per warm container the first call downloads
the archive, checks its hash and extracts it under /tmp keyed by that hash;
a file lock keeps concurrent extractions in one container from colliding.

Why tar.gz: Lambda's Python image has no ``zstandard``, and the bootstrap must
run before any runtime is present, so it uses the standard library only
(``.tar.zst`` works too when ``zstandard`` is importable, e.g. from a layer).
The extracted tree counts against ephemeral storage (/tmp, 512 MB by default);
the archive is extracted as it downloads, never stored beside it.
Standard library and boto3 only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from typing import Any

log = logging.getLogger(__name__)

ROOT = os.environ.get("WRENPACK_RUNTIME_ROOT", "/tmp/wrenpack-runtime")
_ready: str | None = None


def ensure_runtime() -> str | None:
    """Make the archived runtime importable; return its directory (None if unset)."""
    global _ready
    if _ready is not None:
        return _ready
    url = os.environ.get("WRENPACK_RUNTIME_ARCHIVE")
    if not url:
        return None
    sha = os.environ.get("WRENPACK_RUNTIME_SHA256", "")
    if not url.startswith("s3://") or len(sha) != 64:
        raise RuntimeError("WRENPACK_RUNTIME_ARCHIVE must be s3://bucket/key with WRENPACK_RUNTIME_SHA256 set; re-run `wrenpack deploy`")
    dest = os.path.join(ROOT, sha)
    os.makedirs(ROOT, exist_ok=True)
    with open(os.path.join(ROOT, f"{sha}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(dest, ".complete")):
            _fetch_and_extract(url, sha, dest)
    sys.path.insert(0, dest)
    _forget_bundled_sdk(dest)
    _ready = dest
    return dest


def _forget_bundled_sdk(dest: str) -> None:
    """A runtime built with ``--keep-boto3`` brings its own boto3: the runtime's
    bundled one, imported above to download the archive, is dropped so that the
    next import finds the archive's (wrenpack.worker.sdk checks its version)."""
    if not os.path.isdir(os.path.join(dest, "botocore")):
        return
    for name in [n for n in sys.modules if n.split(".")[0] in ("boto3", "botocore", "s3transfer")]:
        del sys.modules[name]


def _fetch_and_extract(url: str, sha: str, dest: str) -> None:
    """Download the archive and extract it as it comes: /tmp then holds the extracted
    tree only, never the archive beside it (the archive's bytes would count against the
    same ephemeral storage). Nothing of it is used before its hash checks out: the tree
    is extracted into ``<dest>.partial`` with tarfile's ``data`` filter (no member
    may land outside it, nor be a device or a link out of it) and becomes ``dest`` only
    once every byte has been hashed; a mismatch removes it. Where tarfile has no such
    filter (Python before 3.10.12/3.11.4), the archive is downloaded and checked first."""
    import boto3

    bucket, _, key = url[5:].partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    stream = _Hashing(body)
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if not hasattr(tarfile, "data_filter"):
        _download_then_extract(stream, url, sha, key, tmp)
    else:
        try:
            with _open_tar(stream, key) as tar:
                tar.extractall(tmp, filter="data")
            stream.drain()  # (the end-of-archive padding the reader stopped before)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            tampered = False
            with contextlib.suppress(Exception):  # (the download itself failing: its error stands)
                stream.drain()
                tampered = stream.digest.hexdigest() != sha
            if tampered:
                _check(stream, url, sha)  # a tampered archive that does not extract: the mismatch is the cause
            raise
        if stream.digest.hexdigest() != sha:
            shutil.rmtree(tmp, ignore_errors=True)
            _check(stream, url, sha)
    open(os.path.join(tmp, ".complete"), "w").close()
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


class _Hashing:
    """A read-only stream over the download that hashes every byte read."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.body.read(n) if n is not None and n >= 0 else self.body.read()
        self.digest.update(chunk)
        return chunk

    def drain(self) -> None:
        for _ in iter(lambda: self.read(1 << 20), b""):
            pass


def _check(stream: _Hashing, url: str, sha: str) -> None:
    got = stream.digest.hexdigest()
    if got != sha:
        raise RuntimeError(f"runtime archive {url} has sha256 {got}, expected {sha}; re-run `wrenpack deploy`")


def _download_then_extract(stream: _Hashing, url: str, sha: str, key: str, tmp: str) -> None:
    """Without tarfile's data filter: the archive to /tmp, checked, then extracted (both on disk a moment)."""
    archive = os.path.join(ROOT, f"{sha}.download")
    try:
        with open(archive, "wb") as f:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                f.write(chunk)
        _check(stream, url, sha)
        with open(archive, "rb") as f, _open_tar(f, key) as tar:
            tar.extractall(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(archive)  # /tmp is small: keep only the extracted tree


def _open_tar(fileobj: Any, key: str) -> tarfile.TarFile:
    """The archive read as a stream (``r|``: no seeking back), gzip or, when importable, zstd."""
    if key.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise RuntimeError("runtime archive is .tar.zst but zstandard is not importable here; deploy a .tar.gz archive") from None
        return tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(fileobj), mode="r|")
    return tarfile.open(fileobj=fileobj, mode="r|*")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    ensure_runtime()
    from wrenpack.worker.handler import handler as run

    return run(event, context)
